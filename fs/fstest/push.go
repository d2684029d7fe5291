package fstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Index is a multi-platform image index (or Docker manifest list) over
// built images, for --platform tests.
type Index struct {
	// Images are the platform images, sorted by platform string.
	Images   []*Image
	Manifest []byte
	Desc     ocispec.Descriptor
}

// BuildIndex builds an image index over images keyed by platform
// ("os/arch[/variant]"); the key is what the index descriptor records, so
// build each image with the same Options.Platform. When every image uses
// Docker media types the result is a Docker manifest list.
func BuildIndex(images map[string]*Image) (*Index, error) {
	keys := make([]string, 0, len(images))
	for k := range images {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	docker := len(keys) > 0
	ix := &Index{}
	var descs []ocispec.Descriptor
	for _, k := range keys {
		im := images[k]
		plat, err := ParsePlatform(k)
		if err != nil {
			return nil, err
		}
		desc := im.ManifestDesc
		desc.Platform = &plat
		descs = append(descs, desc)
		ix.Images = append(ix.Images, im)
		docker = docker && im.ManifestDesc.MediaType == MediaTypeDockerManifest
	}
	mediaType := ocispec.MediaTypeImageIndex
	if docker {
		mediaType = MediaTypeDockerManifestList
	}
	if descs == nil {
		descs = []ocispec.Descriptor{}
	}
	b, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: mediaType,
		Manifests: descs,
	})
	if err != nil {
		return nil, fmt.Errorf("encode index: %w", err)
	}
	ix.Manifest = b
	ix.Desc = descriptor(mediaType, b)
	return ix, nil
}

// WriteLayout writes every image and the index into an OCI image layout at
// dir and tags the index there (see [Image.WriteLayout]).
func (ix *Index) WriteLayout(dir, tag string) error {
	for _, im := range ix.Images {
		for _, desc := range im.Blobs() {
			if err := writeLayoutBlob(dir, desc, im.Open); err != nil {
				return err
			}
		}
	}
	open := func(digest.Digest) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(ix.Manifest)), int64(len(ix.Manifest)), nil
	}
	if err := writeLayoutBlob(dir, ix.Desc, open); err != nil {
		return err
	}
	return tagLayout(dir, tag, ix.Desc)
}

// Push uploads every image by digest, then the index under tag.
func (ix *Index) Push(ctx context.Context, host, repo, tag string) error {
	p := pusher{host: host, repo: repo}
	for _, im := range ix.Images {
		if err := p.image(ctx, im, im.ManifestDesc.Digest.String()); err != nil {
			return err
		}
	}
	return p.manifest(ctx, tag, ix.Desc.MediaType, ix.Manifest)
}

// Push uploads the image to a plain-HTTP registry at host (host:port) with
// the distribution API: each blob is checked with HEAD and, when missing,
// uploaded monolithically (POST, then PUT to the returned location with
// ?digest=); then the manifest is PUT under tag (by digest when tag is
// empty).
func (im *Image) Push(ctx context.Context, host, repo, tag string) error {
	if tag == "" {
		tag = im.ManifestDesc.Digest.String()
	}
	return pusher{host: host, repo: repo}.image(ctx, im, tag)
}

type pusher struct {
	host, repo string
}

func (p pusher) url(path string) string {
	return "http://" + p.host + "/v2/" + p.repo + path
}

func (p pusher) image(ctx context.Context, im *Image, ref string) error {
	for _, desc := range im.Blobs()[:len(im.LayerDescs)+1] { // config and layers
		if err := p.blob(ctx, im, desc); err != nil {
			return err
		}
	}
	return p.manifest(ctx, ref, im.ManifestDesc.MediaType, im.Manifest)
}

func (p pusher) do(req *http.Request, wantStatus ...int) (*http.Response, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	for _, s := range wantStatus {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return nil, fmt.Errorf("%s %s: status %s: %s", req.Method, req.URL.Redacted(), resp.Status, bytes.TrimSpace(body))
}

func (p pusher) blob(ctx context.Context, im *Image, desc ocispec.Descriptor) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, p.url("/blobs/"+desc.Digest.String()), nil)
	if err != nil {
		return err
	}
	resp, err := p.do(req, http.StatusOK, http.StatusNotFound)
	if err != nil {
		return fmt.Errorf("push blob %s: %w", desc.Digest, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}

	req, err = http.NewRequestWithContext(ctx, http.MethodPost, p.url("/blobs/uploads/"), nil)
	if err != nil {
		return err
	}
	resp, err = p.do(req, http.StatusAccepted)
	if err != nil {
		return fmt.Errorf("push blob %s: %w", desc.Digest, err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		return fmt.Errorf("push blob %s: upload location: %w", desc.Digest, err)
	}
	q := loc.Query()
	q.Set("digest", desc.Digest.String())
	loc.RawQuery = q.Encode()

	body, size, err := im.Open(desc.Digest)
	if err != nil {
		return err
	}
	defer body.Close()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = p.do(req, http.StatusCreated)
	if err != nil {
		return fmt.Errorf("push blob %s: %w", desc.Digest, err)
	}
	resp.Body.Close()
	return nil
}

func (p pusher) manifest(ctx context.Context, ref, mediaType string, b []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, p.url("/manifests/"+url.PathEscape(ref)), bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := p.do(req, http.StatusCreated)
	if err != nil {
		return fmt.Errorf("push manifest %s:%s: %w", p.repo, ref, err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("Docker-Content-Digest"), digest.FromBytes(b).String(); got != "" && got != want {
		return fmt.Errorf("push manifest %s:%s: registry stored digest %s, want %s", p.repo, ref, got, want)
	}
	return nil
}
