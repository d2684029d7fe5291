package index

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
)

// checkOffsets fails unless every regular file's Offset and Size locate, in
// raw, exactly the content archive/tar reads for it.
func checkOffsets(t *testing.T, raw []byte, tab *Table) {
	t.Helper()
	var contents [][]byte
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reference tar pass: %v", err)
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeCont {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("reference tar pass: reading %q: %v", hdr.Name, err)
			}
			contents = append(contents, b)
		}
	}
	i := 0
	for _, e := range tab.Entries {
		if e.Type != TypeReg {
			continue
		}
		if e.Offset < 0 || e.Offset+e.Size > int64(len(raw)) {
			t.Fatalf("entry %q: content %d+%d outside the %d-byte tar", e.Name, e.Offset, e.Size, len(raw))
		}
		got := raw[e.Offset : e.Offset+e.Size]
		// Whiteouts and skipped entries took some of the reference
		// files; find the next one with this content.
		for i < len(contents) && !bytes.Equal(contents[i], got) {
			i++
		}
		if i == len(contents) {
			t.Fatalf("entry %q: raw[%d:%d] = %.40q, not the content of any later file", e.Name, e.Offset, e.Offset+e.Size, got)
		}
		i++
	}
}

func TestBuildFixture(t *testing.T) {
	raw, want, contents := fixtureTar(t)
	tab, err := Build(bytes.NewReader(raw), Options{})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	checkOffsets(t, raw, tab)
	if len(tab.Entries) == len(want) {
		for i, e := range tab.Entries {
			if e.Type != TypeReg {
				continue
			}
			if got := string(raw[e.Offset : e.Offset+e.Size]); got != contents[i] {
				t.Errorf("entry %q: raw[%d:%d] = %q, want %q", e.Name, e.Offset, e.Offset+e.Size, got, contents[i])
			}
		}
	}
	for i, e := range tab.Entries {
		if err := checkEntry(&e, tab.TarSize); err != nil {
			t.Errorf("entry %d %q breaks an invariant: %v", i, e.Name, err)
		}
	}
	got := make([]Entry, len(tab.Entries))
	for i, e := range tab.Entries {
		e.Offset = 0
		got[i] = e
	}
	if len(got) != len(want) {
		for _, e := range got {
			t.Logf("got %s %q", e.Type, e.Name)
		}
		t.Fatalf("Build made %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if tab.TarSize != int64(len(raw)) {
		t.Errorf("TarSize = %d, want %d", tab.TarSize, len(raw))
	}
	if want := digest.FromBytes(raw); tab.DiffID != want {
		t.Errorf("DiffID = %s, want %s", tab.DiffID, want)
	}
	if tab.Digest != "" || tab.Size != 0 {
		t.Errorf("Digest, Size = %q, %d; want them left for the caller", tab.Digest, tab.Size)
	}
}

func TestBuildFormats(t *testing.T) {
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			var files []tarFile
			for i, size := range []int{0, 1, 511, 512, 513, 1024, 5000} {
				files = append(files, withFormat(reg(fmt.Sprintf("f%d", i), strings.Repeat(string(rune('a'+i)), size)), format))
				files = append(files, withFormat(dir(fmt.Sprintf("d%d/", i), 0o755), format))
			}
			raw := writeTar(t, files)
			tab, err := Build(bytes.NewReader(raw), Options{})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if len(tab.Entries) != len(files) {
				t.Fatalf("Build made %d entries, want %d", len(tab.Entries), len(files))
			}
			checkOffsets(t, raw, tab)
		})
	}
}

func TestBuildTrailingBytes(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	// tar(1) pads archives to a 10240-byte record.
	padded := append(append([]byte(nil), raw...), make([]byte, 10240-len(raw)%10240)...)
	tab, err := Build(bytes.NewReader(padded), Options{})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if tab.TarSize != int64(len(padded)) {
		t.Errorf("TarSize = %d, want %d", tab.TarSize, len(padded))
	}
	if sum := sha256.Sum256(padded); tab.DiffID != digest.NewDigestFromBytes(digest.SHA256, sum[:]) {
		t.Errorf("DiffID = %s, want the sha256 of all %d bytes", tab.DiffID, len(padded))
	}
	// Reading one byte at a time changes nothing.
	slow, err := Build(iotest.OneByteReader(bytes.NewReader(padded)), Options{})
	if err != nil {
		t.Fatalf("Build one byte at a time: %v", err)
	}
	if !reflect.DeepEqual(slow, tab) {
		t.Errorf("Build one byte at a time differs from Build")
	}
}

func TestBuildEmpty(t *testing.T) {
	for name, raw := range map[string][]byte{"no bytes": nil, "end marker only": make([]byte, 1024)} {
		t.Run(name, func(t *testing.T) {
			tab, err := Build(bytes.NewReader(raw), Options{})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if len(tab.Entries) != 0 || tab.TarSize != int64(len(raw)) || tab.DiffID != digest.FromBytes(raw) {
				t.Errorf("Build = %d entries, TarSize %d, DiffID %s; want 0, %d, %s", len(tab.Entries), tab.TarSize, tab.DiffID, len(raw), digest.FromBytes(raw))
			}
		})
	}
}

func TestBuildNames(t *testing.T) {
	tests := []struct {
		name     string
		typeflag byte
		linkname string
		want     string // cleaned name; "" with wantType TypeDir is the root
		wantType Type
		wantLink string
		wantErr  string
	}{
		{name: "./", typeflag: tar.TypeDir, want: "", wantType: TypeDir},
		{name: "/", typeflag: tar.TypeDir, want: "", wantType: TypeDir},
		{name: ".", typeflag: tar.TypeDir, want: "", wantType: TypeDir},
		{name: "./a/b/", typeflag: tar.TypeDir, want: "a/b", wantType: TypeDir},
		{name: "a/../../b", typeflag: tar.TypeReg, want: "b", wantType: TypeReg},
		{name: "../../../etc/passwd", typeflag: tar.TypeReg, want: "etc/passwd", wantType: TypeReg},
		{name: "//a//b", typeflag: tar.TypeReg, want: "a/b", wantType: TypeReg},
		{name: "a/.wh.b", typeflag: tar.TypeReg, want: "a/b", wantType: TypeWhiteout},
		{name: "./.wh..wh..opq", typeflag: tar.TypeReg, want: "", wantType: TypeOpaque},
		{name: "a/b/.wh..wh..opq", typeflag: tar.TypeReg, want: "a/b", wantType: TypeOpaque},
		{name: ".wh.a/b", typeflag: tar.TypeReg, want: ".wh.a/b", wantType: TypeReg},
		{name: "l", typeflag: tar.TypeLink, linkname: "/x/../y/", want: "l", wantType: TypeHardlink, wantLink: "y"},
		{name: "l", typeflag: tar.TypeLink, linkname: "../../y", want: "l", wantType: TypeHardlink, wantLink: "y"},
		{name: "s", typeflag: tar.TypeSymlink, linkname: "../../y/", want: "s", wantType: TypeSymlink, wantLink: "../../y/"},
		{name: "./", typeflag: tar.TypeReg, wantErr: `tar entry "./": a file cannot be the layer root`},
		{name: "..", typeflag: tar.TypeSymlink, linkname: "x", wantErr: `tar entry "..": a symlink cannot be the layer root`},
		{name: "l", typeflag: tar.TypeLink, linkname: "/", wantErr: `tar entry "l": hard link with no target`},
		{name: "l", typeflag: tar.TypeLink, linkname: "", wantErr: `tar entry "l": hard link with no target`},
		{name: "a/.wh.", typeflag: tar.TypeReg, wantErr: `tar entry "a/.wh.": whiteout names no file`},
		{name: "a/.wh..", typeflag: tar.TypeReg, wantErr: `whiteout names no file`},
		{name: "a/.wh...", typeflag: tar.TypeReg, wantErr: `whiteout names no file`},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%c %s %s", tt.typeflag, tt.name, tt.linkname), func(t *testing.T) {
			raw := rawTar(rawHeader(tt.name, tt.typeflag, 0, false, func(blk []byte) { copy(blk[157:257], tt.linkname) }))
			tab, err := Build(bytes.NewReader(raw), Options{})
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Build = %v, want an ErrFormat error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if len(tab.Entries) != 1 {
				t.Fatalf("Build made %d entries, want 1", len(tab.Entries))
			}
			e := tab.Entries[0]
			if e.Name != tt.want || e.Type != tt.wantType || e.Linkname != tt.wantLink {
				t.Errorf("entry = %s %q -> %q, want %s %q -> %q", e.Type, e.Name, e.Linkname, tt.wantType, tt.want, tt.wantLink)
			}
		})
	}
}

func TestBuildRejects(t *testing.T) {
	valid, _, _ := fixtureTar(t)
	one := func(hdr tar.Header) []byte { return writeTar(t, []tarFile{{hdr: hdr}}) }
	tests := []struct {
		name    string
		raw     []byte
		opts    Options
		wantErr string
	}{
		{"gnu sparse", sparseGNUTar(), Options{}, `invalid input: tar entry "holes.bin": old GNU sparse entries (type S) are not supported`},
		{"unknown type flag", rawTar(rawHeader("odd", 'Z', 0, false, nil)), Options{}, `invalid input: tar entry "odd": unknown type flag 'Z'`},
		{"multi-volume", rawTar(rawHeader("part", 'M', 0, true, nil)), Options{}, `tar entry "part": multi-volume archives are not supported`},
		{"garbage", bytes.Repeat([]byte("garbage!"), 200), Options{}, "invalid input: tar stream at offset 512"},
		{"zero block then garbage", append(make([]byte, 512), bytes.Repeat([]byte{1}, 512)...), Options{}, "invalid input: tar stream at offset 1024"},
		{"truncated header", valid[:100], Options{}, "invalid input: tar stream truncated at offset 100, after 0 entries"},
		{"truncated data", valid[:512+10], Options{}, "invalid input: tar stream truncated"},
		{"truncated before data", valid[:1024+512], Options{}, "invalid input: tar stream truncated"},
		{"negative uid", one(tar.Header{Typeflag: tar.TypeReg, Name: "neg", Uid: -5, Format: tar.FormatGNU}), Options{}, `tar entry "neg": uid -5 out of range`},
		{"uid past 32 bits", one(tar.Header{Typeflag: tar.TypeReg, Name: "big", Uid: 1 << 33, Format: tar.FormatPAX}), Options{}, `tar entry "big": uid 8589934592 out of range`},
		{"xattr NUL name", one(tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"LIBARCHIVE.xattr.a%00b": "eA"}}), Options{}, `tar entry "x": xattr name "a\x00b" is empty or contains a NUL byte`},
		{"xattr bad base64", one(tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"LIBARCHIVE.xattr.a": "!!"}}), Options{}, `tar entry "x": xattr record "LIBARCHIVE.xattr.a": bad base64 value`},
		{"xattr bad escape", one(tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"LIBARCHIVE.xattr.a%zz": "eA"}}), Options{}, `bad percent-encoding`},
		{"max entries", valid, Options{MaxEntries: 3}, "layer has more than 3 entries; set Options.MaxEntries"},
		{"max name", one(tar.Header{Typeflag: tar.TypeReg, Name: "abcdefghijk"}), Options{MaxNameLen: 10}, `tar entry "abcdefghijk": name is 11 bytes, more than 10; set Options.MaxNameLen`},
		{"max symlink", one(tar.Header{Typeflag: tar.TypeSymlink, Name: "s", Linkname: "abcdefghijk"}), Options{MaxNameLen: 10}, `link target is 11 bytes, more than 10; set Options.MaxNameLen`},
		{"max hardlink", one(tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "abcdefghijk"}), Options{MaxNameLen: 10}, `link target is 11 bytes, more than 10; set Options.MaxNameLen`},
		{"max xattrs", one(tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"SCHILY.xattr.user.a": "12345"}}), Options{MaxXattrBytes: 10}, `tar entry "x": xattrs take 11 bytes, more than 10; set Options.MaxXattrBytes`},
		{"max tar size", valid, Options{MaxTarSize: 4096}, "invalid input: decompressed size exceeds 4096 bytes; set Options.MaxTarSize"},
		{"max tar size in trailing bytes", append(append([]byte(nil), valid...), make([]byte, 100)...), Options{MaxTarSize: int64(len(valid)) + 99}, "decompressed size exceeds"},
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

func TestBuildCapBoundaries(t *testing.T) {
	raw, want, _ := fixtureTar(t)
	opts := Options{MaxEntries: len(want), MaxTarSize: int64(len(raw)), MaxNameLen: 1001}
	if _, err := Build(bytes.NewReader(raw), opts); err != nil {
		t.Fatalf("Build with caps exactly met: %v", err)
	}
}

func TestBuildSkips(t *testing.T) {
	raw := rawTar(
		rawHeader("label", 'V', 0, true, nil),
		rawHeader("dumpdir/", 'D', 0, true, nil),
		rawHeader("file", tar.TypeReg, 2, false, nil), []byte("hi"),
	)
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tab, err := Build(bytes.NewReader(raw), Options{Logger: logger})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	var got []string
	for _, e := range tab.Entries {
		got = append(got, e.Type.String()+" "+e.Name)
	}
	if want := []string{"dir dumpdir", "file file"}; !reflect.DeepEqual(got, want) {
		t.Errorf("entries = %q, want %q", got, want)
	}
	checkOffsets(t, raw, tab)
	if want := `level=DEBUG msg="skipping tar entry" path=label typeflag=V reason="GNU volume label"`; !strings.Contains(log.String(), want) {
		t.Errorf("log = %q, want a line containing %q", log.String(), want)
	}
}

// errReader returns its data, then err.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestBuildSourceError(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	errNetwork := errors.New("connection reset")
	for _, cut := range []int{0, 100, 512, 2000, len(raw) - 512, len(raw)} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			_, err := Build(&errReader{data: raw[:cut], err: errNetwork}, Options{})
			if !errors.Is(err, errNetwork) {
				t.Fatalf("Build = %v, want the reader's error", err)
			}
			if errors.Is(err, ErrFormat) {
				t.Errorf("Build error %q wraps ErrFormat; the bytes were fine", err)
			}
		})
	}
}

func TestTypeString(t *testing.T) {
	for typ := Type(0); typ <= TypeOpaque+1; typ++ {
		if typ.String() == "" {
			t.Errorf("Type(%d).String() is empty", typ)
		}
	}
}

func TestIsCleanName(t *testing.T) {
	tests := map[string]bool{
		"":        true,
		"a":       true,
		"a/b/c":   true,
		"...":     true,
		".a/..b":  true,
		"a b/ü":   true,
		".":       false,
		"..":      false,
		"/a":      false,
		"a/":      false,
		"a//b":    false,
		"a/./b":   false,
		"a/../b":  false,
		"a/..":    false,
		"./a":     false,
		"a\x00b":  false,
		"/":       false,
		"a/b/../": false,
	}
	for name, want := range tests {
		if got := isCleanName(name); got != want {
			t.Errorf("isCleanName(%q) = %v, want %v", name, got, want)
		}
		if want {
			if cleaned := path.Clean("/" + name)[1:]; cleaned != name {
				t.Errorf("isCleanName(%q) = true but path.Clean gives %q", name, cleaned)
			}
		}
	}
}
