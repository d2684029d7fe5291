package index

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"

	"github.com/opencontainers/go-digest"
)

// The caps [Build] applies when the matching [Options] field is zero.
const (
	DefaultMaxEntries    = 4_000_000
	DefaultMaxNameLen    = 4096
	DefaultMaxXattrBytes = 1 << 20
	DefaultMaxTarSize    = 64 << 30
)

// Options configures [Build] and [BuildLayer]. The zero value is ready to use: every cap left
// at zero takes its default. The caps bound what a layer may make Build
// allocate or read; a layer exceeding one is rejected with an [ErrFormat]
// error that names the field to raise.
type Options struct {
	// MaxEntries caps the number of entries in the table.
	// Zero means DefaultMaxEntries (4,000,000).
	MaxEntries int

	// MaxNameLen caps the length in bytes of an entry name and of a link
	// target, after cleaning. Zero means DefaultMaxNameLen (4096, Linux's
	// PATH_MAX).
	MaxNameLen int

	// MaxXattrBytes caps the total bytes of extended attribute names and
	// values of one entry. Zero means DefaultMaxXattrBytes (1 MiB).
	MaxXattrBytes int

	// MaxSparseSegments caps the data segments of all the layer's sparse
	// files together (16 bytes each in memory). Zero means
	// DefaultMaxSparseSegments (1,000,000).
	MaxSparseSegments int

	// MaxTarSize caps the bytes of the uncompressed stream, trailing bytes
	// after the end-of-archive marker included; it is what stops a
	// decompression bomb. Zero means DefaultMaxTarSize (64 GiB).
	MaxTarSize int64

	// SpanSize is the uncompressed size [BuildLayer] aims at for each span
	// of a gzip or plain tar layer: a span ends at the first deflate block
	// end at or after this many bytes. Zero means DefaultSpanSize (1 MiB);
	// values below 1 KiB are raised to 1 KiB. Each gzip span keeps a
	// window of up to 32 KiB, so small spans make large indexes.
	SpanSize int64

	// Progress, when set, is called by [BuildLayer] each time a span has
	// been indexed, with a snapshot of the table so far: the spans done
	// (with their windows and digests), TarSize the end of the last of them,
	// and every entry whose content lies before that end, in tar order.
	// Digest, DiffID and Size are not set: nothing has been verified yet.
	// Calls come one at a time; the snapshot is immutable.
	Progress func(*Table)

	// Logger receives a Debug record for every tar entry that is skipped.
	// Nil discards them.
	Logger *slog.Logger

	// onEntry, when set, is told of every entry the table keeps (for
	// Progress).
	onEntry func(Entry)
}

// withDefaults returns o with every zero cap replaced by its default.
func (o Options) withDefaults() Options {
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxNameLen <= 0 {
		o.MaxNameLen = DefaultMaxNameLen
	}
	if o.MaxXattrBytes <= 0 {
		o.MaxXattrBytes = DefaultMaxXattrBytes
	}
	if o.MaxSparseSegments <= 0 {
		o.MaxSparseSegments = DefaultMaxSparseSegments
	}
	if o.MaxTarSize <= 0 {
		o.MaxTarSize = DefaultMaxTarSize
	}
	if o.SpanSize <= 0 {
		o.SpanSize = DefaultSpanSize
	}
	o.SpanSize = max(o.SpanSize, minSpanSize)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Build reads the uncompressed tar stream r of one layer and returns its entry
// table, in tar order.
//
// Build streams: file contents are skipped, never held in memory. It reads r
// to io.EOF, past the end-of-archive marker, so that Table.DiffID (the sha256
// of every byte of r) and Table.TarSize cover the whole stream and a
// decompressor underneath gets to check its trailing checksum. Table.Digest
// and Table.Size describe the compressed blob, which Build never sees; the
// caller sets them.
//
// Entries follow the rules documented on [Entry] and in the package
// documentation: names cleaned so they cannot leave the root, whiteouts and
// opaque markers turned into their own types, PAX and GNU extensions folded
// in. Several entries may share a path; they are kept in tar order and the
// union lets the later one win.
//
// Errors caused by the bytes of r (malformed or truncated tar, old-GNU
// sparse files, unknown entry types, a cap exceeded) wrap [ErrFormat]; an error returned by
// r itself is passed on wrapped with the offset it happened at. Build never
// panics, whatever r holds.
func Build(r io.Reader, opts Options) (*Table, error) {
	opts = opts.withDefaults()
	src := &tarSource{r: r, hash: sha256.New(), max: opts.MaxTarSize}
	b := &builder{opts: opts, src: src}
	tr := tar.NewReader(src)
	for {
		// Keep the header bytes archive/tar is about to read, from where the
		// entry before ends: a 1.0 sparse map is among them (sparse.go).
		src.record(b.dataEnd)
		hdr, err := tr.Next()
		src.recording = false
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			// Only reported with GODEBUG=tarinsecurepath=0; names are
			// cleaned below, so such paths are harmless here.
			err = nil
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, b.readError(err)
		}
		// archive/tar reads headers in whole 512-byte blocks and never
		// reads ahead into the data (beyond a 1.0 sparse map), so the count
		// is the data offset.
		b.dataEnd = -1
		if err := b.add(hdr, src.n); err != nil {
			return nil, err
		}
		if b.dataEnd < 0 {
			// Not sparse: read the data through archive/tar, which
			// would skip it in the next Next anyway, to learn where it
			// ends. (A sparse entry's end is known from its map; reading
			// it would expand the holes.)
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return nil, b.readError(err)
			}
			b.dataEnd = src.n
		}
	}
	// Read what follows the end-of-archive marker (usually zero padding to
	// a record boundary) so the digest and size cover the whole stream.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return nil, b.readError(err)
	}
	return &Table{
		DiffID:  digest.NewDigestFromBytes(digest.SHA256, src.hash.Sum(nil)),
		TarSize: src.n,
		Entries: b.entries,
	}, nil
}

// builder accumulates the entries of one Build.
type builder struct {
	opts    Options
	src     *tarSource
	entries []Entry

	dataEnd    int64 // stream offset where the current entry's data ends; -1 until known
	sparseSegs int   // data segments of the sparse files so far
}

// add converts hdr, whose data starts at off, and appends the entry unless
// the header has no file meaning.
func (b *builder) add(hdr *tar.Header, off int64) error {
	e, keep, err := b.entry(hdr, off)
	if err != nil {
		return err
	}
	if !keep {
		return nil
	}
	if len(b.entries) >= b.opts.MaxEntries {
		return formatErrorf("layer has more than %d entries; set Options.MaxEntries to raise the cap", b.opts.MaxEntries)
	}
	b.entries = append(b.entries, e)
	if b.opts.onEntry != nil {
		b.opts.onEntry(e)
	}
	return nil
}

// skip logs a header that produces no entry.
func (b *builder) skip(hdr *tar.Header, reason string) {
	b.opts.Logger.Debug("skipping tar entry",
		"path", shortName(hdr.Name), "typeflag", string(rune(hdr.Typeflag)), "reason", reason)
}

// readError classifies an error met while reading the tar stream.
func (b *builder) readError(err error) error {
	off := b.src.n
	if b.src.err != nil {
		if errors.Is(b.src.err, ErrFormat) {
			return b.src.err
		}
		return fmt.Errorf("reading tar stream at offset %d: %w", off, b.src.err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return formatErrorf("tar stream truncated at offset %d, after %d entries", off, len(b.entries))
	}
	return fmt.Errorf("%w: tar stream at offset %d, after %d entries: %w", ErrFormat, off, len(b.entries), err)
}

// tarSource is the reader archive/tar reads from: it counts and hashes every
// byte of the stream and stops the stream at the size cap. archive/tar does
// not report offsets, so the count is how Build finds them.
type tarSource struct {
	r    io.Reader
	hash hash.Hash
	n    int64 // bytes read so far
	max  int64 // the size cap
	err  error // first error other than io.EOF: from r, or the size cap

	// While recording, rec holds the bytes of the stream from offset
	// recFrom on, up to maxHeaderBytes (recLost once more went by).
	recording bool
	recFrom   int64
	rec       []byte
	recLost   bool
}

// record starts keeping the bytes from stream offset from on, dropping
// those kept before.
func (s *tarSource) record(from int64) {
	s.recording, s.recFrom, s.rec, s.recLost = true, from, s.rec[:0], false
}

func (s *tarSource) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	// Let one byte past the cap through, so that reaching it exactly is
	// not an error but exceeding it is.
	if rem := s.max - s.n; rem < int64(len(p))-1 {
		p = p[:rem+1]
	}
	n, err := s.r.Read(p)
	if n < 0 || n > len(p) {
		// A broken reader; do not let it index out of range below.
		s.err = fmt.Errorf("reader returned %d bytes for a %d-byte buffer", n, len(p))
		return 0, s.err
	}
	s.hash.Write(p[:n])
	if s.recording && !s.recLost && s.n+int64(n) > s.recFrom {
		keep := p[max(s.recFrom-s.n, 0):n]
		if len(s.rec)+len(keep) > maxHeaderBytes {
			s.recLost = true
		} else {
			s.rec = append(s.rec, keep...)
		}
	}
	s.n += int64(n)
	if s.n > s.max {
		s.err = formatErrorf("decompressed size exceeds %d bytes; set Options.MaxTarSize to raise the cap", s.max)
		return n, s.err
	}
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}
