package index

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
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

// goSourceTar returns a tar of up to limit bytes of Go's own source tree, a
// realistic layer: many text files of all sizes. It skips when the tree is
// not there.
func goSourceTar(tb testing.TB, limit int) []byte {
	tb.Helper()
	root := filepath.Join(runtime.GOROOT(), "src")
	if _, err := os.Stat(root); err != nil {
		tb.Skipf("no Go source tree to build a layer from: %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if buf.Len() >= limit {
			return filepath.SkipAll
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil || !(d.IsDir() || d.Type().IsRegular()) {
			return nil
		}
		hdr.Name = p[len(root):]
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func benchGzipLayer(b *testing.B) (raw, blob []byte) {
	b.Helper()
	raw = goSourceTar(b, 64<<20)
	return raw, gzipBytes(b, raw)
}

// BenchmarkBuildLayerGzip indexes the layer in one pass: inflate,
// checkpoints, tar entries, diff ID and span digests. Compare its MB/s
// (uncompressed bytes) with BenchmarkGunzipOnly's.
func BenchmarkBuildLayerGzip(b *testing.B) {
	raw, blob := benchGzipLayer(b)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	var spans int
	for b.Loop() {
		tab, err := BuildLayer(bytes.NewReader(blob), mtGzip, Options{})
		if err != nil {
			b.Fatal(err)
		}
		spans = len(tab.Spans)
	}
	b.ReportMetric(float64(spans), "spans")
}

// BenchmarkGunzipOnly is the floor BuildLayer is measured against: klauspost
// gzip reading the same layer to EOF.
func BenchmarkGunzipOnly(b *testing.B) {
	raw, blob := benchGzipLayer(b)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeSpan decodes one 4 MiB span from the middle of the layer,
// what a cold FUSE read costs after the fetch.
func BenchmarkDecodeSpan(b *testing.B) {
	raw, blob := benchGzipLayer(b)
	tab, err := BuildLayer(bytes.NewReader(blob), mtGzip, Options{})
	if err != nil {
		b.Fatal(err)
	}
	i := len(tab.Spans) / 2
	sp := tab.Spans[i]
	c := blob[sp.C:sp.CEnd]
	b.SetBytes(tab.SpanEnd(i) - sp.U)
	b.ReportAllocs()
	for b.Loop() {
		out, err := DecodeSpan(tab, i, c)
		if err != nil {
			b.Fatal(err)
		}
		if len(out) == 0 || out[0] != raw[sp.U] {
			b.Fatal("wrong bytes")
		}
	}
}

// BenchmarkIndexSize reports the encoded index of the whole Go source tree
// as gzip layer, at the default span size, as a share of the uncompressed
// layer ("index-%").
func BenchmarkIndexSize(b *testing.B) {
	raw := goSourceTar(b, 1<<40)
	blob := gzipBytes(b, raw)
	var enc []byte
	for b.Loop() {
		tab, err := BuildLayer(bytes.NewReader(blob), mtGzip, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if enc, err = tab.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(100*float64(len(enc))/float64(len(raw)), "index-%")
	b.ReportMetric(float64(len(raw)), "tar-bytes")
	b.ReportMetric(float64(len(blob)), "gzip-bytes")
	b.ReportMetric(float64(len(enc)), "index-bytes")
}

// BenchmarkGunzipStream is BenchmarkGunzipOnly reading through a plain
// io.Reader, as a layer arrives in practice (an HTTP body is no
// io.ByteReader, so flate reads it through a bufio.Reader, as BuildLayer
// does). BuildLayer against it is the like-for-like ratio; against
// BenchmarkGunzipOnly it is the ratio to the fastest in-memory decode.
func BenchmarkGunzipStream(b *testing.B) {
	raw, blob := benchGzipLayer(b)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		zr, err := gzip.NewReader(struct{ io.Reader }{bytes.NewReader(blob)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
}
