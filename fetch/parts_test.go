package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// partsOf returns parts of blob at the given [off, end) bounds, with their
// right digests.
func partsOf(blob []byte, bounds ...[2]int64) []Part {
	var parts []Part
	for _, b := range bounds {
		parts = append(parts, Part{Off: b[0], N: b[1] - b[0], Digest: digest.FromBytes(blob[b[0]:b[1]])})
	}
	return parts
}

// partsImage pushes a one-layer image of size random bytes and resolves it
// with a fresh client.
func partsImage(t *testing.T, size int, opts Options) (*testRegistry, *Image, ocispec.Descriptor, []byte) {
	t.Helper()
	tr := newTestRegistry(t, nil)
	img, _, blob := pushOne(t, tr, "app", size)
	c, _ := testClient(t, opts)
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	return tr, im, layerDesc(t, img, 0), blob
}

// blobRanges lists the Range headers of the GETs of blob d ("" for none).
func blobRanges(tr *testRegistry, d digest.Digest) []string {
	var out []string
	for _, r := range tr.faults.requests() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/blobs/"+d.String()) {
			out = append(out, r.Range)
		}
	}
	return out
}

func TestFetchParts(t *testing.T) {
	const size = 40000
	// Adjacent, one byte overlapping, one with a gap before it, empty.
	bounds := [][2]int64{{1000, 5000}, {5000, 9000}, {8999, 12000}, {15000, 20000}, {20000, 20000}}
	for _, tc := range []struct {
		name       string
		rule       func(d digest.Digest) *rule
		wantRanges []string
		// wantBytes is how many blob bytes must be counted in Stats.
		wantBytes int64
	}{
		{"one request", nil, []string{"bytes=1000-19999"}, 19000},
		{"range ignored", func(d digest.Digest) *rule { return &rule{match: blobGET(d), times: -1, do: ignoreRange} },
			[]string{"bytes=1000-19999"}, 20000},
		{"reset mid-range then resumed", func(d digest.Digest) *rule { return &rule{match: blobGET(d), times: 1, do: resetAfter(6000)} },
			[]string{"bytes=1000-19999", "bytes=7000-19999"}, 19000},
		{"reset, resumed where Range is ignored", func(d digest.Digest) *rule {
			return &rule{match: blobGET(d), times: 2, do: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if r.Header.Get("Range") == "bytes=1000-19999" {
					resetAfter(6000)(w, r, next)
					return
				}
				ignoreRange(w, r, next)
			}}
		}, []string{"bytes=1000-19999", "bytes=7000-19999"}, 6000 + 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, im, desc, blob := partsImage(t, size, Options{})
			if tc.rule != nil {
				tr.faults.add(tc.rule(desc.Digest))
			}
			before := im.c.Stats()
			parts := partsOf(blob, bounds...)
			data, errs := im.FetchParts(t.Context(), desc, parts)
			if len(data) != len(parts) || len(errs) != len(parts) {
				t.Fatalf("FetchParts returned %d data and %d errors for %d parts", len(data), len(errs), len(parts))
			}
			for i, p := range parts {
				if errs[i] != nil || !bytes.Equal(data[i], blob[p.Off:p.Off+p.N]) {
					t.Errorf("FetchParts part %d (%d+%d) = %d bytes, %v; want the blob's bytes", i, p.Off, p.N, len(data[i]), errs[i])
				}
			}
			after := im.c.Stats()
			if got := blobRanges(tr, desc.Digest); fmt.Sprint(got) != fmt.Sprint(tc.wantRanges) {
				t.Errorf("blob GETs with Range %q, want %q", got, tc.wantRanges)
			}
			if got, want := after.Requests-before.Requests, int64(len(tc.wantRanges)); got != want {
				t.Errorf("Stats.Requests grew by %d, want %d", got, want)
			}
			if got := after.Blobs[desc.Digest] - before.Blobs[desc.Digest]; got != tc.wantBytes {
				t.Errorf("Stats.Blobs[layer] grew by %d, want %d", got, tc.wantBytes)
			}
		})
	}
}

func TestFetchPartsFlippedByte(t *testing.T) {
	tr, im, desc, blob := partsImage(t, 20000, Options{})
	parts := partsOf(blob, [2]int64{0, 1000}, [2]int64{1000, 3000}, [2]int64{3000, 3500})
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: flipByte(1500)}) // inside part 1
	data, errs := im.FetchParts(t.Context(), desc, parts)
	for i, p := range parts {
		if i == 1 {
			var de *DigestError
			if !errors.As(errs[i], &de) || de.Offset != p.Off || !strings.Contains(de.What, "part at 1000+2000") || data[i] != nil {
				t.Errorf("part 1 over a flipped byte = %d bytes, %v; want a *DigestError at offset 1000 and no bytes", len(data[i]), errs[i])
			}
			continue
		}
		if errs[i] != nil || !bytes.Equal(data[i], blob[p.Off:p.Off+p.N]) {
			t.Errorf("part %d = %d bytes, %v; want its verified bytes", i, len(data[i]), errs[i])
		}
	}
	if got := blobRanges(tr, desc.Digest); len(got) != 1 {
		t.Errorf("blob GETs %q; a digest mismatch must not be retried", got)
	}
}

func TestFetchPartsGivesUp(t *testing.T) {
	// Every answer is reset after 1500 bytes and 2 attempts are allowed:
	// 3000 bytes arrive, so the parts within them are still returned.
	tr, im, desc, blob := partsImage(t, 20000, Options{MaxAttempts: 2})
	tr.faults.add(&rule{match: blobGET(desc.Digest), times: -1, do: resetAfter(1500)})
	parts := partsOf(blob, [2]int64{0, 1000}, [2]int64{1000, 3000}, [2]int64{3000, 4000})
	data, errs := im.FetchParts(t.Context(), desc, parts)
	for i := range 2 {
		if errs[i] != nil || !bytes.Equal(data[i], blob[parts[i].Off:parts[i].Off+parts[i].N]) {
			t.Errorf("part %d (received in full) = %d bytes, %v; want its bytes", i, len(data[i]), errs[i])
		}
	}
	var de *DigestError
	if errs[2] == nil || errors.As(errs[2], &de) || data[2] != nil || !strings.Contains(errs[2].Error(), "2 attempts") {
		t.Errorf("part 2 (never received) = %d bytes, %v; want the connection error after 2 attempts", len(data[2]), errs[2])
	}
}

func TestFetchPartsBadInput(t *testing.T) {
	tr, im, desc, blob := partsImage(t, 1000, Options{})
	for _, tc := range []struct {
		name  string
		parts []Part
		// bad lists the parts that must fail; the rest must succeed.
		bad []int
	}{
		{"unsorted", partsOf(blob, [2]int64{500, 600}, [2]int64{100, 200}), []int{0, 1}},
		{"past the end", append(partsOf(blob, [2]int64{0, 10}, [2]int64{990, 1000}, [2]int64{1000, 1000}),
			Part{Off: 995, N: 10, Digest: digest.FromString("x")}), []int{0, 1, 2, 3}},
		{"negative", []Part{{Off: -1, N: 5, Digest: digest.FromString("x")}}, []int{0}},
		{"bad digest in one part", append(partsOf(blob, [2]int64{0, 10}), Part{Off: 10, N: 5, Digest: "sha256:nope"}), []int{1}},
		{"wrong digest in one part", append(partsOf(blob, [2]int64{0, 10}), Part{Off: 10, N: 5, Digest: digest.FromString("x")}), []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tr.faults.requests())
			data, errs := im.FetchParts(t.Context(), desc, tc.parts)
			for i, p := range tc.parts {
				isBad := false
				for _, b := range tc.bad {
					isBad = isBad || b == i
				}
				if isBad != (errs[i] != nil) || (data[i] != nil) == isBad {
					t.Errorf("part %d (%d+%d) = %d bytes, %v; want failure %v", i, p.Off, p.N, len(data[i]), errs[i], isBad)
				}
			}
			if len(tc.bad) == len(tc.parts) && len(tr.faults.requests()) != before {
				t.Errorf("FetchParts sent requests for input it rejected")
			}
		})
	}
	if data, errs := im.FetchParts(t.Context(), desc, nil); len(data) != 0 || len(errs) != 0 {
		t.Errorf("FetchParts(no parts) = %v, %v", data, errs)
	}
}

func TestFetchPartsCachedAndLayout(t *testing.T) {
	blob := randomBytes(t, 10000)
	parts := partsOf(blob, [2]int64{100, 2000}, [2]int64{2000, 2100}, [2]int64{9000, 10000})
	check := func(t *testing.T, im *Image, desc ocispec.Descriptor) {
		t.Helper()
		before := im.c.Stats()
		data, errs := im.FetchParts(t.Context(), desc, parts)
		for i, p := range parts {
			if errs[i] != nil || !bytes.Equal(data[i], blob[p.Off:p.Off+p.N]) {
				t.Errorf("part %d = %d bytes, %v", i, len(data[i]), errs[i])
			}
		}
		if after := im.c.Stats(); after.Requests != before.Requests {
			t.Errorf("FetchParts sent %d requests, want none", after.Requests-before.Requests)
		}
	}
	t.Run("cached", func(t *testing.T) {
		tr := newTestRegistry(t, nil)
		img := testImage(t, types.OCIManifestSchema1, blob)
		tr.push(t, "app:v1", img)
		c, _ := testClient(t, Options{})
		im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
		if err != nil {
			t.Fatal(err)
		}
		desc := layerDesc(t, img, 0)
		if err := c.Cache().Put(desc.Digest, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		check(t, im, desc)
	})
	t.Run("layout", func(t *testing.T) {
		img := testImage(t, types.OCIManifestSchema1, blob)
		dir := writeLayout(t, []v1.Image{img}, []string{"v1"})
		c, _ := testClient(t, Options{})
		im, err := c.Resolve(t.Context(), "oci:"+dir+":v1")
		if err != nil {
			t.Fatal(err)
		}
		check(t, im, layerDesc(t, img, 0))
	})
}
