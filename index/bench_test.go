package index

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
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

// goSourceTar returns a tar of up to limit bytes of Go's own source tree
// (only the directories under, when given, in that order), a realistic
// layer: many text files of all sizes. It skips when the tree is not there.
func goSourceTar(tb testing.TB, limit int, under ...string) []byte {
	tb.Helper()
	root := filepath.Join(runtime.GOROOT(), "src")
	if _, err := os.Stat(root); err != nil {
		tb.Skipf("no Go source tree to build a layer from: %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if len(under) == 0 {
		under = []string{""}
	}
	var err error
	for _, u := range under {
		if err != nil {
			break
		}
		err = filepath.WalkDir(filepath.Join(root, u), func(p string, d fs.DirEntry, err error) error {
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
	}
	if err != nil {
		tb.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per op since start ("cpu-ms/op"): on a
// shared machine wall time swings with the load, the work done much less.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N)/1e6, "cpu-ms/op")
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
	var cpu0 time.Duration
	for b.Loop() {
		if cpu0 == 0 {
			cpu0 = cpuTime(b)
		}
		tab, err := BuildLayer(bytes.NewReader(blob), mtGzip, Options{})
		if err != nil {
			b.Fatal(err)
		}
		spans = len(tab.Spans)
	}
	b.ReportMetric(float64(spans), "spans")
	reportCPU(b, cpu0)
}

// BenchmarkGunzipOnly is the floor BuildLayer is measured against: klauspost
// gzip reading the same layer to EOF.
func BenchmarkGunzipOnly(b *testing.B) {
	raw, blob := benchGzipLayer(b)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	var cpu0 time.Duration
	for b.Loop() {
		if cpu0 == 0 {
			cpu0 = cpuTime(b)
		}
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
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
	var cpu0 time.Duration
	for b.Loop() {
		if cpu0 == 0 {
			cpu0 = cpuTime(b)
		}
		zr, err := gzip.NewReader(struct{ io.Reader }{bytes.NewReader(blob)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
}

// referenceCase is one input of TestBuildLayerReference.
type referenceCase struct {
	name      string
	blob      []byte
	mediaType string
	spanSize  int64
	cut       int // > 0: the reader fails after this many bytes
}

// referenceCases returns layers built from fixed seeds with pinned
// compressors (klauspost's, at the version go.mod names): good ones of
// every shape BuildLayer handles, and damaged ones whose error is decided
// before the tar reader can see the damage.
func referenceCases(tb testing.TB) []referenceCase {
	tb.Helper()
	mixed := tarOf(tb, mixedData(400_000, 21))
	small := manySmallFiles(tb, 300_000)
	n := len(mixed)
	single := gzipMember(tb, mixed, 6, false, 0)
	multi := gzipSplit(tb, mixed, []int{0, 1000, n / 3, n / 3, 2 * n / 3}, 5, false, hdrAll)
	flip := func(b []byte, i int, x byte) []byte { b = bytes.Clone(b); b[i] ^= x; return b }
	cases := []referenceCase{
		{name: "single/span=16k", blob: single, spanSize: 16 << 10},
		{name: "single/span=1k", blob: single, spanSize: 1 << 10},
		{name: "single/default", blob: single},
		{name: "single/span=4m", blob: single, spanSize: 4 << 20}, // the default before issue 16
		{name: "level1", blob: gzipMember(tb, mixed, 1, false, hdrName), spanSize: 8 << 10},
		{name: "level9", blob: gzipMember(tb, mixed, 9, false, 0), spanSize: 32 << 10},
		{name: "stored", blob: gzipMember(tb, mixed, 0, false, hdrHCRC), spanSize: 4 << 10},
		{name: "huffman-only", blob: gzipMember(tb, mixed, -2, false, 0), spanSize: 4 << 10},
		{name: "multi/span=4k", blob: multi, spanSize: 4 << 10},
		{name: "multi/span=64k", blob: multi, spanSize: 64 << 10},
		{name: "tiny members", blob: gzipSplit(tb, mixed, tinyCuts(n, 3001), 6, false, 0), spanSize: 2 << 10},
		{name: "small files", blob: gzipBytes(tb, small), spanSize: 16 << 10},
		{name: "plain tar", blob: small, mediaType: mtTar, spanSize: 10 << 10},
		{name: "zstd", blob: zstdBytes(tb, small), mediaType: mtZstd},
		{name: "bad crc", blob: flip(single, len(single)-6, 1), spanSize: 16 << 10},
		{name: "bad isize", blob: flip(multi, len(multi)-2, 4), spanSize: 16 << 10},
		{name: "bad header crc", blob: flip(multi, 10, 1), spanSize: 16 << 10},
		{name: "truncated trailer", blob: single[:len(single)-3], spanSize: 16 << 10},
		{name: "garbage after", blob: append(bytes.Clone(single), 0x1f, 0x8b, 8), spanSize: 16 << 10},
		{name: "bad magic after", blob: append(bytes.Clone(multi), 0x1f, 0x8c, 8, 0, 0, 0, 0, 0, 0, 0), spanSize: 16 << 10},
		{name: "source error/gzip", blob: single, spanSize: 16 << 10, cut: len(single) / 3},
		{name: "source error/tar", blob: small, mediaType: mtTar, cut: len(small) / 2},
		{name: "not a tar", blob: gzipBytes(tb, mixedData(3000, 4)), spanSize: 1 << 10},
		{name: "tar size cap", blob: gzipBytes(tb, small), spanSize: 1 << 30},
	}
	for i := range cases {
		if cases[i].mediaType == "" {
			cases[i].mediaType = mtGzip
		}
	}
	return cases
}

// referenceResults is what BuildLayer gave for referenceCases before its
// pipeline was reworked: the sha256 of the blob (to catch a fixture that
// changed) and "ok" with the sha256 of the table's encoding, or the error.
var referenceResults = map[string]string{
	"single/span=16k":   "8995948fad37bdab ok d087f31276a97ed1b7fa72b3e59bdde8",
	"single/span=1k":    "8995948fad37bdab ok 8e967a486ce63f9aa0e7a95a30889f09",
	"single/default":    "8995948fad37bdab ok 311211a2ae5b3e26359cf7d018444fa2", // 1 MiB spans since issue 16
	"single/span=4m":    "8995948fad37bdab ok bcd9e043a5670151ad13f0fc17289065",
	"level1":            "6339f9ac08e91a24 ok 2db62bf7162ec8e27c55b4abac5c55cf",
	"level9":            "c3bc1f6169d1d3af ok 3b9e5c59e82560f8b02a3b47310f23d0",
	"stored":            "5f691e4bbd3f98f9 ok bd100028a1a536dc8d8c580ad291bf0e",
	"huffman-only":      "3986ace3ef158bd4 ok da0577da4cc099fa2e1b1eeeab4d19e7",
	"multi/span=4k":     "f44ba132d129750d ok 95faf5e2f20357739ad9392782adf2e1",
	"multi/span=64k":    "f44ba132d129750d ok e334ab31cdebb9ea6f16870e20a382f6",
	"tiny members":      "9adfb742db057a98 ok 350767dcc10fddab64d8b2870eda9bfa",
	"small files":       "a10cc40cfd739e42 ok 12b4bbedc2ece48de469efe3ac9ecbb6",
	"plain tar":         "b78e79c6e5233afd ok b54a49ea5606fca423bd2b556b227a7f",
	"zstd":              "34c9ade3a94c9029 ok 9b87d739a03d28cb34f67c3566e7d926",
	"bad crc":           "816460f732d1f3ce err invalid input: gzip member at blob offset 10: trailer says CRC 0xbebbf4d4 and 401920 bytes, data has CRC 0xbebaf4d4 and 401920 bytes (mod 2^32)",
	"bad isize":         "21bd92ac9accf73b err invalid input: gzip member at blob offset 113299: trailer says CRC 0x70a59466 and 396118 bytes, data has CRC 0x70a59466 and 133974 bytes (mod 2^32)",
	"bad header crc":    "509cb686374238ba err invalid input: gzip member header CRC 0x98db, want 0x65c6",
	"truncated trailer": "6d60ef32a8ac8490 err invalid input: gzip stream truncated in the member trailer at blob offset 176651",
	"garbage after":     "7cfaf8609bd8678b err invalid input: gzip member header at blob offset 176659 truncated",
	"bad magic after":   "1e99498eb2c4a94d err invalid input: gzip member header starts with 1f 8c 08, not 1f 8b 08 (blob offset 180806)",
	"source error/gzip": "8995948fad37bdab err reading gzip layer: connection reset",
	"source error/tar":  "b78e79c6e5233afd err connection reset",
	"not a tar":         "572a213b94a582e1 err invalid input: tar stream at offset 512, after 0 entries: archive/tar: invalid tar header",
	"tar size cap":      "a10cc40cfd739e42 err invalid input: decompressed size exceeds 100000 bytes; set Options.MaxTarSize to raise the cap",
}

func referenceOutcome(c referenceCase) string {
	var r io.Reader = bytes.NewReader(c.blob)
	if c.cut > 0 {
		r = &errReader{data: c.blob[:c.cut], err: errors.New("connection reset")}
	}
	opts := Options{SpanSize: c.spanSize}
	if c.name == "tar size cap" {
		opts.MaxTarSize = 100_000
	}
	tab, err := BuildLayer(r, c.mediaType, opts)
	blob := sha256.Sum256(c.blob)
	if err != nil {
		return fmt.Sprintf("%x err %v", blob[:8], err)
	}
	enc, err := tab.MarshalBinary()
	if err != nil {
		return fmt.Sprintf("%x marshal %v", blob[:8], err)
	}
	sum := sha256.Sum256(enc)
	return fmt.Sprintf("%x ok %x", blob[:8], sum[:16])
}

// TestBuildLayerReference checks that BuildLayer builds the same table and
// reports the same error as it did before for the same bytes.
func TestBuildLayerReference(t *testing.T) {
	for _, c := range referenceCases(t) {
		got := referenceOutcome(c)
		if want := referenceResults[c.name]; got != want {
			t.Errorf("%q:\n got %q\nwant %q", c.name, got, want)
		}
	}
}

// settledGoroutines waits, by yielding a bounded number of times, for the
// goroutine count to drop to at most want, and returns the last count.
func settledGoroutines(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100_000 && n > want; i++ {
		runtime.Gosched()
		n = runtime.NumGoroutine()
	}
	return n
}

// TestBuildLayerNoLeak checks that every goroutine BuildLayer starts has
// exited when it returns an error, whichever side of the pipeline failed
// and however far the other side had got.
func TestBuildLayerNoLeak(t *testing.T) {
	big := manySmallFiles(t, 6<<20)
	good := gzipBytes(t, big)
	badTar := gzipBytes(t, append(bytes.Repeat([]byte{'x'}, 1024), big...))
	badCRC := bytes.Clone(good)
	badCRC[len(badCRC)-6] ^= 1
	lateTar := gzipBytes(t, append(bytes.Clone(big[:len(big)-1024]), bytes.Repeat([]byte{'y'}, 4096)...))
	boom := errors.New("connection reset")
	tests := []struct {
		name string
		r    func() io.Reader
		opts Options
	}{
		{"source error early", func() io.Reader { return &errReader{data: good[:4096], err: boom} }, Options{}},
		{"source error late", func() io.Reader { return &errReader{data: good[:len(good)-100], err: boom} }, Options{}},
		{"bad tar at the start", func() io.Reader { return bytes.NewReader(badTar) }, Options{}},
		{"bad tar at the end", func() io.Reader { return bytes.NewReader(lateTar) }, Options{SpanSize: 64 << 10}},
		{"bad crc", func() io.Reader { return bytes.NewReader(badCRC) }, Options{}},
		{"truncated", func() io.Reader { return bytes.NewReader(good[:len(good)/2]) }, Options{}},
		{"tar size cap", func() io.Reader { return bytes.NewReader(good) }, Options{MaxTarSize: 1 << 20}},
		{"plain tar source error", func() io.Reader { return &errReader{data: big[:len(big)/2], err: boom} }, Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mt := mtGzip
			if tt.name == "plain tar source error" {
				mt = mtTar
			}
			before := settledGoroutines(0)
			for range 5 {
				if _, err := BuildLayer(tt.r(), mt, tt.opts); err == nil {
					t.Fatal("BuildLayer succeeded on a bad layer")
				}
			}
			if n := settledGoroutines(before); n > before {
				t.Errorf("%d goroutines after BuildLayer failed, %d before", n, before)
			}
		})
	}
}
