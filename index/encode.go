package index

import (
	"bytes"
	"crypto/sha256"
	_ "crypto/sha512" // lets go-digest validate sha512 layer digests, which OCI allows
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// The table encoding; the package documentation describes the layout.
const (
	indexMagic    = "OCIFSIDX"
	formatVersion = 1
	checksumLen   = sha256.Size
	headerLen     = len(indexMagic) + 2 // magic and version

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
// package documentation describes. The encoding is canonical: equal tables
// encode to equal bytes. An empty, non-nil Xattrs map encodes like a nil one,
// so it decodes as nil. Entries that break the [Entry] invariants are refused.
func (t *Table) MarshalBinary() ([]byte, error) {
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
	buf = binary.BigEndian.AppendUint16(buf, formatVersion)
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
			prevEnd = e.Offset + e.Size
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
	// Version 1 writes no optional sections.
	sum := sha256.Sum256(buf)
	return append(buf, sum[:]...), nil
}

// Unmarshal decodes a table encoded by [Table.MarshalBinary].
//
// The bytes are not trusted: the trailing checksum is verified first, every
// count is checked against the bytes left before anything is allocated from
// it, and every entry is checked against the [Entry] invariants. Anything
// malformed is an [ErrFormat] error, never a panic and never a different
// table; an index written by a newer, incompatible format version is refused
// with a message saying so.
func Unmarshal(b []byte) (*Table, error) {
	if len(b) < headerLen || string(b[:len(indexMagic)]) != indexMagic {
		return nil, formatErrorf("not an ocifs index (no %q magic)", indexMagic)
	}
	if v := binary.BigEndian.Uint16(b[len(indexMagic):]); v != formatVersion {
		return nil, formatErrorf("ocifs index format version %d is not supported (this build reads version %d); rebuild the index",
			v, formatVersion)
	}
	if len(b) < headerLen+checksumLen {
		return nil, formatErrorf("ocifs index truncated: %d bytes", len(b))
	}
	body, sum := b[:len(b)-checksumLen], b[len(b)-checksumLen:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, formatErrorf("ocifs index checksum mismatch: the index is damaged; rebuild it")
	}
	t, err := decodeTable(&decoder{b: body, off: headerLen})
	if err != nil {
		return nil, fmt.Errorf("%w: ocifs index: %w", ErrFormat, err)
	}
	return t, nil
}

// decodeTable decodes the body of an index after the magic and version.
func decodeTable(d *decoder) (*Table, error) {
	t := &Table{
		Digest: digest.Digest(d.string(maxDigestLen, "digest")),
		DiffID: digest.Digest(d.string(maxDigestLen, "diff id")),
	}
	t.Size = d.int64("size")
	t.TarSize = d.int64("tar size")
	count := d.uvarint("entry count")
	if d.err != nil {
		return nil, d.err
	}
	if err := checkDigest(t.Digest); err != nil {
		return nil, fmt.Errorf("digest: %w", err)
	}
	if err := checkDigest(t.DiffID); err != nil {
		return nil, fmt.Errorf("diff id: %w", err)
	}
	if count > uint64(d.left()/minEntryLen) {
		return nil, fmt.Errorf("entry count %d exceeds what %d bytes can hold", count, d.left())
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
			return nil, fmt.Errorf("entry %d: %w", i, d.err)
		}
		prev := arena[prevStart:prevEnd]
		if p > uint64(len(prev)) || int(p)+len(suffix) > maxEncodedNameLen {
			return nil, fmt.Errorf("entry %d: name prefix %d, suffix %d bytes, after a %d-byte name",
				i, p, len(suffix), len(prev))
		}
		if int(p) < len(prev) && len(suffix) > 0 && suffix[0] == prev[p] {
			return nil, fmt.Errorf("entry %d: name prefix %d is not the longest shared one", i, p)
		}
		if len(arena)+int(p)+len(suffix) > maxTotalNameBytes {
			return nil, fmt.Errorf("entry %d: names exceed %d bytes in total", i, maxTotalNameBytes)
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
			prevContentEnd = e.Offset + e.Size
		case TypeSymlink, TypeHardlink:
			link := d.bytes(maxEncodedNameLen, "link target")
			if len(arena)+len(link) > maxTotalNameBytes {
				return nil, fmt.Errorf("entry %d: names exceed %d bytes in total", i, maxTotalNameBytes)
			}
			arena = append(arena, link...)
		case TypeChar, TypeBlock:
			e.Devmajor = int64(d.uint("device major", math.MaxUint32))
			e.Devminor = int64(d.uint("device minor", math.MaxUint32))
		}
		ends = append(ends, prevEnd, len(arena))
		if err := d.xattrs(e); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if d.err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, d.err)
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
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
	}

	if err := d.sections(); err != nil {
		return nil, err
	}
	return t, nil
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

// sections skips the tagged sections after the entries. Version 1 defines
// none; later versions add them. A section with an odd tag carries something
// a reader must understand, so an unknown odd tag is an error; an unknown
// even tag is skipped.
func (d *decoder) sections() error {
	for d.left() > 0 {
		tag := d.uvarint("section tag")
		body := d.bytes(d.left(), "section")
		if d.err != nil {
			return d.err
		}
		if tag&1 == 1 {
			return fmt.Errorf("section %d (%d bytes) is required but unknown to this version; rebuild the index", tag, len(body))
		}
	}
	return nil
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
