package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// builtFixture returns the table Build makes of the main fixture, with the
// blob digest and size a caller would set.
func builtFixture(tb testing.TB) *Table {
	tb.Helper()
	raw, _, _ := fixtureTar(tb)
	tab, err := Build(bytes.NewReader(raw), Options{})
	if err != nil {
		tb.Fatalf("Build: %v", err)
	}
	tab.Digest = digest.FromString("compressed blob")
	tab.Size = 12345
	return tab
}

// reseal replaces the trailing checksum of an encoded table with the right
// one for the rest of it.
func reseal(b []byte) []byte {
	if len(b) < checksumLen {
		return b
	}
	body := b[:len(b)-checksumLen]
	sum := sha256.Sum256(body)
	return append(append([]byte(nil), body...), sum[:]...)
}

// withSection inserts a tagged section before the checksum of enc.
func withSection(enc []byte, tag uint64, body string) []byte {
	out := append([]byte(nil), enc[:len(enc)-checksumLen]...)
	out = binary.AppendUvarint(out, tag)
	out = appendString(out, body)
	return reseal(append(out, make([]byte, checksumLen)...))
}

func TestEncodeRoundTrip(t *testing.T) {
	tables := map[string]*Table{
		"fixture": builtFixture(t),
		"empty":   {},
		"no digests": {TarSize: 1024, Entries: []Entry{
			{Name: "", Type: TypeDir, ModTime: time.Unix(0, 0).UTC()},
			{Name: "a", Type: TypeReg, Size: 10, Offset: 512, ModTime: time.Unix(-100, 5).UTC()},
			{Name: "b", Type: TypeReg, Size: 0, Offset: 0, ModTime: time.Unix(1<<40, 999_999_999).UTC()},
			{Name: "c", Type: TypeReg, Size: 1024, Offset: 0},
			{Name: "ab", Type: TypeOpaque},
		}},
		"sha512":                        {Digest: digest.SHA512.FromString("x"), DiffID: digest.FromString("y")},
		"sparse (GNU tar, version 3)":   sparseFixture(t),
		"sparse with spans (version 3)": buildLayerT(t, gnuTarSparse(t, "gnutar-1.0.tar"), mtTar, 2<<10),
		"sparse all hole and whole (version 3)": {TarSize: 4096, Entries: []Entry{
			{Name: "h", Type: TypeReg, Size: 1 << 40, Offset: 512, Sparse: &SparseMap{Segments: []Segment{}}},
			{Name: "w", Type: TypeReg, Size: 3, Offset: 1024},
			{Name: "s", Type: TypeReg, Size: 100, Offset: 2048, Sparse: &SparseMap{Segments: []Segment{{0, 1, 0}, {1, 2, 1}, {99, 1, 3}}}},
		}},
	}
	for name, want := range tables {
		t.Run(name, func(t *testing.T) {
			enc, err := want.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary: %v", err)
			}
			got, err := Unmarshal(enc)
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Unmarshal(MarshalBinary(t)) differs:\n got %+v\nwant %+v", got, want)
			}
			again, err := got.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary of the decoded table: %v", err)
			}
			if !bytes.Equal(again, enc) {
				t.Errorf("encoding is not canonical: re-encoding gave different bytes")
			}
		})
	}
}

// sparseFixture returns the table Build makes of GNU tar's 1.0 archive of
// sparse files, with a blob digest and size.
func sparseFixture(tb testing.TB) *Table {
	tb.Helper()
	tab, err := Build(bytes.NewReader(gnuTarSparse(tb, "gnutar-1.0.tar")), Options{})
	if err != nil {
		tb.Fatalf("Build: %v", err)
	}
	tab.Digest = digest.FromString("compressed sparse blob")
	tab.Size = 4321
	return tab
}

// TestEncodeVersions: only a table with a sparse file needs version 3, so
// every other table stays readable by builds that know versions 1 and 2.
func TestEncodeVersions(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	tests := []struct {
		name string
		tab  *Table
		want uint16
	}{
		{"Build, no sparse file", builtFixture(t), 1},
		{"spans, no sparse file", buildLayerT(t, raw, mtTar, 2<<10), 2},
		{"Build, sparse files", sparseFixture(t), 3},
		{"spans, sparse files", buildLayerT(t, gnuTarSparse(t, "gnutar-0.1.tar"), mtTar, 2<<10), 3},
	}
	for _, tt := range tests {
		enc, err := tt.tab.MarshalBinary()
		if err != nil {
			t.Fatalf("%s: MarshalBinary: %v", tt.name, err)
		}
		if v := binary.BigEndian.Uint16(enc[len(indexMagic):]); v != tt.want {
			t.Errorf("%s: encoded as version %d, want %d", tt.name, v, tt.want)
		}
	}
}

func TestEncodeNormalises(t *testing.T) {
	in := &Table{Entries: []Entry{{Name: "a", Type: TypeDir, Xattrs: map[string]string{}, ModTime: time.Date(2020, 1, 1, 0, 0, 0, 7, time.FixedZone("X", 3600))}}}
	enc, err := in.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(enc)
	if err != nil {
		t.Fatal(err)
	}
	e := got.Entries[0]
	if e.Xattrs != nil {
		t.Errorf("empty Xattrs decoded as %#v, want nil", e.Xattrs)
	}
	if !e.ModTime.Equal(in.Entries[0].ModTime) || e.ModTime.Location() != time.UTC {
		t.Errorf("ModTime decoded as %v, want %v in UTC", e.ModTime, in.Entries[0].ModTime)
	}
}

func TestEncodeCompact(t *testing.T) {
	tab := builtFixture(t)
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	names := 0
	for _, e := range tab.Entries {
		names += len(e.Name) + len(e.Linkname)
	}
	// Shared prefixes and deltas should keep the encoding well under the
	// raw name bytes plus a generous 24 bytes per entry.
	if limit := names + 24*len(tab.Entries) + 256; len(enc) > limit {
		t.Errorf("encoding of %d entries is %d bytes, more than %d", len(tab.Entries), len(enc), limit)
	}
}

func TestMarshalRejects(t *testing.T) {
	tests := []struct {
		name    string
		tab     Table
		wantErr string
	}{
		{"bad digest", Table{Digest: "sha256:nothex"}, "digest"},
		{"negative size", Table{Size: -1}, "negative size"},
		{"unclean name", Table{Entries: []Entry{{Name: "../x", Type: TypeReg}}}, `name "../x" is not clean`},
		{"trailing slash", Table{Entries: []Entry{{Name: "x/", Type: TypeDir}}}, "is not clean"},
		{"unknown type", Table{Entries: []Entry{{Name: "x", Type: 42}}}, "unknown type 42"},
		{"empty file name", Table{Entries: []Entry{{Name: "", Type: TypeReg}}}, "a file has an empty name"},
		{"type bits", Table{Entries: []Entry{{Name: "x", Type: TypeReg, Mode: 0o100644}}}, "outside 07777"},
		{"content past end", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeReg, Offset: 90, Size: 11}}}, "outside the 100-byte stream"},
		{"size on a dir", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeDir, Size: 1}}}, "a dir has size 1"},
		{"hardlink unclean", Table{Entries: []Entry{{Name: "x", Type: TypeHardlink, Linkname: "/y"}}}, "hard link target"},
		{"link on a file", Table{Entries: []Entry{{Name: "x", Type: TypeReg, Linkname: "y"}}}, "link target"},
		{"device on a fifo", Table{Entries: []Entry{{Name: "x", Type: TypeFifo, Devmajor: 1}}}, "device numbers"},
		{"uid", Table{Entries: []Entry{{Name: "x", Type: TypeFifo, UID: -1}}}, "out of range"},
		{"xattr name", Table{Entries: []Entry{{Name: "x", Type: TypeFifo, Xattrs: map[string]string{"": "v"}}}}, "xattr name"},
		{"sparse dir", Table{Entries: []Entry{{Name: "x", Type: TypeDir, Sparse: &SparseMap{}}}}, "sparse map"},
		{"sparse segments out of order", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeReg, Size: 50, Sparse: &SparseMap{Segments: []Segment{{10, 5, 0}, {12, 1, 5}}}}}}, "out of order"},
		{"sparse segment empty", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeReg, Size: 50, Sparse: &SparseMap{Segments: []Segment{{10, 0, 0}}}}}}, "is empty"},
		{"sparse segment past the size", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeReg, Size: 50, Sparse: &SparseMap{Segments: []Segment{{45, 6, 0}}}}}}, "outside the 50-byte file"},
		{"sparse data misplaced", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeReg, Size: 50, Sparse: &SparseMap{Segments: []Segment{{0, 5, 0}, {10, 5, 4}}}}}}, "data at 4, want 5"},
		{"sparse data past the stream", Table{TarSize: 100, Entries: []Entry{{Name: "x", Type: TypeReg, Size: 1 << 40, Offset: 90, Sparse: &SparseMap{Segments: []Segment{{0, 11, 0}}}}}}, "content 90+11 lies outside the 100-byte stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.tab.MarshalBinary()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("MarshalBinary = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnmarshalCorrupt(t *testing.T) {
	enc, err := builtFixture(t).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for i := range enc {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			b := append([]byte(nil), enc...)
			b[i] ^= mask
			if tab, err := Unmarshal(b); err == nil || !errors.Is(err, ErrFormat) {
				t.Fatalf("Unmarshal with byte %d ^ %#x = %v, %v; want an ErrFormat error", i, mask, tab != nil, err)
			}
		}
	}
	for n := range len(enc) {
		if _, err := Unmarshal(enc[:n]); !errors.Is(err, ErrFormat) {
			t.Fatalf("Unmarshal of the first %d bytes = %v, want an ErrFormat error", n, err)
		}
	}
	if _, err := Unmarshal(append(append([]byte(nil), enc...), 0)); !errors.Is(err, ErrFormat) {
		t.Fatalf("Unmarshal with a byte appended = %v, want an ErrFormat error", err)
	}
}

// TestUnmarshalCorruptSparse: every flipped byte and every truncation of a
// version 3 encoding is refused, never decoded into another table.
func TestUnmarshalCorruptSparse(t *testing.T) {
	tab := &Table{TarSize: 4096, Digest: digest.FromString("b"), Entries: []Entry{
		{Name: "a", Type: TypeReg, Size: 1 << 33, Offset: 512, Sparse: &SparseMap{Segments: []Segment{{1000, 7, 0}, {1 << 32, 9, 7}}}},
		{Name: "b", Type: TypeReg, Size: 3, Offset: 1536},
		{Name: "c", Type: TypeReg, Size: 9, Offset: 2560, Sparse: &SparseMap{Segments: []Segment{}}},
	}}
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for i := range enc {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			b := bytes.Clone(enc)
			b[i] ^= mask
			if got, err := Unmarshal(b); err == nil || !errors.Is(err, ErrFormat) {
				t.Fatalf("Unmarshal with byte %d ^ %#x = %v, %v; want an ErrFormat error", i, mask, got != nil, err)
			}
			// Past the checksum, to reach the decoder: what decodes is
			// canonical (the version field left alone).
			if i >= len(indexMagic) && i < headerLen {
				continue
			}
			if got, err := Unmarshal(resealV2(b)); err == nil && !reflect.DeepEqual(got, tab) {
				if again, merr := got.MarshalBinary(); merr != nil || !bytes.Equal(again, resealV2(b)) {
					t.Fatalf("byte %d ^ %#x decodes to another table that does not encode back to its bytes", i, mask)
				}
			}
		}
	}
	for n := range len(enc) {
		if _, err := Unmarshal(enc[:n]); !errors.Is(err, ErrFormat) {
			t.Fatalf("Unmarshal of the first %d bytes = %v, want an ErrFormat error", n, err)
		}
	}
}

func TestUnmarshalRejects(t *testing.T) {
	enc, err := (&Table{TarSize: 10, Entries: []Entry{{Name: "abc", Type: TypeReg, Size: 1}}}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	body := enc[:len(enc)-checksumLen]
	entries := headerLen + 5 // two empty digests, size 0, tar size 10, count 1
	if !bytes.Equal(body[entries-2:entries+1], []byte{10, 1, 0}) {
		t.Fatalf("test is out of date with the layout: % x", body)
	}
	seal := func(parts ...[]byte) []byte {
		return reseal(append(bytes.Join(parts, nil), make([]byte, checksumLen)...))
	}
	version := func(v uint16) []byte {
		b := append([]byte(nil), enc...)
		binary.BigEndian.PutUint16(b[len(indexMagic):], v)
		return reseal(b)
	}
	prefix := body[:entries]
	tests := []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"no magic", []byte("OCIFSIDY\x00\x01"), `invalid input: not an ocifs index (no "OCIFSIDX" magic)`},
		{"short", []byte("OCIF"), "not an ocifs index"},
		{"version 4", version(4), "invalid input: ocifs index format version 4 is not supported (this build reads versions 1 to 3); rebuild the index"},
		{"version 3 without its head length", version(3), "ocifs index head of"},
		{"version 2 without its head length", version(2), "ocifs index head of"},
		{"version 0", version(0), "version 0 is not supported"},
		{"checksum", append(append([]byte(nil), body...), make([]byte, checksumLen)...), "invalid input: ocifs index checksum mismatch"},
		{"huge count", seal(body[:entries-1], []byte{0xff, 0xff, 0xff, 0xff, 0x0f}), "entry count 4294967295 exceeds what 0 bytes can hold"},
		{"overlong varint", seal(body[:entries-1], []byte{0x81, 0x00}, body[entries:]), "not minimally encoded"},
		{"prefix past previous", seal(prefix, []byte{5, 1, 'x'}, body[entries+5:]), "name prefix 5"},
		{"name past end", seal(prefix, []byte{0, 100, 'x'}, body[entries+5:]), "name length 100 exceeds"},
		{"odd section", withSection(enc, 3, "future"), "section 3 (6 bytes) is required but unknown to this version"},
		{"section past end", seal(body, []byte{2, 10, 'x'}), "section length 10 exceeds"},
		{"digest garbage", seal([]byte(indexMagic), []byte{0, 1}, []byte{3, 'a', ':', 'b'}, body[headerLen+1:]), "digest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := Unmarshal(tt.b)
			if err == nil {
				t.Fatalf("Unmarshal = %+v, want an error containing %q", tab, tt.wantErr)
			}
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Unmarshal error = %q, want an ErrFormat error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnmarshalSkipsEvenSections(t *testing.T) {
	want := builtFixture(t)
	enc, err := want.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	b := withSection(withSection(enc, 2, "gzip checkpoints, some day"), 1<<40, "")
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatalf("Unmarshal with unknown even sections: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Unmarshal with sections gave a different table")
	}
}

func TestUnmarshalNameArenaCap(t *testing.T) {
	// Each entry repeats the previous 1000-byte name and adds a byte: a
	// few bytes per entry stand for a long name. The total stays within
	// the cap here, so this must decode; the cap itself is checked by
	// arithmetic, not by allocating a gigabyte in a test.
	var entries []Entry
	name := strings.Repeat("n", 1000)
	for i := range 200 {
		entries = append(entries, Entry{Name: name + fmt.Sprint(i%10), Type: TypeDir, ModTime: time.Unix(0, 0).UTC()})
	}
	tab := &Table{Entries: entries}
	enc, err := tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) > 1000+200*16 {
		t.Errorf("200 names sharing 1000-byte prefixes took %d bytes", len(enc))
	}
	got, err := Unmarshal(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, tab) {
		t.Errorf("round trip differs")
	}
}

// readLog is an io.ReaderAt over b that records each read and refuses
// reads at or past limit.
type readLog struct {
	b     []byte
	limit int64
	reads [][2]int64
}

func (r *readLog) ReadAt(p []byte, off int64) (int, error) {
	r.reads = append(r.reads, [2]int64{off, int64(len(p))})
	if off < 0 || off+int64(len(p)) > r.limit || off+int64(len(p)) > int64(len(r.b)) {
		return 0, fmt.Errorf("read at %d+%d past %d", off, len(p), r.limit)
	}
	return copy(p, r.b[off:]), nil
}

// TestOpenHeadThenWindows: Open reads nothing past HeadLen, and each
// Window reads exactly the bytes WindowLocation names, whose sha256 it
// gives; a flipped byte there is an ErrFormat error, never a window.
func TestOpenHeadThenWindows(t *testing.T) {
	raw := tarOf(t, mixedData(2_000_000, 21))
	blob := gzipSplit(t, raw, []int{1_200_000}, 6, true, 0)
	enc := mustEncode(t, buildLayerT(t, blob, mtGzip, 16<<10))
	head, err := HeadLen(enc)
	if err != nil {
		t.Fatal(err)
	}
	if h2, err := HeadLen(enc[:headerLen+headLenLen]); err != nil || h2 != head {
		t.Fatalf("HeadLen of the first %d bytes = %d, %v; want %d", headerLen+headLenLen, h2, err, head)
	}
	if head <= 0 || head >= int64(len(enc)) {
		t.Fatalf("HeadLen = %d of %d bytes", head, len(enc))
	}
	r := &readLog{b: enc, limit: head}
	tab, err := Open(r, int64(len(enc)))
	if err != nil {
		t.Fatalf("Open reading at most the head: %v", err)
	}
	r.limit = int64(len(enc))
	windows := 0
	for i := range tab.Spans {
		off, n, sum := tab.WindowLocation(i)
		r.reads = nil
		w, err := tab.Window(i)
		if err != nil {
			t.Fatalf("Window(%d): %v", i, err)
		}
		if n == 0 {
			if len(w) != 0 || len(r.reads) != 0 {
				t.Fatalf("span %d: no stored window, yet Window read %v and returned %d bytes", i, r.reads, len(w))
			}
			continue
		}
		windows++
		if len(r.reads) != 1 || r.reads[0] != [2]int64{off, n} {
			t.Fatalf("Window(%d) read %v, want [%d %d]", i, r.reads, off, n)
		}
		if got := digest.FromBytes(enc[off : off+n]); got != sum {
			t.Fatalf("WindowLocation(%d) sum %s, the bytes hash to %s", i, sum, got)
		}
		bad := bytes.Clone(enc)
		bad[off+n/2] ^= 1
		flipped, err := Open(bytes.NewReader(bad), int64(len(bad)))
		if err != nil {
			t.Fatal(err)
		}
		if w, err := flipped.Window(i); !errors.Is(err, ErrFormat) {
			t.Fatalf("Window(%d) with a flipped byte: %d bytes, err %v; want ErrFormat", i, len(w), err)
		}
	}
	if windows < 5 {
		t.Fatalf("fixture: %d stored windows", windows)
	}
	built := buildLayerT(t, blob, mtGzip, 16<<10)
	if _, n, _ := built.WindowLocation(1); n != 0 {
		t.Errorf("WindowLocation of a built table (windows in memory) = %d bytes, want 0", n)
	}
}
