package fetch

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// downSwitch wraps a registry so that a test can take it down: while down,
// every connection is dropped before an answer, as by a registry that has
// gone away.
type downSwitch struct{ down atomic.Bool }

func (s *downSwitch) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// resolveOne pushes a one-layer image to a registry that can be taken
// down and resolves it by tag with a client on a fresh cache.
func resolveOne(t *testing.T, layer []byte) (sw *downSwitch, tr *testRegistry, cache string, im *Image) {
	t.Helper()
	sw = &downSwitch{}
	tr = newTestRegistry(t, sw.wrap)
	tr.push(t, "app:v1", testImage(t, types.OCIManifestSchema1, layer))
	cache = t.TempDir()
	c, _ := testClient(t, Options{CacheDir: cache})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	return sw, tr, cache, im
}

// manifestGETs counts the GETs of /manifests/ the registry saw.
func manifestGETs(tr *testRegistry) int {
	n := 0
	for _, r := range tr.faults.requests() {
		if r.Method == http.MethodGet && strings.Contains(r.Path, "/manifests/") {
			n++
		}
	}
	return n
}

// TestResolvePinnedOffline: once a manifest and its config have been
// fetched, a reference pinned by digest (the platform manifest's, or the
// index's) resolves from the cache with the registry down, without a
// request, and its layers still need the registry; a tag does not resolve,
// and says why.
func TestResolvePinnedOffline(t *testing.T) {
	var sw downSwitch
	tr := newTestRegistry(t, sw.wrap)
	amd := testImage(t, types.OCIManifestSchema1, randomBytes(t, 3000))
	arm := testImage(t, types.DockerManifestSchema2, randomBytes(t, 2000))
	ix := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	ref := pushIndex(t, tr, "app:v1", ix)
	ixd, _ := ix.Digest()
	armd, _ := arm.Digest()
	cache := t.TempDir()
	c, _ := testClient(t, Options{CacheDir: cache, Platform: "linux/arm64"})
	warm, err := c.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if warm.ManifestDigest.String() != armd.String() {
		t.Fatalf("Resolve(%s) = %s, want the arm64 manifest %s", ref, warm.ManifestDigest, armd)
	}

	sw.down.Store(true)
	c2, _ := testClient(t, Options{CacheDir: cache, Platform: "linux/arm64"})
	before := c2.Stats().Requests
	for _, tc := range []struct{ name, ref, index string }{
		{"manifest digest", tr.host + "/app@" + armd.String(), ""},
		{"index digest", tr.host + "/app@" + ixd.String(), ixd.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, err := c2.Resolve(t.Context(), tc.ref)
			if err != nil {
				t.Fatalf("Resolve(%s) with the registry down and a warm cache: %v", tc.ref, err)
			}
			if im.ManifestDigest != warm.ManifestDigest || string(im.IndexDigest) != tc.index ||
				!bytes.Equal(im.ManifestBytes(), warm.ManifestBytes()) || !bytes.Equal(im.ConfigBytes(), warm.ConfigBytes()) {
				t.Errorf("Resolve(%s) = manifest %s (index %q), want %s (index %q) with the same bytes",
					tc.ref, im.ManifestDigest, im.IndexDigest, warm.ManifestDigest, tc.index)
			}
			if im.ManifestMediaType != mediaTypeDockerManifest {
				t.Errorf("Resolve(%s).ManifestMediaType = %q, want %q", tc.ref, im.ManifestMediaType, mediaTypeDockerManifest)
			}
			if _, err := readAll(t, im, im.Layers()[0]); err == nil {
				t.Errorf("reading an uncached layer with the registry down succeeded")
			}
		})
	}
	// The layer reads above asked; resolving did not.
	c3, _ := testClient(t, Options{CacheDir: cache, Platform: "linux/arm64"})
	if _, err := c3.Resolve(t.Context(), tr.host+"/app@"+armd.String()); err != nil {
		t.Fatal(err)
	}
	if n := c3.Stats().Requests; n != 0 {
		t.Errorf("a pinned Resolve from a warm cache sent %d requests, want 0 (before: %d)", n, before)
	}

	_, err = c2.Resolve(t.Context(), ref)
	if err == nil {
		t.Fatalf("Resolve(%s) by tag with the registry down succeeded", ref)
	}
	if !strings.Contains(err.Error(), "needs the registry") || !strings.Contains(err.Error(), tr.host+"/app@"+ixd.String()) {
		t.Errorf("Resolve by tag with the registry down: %v; want it to say a tag needs the registry, and name what it named last", err)
	}
	// Without a record of the tag, the hint is the digest form.
	fresh, _ := testClient(t, Options{CacheDir: t.TempDir()})
	if _, err := fresh.Resolve(t.Context(), ref); err == nil || !strings.Contains(err.Error(), "by digest") {
		t.Errorf("Resolve by tag with the registry down and a cold cache: %v; want the hint to name the image by digest", err)
	}
}

// TestCachedManifestDamaged: a cached manifest whose bytes no longer match
// its digest is not served: it is removed and fetched again, and with the
// registry down the resolve fails instead.
func TestCachedManifestDamaged(t *testing.T) {
	var sw downSwitch
	tr := newTestRegistry(t, sw.wrap)
	img := testImage(t, types.OCIManifestSchema1, randomBytes(t, 3000))
	d := tr.push(t, "app:v1", img)
	cache := t.TempDir()
	c, _ := testClient(t, Options{CacheDir: cache})
	pinned := tr.host + "/app@" + d.String()
	if _, err := c.Resolve(t.Context(), tr.host+"/app:v1"); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(cache, blobsDir, "sha256", d.Encoded())
	damage := func() {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("the manifest is not in the cache after a resolve: %v", err)
		}
		// Still JSON, still a manifest: only its digest can tell.
		b = bytes.Replace(b, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":2 `), 1)
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	damage()
	gets := manifestGETs(tr)
	im, err := c.Resolve(t.Context(), pinned)
	if err != nil {
		t.Fatalf("Resolve(%s) over a damaged cached manifest: %v", pinned, err)
	}
	if got := digest.FromBytes(im.ManifestBytes()); got != d {
		t.Errorf("Resolve served manifest bytes of digest %s, want %s", got, d)
	}
	if manifestGETs(tr) == gets {
		t.Errorf("the damaged manifest was not fetched again")
	}
	if b, err := os.ReadFile(file); err != nil || digest.FromBytes(b) != d {
		t.Errorf("cache after the refetch: %v, digest %s; want the good manifest back", err, digest.FromBytes(b))
	}

	damage()
	sw.down.Store(true)
	if _, err := c.Resolve(t.Context(), pinned); err == nil {
		t.Fatalf("Resolve(%s) served a damaged cached manifest with the registry down", pinned)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the damaged manifest is still in the cache: %v", err)
	}

	// A resolve by tag fetches the manifest without reading the cached
	// copy: a damaged one there is replaced, not kept.
	sw.down.Store(false)
	if _, err := c.Resolve(t.Context(), tr.host+"/app:v1"); err != nil {
		t.Fatal(err)
	}
	damage()
	if _, err := c.Resolve(t.Context(), tr.host+"/app:v1"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(file); err != nil || digest.FromBytes(b) != d {
		t.Errorf("cache after a resolve by tag over a damaged copy: %v, digest %s; want the good manifest", err, digest.FromBytes(b))
	}
}

// TestReferrersSaved: the last referrers list a registry gave is given
// back when it cannot be asked, and under Offline without asking; the
// artifacts it lists are read, verified, from the cache.
func TestReferrersSaved(t *testing.T) {
	sw, tr, cache, im := resolveOne(t, randomBytes(t, 3000))
	if _, err := im.Referrers(Offline(t.Context()), ArtifactTypeIndex); !errors.Is(err, ErrOffline) {
		t.Errorf("Referrers offline before any answer: %v, want ErrOffline", err)
	}
	ix := pushReferrer(t, im, ArtifactTypeIndex, map[string]string{"v": "1"}, indexBlob(t, im.Layers()[0].Digest, 500))
	checkReferrers(t, im, ArtifactTypeIndex, ix)

	sw.down.Store(true)
	c2, _ := testClient(t, Options{CacheDir: cache})
	im2, err := c2.Resolve(t.Context(), tr.host+"/app@"+im.ManifestDigest.String())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := im2.Referrers(t.Context(), ArtifactTypeIndex); err != nil || len(got) != 1 || got[0].Digest != ix.desc.Digest {
		t.Errorf("Referrers with the registry down = %v, %v; want the saved list", got, err)
	}
	n := c2.Stats().Requests
	if got, err := im2.Referrers(Offline(t.Context()), ArtifactTypeIndex); err != nil || len(got) != 1 || got[0].Digest != ix.desc.Digest {
		t.Errorf("Referrers offline = %v, %v; want the saved list", got, err)
	}
	if _, err := im2.FetchReferrer(Offline(t.Context()), ix.desc); err != nil {
		t.Errorf("FetchReferrer offline: %v; want the cached artifact manifest", err)
	}
	if got := c2.Stats().Requests; got != n {
		t.Errorf("offline lookups sent %d requests", got-n)
	}
	// Another artifact type was never asked for: nothing saved to give.
	if _, err := im2.Referrers(t.Context(), ArtifactTypeProfile); err == nil {
		t.Errorf("Referrers of a type never listed, with the registry down: no error")
	}
}

// TestCheckRangeKept: bytes check accepted are kept and read back, checked
// again, with the registry down; a kept copy damaged on disk, or one check
// rejects, is removed and fetched again.
func TestCheckRangeKept(t *testing.T) {
	layer := randomBytes(t, 64<<10)
	sw, tr, cache, im := resolveOne(t, layer)
	desc := im.Layers()[0]
	const off, n = 1000, 3000
	want := layer[off : off+n]
	var checks int
	check := func(b []byte) error {
		checks++
		if !bytes.Equal(b, want) {
			return formatError("range differs")
		}
		return nil
	}
	if err := im.CheckRangeKept(t.Context(), desc, off, n, check); err != nil {
		t.Fatal(err)
	}
	key := rangeKey(desc.Digest, off, n)
	file := filepath.Join(cache, rangesDir, "sha256", key.Encoded())
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the range was not kept: %v", err)
	}

	sw.down.Store(true)
	checks = 0
	if err := im.CheckRangeKept(t.Context(), desc, off, n, check); err != nil || checks != 1 {
		t.Errorf("CheckRangeKept with the registry down = %v after %d checks; want the kept bytes, checked once", err, checks)
	}

	// Damaged on disk: the checksum header catches it.
	b, _ := os.ReadFile(file)
	b[len(b)-1] ^= 1
	os.WriteFile(file, b, 0o600)
	if err := im.CheckRangeKept(t.Context(), desc, off, n, check); err == nil {
		t.Errorf("CheckRangeKept over a damaged kept copy with the registry down succeeded")
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the damaged kept copy is still there: %v", err)
	}

	// Rejected by check (intact, but not what check wants): fetched again.
	sw.down.Store(false)
	if err := im.CheckRangeKept(t.Context(), desc, off, n, check); err != nil {
		t.Fatal(err)
	}
	want = layer[:n] // what check accepts now differs from what was kept
	gets := len(tr.faults.requests())
	err := im.CheckRangeKept(t.Context(), desc, off, n, check)
	if err == nil {
		t.Errorf("CheckRangeKept accepted bytes its check rejects")
	}
	if len(tr.faults.requests()) == gets {
		t.Errorf("a kept copy check rejected was not fetched again")
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the rejected kept copy is still there: %v", err)
	}
}

// FuzzParseSavedReferrers: any bytes give a list of valid descriptors or
// an ErrFormat error, never a panic.
func FuzzParseSavedReferrers(f *testing.F) {
	for _, s := range []string{`[]`, `null`, `{}`, `[{}]`, `[1]`, ``,
		`[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":500,"artifactType":"application/vnd.ocifs.index.v1"}]`,
		`[{"digest":"sha256:zz","size":-1}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		descs, err := parseSavedReferrers(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("parseSavedReferrers error %v does not wrap ErrFormat", err)
			}
			return
		}
		if descs == nil {
			t.Fatal("parseSavedReferrers gave a nil list")
		}
		for _, d := range descs {
			if d.Digest.Validate() != nil || d.Size < 0 {
				t.Fatalf("accepted descriptor %+v", d)
			}
		}
	})
}
