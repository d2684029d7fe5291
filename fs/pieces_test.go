package fs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// fakeParts is a partsFetcher serving a blob from memory, each part checked
// against its digest as fetch.Image.FetchParts does. tamper flips a bit of
// every part first; gate, when set, holds every call until it is closed.
type fakeParts struct {
	blob   []byte
	tamper bool
	gate   chan struct{}

	mu    sync.Mutex
	calls int
}

func (f *fakeParts) FetchParts(_ context.Context, _ ocispec.Descriptor, parts []fetch.Part) ([][]byte, []error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if f.gate != nil {
		<-f.gate
	}
	data, errs := make([][]byte, len(parts)), make([]error, len(parts))
	for i, p := range parts {
		b := slices.Clone(f.blob[p.Off : p.Off+p.N])
		if f.tamper {
			b[len(b)/2] ^= 1
		}
		if errs[i] = checkSpan(b, p.Digest); errs[i] == nil {
			data[i] = b
		}
	}
	return data, errs
}

func (f *fakeParts) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// spanLayer returns a layer of an image made here, without a registry, whose
// gzip blob (files of random bytes, spans of about 64 KiB) fake serves, and
// the layer's tar.
func spanLayer(t *testing.T, fake *fakeParts) (*layer, []byte) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	rng := rand.New(rand.NewPCG(13, 13))
	for i := range 4 {
		data := make([]byte, 150<<10)
		for j := range data {
			data[j] = byte(rng.UintN(256))
		}
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&blob, gzip.BestSpeed)
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	fake.blob = blob.Bytes()
	tbl, err := index.BuildLayer(bytes.NewReader(fake.blob), ocispec.MediaTypeImageLayerGzip, index.Options{SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl.Spans) < 4 {
		t.Fatalf("fixture: %d spans, want at least 4", len(tbl.Spans))
	}
	ctx, cancel := context.WithCancel(context.Background())
	im := &Image{client: newClient(t, "", nil), log: testLogger(t), ctx: ctx, cancel: cancel,
		spans: newPieceCache(1 << 20), fetchSem: make(semaphore, 4), fg: newForeground(), keeping: make(chan struct{}, 8)}
	t.Cleanup(func() { cancel(); im.bg.Wait() })
	l := &layer{im: im, compression: "gzip", mode: ModeIndex,
		desc: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(fake.blob), Size: int64(len(fake.blob))}}
	l.setTable(tbl, &spanReader{l: l, t: withoutEntries(tbl), parts: fake})
	im.layers = []*layer{l}
	return l, tarBuf.Bytes()
}

// TestSpanReaderServesTheTar reads a whole layer through its spans, in reads
// that cross span boundaries, and gets its tar.
func TestSpanReaderServesTheTar(t *testing.T) {
	fake := &fakeParts{}
	l, want := spanLayer(t, fake)
	var got []byte
	buf := make([]byte, 100<<10)
	for off := int64(0); off < int64(len(want)); {
		n, err := l.readAt(t.Context(), buf, off, int64(len(want)))
		if err != nil && n == 0 {
			t.Fatalf("read at %d: %v", off, err)
		}
		got = append(got, buf[:n]...)
		off += int64(n)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes that differ from the layer's %d-byte tar", len(got), len(want))
	}
	if fake.count() == 0 {
		t.Fatal("nothing was fetched: the fixture tests nothing")
	}
}

// TestPieceFetchedOnce has readers of one span arrive while its fetch is
// held: they wait for it instead of sending their own.
func TestPieceFetchedOnce(t *testing.T) {
	fake := &fakeParts{gate: make(chan struct{})}
	l, want := spanLayer(t, fake)
	sp := l.tbl().Spans[2]
	off := sp.U + 10
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for k := range errs {
		wg.Go(func() {
			b := make([]byte, 100)
			n, err := l.readAt(t.Context(), b, off, off+100)
			if err == nil && !bytes.Equal(b[:n], want[off:off+100]) {
				err = fmt.Errorf("read %q, want %q", b[:n], want[off:off+100])
			}
			errs[k] = err
		})
	}
	// Let the readers find the fetch in flight, then let it go.
	for fake.count() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(fake.gate)
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			t.Errorf("reader %d: %v", k, err)
		}
	}
	if n := fake.count(); n != 1 {
		t.Errorf("the span was fetched %d times by 8 readers, want once", n)
	}
}

// TestTamperedSpanNotServed: a span whose bytes fail their digest is an
// error, is not kept decoded, and is fetched again by the next read.
func TestTamperedSpanNotServed(t *testing.T) {
	fake := &fakeParts{tamper: true}
	l, _ := spanLayer(t, fake)
	sp := l.tbl().Spans[1]
	for range 2 {
		b := make([]byte, 100)
		_, err := l.readAt(t.Context(), b, sp.U, sp.U+100)
		var de *fetch.DigestError
		if !errors.As(err, &de) {
			t.Fatalf("read of a tampered span: %v, want a *fetch.DigestError", err)
		}
	}
	if l.im.spans.has(pieceKey{blob: l.desc.Digest, i: 1}) {
		t.Error("the tampered span is in the piece cache")
	}
	if n := fake.count(); n != 2 {
		t.Errorf("two reads of a tampered span fetched %d times, want 2 (a failed span is not kept)", n)
	}
	if n := l.im.verifyFailures.Load(); n != 2 {
		t.Errorf("verify failures %d, want 2", n)
	}
}
