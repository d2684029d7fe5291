package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layoutSource reads an OCI image layout directory
// (https://github.com/opencontainers/image-spec/blob/main/image-layout.md).
// Its files are outside bytes like a registry's, verified the same way.
type layoutSource struct {
	dir string
}

var _ source = (*layoutSource)(nil)

func (s *layoutSource) String() string { return layoutPrefix + s.dir }

// blobPath is blobs/<alg>/<hex> under the layout; d must be valid.
func (s *layoutSource) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", formatError("digest %q: %v", d, err)
	}
	return filepath.Join(s.dir, "blobs", d.Algorithm().String(), d.Encoded()), nil
}

// root reads index.json and picks the descriptor named by tag, or by
// pinned digest, or the only one that is not an artifact when neither is
// given.
func (s *layoutSource) root(tag string, pinned digest.Digest) (ocispec.Descriptor, error) {
	what := s.String()
	ix, _, err := s.index()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if pinned != "" {
		for _, d := range ix.Manifests {
			if d.Digest == pinned {
				return d, nil
			}
		}
		// A digest not listed in index.json may still name a manifest
		// among the blobs (a child of an index, say); its size is unknown.
		p, err := s.blobPath(pinned)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s: %w", what, err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s@%s: manifest not found: %w", what, pinned, ErrNotFound)
		}
		return ocispec.Descriptor{Digest: pinned, Size: fi.Size()}, nil
	}
	if tag == "" {
		// Artifacts (an artifactType that is not an image config's, as
		// some tools record for images) are not images to choose from: a
		// layout with one image and its indexes still has only one.
		images := slices.DeleteFunc(slices.Clone(ix.Manifests), func(d ocispec.Descriptor) bool {
			return d.ArtifactType != "" && d.ArtifactType != ocispec.MediaTypeImageConfig && d.ArtifactType != mediaTypeDockerConfig
		})
		if len(images) == 1 {
			return images[0], nil
		}
	}
	want := tag
	if want == "" {
		want = "latest"
	}
	var tags []string
	for _, d := range ix.Manifests {
		name := d.Annotations[ocispec.AnnotationRefName]
		if name == want {
			return d, nil
		}
		if name != "" {
			tags = append(tags, name)
		}
	}
	if len(tags) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%s:%s: no manifest in index.json has that %s annotation (it lists %d untagged manifests; pin one with oci:%s@sha256:…): %w",
			what, want, ocispec.AnnotationRefName, len(ix.Manifests), s.dir, ErrNotFound)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%s:%s: manifest not found (tags in index.json: %s): %w", what, want, strings.Join(tags, ", "), ErrNotFound)
}

// index reads and parses the layout's index.json; it also returns the raw
// bytes.
func (s *layoutSource) index() (ocispec.Index, []byte, error) {
	what := s.String()
	f, err := os.Open(filepath.Join(s.dir, "index.json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ocispec.Index{}, nil, fmt.Errorf("%s: no index.json (not an OCI image layout): %w", what, ErrNotFound)
		}
		return ocispec.Index{}, nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return ocispec.Index{}, nil, fmt.Errorf("%s: read index.json: %w", what, err)
	}
	if len(b) > maxManifestSize {
		return ocispec.Index{}, nil, formatError("%s: index.json is larger than 4 MiB", what)
	}
	ix, err := ParseIndex(b)
	if err != nil {
		return ocispec.Index{}, nil, fmt.Errorf("%s: index.json: %w", what, err)
	}
	return ix, b, nil
}

func (s *layoutSource) manifest(_ context.Context, ref string) ([]byte, string, digest.Digest, error) {
	d, err := digest.Parse(ref)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: manifest %q: only digests name manifests among blobs: %w", s, ref, err)
	}
	p, err := s.blobPath(d)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: %w", s, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", "", fmt.Errorf("%s@%s: manifest not found: %w", s, d, ErrNotFound)
		}
		return nil, "", "", fmt.Errorf("%s@%s: %w", s, d, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, "", "", fmt.Errorf("%s@%s: read manifest: %w", s, d, err)
	}
	if len(b) > maxManifestSize {
		return nil, "", "", formatError("%s@%s: manifest is larger than 4 MiB", s, d)
	}
	return b, "", "", nil
}

func (s *layoutSource) blob(_ context.Context, desc ocispec.Descriptor, off, n int64) (io.ReadCloser, int64, error) {
	what := fmt.Sprintf("blob %s from %s", desc.Digest, s)
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, fmt.Errorf("%s: %w", what, ErrNotFound)
		}
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	return sectionFile(f, off, n), off, nil
}

// sectionFile reads f from off for n bytes (n < 0: to its end) and closes f
// on Close.
func sectionFile(f *os.File, off, n int64) io.ReadCloser {
	if n < 0 {
		n = 1<<63 - 1 - off
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, off, n), f}
}
