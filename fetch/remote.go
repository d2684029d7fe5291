package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
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

// registrySource reads from one repository of a registry through an
// authenticated, retrying transport.
type registrySource struct {
	ref  Reference
	http *http.Client
}

var _ source = (*registrySource)(nil)

// newRegistrySource resolves credentials for ref's registry, runs the
// authentication handshake for pulling, and returns a source whose requests
// carry them.
func (c *Client) newRegistrySource(ctx context.Context, ref Reference) (*registrySource, error) {
	return c.newRegistrySourceScope(ctx, ref, transport.PullScope)
}

// newRegistrySourceScope is newRegistrySource for the given action
// (transport.PullScope or transport.PushScope).
func (c *Client) newRegistrySourceScope(ctx context.Context, ref Reference, action string) (*registrySource, error) {
	reg := ref.repo.Registry
	auth, err := authn.Resolve(ctx, c.keychain, ref.repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", reg.RegistryStr(), err)
	}
	rt, err := transport.NewWithContext(ctx, reg, auth, c.rt, []string{ref.repo.Scope(action)})
	if err != nil {
		return nil, registryError(err, "authenticate to "+ref.repoName(), reg.RegistryStr(), ref.repoName(), false)
	}
	hc := &http.Client{
		Transport: rt,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return fmt.Errorf("%s: stopped after %d redirects", redactURL(req), maxRedirects)
			}
			// Credentials are for the registry only: never send them to
			// the storage host a blob is redirected to.
			if req.URL.Host != via[0].URL.Host {
				req.Header.Del("Authorization")
			}
			return nil
		},
	}
	return &registrySource{ref: ref, http: hc}, nil
}

func (s *registrySource) String() string { return s.ref.repoName() }

func (s *registrySource) url(kind, ref string) string {
	reg := s.ref.repo.Registry
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", reg.Scheme(), reg.RegistryStr(), s.ref.Repository, kind, ref)
}

func (s *registrySource) manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	what := s.ref.repoName() + ":" + ref
	if strings.Contains(ref, ":") {
		what = s.ref.repoName() + "@" + ref
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url("manifests", ref), nil)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, "", "", registryError(err, what, s.ref.Registry, s.ref.repoName(), true)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", "", registryError(err, what, s.ref.Registry, s.ref.repoName(), true)
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
	what := fmt.Sprintf("blob %s from %s", desc.Digest, s.ref.repoName())
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
		return nil, 0, registryError(err, what, s.ref.Registry, s.ref.repoName(), false)
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
	return nil, 0, registryError(err, what, s.ref.Registry, s.ref.repoName(), false)
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
