package fetch

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestParseRepository(t *testing.T) {
	for _, tt := range []struct{ in, registry, repo string }{
		{"registry.example/ocifs-indexes", "registry.example", "ocifs-indexes"},
		{"localhost:5000/a/b", "localhost:5000", "a/b"},
		{"myorg/indexes", "index.docker.io", "myorg/indexes"},
	} {
		r, err := ParseRepository(tt.in)
		if err != nil || r.Registry != tt.registry || r.Repository != tt.repo || r.Tag != "" || r.Digest != "" {
			t.Errorf("ParseRepository(%q) = %+v, %v; want %s / %s", tt.in, r, err, tt.registry, tt.repo)
		}
	}
	for _, in := range []string{"", "registry.example/idx:v1", "registry.example/idx@sha256:" + strings.Repeat("a", 64),
		"oci:/tmp/layout", "Registry.example/UPPER", "registry.example/a b"} {
		if r, err := ParseRepository(in); err == nil {
			t.Errorf("ParseRepository(%q) = %+v, want an error", in, r)
		}
	}
}

// TestInRepository: the referrers of an image can live in another
// repository (an index repository), keyed by its manifest digest: pushed
// there, they are found there (referrers API or the fallback tag), with the
// same checks, and never in the image's own repository or under another
// image's digest.
func TestInRepository(t *testing.T) {
	for _, mode := range referrerModes {
		t.Run(mode.name, func(t *testing.T) {
			tr := newTestRegistry(t, nil, mode.opts...)
			if mode.rule != nil {
				tr.faults.add(&rule{match: referrersGET, times: -1, do: mode.rule})
			}
			tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 3000)))
			tr.push(t, "other:b", testImage(t, types.OCIManifestSchema1, randomBytes(t, 2000)))
			c, _ := testClient(t, Options{})
			a, err := c.Resolve(t.Context(), tr.host+"/app:a")
			if err != nil {
				t.Fatal(err)
			}
			b, err := c.Resolve(t.Context(), tr.host+"/other:b")
			if err != nil {
				t.Fatal(err)
			}
			ia, err := a.InRepository(tr.host + "/indexes/all")
			if err != nil {
				t.Fatal(err)
			}
			if ia.Source() != tr.host+"/indexes/all" || a.Source() != tr.host+"/app" || ia.ManifestDigest != a.ManifestDigest {
				t.Fatalf("InRepository: source %s (image %s), digest %s; want %s/indexes/all and the image's digest", ia.Source(), a.Source(), ia.ManifestDigest, tr.host)
			}
			before := len(tr.faults.requests())
			ix := pushReferrer(t, ia, ArtifactTypeIndex, map[string]string{"where": "index repo"}, indexBlob(t, a.Layers()[0].Digest, 800))

			for _, r := range tr.faults.requests()[before:] {
				if r.Method != http.MethodGet && r.Method != http.MethodHead && !strings.HasPrefix(r.Path, "/v2/indexes/all/") {
					t.Errorf("push into the index repository sent %s %s", r.Method, r.Path)
				}
			}
			fresh, _ := testClient(t, Options{})
			a2, err := fresh.Resolve(t.Context(), tr.host+"/app:a")
			if err != nil {
				t.Fatal(err)
			}
			checkReferrers(t, a2, ArtifactTypeIndex) // not in the image's repository
			ia2, err := a2.InRepository(tr.host + "/indexes/all")
			if err != nil {
				t.Fatal(err)
			}
			checkReferrers(t, ia2, ArtifactTypeIndex, ix)
			ib, err := b.InRepository(tr.host + "/indexes/all")
			if err != nil {
				t.Fatal(err)
			}
			checkReferrers(t, ib, ArtifactTypeIndex) // another image's digest finds nothing
			// The artifact names a's manifest: read as b's, it is refused.
			if _, err := ib.FetchReferrer(t.Context(), ix.desc); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "refers to another image") {
				t.Errorf("FetchReferrer of a's artifact as b's = %v, want ErrFormat naming another image", err)
			}
			if _, err := a.InRepository("oci:/x"); err == nil {
				t.Error("InRepository of a layout: no error")
			}
		})
	}
}
