package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// DefaultSpanCacheBytes bounds the decoded spans and chunks an image keeps in
// memory (pieceCache).
const DefaultSpanCacheBytes = 64 << 20

// maxRunSpans bounds how many adjacent missing spans one Range request asks
// for, so one read cannot turn into a fetch of the whole layer.
const maxRunSpans = 8

// partsFetcher fetches parts of a blob, each checked against its digest, in
// as few Range requests as it can (fetch.Image).
type partsFetcher interface {
	FetchParts(ctx context.Context, desc ocispec.Descriptor, parts []fetch.Part) ([][]byte, []error)
}

// spanReader serves a layer whose table has spans (gzip or plain tar) span
// by span: each span's compressed bytes come from the cached blob, the disk
// cache or a Range GET, and are checked against the span's digest before
// they are decoded: no byte of an unverified range is served. A read that
// continues a sequential stream also starts fetching the spans ahead of it,
// up to the end of its file (readahead.go), before it waits for its own.
type spanReader struct {
	l     *layer
	t     *index.Table // the table in use, without its entries
	parts partsFetcher
}

func (r *spanReader) readAt(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	if end := min(off+int64(len(p)), r.t.TarSize); off < end {
		r.readAhead(off, end, fileEnd)
	}
	return r.l.readPieces(ctx, r.set(), p, off)
}

func (r *spanReader) fill(ctx context.Context) (*os.File, error) { return r.l.fillWhole(ctx) }

// set returns the spans of the table in use, read from the layer's blob
// once it is complete.
func (r *spanReader) set() spanSet {
	return spanSet{l: r.l, t: r.t, blob: readerOf(r.l.complete()), parts: r.parts, keepFetched: true}
}

// readerOf returns f as an io.ReaderAt, nil for none.
func readerOf(f *os.File) io.ReaderAt {
	if f == nil {
		return nil
	}
	return f
}

// withoutEntries returns a copy of t without its entries: what reading
// its bytes needs.
func withoutEntries(t *index.Table) *index.Table {
	c := *t
	c.Entries = nil
	return &c
}

// spanSet is the spans of a table (pieces.go).
type spanSet struct {
	l        *layer
	t        *index.Table
	verified bool        // t is the table built from the verified blob (disagree.go)
	blob     io.ReaderAt // holds the blob's bytes, or nil
	// held, when set, reports whether blob holds the bytes up to end (a
	// stream's temp file, progressive.go).
	held        func(end int64) bool
	parts       partsFetcher
	keepFetched bool // write spans fetched from the registry to the disk cache
	ahead       bool // fetched ahead of a sequential reader (readahead.go), for Stats.FetchedFor
}

func (s spanSet) size() int64                 { return s.t.TarSize }
func (s spanSet) pieceFor(off int64) int      { return s.t.SpanFor(off) }
func (s spanSet) bounds(i int) (int64, int64) { return s.t.Spans[i].U, s.t.SpanEnd(i) }
func (s spanSet) key() pieceKey               { return pieceKey{blob: s.l.desc.Digest, verified: s.verified} }
func (s spanSet) join(_, _, n int) bool       { return n < maxRunSpans }

func (s spanSet) file(i int) io.ReaderAt {
	if s.held != nil && !s.held(s.t.Spans[i].CEnd) {
		return nil
	}
	return s.blob
}

func (s spanSet) fromFile(f io.ReaderAt, i int) ([]byte, error) {
	sp := s.t.Spans[i]
	b, err := readRange(f, sp.C, sp.CEnd)
	if err != nil {
		return nil, fmt.Errorf("cached blob: %w", err)
	}
	return b, checkSpan(b, sp.Digest)
}

func (s spanSet) disk(i int) (digest.Digest, int64, string) {
	sp := s.t.Spans[i]
	return sp.Digest, sp.CEnd - sp.C, "span"
}

// fetch gets the missing spans with one FetchParts call: each checked
// against its digest.
func (s spanSet) fetch(ctx context.Context, run, missing []int, out []pieceBytes, _ bool) {
	l := s.l
	if s.ahead {
		ctx = l.im.countFetched(ctx, forReadAhead)
	} else {
		ctx = l.im.countFetched(ctx, forReader)
	}
	parts := make([]fetch.Part, len(missing))
	for k, n := range missing {
		sp := s.t.Spans[run[n]]
		parts[k] = fetch.Part{Off: sp.C, N: sp.CEnd - sp.C, Digest: sp.Digest}
	}
	if err := l.im.fetchSem.Acquire(ctx); err != nil {
		for _, n := range missing {
			out[n].err = err
		}
		return
	}
	// A registry index read piece by piece: the spans' windows come from
	// the index blob, in a request beside the spans' own.
	var windows sync.WaitGroup
	if li := l.lazy; li != nil && !s.verified {
		spans := make([]int, len(missing))
		for k, n := range missing {
			spans[k] = run[n]
		}
		windows.Go(func() { li.prefetch(ctx, spans) })
	}
	data, errs := s.parts.FetchParts(ctx, l.desc, parts)
	windows.Wait()
	l.im.fetchSem.Release()
	for k, n := range missing {
		l.im.miss(kindSpan)
		out[n] = pieceBytes{raw: data[k], err: errs[k], fetched: errs[k] == nil}
	}
}

func (s spanSet) decode(i int, raw []byte) ([]byte, error) { return index.DecodeSpan(s.t, i, raw) }

func (s spanSet) failure(i int, err error) error {
	sp := s.t.Spans[i]
	what := "span"
	if s.verified {
		what = "verified span"
	}
	return fmt.Errorf("%s %d (bytes %d-%d): %w", what, i, sp.C, sp.CEnd, err)
}

// keep writes the compressed bytes of the spans fetched from the registry
// (the decoded ones went to the piece cache) to the disk cache
// (keepVerified).
func (s spanSet) keep(run []int, out []pieceBytes) {
	if !s.keepFetched {
		return
	}
	var fetched []keptSpan
	for n, i := range run {
		if r := out[n]; r.fetched && r.err == nil {
			fetched = append(fetched, keptSpan{s.t.Spans[i].Digest, r.raw})
		}
	}
	s.l.keepVerified(fetched, "span")
}

// keepVerified writes verified pieces (what names them, for messages) to
// the disk cache in the background: an fsync each. At most
// cap(Image.keeping) runs wait to be written; a run beyond that is not kept
// (a later read fetches it again).
func (l *layer) keepVerified(fetched []keptSpan, what string) {
	if len(fetched) == 0 {
		return
	}
	select {
	case l.im.keeping <- struct{}{}:
	default:
		return // the disk is behind: do not pile spans up in memory
	}
	l.im.bg.Go(func() error {
		defer func() { <-l.im.keeping }()
		cache := l.im.client.Cache()
		for _, k := range fetched {
			if err := cache.Put(k.digest, bytes.NewReader(k.b)); err != nil {
				l.im.log.Warn("caching "+what, "layer", l.desc.Digest, "digest", k.digest, "err", err)
			}
		}
		return nil
	})
}

// keptSpan is a verified span's compressed bytes, to be written to the
// disk cache.
type keptSpan struct {
	digest digest.Digest
	b      []byte
}

// cachedPiece returns a span's compressed bytes or a chunk's uncompressed
// ones, size bytes with digest d, from the disk cache, checked again (the
// cache admitted them verified, but the disk may have changed since), or
// nil. A file of another size is not read: an index or TOC may name any
// digest for a piece, even that of a config or a whole layer in the cache.
// One that fails its digest is removed, and fetched again by the caller.
func (l *layer) cachedPiece(d digest.Digest, size int64, what string) []byte {
	cache := l.im.client.Cache()
	b, err := readCached(cache, d, size)
	if err == nil {
		return b
	}
	if !errors.Is(err, fetch.ErrNotFound) && !errors.Is(err, errOtherSize) {
		l.im.log.Warn("cached "+what+" unusable; fetching it again", "layer", l.desc.Digest, "digest", d, "err", err)
		cache.Remove(fetch.KindBlob, d)
	}
	return nil
}

// errOtherSize: the cached file named by a piece's digest is not its size.
var errOtherSize = errors.New("cached file of another size")

// readCached reads cached blob d, which must be size bytes, and checks it
// against d.
func readCached(c *fetch.Cache, d digest.Digest, size int64) ([]byte, error) {
	f, err := c.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() != size {
		return nil, errOtherSize
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, checkSpan(b, d)
}

func checkSpan(b []byte, want digest.Digest) error {
	sum := sha256.Sum256(b)
	if got := digest.NewDigestFromBytes(digest.SHA256, sum[:]); got != want {
		return &fetch.DigestError{What: "span", Want: want, Got: got}
	}
	return nil
}

// semaphore bounds concurrent Range requests; acquiring gives way to ctx.
type semaphore chan struct{}

func (s semaphore) Acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s semaphore) Release() { <-s }
