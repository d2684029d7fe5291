package fetch

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxRangeSize caps one FetchRange; spans and chunks are far smaller.
const maxRangeSize = 1 << 30

// Image is a resolved image: its verified manifest and config, and the
// source its blobs come from. It is immutable and safe for concurrent use.
type Image struct {
	// Ref is the reference as resolved, fully qualified
	// ("index.docker.io/library/alpine:3.20", "oci:/path:tag").
	Ref               string
	ManifestDigest    digest.Digest
	ManifestMediaType string
	// Manifest is the image manifest; Docker schema 2 manifests are parsed
	// into it too, their media types kept as given.
	Manifest ocispec.Manifest
	// IndexDigest is the digest of the image index the manifest was
	// narrowed from, "" if the reference named a manifest.
	IndexDigest  digest.Digest
	Config       ocispec.Image
	ConfigDigest digest.Digest

	manifestBytes []byte
	configBytes   []byte
	src           source
	c             *Client
}

// Layers returns the manifest's layer descriptors, lowest first.
func (im *Image) Layers() []ocispec.Descriptor { return im.Manifest.Layers }

// ManifestBytes returns the raw manifest, verified against ManifestDigest.
func (im *Image) ManifestBytes() []byte { return im.manifestBytes }

// ConfigBytes returns the raw config, verified against ConfigDigest.
func (im *Image) ConfigBytes() []byte { return im.configBytes }

// Source names where the image's blobs come from: "HOST/REPO" or "oci:/dir".
func (im *Image) Source() string { return im.src.String() }

// attempts is how often a blob read is tried: files on disk get one try.
func (im *Image) attempts() int {
	if _, ok := im.src.(*layoutSource); ok {
		return 1
	}
	return im.c.maxAttempts
}

func (im *Image) blobWhat(d digest.Digest) string {
	return fmt.Sprintf("blob %s from %s", d, im.src)
}

// OpenBlob streams a whole blob in order. The reader verifies size and
// digest as it goes: a Read that reaches the end returns io.EOF only if the
// bytes match desc.Digest and desc.Size; otherwise it returns a
// *DigestError or a size error wrapping ErrFormat, never a clean EOF. More
// bytes than desc.Size is an error as soon as they arrive. After a
// connection reset or stall mid-body it resumes with a Range request (whose
// 206 Content-Range is checked), up to Options.MaxAttempts opens. A blob
// already in the cache is read from there and verified again: a damaged
// copy is removed, and one of up to 4 MiB is checked before it is served and
// fetched again from the source instead. Bytes from the source are counted
// in Stats.
func (im *Image) OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := checkDescriptor("blob", desc); err != nil {
		return nil, err
	}
	r := &blobReader{
		ctx:  ctx,
		desc: desc,
		what: im.blobWhat(desc.Digest),
		h:    desc.Digest.Algorithm().Hash(),
		c:    im.c,
	}
	f, err := im.c.cache.Open(desc.Digest)
	if err == nil && desc.Size <= maxVerifyFirst {
		// A small blob (a config, a small layer) is checked before any of
		// it is handed out, so a copy damaged on disk can be dropped and
		// fetched again instead of failing the caller.
		if verr := im.c.cache.verifyDesc(f, desc); verr != nil {
			f.Close()
			im.c.log.Warn("cached blob damaged on disk; fetching it again", "digest", desc.Digest, "err", verr)
			im.c.cache.Remove(KindBlob, desc.Digest)
			err = verr
		}
	}
	if err == nil {
		r.what += " (cached)"
		// A larger blob is checked as it streams: if the cached copy
		// turns out bad, it is removed so the next open fetches it again.
		r.drop = func() {
			im.c.log.Warn("cached blob damaged on disk; removed", "digest", desc.Digest)
			im.c.cache.Remove(KindBlob, desc.Digest)
		}
		r.open = func(off int64) (io.ReadCloser, int64, error) {
			if off == 0 {
				return f, 0, nil
			}
			return sectionFile(f, off, -1), off, nil
		}
		r.maxOpens = 1
	} else {
		r.open = func(off int64) (io.ReadCloser, int64, error) {
			return im.src.blob(ctx, desc, off, -1)
		}
		r.blame = func(from []*endpoint, err error) bool {
			return im.elsewhere(ctx, desc.Digest, from, err)
		}
		r.count = true
		r.maxOpens = im.attempts()
	}
	// Open eagerly so that "not found" and "unauthorized" surface here.
	if err := r.reopen(); err != nil {
		return nil, err
	}
	return r, nil
}

// maxVerifyFirst is the size up to which OpenBlob verifies a cached blob
// before serving it.
const maxVerifyFirst = 4 << 20

// verifyDesc checks that f holds exactly desc's bytes and rewinds it.
func (c *Cache) verifyDesc(f *os.File, desc ocispec.Descriptor) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("cache: blob %s: %w", desc.Digest, err)
	}
	if fi.Size() != desc.Size {
		return formatError("cache: blob %s: %d bytes, want %d", desc.Digest, fi.Size(), desc.Size)
	}
	if err := c.Verify(f, desc.Digest); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("cache: blob %s: %w", desc.Digest, err)
	}
	return nil
}

// blobReader is the verifying, resuming reader behind OpenBlob.
type blobReader struct {
	ctx      context.Context
	desc     ocispec.Descriptor
	what     string
	h        hash.Hash
	c        *Client
	open     func(off int64) (io.ReadCloser, int64, error)
	count    bool // count bytes in Stats (false for the cache)
	maxOpens int
	drop     func() // removes a bad cached copy; nil when reading the source
	// blame is told, when the bytes fail their digest or size, which hosts
	// sent them; it reports whether opening the blob again would ask other
	// hosts (then elsewhere is set). nil for the cache.
	blame     func(from []*endpoint, err error) bool
	from      []*endpoint
	elsewhere bool

	body  io.ReadCloser
	skip  int64 // bytes to discard from body before pos (the source ignored Range)
	pos   int64 // bytes delivered and hashed
	opens int
	err   error // sticky: io.EOF after a verified end, or the failure
}

// reopen opens the body at pos.
func (r *blobReader) reopen() error {
	if r.opens >= r.maxOpens {
		return fmt.Errorf("%s: gave up after %d attempts at byte %d of %d", r.what, r.opens, r.pos, r.desc.Size)
	}
	if r.opens > 0 {
		if err := r.c.sleep(r.ctx, backoff(r.opens)); err != nil {
			return err
		}
	}
	r.opens++
	body, start, err := r.open(r.pos)
	if err != nil {
		return err
	}
	servedBy(&r.from, body)
	r.body, r.skip = body, r.pos-start
	return nil
}

// fail records a sticky error and closes the body.
func (r *blobReader) fail(err error) error {
	r.err = err
	if r.drop != nil && errors.Is(err, ErrFormat) {
		r.drop()
		r.drop = nil
	}
	if r.blame != nil && errors.Is(err, ErrFormat) {
		r.elsewhere = r.blame(r.from, err)
		r.blame = nil
	}
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	return err
}

// readBody reads from the body, first discarding bytes the source sent
// again because it ignored the Range header.
func (r *blobReader) readBody(p []byte) (int, error) {
	for r.skip > 0 {
		n, err := io.CopyN(io.Discard, r.body, r.skip)
		r.skip -= n
		if r.count {
			r.c.stats.addBlob(r.desc.Digest, n)
			countBytes(r.ctx, n)
		}
		if err != nil {
			return 0, err
		}
	}
	n, err := r.body.Read(p)
	if r.count {
		r.c.stats.addBlob(r.desc.Digest, int64(n))
		countBytes(r.ctx, int64(n))
	}
	return n, err
}

// finish checks the digest once all desc.Size bytes have arrived.
func (r *blobReader) finish() error {
	got := digest.NewDigest(r.desc.Digest.Algorithm(), r.h)
	if got != r.desc.Digest {
		return r.fail(&DigestError{What: r.what, Want: r.desc.Digest, Got: got})
	}
	return r.fail(io.EOF)
}

func (r *blobReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if err := r.ctx.Err(); err != nil {
			return 0, r.fail(fmt.Errorf("%s: %w", r.what, err))
		}
		if r.body == nil {
			if err := r.reopen(); err != nil {
				return 0, r.fail(err)
			}
		}
		remaining := r.desc.Size - r.pos
		if remaining == 0 {
			// Everything declared has arrived; the body must end here.
			var one [1]byte
			n, err := r.readBody(one[:])
			if n > 0 {
				return 0, r.fail(sizeError(r.what, r.desc.Size, r.pos+1, true))
			}
			if err == nil {
				continue
			}
			// EOF, or a connection error after the last byte: the digest
			// decides.
			return 0, r.finish()
		}
		// Ask for one byte more than remains, to see an overlong body.
		q := p
		if int64(len(q)) > remaining+1 {
			q = q[:remaining+1]
		}
		n, err := r.readBody(q)
		if int64(n) > remaining {
			return 0, r.fail(sizeError(r.what, r.desc.Size, r.pos+int64(n), true))
		}
		r.h.Write(q[:n])
		r.pos += int64(n)
		if err == nil {
			return n, nil
		}
		if err == io.EOF && r.pos == r.desc.Size {
			return n, nil // the next Read sees EOF and verifies
		}
		if r.ctx.Err() != nil {
			return n, r.fail(fmt.Errorf("%s: %w", r.what, r.ctx.Err()))
		}
		if err != io.EOF && !retryableError(err) {
			return n, r.fail(fmt.Errorf("%s: read at byte %d: %w", r.what, r.pos, err))
		}
		// A reset, a stall or a body cut short: resume at pos.
		r.body.Close()
		r.body = nil
		if r.opens >= r.maxOpens {
			if err == io.EOF {
				return n, r.fail(sizeError(r.what, r.desc.Size, r.pos, false))
			}
			return n, r.fail(fmt.Errorf("%s: read at byte %d of %d, %d attempts: %w", r.what, r.pos, r.desc.Size, r.opens, err))
		}
		r.c.log.Warn("resuming blob", "digest", r.desc.Digest, "off", r.pos, "attempt", r.opens, "err", err)
		if n > 0 {
			return n, nil
		}
	}
}

func (r *blobReader) Close() error {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	if r.err == nil {
		r.err = fmt.Errorf("%s: read after Close", r.what)
	}
	return nil
}

// FetchUnchecked returns blob bytes [off, off+n) as the source sends them,
// unchecked, resuming a body cut short like FetchRange. It is for a caller
// that checks the digest of the whole blob these bytes are part of before
// it uses any of them: the background fetch of a layer, assembled from
// spans already verified and the bytes between them.
func (im *Image) FetchUnchecked(ctx context.Context, desc ocispec.Descriptor, off, n int64) ([]byte, error) {
	what := fmt.Sprintf("%s range %d+%d", im.blobWhat(desc.Digest), off, n)
	if err := checkDescriptor("blob", desc); err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || n > maxRangeSize || off > desc.Size-n {
		return nil, fmt.Errorf("%s: outside the blob's %d bytes (or over %d)", what, desc.Size, maxRangeSize)
	}
	buf := make([]byte, n)
	if _, _, err := im.readRange(ctx, desc, off, buf, what, nil); err != nil {
		return nil, err
	}
	return buf, nil
}

// FetchRange returns blob bytes [off, off+n) and checks that their digest
// equals want (a span or chunk digest the caller knows from a verified
// index or TOC) before returning them; a mismatch is a *DigestError. A
// source that ignores the Range header still yields the right bytes (the
// prefix is discarded), and a body cut short is resumed after the bytes
// received. A blob already in the cache is read from there.
func (im *Image) FetchRange(ctx context.Context, desc ocispec.Descriptor, off, n int64, want digest.Digest) ([]byte, error) {
	what := fmt.Sprintf("%s range %d+%d", im.blobWhat(desc.Digest), off, n)
	if err := want.Validate(); err != nil {
		return nil, fmt.Errorf("%s: want digest %q: %w", what, want, err)
	}
	if err := checkDescriptor("blob", desc); err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || n > maxRangeSize || off > desc.Size-n {
		return nil, fmt.Errorf("%s: outside the blob's %d bytes (or over %d)", what, desc.Size, maxRangeSize)
	}
	buf := make([]byte, n)
	for {
		var from []*endpoint
		_, cached, err := im.readRange(ctx, desc, off, buf, what, &from)
		if err != nil {
			return nil, err
		}
		w := what
		if cached {
			w += " (cached)"
		}
		err = verifyBytes(w, want, buf)
		if err == nil {
			return buf, nil
		}
		var de *DigestError
		if errors.As(err, &de) {
			de.Offset = off
		}
		// Bytes from a mirror that do not match: ask the next host.
		if cached || !im.elsewhere(ctx, desc.Digest, from, err) {
			return nil, err
		}
	}
}
