package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxRedirects caps the redirects followed for one request.
const maxRedirects = 10

// manifestAccept lists the manifest media types Resolve understands.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	mediaTypeDockerManifest,
	mediaTypeDockerManifestList,
}, ", ")

// source is where an image's manifests and blobs come from: a registry
// repository or an OCI layout directory. Nothing a source returns is
// trusted; callers verify.
type source interface {
	// manifest returns the raw manifest named by ref (a tag, or a digest
	// string), its Content-Type and the digest the source claims for it
	// ("" if none).
	manifest(ctx context.Context, ref string) (b []byte, mediaType string, claimed digest.Digest, err error)
	// blob opens desc's bytes [off, off+n) (n < 0: to the end of the blob).
	// start is the blob offset the reader begins at; it is 0 rather than off
	// when the source ignored the range.
	blob(ctx context.Context, desc ocispec.Descriptor, off, n int64) (rc io.ReadCloser, start int64, err error)
	// String names the source for messages: "HOST/REPO" or "oci:/dir".
	String() string
}

// registrySource reads from one repository at one host (a registry or one
// of its mirrors) through an authenticated, retrying transport.
type registrySource struct {
	host string // host[:port], for messages and login hints
	base string // "scheme://host/v2": the API root
	repo string // the repository path at host
	ns   string // ?ns= for every request ("" for none): the registry a mirror serves
	http *http.Client
}

var _ source = (*registrySource)(nil)

func (s *registrySource) String() string { return s.host + "/" + s.repo }

// url is the API URL of kind ("manifests", "blobs", "referrers") ref,
// with query q (and ns).
func (s *registrySource) url(kind, ref string, q ...url.Values) string {
	u := s.base + "/" + s.repo + "/" + kind + "/" + ref
	v := url.Values{}
	for _, qv := range q {
		for k, vs := range qv {
			v[k] = append(v[k], vs...)
		}
	}
	if s.ns != "" {
		v.Set("ns", s.ns)
	}
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u
}

func (s *registrySource) manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	what := s.String() + ":" + ref
	if strings.Contains(ref, ":") {
		what = s.String() + "@" + ref
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url("manifests", ref), nil)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, "", "", registryError(err, what, s.host, s.String(), true)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", "", registryError(err, what, s.host, s.String(), true)
	}
	if resp.ContentLength > maxManifestSize {
		return nil, "", "", formatError("%s: manifest is larger than 4 MiB (%d bytes)", what, resp.ContentLength)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: read manifest: %w", what, err)
	}
	if len(b) > maxManifestSize {
		return nil, "", "", formatError("%s: manifest is larger than 4 MiB", what)
	}
	var claimed digest.Digest
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		claimed, err = digest.Parse(h)
		if err != nil {
			return nil, "", "", formatError("%s: Docker-Content-Digest %q: %v", what, h, err)
		}
	}
	return b, resp.Header.Get("Content-Type"), claimed, nil
}

func (s *registrySource) blob(ctx context.Context, desc ocispec.Descriptor, off, n int64) (io.ReadCloser, int64, error) {
	what := fmt.Sprintf("blob %s from %s", desc.Digest, s.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url("blobs", desc.Digest.String()), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	end := desc.Size - 1
	if n >= 0 {
		end = off + n - 1
	}
	ranged := (off > 0 || end < desc.Size-1) && end >= off
	if ranged {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, 0, registryError(err, what, s.host, s.String(), false)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp.Body, 0, nil
	case resp.StatusCode == http.StatusPartialContent && ranged:
		if err := checkContentRange(resp.Header.Get("Content-Range"), off, end, desc.Size); err != nil {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("%s: range %d-%d: %w", what, off, end, err)
		}
		return resp.Body, off, nil
	}
	defer resp.Body.Close()
	err = transport.CheckError(resp, http.StatusOK)
	if err == nil {
		err = fmt.Errorf("unexpected status %s", resp.Status)
	}
	return nil, 0, registryError(err, what, s.host, s.String(), false)
}

// checkContentRange checks a 206 answer's "bytes first-last/total" against
// the range asked for and the blob's size.
func checkContentRange(v string, first, last, size int64) error {
	spec, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return formatError("Content-Range %q: want \"bytes first-last/total\"", v)
	}
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return formatError("Content-Range %q: no total", v)
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return formatError("Content-Range %q: no range", v)
	}
	gotFirst, err1 := strconv.ParseInt(a, 10, 64)
	gotLast, err2 := strconv.ParseInt(b, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return formatError("Content-Range %q: %v", v, err)
	}
	if gotFirst != first || gotLast != last {
		return formatError("Content-Range %q: asked for bytes %d-%d", v, first, last)
	}
	if total != "*" {
		t, err := strconv.ParseInt(total, 10, 64)
		if err != nil || t != size {
			return formatError("Content-Range %q: blob size %d", v, size)
		}
	}
	return nil
}
