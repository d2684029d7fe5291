package fetch

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// indexBlob returns a layer-index blob for layer with random bytes.
func indexBlob(t testing.TB, layer digest.Digest, n int) Blob {
	t.Helper()
	b := randomBytes(t, n)
	return Blob{
		Desc: ocispec.Descriptor{
			MediaType:   MediaTypeIndexLayer,
			Digest:      digest.FromBytes(b),
			Size:        int64(len(b)),
			Annotations: map[string]string{AnnotationLayerDigest: layer.String()},
		},
		Data: b,
	}
}

// pushed is one referrer pushed by a test, to compare with what is listed.
type pushed struct {
	desc  ocispec.Descriptor
	blobs []Blob
}

// pushReferrer pushes an artifact and checks the descriptor it returns.
func pushReferrer(t *testing.T, im *Image, artifactType string, ann map[string]string, blobs ...Blob) pushed {
	t.Helper()
	desc, err := im.PushReferrer(t.Context(), artifactType, ann, blobs)
	if err != nil {
		t.Fatalf("PushReferrer(%s): %v", artifactType, err)
	}
	if desc.ArtifactType != artifactType || desc.MediaType != ocispec.MediaTypeImageManifest || !maps.Equal(desc.Annotations, ann) {
		t.Fatalf("PushReferrer(%s) = %+v", artifactType, desc)
	}
	return pushed{desc, blobs}
}

// checkReferrers lists im's referrers of artifactType and checks that they
// are exactly want (digest and annotations), and that each one's manifest
// and blobs come back verified and equal to what was pushed.
func checkReferrers(t *testing.T, im *Image, artifactType string, want ...pushed) {
	t.Helper()
	got, err := im.Referrers(t.Context(), artifactType)
	if err != nil {
		t.Fatalf("Referrers(%q): %v", artifactType, err)
	}
	if got == nil {
		t.Errorf("Referrers(%q) = nil, want a non-nil list", artifactType)
	}
	var gotDigests, wantDigests []string
	for _, d := range got {
		gotDigests = append(gotDigests, d.Digest.String())
	}
	for _, p := range want {
		wantDigests = append(wantDigests, p.desc.Digest.String())
	}
	slices.Sort(gotDigests)
	slices.Sort(wantDigests)
	if !slices.Equal(gotDigests, wantDigests) {
		t.Fatalf("Referrers(%q) = %v, want %v", artifactType, gotDigests, wantDigests)
	}
	for _, p := range want {
		i := slices.IndexFunc(got, func(d ocispec.Descriptor) bool { return d.Digest == p.desc.Digest })
		d := got[i]
		if d.ArtifactType != p.desc.ArtifactType || !maps.Equal(d.Annotations, p.desc.Annotations) || d.Size != p.desc.Size {
			t.Errorf("Referrers(%q) entry %s = type %q size %d annotations %v; want %q %d %v",
				artifactType, d.Digest, d.ArtifactType, d.Size, d.Annotations, p.desc.ArtifactType, p.desc.Size, p.desc.Annotations)
		}
		raw, err := im.FetchManifest(t.Context(), d)
		if err != nil || digest.FromBytes(raw) != d.Digest {
			t.Fatalf("FetchManifest(%s) = %d bytes, %v", d.Digest, len(raw), err)
		}
		m, err := im.FetchReferrer(t.Context(), d)
		if err != nil {
			t.Fatalf("FetchReferrer(%s): %v", d.Digest, err)
		}
		if m.Subject == nil || m.Subject.Digest != im.ManifestDigest || m.ArtifactType != p.desc.ArtifactType ||
			m.Config.Digest != emptyJSONDesc.Digest || len(m.Layers) != max(len(p.blobs), 1) {
			t.Fatalf("FetchReferrer(%s) = %+v", d.Digest, m)
		}
		for j, b := range p.blobs {
			if m.Layers[j].Digest != b.Desc.Digest || !maps.Equal(m.Layers[j].Annotations, b.Desc.Annotations) {
				t.Errorf("FetchReferrer(%s).Layers[%d] = %+v, want %+v", d.Digest, j, m.Layers[j], b.Desc)
			}
			before := im.c.Stats()
			data, err := im.FetchBlob(t.Context(), m.Layers[j])
			if err != nil || !bytes.Equal(data, b.Data) {
				t.Fatalf("FetchBlob(%s) = %d bytes, %v; want the %d pushed", b.Desc.Digest, len(data), err, len(b.Data))
			}
			after := im.c.Stats()
			_, layout := im.src.(*layoutSource)
			if (after.Requests <= before.Requests && !layout) || after.Blobs[b.Desc.Digest]-before.Blobs[b.Desc.Digest] != b.Desc.Size {
				t.Errorf("FetchBlob(%s): Stats went from %+v to %+v; want a request and %d bytes counted", b.Desc.Digest, before, after, b.Desc.Size)
			}
		}
	}
}

// referrerModes are the ways a registry can (not) offer the referrers API.
var referrerModes = []struct {
	name string
	opts []registry.Option
	// rule, if set, answers GET /referrers/ instead of the registry.
	rule     func(http.ResponseWriter, *http.Request, http.Handler)
	fallback bool // the tag schema must be used
}{
	{"referrers API", []registry.Option{registry.WithReferrersSupport(true)}, nil, false},
	{"404 then tag fallback", nil, nil, true},
	{"405 then tag fallback", []registry.Option{registry.WithReferrersSupport(true)}, status(http.StatusMethodNotAllowed), true},
	{"non-index 200 then tag fallback", []registry.Option{registry.WithReferrersSupport(true)}, func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html>hello</html>"))
	}, true},
}

func referrersGET(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/referrers/")
}

func TestReferrers(t *testing.T) {
	for _, mode := range referrerModes {
		t.Run(mode.name, func(t *testing.T) {
			tr := newTestRegistry(t, nil, mode.opts...)
			if mode.rule != nil {
				tr.faults.add(&rule{match: referrersGET, times: -1, do: mode.rule})
			}
			imgA := testImage(t, types.OCIManifestSchema1, randomBytes(t, 3000), randomBytes(t, 2000))
			imgB := testImage(t, types.DockerManifestSchema2, randomBytes(t, 1000))
			tr.push(t, "app:a", imgA)
			tr.push(t, "app:b", imgB)
			c, _ := testClient(t, Options{})
			a, err := c.Resolve(t.Context(), tr.host+"/app:a")
			if err != nil {
				t.Fatal(err)
			}
			b, err := c.Resolve(t.Context(), tr.host+"/app:b")
			if err != nil {
				t.Fatal(err)
			}
			if got, err := a.Referrers(t.Context(), ""); err != nil || len(got) != 0 || got == nil {
				t.Fatalf("Referrers before any push = %v, %v; want an empty list", got, err)
			}

			l0, l1 := a.Layers()[0].Digest, a.Layers()[1].Digest
			ix1 := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"io.ocifs.index.version": "1"},
				indexBlob(t, l0, 500), indexBlob(t, l1, 700))
			ix2 := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"io.ocifs.index.version": "2", "note": "second"},
				indexBlob(t, l1, 900))
			other := pushReferrer(t, a, "application/example", nil)
			forB := pushReferrer(t, b, ArtifactTypeIndex, map[string]string{"for": "b"}, indexBlob(t, b.Layers()[0].Digest, 100))
			// Pushing the same artifact again changes nothing.
			if d, err := a.PushReferrer(t.Context(), ArtifactTypeIndex, ix2.desc.Annotations, ix2.blobs); err != nil || d.Digest != ix2.desc.Digest {
				t.Fatalf("PushReferrer again = %s, %v; want %s", d.Digest, err, ix2.desc.Digest)
			}

			fresh, _ := testClient(t, Options{})
			a2, err := fresh.Resolve(t.Context(), tr.host+"/app:a")
			if err != nil {
				t.Fatal(err)
			}
			b2, err := fresh.Resolve(t.Context(), tr.host+"/app:b@"+b.ManifestDigest.String())
			if err != nil {
				t.Fatal(err)
			}
			checkReferrers(t, a2, ArtifactTypeIndex, ix1, ix2)
			checkReferrers(t, a2, "", ix1, ix2, other)
			checkReferrers(t, a2, "application/none")
			checkReferrers(t, b2, ArtifactTypeIndex, forB)

			var tagGETs, apiGETs int
			for _, r := range tr.faults.requests() {
				if r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/manifests/"+fallbackTag(a.ManifestDigest)) {
					tagGETs++
				}
				if r.Method == http.MethodGet && strings.Contains(r.Path, "/referrers/") {
					apiGETs++
				}
			}
			// PushReferrer reads the tag 4 times (the test registry never
			// answers with OCI-Subject); Referrers reads it as the
			// fallback, and with the API at most once per client: beside
			// its first API call, before the client knows the registry
			// has the API (cancelled, and maybe never sent, once the API
			// answers).
			if mode.fallback && tagGETs != 8 {
				t.Errorf("%d GETs of the fallback tag, want 8", tagGETs)
			}
			if !mode.fallback && (tagGETs < 4 || tagGETs > 6) {
				t.Errorf("%d GETs of the fallback tag, want 4 to 6", tagGETs)
			}
			// Referrers is called 5 times (1 by c, 4 by fresh); a client
			// that saw the registry lacks the API does not ask it again.
			if want := map[bool]int{false: 5, true: 2}[mode.fallback]; apiGETs != want {
				t.Errorf("%d GETs of the referrers API, want %d", apiGETs, want)
			}
		})
	}
}

func TestReferrersTampered(t *testing.T) {
	tr := newTestRegistry(t, nil) // no referrers API: the tag is all there is
	tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 3000)))
	tr.push(t, "app:b", testImage(t, types.OCIManifestSchema1, randomBytes(t, 2000)))
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), tr.host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Resolve(t.Context(), tr.host+"/app:b")
	if err != nil {
		t.Fatal(err)
	}
	good := pushReferrer(t, a, ArtifactTypeIndex, nil, indexBlob(t, a.Layers()[0].Digest, 400))
	forB := pushReferrer(t, b, ArtifactTypeIndex, nil, indexBlob(t, b.Layers()[0].Digest, 400))
	notIndex := pushReferrer(t, a, "application/example", nil)
	tag := fallbackTag(a.ManifestDigest)
	// The tag's GETs are answered with index, claiming the digest claimed
	// (the test registry would refuse an index naming absent manifests).
	var index []byte
	var claimed digest.Digest
	tr.faults.add(&rule{match: manifestGET(tag), times: -1, do: func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Header().Set("Docker-Content-Digest", claimed.String())
		w.Write(index)
	}})
	serve := func(entries ...ocispec.Descriptor) {
		var err error
		index, err = json.Marshal(ocispec.Index{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageIndex,
			Manifests: entries,
		})
		if err != nil {
			t.Fatal(err)
		}
		claimed = digest.FromBytes(index)
	}

	random := good.desc
	random.Digest = digest.FromString("not there")
	wrongSize := good.desc
	wrongSize.Size++
	lying := notIndex.desc
	lying.ArtifactType = ArtifactTypeIndex
	for _, tc := range []struct {
		name  string
		entry ocispec.Descriptor
		want  error
		msg   string
	}{
		{"digest of nothing", random, ErrNotFound, ""},
		{"referrer of another image", forB.desc, ErrFormat, "refers to another image"},
		{"the image itself", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: a.ManifestDigest,
			Size: int64(len(a.ManifestBytes())), ArtifactType: ArtifactTypeIndex}, ErrFormat, "no subject"},
		{"wrong size", wrongSize, ErrFormat, "bytes, want"},
		{"artifactType lie", lying, ErrFormat, "artifactType"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serve(tc.entry)
			list, err := a.Referrers(t.Context(), ArtifactTypeIndex)
			if err != nil || len(list) != 1 || list[0].Digest != tc.entry.Digest {
				t.Fatalf("Referrers = %v, %v; want the tampered entry listed", list, err)
			}
			m, err := a.FetchReferrer(t.Context(), list[0])
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("FetchReferrer(tampered entry) = %+v, %v; want %v mentioning %q", m, err, tc.want, tc.msg)
			}
		})
	}

	t.Run("manifest bytes flipped", func(t *testing.T) {
		serve(good.desc)
		tr.faults.add(&rule{match: manifestGET(good.desc.Digest.String()), times: 1, do: flipByte(40)})
		raw, err := a.FetchManifest(t.Context(), good.desc)
		var de *DigestError
		if !errors.As(err, &de) || raw != nil {
			t.Fatalf("FetchManifest(flipped) = %d bytes, %v; want a *DigestError", len(raw), err)
		}
	})
	t.Run("blob bytes flipped", func(t *testing.T) {
		tr.faults.add(&rule{match: blobGET(good.blobs[0].Desc.Digest), times: -1, do: flipByte(7)})
		data, err := a.FetchBlob(t.Context(), good.blobs[0].Desc)
		var de *DigestError
		if !errors.As(err, &de) || data != nil {
			t.Fatalf("FetchBlob(flipped) = %d bytes, %v; want a *DigestError", len(data), err)
		}
	})
	t.Run("fallback index bytes flipped", func(t *testing.T) {
		serve(good.desc)
		index = bytes.Replace(index, []byte(`"size":`), []byte(`"size":1`), 1)
		list, err := a.Referrers(t.Context(), "")
		var de *DigestError
		if !errors.As(err, &de) || list != nil {
			t.Fatalf("Referrers(flipped index) = %v, %v; want a *DigestError", list, err)
		}
	})
}

func TestReferrersTagNotAnIndex(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	tr.push(t, "app:a", img)
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), tr.host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	// Someone tagged an image manifest where the referrers index belongs.
	raw, _ := img.RawManifest()
	tr.putManifest(t, "app", fallbackTag(a.ManifestDigest), ocispec.MediaTypeImageManifest, raw)
	if list, err := a.Referrers(t.Context(), ""); !errors.Is(err, ErrFormat) {
		t.Errorf("Referrers with a manifest under the fallback tag = %v, %v; want ErrFormat", list, err)
	}
	if _, err := a.PushReferrer(t.Context(), ArtifactTypeIndex, nil, nil); !errors.Is(err, ErrFormat) {
		t.Errorf("PushReferrer over a manifest under the fallback tag: %v; want ErrFormat, and the tag left alone", err)
	}
}

func TestReferrersPaginated(t *testing.T) {
	tr := newTestRegistry(t, nil, registry.WithReferrersSupport(true))
	tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 100)))
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), tr.host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	p1 := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"n": "1"})
	p2 := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"n": "2"})
	// Serve the registry's list one entry per page, linked by Link headers.
	tr.faults.add(&rule{match: referrersGET, times: -1, do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		page := r.URL.Query().Get("page")
		r2 := r.Clone(r.Context())
		r2.URL.RawQuery = ""
		rec := record(next, r2)
		var ix ocispec.Index
		if err := json.Unmarshal(rec.Body.Bytes(), &ix); err != nil || len(ix.Manifests) != 2 {
			http.Error(w, "bad list", http.StatusInternalServerError)
			return
		}
		slices.SortFunc(ix.Manifests, func(x, y ocispec.Descriptor) int { return strings.Compare(string(x.Digest), string(y.Digest)) })
		if page == "" {
			ix.Manifests = ix.Manifests[:1]
			w.Header().Set("Link", `<`+r.URL.Path+`?page=2>; rel="next"`)
		} else {
			ix.Manifests = ix.Manifests[1:]
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		json.NewEncoder(w).Encode(ix)
	}})
	checkReferrers(t, a, ArtifactTypeIndex, p1, p2)
}

func TestReferrersLayout(t *testing.T) {
	imgs := []v1.Image{
		testImage(t, types.OCIManifestSchema1, randomBytes(t, 1000)),
		testImage(t, types.OCIManifestSchema1, randomBytes(t, 2000)),
	}
	dir := writeLayout(t, imgs, []string{"a", "b"})
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), "oci:"+dir+":a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Resolve(t.Context(), "oci:"+dir+":b")
	if err != nil {
		t.Fatal(err)
	}
	checkReferrers(t, a, "")
	ix := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"k": "v"}, indexBlob(t, a.Layers()[0].Digest, 300))
	other := pushReferrer(t, a, "application/example", nil)
	forB := pushReferrer(t, b, ArtifactTypeIndex, nil, indexBlob(t, b.Layers()[0].Digest, 300))

	fresh, _ := testClient(t, Options{})
	a2, err := fresh.Resolve(t.Context(), "oci:"+dir+":a")
	if err != nil {
		t.Fatalf("Resolve after pushing referrers into the layout: %v", err)
	}
	checkReferrers(t, a2, ArtifactTypeIndex, ix)
	checkReferrers(t, a2, "", ix, other)
	b2, err := fresh.Resolve(t.Context(), "oci:"+dir+":b")
	if err != nil {
		t.Fatal(err)
	}
	checkReferrers(t, b2, ArtifactTypeIndex, forB)

	// A layout of one untagged image stays resolvable without a tag once
	// it also holds the image's referrers.
	one := writeLayout(t, imgs[:1], []string{""})
	o, err := c.Resolve(t.Context(), "oci:"+one)
	if err != nil {
		t.Fatal(err)
	}
	p := pushReferrer(t, o, ArtifactTypeIndex, nil, indexBlob(t, o.Layers()[0].Digest, 10))
	o2, err := fresh.Resolve(t.Context(), "oci:"+one)
	if err != nil {
		t.Fatalf("Resolve(untagged layout with a referrer): %v", err)
	}
	checkReferrers(t, o2, ArtifactTypeIndex, p)
}

func TestPushReferrerBadInput(t *testing.T) {
	tr := newTestRegistry(t, nil)
	tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 100)))
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), tr.host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	good := indexBlob(t, a.Layers()[0].Digest, 10)
	badDigest := good
	// another first byte (random data may start with any one)
	badDigest.Data = append([]byte{good.Data[0] ^ 0xff}, good.Data[1:]...)
	for _, tc := range []struct {
		name         string
		artifactType string
		blobs        []Blob
	}{
		{"no artifactType", "", []Blob{good}},
		{"data not matching its digest", ArtifactTypeIndex, []Blob{badDigest}},
		{"data not matching its size", ArtifactTypeIndex, []Blob{{Desc: good.Desc, Data: good.Data[:5]}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tr.faults.requests())
			if _, err := a.PushReferrer(t.Context(), tc.artifactType, nil, tc.blobs); err == nil {
				t.Fatal("PushReferrer succeeded")
			}
			if n := len(tr.faults.requests()) - before; n != 0 {
				t.Errorf("PushReferrer sent %d requests before rejecting its input", n)
			}
		})
	}
}

func TestNextLink(t *testing.T) {
	base := mustURL(t, "http://reg:5000/v2/app/referrers/sha256:abc")
	for _, tc := range []struct {
		name  string
		links []string
		want  string
		err   bool
	}{
		{"none", nil, "", false},
		{"relative", []string{`</v2/app/referrers/sha256:abc?n=2&last=x>; rel="next"`}, "http://reg:5000/v2/app/referrers/sha256:abc?n=2&last=x", false},
		{"absolute same host", []string{`<http://reg:5000/v2/next>; rel=next`}, "http://reg:5000/v2/next", false},
		{"other rel first", []string{`</prev>; rel="prev", </next>; rel="next"`}, "http://reg:5000/next", false},
		{"other host", []string{`<http://evil/v2/next>; rel="next"`}, "", true},
		{"garbage", []string{`nonsense`}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nextLink(tc.links, base)
			if got != tc.want || (err != nil) != tc.err {
				t.Errorf("nextLink(%q) = %q, %v; want %q, error %v", tc.links, got, err, tc.want, tc.err)
			}
		})
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// ociSubject answers manifest PUTs as a registry with the referrers API
// does: with the OCI-Subject header naming the manifest's subject (or
// subject, when set).
func ociSubject(subject string) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var m ocispec.Manifest
		json.Unmarshal(body, &m)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := record(next, r)
		if m.Subject != nil {
			s := subject
			if s == "" {
				s = m.Subject.Digest.String()
			}
			rec.Header().Set("OCI-Subject", s)
		}
		copyHeader(w, rec)
		w.Write(rec.Body.Bytes())
	}
}

func manifestPUT(r *http.Request) bool {
	return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/")
}

func TestPushReferrerOCISubject(t *testing.T) {
	tr := newTestRegistry(t, nil, registry.WithReferrersSupport(true))
	tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 100)))
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), tr.host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	tr.faults.add(&rule{match: manifestPUT, times: 1, do: ociSubject("")})
	p := pushReferrer(t, a, ArtifactTypeIndex, map[string]string{"k": "v"}, indexBlob(t, a.Layers()[0].Digest, 10))
	for _, r := range tr.faults.requests() {
		if strings.HasSuffix(r.Path, "/manifests/"+fallbackTag(a.ManifestDigest)) {
			t.Errorf("%s %s: the fallback tag was touched though the registry took the subject", r.Method, r.Path)
		}
	}
	checkReferrers(t, a, ArtifactTypeIndex, p)
	var query bool
	for _, r := range tr.faults.requests() {
		query = query || strings.Contains(r.Path, "/referrers/")
	}
	if !query {
		t.Error("Referrers did not ask the referrers API")
	}

	// A registry that claims another subject is not believed.
	tr.faults.add(&rule{match: manifestPUT, times: 1, do: ociSubject(digest.FromString("other").String())})
	if _, err := a.PushReferrer(t.Context(), "application/example", nil, nil); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "OCI-Subject") {
		t.Errorf("PushReferrer with a wrong OCI-Subject answer: %v; want ErrFormat naming OCI-Subject", err)
	}
}

func TestReferrersQuery(t *testing.T) {
	tr := newTestRegistry(t, nil, registry.WithReferrersSupport(true))
	tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 100)))
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), tr.host+"/app:a")
	if err != nil {
		t.Fatal(err)
	}
	var gotQuery string
	tr.faults.add(&rule{match: referrersGET, times: 1, do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		gotQuery = r.URL.RawQuery
		next.ServeHTTP(w, r)
	}})
	if _, err := a.Referrers(t.Context(), ArtifactTypeIndex); err != nil {
		t.Fatal(err)
	}
	if want := "artifactType=application%2Fvnd.ocifs.index.v1"; gotQuery != want {
		t.Errorf("referrers query = %q, want %q", gotQuery, want)
	}
}

// TestIndexHeadAnnotations: the head annotations of an index blob are
// both there or neither, a sha256 digest and a canonical decimal size
// within the blob; anything else refuses the artifact.
func TestIndexHeadAnnotations(t *testing.T) {
	const e = "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
	for _, c := range []struct {
		name     string
		manifest string
		ok       bool
		size     int64
	}{
		{"none", referrerManifest, true, 0},
		{"both", withHead(e, "40"), true, 40},
		{"whole blob", withHead(e, "100"), true, 100},
		{"past the blob", withHead(e, "101"), false, 0},
		{"zero", withHead(e, "0"), false, 0},
		{"leading zero", withHead(e, "040"), false, 0},
		{"signed", withHead(e, "+40"), false, 0},
		{"not sha256", withHead("sha512:"+strings.Repeat("e", 128), "40"), false, 0},
		{"bad digest", withHead("sha256:xyz", "40"), false, 0},
		{"digest alone", strings.Replace(withHead(e, "40"), AnnotationIndexHeadSize, "x", 1), false, 0},
		{"size alone", strings.Replace(withHead(e, "40"), AnnotationIndexHeadDigest, "x", 1), false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := parseReferrer([]byte(c.manifest), seedSubject)
			if !c.ok {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("parseReferrer = %v, want an ErrFormat error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseReferrer: %v", err)
			}
			size, d, ok := IndexHead(m.Layers[0])
			if ok != (c.size > 0) || size != c.size || ok && d != e {
				t.Fatalf("IndexHead = %d, %q, %v; want %d", size, d, ok, c.size)
			}
		})
	}
}

// tagBesideAPI makes a test registry with an image and one index referrer
// pushed (the tag fallback written, as PushReferrer does here), and rules
// that hold each referrers API request until a GET of the fallback tag has
// arrived (held is set if none did within 10 s); tagDo answers those GETs.
func tagBesideAPI(t *testing.T, tagDo func(http.ResponseWriter, *http.Request, http.Handler), opts ...registry.Option) (tr *testRegistry, ref, tag string, ix pushed, held *atomic.Bool) {
	t.Helper()
	tr = newTestRegistry(t, nil, opts...)
	tr.push(t, "app:a", testImage(t, types.OCIManifestSchema1, randomBytes(t, 1000)))
	ref = tr.host + "/app:a"
	c, _ := testClient(t, Options{})
	a, err := c.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	ix = pushReferrer(t, a, ArtifactTypeIndex, nil, indexBlob(t, a.Layers()[0].Digest, 100))
	tag = "/manifests/" + fallbackTag(a.ManifestDigest)
	tagSeen := make(chan struct{})
	var once sync.Once
	held = new(atomic.Bool)
	tr.faults.add(&rule{match: func(r *http.Request) bool { return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, tag) }, times: -1,
		do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			once.Do(func() { close(tagSeen) })
			tagDo(w, r, next)
		}})
	tr.faults.add(&rule{match: referrersGET, times: -1, do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		select {
		case <-tagSeen:
		case <-time.After(10 * time.Second):
			held.Store(true)
		}
		next.ServeHTTP(w, r)
	}})
	return tr, ref, tag, ix, held
}

// TestReferrersAPIAndTagAtOnce: a client that does not know whether a
// registry has the referrers API reads the fallback tag while it asks
// the API, instead of after the API's 404: the test registry holds the
// API request until the tag's has arrived. Once the client knows the
// API is missing, it asks only the tag; on a registry with the API, it
// asks only the API.
func TestReferrersAPIAndTagAtOnce(t *testing.T) {
	for _, mode := range referrerModes[:2] {
		t.Run(mode.name, func(t *testing.T) {
			pass := func(w http.ResponseWriter, r *http.Request, next http.Handler) { next.ServeHTTP(w, r) }
			tr, ref, tag, ix, held := tagBesideAPI(t, pass, mode.opts...)
			fresh, _ := testClient(t, Options{})
			a2, err := fresh.Resolve(t.Context(), ref)
			if err != nil {
				t.Fatal(err)
			}
			count := func() (api, tags int) {
				for _, r := range tr.faults.requests() {
					switch {
					case r.Method == http.MethodGet && strings.Contains(r.Path, "/referrers/"):
						api++
					case r.Method == http.MethodGet && strings.HasSuffix(r.Path, tag):
						tags++
					}
				}
				return api, tags
			}
			api0, tags0 := count()
			checkReferrers(t, a2, ArtifactTypeIndex, ix)
			if held.Load() {
				t.Error("the API request waited 10 s for a tag request that was not sent beside it")
			}
			api1, tags1 := count()
			if api1-api0 != 1 || tags1-tags0 != 1 {
				t.Errorf("first lookup: %d API and %d tag requests, want 1 and 1", api1-api0, tags1-tags0)
			}
			checkReferrers(t, a2, ArtifactTypeIndex, ix)
			api2, tags2 := count()
			wantAPI, wantTags := 0, 1
			if !mode.fallback {
				wantAPI, wantTags = 1, 0
			}
			if api2-api1 != wantAPI || tags2-tags1 != wantTags {
				t.Errorf("second lookup: %d API and %d tag requests, want %d and %d", api2-api1, tags2-tags1, wantAPI, wantTags)
			}
		})
	}
}

// TestReferrersAPIAnswersTagFails: on a registry with the API, the tag
// read sent beside the first API request is only a guess: when it fails
// (here with a 500) the lookup still returns the API's list, and no
// error. The API answers only once the failing read has been sent.
func TestReferrersAPIAnswersTagFails(t *testing.T) {
	fail := func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		w.WriteHeader(http.StatusInternalServerError)
	}
	_, ref, _, ix, held := tagBesideAPI(t, fail, registry.WithReferrersSupport(true))
	fresh, _ := testClient(t, Options{MaxAttempts: 1})
	a2, err := fresh.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	checkReferrers(t, a2, ArtifactTypeIndex, ix)
	if held.Load() {
		t.Error("no tag read was sent beside the API request")
	}
}
