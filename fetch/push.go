package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Blob is one blob for [Image.PushReferrer]: its descriptor (media type,
// digest, size, annotations) and its bytes.
type Blob struct {
	Desc ocispec.Descriptor
	Data []byte
}

// emptyJSON is the OCI empty blob "{}" and its descriptor, the config of an
// artifact manifest.
var (
	emptyJSON     = []byte("{}")
	emptyJSONDesc = ocispec.Descriptor{
		MediaType: ocispec.MediaTypeEmptyJSON,
		Digest:    digest.FromBytes(emptyJSON),
		Size:      int64(len(emptyJSON)),
	}
)

// headerOCISubject is set by registries with the referrers API on a
// manifest PUT whose manifest has a subject.
const headerOCISubject = "OCI-Subject"

// PushReferrer stores an artifact that refers to this image's manifest: it
// uploads blobs, then an OCI image manifest with artifactType, annotations,
// config = the OCI empty descriptor ("{}"), layers = the blob descriptors
// (the empty descriptor when there are none), and subject = this image's
// manifest, pushed by digest.
//
// When the registry answers the manifest PUT without an OCI-Subject header
// (it has no referrers API), PushReferrer also maintains the referrers tag
// schema: it reads the image index tagged sha256-<hex> (or starts an empty
// one), adds the manifest's descriptor (with artifactType and annotations)
// unless present, and puts it back under that tag. Two clients doing so at
// once may lose one entry; the last writer wins, as the OCI spec accepts.
//
// Registry credentials come from the keychain with push scope. For an OCI
// layout the blobs and the manifest are written into it and the manifest's
// descriptor is added to index.json. It returns the manifest's descriptor.
func (im *Image) PushReferrer(ctx context.Context, artifactType string, annotations map[string]string, blobs []Blob) (ocispec.Descriptor, error) {
	what := fmt.Sprintf("push referrer of %s to %s", im.ManifestDigest, im.src)
	if artifactType == "" {
		return ocispec.Descriptor{}, fmt.Errorf("%s: no artifactType", what)
	}
	layers := make([]ocispec.Descriptor, 0, len(blobs))
	for i, b := range blobs {
		if err := checkDescriptor(fmt.Sprintf("blob %d", i), b.Desc); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s: %w", what, err)
		}
		if err := verifyDescriptor(fmt.Sprintf("blob %d", i), b.Desc, b.Data); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s: %w", what, err)
		}
		d := b.Desc
		d.Data = nil
		layers = append(layers, d)
	}
	if len(layers) == 0 {
		layers = append(layers, emptyJSONDesc)
	}
	subject := im.subjectDescriptor()
	raw, err := json.Marshal(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       emptyJSONDesc,
		Layers:       layers,
		Subject:      &subject,
		Annotations:  annotations,
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", what, err)
	}
	desc := ocispec.Descriptor{
		MediaType:    ocispec.MediaTypeImageManifest,
		Digest:       digest.FromBytes(raw),
		Size:         int64(len(raw)),
		ArtifactType: artifactType,
		Annotations:  annotations,
	}
	all := append([]Blob{{Desc: emptyJSONDesc, Data: emptyJSON}}, blobs...)
	switch s := im.src.(type) {
	case *chainSource:
		err = im.pushRegistry(ctx, s, all, desc, raw)
	case *layoutSource:
		err = pushLayout(s, all, desc, raw)
	default:
		err = fmt.Errorf("not supported for %s", im.src)
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", what, err)
	}
	im.c.log.Info("pushed referrer", "image", im.Ref, "digest", desc.Digest, "artifact_type", artifactType, "blobs", len(blobs))
	return desc, nil
}

// pushRegistry uploads blobs and the manifest raw (described by desc), and
// updates the fallback tag when the registry did not take the subject.
func (im *Image) pushRegistry(ctx context.Context, s *chainSource, blobs []Blob, desc ocispec.Descriptor, raw []byte) error {
	if s.push == nil {
		return fmt.Errorf("no host in %s has the push capability", s.noPush)
	}
	ps, err := im.c.dialEndpoint(ctx, s.push, transport.PushScope)
	if err != nil {
		return err
	}
	for _, b := range blobs {
		if err := ps.uploadBlob(ctx, b); err != nil {
			return err
		}
	}
	subject, err := ps.putManifest(ctx, desc.Digest.String(), desc.MediaType, raw)
	if err != nil {
		return err
	}
	if subject == im.ManifestDigest {
		return nil
	}
	if subject != "" {
		return formatError("registry answered the manifest PUT with %s %s, want %s", headerOCISubject, subject, im.ManifestDigest)
	}
	tag := fallbackTag(im.ManifestDigest)
	ix, err := fetchFallbackIndex(ctx, im.c, ps, tag)
	switch {
	case errors.Is(err, ErrNotFound):
		ix = ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}}
	case err != nil:
		return fmt.Errorf("update fallback tag: %w", err)
	}
	if slices.ContainsFunc(ix.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == desc.Digest }) {
		return nil
	}
	ix.MediaType = ocispec.MediaTypeImageIndex
	ix.Manifests = append(ix.Manifests, desc)
	b, err := json.Marshal(ix)
	if err != nil {
		return fmt.Errorf("update fallback tag: %w", err)
	}
	if _, err := ps.putManifest(ctx, tag, ocispec.MediaTypeImageIndex, b); err != nil {
		return fmt.Errorf("update fallback tag: %w", err)
	}
	return nil
}

// do sends req and checks that the answer has one of the wanted statuses;
// otherwise it returns an error that says what and how to log in.
func (s *registrySource) do(req *http.Request, what string, want ...int) (*http.Response, error) {
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, registryError(err, what, s.host, s.String(), false)
	}
	if slices.Contains(want, resp.StatusCode) {
		return resp, nil
	}
	defer resp.Body.Close()
	err = transport.CheckError(resp, want...)
	if err == nil {
		err = fmt.Errorf("unexpected status %s", resp.Status)
	}
	return nil, registryError(err, what, s.host, s.String(), false)
}

// uploadBlob uploads b unless the repository has it: HEAD, then a
// monolithic upload (POST, then PUT to the returned location with
// ?digest=).
func (s *registrySource) uploadBlob(ctx context.Context, b Blob) error {
	what := fmt.Sprintf("upload blob %s to %s", b.Desc.Digest, s.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, s.url("blobs", b.Desc.Digest.String()), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	resp, err := s.do(req, what, http.StatusOK, http.StatusNotFound)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	req, err = http.NewRequestWithContext(ctx, http.MethodPost, s.url("blobs", "uploads/"), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	resp, err = s.do(req, what, http.StatusAccepted)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainOnRetry))
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		return fmt.Errorf("%s: upload location: %w", what, err)
	}
	q := loc.Query()
	q.Set("digest", b.Desc.Digest.String())
	loc.RawQuery = q.Encode()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), bytes.NewReader(b.Data))
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = s.do(req, what, http.StatusCreated)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// putManifest PUTs manifest b of media type mt under ref (a tag or its
// digest) and returns the OCI-Subject the registry answered with ("" if
// none).
func (s *registrySource) putManifest(ctx context.Context, ref, mt string, b []byte) (digest.Digest, error) {
	what := fmt.Sprintf("put manifest %s:%s", s.String(), ref)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.url("manifests", url.PathEscape(ref)), bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Content-Type", mt)
	resp, err := s.do(req, what, http.StatusCreated, http.StatusOK)
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainOnRetry))
	resp.Body.Close()
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		if want := digest.FromBytes(b); h != want.String() {
			return "", formatError("%s: registry stored digest %s, want %s", what, h, want)
		}
	}
	h := resp.Header.Get(headerOCISubject)
	if h == "" {
		return "", nil
	}
	d, err := digest.Parse(h)
	if err != nil {
		return "", formatError("%s: %s %q: %v", what, headerOCISubject, h, err)
	}
	return d, nil
}

// pushLayout writes blobs and the manifest raw into the layout and adds
// desc to its index.json, each file appearing by rename.
func pushLayout(s *layoutSource, blobs []Blob, desc ocispec.Descriptor, raw []byte) error {
	for _, b := range slices.Concat(blobs, []Blob{{Desc: desc, Data: raw}}) {
		p, err := s.blobPath(b.Desc.Digest)
		if err != nil {
			return err
		}
		if fi, err := os.Stat(p); err == nil && fi.Size() == b.Desc.Size {
			continue
		}
		if err := writeFileAtomic(p, b.Data); err != nil {
			return err
		}
	}
	ix, b, err := s.index()
	if err != nil {
		return err
	}
	if slices.ContainsFunc(ix.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == desc.Digest }) {
		return nil
	}
	// Keep every field of index.json as it is; only append to manifests.
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return formatError("%s: index.json: %v", s, err)
	}
	var list []json.RawMessage
	if m, ok := doc["manifests"]; ok && string(m) != "null" {
		if err := json.Unmarshal(m, &list); err != nil {
			return formatError("%s: index.json: manifests: %v", s, err)
		}
	}
	entry, err := json.Marshal(desc)
	if err != nil {
		return err
	}
	if doc["manifests"], err = json.Marshal(append(list, entry)); err != nil {
		return err
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(s.dir, "index.json"), out)
}

// writeFileAtomic writes b to a temp file beside p and renames it to p.
func writeFileAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".ocifs-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
