package index

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// GNU tar stores a sparse file in a PAX archive in one of three formats
// (GNU tar's manual, "Storing Sparse Files"), all read by archive/tar,
// which expands the holes on Read but keeps the map to itself:
//
//   - 0.0: PAX records GNU.sparse.size (the logical size),
//     GNU.sparse.numblocks and one GNU.sparse.offset, GNU.sparse.numbytes
//     pair per segment (archive/tar folds the pairs into a GNU.sparse.map
//     record, in order);
//   - 0.1: the same with the pairs in one GNU.sparse.map record,
//     "off,len,off,len,...", and the real name in GNU.sparse.name;
//   - 1.0: GNU.sparse.major=1, GNU.sparse.minor=0, GNU.sparse.realsize and
//     GNU.sparse.name, and the map at the start of the entry's data as
//     decimal lines (the count, then offset and length of each segment),
//     padded to whole 512-byte blocks.
//
// In each the data segments follow, packed back to back: the entry's size
// field counts them (and the 1.0 map), not the holes. ocifs needs the map
// and where the packed data starts in the stream, so it parses the map
// itself: from the PAX records archive/tar hands over (0.x), or from the
// entry's header bytes, which the tarSource records while archive/tar reads
// them (1.0, whose map archive/tar has already consumed). Old-GNU sparse
// entries (type 'S', `tar --format=gnu --sparse`) are refused.

// PAX records of the GNU sparse formats.
const (
	paxGNUSparseMajor     = "GNU.sparse.major"
	paxGNUSparseMinor     = "GNU.sparse.minor"
	paxGNUSparseMap       = "GNU.sparse.map"
	paxGNUSparseNumBlocks = "GNU.sparse.numblocks"
	paxSize               = "size"
)

// DefaultMaxSparseSegments is the cap [Build] applies when
// Options.MaxSparseSegments is zero.
const DefaultMaxSparseSegments = 1_000_000

// blockSize is the tar block size.
const blockSize = 512

// maxHeaderBytes caps the header bytes of one entry that Build keeps to
// find a 1.0 sparse map: more than archive/tar lets the PAX records, the
// GNU long names and the map take together (1 MiB each).
const maxHeaderBytes = 4<<20 + 8*blockSize

// blockAlign rounds n up to a multiple of blockSize.
func blockAlign(n int64) int64 { return (n + blockSize - 1) &^ (blockSize - 1) }

// sparseFormat reports which GNU sparse format the PAX records of a header
// use, deciding as archive/tar does: v1 for 1.0, ok false for a file that
// is not sparse. GNU.sparse records archive/tar would ignore (an unknown
// version, no map) are an error: the file would read as its packed data.
func sparseFormat(recs map[string]string) (v1, ok bool, err error) {
	major, minor := recs[paxGNUSparseMajor], recs[paxGNUSparseMinor]
	switch {
	case major == "0" && (minor == "0" || minor == "1"):
		return false, true, nil
	case major == "1" && minor == "0":
		return true, true, nil
	case major != "" || minor != "":
		return false, false, fmt.Errorf("GNU sparse format %s.%s is not supported", shortName(major), shortName(minor))
	case recs[paxGNUSparseMap] != "":
		return false, true, nil // 0.0 and 0.1 need not say their version
	case hasSparseRecords(recs):
		return false, false, errors.New("GNU sparse records without a sparse map")
	}
	return false, false, nil
}

// sparse returns the sparse map of hdr, whose data archive/tar has
// positioned at stream offset off, or nil when hdr is not sparse; for a
// sparse entry it sets b.dataEnd to where the entry's data ends. It checks
// the map (sorted, not overlapping, inside the file) and that the entry
// stores exactly the data it maps.
func (b *builder) sparse(hdr *tar.Header, off int64) (*SparseMap, error) {
	v1, ok, err := sparseFormat(hdr.PAXRecords)
	if err != nil {
		return nil, entryErrorf(hdr.Name, "%v", err)
	}
	if !ok {
		return nil, nil
	}
	rec, from := b.src.rec, b.src.recFrom
	if b.src.recLost {
		return nil, entryErrorf(hdr.Name, "its headers take more than %d bytes", maxHeaderBytes)
	}
	lost := func() error {
		// archive/tar framed the entry otherwise than the walk below.
		return entryErrorf(hdr.Name, "its sparse map cannot be located in the stream")
	}
	if from+int64(len(rec)) != off {
		return nil, lost()
	}
	// Walk the headers archive/tar read: from the first block boundary on,
	// PAX and GNU long-name headers, each followed by its padded data,
	// then the entry's own header, whose size field counts what the entry
	// stores.
	pos := blockAlign(from) - from
	var blk []byte
	for {
		if pos < 0 || pos > int64(len(rec))-blockSize {
			return nil, lost()
		}
		blk = rec[pos : pos+blockSize]
		if t := blk[156]; t != tar.TypeXHeader && t != tar.TypeGNULongName && t != tar.TypeGNULongLink {
			break
		}
		n, ok := parseNumeric(blk[124:136])
		if !ok || n < 0 || n > int64(len(rec)) {
			return nil, lost()
		}
		pos += blockSize + blockAlign(n)
	}
	dataStart := from + pos + blockSize
	stored, ok := parseNumeric(blk[124:136])
	if s := hdr.PAXRecords[paxSize]; s != "" {
		stored, err = strconv.ParseInt(s, 10, 64)
		ok = err == nil
	}
	if !ok || stored < 0 || stored > b.opts.MaxTarSize {
		return nil, entryErrorf(hdr.Name, "stores %d bytes, more than the stream may hold", stored)
	}

	left := b.opts.MaxSparseSegments - b.sparseSegs
	var segs []Segment
	var mapLen int64
	if v1 {
		var blocks int
		segs, blocks, err = parseSparseMap1(rec[pos+blockSize:], hdr.Size, left)
		mapLen = int64(blocks) * blockSize
	} else {
		segs, err = parseSparseMap0(hdr.PAXRecords[paxGNUSparseNumBlocks], hdr.PAXRecords[paxGNUSparseMap], hdr.Size, left)
	}
	var capErr *sparseCapError
	switch {
	case errors.As(err, &capErr):
		return nil, formatErrorf("sparse files have more than %d data segments; set Options.MaxSparseSegments to raise the cap", b.opts.MaxSparseSegments)
	case err != nil:
		return nil, entryErrorf(hdr.Name, "%v", err)
	case dataStart+mapLen != off:
		return nil, lost()
	}
	// archive/tar fails a read of more data than the entry stores, and one
	// that leaves stored data unread.
	m := &SparseMap{Segments: segs}
	if data := m.DataSize(); data != stored-mapLen {
		return nil, entryErrorf(hdr.Name, "its sparse map holds %d data bytes, but the entry stores %d", data, stored-mapLen)
	}
	b.sparseSegs += len(segs)
	b.dataEnd = dataStart + stored
	return m, nil
}

// parseNumeric parses a numeric field of a tar header as archive/tar does:
// base-256 when the top bit of the first byte is set, else octal padded
// with spaces or NULs.
func parseNumeric(b []byte) (int64, bool) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		var inv byte // 0xff for a negative number: -x-1 == ^x
		if b[0]&0x40 != 0 {
			inv = 0xff
		}
		var x uint64
		for i, c := range b {
			c ^= inv
			if i == 0 {
				c &= 0x7f
			}
			if x>>56 != 0 {
				return 0, false
			}
			x = x<<8 | uint64(c)
		}
		if x>>63 != 0 {
			return 0, false
		}
		if inv == 0xff {
			return ^int64(x), true
		}
		return int64(x), true
	}
	b = bytes.Trim(b, " \x00")
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if len(b) == 0 {
		return 0, true
	}
	x, err := strconv.ParseUint(string(b), 8, 63)
	return int64(x), err == nil
}

// sparseCapError says a map has more data segments than allowed.
type sparseCapError struct{ max int }

func (e *sparseCapError) Error() string { return fmt.Sprintf("more than %d data segments", e.max) }

// segmentList collects the segments of a map being parsed, checking each as
// archive/tar does (and BSD tar before it): no negative numbers, inside the
// file, in order and not overlapping. Zero-length segments (GNU tar ends
// every map with one at the file's size) are dropped.
type segmentList struct {
	segs []Segment
	end  int64 // where the segment before ends
	data int64 // data bytes so far
	size int64 // the file's logical size
	max  int   // the most segments allowed
}

func newSegmentList(size int64, max int) *segmentList {
	return &segmentList{segs: []Segment{}, size: size, max: max}
}

func (l *segmentList) add(i int, off, n int64) error {
	switch {
	case off < 0 || n < 0:
		return fmt.Errorf("sparse map: segment %d has a negative offset or length (%d+%d)", i, off, n)
	case n > l.size || off > l.size-n:
		return fmt.Errorf("sparse map: segment %d (%d+%d) lies outside the %d-byte file", i, off, n, l.size)
	case off < l.end:
		return fmt.Errorf("sparse map: segment %d at %d is out of order (the one before ends at %d)", i, off, l.end)
	}
	l.end = off + n
	if n == 0 {
		return nil
	}
	if len(l.segs) >= l.max {
		return &sparseCapError{l.max}
	}
	l.segs = append(l.segs, Segment{Off: off, Len: n, Data: l.data})
	l.data += n
	return nil
}

// parseNumber parses one decimal number of a map, as archive/tar does
// (strconv.ParseInt, so a sign and leading zeros are allowed).
func parseNumber(s string) (int64, error) {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sparse map: %q is not a number", shortName(s))
	}
	return v, nil
}

// parseSparseMap0 parses a 0.0 or 0.1 map: numblocks segments given as
// "off,len" pairs, comma-separated, in a file of size bytes. It returns at
// most max segments; more is a *sparseCapError.
func parseSparseMap0(numblocks, m string, size int64, max int) ([]Segment, error) {
	n, err := strconv.ParseInt(numblocks, 10, 64)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("GNU.sparse.numblocks %q is not a segment count", shortName(numblocks))
	}
	numbers := 0
	if m != "" {
		numbers = strings.Count(m, ",") + 1
	}
	if n > int64(numbers) || int64(numbers) != 2*n {
		return nil, fmt.Errorf("GNU.sparse.map has %d numbers for %d segments", numbers, n)
	}
	l := newSegmentList(size, max)
	for i := 0; m != ""; i++ {
		var o, c string
		o, m, _ = strings.Cut(m, ",")
		c, m, _ = strings.Cut(m, ",")
		off, err := parseNumber(o)
		if err != nil {
			return nil, err
		}
		length, err := parseNumber(c)
		if err != nil {
			return nil, err
		}
		if err := l.add(i, off, length); err != nil {
			return nil, err
		}
	}
	return l.segs, nil
}

// parseSparseMap1 parses a 1.0 map from the start of b, the entry's data: a
// line with the segment count, then a line with the offset and one with
// the length of each. It returns at most max segments (more is a
// *sparseCapError) and how many 512-byte blocks the map takes, as
// archive/tar counts them: up to the block holding the last line's newline.
func parseSparseMap1(b []byte, size int64, max int) ([]Segment, int, error) {
	pos := 0
	next := func() (string, bool) {
		i := bytes.IndexByte(b[pos:], '\n')
		if i < 0 {
			return "", false
		}
		tok := string(b[pos : pos+i])
		pos += i + 1
		return tok, true
	}
	tok, ok := next()
	if !ok {
		return nil, 0, errors.New("sparse map truncated")
	}
	n, err := strconv.ParseInt(tok, 10, 64)
	if err != nil || n < 0 {
		return nil, 0, fmt.Errorf("sparse map: segment count %q", shortName(tok))
	}
	l := newSegmentList(size, max)
	for i := int64(0); i < n; i++ {
		o, ok1 := next()
		c, ok2 := next()
		if !ok1 || !ok2 {
			return nil, 0, errors.New("sparse map truncated")
		}
		off, err := parseNumber(o)
		if err != nil {
			return nil, 0, err
		}
		length, err := parseNumber(c)
		if err != nil {
			return nil, 0, err
		}
		if err := l.add(int(i), off, length); err != nil {
			return nil, 0, err
		}
	}
	return l.segs, (pos-1)/blockSize + 1, nil
}
