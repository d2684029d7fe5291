package fetch

import (
	"errors"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Fuzz targets for every parser of outside bytes. They must never panic,
// must respect the 4 MiB cap, and must only fail with ErrFormat.

func FuzzParseManifest(f *testing.F) {
	for _, s := range []string{ociManifest, dockerManifest, noTypeManifest, ociIndex, config, `{"schemaVersion":1,"fsLayers":[]}`, `{}`, `null`, ``} {
		for _, mt := range []string{"", ocispec.MediaTypeImageManifest, mediaTypeDockerManifest, "application/json", ocispec.MediaTypeImageIndex} {
			f.Add(mt, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, mt string, b []byte) {
		m, err := ParseManifest(mt, b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("ParseManifest error %v does not wrap ErrFormat", err)
			}
			return
		}
		if len(b) > maxManifestSize {
			t.Fatalf("accepted a %d-byte manifest", len(b))
		}
		if !isManifestType(m.MediaType) {
			t.Fatalf("accepted media type %q", m.MediaType)
		}
		for _, l := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			if l.Digest.Validate() != nil || l.Size < 0 {
				t.Fatalf("accepted descriptor %+v", l)
			}
		}
	})
}

func FuzzParseIndex(f *testing.F) {
	for _, s := range []string{ociIndex, ociManifest, `{"schemaVersion":2,"manifests":[]}`, `{"schemaVersion":2,"manifests":[{"digest":"sha256:x"}]}`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := ParseIndex(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("ParseIndex error %v does not wrap ErrFormat", err)
			}
			return
		}
		if len(b) > maxManifestSize {
			t.Fatalf("accepted a %d-byte index", len(b))
		}
		for _, d := range ix.Manifests {
			if d.Digest.Validate() != nil || d.Size < 0 {
				t.Fatalf("accepted descriptor %+v", d)
			}
		}
		p, _ := ParsePlatform("linux/arm64")
		selectPlatform(ix, p)
	})
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{config, `{"rootfs":{"type":"layers","diff_ids":[]}}`, `{"rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("ParseConfig error %v does not wrap ErrFormat", err)
			}
			return
		}
		if len(b) > maxManifestSize {
			t.Fatalf("accepted a %d-byte config", len(b))
		}
		for _, d := range cfg.RootFS.DiffIDs {
			if d.Validate() != nil {
				t.Fatalf("accepted diff_id %q", d)
			}
		}
	})
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{
		"alpine", "alpine:3.20", "docker.io/library/alpine@sha256:" + hexA, "localhost:5000/a/b:c",
		"[::1]:5000/x", "r:t@sha256:" + hexA, "oci:/a/b", "oci:dir:tag", "oci:/a:b/c", "oci:/a@sha256:" + hexA,
		"oci:", "oci::", "oci:@", "", "@", ":",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			return
		}
		if r.Digest != "" && r.Digest.Validate() != nil {
			t.Fatalf("ParseReference(%q) accepted digest %q", s, r.Digest)
		}
		if strings.HasPrefix(s, layoutPrefix) {
			if r.Layout == "" || strings.Contains(r.Tag, "/") {
				t.Fatalf("ParseReference(%q) = %+v", s, r)
			}
			return
		}
		if r.Registry == "" || r.Repository == "" || (r.Tag == "" && r.Digest == "") {
			t.Fatalf("ParseReference(%q) = %+v, missing parts", s, r)
		}
		// What String prints must parse to the same reference.
		again, err := ParseReference(r.String())
		if err != nil {
			t.Fatalf("ParseReference(%q) = %q, which does not parse: %v", s, r.String(), err)
		}
		again.repo = r.repo
		if again != r {
			t.Fatalf("round trip of %q: %+v then %+v", s, r, again)
		}
	})
}
