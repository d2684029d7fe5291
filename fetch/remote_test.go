package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestResolve(t *testing.T) {
	tr := newTestRegistry(t, nil)
	layer0, layer1 := randomBytes(t, 3000), randomBytes(t, 5000)
	for _, tc := range []struct {
		name string
		mt   types.MediaType
		want string
	}{
		{"docker schema 2", types.DockerManifestSchema2, mediaTypeDockerManifest},
		{"oci", types.OCIManifestSchema1, ocispec.MediaTypeImageManifest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := testImage(t, tc.mt, layer0, layer1)
			repo := "test/" + strings.ReplaceAll(tc.name, " ", "")
			want := tr.push(t, repo+":v1", img)
			raw, _ := img.RawManifest()
			rawCfg, _ := img.RawConfigFile()
			c, _ := testClient(t, Options{})
			for _, ref := range []string{tr.host + "/" + repo + ":v1", tr.host + "/" + repo + "@" + want.String()} {
				im, err := c.Resolve(t.Context(), ref)
				if err != nil {
					t.Fatalf("Resolve(%q): %v", ref, err)
				}
				if im.ManifestDigest != want {
					t.Errorf("Resolve(%q).ManifestDigest = %s, want %s", ref, im.ManifestDigest, want)
				}
				if im.ManifestMediaType != tc.want || im.Manifest.MediaType != tc.want {
					t.Errorf("Resolve(%q) media type = %q/%q, want %q", ref, im.ManifestMediaType, im.Manifest.MediaType, tc.want)
				}
				if im.Ref != ref {
					t.Errorf("Resolve(%q).Ref = %q", ref, im.Ref)
				}
				if im.IndexDigest != "" {
					t.Errorf("Resolve(%q).IndexDigest = %q, want none", ref, im.IndexDigest)
				}
				if !bytes.Equal(im.ManifestBytes(), raw) || !bytes.Equal(im.ConfigBytes(), rawCfg) {
					t.Errorf("Resolve(%q): manifest or config bytes differ from what was pushed", ref)
				}
				if got := len(im.Layers()); got != 2 || len(im.Config.RootFS.DiffIDs) != 2 {
					t.Fatalf("Resolve(%q): %d layers, %d diff_ids, want 2", ref, got, len(im.Config.RootFS.DiffIDs))
				}
				got, err := readAll(t, im, im.Layers()[1])
				if err != nil || !bytes.Equal(got, layer1) {
					t.Errorf("OpenBlob(layer 1) = %d bytes, %v; want the pushed %d bytes", len(got), err, len(layer1))
				}
			}
			st := c.Stats()
			d1 := layerDesc(t, img, 1).Digest
			if st.Requests == 0 || st.BytesFetched < 2*int64(len(layer1)) || st.Blobs[d1] != 2*int64(len(layer1)) {
				t.Errorf("Stats = %+v; want requests, bytes and 2×%d bytes for layer 1", st, len(layer1))
			}
		})
	}
}

func TestResolveDockerHubDefaults(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alpine", "index.docker.io/library/alpine:latest"},
		{"alpine:3.20", "index.docker.io/library/alpine:3.20"},
		{"docker.io/me/app", "index.docker.io/me/app:latest"},
		{"localhost:5000/app", "localhost:5000/app:latest"},
	} {
		ref, err := ParseReference(tc.in)
		if err != nil {
			t.Fatalf("ParseReference(%q): %v", tc.in, err)
		}
		if got := ref.String(); got != tc.want {
			t.Errorf("ParseReference(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// pushOne pushes a one-layer image to repo:v1 and returns it, its digest
// and its layer's bytes.
func pushOne(t *testing.T, tr *testRegistry, repo string, size int) (v1.Image, digest.Digest, []byte) {
	t.Helper()
	b := randomBytes(t, size)
	img := testImage(t, types.OCIManifestSchema1, b)
	return img, tr.push(t, repo+":v1", img), b
}

func TestBlobFaults(t *testing.T) {
	const size = 64 << 10
	for _, tc := range []struct {
		name string
		rule func(d digest.Digest) *rule
		// wantErr, if set, is the error the whole read must give.
		wantErr error
		// wantRange, if set, is a Range header some request must carry.
		wantRange string
	}{
		{"503 then success", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: 1, do: status(http.StatusServiceUnavailable)}
		}, nil, ""},
		{"reset mid-body then resumed", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: 1, do: resetAfter(1000)}
		}, nil, "bytes=1000-65535"},
		{"body cut short once then resumed", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: 1, do: truncateTo(4000)}
		}, nil, "bytes=4000-65535"},
		{"body always cut short", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: -1, do: truncateTo(100)}
		}, ErrFormat, ""},
		{"flipped byte", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: -1, do: flipByte(size / 2)}
		}, ErrFormat, ""},
		{"connection closed before headers", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: 2, do: closeConn}
		}, nil, ""},
		{"range ignored on resume", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: 1, do: resetAfter(2000)}
		}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestRegistry(t, nil)
			img, _, want := pushOne(t, tr, "app", size)
			desc := layerDesc(t, img, 0)
			c, _ := testClient(t, Options{})
			im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
			if err != nil {
				t.Fatal(err)
			}
			tr.faults.add(tc.rule(desc.Digest))
			if tc.name == "range ignored on resume" {
				tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: ignoreRange})
			}
			if tc.wantErr != nil {
				// The reader itself must fail, never end cleanly.
				_, err := readAll(t, im, desc)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("reading blob: err = %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "blob "+desc.Digest.String()+" from "+tr.host+"/app") {
					t.Errorf("error %q does not name the blob and repository", err)
				}
				var de *DigestError
				if tc.name == "flipped byte" && (!errors.As(err, &de) || de.Want != desc.Digest) {
					t.Errorf("err = %#v, want a *DigestError for %s", err, desc.Digest)
				}
			}
			rc, err := im.OpenBlob(t.Context(), desc)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			// Copy into the cache as fs does, to check nothing bad is admitted.
			err = c.Cache().Put(desc.Digest, rc)
			if tc.wantErr != nil {
				if err == nil || c.Cache().Has(desc.Digest) {
					t.Errorf("Put of a bad blob: err = %v, cached = %v; want an error and nothing cached", err, c.Cache().Has(desc.Digest))
				}
				return
			}
			if err != nil {
				t.Fatalf("reading blob: %v", err)
			}
			f, err := c.Cache().Open(desc.Digest)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(f)
			f.Close()
			if !bytes.Equal(got, want) {
				t.Errorf("cached blob differs from the pushed one (%d vs %d bytes)", len(got), len(want))
			}
			if tc.wantRange != "" {
				found := false
				for _, r := range tr.faults.requests() {
					found = found || r.Range == tc.wantRange
				}
				if !found {
					t.Errorf("no request with Range %q in %+v", tc.wantRange, tr.faults.requests())
				}
			}
		})
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, want := pushOne(t, tr, "app", 1000)
	desc := layerDesc(t, img, 0)
	c, delays := testClient(t, Options{})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: 1, do: status(http.StatusTooManyRequests, "Retry-After", "7")})
	before := c.Stats().Requests
	got, err := readAll(t, im, desc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after 429 = %d bytes, %v", len(got), err)
	}
	if ds := delays(); len(ds) != 1 || ds[0] != 7*time.Second {
		t.Errorf("delays = %v, want [7s] from Retry-After", ds)
	}
	if n := c.Stats().Requests - before; n != 2 {
		t.Errorf("requests = %d, want 2 (429, then success)", n)
	}
}

func TestRetriesGiveUp(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, _ := pushOne(t, tr, "app", 1000)
	desc := layerDesc(t, img, 0)
	c, delays := testClient(t, Options{MaxAttempts: 3})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: status(http.StatusBadGateway)})
	before := c.Stats().Requests
	_, err = im.OpenBlob(t.Context(), desc)
	if err == nil || !strings.Contains(err.Error(), "502") {
		t.Fatalf("OpenBlob with 502s: err = %v, want a 502 error", err)
	}
	if n := c.Stats().Requests - before; n != 3 {
		t.Errorf("requests = %d, want MaxAttempts = 3", n)
	}
	for _, d := range delays() {
		if d < backoffBase/2 || d > backoffCap {
			t.Errorf("backoff delay %v outside [%v, %v]", d, backoffBase/2, backoffCap)
		}
	}
}

func TestStallResumes(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, want := pushOne(t, tr, "app", 32<<10)
	desc := layerDesc(t, img, 0)
	c, _ := testClient(t, Options{AttemptTimeout: 200 * time.Millisecond})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: 1, do: stallAfter(5000, release)})
	got, err := readAll(t, im, desc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through a stall = %d bytes, %v; want %d bytes", len(got), err, len(want))
	}
}

func TestHeaderStallRetried(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, want := pushOne(t, tr, "app", 1000)
	desc := layerDesc(t, img, 0)
	c, _ := testClient(t, Options{AttemptTimeout: 200 * time.Millisecond})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: 1, do: func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		select { // no headers at all
		case <-r.Context().Done():
		case <-release:
		}
	}})
	before := c.Stats().Requests
	got, err := readAll(t, im, desc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after a header stall = %d bytes, %v", len(got), err)
	}
	if n := c.Stats().Requests - before; n != 2 {
		t.Errorf("requests = %d, want 2 (stalled, then success)", n)
	}
}

func TestFetchRange(t *testing.T) {
	const size = 20000
	for _, tc := range []struct {
		name string
		rule func(d digest.Digest) *rule
	}{
		{"plain", nil},
		{"range ignored", func(d digest.Digest) *rule { return &rule{match: blobGET(d), times: -1, do: ignoreRange} }},
		{"reset then retried", func(d digest.Digest) *rule { return &rule{match: blobGET(d), times: 1, do: resetAfter(10)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestRegistry(t, nil)
			img, _, blob := pushOne(t, tr, "app", size)
			desc := layerDesc(t, img, 0)
			c, _ := testClient(t, Options{})
			im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
			if err != nil {
				t.Fatal(err)
			}
			if tc.rule != nil {
				tr.faults.add(tc.rule(desc.Digest))
			}
			for _, r := range []struct{ off, n int64 }{{0, 100}, {5000, 7000}, {size - 1, 1}, {size - 300, 300}, {10, 0}} {
				span := blob[r.off : r.off+r.n]
				got, err := im.FetchRange(t.Context(), desc, r.off, r.n, digest.FromBytes(span))
				if err != nil || !bytes.Equal(got, span) {
					t.Errorf("FetchRange(off=%d, n=%d) = %d bytes, %v; want %d right bytes", r.off, r.n, len(got), err, r.n)
				}
			}
			_, err = im.FetchRange(t.Context(), desc, 100, 50, digest.FromBytes(blob[101:151]))
			var de *DigestError
			if !errors.As(err, &de) || de.Offset != 100 || !errors.Is(err, ErrFormat) {
				t.Errorf("FetchRange with a wrong span digest: err = %v, want a *DigestError at offset 100", err)
			}
			if _, err := im.FetchRange(t.Context(), desc, size-10, 11, digest.FromBytes(nil)); err == nil {
				t.Error("FetchRange past the end of the blob succeeded")
			}
		})
	}
}

func TestFetchRangeFlippedByte(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, blob := pushOne(t, tr, "app", 5000)
	desc := layerDesc(t, img, 0)
	c, _ := testClient(t, Options{})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: flipByte(3)})
	got, err := im.FetchRange(t.Context(), desc, 0, 100, digest.FromBytes(blob[:100]))
	var de *DigestError
	if !errors.As(err, &de) || got != nil {
		t.Fatalf("FetchRange over a flipped byte = %d bytes, %v; want a *DigestError and no bytes", len(got), err)
	}
}

func TestRedirectDropsCredentials(t *testing.T) {
	// The storage host serves blobs without auth and records what it got.
	storage := &faultHandler{}
	var tr *testRegistry
	storage.next = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tr.reg.ServeHTTP(w, r) })
	storageSrv := httptest.NewServer(storage)
	t.Cleanup(storageSrv.Close)
	// Use "localhost" so the storage host differs from 127.0.0.1 by name too.
	storageURL := strings.Replace(storageSrv.URL, "127.0.0.1", "localhost", 1)

	tr = newTestRegistry(t, func(h http.Handler) http.Handler { return basicAuth(h, "user", "secret") })
	img := testImage(t, "", randomBytes(t, 9000))
	tr.push(t, "app:v1", img, remoteAuth("user", "secret"))
	desc := layerDesc(t, img, 0)
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		http.Redirect(w, r, storageURL+r.URL.Path+"?X-Amz-Signature=topsecret", http.StatusTemporaryRedirect)
	}})
	// The storage host fails once, so a retry is logged with its URL.
	storage.add(&rule{match: func(*http.Request) bool { return true }, times: 1, do: status(http.StatusServiceUnavailable)})

	var logs logBuffer
	c, _ := testClient(t, Options{Keychain: staticKeychain{"user", "secret"}, Logger: logs.logger()})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, im, desc)
	if err != nil || len(got) != 9000 {
		t.Fatalf("read through redirect = %d bytes, %v", len(got), err)
	}
	sawAuth := false
	for _, r := range tr.faults.requests() {
		sawAuth = sawAuth || r.Auth != ""
	}
	if !sawAuth {
		t.Error("registry never got credentials; the test proves nothing")
	}
	reqs := storage.requests()
	if len(reqs) < 2 {
		t.Fatalf("storage host saw %d requests, want 2 (503, then success)", len(reqs))
	}
	for _, r := range reqs {
		if r.Auth != "" {
			t.Errorf("storage host got Authorization %q; credentials must not follow a redirect", r.Auth)
		}
	}
	if s := logs.String(); strings.Contains(s, "topsecret") || strings.Contains(s, "secret\"") || !strings.Contains(s, "retrying request") {
		t.Errorf("log must show the retry without the signed query or credentials:\n%s", s)
	}
}

func TestUnauthorized(t *testing.T) {
	tr := newTestRegistry(t, func(h http.Handler) http.Handler { return basicAuth(h, "user", "secret") })
	img := testImage(t, "", randomBytes(t, 100))
	tr.push(t, "app:v1", img, remoteAuth("user", "secret"))
	ref := tr.host + "/app:v1"

	c, _ := testClient(t, Options{Keychain: staticKeychain{"user", "wrong"}})
	_, err := c.Resolve(t.Context(), ref)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Resolve with wrong credentials: err = %v, want ErrUnauthorized", err)
	}
	for _, want := range []string{"401 Unauthorized for " + tr.host + "/app", "docker login " + tr.host, "podman login " + tr.host, "containers/auth.json"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	c, _ = testClient(t, Options{Keychain: staticKeychain{"user", "secret"}})
	if _, err := c.Resolve(t.Context(), ref); err != nil {
		t.Fatalf("Resolve with credentials: %v", err)
	}
}

func TestManifestErrors(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, good, _ := pushOne(t, tr, "app", 100)
	other, _, _ := pushOne(t, tr, "other", 100)
	otherRaw, _ := other.RawManifest()
	raw, _ := img.RawManifest()

	schema1 := []byte(`{"schemaVersion":1,"name":"app","tag":"old","fsLayers":[]}`)
	tr.putManifest(t, "app", "schema1", mediaTypeDockerSchema1Sig, schema1)
	tr.putManifest(t, "app", "weird", "application/vnd.example.thing+json", []byte(`{"schemaVersion":2}`))
	big := bytes.Repeat([]byte(" "), maxManifestSize)
	big = append(append([]byte(nil), raw[:len(raw)-1]...), append(big, '}')...)
	tr.putManifest(t, "app", "big", ocispec.MediaTypeImageManifest, big)

	// A manifest whose config lists fewer diff_ids than it has layers.
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = nil
	broken, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	tr.push(t, "app:nodiffids", broken)

	// Answers that lie about the manifest.
	tr.faults.add(&rule{match: manifestGET(good.String()), times: -1, do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Write(otherRaw)
	}})
	tr.faults.add(&rule{match: manifestGET("liar"), times: -1, do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", good.String())
		w.Write(otherRaw)
	}})

	c, _ := testClient(t, Options{})
	for _, tc := range []struct {
		name, ref string
		want      error
		says      []string
	}{
		{"404 tag", "app:nope", ErrNotFound, []string{tr.host + "/app:nope: manifest not found", "skopeo list-tags docker://" + tr.host + "/app"}},
		{"404 repo", "nothing:v1", ErrNotFound, []string{"manifest not found"}},
		{"schema 1", "app:schema1", ErrFormat, []string{"invalid input", mediaTypeDockerSchema1Sig, "schema 1"}},
		{"unknown media type", "app:weird", ErrFormat, []string{"application/vnd.example.thing+json"}},
		{"oversized manifest", "app:big", ErrFormat, []string{"manifest is larger than 4 MiB"}},
		{"pinned digest mismatch", "app@" + good.String(), ErrFormat, []string{"digest mismatch", "want " + good.String()}},
		{"Docker-Content-Digest mismatch", "app:liar", ErrFormat, []string{"digest mismatch", "Docker-Content-Digest"}},
		{"diff_ids count", "app:nodiffids", ErrFormat, []string{"0 diff_ids", "1 layers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Resolve(t.Context(), tr.host+"/"+tc.ref)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Resolve(%q): err = %v, want %v", tc.ref, err, tc.want)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Resolve(%q): error %q does not say %q", tc.ref, err, s)
				}
			}
		})
	}
	if _, err := c.Resolve(t.Context(), tr.host+"/app@"+good.String()); err != nil {
		var de *DigestError
		if !errors.As(err, &de) || de.Got != digest.FromBytes(otherRaw) {
			t.Errorf("pinned mismatch: err = %#v, want *DigestError with Got = the served bytes' digest", err)
		}
	}
}

func TestIndexPlatform(t *testing.T) {
	tr := newTestRegistry(t, nil)
	amd := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	arm := testImage(t, types.OCIManifestSchema1, randomBytes(t, 200))
	ix := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	ref := pushIndex(t, tr, "multi:v1", ix)
	ixDigest, _ := ix.Digest()
	amdDigest, _ := amd.Digest()
	armDigest, _ := arm.Digest()

	for _, tc := range []struct {
		platform string
		want     v1.Hash
	}{
		{"linux/amd64", amdDigest},
		{"linux/arm64", armDigest},
		{"linux/arm64/v8", armDigest},
	} {
		c, _ := testClient(t, Options{Platform: tc.platform})
		im, err := c.Resolve(t.Context(), ref)
		if err != nil {
			t.Fatalf("Resolve(%q, platform %s): %v", ref, tc.platform, err)
		}
		if im.ManifestDigest.String() != tc.want.String() || im.IndexDigest.String() != ixDigest.String() {
			t.Errorf("Resolve(platform %s) = manifest %s from index %s, want %s from %s", tc.platform, im.ManifestDigest, im.IndexDigest, tc.want, ixDigest)
		}
	}
	c, _ := testClient(t, Options{Platform: "linux/s390x"})
	_, err := c.Resolve(t.Context(), ref)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "available: linux/amd64, linux/arm64/v8") ||
		!strings.Contains(err.Error(), "linux/s390x") {
		t.Errorf("Resolve with no matching platform: err = %v, want ErrNotFound listing linux/amd64, linux/arm64/v8", err)
	}
}

func TestDockerManifestList(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img := testImage(t, types.DockerManifestSchema2, randomBytes(t, 100))
	ix := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "riscv64"}}},
	)
	ref := pushIndex(t, tr, "list:v1", ix)
	c, _ := testClient(t, Options{Platform: "linux/riscv64"})
	im, err := c.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if im.ManifestMediaType != mediaTypeDockerManifest || im.Manifest.Config.MediaType != string(types.DockerConfigJSON) {
		t.Errorf("media types = %q, config %q; want Docker schema 2 kept", im.ManifestMediaType, im.Manifest.Config.MediaType)
	}
}

// pushIndex writes ix to tr as repoTag and returns the full reference.
func pushIndex(t *testing.T, tr *testRegistry, repoTag string, ix v1.ImageIndex) string {
	t.Helper()
	ref := tr.host + "/" + repoTag
	if err := remoteWriteIndex(ref, ix); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	return ref
}

func TestContextCancelled(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, _ := pushOne(t, tr, "app", 10000)
	desc := layerDesc(t, img, 0)
	c, _ := testClient(t, Options{})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: stallAfter(100, release)})
	ctx, cancel := context.WithCancel(t.Context())
	rc, err := im.OpenBlob(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 100)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := rc.Read(buf)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel: err = %v, want context.Canceled", err)
	}
}
