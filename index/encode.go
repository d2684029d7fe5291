package index

import (
	"bytes"
	"crypto/sha256"
	_ "crypto/sha512" // lets go-digest validate sha512 layer digests, which OCI allows
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// The table encoding; the package documentation describes the layout.
const (
	indexMagic    = "OCIFSIDX"
	formatVersion = 3 // the newest version; versions 1 and 2 are still read and written
	checksumLen   = sha256.Size
	headerLen     = len(indexMagic) + 2 // magic and version
	headLenLen    = 8                   // versions 2 and 3: the head length after the version

	// sectionSpans is the tag of the spans section (versions 2 and 3); odd,
	// because a reader that skipped it would misread the table.
	sectionSpans = 1

	// maxDigestLen caps an encoded digest string ("sha512:" and 128 hex
	// digits is 135 bytes).
	maxDigestLen = 1024
	// maxEncodedNameLen caps one encoded name or link target. archive/tar
	// refuses longer ones, so no table Build makes comes near it.
	maxEncodedNameLen = 1 << 20
	// maxTotalNameBytes caps the name and link bytes of a whole table.
	// Shared-prefix compression lets a few bytes stand for a long name, so
	// without it a small encoding could claim gigabytes.
	maxTotalNameBytes = 1 << 30
	// minEntryLen is the fewest bytes an encoded entry takes: one each for
	// prefix, suffix length, type, mode, uid, gid, mtime seconds and
	// nanoseconds, and xattr count.
	minEntryLen = 9
)

// MarshalBinary encodes t for the local index cache, in the format the
// package documentation describes: version 3 for a table with a sparse
// file, else version 1 for a table with no Compression, SpanSize or Spans
// (what [Build] makes) and version 2 for the others, so that tables
// without sparse files stay readable by builds that know only versions 1
// and 2. The encoding is canonical: equal tables encode to equal bytes. An empty,
// non-nil Xattrs map encodes like a nil one, so it decodes as nil. Entries
// that break the [Entry] invariants and spans that break the [Span] ones are
// refused. A table from [Open] reads its windows from its file to encode.
func (t *Table) MarshalBinary() ([]byte, error) {
	hasSpans := t.Compression != "" || t.SpanSize != 0 || t.Spans != nil
	version := uint16(1)
	if hasSpans {
		version = 2
	}
	for i := range t.Entries {
		if t.Entries[i].Sparse != nil {
			version = 3
			break
		}
	}
	if err := checkDigest(t.Digest); err != nil {
		return nil, fmt.Errorf("encoding table: digest: %w", err)
	}
	if err := checkDigest(t.DiffID); err != nil {
		return nil, fmt.Errorf("encoding table: diff id: %w", err)
	}
	if t.Size < 0 || t.TarSize < 0 {
		return nil, fmt.Errorf("encoding table: negative size %d or tar size %d", t.Size, t.TarSize)
	}
	buf := make([]byte, 0, 64+len(t.Entries)*32)
	buf = append(buf, indexMagic...)
	buf = binary.BigEndian.AppendUint16(buf, version)
	if version >= 2 {
		buf = binary.BigEndian.AppendUint64(buf, 0) // the head length, set below
	}
	buf = appendString(buf, string(t.Digest))
	buf = appendString(buf, string(t.DiffID))
	buf = binary.AppendUvarint(buf, uint64(t.Size))
	buf = binary.AppendUvarint(buf, uint64(t.TarSize))
	buf = binary.AppendUvarint(buf, uint64(len(t.Entries)))

	var prevName string
	var prevSec, prevEnd int64
	var keys []string
	for i := range t.Entries {
		e := &t.Entries[i]
		if err := checkEntry(e, t.TarSize); err != nil {
			return nil, fmt.Errorf("encoding table: entry %d %q: %w", i, e.Name, err)
		}
		if len(e.Name) > maxEncodedNameLen || len(e.Linkname) > maxEncodedNameLen {
			return nil, fmt.Errorf("encoding table: entry %d: name or link target longer than %d bytes", i, maxEncodedNameLen)
		}
		p := commonPrefixLen(prevName, e.Name)
		buf = binary.AppendUvarint(buf, uint64(p))
		buf = appendString(buf, e.Name[p:])
		prevName = e.Name
		buf = append(buf, byte(e.Type))
		buf = binary.AppendUvarint(buf, uint64(e.Mode))
		buf = binary.AppendUvarint(buf, uint64(e.UID))
		buf = binary.AppendUvarint(buf, uint64(e.GID))
		sec := e.ModTime.Unix()
		buf = binary.AppendVarint(buf, sec-prevSec) // wraps around; decoding undoes it
		buf = binary.AppendUvarint(buf, uint64(e.ModTime.Nanosecond()))
		prevSec = sec
		switch e.Type {
		case TypeReg:
			buf = binary.AppendUvarint(buf, uint64(e.Size))
			buf = binary.AppendVarint(buf, e.Offset-prevEnd)
			if version == 3 {
				buf = appendSparse(buf, e.Sparse)
			}
			prevEnd = e.Offset + e.DataSize()
		case TypeSymlink, TypeHardlink:
			buf = appendString(buf, e.Linkname)
		case TypeChar, TypeBlock:
			buf = binary.AppendUvarint(buf, uint64(e.Devmajor))
			buf = binary.AppendUvarint(buf, uint64(e.Devminor))
		}
		keys = keys[:0]
		for k := range e.Xattrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf = binary.AppendUvarint(buf, uint64(len(keys)))
		for _, k := range keys {
			buf = appendString(buf, k)
			buf = appendString(buf, e.Xattrs[k])
		}
	}
	if version == 1 {
		// Version 1 writes no optional sections.
		sum := sha256.Sum256(buf)
		return append(buf, sum[:]...), nil
	}
	var windows []byte
	if hasSpans {
		var spans []byte
		var err error
		if spans, windows, err = t.appendSpans(nil); err != nil {
			return nil, fmt.Errorf("encoding table: spans: %w", err)
		}
		buf = binary.AppendUvarint(buf, sectionSpans)
		buf = appendString(buf, string(spans))
	}
	binary.BigEndian.PutUint64(buf[headerLen:], uint64(len(buf)-headerLen-headLenLen))
	sum := sha256.Sum256(buf)
	buf = append(buf, sum[:]...)
	return append(buf, windows...), nil
}

// Unmarshal decodes a table encoded by [Table.MarshalBinary], version 1, 2
// or 3, with its windows loaded into memory (kept flate-compressed as stored,
// inflated by each [Table.Window] call).
//
// The bytes are not trusted: the checksums are verified first, every
// count is checked against the bytes left before anything is allocated from
// it, every entry is checked against the [Entry] invariants and every span
// against the [Span] ones, and every window is checked and inflated once.
// Anything malformed is an [ErrFormat] error, never a panic and never a
// different table; an index written by a newer, incompatible format version
// is refused with a message saying so.
func Unmarshal(b []byte) (*Table, error) {
	v, err := checkHeader(b)
	if err != nil {
		return nil, err
	}
	if v >= 2 {
		t, err := open(bytes.NewReader(b), int64(len(b)), b, v)
		if err != nil {
			return nil, err
		}
		if w, ok := t.windows.(*storedWindows); ok {
			// Hold a copy, not the caller's bytes, and check every
			// window now.
			w.r = bytes.NewReader(bytes.Clone(b[w.base:]))
			w.base = 0
			for i := range w.dir {
				if _, err := w.window(i); err != nil {
					return nil, err
				}
			}
		}
		return t, nil
	}
	if len(b) < headerLen+checksumLen {
		return nil, formatErrorf("ocifs index truncated: %d bytes", len(b))
	}
	body, sum := b[:len(b)-checksumLen], b[len(b)-checksumLen:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, formatErrorf("ocifs index checksum mismatch: the index is damaged; rebuild it")
	}
	t, _, err := decodeTable(&decoder{b: body, off: headerLen}, 1)
	if err != nil {
		return nil, fmt.Errorf("%w: ocifs index: %w", ErrFormat, err)
	}
	return t, nil
}

// checkHeader checks the magic and returns the format version of the
// encoded table starting b.
func checkHeader(b []byte) (uint16, error) {
	if len(b) < headerLen || string(b[:len(indexMagic)]) != indexMagic {
		return 0, formatErrorf("not an ocifs index (no %q magic)", indexMagic)
	}
	v := binary.BigEndian.Uint16(b[len(indexMagic):])
	if v < 1 || v > formatVersion {
		return 0, formatErrorf("ocifs index format version %d is not supported (this build reads versions 1 to %d); rebuild the index", v, formatVersion)
	}
	return v, nil
}

// HeadLen returns how many leading bytes of the encoded index b [Open]
// reads before any window: the head through its checksum (versions 2 and
// 3). Version 1 has no windows section, so HeadLen returns len(b), and b
// must then be the whole index. Those bytes
// are all a table's entries and spans need; each window after them is
// covered by its own sha256 in the head ([Table.WindowLocation]), so a
// reader that can check the head prefix (a digest of it published beside
// the index) can fetch the windows one by one. b may be just a prefix of
// the index holding at least the magic, version and head length.
func HeadLen(b []byte) (int64, error) {
	v, err := checkHeader(b)
	if err != nil {
		return 0, err
	}
	if v == 1 {
		return int64(len(b)), nil
	}
	fixed := headerLen + headLenLen
	if len(b) < fixed {
		return 0, formatErrorf("ocifs index truncated: %d bytes", len(b))
	}
	headLen := binary.BigEndian.Uint64(b[headerLen:])
	if headLen > math.MaxInt64-uint64(fixed+checksumLen) {
		return 0, formatErrorf("ocifs index head of %d bytes", headLen)
	}
	return int64(fixed) + int64(headLen) + checksumLen, nil
}

// maxOpenV1 caps the size of a version 1 index Open reads whole.
const maxOpenV1 = 1 << 31

// Open decodes the table encoded in the first size bytes of r without
// reading its windows section: [Table.Window] reads the one window it needs
// from r on each call, checking it against the sha256 the head holds (so r
// must stay open, unchanged, while the table is used; reads through it are
// concurrent, as *os.File allows). Open reads the head, checks its checksum
// and decodes it as [Unmarshal] does; a version 1 index, which has no
// windows, is read whole. Errors caused by the bytes wrap [ErrFormat];
// errors of r are passed on wrapped.
func Open(r io.ReaderAt, size int64) (*Table, error) {
	if size < int64(headerLen) {
		return nil, formatErrorf("ocifs index truncated: %d bytes", size)
	}
	var head [headerLen]byte
	if err := readAt(r, head[:], 0); err != nil {
		return nil, err
	}
	v, err := checkHeader(head[:])
	if err != nil {
		return nil, err
	}
	if v == 1 {
		if size > maxOpenV1 {
			return nil, formatErrorf("ocifs index of %d bytes is larger than version 1 allows", size)
		}
		b := make([]byte, size)
		if err := readAt(r, b, 0); err != nil {
			return nil, err
		}
		return Unmarshal(b)
	}
	return open(r, size, nil, v)
}

// open decodes a version 2 or 3 index from r; whole, when not nil, is all
// of r.
func open(r io.ReaderAt, size int64, whole []byte, version uint16) (*Table, error) {
	fixed := int64(headerLen + headLenLen)
	if size < fixed+checksumLen {
		return nil, formatErrorf("ocifs index truncated: %d bytes", size)
	}
	var n [headLenLen]byte
	if err := readAt(r, n[:], int64(headerLen)); err != nil {
		return nil, err
	}
	headLen := binary.BigEndian.Uint64(n[:])
	if headLen > uint64(size-fixed-checksumLen) {
		return nil, formatErrorf("ocifs index head of %d bytes does not fit in %d bytes", headLen, size)
	}
	end := fixed + int64(headLen)
	var head []byte
	if whole != nil {
		head = whole[:end+checksumLen]
	} else {
		head = make([]byte, end+checksumLen)
		if err := readAt(r, head, 0); err != nil {
			return nil, err
		}
	}
	body, sum := head[:end], head[end:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, formatErrorf("ocifs index checksum mismatch: the index is damaged; rebuild it")
	}
	base := end + checksumLen
	t, spans, err := decodeTable(&decoder{b: body, off: int(fixed)}, int(version))
	if err == nil && spans == nil && version == 2 {
		err = fmt.Errorf("version 2 index without a spans section")
	}
	var dir []windowRef
	switch {
	case err == nil && spans != nil:
		dir, err = decodeSpans(t, spans, size-base)
	case err == nil && size != base:
		err = fmt.Errorf("%d bytes of windows without a spans section", size-base)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: ocifs index: %w", ErrFormat, err)
	}
	if dir != nil {
		t.windows = &storedWindows{r: r, base: base, at: base, dir: dir}
	}
	return t, nil
}

// readAt fills b from r at off.
func readAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return formatErrorf("ocifs index truncated: %d bytes at offset %d", n, off)
	}
	return fmt.Errorf("reading index at offset %d: %w", off, err)
}

// decodeTable decodes the head of an index after the magic, version (and
// head length) and returns the spans section body of a version 2 or 3
// index, nil when it has none.
func decodeTable(d *decoder, version int) (*Table, []byte, error) {
	t := &Table{
		Digest: digest.Digest(d.string(maxDigestLen, "digest")),
		DiffID: digest.Digest(d.string(maxDigestLen, "diff id")),
	}
	t.Size = d.int64("size")
	t.TarSize = d.int64("tar size")
	count := d.uvarint("entry count")
	if d.err != nil {
		return nil, nil, d.err
	}
	if err := checkDigest(t.Digest); err != nil {
		return nil, nil, fmt.Errorf("digest: %w", err)
	}
	if err := checkDigest(t.DiffID); err != nil {
		return nil, nil, fmt.Errorf("diff id: %w", err)
	}
	if count > uint64(d.left()/minEntryLen) {
		return nil, nil, fmt.Errorf("entry count %d exceeds what %d bytes can hold", count, d.left())
	}
	if count > 0 {
		t.Entries = make([]Entry, count)
	}

	// Names and link targets are decoded into one arena and turned into
	// strings at the end with a single copy; ends[2i] is where entry i's
	// name ends in it and ends[2i+1] where its link target ends.
	arena := make([]byte, 0, d.left())
	ends := make([]int, 0, 2*count)
	prevStart, prevEnd := 0, 0
	var prevSec, prevContentEnd int64
	for i := range t.Entries {
		e := &t.Entries[i]
		p := d.uvarint("name prefix")
		suffix := d.bytes(maxEncodedNameLen, "name")
		if d.err != nil {
			return nil, nil, fmt.Errorf("entry %d: %w", i, d.err)
		}
		prev := arena[prevStart:prevEnd]
		if p > uint64(len(prev)) || int(p)+len(suffix) > maxEncodedNameLen {
			return nil, nil, fmt.Errorf("entry %d: name prefix %d, suffix %d bytes, after a %d-byte name",
				i, p, len(suffix), len(prev))
		}
		if int(p) < len(prev) && len(suffix) > 0 && suffix[0] == prev[p] {
			return nil, nil, fmt.Errorf("entry %d: name prefix %d is not the longest shared one", i, p)
		}
		if len(arena)+int(p)+len(suffix) > maxTotalNameBytes {
			return nil, nil, fmt.Errorf("entry %d: names exceed %d bytes in total", i, maxTotalNameBytes)
		}
		start := len(arena)
		arena = append(arena, prev[:p]...)
		arena = append(arena, suffix...)
		prevStart, prevEnd = start, len(arena)

		e.Type = Type(d.byte("type"))
		e.Mode = uint32(d.uint("mode", 07777))
		e.UID = int64(d.uint("uid", math.MaxUint32))
		e.GID = int64(d.uint("gid", math.MaxUint32))
		sec := prevSec + d.varint("mtime") // wraps around as encoding did
		nsec := d.uint("mtime nanoseconds", 999_999_999)
		e.ModTime = time.Unix(sec, int64(nsec)).UTC()
		prevSec = sec
		switch e.Type {
		case TypeReg:
			e.Size = d.int64("size")
			e.Offset = prevContentEnd + d.varint("offset")
			if version == 3 {
				var err error
				if e.Sparse, err = d.sparse(); err != nil {
					return nil, nil, fmt.Errorf("entry %d: %w", i, err)
				}
			}
			prevContentEnd = e.Offset + e.DataSize()
		case TypeSymlink, TypeHardlink:
			link := d.bytes(maxEncodedNameLen, "link target")
			if len(arena)+len(link) > maxTotalNameBytes {
				return nil, nil, fmt.Errorf("entry %d: names exceed %d bytes in total", i, maxTotalNameBytes)
			}
			arena = append(arena, link...)
		case TypeChar, TypeBlock:
			e.Devmajor = int64(d.uint("device major", math.MaxUint32))
			e.Devminor = int64(d.uint("device minor", math.MaxUint32))
		}
		ends = append(ends, prevEnd, len(arena))
		if err := d.xattrs(e); err != nil {
			return nil, nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if d.err != nil {
			return nil, nil, fmt.Errorf("entry %d: %w", i, d.err)
		}
	}

	names := string(arena)
	start := 0
	for i := range t.Entries {
		e := &t.Entries[i]
		e.Name = names[start:ends[2*i]]
		e.Linkname = names[ends[2*i]:ends[2*i+1]]
		start = ends[2*i+1]
		if err := checkEntry(e, t.TarSize); err != nil {
			return nil, nil, fmt.Errorf("entry %d: %w", i, err)
		}
	}

	spans, err := d.sections(version)
	if err != nil {
		return nil, nil, err
	}
	return t, spans, nil
}

// xattrs decodes the extended attributes of e: a count, then name and value
// pairs with names in strictly increasing order.
func (d *decoder) xattrs(e *Entry) error {
	n := d.uvarint("xattr count")
	if d.err != nil || n == 0 {
		return d.err
	}
	if n > uint64(d.left()/2) {
		return fmt.Errorf("xattr count %d exceeds what %d bytes can hold", n, d.left())
	}
	e.Xattrs = make(map[string]string, n)
	prev := ""
	for i := uint64(0); i < n; i++ {
		k := string(d.bytes(d.left(), "xattr name"))
		v := string(d.bytes(d.left(), "xattr value"))
		if d.err != nil {
			return d.err
		}
		if i > 0 && k <= prev {
			return fmt.Errorf("xattr %q out of order after %q", k, prev)
		}
		e.Xattrs[k] = v
		prev = k
	}
	return nil
}

// appendSparse appends the sparse map field of a version 3 regular file:
// 0 for a file stored whole, else the segment count plus one and, for each
// segment, its offset past the end of the one before and its length.
func appendSparse(buf []byte, m *SparseMap) []byte {
	if m == nil {
		return append(buf, 0)
	}
	buf = binary.AppendUvarint(buf, uint64(len(m.Segments))+1)
	var end int64
	for _, sg := range m.Segments {
		buf = binary.AppendUvarint(buf, uint64(sg.Off-end))
		buf = binary.AppendUvarint(buf, uint64(sg.Len))
		end = sg.Off + sg.Len
	}
	return buf
}

// sparse decodes what appendSparse wrote. The segments are checked with
// the entry (checkEntry).
func (d *decoder) sparse() (*SparseMap, error) {
	n := d.uvarint("sparse segment count")
	if d.err != nil || n == 0 {
		return nil, d.err
	}
	n--
	if n > uint64(d.left()/2) {
		return nil, fmt.Errorf("sparse segment count %d exceeds what %d bytes can hold", n, d.left())
	}
	m := &SparseMap{Segments: make([]Segment, n)}
	var end, data int64
	for j := range m.Segments {
		gap := d.int64("sparse segment offset")
		length := d.int64("sparse segment length")
		if d.err != nil {
			return nil, d.err
		}
		if gap > math.MaxInt64-end || length > math.MaxInt64-end-gap || length > math.MaxInt64-data {
			return nil, fmt.Errorf("sparse segment %d: offsets overflow", j)
		}
		m.Segments[j] = Segment{Off: end + gap, Len: length, Data: data}
		end, data = end+gap+length, data+length
	}
	return m, nil
}

// sections reads the tagged sections after the entries and returns the
// body of the spans section (versions 2 and 3, at most once). A section with
// an odd tag carries something a reader must understand, so an unknown odd
// tag is an error; an unknown even tag is skipped.
func (d *decoder) sections(version int) ([]byte, error) {
	var spans []byte
	for d.left() > 0 {
		tag := d.uvarint("section tag")
		body := d.bytes(d.left(), "section")
		if d.err != nil {
			return nil, d.err
		}
		if tag == sectionSpans && version >= 2 && spans == nil {
			spans = body
			continue
		}
		if tag&1 == 1 {
			return nil, fmt.Errorf("section %d (%d bytes) is required but unknown to this version; rebuild the index", tag, len(body))
		}
	}
	return spans, nil
}

// checkDigest accepts an empty digest (not yet known) or a valid one.
func checkDigest(d digest.Digest) error {
	if d == "" {
		return nil
	}
	return d.Validate()
}

// appendString appends s with its length as a uvarint.
func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// commonPrefixLen returns the length of the longest common prefix of a and b.
func commonPrefixLen(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// decoder reads the fields of an encoded table. Its first error sticks: later
// reads return zero values, so a caller checks err once per record.
type decoder struct {
	b   []byte
	off int
	err error
}

// left returns the number of bytes not yet read.
func (d *decoder) left() int { return len(d.b) - d.off }

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
}

// uvarint reads a minimally encoded unsigned varint.
func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("%s at offset %d: bad or truncated varint", what, d.off)
		return 0
	}
	if n != uvarintLen(v) {
		d.fail("%s at offset %d: varint not minimally encoded", what, d.off)
		return 0
	}
	d.off += n
	return v
}

// varint reads a minimally encoded zig-zag signed varint.
func (d *decoder) varint(what string) int64 {
	u := d.uvarint(what)
	return int64(u>>1) ^ -int64(u&1)
}

// uint reads an unsigned varint no larger than limit.
func (d *decoder) uint(what string, limit uint64) uint64 {
	v := d.uvarint(what)
	if v > limit {
		d.fail("%s %d exceeds %d", what, v, limit)
		return 0
	}
	return v
}

// int64 reads an unsigned varint that must fit an int64.
func (d *decoder) int64(what string) int64 {
	return int64(d.uint(what, math.MaxInt64))
}

func (d *decoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.left() < 1 {
		d.fail("%s: truncated", what)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

// bytes reads a length-prefixed byte string of at most limit bytes. The result
// aliases the input.
func (d *decoder) bytes(limit int, what string) []byte {
	n := d.uvarint(what)
	if d.err != nil {
		return nil
	}
	if n > uint64(d.left()) || n > uint64(limit) {
		d.fail("%s length %d exceeds %d bytes left or the %d-byte cap", what, n, d.left(), limit)
		return nil
	}
	s := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return s
}

// string reads a length-prefixed string of at most limit bytes.
func (d *decoder) string(limit int, what string) string {
	return string(d.bytes(limit, what))
}

// uvarintLen returns how many bytes the minimal uvarint encoding of v takes.
func uvarintLen(v uint64) int {
	return max(1, (bits.Len64(v)+6)/7)
}
