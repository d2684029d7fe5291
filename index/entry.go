package index

import (
	"archive/tar"
	"time"

	"github.com/opencontainers/go-digest"
)

// Type is the kind of a tar entry, after PAX and GNU extension headers have
// been folded into the entry they describe.
type Type uint8

// The entry types of a layer's table. Whiteouts and opaque markers are kept as
// their own types so the union never has to look at names to find them.
const (
	TypeReg      Type = iota + 1 // regular file; Offset and Size locate its bytes
	TypeDir                      // directory
	TypeSymlink                  // symbolic link to Linkname
	TypeHardlink                 // another name for the file at Linkname
	TypeChar                     // character device (Devmajor, Devminor)
	TypeBlock                    // block device (Devmajor, Devminor)
	TypeFifo                     // named pipe
	TypeWhiteout                 // ".wh.NAME": deletes NAME from lower layers; Name is the deleted path
	TypeOpaque                   // ".wh..wh..opq": hides the lower contents of directory Name
)

// String returns a short lower-case name for the type, as inspect prints it.
func (t Type) String() string {
	switch t {
	case TypeReg:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeHardlink:
		return "hardlink"
	case TypeChar:
		return "char"
	case TypeBlock:
		return "block"
	case TypeFifo:
		return "fifo"
	case TypeWhiteout:
		return "whiteout"
	case TypeOpaque:
		return "opaque"
	}
	return "unknown"
}

// Entry is one tar entry of a layer, as the union and the read path need it.
//
// Name is cleaned: relative to the layer root, without a leading "./" or "/",
// without a trailing "/", never "." and never containing a ".." element. For a
// TypeWhiteout entry Name is the path being deleted (the ".wh." prefix removed
// from the base name); for TypeOpaque it is the directory whose lower contents
// are hidden. Linkname of a hardlink is cleaned the same way; a symlink's
// Linkname is kept byte for byte.
//
// A sparse file (GNU tar's PAX sparse formats 0.0, 0.1 and 1.0) has a
// Sparse map: Size is then its logical size, holes included, and the tar
// stores only the bytes of its data segments, packed one after another from
// Offset on ([Entry.DataSize] of them). Everything else reads as zeros.
type Entry struct {
	Name     string
	Type     Type
	Mode     uint32 // permission bits plus setuid, setgid and sticky (07777); no type bits
	UID      int64
	GID      int64
	Size     int64 // bytes of file content, holes of a sparse file included (TypeReg only)
	Offset   int64 // offset of the content (a sparse file's packed data) in the uncompressed tar stream (TypeReg only)
	ModTime  time.Time
	Linkname string
	Devmajor int64
	Devminor int64
	Xattrs   map[string]string // from PAX SCHILY.xattr.* records; nil when none
	// Sparse is where a sparse file's data lies; nil for a file stored
	// whole. A pointer, not a slice, because tables hold millions of
	// entries and sparse files are rare.
	Sparse *SparseMap
}

// SparseMap is the layout of a sparse file: its data segments, sorted by
// Off, not overlapping, each within the file's Size and of at least one
// byte. An all-hole file has none (Segments is empty, the map is not nil).
// Segment i's bytes are at tar offset Entry.Offset + Segments[i].Data.
type SparseMap struct {
	Segments []Segment
}

// Segment is one run of data of a sparse file: logical bytes [Off, Off+Len)
// are stored at Data bytes past the entry's Offset. Data is the sum of the
// lengths of the segments before, since the tar packs them back to back.
type Segment struct {
	Off  int64
	Len  int64
	Data int64
}

// DataSize returns how many bytes of the tar stream hold e's content: Size,
// or for a sparse file the bytes of its data segments.
func (e *Entry) DataSize() int64 {
	if e.Sparse == nil {
		return e.Size
	}
	return e.Sparse.DataSize()
}

// DataSize returns the bytes of all the map's data segments together.
func (m *SparseMap) DataSize() int64 {
	if len(m.Segments) == 0 {
		return 0
	}
	last := m.Segments[len(m.Segments)-1]
	return last.Data + last.Len
}

// Table is the entry table of one layer: every entry in tar order, plus the
// digests that bind it to the layer it was read from, and, for layers that
// allow it, the random-access map (Spans) into the blob. A Table is immutable
// once built, so readers share it without locks.
type Table struct {
	Digest  digest.Digest // digest of the layer blob as stored (compressed)
	DiffID  digest.Digest // sha256 of the uncompressed tar stream
	Size    int64         // compressed blob size in bytes
	TarSize int64         // uncompressed tar stream size in bytes
	Entries []Entry

	// Compression is how the blob encodes the tar: "gzip", "zstd" or "none".
	Compression string
	// SpanSize is the target uncompressed size of a span; 0 when Spans is nil.
	SpanSize int64
	// Spans cut the uncompressed stream into pieces that can each be decoded
	// alone from a verified range of the blob; sorted by U, the first at U 0.
	// Nil for a layer with no random access (zstd today).
	Spans []Span

	// windows holds what Window(i) returns; see index/span.go.
	windows windowSource
	// lastTailBits is, for a snapshot published while the table is built
	// (Options.Progress), the Bits of the span after its last one, which
	// the snapshot does not hold: the last span's last byte then begins
	// the next block, whose bits DecodeSpan must not decode. 0 otherwise.
	lastTailBits uint8
}

// Span is one random-access piece of a layer: the uncompressed bytes
// [U, next span's U or TarSize) are decoded from blob bytes [C, CEnd) alone,
// using the 32 KiB window that preceded U (gzip) or nothing (plain tar).
// Digest is the sha256 of blob bytes [C, CEnd): a reader checks it before
// decoding, so no byte of an unverified range is ever served.
type Span struct {
	U      int64         // uncompressed offset of the span's first byte
	C      int64         // blob offset of the byte holding the span's first bit
	Bits   uint8         // bits of byte C that belong to the previous span (0-7)
	CEnd   int64         // blob offset just past the last byte the span needs
	Digest digest.Digest // sha256 of blob[C:CEnd]
}

// EntryOf converts one tar header into an Entry by the rules [Build]
// applies, for readers of tar headers kept apart from their tar (the raw
// headers of containers/storage's tar-split). The data offset is not known
// here: a TypeReg entry's Offset is 0. keep is false for a header with no
// file meaning (a PAX global header, a volume label, aufs metadata); errors
// are Build's, wrapping [ErrFormat].
func EntryOf(hdr *tar.Header, opts Options) (e Entry, keep bool, err error) {
	b := &builder{opts: opts.withDefaults()}
	return b.entry(hdr, 0)
}
