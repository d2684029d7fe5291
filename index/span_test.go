package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"slices"
	"sync"
	"testing"
)

// spanTable returns a gzip layer in two members with 8 KiB spans, and its
// table, for the encoding tests.
func spanTable(tb testing.TB, n int) (*Table, []byte, []byte) {
	tb.Helper()
	raw := tarOf(tb, mixedData(n, 11))
	blob := gzipSplit(tb, raw, tinyCuts(len(raw), 30_000), 6, true, hdrName)
	tab := buildLayerT(tb, blob, mtGzip, 8<<10)
	if len(tab.Spans) < 4 {
		tb.Fatalf("fixture has %d spans, want at least 4", len(tab.Spans))
	}
	return tab, blob, raw
}

// exported returns the exported fields of t, the windows read through
// Window, for comparing tables whose window sources differ.
func exported(tb testing.TB, t *Table) (Table, [][]byte) {
	tb.Helper()
	var ws [][]byte
	for i := range t.Spans {
		w, err := t.Window(i)
		if err != nil {
			tb.Fatalf("Window(%d): %v", i, err)
		}
		ws = append(ws, w)
	}
	c := *t
	c.windows = nil
	return c, ws
}

func sameTable(tb testing.TB, got, want *Table) {
	tb.Helper()
	g, gw := exported(tb, got)
	w, ww := exported(tb, want)
	if !reflect.DeepEqual(g, w) {
		tb.Fatalf("tables differ:\n got %+v\nwant %+v", g.Spans, w.Spans)
	}
	for i := range ww {
		if !bytes.Equal(gw[i], ww[i]) {
			tb.Fatalf("window %d differs: %d bytes, want %d", i, len(gw[i]), len(ww[i]))
		}
	}
}

// countingReaderAt records the ranges read from an encoded table.
type countingReaderAt struct {
	r     io.ReaderAt
	mu    sync.Mutex
	calls int
	maxTo int64 // the end of the furthest range read
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.calls++
	c.maxTo = max(c.maxTo, off+int64(len(p)))
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

func TestSpansRoundTrip(t *testing.T) {
	want, blob, raw := spanTable(t, 300_000)
	plain := buildLayerT(t, raw, mtTar, 4<<10)
	zst := buildLayerT(t, zstdBytes(t, raw), mtZstd, 0)
	for name, tab := range map[string]*Table{"gzip": want, "plain": plain, "zstd": zst} {
		t.Run(name, func(t *testing.T) {
			enc, err := tab.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary: %v", err)
			}
			if v := binary.BigEndian.Uint16(enc[len(indexMagic):]); v != 2 {
				t.Fatalf("encoded as version %d, want 2", v)
			}
			got, err := Unmarshal(enc)
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			sameTable(t, got, tab)
			again, err := got.MarshalBinary()
			if err != nil || !bytes.Equal(again, enc) {
				t.Fatalf("re-encoding the decoded table: %v, equal %v", err, bytes.Equal(again, enc))
			}

			ra := &countingReaderAt{r: bytes.NewReader(enc)}
			opened, err := Open(ra, int64(len(enc)))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			windowsAt := int64(len(enc))
			if w, ok := opened.windows.(*storedWindows); ok {
				windowsAt = w.base
			}
			if ra.maxTo > windowsAt {
				t.Errorf("Open read up to byte %d; the windows section starts at %d", ra.maxTo, windowsAt)
			}
			t.Logf("Open: %d ReadAt calls, %d of %d bytes", ra.calls, ra.maxTo, len(enc))
			sameTable(t, opened, tab)
			if again, err := opened.MarshalBinary(); err != nil || !bytes.Equal(again, enc) {
				t.Fatalf("re-encoding the opened table: %v", err)
			}
		})
	}
	// The opened gzip table reads through the index like the built one.
	enc, _ := want.MarshalBinary()
	opened, err := Open(bytes.NewReader(enc), int64(len(enc)))
	if err != nil {
		t.Fatal(err)
	}
	checkRandomRanges(t, opened, blob, raw, 40, 12)
}

func TestOpenReadsOneWindow(t *testing.T) {
	tab, _, _ := spanTable(t, 300_000)
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	ra := &countingReaderAt{r: bytes.NewReader(enc)}
	opened, err := Open(ra, int64(len(enc)))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(tab.Spans, func(sp Span) bool {
		w, _ := tab.Window(tab.SpanFor(sp.U))
		return len(w) > 0
	})
	if i < 0 {
		t.Fatal("no span with a window")
	}
	before := ra.calls
	if w, err := opened.Window(i); err != nil || len(w) == 0 {
		t.Fatalf("Window(%d) = %d bytes, %v", i, len(w), err)
	}
	if got := ra.calls - before; got != 1 {
		t.Errorf("Window made %d ReadAt calls, want 1", got)
	}
}

func TestOpenVersion1(t *testing.T) {
	want := builtFixture(t)
	enc, err := want.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.BigEndian.Uint16(enc[len(indexMagic):]); v != 1 {
		t.Fatalf("a table without spans encoded as version %d, want 1", v)
	}
	got, err := Open(bytes.NewReader(enc), int64(len(enc)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Open of a version 1 index differs")
	}
}

func TestSpansCorrupt(t *testing.T) {
	tab, _, _ := spanTable(t, 100_000)
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// Every byte of the head; a sample of the windows, each of which is
	// all-or-nothing behind its digest.
	var flips []int
	windowsAt := len(enc) - windowsLen(t, enc)
	for i := range enc {
		if i < windowsAt || i%211 == 0 || i == len(enc)-1 {
			flips = append(flips, i)
		}
	}
	for _, i := range flips {
		b := bytes.Clone(enc)
		b[i] ^= 0x04
		if _, err := Unmarshal(b); !errors.Is(err, ErrFormat) {
			t.Fatalf("Unmarshal with byte %d flipped = %v, want an ErrFormat error", i, err)
		}
		// Open does not read the windows: a damaged one shows when
		// it is read, never as other bytes.
		opened, err := Open(bytes.NewReader(b), int64(len(b)))
		if err == nil {
			bad := 0
			for j := range opened.Spans {
				w, err := opened.Window(j)
				if err != nil {
					if !errors.Is(err, ErrFormat) {
						t.Fatalf("byte %d: Window(%d) error %v does not wrap ErrFormat", i, j, err)
					}
					bad++
					continue
				}
				if want, _ := tab.Window(j); !bytes.Equal(w, want) {
					t.Fatalf("byte %d flipped: Window(%d) returned other bytes", i, j)
				}
			}
			if bad != 1 {
				t.Fatalf("byte %d flipped: Open succeeded and %d windows failed, want 1", i, bad)
			}
		} else if !errors.Is(err, ErrFormat) {
			t.Fatalf("Open with byte %d flipped = %v, want an ErrFormat error", i, err)
		}
	}
	for n := range len(enc) {
		if _, err := Unmarshal(enc[:n]); !errors.Is(err, ErrFormat) {
			t.Fatalf("Unmarshal of the first %d bytes = %v, want an ErrFormat error", n, err)
		}
		if _, err := Open(bytes.NewReader(enc[:n]), int64(n)); !errors.Is(err, ErrFormat) {
			t.Fatalf("Open of the first %d bytes = %v, want an ErrFormat error", n, err)
		}
	}
	if _, err := Unmarshal(append(bytes.Clone(enc), 0)); !errors.Is(err, ErrFormat) {
		t.Fatalf("Unmarshal with a byte appended = %v, want an ErrFormat error", err)
	}
}

func TestMarshalRejectsSpans(t *testing.T) {
	good, _, _ := spanTable(t, 300_000)
	mutate := func(f func(*Table)) *Table {
		c := *good
		c.Spans = append([]Span(nil), good.Spans...)
		f(&c)
		return &c
	}
	tests := map[string]*Table{
		"unknown compression": mutate(func(t *Table) { t.Compression = "lz4" }),
		"no compression":      mutate(func(t *Table) { t.Compression = "" }),
		"zstd with spans":     mutate(func(t *Table) { t.Compression = "zstd" }),
		"first U":             mutate(func(t *Table) { t.Spans[0].U = 1 }),
		"U order":             mutate(func(t *Table) { t.Spans[2].U = t.Spans[1].U }),
		"gap":                 mutate(func(t *Table) { t.Spans[1].CEnd-- }),
		"last end":            mutate(func(t *Table) { t.Size++ }),
		"bits":                mutate(func(t *Table) { t.Spans[1].Bits = 8 }),
		"digest":              mutate(func(t *Table) { t.Spans[1].Digest = "sha512:00" }),
		"span size":           mutate(func(t *Table) { t.SpanSize = 0 }),
	}
	for name, tab := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := tab.MarshalBinary(); err == nil {
				t.Fatalf("MarshalBinary succeeded")
			}
		})
	}
}

// resealV2 recomputes the window digests and the head checksum of a
// version 2 encoding, so fuzzing reaches the decoder behind them; other
// input is returned as it is.
func resealV2(b []byte) []byte {
	fixed := headerLen + headLenLen
	if len(b) < fixed+checksumLen || binary.BigEndian.Uint16(b[len(indexMagic):]) < 2 {
		return b
	}
	headLen := binary.BigEndian.Uint64(b[headerLen:])
	if headLen > uint64(len(b)-fixed-checksumLen) {
		return b
	}
	end := fixed + int(headLen)
	b = bytes.Clone(b)
	sum := sha256.Sum256(b[:end])
	copy(b[end:], sum[:])
	return b
}

// windowsLen returns the size of the windows section of an encoding.
func windowsLen(tb testing.TB, enc []byte) int {
	tb.Helper()
	opened, err := Open(bytes.NewReader(enc), int64(len(enc)))
	if err != nil {
		tb.Fatal(err)
	}
	w, ok := opened.windows.(*storedWindows)
	if !ok {
		return 0
	}
	return len(enc) - int(w.base)
}

// TestGoSourceLayer indexes a realistic layer at the default span size:
// every span decodes, and the encoded index stays under 1% of the layer.
func TestGoSourceLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: builds a 32 MiB layer")
	}
	raw := goSourceTar(t, 32<<20)
	blob := gzipBytes(t, raw)
	tab := buildLayerT(t, blob, mtGzip, 0)
	checkLayerTable(t, tab, blob, raw, compressionGzip, DefaultSpanSize)
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	share := float64(len(enc)) / float64(len(raw))
	t.Logf("%d-byte tar, %d-byte gzip, %d spans, %d entries: index %d bytes, %.3f%% of the tar", len(raw), len(blob), len(tab.Spans), len(tab.Entries), len(enc), 100*share)
	if share >= 0.01 {
		t.Errorf("index is %.2f%% of the layer, want under 1%%", 100*share)
	}
}
