package toc

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/index"
)

// latin1Files returns entries whose names are not UTF-8, as a tar made on a
// Latin-1 system has them: in PAX records and raw in a GNU header, a
// symlink target, a hard link target, a directory and an xattr name, and two
// names that are one once a JSON writer replaces their bad bytes.
func latin1Files() []testFile {
	files := fixtureFiles(true)
	reg := func(name, data string, format tar.Format) testFile {
		return testFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: baseTime, Format: format}, data: []byte(data)}
	}
	x := reg("caf\xe9-xattr", "x", tar.FormatPAX)
	x.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.caf\xe9": "\xe9", "SCHILY.xattr.user.ok": "1"}
	return append(files,
		reg("caf\xe9.txt", "acute", tar.FormatPAX),
		reg("caf\xe8.txt", "grave", tar.FormatPAX),
		reg("gnu-\xff", strings.Repeat("g", 3000), tar.FormatGNU),
		testFile{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "to-caf\xe9", Linkname: "caf\xe9.txt", ModTime: baseTime, Format: tar.FormatPAX}},
		testFile{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hard-\xe9", Linkname: "caf\xe9.txt", ModTime: baseTime, Format: tar.FormatPAX}},
		testFile{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d\xe9j\xe0/", Mode: 0o755, ModTime: baseTime, Format: tar.FormatPAX}},
		x,
	)
}

// TestApplyTarSplit: a zstd:chunked TOC holds U+FFFD for every byte of a
// name that is not UTF-8 (InexactName says so); its tar-split gives every
// name, link target and xattr name exactly, and the entries are then those
// index.Build reads from the whole tar.
func TestApplyTarSplit(t *testing.T) {
	tl := buildZstdChunked(t, makeTar(t, latin1Files()), 1000)
	l, loc := decodeLayer(t, tl, false)
	if l.TarSplitDigest == "" || loc.TarSplitSize == 0 || loc.TarSplitJSONSize == 0 {
		t.Fatalf("fixture: tar-split digest %q at %d+%d (%d uncompressed)", l.TarSplitDigest, loc.TarSplitOffset, loc.TarSplitSize, loc.TarSplitJSONSize)
	}
	if name, ok := l.InexactName(); !ok || !strings.Contains(name, "\ufffd") {
		t.Errorf("InexactName() = %q, %v; want a name with U+FFFD", name, ok)
	}
	exact, err := ApplyTarSplit(l, loc, tl.blob[loc.TarSplitOffset:loc.TarSplitOffset+loc.TarSplitSize], Options{})
	if err != nil {
		t.Fatalf("ApplyTarSplit: %v", err)
	}
	if name, ok := exact.InexactName(); ok {
		t.Errorf("after ApplyTarSplit, InexactName() = %q", name)
	}
	checkLayer(t, exact, loc)
	compareWithReference(t, tl, exact)
	for _, want := range []string{"caf\xe9.txt", "caf\xe8.txt", "gnu-\xff", "d\xe9j\xe0"} {
		found := false
		for _, e := range exact.Entries {
			found = found || e.Name == want
		}
		if !found {
			t.Errorf("no entry named %q after ApplyTarSplit", want)
		}
	}
	if l.Entries[len(l.Entries)-1].Name == exact.Entries[len(exact.Entries)-1].Name {
		t.Errorf("ApplyTarSplit changed the layer it was given, or the fixture's names are UTF-8")
	}
}

// TestApplyTarSplitRefuses: a tar-split that is not the one the TOC names,
// or that describes another tar, is refused with a clear error, and the
// TOC it was checked against is left as it was.
func TestApplyTarSplitRefuses(t *testing.T) {
	files := fixtureFiles(false)
	honest := makeTar(t, files)
	lied := append([]testFile(nil), files...)
	lied[2].hdr.Name = "etc/planted" // etc/hostname in the tar-split's tar
	other := makeTar(t, lied)
	modes := append([]testFile(nil), files...)
	modes[2].hdr.Mode = 0o4755
	cases := []struct {
		name    string
		tl      testLayer
		edit    func([]byte) []byte
		opts    Options
		digest  bool
		wantErr string
	}{
		{"flipped byte", buildZstdChunked(t, honest, 1000), func(b []byte) []byte { b[len(b)/2] ^= 1; return b }, Options{}, true, "tar-split at blob offset"},
		{"another tar's names", buildZstdChunkedSplit(t, honest, 1000, other), nil, Options{}, false, `name "etc/hostname" in the TOC, "etc/planted" in the tar`},
		{"another tar's modes", buildZstdChunkedSplit(t, honest, 1000, makeTar(t, modes)), nil, Options{}, false, "mode 644"},
		{"another tar's entries", buildZstdChunkedSplit(t, honest, 1000, makeTar(t, files[:5])), nil, Options{}, false, "the tar-split has 5 entries"},
		{"compressed size cap", buildZstdChunked(t, honest, 1000), nil, Options{MaxTarSplitSize: 100}, false, "MaxTarSplitSize"},
		{"uncompressed size cap", buildZstdChunked(t, honest, 1000), nil, Options{MaxTarSplitSize: 4000}, false, "MaxTarSplitSize"},
		{"entry cap", buildZstdChunked(t, honest, 1000), nil, Options{MaxEntries: 10}, false, "MaxEntries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, loc := decodeLayer(t, tc.tl, false)
			before := append([]index.Entry(nil), l.Entries...)
			raw := append([]byte(nil), tc.tl.blob[loc.TarSplitOffset:loc.TarSplitOffset+loc.TarSplitSize]...)
			if tc.edit != nil {
				raw = tc.edit(raw)
			}
			if tc.opts.MaxEntries != 0 && len(l.Entries) <= tc.opts.MaxEntries {
				t.Fatalf("fixture: %d entries, not over the cap of %d the tar-split must hit", len(l.Entries), tc.opts.MaxEntries)
			}
			if _, err := ApplyTarSplit(l, loc, raw, tc.opts); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ApplyTarSplit: err %v; want an error containing %q", err, tc.wantErr)
			} else if tc.digest != errors.Is(err, ErrDigest) || (!tc.digest && !errors.Is(err, index.ErrFormat)) {
				t.Errorf("error %v: digest mismatch %v, want %v (else invalid input)", err, errors.Is(err, ErrDigest), tc.digest)
			}
			if !equalEntries(l.Entries, before) {
				t.Errorf("ApplyTarSplit changed the TOC's entries")
			}
		})
	}
}

func equalEntries(a, b []index.Entry) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// tarSplitJSON is a hand-written tar-split for the hostile cases.
func tarSplitJSON(records ...string) []byte { return []byte(strings.Join(records, "\n") + "\n") }

// segment is a segment record holding b.
func segment(b []byte) string {
	return `{"type":2,"payload":"` + base64.StdEncoding.EncodeToString(b) + `","position":0}`
}

// headerOf returns the raw blocks of one tar header (no data, no end).
func headerOf(t *testing.T, h tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&h); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes() // the header's blocks: WriteHeader writes them at once
}

// decodeJSON compresses and digests a tar-split JSON and decodes it.
func decodeJSON(t testing.TB, js []byte, opts Options) ([]index.Entry, error) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	raw := enc.EncodeAll(js, nil)
	return DecodeTarSplit(Location{TarSplitOffset: 100}, raw, digest.FromBytes(raw), opts)
}

func TestDecodeTarSplitHostile(t *testing.T) {
	dir := headerOf(t, tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755, ModTime: baseTime})
	reg := headerOf(t, tar.Header{Typeflag: tar.TypeReg, Name: "d/f", Mode: 0o644, Size: 3, ModTime: baseTime})
	long := headerOf(t, tar.Header{Typeflag: tar.TypeDir, Name: "longer/", Mode: 0o755, ModTime: baseTime})
	file := func(name string, size int) string {
		return fmt.Sprintf(`{"type":1,"name":%q,"size":%d,"payload":null}`, name, size)
	}
	end := make([]byte, 1024)
	cases := []struct {
		name string
		js   []byte
		opts Options
		want string
	}{
		{"not JSON", []byte("{nope\n"), Options{}, "tar-split record 1"},
		{"unknown record type", tarSplitJSON(`{"type":3}`), Options{}, "has type 3"},
		{"file record first", tarSplitJSON(file("d/", 0)), Options{}, "follows no header"},
		{"file record of another name", tarSplitJSON(segment(dir), file("e/", 0)), Options{}, `does not match its header "d/"`},
		{"file record of another size", tarSplitJSON(segment(reg), file("d/f", 4)), Options{}, "(4 bytes) does not match"},
		{"two segments in a row", tarSplitJSON(segment(dir), segment(dir)), Options{}, "where the file record"},
		{"no padding before the next header", tarSplitJSON(segment(reg), file("d/f", 3), segment(dir[:100])), Options{}, "shorter than the 509 bytes of padding"},
		{"two headers in one segment", tarSplitJSON(segment(append(append([]byte(nil), dir...), dir...)), file("d/", 0)), Options{}, "bytes after its header"},
		{"broken header", tarSplitJSON(segment(bytes.Repeat([]byte{'x'}, 512))), Options{}, "tar-split header 1"},
		{"ends before its file record", tarSplitJSON(segment(dir)), Options{}, "ends before the file record"},
		{"record too long", tarSplitJSON(`{"type":2,"payload":"` + strings.Repeat("A", 8<<20) + `"}`), Options{}, "record longer than"},
		{"too many records", tarSplitJSON(strings.Repeat(segment(nil)+"\n", 2000)), Options{MaxEntries: 100}, "more than 1424 records"},
		{"entry index refuses", tarSplitJSON(segment(headerOf(t, tar.Header{Typeflag: 'Z', Name: "z", Mode: 0o644}))), Options{}, "unknown type flag"},
		{"name too long", tarSplitJSON(segment(long), file("longer/", 0)), Options{MaxNameLen: 3}, "MaxNameLen"},
		{"entries after the end are padding", tarSplitJSON(segment(dir), file("d/", 0), segment(end), segment(dir)), Options{}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeJSON(t, tc.js, tc.opts)
			if tc.want == "" {
				if err != nil || len(got) != 1 {
					t.Fatalf("DecodeTarSplit = %v, %v; want one entry", got, err)
				}
				return
			}
			if err == nil || !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "invalid input: ") {
				t.Fatalf("DecodeTarSplit = %v, %v; want an invalid input error containing %q", got, err, tc.want)
			}
		})
	}
	if _, err := DecodeTarSplit(Location{}, []byte("x"), "", Options{}); err == nil {
		t.Errorf("DecodeTarSplit without a digest: no error")
	}
}

// FuzzTarSplit feeds DecodeTarSplit tar-split JSON (compressed and digested
// by the target, so the parser is what is fuzzed), seeded with the
// tar-splits of the fuzz layers' tars. Whatever it accepts follows the
// entry rules and the caps; for the seeds it matches index.Build.
func FuzzTarSplit(f *testing.F) {
	tars := [][]byte{makeTar(f, fuzzFiles()), makeTar(f, latin1Files()[len(fixtureFiles(true)):])}
	for _, tb := range tars {
		f.Add(tarSplitJSONOf(f, tb))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		// The fast path for segment records reads what encoding/json
		// reads, or leaves the line to it.
		for _, line := range bytes.Split(js, []byte("\n")) {
			fast, ok := segmentRecord(line, nil)
			if !ok {
				continue
			}
			var rec tarSplitRecord
			if err := json.Unmarshal(line, &rec); err != nil || rec.Type != tarSplitSegment || !bytes.Equal(rec.Payload, fast) {
				t.Fatalf("segment record %q: fast path %x, encoding/json %+v, %v", line, fast, rec, err)
			}
		}
		got, err := decodeJSON(t, js, fuzzOpts)
		if err != nil {
			if !errors.Is(err, index.ErrFormat) {
				t.Fatalf("DecodeTarSplit: %v is not invalid input", err)
			}
			return
		}
		o := fuzzOpts.withDefaults()
		if len(got) > o.MaxEntries {
			t.Fatalf("%d entries passed the cap of %d", len(got), o.MaxEntries)
		}
		for _, e := range got {
			if len(e.Name) > o.MaxNameLen || e.Offset != 0 || strings.HasPrefix(e.Name, "/") || strings.Contains("/"+e.Name+"/", "/../") {
				t.Fatalf("entry %+v breaks the entry rules or the caps", e)
			}
		}
	})
}

// fuzzFiles are the entries of the fuzz layers.
func fuzzFiles() []testFile {
	var files []testFile
	for _, f := range fixtureFiles(false) {
		switch f.hdr.Name {
		case "./", "etc/", "etc/hostname", "bin", "bin/suid", "bin/sh", "bin/hard", "dev/null", "xattr/file", "old/.wh.gone":
			files = append(files, f)
		}
	}
	return files
}

// tarSplitJSONOf returns the uncompressed tar-split JSON of tarBlob.
func tarSplitJSONOf(tb testing.TB, tarBlob []byte) []byte {
	tb.Helper()
	raw, _, _ := tarSplitOf(tb, tarBlob)
	dec, err := zstd.NewReader(nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer dec.Close()
	js, err := dec.DecodeAll(raw, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return js
}

// TestDecodeTarSplitLikeIndex: the entries the tar-split of each seed tar
// gives are the ones index.Build reads from the tar itself, names byte for
// byte (offsets aside): the differential check behind the fuzz target.
func TestDecodeTarSplitLikeIndex(t *testing.T) {
	// git archive starts its tars with a PAX global header: no entry.
	global := append([]testFile{{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": "0123456789abcdef"}}}}, fuzzFiles()...)
	for _, files := range [][]testFile{fuzzFiles(), fixtureFiles(true), latin1Files(), global} {
		tb := makeTar(t, files)
		got, err := decodeJSON(t, tarSplitJSONOf(t, tb), Options{})
		if err != nil {
			t.Fatalf("DecodeTarSplit: %v", err)
		}
		ref, err := index.Build(bytes.NewReader(tb), index.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(ref.Entries) {
			t.Fatalf("%d entries, index.Build %d", len(got), len(ref.Entries))
		}
		for i, e := range ref.Entries {
			e.Offset = 0
			if fmt.Sprint(got[i]) != fmt.Sprint(e) {
				t.Errorf("entry %d: tar-split %+v, index.Build %+v", i, got[i], e)
			}
		}
	}
}

// BenchmarkLoadTOC measures what a mount spends at load on a zstd:chunked
// layer of 10,000 small files: the TOC alone, and the TOC with its
// tar-split applied.
func BenchmarkLoadTOC(b *testing.B) {
	var files []testFile
	for i := range 10000 {
		data := []byte(fmt.Sprintf("print(%d)\n", i))
		files = append(files, testFile{hdr: tar.Header{Name: fmt.Sprintf("usr/lib/pkg%03d/file%05d.py", i/100, i), Typeflag: tar.TypeReg,
			Mode: 0o644, Size: int64(len(data)), ModTime: baseTime, Format: tar.FormatPAX}, data: data})
	}
	tl := buildZstdChunked(b, makeTar(b, files), 1<<20)
	loc, err := Locate(tl.desc, nil, Options{})
	if err != nil {
		b.Fatal(err)
	}
	raw, split := tl.blob[loc.Offset:loc.Offset+loc.Size], tl.blob[loc.TarSplitOffset:loc.TarSplitOffset+loc.TarSplitSize]
	b.Logf("TOC %d bytes (%d JSON), tar-split %d bytes (%d JSON)", loc.Size, loc.JSONSize, loc.TarSplitSize, loc.TarSplitJSONSize)
	for _, withSplit := range []bool{false, true} {
		b.Run(fmt.Sprintf("tar-split=%v", withSplit), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l, err := Decode(loc, raw, Options{})
				if err == nil && withSplit {
					_, err = ApplyTarSplit(l, loc, split, Options{})
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
