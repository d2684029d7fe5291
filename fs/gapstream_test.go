package fs

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestGapStreamSkipsFetchedSpans: after a reader has streamed the big file
// (its spans fetched with Range requests and kept in the disk cache), the
// layer's background fetch asks the registry only for the bytes between
// those spans, yet the blob it assembles checks out: the layer is complete
// and verified, and the whole layer was fetched about once, not twice.
// Sending the background fetch as one plain GET fails the byte count.
func TestGapStreamSkipsFetchedSpans(t *testing.T) {
	ref, img, big := raSetup(t)
	im, rl := raImage(t, ref, img, nil, Options{})
	l := im.layers[0]
	n, err := im.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	readSeq(t, im, n, big, 0, n.Size, 128<<10)
	settle(l)
	im.bg.Wait() // spans fetched are written to the disk cache in the background
	cache := im.client.Cache()
	var cachedBytes int64
	cached := map[int]bool{}
	for i, sp := range l.table.Spans {
		if cache.Has(sp.Digest) {
			cached[i] = true
			cachedBytes += sp.CEnd - sp.C
		}
	}
	if cachedBytes < n.Size/2 {
		t.Fatalf("only %d bytes of spans cached after reading %d bytes: the fixture tests nothing", cachedBytes, n.Size)
	}
	before := len(rl.log())
	fetchedBefore := im.Stats().Layers[0].BytesFetched

	if err := l.ensure(t.Context()); err != nil {
		t.Fatalf("background fetch: %v", err)
	}
	if complete, verified := l.state(); !complete || !verified {
		t.Fatalf("after the background fetch: complete %v, verified %v", complete, verified)
	}
	for _, r := range rl.log()[before:] {
		for _, i := range spansOf(l, r) {
			if cached[i] {
				t.Errorf("the background fetch asked again for span %d, which was cached", i)
			}
		}
	}
	size := img.LayerDescs[0].Size
	total := im.Stats().Layers[0].BytesFetched
	if bg := total - fetchedBefore; bg > size-cachedBytes+int64(len(l.table.Spans)) {
		t.Errorf("the background fetch took %d bytes of a %d-byte layer whose cached spans hold %d", bg, size, cachedBytes)
	}
	if total > size+size/8 {
		t.Errorf("the layer's %d bytes took %d bytes of fetching in all: want about once", size, total)
	}
	// The assembled blob is the layer: the tree made from it reads right.
	readSeq(t, im, n, big, 0, n.Size, 1<<20)
}

// TestGapStreamTampered: a registry that changes a byte between the spans
// readers fetched fails the assembled blob's digest: the layer is
// quarantined, and nothing is admitted to the cache under its digest.
func TestGapStreamTampered(t *testing.T) {
	ref, img, big := raSetup(t)
	probe, _ := raImage(t, ref, img, nil, Options{})
	tbl := probe.layers[0].table
	last := tbl.Spans[len(tbl.Spans)-1]
	rt := &rangeTamperer{base: http.DefaultTransport, blob: img.LayerDescs[0].Digest.String(), off: (last.C + last.CEnd) / 2}
	im, _ := raImage(t, ref, img, rt, Options{})
	l := im.layers[0]
	n, err := im.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	readSeq(t, im, n, big, 0, 1<<20, 128<<10)
	settle(l)
	im.bg.Wait()
	if err := l.ensure(t.Context()); err == nil {
		t.Fatalf("background fetch through a tampering registry succeeded")
	}
	if l.quarantined() == nil {
		t.Errorf("layer not quarantined after its assembled blob failed its digest")
	}
	if n := im.Stats().Fallbacks[FallbackQuarantine]; n != 1 {
		t.Errorf("fallbacks[%s] = %d after one layer was quarantined, want 1", FallbackQuarantine, n)
	}
	if im.client.Cache().Has(img.LayerDescs[0].Digest) {
		t.Errorf("a blob that failed its digest is in the cache")
	}
}

// TestGapStreamCachedSpanChecks: a span digest that names a cached file of
// another size (a registry index may name any digest) is not used, and a
// cached span whose bytes fail its digest is removed; the stream fetches
// those bytes instead.
func TestGapStreamCachedSpanChecks(t *testing.T) {
	ref, img, _ := raSetup(t)
	im, _ := raImage(t, ref, img, nil, Options{})
	l := im.layers[0]
	cache := im.client.Cache()
	tbl := *l.table
	tbl.Spans = slices.Clone(tbl.Spans)
	l.table = &tbl

	// Span 0 named after a 10-byte blob in the cache.
	small := []byte("not a span")
	tbl.Spans[0].Digest = digest.FromBytes(small)
	if err := cache.Put(tbl.Spans[0].Digest, bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	g := newGapStream(t.Context(), l, &tbl, false)
	if b := g.cachedSpan(0); b != nil {
		t.Errorf("a cached file of %d bytes was used for a %d-byte span", len(b), tbl.Spans[0].CEnd-tbl.Spans[0].C)
	}

	// Span 1 cached, then damaged in place.
	sp := tbl.Spans[1]
	good, err := im.img.FetchRange(t.Context(), l.desc, sp.C, sp.CEnd-sp.C, sp.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Put(sp.Digest, bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	if b := g.cachedSpan(1); !bytes.Equal(b, good) {
		t.Fatalf("a sound cached span was not used")
	}
	p := filepath.Join(cache.Dir(), "blobs", "sha256", sp.Digest.Encoded())
	bad := bytes.Clone(good)
	bad[0] ^= 1
	if err := os.WriteFile(p, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if b := g.cachedSpan(1); b != nil {
		t.Errorf("a damaged cached span was used")
	}
	if cache.Has(sp.Digest) {
		t.Errorf("a damaged cached span is still cached")
	}
}
