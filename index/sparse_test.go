package index

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// gnuTarSparse reads one of the archives GNU tar wrote in
// testdata/sparse (see its README).
func gnuTarSparse(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "sparse", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// gnuTarMaps are the data segments GNU tar recorded for the files of
// testdata/sparse, by name; plain.txt is stored whole.
var gnuTarMaps = map[string][]Segment{
	"holes-both.bin": {{Off: 299008, Len: 4096}},
	"data-end.bin":   {{Off: 65536, Len: 4}},
	"all-hole.bin":   {},
	"data-start.bin": {{Off: 0, Len: 8192}},
	"multi.bin":      {{Off: 0, Len: 4096}, {Off: 40960, Len: 4096, Data: 4096}, {Off: 1048576, Len: 4096, Data: 8192}},
}

// expand returns the content of a regular entry of the tar raw: its bytes
// as stored, with the holes of a sparse file filled in.
func expand(raw []byte, e Entry) []byte {
	if e.Sparse == nil {
		return raw[e.Offset : e.Offset+e.Size]
	}
	out := make([]byte, e.Size)
	for _, s := range e.Sparse.Segments {
		copy(out[s.Off:s.Off+s.Len], raw[e.Offset+s.Data:])
	}
	return out
}

// TestBuildSparseGNUTar: the PAX sparse formats as GNU tar writes them are
// indexed with their maps, the logical size and the offset of the packed
// data, and every file's content rebuilt from the table equals what
// archive/tar reads (it expands the holes itself).
func TestBuildSparseGNUTar(t *testing.T) {
	for _, v := range []string{"0.0", "0.1", "1.0"} {
		t.Run(v, func(t *testing.T) {
			raw := gnuTarSparse(t, "gnutar-"+v+".tar")
			tab, err := Build(bytes.NewReader(raw), Options{})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			ref, err := referenceRegulars(raw)
			if err != nil {
				t.Fatal(err)
			}
			if len(tab.Entries) != len(ref) {
				t.Fatalf("Build made %d entries, archive/tar reads %d files", len(tab.Entries), len(ref))
			}
			for i, e := range tab.Entries {
				r := ref[i]
				if e.Name != r.name || e.Type != TypeReg || e.Size != r.size {
					t.Errorf("entry %d = %s %q of %d bytes, want file %q of %d", i, e.Type, e.Name, e.Size, r.name, r.size)
					continue
				}
				want, sparse := gnuTarMaps[e.Name]
				switch {
				case !sparse && e.Sparse != nil:
					t.Errorf("%s: sparse map %v for a file stored whole", e.Name, e.Sparse.Segments)
				case sparse && e.Sparse == nil:
					t.Errorf("%s: no sparse map, want %v", e.Name, want)
				case sparse && !reflect.DeepEqual(e.Sparse.Segments, want):
					t.Errorf("%s: segments %v, want %v", e.Name, e.Sparse.Segments, want)
				}
				if got := expand(raw, e); !bytes.Equal(got, r.content) {
					t.Errorf("%s: content rebuilt from the table differs from archive/tar's", e.Name)
				}
			}
			if err := checkEntries(tab); err != nil {
				t.Error(err)
			}
		})
	}
}

// checkEntries checks every entry of tab against the Entry invariants.
func checkEntries(tab *Table) error {
	for i := range tab.Entries {
		if err := checkEntry(&tab.Entries[i], tab.TarSize); err != nil {
			return fmt.Errorf("entry %d %q: %w", i, tab.Entries[i].Name, err)
		}
	}
	return nil
}

func TestBuildOldGNUSparseRefused(t *testing.T) {
	for name, raw := range map[string][]byte{"GNU tar": gnuTarSparse(t, "gnutar-oldgnu.tar"), "generated": sparseGNUTar()} {
		t.Run(name, func(t *testing.T) {
			_, err := Build(bytes.NewReader(raw), Options{})
			want := "invalid input: tar entry %q: old GNU sparse entries (type S) are not supported"
			file := map[string]string{"GNU tar": "holes-both.bin", "generated": "holes.bin"}[name]
			if err == nil || !errors.Is(err, ErrFormat) || err.Error() != fmt.Sprintf(want, file) {
				t.Fatalf("Build = %v, want an ErrFormat error %q", err, fmt.Sprintf(want, file))
			}
		})
	}
}

// sparseTar01 is a tar of one GNU 0.1 sparse file of logical size size
// whose map is m and whose stored data is data, with extra PAX records.
func sparseTar01(size int64, m string, numblocks int, data string, extra ...string) []byte {
	recs := paxRecords(append([]string{
		"GNU.sparse.numblocks", fmt.Sprint(numblocks),
		"GNU.sparse.map", m,
		"GNU.sparse.size", fmt.Sprint(size),
		"GNU.sparse.name", "f.bin",
	}, extra...)...)
	return rawTar(
		rawHeader("PaxHeaders/f.bin", tar.TypeXHeader, int64(len(recs)), false, nil), recs,
		rawHeader("GNUSparseFile.0/f.bin", tar.TypeReg, int64(len(data)), false, nil), []byte(data),
	)
}

// sparseTar10 is a tar of one GNU 1.0 sparse file: the map text m padded
// to whole blocks, then data.
func sparseTar10(size int64, m, data string) []byte {
	recs := paxRecords(
		"GNU.sparse.major", "1",
		"GNU.sparse.minor", "0",
		"GNU.sparse.name", "f.bin",
		"GNU.sparse.realsize", fmt.Sprint(size),
	)
	body := padBlock([]byte(m))
	body = append(body, data...)
	return rawTar(
		rawHeader("PaxHeaders/f.bin", tar.TypeXHeader, int64(len(recs)), false, nil), recs,
		rawHeader("GNUSparseFile.0/f.bin", tar.TypeReg, int64(len(body)), false, nil), body,
	)
}

// TestBuildSparseShapes: maps beyond what GNU tar writes for small files.
func TestBuildSparseShapes(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want []Segment
		data string // the stored bytes
	}{
		{"0.1 adjacent segments", sparseTar01(30, "0,5,5,5,20,3", 3, "abcdefghijxyz"), []Segment{{0, 5, 0}, {5, 5, 5}, {20, 3, 10}}, "abcdefghijxyz"},
		{"0.1 zero-length segments dropped", sparseTar01(30, "3,0,4,2,30,0", 3, "hi"), []Segment{{4, 2, 0}}, "hi"},
		{"0.1 no segments", sparseTar01(7, "", 0, "", "GNU.sparse.major", "0", "GNU.sparse.minor", "1"), []Segment{}, ""},
		{"0.1 leading zeros and plus signs", sparseTar01(10, "+02,03", 1, "abc"), []Segment{{2, 3, 0}}, "abc"},
		{"1.0 one segment", sparseTar10(1000, "1\n10\n4\n", "data"), []Segment{{10, 4, 0}}, "data"},
		{"1.0 map over two blocks", sparseTar10(1<<40, strings.Repeat("0", 505)+"2\n1\n1\n99\n2\n", "abc"), []Segment{{1, 1, 0}, {99, 2, 1}}, "abc"},
		{"1.0 all hole", sparseTar10(1<<30, "0\n", ""), []Segment{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := Build(bytes.NewReader(tt.raw), Options{})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if len(tab.Entries) != 1 {
				t.Fatalf("%d entries, want 1", len(tab.Entries))
			}
			e := tab.Entries[0]
			if e.Name != "f.bin" || e.Sparse == nil || !reflect.DeepEqual(e.Sparse.Segments, tt.want) {
				t.Fatalf("entry %q, sparse %v; want f.bin with segments %v", e.Name, e.Sparse, tt.want)
			}
			if got := string(tt.raw[e.Offset : e.Offset+int64(len(tt.data))]); got != tt.data {
				t.Errorf("bytes at Offset %d = %q, want the stored data %q", e.Offset, got, tt.data)
			}
			if err := checkEntries(tab); err != nil {
				t.Error(err)
			}
			// archive/tar agrees on the content where it is small enough to read.
			if e.Size <= 1<<20 {
				ref, err := referenceRegulars(tt.raw)
				if err != nil || len(ref) != 1 || !bytes.Equal(ref[0].content, expand(tt.raw, e)) {
					t.Errorf("content rebuilt from the table differs from archive/tar's (%v)", err)
				}
			}
		})
	}
}

func TestBuildSparseRejects(t *testing.T) {
	tests := []struct {
		name    string
		raw     []byte
		opts    Options
		wantErr string
	}{
		// archive/tar itself refuses maps that are out of order, overlap or
		// leave the file; the table's checks stand behind it.
		{"overlap", sparseTar01(30, "0,5,4,5", 2, "abcdefghij"), Options{}, "invalid input"},
		{"past the size", sparseTar01(10, "8,5", 1, "abcde"), Options{}, "invalid input"},
		{"count mismatch", sparseTar01(10, "1,1", 2, "a"), Options{}, "invalid input"},
		// archive/tar accepts these; reading them would fail or misread.
		{"more data than stored", sparseTar01(100, "0,10,50,10", 2, "0123456789"), Options{}, `tar entry "f.bin": its sparse map holds 20 data bytes, but the entry stores 10`},
		{"1.0 more data than stored", sparseTar10(1000, "1\n0\n600\n", "x"), Options{}, `tar entry "f.bin": its sparse map holds 600 data bytes, but the entry stores 1`},
		// archive/tar fails the read at the end of such a file ("sparse
		// file contains unreferenced data").
		{"less data than stored", sparseTar01(10, "2,3", 1, "abcXYZ"), Options{}, `tar entry "f.bin": its sparse map holds 3 data bytes, but the entry stores 6`},
		{"too many segments", sparseTar01(100, "0,1,2,1,4,1", 3, "abc"), Options{MaxSparseSegments: 2}, "sparse files have more than 2 data segments; set Options.MaxSparseSegments to raise the cap"},
		{"segments of the layer together", append(sparseTar01(100, "0,1,2,1", 2, "ab")[:2048], sparseTar01(100, "0,1", 1, "a")...), Options{MaxSparseSegments: 2}, "more than 2 data segments"},
		{"unknown version", sparseTar01(10, "0,1", 1, "a", "GNU.sparse.major", "2", "GNU.sparse.minor", "0"), Options{}, `tar entry "GNUSparseFile.0/f.bin": GNU sparse format 2.0 is not supported`},
		{"sparse records without a map", rawTar(
			rawHeader("PaxHeaders/x", tar.TypeXHeader, int64(len(paxRecords("GNU.sparse.size", "10"))), false, nil), paxRecords("GNU.sparse.size", "10"),
			rawHeader("x", tar.TypeReg, 0, false, nil)), Options{}, `tar entry "x": GNU sparse records without a sparse map`},
		{"sparse directory", rawTar(
			rawHeader("PaxHeaders/d", tar.TypeXHeader, int64(len(paxRecords("GNU.sparse.map", "0,0", "GNU.sparse.numblocks", "1"))), false, nil),
			paxRecords("GNU.sparse.map", "0,0", "GNU.sparse.numblocks", "1"),
			rawHeader("d", 'D', 0, true, nil)), Options{}, `tar entry "d": GNU sparse records on a dir`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := Build(bytes.NewReader(tt.raw), tt.opts)
			if err == nil {
				t.Fatalf("Build = %d entries, want an error containing %q", len(tab.Entries), tt.wantErr)
			}
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Build error = %q, want an ErrFormat error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestBuildSparseBetweenEntries: sparse entries of every format among
// others, long names and xattrs included, keep every entry's offset right:
// the sparse map is found from the header bytes of the entry, wherever it
// sits in the stream.
func TestBuildSparseBetweenEntries(t *testing.T) {
	var raw []byte
	add := func(b []byte) { raw = append(raw, b[:len(b)-1024]...) } // without the end marker
	add(writeTar(t, []tarFile{reg("a", "hello"), withFormat(reg(longName(300), strings.Repeat("p", 700)), tar.FormatPAX)}))
	add(sparseTar10(1000, "1\n10\n4\n", "data"))
	add(writeTar(t, []tarFile{withFormat(reg(longName(200)+"gnu", "gnu long"), tar.FormatGNU),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"SCHILY.xattr.user.big": strings.Repeat("v", 3000)}}, content: "xattr"}}))
	add(gnuTarSparse(t, "gnutar-0.0.tar")[:33280+512]) // up to plain.txt's data block
	add(sparseTar01(30, "0,5,5,5,20,3", 3, "abcdefghijxyz"))
	add(gnuTarSparse(t, "gnutar-1.0.tar")[:35840+512])
	raw = append(raw, make([]byte, 1024)...)

	tab, err := Build(bytes.NewReader(raw), Options{})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	ref, err := referenceRegulars(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref) != len(tab.Entries) {
		t.Fatalf("Build made %d entries, archive/tar reads %d files", len(tab.Entries), len(ref))
	}
	sparse := 0
	for i, e := range tab.Entries {
		if e.Name != ref[i].name || !bytes.Equal(expand(raw, e), ref[i].content) {
			t.Errorf("entry %d %q: content rebuilt from the table differs from archive/tar's %q", i, e.Name, ref[i].name)
		}
		if e.Sparse != nil {
			sparse++
		}
	}
	if sparse != 12 {
		t.Errorf("%d sparse entries, want 12", sparse)
	}
}

func TestParseSparseMap(t *testing.T) {
	t.Run("0.x", func(t *testing.T) {
		tests := []struct {
			numblocks, m string
			size         int64
			want         []Segment
			wantErr      string
		}{
			{"2", "299008,4096,1048576,0", 1048576, []Segment{{299008, 4096, 0}}, ""},
			{"0", "", 5, []Segment{}, ""},
			{"1", "0,5", 5, []Segment{{0, 5, 0}}, ""},
			{"2", "0,5,5,1", 6, []Segment{{0, 5, 0}, {5, 1, 5}}, ""},
			{"1", "0,5", 4, nil, "outside the 4-byte file"},
			{"2", "5,1,0,1", 9, nil, "out of order"},
			{"2", "0,5,4,1", 9, nil, "out of order"},
			{"1", "-1,1", 9, nil, "negative"},
			{"1", "1,-1", 9, nil, "negative"},
			{"1", "9223372036854775807,1", 9, nil, "outside the 9-byte file"},
			{"1", "0,5,6,7", 20, nil, "4 numbers for 1 segments"},
			{"x", "0,5", 9, nil, "numblocks"},
			{"1", "0,a", 9, nil, "not a number"},
			{"3", "0,1,2,1,4,1", 9, nil, "more than 2 data segments"},
			{"-1", "", 9, nil, "numblocks"},
		}
		for _, tt := range tests {
			got, err := parseSparseMap0(tt.numblocks, tt.m, tt.size, 2)
			if tt.wantErr == "" && (err != nil || !reflect.DeepEqual(got, tt.want)) {
				t.Errorf("parseSparseMap0(%q, %q, %d) = %v, %v; want %v", tt.numblocks, tt.m, tt.size, got, err, tt.want)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("parseSparseMap0(%q, %q, %d) = %v, %v; want an error containing %q", tt.numblocks, tt.m, tt.size, got, err, tt.wantErr)
			}
		}
	})
	t.Run("1.0", func(t *testing.T) {
		block := func(s string) []byte { return padBlock([]byte(s)) }
		tests := []struct {
			b         []byte
			size      int64
			want      []Segment
			wantBlock int
			wantErr   string
		}{
			{block("2\n299008\n4096\n1048576\n0\n"), 1048576, []Segment{{299008, 4096, 0}}, 1, ""},
			{block("0\n"), 1, []Segment{}, 1, ""},
			{append(block("0\n"), block("junk after the map")...), 1, []Segment{}, 1, ""},
			{block(strings.Repeat("0", 510) + "1\n2\n1\n"), 9, []Segment{{2, 1, 0}}, 2, ""},
			{block("1\n2\n"), 9, nil, 0, "truncated"},
			{nil, 9, nil, 0, "truncated"},
			{block("1\n2\nx\n"), 9, nil, 0, "not a number"},
			{block("3\n0\n1\n2\n1\n4\n1\n"), 9, nil, 0, "more than 2 data segments"},
			{block("99999999999999999999\n"), 9, nil, 0, "segment count"},
			{block("1\n8\n5\n"), 9, nil, 0, "outside the 9-byte file"},
		}
		for _, tt := range tests {
			got, blocks, err := parseSparseMap1(tt.b, tt.size, 2)
			if tt.wantErr == "" && (err != nil || !reflect.DeepEqual(got, tt.want) || blocks != tt.wantBlock) {
				t.Errorf("parseSparseMap1(%q) = %v, %d blocks, %v; want %v, %d blocks", shortName(string(tt.b)), got, blocks, err, tt.want, tt.wantBlock)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("parseSparseMap1(%q) = %v, %v; want an error containing %q", shortName(string(tt.b)), got, err, tt.wantErr)
			}
		}
	})
}

// FuzzSparseMap feeds both map parsers arbitrary bytes: they never panic,
// and what they accept keeps the SparseMap invariants and, written back in
// the same form, parses to the same segments.
func FuzzSparseMap(f *testing.F) {
	for _, m := range []string{"299008,4096,1048576,0", "0,5,5,5,20,3", "", "+02,03", "0,8192,100000,0"} {
		f.Add(m, int64(1<<20), false)
	}
	for _, m := range []string{"2\n299008\n4096\n1048576\n0\n", "0\n", "1\n10\n4\n", strings.Repeat("0", 510) + "1\n2\n1\n"} {
		f.Add(m, int64(1<<20), true)
	}
	f.Fuzz(func(t *testing.T, m string, size int64, v1 bool) {
		const maxSegs = 1000
		var segs []Segment
		var err error
		if v1 {
			var blocks int
			segs, blocks, err = parseSparseMap1([]byte(m), size, maxSegs)
			if err == nil && (blocks < 1 || blocks*blockSize > len(m)+blockSize-1) {
				t.Fatalf("parseSparseMap1 consumed %d blocks of a %d-byte map", blocks, len(m))
			}
		} else {
			n := strings.Count(m, ",")/2 + 1
			if m == "" {
				n = 0
			}
			segs, err = parseSparseMap0(fmt.Sprint(n), m, size, maxSegs)
		}
		if err != nil {
			return
		}
		if len(segs) > maxSegs {
			t.Fatalf("%d segments, more than the cap", len(segs))
		}
		e := Entry{Name: "f", Type: TypeReg, Size: size, Sparse: &SparseMap{Segments: segs}}
		if err := checkEntry(&e, 1<<62); err != nil {
			t.Fatalf("parsed map breaks an invariant: %v", err)
		}
		var b strings.Builder
		for i, s := range segs {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%d,%d", s.Off, s.Len)
		}
		again, err := parseSparseMap0(fmt.Sprint(len(segs)), b.String(), size, maxSegs)
		if err != nil || !reflect.DeepEqual(again, segs) {
			t.Fatalf("map written back as %q parses to %v, %v; want %v", b.String(), again, err, segs)
		}
	})
}
