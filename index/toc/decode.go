package toc

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/index"
)

// The caps applied when the matching [Options] field is zero.
const (
	DefaultMaxTOCSize     = 64 << 20
	DefaultMaxTOCJSONSize = 256 << 20
	DefaultMaxChunkSize   = 256 << 20

	DefaultMaxTarSplitSize = 1 << 30
)

// tocTarName is the name of the TOC JSON in the tar of an eStargz TOC
// member; at the layer root it is reserved, so never an entry.
const tocTarName = "stargz.index.json"

// Options configures [Locate] and [Decode]. The zero value is ready to use:
// every cap left at zero takes its default. A layer exceeding a cap is
// refused with an [index.ErrFormat] error naming the field to raise.
type Options struct {
	// MaxTOCSize caps the compressed TOC bytes Decode is given, and so
	// what a caller fetches. Zero means DefaultMaxTOCSize (64 MiB).
	MaxTOCSize int64
	// MaxTOCJSONSize caps the uncompressed TOC JSON. Zero means
	// DefaultMaxTOCJSONSize (256 MiB); the JSON is parsed as it is
	// decompressed, never held whole.
	MaxTOCJSONSize int64
	// MaxEntries caps the number of TOC entries, chunk entries included.
	// Zero means index.DefaultMaxEntries.
	MaxEntries int
	// MaxNameLen caps an entry name and a link target, in bytes after
	// cleaning. Zero means index.DefaultMaxNameLen (4096).
	MaxNameLen int
	// MaxXattrBytes caps the total bytes of one entry's xattr names and
	// values. Zero means index.DefaultMaxXattrBytes (1 MiB).
	MaxXattrBytes int
	// MaxChunkSize caps both the uncompressed size of a chunk and its
	// compressed range, which [DecodeChunk] holds in memory. Zero means
	// DefaultMaxChunkSize (256 MiB).
	MaxChunkSize int64
	// MaxTarSplitSize caps a zstd:chunked layer's tar-split data, both
	// the compressed bytes [ApplyTarSplit] is given and the JSON they
	// decompress to, which is parsed as it is decompressed. Zero means
	// DefaultMaxTarSplitSize (1 GiB; the JSON takes about 1 KiB per tar
	// entry).
	MaxTarSplitSize int64
}

func (o Options) withDefaults() Options {
	if o.MaxTOCSize <= 0 {
		o.MaxTOCSize = DefaultMaxTOCSize
	}
	if o.MaxTOCJSONSize <= 0 {
		o.MaxTOCJSONSize = DefaultMaxTOCJSONSize
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = index.DefaultMaxEntries
	}
	if o.MaxNameLen <= 0 {
		o.MaxNameLen = index.DefaultMaxNameLen
	}
	if o.MaxXattrBytes <= 0 {
		o.MaxXattrBytes = index.DefaultMaxXattrBytes
	}
	if o.MaxChunkSize <= 0 {
		o.MaxChunkSize = DefaultMaxChunkSize
	}
	if o.MaxTarSplitSize <= 0 {
		o.MaxTarSplitSize = DefaultMaxTarSplitSize
	}
	return o
}

// Decode verifies, decompresses and parses the TOC at loc; raw is the blob
// bytes [loc.Offset, loc.Offset+loc.Size).
//
// When loc.Digest is set, raw is checked against it before anything is
// decompressed; when loc.JSONDigest is set, the JSON is checked against it
// after it was parsed and before anything is returned. A mismatch is a
// [*DigestError]. Decode does not refuse an unverified location
// (loc.Verified() false): that is the caller's policy.
//
// Everything the TOC claims is validated: names cleaned as [index.Entry]
// requires, every cap of opts, each regular file's chunks tiling its size,
// chunk ranges inside [0, loc.PayloadEnd), in increasing blob order and not
// overlapping, sizes and offsets non-negative. Errors caused by the bytes
// wrap [index.ErrFormat].
func Decode(loc Location, raw []byte, opts Options) (*Layer, error) {
	opts = opts.withDefaults()
	if err := loc.check(opts, loc.BlobSize); err != nil {
		return nil, err
	}
	if int64(len(raw)) != loc.Size {
		return nil, fmt.Errorf("decoding TOC %d+%d: given %d bytes", loc.Offset, loc.Size, len(raw))
	}
	if loc.Digest != "" {
		if got := loc.Digest.Algorithm().FromBytes(raw); got != loc.Digest {
			return nil, &DigestError{What: "TOC", Off: loc.Offset, Want: loc.Digest, Got: got}
		}
	}
	p := newParser(loc, opts)
	h := sha256.New()
	var err error
	switch loc.Layout {
	case LayoutEstargz:
		err = p.readGzipTOC(raw, h)
	case LayoutEstargzZstd, LayoutZstdChunked:
		err = p.readZstdTOC(raw, h)
	default:
		return nil, fmt.Errorf("decoding TOC: unknown layout %d", loc.Layout)
	}
	if err != nil {
		return nil, err
	}
	got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
	if loc.JSONDigest != "" && got != loc.JSONDigest {
		return nil, &DigestError{What: "TOC JSON", Off: loc.Offset, Want: loc.JSONDigest, Got: got}
	}
	l, err := p.finish()
	if err != nil {
		return nil, err
	}
	l.TOCDigest = got
	return l, nil
}

// readGzipTOC parses an eStargz TOC member: one gzip member holding a tar
// whose single entry is stargz.index.json.
func (p *parser) readGzipTOC(raw []byte, h hash.Hash) error {
	br := bytes.NewReader(raw)
	zr, err := gzip.NewReader(br)
	if err != nil {
		return formatErrorf("TOC gzip header: %v", err)
	}
	zr.Multistream(false)
	// The tar around the JSON adds headers and padding: a few KiB at most.
	capped := &capReader{r: zr, left: p.opts.MaxTOCJSONSize + 64<<10}
	tr := tar.NewReader(capped)
	hdr, err := tr.Next()
	if err != nil {
		return p.tocReadError("TOC tar", capped, err)
	}
	if path.Clean("/"+hdr.Name) != "/"+tocTarName || (hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA) {
		return formatErrorf("TOC tar entry is %q, want %q", shortName(hdr.Name), tocTarName)
	}
	if hdr.Size > p.opts.MaxTOCJSONSize {
		return formatErrorf("TOC is %d bytes uncompressed, more than %d; set Options.MaxTOCJSONSize to raise the cap", hdr.Size, p.opts.MaxTOCJSONSize)
	}
	body := io.LimitReader(tr, hdr.Size)
	if err := p.parseJSON(io.TeeReader(body, h)); err != nil {
		return p.tocReadError("TOC JSON", capped, err)
	}
	if _, err := tr.Next(); err != io.EOF {
		if err == nil {
			return formatErrorf("TOC tar has more than one entry")
		}
		return p.tocReadError("TOC tar", capped, err)
	}
	// Read to the member's end so its CRC is checked, and insist that the
	// range holds that member and nothing else.
	if _, err := io.Copy(io.Discard, capped); err != nil {
		return p.tocReadError("TOC gzip member", capped, err)
	}
	if br.Len() != 0 {
		return formatErrorf("%d bytes follow the TOC gzip member", br.Len())
	}
	return nil
}

// readZstdTOC parses a zstd-compressed TOC JSON.
func (p *parser) readZstdTOC(raw []byte, h hash.Hash) error {
	dec, err := zstd.NewReader(bytes.NewReader(raw),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		// Streaming writers use windows of up to 8 MiB whatever the
		// content size; capReader bounds the output.
		zstd.WithDecoderMaxWindow(uint64(max(p.opts.MaxTOCJSONSize, 32<<20))))
	if err != nil {
		return fmt.Errorf("creating zstd decoder: %w", err)
	}
	defer dec.Close()
	capped := &capReader{r: dec, left: p.opts.MaxTOCJSONSize}
	counted := &countReader{r: capped}
	if err := p.parseJSON(io.TeeReader(counted, h)); err != nil {
		return p.tocReadError("TOC JSON", capped, err)
	}
	if n, err := io.Copy(io.Discard, counted); err != nil {
		return p.tocReadError("TOC JSON", capped, err)
	} else if n != 0 {
		return formatErrorf("%d bytes follow the TOC JSON", n)
	}
	if p.loc.JSONSize != 0 && counted.n != p.loc.JSONSize {
		return formatErrorf("TOC JSON is %d bytes, the layer says %d", counted.n, p.loc.JSONSize)
	}
	return nil
}

// tocReadError classifies an error met reading the TOC: the cap, a
// decompression or tar error (all caused by the bytes), or the parser's own.
func (p *parser) tocReadError(what string, c *capReader, err error) error {
	if c.exceeded {
		return formatErrorf("TOC exceeds %d bytes uncompressed; set Options.MaxTOCJSONSize to raise the cap", p.opts.MaxTOCJSONSize)
	}
	if errors.Is(err, index.ErrFormat) {
		return err
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return formatErrorf("%s: %v", what, err)
}

// capReader reads at most left bytes from r and fails past them.
type capReader struct {
	r        io.Reader
	left     int64
	exceeded bool
}

func (c *capReader) Read(b []byte) (int, error) {
	if c.left <= 0 {
		// Reading one more byte tells the end of the stream from excess.
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			c.exceeded = true
			return 0, errors.New("size cap exceeded")
		}
		return 0, err
	}
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.r.Read(b)
	c.left -= int64(n)
	return n, err
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
