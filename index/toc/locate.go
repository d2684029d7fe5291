package toc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/index"
)

// The layer annotations that locate and bind a TOC.
const (
	// AnnotationTOCDigest is the sha256 of an eStargz TOC JSON (gzip or
	// zstd flavour), as containerd's estargz package and its converters set it.
	AnnotationTOCDigest = "containerd.io/snapshot/stargz/toc.digest"
	// AnnotationManifestPosition is "offset:length:lengthUncompressed:type"
	// of a zstd:chunked manifest; offset is just past the skippable frame
	// header, length counts the compressed manifest alone, type is 1.
	AnnotationManifestPosition = "io.github.containers.zstd-chunked.manifest-position"
	// AnnotationManifestChecksum is the digest of the length compressed
	// manifest bytes at that offset.
	AnnotationManifestChecksum = "io.github.containers.zstd-chunked.manifest-checksum"
	// AnnotationTarSplitPosition is "offset:length:lengthUncompressed" of the
	// tar-split data containers/storage stores after the manifest.
	AnnotationTarSplitPosition = "io.github.containers.zstd-chunked.tarsplit-position"
)

// legacyAnnotationPrefix replaces "io.github.containers." in the keys
// older containers/storage and containerd's estargz/zstdchunked write.
const legacyAnnotationPrefix = "io.containers."

// annotation returns the value of a zstd:chunked annotation under its
// current key or its legacy one.
func annotation(a map[string]string, key string) (string, bool) {
	if v, ok := a[key]; ok {
		return v, true
	}
	v, ok := a[legacyAnnotationPrefix+strings.TrimPrefix(key, "io.github.containers.")]
	return v, ok
}

// The formats a [Layer] can have, as ocifs inspect and stats name the mode.
const (
	FormatEstargz     = "estargz"
	FormatZstdChunked = "zstd-chunked"
)

// Layout is the convention a layer was written in. Two layouts share the
// zstd:chunked format but differ in where the TOC sits and what its entries
// mean.
type Layout uint8

const (
	// LayoutEstargz is eStargz: gzip members, the TOC JSON in a tar in the
	// last member, a 51-byte (or legacy 47-byte) gzip footer.
	LayoutEstargz Layout = iota + 1
	// LayoutEstargzZstd is the zstd flavour of containerd's estargz package
	// (its zstdchunked compressor): zstd frames, the TOC JSON compressed in a
	// skippable frame, a 40-byte footer in a last skippable frame, and the
	// eStargz conventions (landmarks, innerOffset) in the TOC.
	LayoutEstargzZstd
	// LayoutZstdChunked is zstd:chunked as containers/storage writes it:
	// each file's content in its own zstd frames, the manifest and the
	// tar-split data in skippable frames, a 64-byte footer, and the
	// manifest located through the io.github.containers.zstd-chunked.*
	// annotations.
	LayoutZstdChunked
)

// Format returns the mode name of the layout: FormatEstargz or
// FormatZstdChunked.
func (l Layout) Format() string {
	if l == LayoutEstargz {
		return FormatEstargz
	}
	return FormatZstdChunked
}

// String names the layout for logs.
func (l Layout) String() string {
	switch l {
	case LayoutEstargz:
		return "estargz"
	case LayoutEstargzZstd:
		return "estargz-zstd"
	case LayoutZstdChunked:
		return "zstd-chunked"
	}
	return "unknown"
}

// estargz returns whether the layout follows the eStargz TOC conventions:
// landmark files, the TOC's own name reserved.
func (l Layout) estargz() bool { return l == LayoutEstargz || l == LayoutEstargzZstd }

// Footer sizes and magic numbers.
const (
	estargzFooterSize       = 51 // gzip member with a 26-byte extra field
	estargzLegacyFooterSize = 47 // gzip member with a 22-byte extra field
	skippableHeaderSize     = 8  // magic + uint32 frame size
	estargzZstdFooterSize   = skippableHeaderSize + 40
	zstdChunkedFooterSize   = skippableHeaderSize + 64
	manifestTypeCRFS        = 1
)

var (
	skippableMagic = []byte{0x50, 0x2a, 0x4d, 0x18}
	// estargz's zstdchunked package writes "GnUlInUx"; containers/storage
	// writes "GNUlInUx".
	estargzZstdMagic = []byte("GnUlInUx")
	zstdChunkedMagic = []byte("GNUlInUx")
	stargzMagic      = "STARGZ"
)

// TailSize returns how many bytes from the end of a blob [Locate] needs to
// find any footer it knows (fewer when the blob is smaller).
func TailSize() int64 { return zstdChunkedFooterSize }

// Location says where a layer's TOC is, in what layout, and what binds it to
// the layer descriptor. [Locate] makes it; [Decode] consumes it.
type Location struct {
	Layout   Layout
	BlobSize int64 // the layer blob's size, from the descriptor

	// Offset and Size are the blob byte range Decode needs: the gzip member
	// holding the TOC tar (eStargz) or the compressed manifest without its
	// skippable frame header (zstd:chunked).
	Offset, Size int64
	// PayloadEnd is where file content ends: every chunk lies in
	// [0, PayloadEnd).
	PayloadEnd int64
	// JSONSize is the TOC JSON's uncompressed size when the layer states it
	// (zstd layouts), else 0.
	JSONSize int64

	// Digest, when set, is the digest of the Size bytes at Offset (the
	// zstd:chunked manifest-checksum annotation).
	Digest digest.Digest
	// JSONDigest, when set, is the sha256 of the uncompressed TOC JSON (the
	// eStargz toc.digest annotation).
	JSONDigest digest.Digest

	// TarSplitOffset and TarSplitSize locate containers/storage's tar-split
	// data (zstd-compressed, after the manifest, without its skippable frame
	// header), or are 0; TarSplitJSONSize is its uncompressed size when the
	// layer states it. Decode does not read it: [ApplyTarSplit] does.
	TarSplitOffset, TarSplitSize, TarSplitJSONSize int64
}

// Format returns FormatEstargz or FormatZstdChunked.
func (l Location) Format() string { return l.Layout.Format() }

// Verified reports whether the TOC is bound to the descriptor by a digest
// annotation. The footer alone binds nothing, so a caller that follows the
// trust chain refuses an unverified location, or fetches the whole layer.
func (l Location) Verified() bool { return l.Digest != "" || l.JSONDigest != "" }

// Locate finds the TOC of an eStargz or zstd:chunked layer from its
// descriptor (size and annotations) and tail, the last min(TailSize(),
// desc.Size) bytes of the blob.
//
// The zstd:chunked position annotation suffices on its own; tail may then be
// nil. Otherwise the footer in tail says where the TOC is, and Locate
// returns [ErrNeedTail] when tail is nil. A layer that is neither format
// gives [ErrNotLazy]; a layer that claims to be one but is malformed, or
// whose TOC exceeds opts.MaxTOCSize or opts.MaxTOCJSONSize, gives an
// [index.ErrFormat] error. The result is not checked against any digest:
// [Decode] does that.
func Locate(desc ocispec.Descriptor, tail []byte, opts Options) (Location, error) {
	opts = opts.withDefaults()
	if desc.Size <= 0 {
		return Location{}, formatErrorf("layer size %d", desc.Size)
	}
	loc := Location{BlobSize: desc.Size}
	var err error
	if s, ok := desc.Annotations[AnnotationTOCDigest]; ok {
		if loc.JSONDigest, err = parseDigest(s); err != nil {
			return Location{}, formatErrorf("annotation %s: %v", AnnotationTOCDigest, err)
		}
	}
	if s, ok := annotation(desc.Annotations, AnnotationManifestChecksum); ok {
		if loc.Digest, err = parseDigest(s); err != nil {
			return Location{}, formatErrorf("annotation %s: %v", AnnotationManifestChecksum, err)
		}
	}
	if s, ok := annotation(desc.Annotations, AnnotationManifestPosition); ok {
		f, err := parsePosition(s, 4)
		if err != nil {
			return Location{}, formatErrorf("annotation %s: %v", AnnotationManifestPosition, err)
		}
		if f[3] != manifestTypeCRFS {
			return Location{}, formatErrorf("annotation %s: manifest type %d, want %d", AnnotationManifestPosition, f[3], manifestTypeCRFS)
		}
		loc.Layout = LayoutZstdChunked
		if loc.JSONDigest != "" {
			// Only estargz's zstd flavour sets the TOC JSON digest.
			loc.Layout = LayoutEstargzZstd
		}
		loc.Offset, loc.Size, loc.JSONSize = f[0], f[1], f[2]
		if s, ok := annotation(desc.Annotations, AnnotationTarSplitPosition); ok {
			ts, err := parsePosition(s, 3)
			if err != nil {
				return Location{}, formatErrorf("annotation %s: %v", AnnotationTarSplitPosition, err)
			}
			if ts[0] > desc.Size || ts[1] > desc.Size-ts[0] {
				return Location{}, formatErrorf("tar-split %d+%d lies outside the %d-byte blob", ts[0], ts[1], desc.Size)
			}
			loc.TarSplitOffset, loc.TarSplitSize, loc.TarSplitJSONSize = ts[0], ts[1], ts[2]
		}
		return loc, loc.check(opts, desc.Size)
	}
	if loc.Digest != "" {
		return Location{}, formatErrorf("annotation %s without %s", AnnotationManifestChecksum, AnnotationManifestPosition)
	}
	if tail == nil {
		return Location{}, ErrNeedTail
	}
	if int64(len(tail)) > desc.Size {
		return Location{}, formatErrorf("tail of %d bytes is longer than the %d-byte blob", len(tail), desc.Size)
	}
	found, err := parseFooter(tail, desc.Size)
	if err != nil {
		return Location{}, err
	}
	if found.Layout == 0 {
		if loc.JSONDigest != "" {
			return Location{}, formatErrorf("layer has annotation %s but no eStargz footer", AnnotationTOCDigest)
		}
		return Location{}, ErrNotLazy
	}
	found.BlobSize, found.JSONDigest = desc.Size, loc.JSONDigest
	return found, found.check(opts, desc.Size)
}

// check validates the ranges of a location against the blob size and caps.
func (l *Location) check(opts Options, blobSize int64) error {
	if l.Offset < skippableHeaderSize && l.Layout != LayoutEstargz {
		return formatErrorf("TOC offset %d leaves no room for its frame header", l.Offset)
	}
	if l.Offset < 0 || l.Size <= 0 || l.Offset > blobSize || l.Size > blobSize-l.Offset {
		return formatErrorf("TOC %d+%d lies outside the %d-byte blob", l.Offset, l.Size, blobSize)
	}
	if l.Size > opts.MaxTOCSize {
		return formatErrorf("TOC is %d bytes compressed, more than %d; set Options.MaxTOCSize to raise the cap", l.Size, opts.MaxTOCSize)
	}
	if l.JSONSize < 0 || l.JSONSize > opts.MaxTOCJSONSize {
		return formatErrorf("TOC is %d bytes uncompressed, more than %d; set Options.MaxTOCJSONSize to raise the cap", l.JSONSize, opts.MaxTOCJSONSize)
	}
	if l.Layout == LayoutEstargz {
		l.PayloadEnd = l.Offset
	} else {
		l.PayloadEnd = l.Offset - skippableHeaderSize
	}
	return nil
}

// parseFooter looks for each known footer at the end of tail, the last bytes
// of a blobSize-byte blob. It returns a Location with Layout 0 when none is
// there, and an error when one is there but malformed.
func parseFooter(tail []byte, blobSize int64) (Location, error) {
	if f, ok := suffix(tail, zstdChunkedFooterSize); ok && isSkippable(f, 64) && bytes.Equal(f[64:], zstdChunkedMagic) {
		p := f[skippableHeaderSize:]
		if typ := binary.LittleEndian.Uint64(p[24:]); typ != manifestTypeCRFS {
			return Location{}, formatErrorf("zstd:chunked footer: manifest type %d, want %d", typ, manifestTypeCRFS)
		}
		loc := Location{Layout: LayoutZstdChunked}
		var err error
		if loc.Offset, loc.Size, loc.JSONSize, err = footerRange(p, blobSize-zstdChunkedFooterSize); err != nil {
			return Location{}, fmt.Errorf("zstd:chunked footer: %w", err)
		}
		ts, tsLen := binary.LittleEndian.Uint64(p[32:]), binary.LittleEndian.Uint64(p[40:])
		if ts > uint64(blobSize) || tsLen > uint64(blobSize)-ts {
			return Location{}, formatErrorf("zstd:chunked footer: tar-split %d+%d lies outside the %d-byte blob", ts, tsLen, blobSize)
		}
		loc.TarSplitOffset, loc.TarSplitSize = int64(ts), int64(tsLen)
		if u := binary.LittleEndian.Uint64(p[48:]); u <= 1<<62 {
			loc.TarSplitJSONSize = int64(u)
		}
		return loc, nil
	}
	if f, ok := suffix(tail, estargzZstdFooterSize); ok && isSkippable(f, 40) && bytes.Equal(f[40:], estargzZstdMagic) {
		p := f[skippableHeaderSize:]
		if typ := binary.LittleEndian.Uint64(p[24:]); typ != manifestTypeCRFS {
			return Location{}, formatErrorf("estargz zstd footer: manifest type %d, want %d", typ, manifestTypeCRFS)
		}
		// This footer stores the compressed length second and the
		// uncompressed one third, as containers/storage's does.
		loc := Location{Layout: LayoutEstargzZstd}
		var err error
		if loc.Offset, loc.Size, loc.JSONSize, err = footerRange(p, blobSize-estargzZstdFooterSize); err != nil {
			return Location{}, fmt.Errorf("estargz zstd footer: %w", err)
		}
		return loc, nil
	}
	for _, size := range []int{estargzFooterSize, estargzLegacyFooterSize} {
		f, ok := suffix(tail, size)
		if !ok {
			continue
		}
		off, ok, err := parseGzipFooter(f)
		if err != nil {
			return Location{}, err
		}
		if !ok {
			continue
		}
		end := blobSize - int64(size)
		if off < 0 || off >= end {
			return Location{}, formatErrorf("eStargz footer: TOC offset %d outside the %d bytes before the footer", off, end)
		}
		return Location{Layout: LayoutEstargz, Offset: off, Size: end - off}, nil
	}
	return Location{}, nil
}

// footerRange reads the TOC offset, compressed and uncompressed length of a
// zstd footer payload; the TOC must end at or before end.
func footerRange(p []byte, end int64) (off, size, jsonSize int64, err error) {
	o, n, u := binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:]), binary.LittleEndian.Uint64(p[16:])
	if end < 0 || o > uint64(end) || n > uint64(end)-o {
		return 0, 0, 0, formatErrorf("TOC %d+%d lies outside the %d bytes before the footer", o, n, max(end, 0))
	}
	if u > 1<<62 {
		return 0, 0, 0, formatErrorf("TOC uncompressed size %d", u)
	}
	return int64(o), int64(n), int64(u), nil
}

// suffix returns the last n bytes of b.
func suffix(b []byte, n int) ([]byte, bool) {
	if len(b) < n {
		return nil, false
	}
	return b[len(b)-n:], true
}

// isSkippable reports whether f starts with a skippable frame header whose
// size is n.
func isSkippable(f []byte, n uint32) bool {
	return bytes.Equal(f[:4], skippableMagic) && binary.LittleEndian.Uint32(f[4:8]) == n
}

// parseGzipFooter reads an eStargz footer: an empty gzip member whose extra
// field carries "%016xSTARGZ", inside an "SG" subfield (51 bytes) or bare
// (legacy, 47 bytes). ok is false when f is not such a member at all.
func parseGzipFooter(f []byte) (off int64, ok bool, err error) {
	const flagExtra = 0x04
	if f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || f[3] != flagExtra {
		return 0, false, nil
	}
	xlen := int(binary.LittleEndian.Uint16(f[10:12]))
	var field []byte
	switch {
	case len(f) == estargzFooterSize && xlen == 26:
		if f[12] != 'S' || f[13] != 'G' || binary.LittleEndian.Uint16(f[14:16]) != 22 {
			return 0, false, nil
		}
		field = f[16:38]
	case len(f) == estargzLegacyFooterSize && xlen == 22:
		field = f[12:34]
	default:
		return 0, false, nil
	}
	if string(field[16:]) != stargzMagic {
		return 0, false, nil
	}
	// From here on the bytes claim to be a footer: be strict.
	hexOff := string(field[:16])
	if strings.TrimLeft(hexOff, "0123456789abcdef") != "" {
		return 0, true, formatErrorf("eStargz footer: TOC offset %q is not lower-case hex", hexOff)
	}
	v, err := strconv.ParseUint(hexOff, 16, 63)
	if err != nil {
		return 0, true, formatErrorf("eStargz footer: TOC offset %q: %v", hexOff, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(f))
	if err != nil {
		return 0, true, formatErrorf("eStargz footer: %v", err)
	}
	zr.Multistream(false)
	if n, err := io.Copy(io.Discard, io.LimitReader(zr, 1)); err != nil || n != 0 {
		return 0, true, formatErrorf("eStargz footer is not an empty gzip member (%d bytes, %v)", n, err)
	}
	return int64(v), true, nil
}

// parsePosition parses n colon-separated non-negative decimal integers.
func parsePosition(s string, n int) ([]int64, error) {
	parts := strings.Split(s, ":")
	if len(parts) != n {
		return nil, fmt.Errorf("%q has %d fields, want %d", shortName(s), len(parts), n)
	}
	v := make([]int64, n)
	for i, p := range parts {
		x, err := strconv.ParseInt(p, 10, 64)
		if err != nil || x < 0 || (len(p) > 1 && p[0] == '0') || p[0] == '+' {
			return nil, fmt.Errorf("field %d of %q is not a non-negative decimal integer", i+1, shortName(s))
		}
		v[i] = x
	}
	return v, nil
}

// parseDigest parses a digest from an annotation or a TOC; only sha256 is
// accepted, the one digest every writer uses.
func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("digest %q: %v", shortName(s), err)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("digest %q: algorithm %s, want sha256", shortName(s), d.Algorithm())
	}
	return d, nil
}

// Errors callers branch on.
var (
	// ErrNotLazy is returned by [Locate] for a layer that is neither
	// eStargz nor zstd:chunked: it has no such annotation and no footer.
	ErrNotLazy = errors.New("layer is neither eStargz nor zstd:chunked")
	// ErrNeedTail is returned by [Locate] when the annotations do not
	// locate the TOC and no tail was given: fetch the last TailSize() bytes
	// and call it again.
	ErrNeedTail = errors.New("the blob's last bytes are needed to find its TOC")
	// ErrDigest is wrapped by every [DigestError]. It is [index.ErrDigest],
	// a kind shared with fetch and fs (see the index package doc).
	ErrDigest = index.ErrDigest
)

// DigestError reports bytes whose digest is not the one the trust chain
// expects: a TOC against its annotation, a chunk against its TOC entry.
// Bytes from outside caused it, so it wraps [index.ErrFormat] as well as
// [ErrDigest].
type DigestError struct {
	What string // "TOC", "TOC JSON" or "chunk"
	Off  int64  // blob offset of the bytes checked
	Want digest.Digest
	Got  digest.Digest
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("invalid input: %s at blob offset %d: digest %s, want %s", e.What, e.Off, e.Got, e.Want)
}

// Unwrap makes errors.Is(err, ErrDigest) and errors.Is(err, index.ErrFormat)
// hold.
func (e *DigestError) Unwrap() []error { return []error{ErrDigest, index.ErrFormat} }

// formatErrorf returns an error wrapping [index.ErrFormat], reading
// "invalid input: ...".
func formatErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{index.ErrFormat}, args...)...)
}

// maxQuoted is how much of a hostile string an error message repeats.
const maxQuoted = 256

// shortName cuts a string from a layer to maxQuoted bytes for a message.
func shortName(s string) string {
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "..."
	}
	return s
}
