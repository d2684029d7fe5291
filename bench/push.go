package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// push uploads b's blobs (those the registry lacks) and its manifest to
// the registry at host over plain HTTP.
func push(ctx context.Context, c *cacheDir, host string, b *builtImage) error {
	base := "http://" + host + "/v2/" + b.repo()
	blobs := append([]ocispec.Descriptor{{Digest: digest.FromBytes(b.Config), Size: int64(len(b.Config))}}, b.Layers...)
	for i, d := range blobs {
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, base+"/blobs/"+d.Digest.String(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("push %s: %w", b.repo(), err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			continue
		}
		var body io.Reader
		if i == 0 {
			body = bytes.NewReader(b.Config)
		} else {
			f, err := os.Open(blobFile(c, d.Digest))
			if err != nil {
				return err
			}
			defer f.Close()
			body = f
		}
		if err := pushBlob(ctx, base, d, body); err != nil {
			return fmt.Errorf("push %s blob %s: %w", b.repo(), d.Digest, err)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/manifests/"+b.manifestDigest().String(), bytes.NewReader(b.Manifest))
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("push %s manifest: %w", b.repo(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("push %s manifest: %s: %s", b.repo(), resp.Status, msg)
	}
	return nil
}

func pushBlob(ctx context.Context, base string, d ocispec.Descriptor, body io.Reader) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/blobs/uploads/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %s", resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	q := loc.Query()
	q.Set("digest", d.Digest.String())
	loc.RawQuery = q.Encode()
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), body)
	req.ContentLength = d.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("upload: %s: %s", resp.Status, msg)
	}
	return nil
}

// hasReferrerTag reports whether the repository holds the referrers
// fallback tag of b's manifest (an index was pushed before).
func hasReferrerTag(ctx context.Context, host string, b *builtImage) bool {
	d := b.manifestDigest()
	u := "http://" + host + "/v2/" + b.repo() + "/manifests/" + url.PathEscape(d.Algorithm().String()+"-"+d.Encoded())
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageIndex+","+ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
