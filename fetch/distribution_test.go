package fetch

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// buildImage builds a one-layer image holding one file of n random bytes.
func buildImage(t *testing.T, name string, n int) *fstest.Image {
	t.Helper()
	img, err := fstest.Build([]fstest.Layer{{
		Compression: fstest.Gzip,
		Files: []fstest.File{{
			Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644},
			Data:   randomBytes(t, n),
		}},
	}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// upstreamSource returns the authenticated source of im's registry, the
// last host of its chain.
func upstreamSource(t *testing.T, im *Image) *registrySource {
	t.Helper()
	cs := im.src.(*chainSource)
	rs, err := cs.dial(t.Context(), cs.eps[len(cs.eps)-1])
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestDistributionReferrers runs the referrers round trip against the
// Debian docker-registry (distribution 2.8), which has no referrers API, so
// the tag schema carries everything.
func TestDistributionReferrers(t *testing.T) {
	host := fstest.StartRegistry(t)
	ctx := t.Context()
	imgA, imgB := buildImage(t, "a", 5000), buildImage(t, "b", 3000)
	if err := imgA.Push(ctx, host, "app", "a"); err != nil {
		t.Fatal(err)
	}
	if err := imgB.Push(ctx, host, "app", "b"); err != nil {
		t.Fatal(err)
	}
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(ctx, host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Resolve(ctx, host+"/app:b")
	if err != nil {
		t.Fatal(err)
	}
	if a.ManifestDigest != imgA.ManifestDesc.Digest {
		t.Fatalf("Resolve = %s, want the pushed %s", a.ManifestDigest, imgA.ManifestDesc.Digest)
	}
	checkReferrers(t, a, ArtifactTypeIndex)
	// The premise: this registry has no referrers API.
	resp, err := http.Get(fmt.Sprintf("http://%s/v2/app/referrers/%s", host, a.ManifestDigest))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /v2/app/referrers/… = %s; the test expects distribution 2.8's 404", resp.Status)
	}

	layer := a.Layers()[0].Digest
	ix1 := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"io.ocifs.index.version": "1"}, indexBlob(t, layer, 4000))
	ix2 := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"io.ocifs.index.version": "2"}, indexBlob(t, layer, 2000))
	forB := pushReferrer(t, b, ArtifactTypeIndex, map[string]string{"for": "b"}, indexBlob(t, b.Layers()[0].Digest, 1000))

	fresh, _ := testClient(t, Options{})
	a2, err := fresh.Resolve(ctx, host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	checkReferrers(t, a2, ArtifactTypeIndex, ix1, ix2)
	checkReferrers(t, a2, "", ix1, ix2)
	b2, err := fresh.Resolve(ctx, host+"/app:b")
	if err != nil {
		t.Fatal(err)
	}
	checkReferrers(t, b2, ArtifactTypeIndex, forB)
	// Both are in the index under the fallback tag, nothing else is.
	ix, err := fetchFallbackIndex(ctx, fresh, upstreamSource(t, a2), fallbackTag(a.ManifestDigest))
	if err != nil || len(ix.Manifests) != 2 || ix.MediaType != ocispec.MediaTypeImageIndex {
		t.Fatalf("fallback index = %+v, %v; want an OCI index of 2 entries", ix, err)
	}

	// Tamper with the fallback index as someone with push rights could: an
	// entry naming another image's referrer, and one with a wrong size.
	wrongSize := ix1.desc
	wrongSize.Size--
	for _, tc := range []struct {
		name  string
		entry ocispec.Descriptor
		msg   string
	}{
		{"referrer of another image", forB.desc, "refers to another image"},
		{"wrong size", wrongSize, "bytes, want"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix, err := json.Marshal(ocispec.Index{
				Versioned: specs.Versioned{SchemaVersion: 2},
				MediaType: ocispec.MediaTypeImageIndex,
				Manifests: []ocispec.Descriptor{tc.entry},
			})
			if err != nil {
				t.Fatal(err)
			}
			putDistributionManifest(t, host, "app", fallbackTag(a.ManifestDigest), ocispec.MediaTypeImageIndex, ix)
			c3, _ := testClient(t, Options{})
			a3, err := c3.Resolve(ctx, host+"/app:a")
			if err != nil {
				t.Fatal(err)
			}
			list, err := a3.Referrers(ctx, ArtifactTypeIndex)
			if err != nil || len(list) != 1 {
				t.Fatalf("Referrers = %v, %v; want the tampered entry", list, err)
			}
			m, err := a3.FetchReferrer(ctx, list[0])
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("FetchReferrer(tampered) = %+v, %v; want ErrFormat mentioning %q", m, err, tc.msg)
			}
		})
	}
}

// putDistributionManifest PUTs b under repo:ref of a plain-HTTP registry.
func putDistributionManifest(t *testing.T, host, repo, ref, mt string, b []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut,
		fmt.Sprintf("http://%s/v2/%s/manifests/%s", host, repo, ref), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("PUT %s:%s: %s %s", repo, ref, resp.Status, body)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != digest.FromBytes(b).String() {
		t.Fatalf("PUT %s:%s stored %s", repo, ref, got)
	}
}
