package fs

import (
	"archive/tar"
	"math/rand"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestCountersSpans: the counters of an index-mode layer move as its reads
// go. A first read of a few bytes is a span miss whose bytes were fetched
// for the reader; the same read again is a span hit that fetches nothing; a
// sequential read fetches spans ahead of the reader; the background fetch
// fetches the rest. Every layer byte the client received is counted for
// exactly one of those purposes, and the layer's served bytes are the
// bytes read.
func TestCountersSpans(t *testing.T) {
	ref, img, big := raSetup(t)
	im, _ := raImage(t, ref, img, nil, Options{})
	l := im.layers[0]
	n, err := im.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	var served int64
	read := func(off int64, size int) {
		t.Helper()
		readSeq(t, im, n, big, off, off+int64(size), size)
		served += int64(size)
	}

	read(4096, 4096)
	first := im.Stats()
	if c := first.Cache[CacheSpan]; c.Misses < 1 {
		t.Fatalf("after a first read: span cache %+v, want a miss", c)
	}
	if first.FetchedFor[FetchReader] <= 0 || first.FetchedFor[FetchReadAhead] != 0 || first.FetchedFor[FetchBackground] != 0 {
		t.Fatalf("after a first read: fetched_for %v, want bytes for the reader only", first.FetchedFor)
	}

	read(4096, 4096)
	again := im.Stats()
	if a, b := first.Cache[CacheSpan], again.Cache[CacheSpan]; b.Hits <= a.Hits || b.Misses != a.Misses {
		t.Errorf("the same read again: span cache %+v -> %+v, want one more hit and no more misses", a, b)
	}
	if a, b := first.FetchedFor[FetchReader], again.FetchedFor[FetchReader]; b != a {
		t.Errorf("the same read again fetched %d bytes for the reader, want none", b-a)
	}
	if again.CacheHits != sumHits(again) || again.CacheMisses != sumMisses(again) {
		t.Errorf("cache_hits %d, cache_misses %d are not the sums of cache %v", again.CacheHits, again.CacheMisses, again.Cache)
	}

	half := int64(len(big) / 2)
	readSeq(t, im, n, big, 0, half, 128<<10)
	served += half
	settle(l)
	seq := im.Stats()
	if seq.FetchedFor[FetchReadAhead] <= 0 {
		t.Errorf("a sequential read of %d bytes fetched nothing ahead: fetched_for %v", half, seq.FetchedFor)
	}

	settleAll(t, im)
	done := im.Stats()
	if done.FetchedFor[FetchBackground] <= 0 {
		t.Errorf("the background fetch of the rest of the layer counted no bytes: fetched_for %v", done.FetchedFor)
	}
	var sum int64
	for _, v := range done.FetchedFor {
		sum += v
	}
	if got := im.client.Stats().Blobs[l.desc.Digest]; sum != got {
		t.Errorf("fetched_for %v sums to %d, the client received %d bytes of the layer", done.FetchedFor, sum, got)
	}
	if got := done.Layers[0].BytesServed; got != served {
		t.Errorf("layer bytes_served = %d, read %d", got, served)
	}
	if done.Background != (BackgroundStats{}) {
		t.Errorf("background %+v after the background ended, want nothing under way", done.Background)
	}
	if len(done.Fallbacks) != 0 {
		t.Errorf("fallbacks %v on a clean image", done.Fallbacks)
	}
}

func sumHits(s Stats) (n int64) {
	for _, c := range s.Cache {
		n += c.Hits
	}
	return n
}

func sumMisses(s Stats) (n int64) {
	for _, c := range s.Cache {
		n += c.Misses
	}
	return n
}

// TestCountersChunks: a read of a file of an eStargz layer is a chunk miss,
// fetched for the reader, and the same read again a chunk hit. The same
// image without the annotation that binds its TOC is refused lazy serving
// and streamed: one toc_unverified fallback per layer, no chunk counted.
func TestCountersChunks(t *testing.T) {
	host := fstest.StartRegistry(t)
	data := make([]byte, 300<<10)
	rand.New(rand.NewSource(17)).Read(data)
	layers := []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "f.bin", Mode: 0o644, ModTime: time.Unix(1, 0)}, Data: data},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "g.bin", Mode: 0o644, ModTime: time.Unix(1, 0)}, Data: data[:100<<10]},
	}}}
	opts := fstest.LazyOptions{Format: fstest.Estargz, ChunkSize: 64 << 10}
	readF := func(im *Image) {
		t.Helper()
		n, err := im.Tree().Lookup("f.bin")
		if err != nil {
			t.Fatal(err)
		}
		readSeq(t, im, n, data, 1000, 2000, 1000)
	}

	ref, _ := pushLazy(t, host, "counters/estargz", layers, opts)
	im := resolveLoad(t, newClient(t, "", nil), ref, lazyOpts(t))
	if m := im.Layers()[0].Mode; m != ModeEstargz {
		t.Fatalf("fixture: mode %s, want %s", m, ModeEstargz)
	}
	readF(im)
	first := im.Stats()
	if c := first.Cache[CacheChunk]; c.Misses < 1 {
		t.Fatalf("after a first read: chunk cache %+v, want a miss", c)
	}
	if first.FetchedFor[FetchReader] <= 0 {
		t.Errorf("after a first read: fetched_for %v, want bytes for the reader", first.FetchedFor)
	}
	readF(im)
	again := im.Stats()
	if a, b := first.Cache[CacheChunk], again.Cache[CacheChunk]; b.Hits <= a.Hits || b.Misses != a.Misses {
		t.Errorf("the same read again: chunk cache %+v -> %+v, want one more hit and no more misses", a, b)
	}
	if s := again.Cache[CacheSpan]; s != (CacheCount{}) {
		t.Errorf("span cache %+v on an eStargz layer, want nothing", s)
	}
	if len(again.Fallbacks) != 0 {
		t.Errorf("fallbacks %v for a bound TOC", again.Fallbacks)
	}

	opts.Annotate = func(_ int, ann map[string]string) { delete(ann, fstest.AnnotationTOCDigest) }
	ref, _ = pushLazy(t, host, "counters/unbound", layers, opts)
	im = resolveLoad(t, newClient(t, "", nil), ref, lazyOpts(t))
	if m := im.Layers()[0].Mode; m != ModeStream {
		t.Fatalf("fixture: an unbound TOC's layer has mode %s, want %s", m, ModeStream)
	}
	readF(im)
	st := im.Stats()
	if n := st.Fallbacks[FallbackTOCUnverified]; n != 1 || len(st.Fallbacks) != 1 {
		t.Errorf("fallbacks %v for one layer with an unbound TOC, want %s: 1", st.Fallbacks, FallbackTOCUnverified)
	}
	if c := st.Cache[CacheChunk]; c != (CacheCount{}) {
		t.Errorf("chunk cache %+v for a layer refused lazy serving", c)
	}
	// The stream the load waited for is the whole blob, for the reader;
	// the client also received the blob's tail, looking for the TOC.
	size := im.layers[0].desc.Size
	if got, all := st.FetchedFor[FetchReader], im.client.Stats().Blobs[im.layers[0].desc.Digest]; got < size || got > all {
		t.Errorf("fetched_for %v: want the %d bytes of the stream the load waited for, at most the %d the client received", st.FetchedFor, size, all)
	}
}
