package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Part is one piece of a blob range with the digest its bytes must have:
// bytes [Off, Off+N) of the blob.
type Part struct {
	Off, N int64
	Digest digest.Digest
}

// FetchParts reads the parts of a blob with one Range GET of their union
// [parts[0].Off, max(Off+N)) (gaps between parts are fetched and dropped),
// verifies each part against its Digest and returns, for each part i,
// data[i] and errs[i]: the part's bytes with a nil error, or nil bytes and
// the reason. Both slices always have len(parts) entries.
//
// Parts must be sorted by Off and lie within desc.Size; they may touch or
// overlap. A part whose bytes do not match is a *DigestError whose Offset
// is the part's Off; the parts that match are still returned. After a
// connection reset or stall mid-body the request resumes after the bytes
// already received (up to Options.MaxAttempts requests), and when the
// attempts run out the parts received in full are still verified and
// returned. A source that ignores Range still yields the right bytes. A
// blob already in the cache is read from there.
//
// The returned slices share one buffer (overlapping parts share bytes) and
// must not be modified.
func (im *Image) FetchParts(ctx context.Context, desc ocispec.Descriptor, parts []Part) (data [][]byte, errs []error) {
	for {
		var (
			from    []*endpoint
			cached  bool
			blamed  error
			retried bool
		)
		data, errs, cached = im.fetchParts(ctx, desc, parts, &from)
		for _, err := range errs {
			var de *DigestError
			if errors.As(err, &de) {
				if s, ok := im.src.(*chainSource); ok && !cached {
					nameHosts(de, from, s.name)
				}
				if blamed == nil {
					blamed = err
				}
			}
		}
		// A part from a mirror that does not match: ask the next host.
		if blamed != nil && !cached {
			retried = im.elsewhere(ctx, desc.Digest, from, blamed)
		}
		if !retried {
			return data, errs
		}
	}
}

// fetchParts is one try of FetchParts; from collects the hosts that sent
// bytes and cached says the cache did.
func (im *Image) fetchParts(ctx context.Context, desc ocispec.Descriptor, parts []Part, from *[]*endpoint) (data [][]byte, errs []error, cached bool) {
	data, errs = make([][]byte, len(parts)), make([]error, len(parts))
	if len(parts) == 0 {
		return data, errs, false
	}
	failAll := func(err error) ([][]byte, []error, bool) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return data, errs, false
	}
	lo, hi := parts[0].Off, int64(0)
	what := fmt.Sprintf("%s parts %d+", im.blobWhat(desc.Digest), lo)
	if err := checkDescriptor("blob", desc); err != nil {
		return failAll(err)
	}
	for i, p := range parts {
		if p.Off < 0 || p.N < 0 || p.Off > desc.Size-p.N {
			return failAll(fmt.Errorf("%s: part %d at %d+%d: outside the blob's %d bytes", what, i, p.Off, p.N, desc.Size))
		}
		if i > 0 && p.Off < parts[i-1].Off {
			return failAll(fmt.Errorf("%s: part %d at %d: parts not sorted by offset", what, i, p.Off))
		}
		if err := p.Digest.Validate(); err != nil {
			errs[i] = fmt.Errorf("%s: part at %d+%d: want digest %q: %w", what, p.Off, p.N, p.Digest, err)
		}
		hi = max(hi, p.Off+p.N)
	}
	if hi-lo > maxRangeSize {
		return failAll(fmt.Errorf("%s: union of %d bytes is over %d", what, hi-lo, maxRangeSize))
	}
	what = fmt.Sprintf("%s range %d+%d", im.blobWhat(desc.Digest), lo, hi-lo)
	buf := make([]byte, hi-lo)
	filled, cached, err := im.readRange(ctx, desc, lo, buf, what, from)
	if cached {
		what += " (cached)"
	}
	for i, p := range parts {
		if errs[i] != nil {
			continue
		}
		a, b := p.Off-lo, p.Off-lo+p.N
		if b > int64(filled) {
			errs[i] = err
			continue
		}
		part := buf[a:b:b]
		if verr := verifyBytes(fmt.Sprintf("%s: part at %d+%d", what, p.Off, p.N), p.Digest, part); verr != nil {
			var de *DigestError
			if errors.As(verr, &de) {
				de.Offset = p.Off
			}
			errs[i] = verr
			continue
		}
		data[i] = part
	}
	return data, errs, cached
}

// readRange fills buf with the blob's bytes from off, from the cache when
// the blob is there (cached is then true), else from the source with
// fillRange. It returns how many leading bytes of buf are filled; from
// (when not nil) collects the hosts that sent them.
func (im *Image) readRange(ctx context.Context, desc ocispec.Descriptor, off int64, buf []byte, what string, from *[]*endpoint) (filled int, cached bool, err error) {
	f, err := im.c.cache.Open(desc.Digest)
	if err == nil {
		n, err := f.ReadAt(buf, off)
		f.Close()
		if n == len(buf) {
			im.c.observeRange(RangeRead{Digest: desc.Digest, Bytes: int64(len(buf)), Cached: true})
			return n, true, nil
		}
		im.c.log.Warn("cached blob unreadable; fetching the range", "digest", desc.Digest, "off", off, "len", len(buf), "err", err)
	} else if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, ErrNotFound) {
		im.c.log.Warn("cache read failed", "digest", desc.Digest, "err", err)
	}
	start := time.Now()
	filled, err = im.fillRange(ctx, desc, off, buf, what, from)
	im.c.observeRange(RangeRead{Digest: desc.Digest, Bytes: int64(len(buf)), Duration: time.Since(start), Err: err})
	return filled, false, err
}

// fillRange fills buf with the blob's bytes from off. After a connection
// error or a body cut short it asks again for the bytes not yet received,
// up to im.attempts() requests. It returns how many leading bytes of buf
// are filled, and nil only when all are.
func (im *Image) fillRange(ctx context.Context, desc ocispec.Descriptor, off int64, buf []byte, what string, from *[]*endpoint) (int, error) {
	filled := 0
	for attempt := 1; ; attempt++ {
		n, err := im.readRangeOnce(ctx, desc, off+int64(filled), buf[filled:], from)
		filled += n
		if err == nil {
			return filled, nil
		}
		if ctx.Err() != nil {
			return filled, fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if !retryableError(err) {
			return filled, fmt.Errorf("%s: %w", what, err)
		}
		if attempt >= im.attempts() {
			return filled, fmt.Errorf("%s: %d attempts, %d of %d bytes received: %w", what, attempt, filled, len(buf), err)
		}
		im.c.log.Warn("resuming range", "digest", desc.Digest, "off", off+int64(filled), "len", len(buf)-filled, "attempt", attempt, "err", err)
		if err := im.c.sleep(ctx, backoff(attempt)); err != nil {
			return filled, fmt.Errorf("%s: %w", what, err)
		}
	}
}

// readRangeOnce reads the blob's bytes from off into buf with one request,
// and returns how many it got.
func (im *Image) readRangeOnce(ctx context.Context, desc ocispec.Descriptor, off int64, buf []byte, from *[]*endpoint) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	body, start, err := im.src.blob(ctx, desc, off, int64(len(buf)))
	if err != nil {
		return 0, err
	}
	servedBy(from, body)
	defer body.Close()
	if skip := off - start; skip > 0 {
		im.c.log.Debug("source ignored Range; discarding prefix", "digest", desc.Digest, "off", off)
		got, err := io.CopyN(io.Discard, body, skip)
		im.c.stats.addBlob(desc.Digest, got)
		countBytes(ctx, got)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	got, err := io.ReadFull(body, buf)
	im.c.stats.addBlob(desc.Digest, int64(got))
	countBytes(ctx, int64(got))
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return got, err
}
