// Command soci-convert is the bench's stand-in for `soci convert` + push:
// it builds a SOCI index (v2: the image and its SOCI index bundled in one
// OCI image index, the image manifest annotated with the index's digest)
// for the single-manifest image of an OCI layout, with the library's
// default span and minimum layer sizes, and pushes the result over plain
// HTTP to a registry as REPO:TAG. It uses the soci package of the
// soci-snapshotter library module at the version go.mod pins (the soci
// CLI's cmd module is not on the module proxy).
//
// Usage: soci-convert LAYOUT HOST:PORT/REPO:TAG
// It prints the pushed image index's digest.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content/oci"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: soci-convert LAYOUT HOST:PORT/REPO:TAG")
		os.Exit(2)
	}
	d, err := convert(context.Background(), os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "soci-convert:", err)
		os.Exit(1)
	}
	fmt.Println(d)
}

func convert(ctx context.Context, layout, dest string) (digest.Digest, error) {
	slash := strings.IndexByte(dest, '/')
	colon := strings.LastIndexByte(dest, ':')
	if slash < 0 || colon < slash {
		return "", fmt.Errorf("destination %q is not HOST:PORT/REPO:TAG", dest)
	}
	host, repo, tag := dest[:slash], dest[slash+1:colon], dest[colon+1:]

	var top ocispec.Index
	b, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(b, &top); err != nil || len(top.Manifests) != 1 {
		return "", fmt.Errorf("%s/index.json: want one manifest (%v)", layout, err)
	}
	cs, err := local.NewStore(layout)
	if err != nil {
		return "", err
	}
	ors, err := oci.New(layout)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp("", "soci-convert-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	db, err := soci.NewDB(soci.ArtifactsDbPath(tmp))
	if err != nil {
		return "", err
	}
	bs := &store.SociStore{Store: ors}
	builder, err := soci.NewIndexBuilder(cs, bs, soci.WithArtifactsDb(db))
	if err != nil {
		return "", err
	}
	bctx, done, err := bs.BatchOpen(ctx)
	if err != nil {
		return "", err
	}
	idx, err := builder.Convert(bctx, images.Image{Name: dest, Target: top.Manifests[0]})
	done(ctx)
	if err != nil {
		return "", fmt.Errorf("convert: %w", err)
	}

	// every blob of the layout, then the manifests the index names, then
	// the index under the tag
	base := "http://" + host + "/v2/" + repo
	blobs, err := filepath.Glob(filepath.Join(layout, "blobs", "sha256", "*"))
	if err != nil {
		return "", err
	}
	for _, p := range blobs {
		if err := pushBlob(ctx, base, digest.NewDigestFromEncoded(digest.SHA256, filepath.Base(p)), p); err != nil {
			return "", err
		}
	}
	ib, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", idx.Digest.Encoded()))
	if err != nil {
		return "", err
	}
	var index ocispec.Index
	if err := json.Unmarshal(ib, &index); err != nil {
		return "", err
	}
	for _, m := range index.Manifests {
		mb, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", m.Digest.Encoded()))
		if err != nil {
			return "", err
		}
		if err := putManifest(ctx, base, m.Digest.String(), m.MediaType, mb); err != nil {
			return "", err
		}
	}
	if err := putManifest(ctx, base, tag, ocispec.MediaTypeImageIndex, ib); err != nil {
		return "", err
	}
	return idx.Digest, nil
}

func pushBlob(ctx context.Context, base string, d digest.Digest, path string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, base+"/blobs/"+d.String(), nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, base+"/blobs/uploads/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload of %s: %s", d, resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), f)
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("upload %s: %s: %s", d, resp.Status, msg)
	}
	return nil
}

func putManifest(ctx context.Context, base, ref, mediaType string, b []byte) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/manifests/"+url.PathEscape(ref), bytes.NewReader(b))
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("push manifest %s (%s): %s: %s", ref, mediaType, resp.Status, msg)
	}
	return nil
}
