package index

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// BenchmarkBuild indexes a 64 MiB tar of small files (about 16,000 of up to
// 8 KiB), the shape of a language runtime layer.
func BenchmarkBuild(b *testing.B) {
	raw := manySmallFiles(b, 64<<20)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	var entries int
	for b.Loop() {
		tab, err := Build(bytes.NewReader(raw), Options{})
		if err != nil {
			b.Fatal(err)
		}
		entries = len(tab.Entries)
	}
	b.ReportMetric(float64(entries), "entries")
}

// benchTable returns a table of n entries with realistic names: deep shared
// directories, a few xattrs and links.
func benchTable(n int) *Table {
	t := &Table{Entries: make([]Entry, 0, n)}
	var off int64 = 512
	mtime := time.Unix(1_700_000_000, 0).UTC()
	for i := range n {
		e := Entry{
			Name:    fmt.Sprintf("usr/lib/python3.12/site-packages/pkg%04d/module%06d.py", i/100, i),
			Type:    TypeReg,
			Mode:    0o644,
			ModTime: mtime,
		}
		switch {
		case i%100 == 0:
			e.Name, e.Type, e.Mode = fmt.Sprintf("usr/lib/python3.12/site-packages/pkg%04d", i/100), TypeDir, 0o755
		case i%50 == 1:
			e.Type, e.Linkname = TypeSymlink, "../shared/lib.so"
		case i%1000 == 7:
			e.Xattrs = map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00"}
			fallthrough
		default:
			e.Size, e.Offset = int64(i%8192), off
			off += 512 + (e.Size+511)/512*512
		}
		t.Entries = append(t.Entries, e)
	}
	t.TarSize = off + 1024
	return t
}

// BenchmarkUnmarshal decodes the encoding of a 100,000-entry table, what a
// mount does per layer on a warm index cache.
func BenchmarkUnmarshal(b *testing.B) {
	enc, err := benchTable(100_000).MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Unmarshal(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMarshal encodes a 100,000-entry table.
func BenchmarkMarshal(b *testing.B) {
	tab := benchTable(100_000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tab.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBenchTableRoundTrip(t *testing.T) {
	tab := benchTable(1000)
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(enc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != len(tab.Entries) {
		t.Fatalf("Unmarshal gave %d entries, want %d", len(got.Entries), len(tab.Entries))
	}
}
