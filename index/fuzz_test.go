package index

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
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
	content []byte
}

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
		if name == "" || len(base) >= len(whiteoutPrefix) && base[:len(whiteoutPrefix)] == whiteoutPrefix || isAufsMeta(name) {
			continue
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
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
		// agree on each regular file's name, size and content.
		ref, err := referenceRegulars(raw)
		if err != nil {
			t.Fatalf("Build succeeded where archive/tar fails: %v", err)
		}
		if len(ref) != len(regulars) {
			t.Fatalf("Build indexed %d regular files, archive/tar sees %d", len(regulars), len(ref))
		}
		for i, e := range regulars {
			r := ref[i]
			if e.Name != r.name || e.Size != r.size || !bytes.Equal(raw[e.Offset:e.Offset+e.Size], r.content) {
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
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := Unmarshal(b); err != nil && !errors.Is(err, ErrFormat) {
			t.Fatalf("Unmarshal error %q does not wrap ErrFormat", err)
		}
		// Most mutations break the checksum; fix it up to reach the
		// decoder behind it.
		b = reseal(b)
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
