package index

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"path"
	"reflect"
	"testing"
)

// fuzzTars returns the generated tars the fuzz targets start from: small
// ones, so each execution stays fast.
func fuzzTars(tb testing.TB) [][]byte {
	raw, _, _ := fixtureTar(tb)
	return [][]byte{
		raw,
		writeTar(tb, []tarFile{reg("a", "hello"), dir("d/", 0o755), reg("d/.wh.x", "")}),
		writeTar(tb, []tarFile{withFormat(reg(longName(300), "pax"), tar.FormatPAX), withFormat(reg(longName(200), "gnu"), tar.FormatGNU)}),
		sparseGNUTar(),
		sparsePAXTar(),
		gnuTarSparse(tb, "gnutar-0.0.tar"),
		gnuTarSparse(tb, "gnutar-0.1.tar"),
		gnuTarSparse(tb, "gnutar-1.0.tar"),
		manySmallFiles(tb, 20_000),
		nil,
	}
}

// fuzzMaxTarSize keeps a fuzzed decompression bomb from running long.
const fuzzMaxTarSize = 8 << 20

// referenceEntry is what a plain archive/tar pass says about one header.
type referenceEntry struct {
	name    string
	size    int64
	content []byte // nil past maxReferenceSize
}

// maxReferenceSize is the largest file referenceRegulars reads: a sparse
// file of a few bytes may claim terabytes.
const maxReferenceSize = 4 << 20

// referenceRegulars lists, with archive/tar alone, the regular files Build
// should index: headers with a regular type flag whose name is not a
// whiteout or aufs metadata.
func referenceRegulars(raw []byte) ([]referenceEntry, error) {
	var out []referenceEntry
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA, tar.TypeCont:
		default:
			continue
		}
		name := path.Clean("/" + hdr.Name)[1:]
		base := path.Base(name)
		if name == "" || len(base) >= len(whiteoutPrefix) && base[:len(whiteoutPrefix)] == whiteoutPrefix || IsAufsMeta(name) {
			continue
		}
		var content []byte
		if hdr.Size <= maxReferenceSize {
			if content, err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
		out = append(out, referenceEntry{name: name, size: hdr.Size, content: content})
	}
}

func FuzzBuild(f *testing.F) {
	for _, raw := range fuzzTars(f) {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		tab, err := Build(bytes.NewReader(raw), Options{MaxTarSize: fuzzMaxTarSize})
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Build error %q does not wrap ErrFormat; the input was all there was", err)
			}
			return
		}
		if tab.TarSize != int64(len(raw)) {
			t.Fatalf("TarSize = %d, want %d", tab.TarSize, len(raw))
		}
		var regulars []Entry
		for i, e := range tab.Entries {
			if err := checkEntry(&e, tab.TarSize); err != nil {
				t.Fatalf("entry %d %q breaks an invariant: %v", i, e.Name, err)
			}
			if e.Type == TypeReg {
				regulars = append(regulars, e)
			}
		}
		// Differential: archive/tar alone must also read the input, and
		// agree on each regular file's name, size and content (with the
		// holes of a sparse file filled in from its map).
		ref, err := referenceRegulars(raw)
		if err != nil {
			t.Fatalf("Build succeeded where archive/tar fails: %v", err)
		}
		if len(ref) != len(regulars) {
			t.Fatalf("Build indexed %d regular files, archive/tar sees %d", len(regulars), len(ref))
		}
		for i, e := range regulars {
			r := ref[i]
			if e.Name != r.name || e.Size != r.size || r.content != nil && !bytes.Equal(expand(raw, e), r.content) {
				t.Fatalf("regular file %d: Build has %q size %d at %d, archive/tar has %q size %d", i, e.Name, e.Size, e.Offset, r.name, r.size)
			}
		}
	})
}

func FuzzDecompress(f *testing.F) {
	for _, raw := range fuzzTars(f) {
		f.Add(gzipBytes(f, raw), false)
		f.Add(zstdBytes(f, raw), true)
	}
	f.Add(append(gzipBytes(f, []byte("one")), gzipBytes(f, []byte("two"))...), false)
	f.Fuzz(func(t *testing.T, blob []byte, isZstd bool) {
		mt := mtGzip
		if isZstd {
			mt = mtZstd
		}
		rc, err := Decompress(mt, bytes.NewReader(blob))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Decompress error %q does not wrap ErrFormat", err)
			}
			return
		}
		defer rc.Close()
		// Cap the output: a few bytes may stand for gigabytes.
		got, err := io.ReadAll(io.LimitReader(rc, fuzzMaxTarSize))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("reading: error %q does not wrap ErrFormat", err)
			}
			return
		}
		if len(got) == fuzzMaxTarSize || isZstd {
			return
		}
		// Differential: the standard library's gzip reader agrees.
		zr, err := stdgzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatalf("Decompress succeeded where compress/gzip fails: %v", err)
		}
		want, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("Decompress succeeded where compress/gzip fails: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Decompress gave %d bytes, compress/gzip %d", len(got), len(want))
		}
	})
}

func FuzzUnmarshal(f *testing.F) {
	for _, raw := range fuzzTars(f) {
		tab, err := Build(bytes.NewReader(raw), Options{})
		if err != nil {
			continue
		}
		enc, err := tab.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
		f.Add(withSection(enc, 2, "even"))
	}
	for _, enc := range spanSeeds(f) {
		f.Add(enc)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := Unmarshal(b); err != nil && !errors.Is(err, ErrFormat) {
			t.Fatalf("Unmarshal error %q does not wrap ErrFormat", err)
		}
		// Most mutations break the checksum; fix it up to reach the
		// decoder behind it.
		if len(b) >= headerLen && binary.BigEndian.Uint16(b[len(indexMagic):]) >= 2 {
			b = resealV2(b)
		} else {
			b = reseal(b)
		}
		tab, err := Unmarshal(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Unmarshal error %q does not wrap ErrFormat", err)
			}
			return
		}
		enc, err := tab.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a decoded table: %v", err)
		}
		again, err := Unmarshal(enc)
		if err != nil {
			t.Fatalf("Unmarshal(MarshalBinary(Unmarshal(b))): %v", err)
		}
		if !reflect.DeepEqual(again, tab) {
			t.Fatalf("round trip changed the table")
		}
		// Without skipped sections the encoding is canonical.
		if len(enc) == len(b) && !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding changed the bytes but not the length")
		}
		if len(enc) > len(b) {
			t.Fatalf("re-encoding grew from %d to %d bytes", len(b), len(enc))
		}
	})
}

// spanSeeds returns encodings of span-bearing tables: gzip in two members,
// plain tar and zstd, small enough for fast fuzzing.
func spanSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	raw := tarOf(tb, mixedData(20_000, 13))
	sparse := gnuTarSparse(tb, "gnutar-1.0.tar")
	var out [][]byte
	for _, c := range []struct {
		mt   string
		blob []byte
	}{
		{mtGzip, gzipSplit(tb, raw, []int{9000}, 6, true, hdrName)},
		{mtTar, raw},
		{mtZstd, zstdBytes(tb, raw)},
		{mtGzip, gzipBytes(tb, sparse)}, // version 3
	} {
		tab := buildLayerT(tb, c.blob, c.mt, 2<<10)
		enc, err := tab.MarshalBinary()
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, enc)
	}
	return out
}

func FuzzOpen(f *testing.F) {
	for _, enc := range spanSeeds(f) {
		f.Add(enc)
	}
	f.Add(mustEncode(f, builtFixture(f)))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, b := range [][]byte{b, resealV2(b)} {
			tab, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("Open error %q does not wrap ErrFormat", err)
				}
				continue
			}
			if len(tab.Spans) > len(b)/minSpanLen {
				t.Fatalf("%d spans from %d bytes", len(tab.Spans), len(b))
			}
			for i := range tab.Spans {
				w, err := tab.Window(i)
				if err != nil && !errors.Is(err, ErrFormat) {
					t.Fatalf("Window(%d) error %q does not wrap ErrFormat", i, err)
				}
				if len(w) > maxWindow || int64(len(w)) > tab.Spans[i].U {
					t.Fatalf("Window(%d) has %d bytes at U %d", i, len(w), tab.Spans[i].U)
				}
			}
			// DecodeSpan of whatever bytes never panics.
			for i := range tab.Spans {
				sp := tab.Spans[i]
				if sp.CEnd-sp.C > 1<<16 || tab.SpanEnd(i)-sp.U > 1<<22 {
					continue
				}
				_, _ = DecodeSpan(tab, i, make([]byte, sp.CEnd-sp.C))
			}
		}
	})
}

func mustEncode(tb testing.TB, t *Table) []byte {
	tb.Helper()
	enc, err := t.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return enc
}

// FuzzGzipSpans checks random access against sequential decompression:
// data in a tar, gzip-compressed in up to three members at a chosen level
// and header flags, indexed at a chosen span size; every span and random
// ranges read through the index equal the stream.
func FuzzGzipSpans(f *testing.F) {
	f.Add([]byte("hello, world"), int8(6), uint16(0), uint16(0), uint8(0), byte(0), false)
	f.Add(mixedData(20_000, 1), int8(0), uint16(1000), uint16(30000), uint8(1), byte(hdrAll), true)
	f.Add(mixedData(30_000, 2), int8(1), uint16(0), uint16(0), uint8(3), byte(hdrName), false)
	f.Add(bytes.Repeat([]byte("a"), 40_000), int8(9), uint16(5), uint16(5), uint8(0), byte(0), false)
	f.Add(randomBytes(20_000, 3), int8(-2), uint16(20000), uint16(20001), uint8(0), byte(hdrHCRC), false)
	f.Fuzz(func(t *testing.T, data []byte, level int8, cut1, cut2 uint16, spanKiB uint8, flags byte, std bool) {
		lv := int(uint8(level))%12 - 2 // -2 (Huffman only) to 9
		if std && lv == -2 || !std && lv == -1 {
			lv = 6
		}
		raw := tarOf(t, data)
		cuts := []int{int(cut1) * len(raw) / 65536, int(cut2) * len(raw) / 65536}
		if cuts[1] < cuts[0] {
			cuts[0], cuts[1] = cuts[1], cuts[0]
		}
		blob := gzipSplit(t, raw, cuts, lv, std, flags&hdrAll)
		spanSize := int64(spanKiB%64+1) << 10
		tab := buildLayerT(t, blob, mtGzip, spanSize)
		checkLayerTable(t, tab, blob, raw, compressionGzip, spanSize)
		checkRandomRanges(t, tab, blob, raw, 10, uint64(len(data)))
		enc, err := tab.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		opened, err := Open(bytes.NewReader(enc), int64(len(enc)))
		if err != nil {
			t.Fatal(err)
		}
		checkRandomRanges(t, opened, blob, raw, 5, 1)
	})
}

// FuzzHeadLen: HeadLen never panics, and where it and Open both accept an
// index, Open reads nothing past the head: a reader that fetched only
// HeadLen bytes opens the same table.
func FuzzHeadLen(f *testing.F) {
	for _, enc := range spanSeeds(f) {
		f.Add(enc)
		f.Add(enc[:headerLen+headLenLen])
	}
	f.Add(mustEncode(f, builtFixture(f)))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, b := range [][]byte{b, resealV2(b)} {
			head, err := HeadLen(b)
			if err != nil {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("HeadLen error %q does not wrap ErrFormat", err)
				}
				continue
			}
			if head < 0 {
				t.Fatalf("HeadLen = %d", head)
			}
			whole, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				continue
			}
			if head > int64(len(b)) {
				t.Fatalf("HeadLen = %d of an index Open accepts in %d bytes", head, len(b))
			}
			r := &readLog{b: b, limit: head}
			tab, err := Open(r, int64(len(b)))
			if err != nil {
				t.Fatalf("Open reading only the %d-byte head: %v (reads %v)", head, err, r.reads)
			}
			if !reflect.DeepEqual(tab.Entries, whole.Entries) || !reflect.DeepEqual(tab.Spans, whole.Spans) {
				t.Fatalf("the table opened from the head differs")
			}
			for i := range tab.Spans {
				off, n, _ := tab.WindowLocation(i)
				if n > 0 && (off < head || off+n > int64(len(b))) {
					t.Fatalf("window %d at %d+%d: outside the windows section [%d, %d)", i, off, n, head, len(b))
				}
			}
		}
	})
}
