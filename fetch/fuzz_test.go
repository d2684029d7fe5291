package fetch

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

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

// referrerSeeds are a referrers index and a referrer manifest as the tests
// push them, and variants a hostile registry might send.
const (
	seedSubject   = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	referrersList = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":612,` +
		`"artifactType":"application/vnd.ocifs.index.v1","annotations":{"io.ocifs.index.version":"1"}},` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":612}]}`
	referrerManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"artifactType":"application/vnd.ocifs.index.v1",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},` +
		`"layers":[{"mediaType":"application/vnd.ocifs.index.layer.v1","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":100,` +
		`"annotations":{"io.ocifs.layer.digest":"sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"}}],` +
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + seedSubject + `","size":500},` +
		`"annotations":{"k":"v"}}`
)

func FuzzParseReferrers(f *testing.F) {
	for _, s := range []string{referrersList, ociIndex, ociManifest, `{"schemaVersion":2,"manifests":[]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":0}]}`, `<html>`, ``} {
		for _, mt := range []string{"", ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageIndex + "; charset=utf-8", ocispec.MediaTypeImageManifest} {
			f.Add(mt, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, mt string, b []byte) {
		descs, err := parseReferrers(mt, b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("parseReferrers error %v does not wrap ErrFormat", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, d := range descs {
			if d.Digest.Validate() != nil || d.Size <= 0 || d.Size > maxManifestSize || seen[d.Digest.String()] {
				t.Fatalf("accepted descriptor %+v", d)
			}
			seen[d.Digest.String()] = true
		}
	})
}

func FuzzParseReferrer(f *testing.F) {
	for _, s := range []string{referrerManifest, ociManifest, strings.Replace(referrerManifest, `"io.ocifs.layer.digest"`, `"x"`, 1),
		strings.Replace(referrerManifest, `"subject"`, `"subjekt"`, 1), `{"schemaVersion":2,"subject":null}`, `null`,
		withHead("sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "40"),
		withHead("sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "0100"),
		withHead("sha512:ee", "101")} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseReferrer(b, seedSubject)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("parseReferrer error %v does not wrap ErrFormat", err)
			}
			return
		}
		if m.Subject == nil || m.Subject.Digest != seedSubject || m.Config.Digest.Validate() != nil {
			t.Fatalf("accepted %+v", m)
		}
		for _, l := range m.Layers {
			if l.Digest.Validate() != nil || l.Size < 0 {
				t.Fatalf("accepted layer %+v", l)
			}
			if m.ArtifactType == ArtifactTypeIndex && l.MediaType == MediaTypeIndexLayer {
				if err := digest.Digest(l.Annotations[AnnotationLayerDigest]).Validate(); err != nil {
					t.Fatalf("accepted index blob without a layer digest: %+v", l)
				}
				_, hasHead := l.Annotations[AnnotationIndexHeadDigest]
				if size, d, ok := IndexHead(l); ok != hasHead || ok && (size <= 0 || size > l.Size || d.Validate() != nil) {
					t.Fatalf("accepted index blob head %d %q (ok %v) of %+v", size, d, ok, l)
				}
			}
		}
	})
}

// withHead returns referrerManifest with head annotations on its index blob.
func withHead(d, size string) string {
	return strings.Replace(referrerManifest, `"io.ocifs.layer.digest":`,
		`"`+AnnotationIndexHeadDigest+`":"`+d+`","`+AnnotationIndexHeadSize+`":"`+size+`","io.ocifs.layer.digest":`, 1)
}

func FuzzNextLink(f *testing.F) {
	for _, s := range []string{`</v2/app/referrers/sha256:abc?n=2>; rel="next"`, `<http://other/x>; rel=next`, `</a>; rel="prev", </b>; rel="next"`, `<>`, `<%zz>; rel=next`, ``} {
		f.Add(s)
	}
	base, _ := url.Parse("http://reg:5000/v2/app/referrers/sha256:abc")
	f.Fuzz(func(t *testing.T, link string) {
		next, err := nextLink([]string{link}, base)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("nextLink error %v does not wrap ErrFormat", err)
			}
			return
		}
		if next == "" {
			return
		}
		u, err := url.Parse(next)
		if err != nil || u.Host != base.Host || u.Scheme != base.Scheme {
			t.Fatalf("nextLink(%q) = %q: not on the registry", link, next)
		}
	})
}
