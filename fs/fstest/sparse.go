package fstest

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"path"
	"sort"
	"strconv"
	"time"
)

// SparseMap makes a regular [File] a GNU sparse file, written the way
// `tar --sparse --format=posix --sparse-version=V` writes one (GNU tar
// 1.34; archive/tar reads these formats but cannot write them):
//
//   - "0.0": PAX records GNU.sparse.size, GNU.sparse.numblocks and a
//     GNU.sparse.offset, GNU.sparse.numbytes pair per segment; the
//     header's name is the file's;
//   - "0.1": GNU.sparse.size, GNU.sparse.numblocks, GNU.sparse.name and
//     GNU.sparse.map ("off,len,..."); the header's name is
//     DIR/GNUSparseFile.0/BASE;
//   - "1.0": GNU.sparse.major=1, GNU.sparse.minor=0, GNU.sparse.name and
//     GNU.sparse.realsize, and the map at the start of the data, as decimal
//     lines padded to a block; the header is named as for 0.1.
//
// As GNU tar does, every map ends with a segment of length 0 at Size. The
// File's Data holds the bytes of the segments, packed in order; the file
// reads as Size bytes with zeros in the holes.
type SparseMap struct {
	Version  string // "0.0", "0.1" or "1.0"
	Size     int64  // logical size, holes included
	Segments []SparseSegment
}

// SparseSegment is one run of data of a sparse file: logical bytes
// [Off, Off+Len).
type SparseSegment struct{ Off, Len int64 }

// dataSize returns the bytes of all the segments.
func (m *SparseMap) dataSize() int64 {
	var n int64
	for _, s := range m.Segments {
		n += s.Len
	}
	return n
}

// Expand returns the logical content of a sparse file whose packed data is
// data: what an unpacker writes.
func (m *SparseMap) Expand(data []byte) []byte {
	out := make([]byte, m.Size)
	pos := 0
	for _, s := range m.Segments {
		pos += copy(out[s.Off:s.Off+s.Len], data[pos:])
	}
	return out
}

// writeSparse writes f, a regular file with a SparseMap, to w, the tar
// stream below tw (whose current entry has been padded).
func writeSparse(w io.Writer, f *File) error {
	sm := f.Sparse
	if f.Path != "" {
		return errors.New("a sparse file takes its data from Data")
	}
	if int64(len(f.Data)) != sm.dataSize() {
		return fmt.Errorf("sparse file has %d bytes of data for segments of %d", len(f.Data), sm.dataSize())
	}
	var end int64
	for _, s := range sm.Segments {
		if s.Off < end || s.Len <= 0 || s.Off+s.Len > sm.Size {
			return fmt.Errorf("sparse segment %d+%d is out of order or outside the %d-byte file", s.Off, s.Len, sm.Size)
		}
		end = s.Off + s.Len
	}
	segs := append(append([]SparseSegment(nil), sm.Segments...), SparseSegment{Off: sm.Size})

	hdr := f.Header
	dir, base := path.Split(hdr.Name)
	var recs [][2]string // in GNU tar's order
	name := hdr.Name
	data := f.Data
	switch sm.Version {
	case "0.0":
		recs = append(recs, [2]string{"GNU.sparse.size", fmt.Sprint(sm.Size)}, [2]string{"GNU.sparse.numblocks", fmt.Sprint(len(segs))})
		for _, s := range segs {
			recs = append(recs, [2]string{"GNU.sparse.offset", fmt.Sprint(s.Off)}, [2]string{"GNU.sparse.numbytes", fmt.Sprint(s.Len)})
		}
	case "0.1":
		var mp bytes.Buffer
		for i, s := range segs {
			if i > 0 {
				mp.WriteByte(',')
			}
			fmt.Fprintf(&mp, "%d,%d", s.Off, s.Len)
		}
		recs = append(recs, [2]string{"GNU.sparse.size", fmt.Sprint(sm.Size)}, [2]string{"GNU.sparse.numblocks", fmt.Sprint(len(segs))},
			[2]string{"GNU.sparse.name", hdr.Name}, [2]string{"GNU.sparse.map", mp.String()})
		name = path.Join(dir, "GNUSparseFile.0", base)
	case "1.0":
		recs = append(recs, [2]string{"GNU.sparse.major", "1"}, [2]string{"GNU.sparse.minor", "0"},
			[2]string{"GNU.sparse.name", hdr.Name}, [2]string{"GNU.sparse.realsize", fmt.Sprint(sm.Size)})
		name = path.Join(dir, "GNUSparseFile.0", base)
		mp := []byte(fmt.Sprintf("%d\n", len(segs)))
		for _, s := range segs {
			mp = fmt.Appendf(mp, "%d\n%d\n", s.Off, s.Len)
		}
		data = append(pad(mp), f.Data...)
	default:
		return fmt.Errorf("unknown GNU sparse format %q", sm.Version)
	}
	if len(name) > 100 {
		return fmt.Errorf("sparse file name %q is longer than a header holds", name)
	}
	if ns := hdr.ModTime.Nanosecond(); ns != 0 {
		recs = append(recs, [2]string{"mtime", fmt.Sprintf("%d.%09d", hdr.ModTime.Unix(), ns)})
	}
	keys := make([]string, 0, len(hdr.PAXRecords))
	for k := range hdr.PAXRecords {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		recs = append(recs, [2]string{k, hdr.PAXRecords[k]})
	}
	var pax []byte
	for _, r := range recs {
		pax = append(pax, paxRecord(r[0], r[1])...)
	}
	xhdr := ustarHeader(path.Join(dir, "PaxHeaders", base), tar.TypeXHeader, int64(len(pax)), hdr)
	out := append(append(xhdr, pad(pax)...), ustarHeader(name, tar.TypeReg, int64(len(data)), hdr)...)
	out = append(out, pad(data)...)
	_, err := w.Write(out)
	return err
}

// paxRecord encodes one PAX record: "%d key=value\n", the length counting
// itself.
func paxRecord(k, v string) string {
	rec := " " + k + "=" + v + "\n"
	n := len(rec) + 1
	for n != len(strconv.Itoa(n))+len(rec) {
		n++
	}
	return strconv.Itoa(n) + rec
}

// pad pads b with zeros to a whole number of blocks.
func pad(b []byte) []byte {
	if n := len(b) % 512; n != 0 {
		b = append(b, make([]byte, 512-n)...)
	}
	return b
}

// ustarHeader returns a POSIX ustar header block for name, with the mode,
// owner and mtime (whole seconds) of hdr.
func ustarHeader(name string, typeflag byte, size int64, hdr tar.Header) []byte {
	blk := make([]byte, 512)
	octal := func(b []byte, v int64) { copy(b, fmt.Sprintf("%0*o\x00", len(b)-1, v)) }
	copy(blk[0:100], name)
	octal(blk[100:108], hdr.Mode&07777)
	octal(blk[108:116], int64(hdr.Uid))
	octal(blk[116:124], int64(hdr.Gid))
	octal(blk[124:136], size)
	octal(blk[136:148], hdr.ModTime.Unix())
	blk[156] = typeflag
	copy(blk[257:265], "ustar\x0000")
	copy(blk[265:297], hdr.Uname)
	copy(blk[297:329], hdr.Gname)
	octal(blk[329:337], 0)
	octal(blk[337:345], 0)
	copy(blk[148:156], "        ")
	sum := 0
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return blk
}

// SparseTime is the mtime of the sparse image's entries.
var SparseTime = time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)

// SparseBigSegments are the data segments of "sparse/big.bin" (format 1.0,
// logical size SparseBigSize): seeded random bytes, 13 MiB in all, so its
// layer spans several spans and is streamed, not fetched whole.
var SparseBigSegments = []SparseSegment{{Off: 1 << 20, Len: 5 << 20}, {Off: 16 << 20, Len: 5 << 20}, {Off: 40 << 20, Len: 3<<20 + 1234}}

// SparseBigSize is the logical size of "sparse/big.bin".
const SparseBigSize = 48 << 20

// SparseTrailerSize is the size of "sparse/trailer.bin", random bytes at
// the end of the large layer: a stream held back half way through it has
// passed every sparse file of the layer, with room for what the indexer
// buffers.
const SparseTrailerSize = 2 << 20

// SparseLayers is an image of GNU sparse files in gzip: a small layer with
// the same five files in each PAX format (sparse/V/NAME for V 0.0, 0.1 and
// 1.0) as GNU tar lays them out for files made with truncate and dd:
//
//	holes-both.bin  1 MiB, one 4 KiB block of data at 299008: starts and ends with a hole
//	data-end.bin    64 KiB of hole, then 4 bytes of data at the end
//	all-hole.bin    100 KiB, no data at all
//	data-start.bin  8 KiB of data, then a hole to 100000 bytes
//	multi.bin       2 MiB, 4 KiB of data at 0, 40960 and 1048576, with an xattr
//
// plus a plain file and a hardlink to sparse/1.0/multi.bin; and a large
// layer with "sparse/big.bin" ([SparseBigSegments]), a small 0.1 sparse
// file after it and a plain file of SparseTrailerSize random bytes.
func SparseLayers() []Layer {
	rng := rand.New(rand.NewSource(12))
	block := func(text string, at int) []byte {
		b := make([]byte, 4096)
		copy(b[at:], text)
		return b
	}
	var small []File
	add := func(name string, m *SparseMap, data []byte, recs map[string]string) {
		small = append(small, File{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: SparseTime, PAXRecords: recs},
			Data: data, Sparse: m})
	}
	dir := func(name string) File {
		return File{Header: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: SparseTime}}
	}
	small = append(small, dir("sparse"))
	for _, v := range []string{"0.0", "0.1", "1.0"} {
		small = append(small, dir("sparse/"+v))
		p := "sparse/" + v + "/"
		add(p+"holes-both.bin", &SparseMap{Version: v, Size: 1 << 20, Segments: []SparseSegment{{299008, 4096}}}, block("hello, sparse world", 300000-299008), nil)
		add(p+"data-end.bin", &SparseMap{Version: v, Size: 65540, Segments: []SparseSegment{{65536, 4}}}, []byte("tail"), nil)
		add(p+"all-hole.bin", &SparseMap{Version: v, Size: 100 << 10}, nil, nil)
		add(p+"data-start.bin", &SparseMap{Version: v, Size: 100000, Segments: []SparseSegment{{0, 8192}}}, bytes.Repeat([]byte("A"), 8192), nil)
		multi := append(append(block("segment at 0", 0), block("segment at 40960", 0)...), block("segment at 1048576", 0)...)
		add(p+"multi.bin", &SparseMap{Version: v, Size: 2 << 20, Segments: []SparseSegment{{0, 4096}, {40960, 4096}, {1 << 20, 4096}}}, multi,
			map[string]string{"SCHILY.xattr.user.sparse": "format " + v})
	}
	small = append(small,
		File{Header: tar.Header{Typeflag: tar.TypeReg, Name: "sparse/plain.txt", Mode: 0o644, ModTime: SparseTime}, Data: []byte("not sparse\n")},
		File{Header: tar.Header{Typeflag: tar.TypeLink, Name: "sparse/link-to-multi", Linkname: "sparse/1.0/multi.bin", ModTime: SparseTime}})

	big := make([]byte, 0, 14<<20)
	for _, s := range SparseBigSegments {
		b := make([]byte, s.Len)
		rng.Read(b)
		big = append(big, b...)
	}
	trailer := make([]byte, SparseTrailerSize)
	rng.Read(trailer)
	large := []File{
		dir("sparse"),
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "sparse/big.bin", Mode: 0o600, ModTime: SparseTime},
			Data: big, Sparse: &SparseMap{Version: "1.0", Size: SparseBigSize, Segments: SparseBigSegments}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "sparse/after-big.bin", Mode: 0o644, ModTime: SparseTime},
			Data: []byte("after"), Sparse: &SparseMap{Version: "0.1", Size: 3 << 20, Segments: []SparseSegment{{3<<20 - 5, 5}}}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "sparse/trailer.bin", Mode: 0o644, ModTime: SparseTime}, Data: trailer},
	}
	return []Layer{{Files: small, Compression: Gzip}, {Files: large, Compression: Gzip}}
}
