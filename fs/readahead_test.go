package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// raFileSize is the big file of the read-ahead fixture: over 64 spans of
// lazySpan (a span ends at the first deflate block end past lazySpan).
const raFileSize = 12 << 20

// raLayers is one gzip layer holding a small file, the big mixed file
// data/big.bin (mostly incompressible) and a small file after it, with
// the big file's content.
func raLayers() ([]fstest.Layer, []byte) {
	mtime := time.Unix(1700000000, 0)
	big := mixedContent(5, raFileSize)
	files := []fstest.File{
		{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: []byte("ID=ocifs\n")},
		{Header: tar.Header{Name: "data/big.bin", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: big},
		{Header: tar.Header{Name: "data/after.txt", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: []byte("after\n")},
	}
	return []fstest.Layer{{Files: files, Compression: fstest.Gzip}}, big
}

// rangeLog records the Range GETs of one blob: the first and last byte
// asked for.
type rangeLog struct {
	base http.RoundTripper
	blob string

	mu     sync.Mutex
	ranges [][2]int64
}

func (r *rangeLog) RoundTrip(req *http.Request) (*http.Response, error) {
	if h := req.Header.Get("Range"); h != "" && strings.HasSuffix(req.URL.Path, "/blobs/"+r.blob) {
		var a, b int64
		if _, err := fmt.Sscanf(h, "bytes=%d-%d", &a, &b); err != nil {
			return nil, fmt.Errorf("test transport: Range %q: %v", h, err)
		}
		r.mu.Lock()
		r.ranges = append(r.ranges, [2]int64{a, b})
		r.mu.Unlock()
	}
	return r.base.RoundTrip(req)
}

func (r *rangeLog) log() [][2]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ranges)
}

// raSetup pushes the fixture with its index (lazySpan spans) to a registry.
func raSetup(t *testing.T) (ref string, img *fstest.Image, big []byte) {
	t.Helper()
	host := fstest.StartRegistry(t)
	layers, big := raLayers()
	ref, img = pushIndexed(t, host, layers)
	return ref, img, big
}

// raImage resolves and loads ref on a fresh cache, with the layer's Range
// GETs recorded by the returned log and sent through base (nil: directly).
func raImage(t *testing.T, ref string, img *fstest.Image, base http.RoundTripper, opts Options) (*Image, *rangeLog) {
	t.Helper()
	if base == nil {
		base = http.DefaultTransport
	}
	rl := &rangeLog{base: base, blob: img.LayerDescs[0].Digest.String()}
	opts.Logger = testLogger(t)
	im, err := Resolve(t.Context(), newClient(t, "", rl), ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if l := im.layers[0]; l.mode != ModeIndex || len(l.table.Spans) < 64 {
		t.Fatalf("fixture: layer mode %s with %d spans, want index mode and at least 64 spans", l.mode, len(l.table.Spans))
	}
	return im, rl
}

// largestSpan returns the decoded size of the largest span of the
// fixture's layer.
func largestSpan(t *testing.T, ref string, img *fstest.Image) int64 {
	t.Helper()
	im, _ := raImage(t, ref, img, nil, Options{})
	tb := im.layers[0].table
	most := int64(0)
	for i := range tb.Spans {
		most = max(most, tb.SpanEnd(i)-tb.Spans[i].U)
	}
	return most
}

// settle waits for every fetch of layer l in flight (read-ahead included)
// to end.
func settle(l *layer) {
	c := l.im.spans
	for {
		c.mu.Lock()
		var pending []*pieceFetch
		for k, f := range c.fetching {
			if k.blob == l.desc.Digest {
				pending = append(pending, f)
			}
		}
		c.mu.Unlock()
		if len(pending) == 0 {
			return
		}
		for _, f := range pending {
			<-f.done
		}
	}
}

// spansOf returns the spans of layer l whose compressed bytes a Range
// [a, b] (inclusive) covers.
func spansOf(l *layer, r [2]int64) []int {
	var out []int
	for i, sp := range l.table.Spans {
		if sp.C >= r[0] && sp.CEnd-1 <= r[1] {
			out = append(out, i)
		}
	}
	return out
}

// readSeq reads n's bytes [from, to) in order, chunk bytes at a time, as
// the kernel does, and checks them against want.
func readSeq(t *testing.T, im *Image, n *Node, want []byte, from, to int64, chunk int) {
	t.Helper()
	buf := make([]byte, chunk)
	for off := from; off < to; {
		p := buf[:min(int64(chunk), to-off)]
		got, err := im.ReadAt(t.Context(), n, p, off)
		if err != nil {
			t.Fatalf("ReadAt(off=%d, len=%d): %d bytes, %v", off, len(p), got, err)
		}
		if !bytes.Equal(p[:got], want[off:off+int64(got)]) {
			t.Fatalf("ReadAt(off=%d): %d bytes differ from the file's", off, got)
		}
		off += int64(got)
	}
}

// TestReadAheadSequential: a sequential reader of a 96-span file gets the
// right bytes from far fewer Range requests than spans, some of them
// covering many spans; after reading the first few spans, later spans are
// already decoded (fetched ahead); and no span is fetched twice. With a
// small span cache the read-ahead window stays within half of it.
func TestReadAheadSequential(t *testing.T) {
	ref, img, big := raSetup(t)
	for _, tc := range []struct {
		name       string
		cacheSpans int     // span cache, in the fixture's largest decoded spans; 0: the default cache
		perRequest float64 // fewest spans per request on average
		minRun     int     // fewest spans the largest request must cover
		maxRun     int     // most spans one request may cover
	}{
		{name: "default span cache", perRequest: 3, minRun: 8, maxRun: readAheadRunBytes / lazySpan},
		// Half of a cache of 8 spans is 4 of them: no request may cover
		// more, nor spans that decode to more than half of it. The
		// fixture's random data makes spans of about 190 KiB, not the
		// 128 KiB target, so the cache is sized by the real spans.
		{name: "8-span cache", cacheSpans: 8, perRequest: 1.5, minRun: 2, maxRun: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cacheBytes int64
			if tc.cacheSpans > 0 {
				cacheBytes = int64(tc.cacheSpans) * largestSpan(t, ref, img)
			}
			im, rl := raImage(t, ref, img, nil, Options{SpanCacheBytes: cacheBytes})
			l := im.layers[0]
			n, err := im.Tree().Lookup("data/big.bin")
			if err != nil {
				t.Fatal(err)
			}
			s0, s1 := l.table.SpanFor(n.Offset), l.table.SpanFor(n.Offset+n.Size-1)
			fileSpans := s1 - s0 + 1

			// Read into the file's third span, then let the fetches end:
			// the spans after it are there without having been read.
			third := l.table.Spans[s0+2].U - n.Offset + 1
			readSeq(t, im, n, big, 0, third, 128<<10)
			settle(l)
			var ahead []int
			for i := s0 + 3; i <= s1; i++ {
				if im.spans.has(pieceKey{blob: l.desc.Digest, i: i}) {
					ahead = append(ahead, i)
				}
			}
			if len(ahead) == 0 {
				t.Errorf("after reading into span %d, no later span of the file is decoded: nothing was read ahead", s0+2)
			}

			readSeq(t, im, n, big, third, n.Size, 128<<10)
			settle(l)
			log := rl.log()
			covered := map[int]int{}
			most := 0
			for _, r := range log {
				sp := spansOf(l, r)
				most = max(most, len(sp))
				decoded := int64(0)
				for _, i := range sp {
					decoded += l.table.SpanEnd(i) - l.table.Spans[i].U
				}
				if cacheBytes > 0 && len(sp) > 1 && decoded > cacheBytes/2 {
					t.Errorf("one Range request fetched spans %v, %d bytes decoded: more than half the %d-byte span cache", sp, decoded, cacheBytes)
				}
				for _, i := range sp {
					covered[i]++
				}
			}
			t.Logf("%d spans read through %d Range requests, the largest covering %d spans", fileSpans, len(log), most)
			if want := int(float64(fileSpans) / tc.perRequest); len(log) > want {
				t.Errorf("sequential read of %d spans sent %d Range requests, want at most %d", fileSpans, len(log), want)
			}
			if most < tc.minRun || most > tc.maxRun {
				t.Errorf("largest Range request covers %d spans, want %d to %d", most, tc.minRun, tc.maxRun)
			}
			for i, c := range covered {
				if c > 1 {
					t.Errorf("span %d fetched %d times", i, c)
				}
				if i > s1 {
					t.Errorf("span %d, past the file's last (%d), fetched: read-ahead crossed the file's end", i, s1)
				}
			}
			for i := s0; i <= s1; i++ {
				if covered[i] == 0 {
					t.Errorf("span %d of the file was never fetched by a Range request", i)
				}
			}
		})
	}
}

// TestReadAheadStops: a reader that reads the head of a big file and stops
// has had at most half as much again fetched ahead (plus the first span of
// the window): the window grows with what the stream has read.
func TestReadAheadStops(t *testing.T) {
	ref, img, big := raSetup(t)
	im, rl := raImage(t, ref, img, nil, Options{})
	l := im.layers[0]
	n, err := im.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	s0 := l.table.SpanFor(n.Offset)
	const read = 16
	upTo := l.table.Spans[s0+read].U - n.Offset // the head: spans s0 .. s0+read-1
	readSeq(t, im, n, big, 0, upTo, 128<<10)
	settle(l)
	beyond := 0
	for _, r := range rl.log() {
		for _, i := range spansOf(l, r) {
			if i >= s0+read {
				beyond++
			}
		}
	}
	if max := read/2 + readAheadStart; beyond == 0 || beyond > max {
		t.Errorf("reading %d spans of the file fetched %d spans beyond them, want 1 to %d", read, beyond, max)
	}
}

// TestReadAheadRandom: a reader that jumps between spans far apart fetches
// exactly the spans it reads, nothing ahead of them.
func TestReadAheadRandom(t *testing.T) {
	ref, img, big := raSetup(t)
	im, rl := raImage(t, ref, img, nil, Options{})
	l := im.layers[0]
	n, err := im.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	s0, s1 := l.table.SpanFor(n.Offset), l.table.SpanFor(n.Offset+n.Size-1)
	// Every fourth span, in random order; two 16 KiB reads in each, the
	// second after the first as a reader of a small record would.
	var picks []int
	for i := s0 + 1; i < s1; i += 4 {
		picks = append(picks, i)
	}
	rand.New(rand.NewPCG(3, 3)).Shuffle(len(picks), func(a, b int) { picks[a], picks[b] = picks[b], picks[a] })
	want := map[int]bool{}
	for _, i := range picks {
		off := l.table.Spans[i].U - n.Offset + 1000
		readSeq(t, im, n, big, off, off+32<<10, 16<<10)
		want[i] = true
	}
	settle(l)
	var wantBytes int64
	for i := range want {
		wantBytes += l.table.Spans[i].CEnd - l.table.Spans[i].C
	}
	got := map[int]bool{}
	for _, r := range rl.log() {
		for _, i := range spansOf(l, r) {
			got[i] = true
		}
	}
	for i := range got {
		if !want[i] {
			t.Errorf("span %d was fetched but never read", i)
		}
	}
	if fetched := im.Stats().Layers[0].BytesFetched; fetched > wantBytes {
		t.Errorf("random reads of %d spans fetched %d bytes, want at most their %d", len(want), fetched, wantBytes)
	}
}

// TestReadAheadTamperedSpan: a span that a registry tampers with, reached
// by read-ahead, is never served: the sequential reader gets every byte
// before it right, the span is neither decoded nor cached, and the reader
// gets the digest error only when it reads that span.
func TestReadAheadTamperedSpan(t *testing.T) {
	ref, img, big := raSetup(t)
	// Learn the spans from a clean resolve.
	probe, _ := raImage(t, ref, img, nil, Options{})
	tbl := probe.layers[0].table
	pn, err := probe.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	bad := tbl.SpanFor(pn.Offset) + 12
	sp := tbl.Spans[bad]
	rt := &rangeTamperer{base: http.DefaultTransport, blob: img.LayerDescs[0].Digest.String(), off: (sp.C + sp.CEnd) / 2}
	im, rl := raImage(t, ref, img, rt, Options{})
	l := im.layers[0]
	n, err := im.Tree().Lookup("data/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	// Read up to the bad span, then let read-ahead end.
	upTo := sp.U - n.Offset
	readSeq(t, im, n, big, 0, upTo, 128<<10)
	settle(l)
	reached := false
	for _, r := range rl.log() {
		if slices.Contains(spansOf(l, r), bad) {
			reached = true
		}
	}
	if !reached {
		t.Fatalf("read-ahead never fetched span %d ahead of the reader: the fixture tests nothing", bad)
	}
	if im.spans.has(pieceKey{blob: l.desc.Digest, i: bad}) {
		t.Errorf("the tampered span %d was decoded into the span cache", bad)
	}
	if im.client.Cache().Has(sp.Digest) {
		t.Errorf("the tampered span %d is in the disk cache", bad)
	}
	if err := l.quarantined(); err != nil {
		t.Errorf("read-ahead of a bad span quarantined the layer: %v", err)
	}

	// Reading the bad span itself fails with the digest error, and serves
	// none of its bytes.
	buf := make([]byte, 64<<10)
	got, err := im.ReadAt(t.Context(), n, buf, upTo+100)
	var de *fetch.DigestError
	if !errors.As(err, &de) || got != 0 {
		t.Errorf("ReadAt in the tampered span: %d bytes, err %v; want 0 bytes and a *fetch.DigestError", got, err)
	}
	// The spans after it still read right.
	after := tbl.Spans[bad+1].U - n.Offset
	readSeq(t, im, n, big, after, after+512<<10, 128<<10)
}
