package fs

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// pushLyingIndex pushes the lazy test image and an index of it altered by lie.
func pushLyingIndex(t *testing.T, host, repo string, seed uint64, files int, lie func(*index.Table)) (string, map[string][]byte) {
	t.Helper()
	layers, content := lazyLayers(seed, files)
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, repo, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/" + repo + ":v1"
	honest, err := Resolve(t.Context(), newClient(t, "", nil), ref, Options{SpanSize: lazySpan, NoRemoteIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer honest.Close()
	if err := honest.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	honest.bg.Wait() // the extraction of the streamed layer reads the table too
	lie(honest.layers[0].table)
	if _, err := honest.PushIndex(t.Context()); err != nil {
		t.Fatal(err)
	}
	return ref, content
}

func readFile(t *testing.T, im *Image, name string) ([]byte, error) {
	t.Helper()
	n, err := im.Tree().Lookup(name)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return io.ReadAll(im.Open(t.Context(), n))
}

// TestLyingIndexWithCachedBlob: a registry index is checked against the
// layer even when the layer's blob is already cached (another image shares
// the layer, or the local index was pruned): what it lies about is refused.
// Found in review: the cached-blob path used to skip the comparison. (Before
// issue 12 the lie quarantined the whole layer, and ensure returned the
// verification error; now ensure succeeds and the refusal shows.)
func TestLyingIndexWithCachedBlob(t *testing.T) {
	host := fstest.StartRegistry(t)
	ref, content := pushLyingIndex(t, host, "verify/lie", 3, 60, func(tbl *index.Table) {
		for i := range tbl.Entries {
			if tbl.Entries[i].Name == "data/f0010.txt" {
				tbl.Entries[i].Name = "data/planted.txt"
			}
		}
	})
	cache := t.TempDir()
	first := loadImage(t, newClient(t, cache, nil), ref)
	if err := first.layers[0].ensure(t.Context()); err != nil {
		t.Fatalf("first mount: background fetch: %v", err)
	}
	if b, err := readFile(t, first, "data/planted.txt"); err == nil {
		t.Fatalf("first mount: the lying index was not caught: the planted name served %d bytes", len(b))
	}
	first.Close()
	c := newClient(t, cache, nil)
	if !c.Cache().Has(first.layers[0].desc.Digest) {
		t.Fatalf("fixture: the layer's blob is not cached after the first mount")
	}
	if err := c.Cache().Remove(fetch.KindIndex, first.layers[0].desc.Digest); err != nil {
		t.Fatal(err)
	}

	im := loadImage(t, c, ref)
	if _, err := im.Tree().Lookup("data/planted.txt"); err != nil {
		t.Fatalf("second mount did not take the registry's index: %v", err)
	}
	if err := im.layers[0].ensure(t.Context()); err != nil {
		t.Fatalf("second mount: background check: %v", err)
	}
	if b, err := readFile(t, im, "data/planted.txt"); err == nil {
		t.Errorf("read of a planted name served %d bytes, want an error", len(b))
	}
	if b, err := readFile(t, im, "data/f0020.txt"); err != nil || !bytes.Equal(b, content["data/f0020.txt"]) {
		t.Errorf("read of a file the index is right about: %d bytes, %v", len(b), err)
	}
	if st := im.Stats(); st.Layers[0].Verified || st.Layers[0].Refused != 1 {
		t.Errorf("layer 0: verified %v, refused %d after the lie was caught; want false, 1", st.Layers[0].Verified, st.Layers[0].Refused)
	}
	if st := im.Stats(); st.Fallbacks[FallbackDisagree] != 1 || st.Fallbacks[FallbackQuarantine] != 0 {
		t.Errorf("fallbacks %v after one lying index was caught; want %s 1 and no quarantine", st.Fallbacks, FallbackDisagree)
	}
}

// failBlob answers 503 to every GET of one blob while fail is set.
type failBlob struct {
	base http.RoundTripper
	blob string
	fail atomic.Bool
}

func (rt *failBlob) RoundTrip(req *http.Request) (*http.Response, error) {
	if rt.fail.Load() && req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/blobs/"+rt.blob) {
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
			Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: req}, nil
	}
	return rt.base.RoundTrip(req)
}

// TestTransientErrorDoesNotQuarantine: a registry that fails the background
// whole-blob fetch (503) leaves the layer servable span by span; only a
// verification failure quarantines. Found in review.
func TestTransientErrorDoesNotQuarantine(t *testing.T) {
	host := fstest.StartRegistry(t)
	ref, content := pushLyingIndex(t, host, "verify/blip", 5, 300, func(*index.Table) {})
	probe := loadImage(t, newClient(t, "", nil), ref)
	blob := probe.layers[0].desc.Digest.String()
	probe.Close()

	rt := &failBlob{base: http.DefaultTransport, blob: blob}
	im := loadImage(t, newClient(t, "", rt), ref)
	if got, err := readFile(t, im, "data/f0100.txt"); err != nil || !bytes.Equal(got, content["data/f0100.txt"]) {
		t.Fatalf("read before the background fetch: %d bytes, %v", len(got), err)
	}
	rt.fail.Store(true)
	err := im.layers[0].ensure(t.Context())
	rt.fail.Store(false)
	if err == nil || errors.Is(err, index.ErrFormat) {
		t.Fatalf("background fetch through a 503: err %v, want a fetch error that is not a verification failure", err)
	}
	if got, err := readFile(t, im, "data/f0200.txt"); err != nil || !bytes.Equal(got, content["data/f0200.txt"]) {
		t.Errorf("read after a failed background fetch: %d bytes, %v; want the file", len(got), err)
	}
	if st := im.Stats(); st.VerifyFailures != 0 || len(st.Fallbacks) != 0 {
		t.Errorf("verify_failures = %d, fallbacks %v after a 503, want none", st.VerifyFailures, st.Fallbacks)
	}
}
