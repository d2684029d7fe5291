package index

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// This file generates the tar fixtures the tests, fuzz seeds and benchmarks
// use. Everything is written with archive/tar except the headers it refuses
// to write (sparse files, hand-made PAX records), which rawHeader builds.

// tarFile is one entry to write: a header and, for regular files, content.
type tarFile struct {
	hdr     tar.Header
	content string
}

// writeTar writes files as a tar archive and returns its bytes, end-of-archive
// marker included. Size is filled in from content for regular files.
func writeTar(tb testing.TB, files []tarFile) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := f.hdr
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeCont {
			hdr.Size = int64(len(f.content))
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			tb.Fatalf("writing tar header %q: %v", hdr.Name, err)
		}
		if _, err := tw.Write([]byte(f.content)); err != nil {
			tb.Fatalf("writing tar content of %q: %v", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatalf("closing tar writer: %v", err)
	}
	return buf.Bytes()
}

// fixtureTime is the mtime of most fixture entries.
var fixtureTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func reg(name, content string) tarFile {
	return tarFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: fixtureTime}, content: content}
}

func dir(name string, mode int64) tarFile {
	return tarFile{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: fixtureTime}}
}

func withFormat(f tarFile, format tar.Format) tarFile {
	f.hdr.Format = format
	return f
}

// fixtureEntry is one file of the main fixture and the entry Build must make
// of it (Offset left zero: offsets are checked against the content).
type fixtureEntry struct {
	file tarFile
	want *Entry // nil: skipped
}

// longName returns a path of n bytes, deep enough to need more than the
// USTAR prefix and name fields when n is large.
func longName(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "d%02d/", i%100)
	}
	return b.String()[:n-1] + "f"
}

// fixture returns the main test archive's files: every entry type, the three
// header formats, long names, xattrs, large ids, sub-second times, whiteouts,
// and the names that need cleaning.
func fixture() []fixtureEntry {
	long150, long300, long1000 := longName(150), longName(300), longName(1000)
	subSecond := time.Date(2023, 1, 2, 3, 4, 5, 123456789, time.UTC)
	e := func(name string, typ Type, mode uint32) *Entry {
		return &Entry{Name: name, Type: typ, Mode: mode, ModTime: fixtureTime}
	}
	regEntry := func(name, content string) *Entry {
		x := e(name, TypeReg, 0o644)
		x.Size = int64(len(content))
		return x
	}
	with := func(x *Entry, f func(*Entry)) *Entry { f(x); return x }

	return []fixtureEntry{
		{dir("./", 0o755), e("", TypeDir, 0o755)},
		{withFormat(dir("./etc/", 0o755), tar.FormatUSTAR), e("etc", TypeDir, 0o755)},
		{withFormat(reg("etc/passwd", "root:x:0:0::/root:/bin/sh\n"), tar.FormatUSTAR), regEntry("etc/passwd", "root:x:0:0::/root:/bin/sh\n")},
		{reg("/abs/file", "absolute"), regEntry("abs/file", "absolute")},
		{reg("a/../../escaped", "up"), regEntry("escaped", "up")},
		{reg("./dot//slashes/./x", "x"), regEntry("dot/slashes/x", "x")},
		{reg("empty", ""), regEntry("empty", "")},
		{reg("blocksize", strings.Repeat("b", 512)), regEntry("blocksize", strings.Repeat("b", 512))},
		{withFormat(reg(long150, "long150"), tar.FormatPAX), regEntry(long150, "long150")},
		{withFormat(reg(long300, "long300"), tar.FormatPAX), regEntry(long300, "long300")},
		{withFormat(reg(longName(200)+"gnu", "gnu long"), tar.FormatGNU), regEntry(longName(200)+"gnu", "gnu long")},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "gnu-long-link", Linkname: "/" + long1000, ModTime: fixtureTime, Mode: 0o777, Format: tar.FormatGNU}},
			with(e("gnu-long-link", TypeSymlink, 0o777), func(x *Entry) { x.Linkname = "/" + long1000 }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "gnu-long-hardlink", Linkname: "./" + long300 + "/", ModTime: fixtureTime, Format: tar.FormatGNU}},
			with(e("gnu-long-hardlink", TypeHardlink, 0), func(x *Entry) { x.Linkname = long300 }),
		},
		{
			tarFile{
				hdr: tar.Header{Typeflag: tar.TypeReg, Name: "xattrs", Mode: 0o600, ModTime: fixtureTime, PAXRecords: map[string]string{
					"SCHILY.xattr.user.comment":        "hello\x00world",
					"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\xff",
					"LIBARCHIVE.xattr.user.a%3Db":      base64.RawStdEncoding.EncodeToString([]byte("eq")),
					"LIBARCHIVE.xattr.user.padded":     base64.StdEncoding.EncodeToString([]byte("x")),
					"LIBARCHIVE.xattr.user.comment":    base64.StdEncoding.EncodeToString([]byte("loses to SCHILY")),
					"SOMETHING.else":                   "ignored",
				}},
				content: "xattr file",
			},
			with(regEntry("xattrs", "xattr file"), func(x *Entry) {
				x.Mode = 0o600
				x.Xattrs = map[string]string{
					"user.comment":        "hello\x00world",
					"security.capability": "\x01\x00\x00\x02\xff",
					"user.a=b":            "eq",
					"user.padded":         "x",
				}
			}),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "high-ids", Mode: 0o640, Uid: 3_000_000, Gid: 4_294_967_295, ModTime: fixtureTime, Format: tar.FormatPAX}},
			with(regEntry("high-ids", ""), func(x *Entry) { x.Mode, x.UID, x.GID = 0o640, 3_000_000, 4_294_967_295 }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "subsecond", Mode: 0o644, ModTime: subSecond, Format: tar.FormatPAX}, content: "ns"},
			with(regEntry("subsecond", "ns"), func(x *Entry) { x.ModTime = subSecond }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "local-zone", Mode: 0o644, ModTime: fixtureTime.In(time.FixedZone("X", 3600))}},
			regEntry("local-zone", ""),
		},
		{reg("données/日本語.txt", "utf-8"), regEntry("données/日本語.txt", "utf-8")},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/su", Mode: 0o4755, Uid: 0, ModTime: fixtureTime}, content: "setuid"},
			with(regEntry("usr/bin/su", "setuid"), func(x *Entry) { x.Mode = 0o4755 }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "type-bits", Mode: 0o100644 | 0o2000, ModTime: fixtureTime}},
			with(regEntry("type-bits", ""), func(x *Entry) { x.Mode = 0o2644 }),
		},
		{dir("tmp/", 0o1777), e("tmp", TypeDir, 0o1777)},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "/usr/bin/../bin/dash", Mode: 0o777, ModTime: fixtureTime}},
			with(e("bin/sh", TypeSymlink, 0o777), func(x *Entry) { x.Linkname = "/usr/bin/../bin/dash" }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/hard", Linkname: "./etc/passwd", ModTime: fixtureTime, Mode: 0o644}},
			with(e("etc/hard", TypeHardlink, 0o644), func(x *Entry) { x.Linkname = "etc/passwd" }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: fixtureTime}},
			with(e("dev/null", TypeChar, 0o666), func(x *Entry) { x.Devmajor, x.Devminor = 1, 3 }),
		},
		{
			tarFile{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Devmajor: 8, Devminor: 1048575, Mode: 0o660, ModTime: fixtureTime}},
			with(e("dev/sda", TypeBlock, 0o660), func(x *Entry) { x.Devmajor, x.Devminor = 8, 1048575 }),
		},
		{tarFile{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: fixtureTime}}, e("run/fifo", TypeFifo, 0o600)},
		{reg(".wh..wh..opq", ""), e("", TypeOpaque, 0o644)},
		{reg("etc/.wh..wh..opq", ""), e("etc", TypeOpaque, 0o644)},
		{reg("etc/.wh.shadow", ""), e("etc/shadow", TypeWhiteout, 0o644)},
		{dir("./.wh.gone/", 0o755), e("gone", TypeWhiteout, 0o755)},
		{reg(".wh..wh.aufs", "aufs"), nil},
		{dir(".wh..wh.plnk/", 0o700), nil},
		{reg(".wh..wh.plnk/1234.5678", "aufs link"), nil},
		{tarFile{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "global", PAXRecords: map[string]string{"comment": "x"}}}, nil},
		{reg("etc/passwd", "second copy wins\n"), regEntry("etc/passwd", "second copy wins\n")},
		{tarFile{hdr: tar.Header{Typeflag: tar.TypeCont, Name: "contiguous", Mode: 0o644, ModTime: fixtureTime}, content: "cont"}, regEntry("contiguous", "cont")},
	}
}

// fixtureTar writes the main fixture and returns its bytes, the entries
// Build must make, in order, and the content written for each of them.
func fixtureTar(tb testing.TB) (raw []byte, want []Entry, contents []string) {
	tb.Helper()
	var files []tarFile
	for _, fe := range fixture() {
		files = append(files, fe.file)
		if fe.want != nil {
			want = append(want, *fe.want)
			contents = append(contents, fe.file.content)
		}
	}
	return writeTar(tb, files), want, contents
}

// rawHeader builds one 512-byte USTAR (or, with gnu, old GNU) header block
// by hand, for headers archive/tar will not write. edit may change the block
// before the checksum is computed.
func rawHeader(name string, typeflag byte, size int64, gnu bool, edit func(blk []byte)) []byte {
	blk := make([]byte, 512)
	copy(blk[0:100], name)
	copy(blk[100:108], "0000644\x00")
	copy(blk[108:116], "0000000\x00")
	copy(blk[116:124], "0000000\x00")
	copy(blk[124:136], fmt.Sprintf("%011o\x00", size))
	copy(blk[136:148], fmt.Sprintf("%011o\x00", fixtureTime.Unix()))
	blk[156] = typeflag
	if gnu {
		copy(blk[257:265], "ustar  \x00")
	} else {
		copy(blk[257:265], "ustar\x0000")
	}
	if edit != nil {
		edit(blk)
	}
	copy(blk[148:156], "        ")
	sum := 0
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return blk
}

// padBlock pads data with zeros to a multiple of 512 bytes.
func padBlock(data []byte) []byte {
	if n := len(data) % 512; n != 0 {
		data = append(data, make([]byte, 512-n)...)
	}
	return data
}

// paxRecords encodes PAX extended header records ("%d key=value\n", the
// length counting itself), in the order given.
func paxRecords(kv ...string) []byte {
	var out []byte
	for i := 0; i+1 < len(kv); i += 2 {
		rec := " " + kv[i] + "=" + kv[i+1] + "\n"
		n := len(rec) + 1
		for n != len(strconv.Itoa(n))+len(rec) {
			n++
		}
		out = append(out, fmt.Sprintf("%d%s", n, rec)...)
	}
	return out
}

// rawTar concatenates header blocks and padded data and appends the
// end-of-archive marker.
func rawTar(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, padBlock(append([]byte(nil), p...))...)
	}
	return append(out, make([]byte, 1024)...)
}

// sparseGNUTar is an old-GNU sparse file ('S') of 5 bytes holding one
// 5-byte data fragment.
func sparseGNUTar() []byte {
	hdr := rawHeader("holes.bin", tar.TypeGNUSparse, 5, true, func(blk []byte) {
		copy(blk[386:398], fmt.Sprintf("%011o\x00", 0)) // fragment offset
		copy(blk[398:410], fmt.Sprintf("%011o\x00", 5)) // fragment length
		copy(blk[483:495], fmt.Sprintf("%011o\x00", 5)) // real size
	})
	return rawTar(hdr, []byte("12345"))
}

// sparsePAXTar is a PAX (GNU 0.1 format) sparse file called pax-holes.bin.
func sparsePAXTar() []byte {
	recs := paxRecords(
		"GNU.sparse.numblocks", "1",
		"GNU.sparse.map", "0,5",
		"GNU.sparse.size", "5",
		"GNU.sparse.name", "pax-holes.bin",
	)
	return rawTar(
		rawHeader("PaxHeaders/pax-holes.bin", tar.TypeXHeader, int64(len(recs)), false, nil), recs,
		rawHeader("GNUSparseFile.0/pax-holes.bin", tar.TypeReg, 5, false, nil), []byte("12345"),
	)
}

// manySmallFiles returns a tar of about size bytes of small files in nested
// directories, for benchmarks and fuzz seeds.
func manySmallFiles(tb testing.TB, size int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := bytes.Repeat([]byte("0123456789abcdef"), 8192/16)
	for i := 0; buf.Len() < size; i++ {
		if i%50 == 0 {
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("usr/lib/pkg%04d/", i/50), Mode: 0o755, ModTime: fixtureTime}
			if err := tw.WriteHeader(hdr); err != nil {
				tb.Fatal(err)
			}
		}
		n := (i * 7919) % len(content)
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("usr/lib/pkg%04d/file%06d.py", i/50, i), Mode: 0o644, Size: int64(n), ModTime: fixtureTime}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(content[:n]); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}
