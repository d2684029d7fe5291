package fs

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// DefaultSpanCacheBytes bounds the decoded spans an image keeps in memory.
const DefaultSpanCacheBytes = 64 << 20

// maxRunSpans bounds how many adjacent missing spans one Range request asks
// for, so one read cannot turn into a fetch of the whole layer.
const maxRunSpans = 8

// spanKey names one span of one layer of an image.
type spanKey struct{ layer, span int }

// spanLRU keeps recently decoded spans, so sequential reads of a file decode
// each span once.
type spanLRU struct {
	max int64

	// mu guards everything below.
	mu    sync.Mutex
	size  int64
	order *list.List // of *spanEntry, most recent at the front
	byKey map[spanKey]*list.Element
}

type spanEntry struct {
	key  spanKey
	data []byte
}

func newSpanLRU(max int64) *spanLRU {
	return &spanLRU{max: max, order: list.New(), byKey: map[spanKey]*list.Element{}}
}

func (c *spanLRU) get(k spanKey) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[k]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*spanEntry).data
	}
	return nil
}

// has reports whether span k is decoded, without making it more recent.
func (c *spanLRU) has(k spanKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.byKey[k]
	return ok
}

func (c *spanLRU) put(k spanKey, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[k]; ok {
		return
	}
	c.byKey[k] = c.order.PushFront(&spanEntry{k, data})
	c.size += int64(len(data))
	for c.size > c.max && c.order.Len() > 1 {
		e := c.order.Back()
		se := e.Value.(*spanEntry)
		c.order.Remove(e)
		delete(c.byKey, se.key)
		c.size -= int64(len(se.data))
	}
}

// spanFetch is one span being fetched and decoded; readers that need the
// same span wait for it instead of fetching it again.
type spanFetch struct {
	done chan struct{}
	data []byte
	err  error
}

// readSpans serves uncompressed tar bytes [off, off+len(p)) of a layer whose
// table has spans. Each span's compressed bytes come from the cached blob,
// the span cache or a Range GET, and are checked against the span's digest
// before they are decoded: no byte of an unverified range is served. A read
// that continues a sequential stream also starts fetching the spans ahead of
// it, up to the end of its file at fileEnd (readahead.go), before it waits
// for its own.
func (l *layer) readSpans(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	t := l.table
	end := min(off+int64(len(p)), t.TarSize)
	if off >= end {
		return 0, io.EOF
	}
	l.readAhead(off, end, fileEnd)
	first, last := t.SpanFor(off), t.SpanFor(end-1)
	n := 0
	for i := first; i <= last; i++ {
		data, err := l.span(ctx, i, last)
		if err != nil {
			return n, err
		}
		lo := max(off, t.Spans[i].U) - t.Spans[i].U
		hi := min(end, t.SpanEnd(i)) - t.Spans[i].U
		n += copy(p[n:], data[lo:hi])
	}
	return n, nil
}

// span returns the decoded bytes of span i. When it has to fetch, it also
// fetches the missing spans after i up to last, in one request.
func (l *layer) span(ctx context.Context, i, last int) ([]byte, error) {
	k := spanKey{l.idx, i}
	if data := l.im.spans.get(k); data != nil {
		l.im.cacheHits.Add(1)
		return data, nil
	}
	f, run := l.claim(i, last, func(_, n int) bool { return n < maxRunSpans })
	if run != nil {
		l.fetchRun(run)
	}
	return f.wait(ctx)
}

// claim returns the fetch of piece i (a span or a chunk) of the layer. When
// nobody fetches it yet, it also claims i and the adjacent pieces after it,
// up to last, that nobody holds, that are not decoded already and that
// join(j, n) admits (n: pieces claimed so far), and returns them as run:
// the caller fetches them and releases the claims.
func (l *layer) claim(i, last int, join func(j, n int) bool) (f *spanFetch, run []int) {
	l.fmu.Lock()
	defer l.fmu.Unlock()
	if f, waiting := l.fetching[i]; waiting {
		return f, nil
	}
	// A fetch that ended since the caller looked in the LRU put its piece
	// there before dropping its claim: look again under the lock, or the
	// piece would be fetched twice.
	if data := l.im.spans.get(spanKey{l.idx, i}); data != nil {
		f := &spanFetch{done: make(chan struct{}), data: data}
		close(f.done)
		return f, nil
	}
	for j := i; j <= last && (j == i || join(j, len(run))); j++ {
		if _, busy := l.fetching[j]; busy || (j > i && l.im.spans.get(spanKey{l.idx, j}) != nil) {
			break
		}
		l.fetching[j] = &spanFetch{done: make(chan struct{})}
		run = append(run, j)
	}
	return l.fetching[i], run
}

// release publishes the result of each claimed piece of run to its waiters
// and drops the claims.
func (l *layer) release(run []int, results []spanBytes) {
	l.fmu.Lock()
	defer l.fmu.Unlock()
	for n, i := range run {
		f := l.fetching[i]
		f.data, f.err = results[n].data, results[n].err
		delete(l.fetching, i)
		close(f.done)
	}
}

// wait returns the fetch's result, or ctx's error if that ends first.
func (f *spanFetch) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fetchRun gets, verifies and decodes the spans of run, publishes each
// result to its waiters and the LRU, and releases the claims. The fetch runs
// on the image's context, not the reader's: another reader may be waiting
// for the same span after this one gives up. Each span is released as soon
// as it is decoded, so a reader waiting for the first span of a long run
// does not wait for the others to decode, nor for the disk cache: spans
// fetched from the registry are written there (an fsync each) in the
// background, after their waiters have them.
func (l *layer) fetchRun(run []int) {
	results := l.compressedSpans(l.im.ctx, run)
	defer func() {
		var fetched []keptSpan // the compressed bytes only: the decoded ones go to the LRU
		for n, i := range run {
			if r := results[n]; r.fetched && r.err == nil {
				fetched = append(fetched, keptSpan{l.table.Spans[i].Digest, r.compressed})
			}
		}
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
			l.keep(fetched)
			return nil
		})
	}()
	// Decode outside the lock: other readers of the layer claim spans under it.
	for n, i := range run {
		r := &results[n]
		if r.err == nil {
			r.data, r.err = index.DecodeSpan(l.table, i, r.compressed)
		}
		if r.err != nil {
			r.err = l.failed(fmt.Errorf("span %d (bytes %d-%d): %w", i, l.table.Spans[i].C, l.table.Spans[i].CEnd, r.err))
		} else {
			l.im.spans.put(spanKey{l.idx, i}, r.data)
		}
		l.release(run[n:n+1], results[n:n+1])
	}
}

type spanBytes struct {
	data []byte
	err  error

	compressed []byte // the verified compressed bytes data was decoded from
	fetched    bool   // compressed came from the registry: keep it in the disk cache
}

// keptSpan is a verified span's compressed bytes, to be written to the
// disk cache.
type keptSpan struct {
	digest digest.Digest
	b      []byte
}

// keep writes spans fetched from the registry to the disk cache. At most
// cap(Image.keeping) runs wait to be written; a run beyond that is not kept
// (a later read fetches it again).
func (l *layer) keep(spans []keptSpan) {
	cache := l.im.client.Cache()
	for _, k := range spans {
		if err := cache.Put(k.digest, bytes.NewReader(k.b)); err != nil {
			l.im.log.Warn("caching span", "layer", l.desc.Digest, "digest", k.digest, "err", err)
		}
	}
}

// compressedSpans returns the verified compressed bytes of each span of run
// (in compressed): from the layer's cached blob, the disk cache, or one Range
// GET for all the spans found in neither (marked fetched; keep caches them).
func (l *layer) compressedSpans(ctx context.Context, run []int) []spanBytes {
	out := make([]spanBytes, len(run))
	var missing []int // positions in run
	blob := l.blobFile()
	for n, i := range run {
		sp := l.table.Spans[i]
		if blob != nil {
			b := make([]byte, sp.CEnd-sp.C)
			if _, err := blob.ReadAt(b, sp.C); err != nil {
				out[n].err = fmt.Errorf("cached blob: %w", err)
				continue
			}
			out[n] = spanBytes{compressed: b, err: checkSpan(b, sp.Digest)}
			l.im.cacheHits.Add(1)
			continue
		}
		if b := l.cachedPiece(sp.Digest, sp.CEnd-sp.C, "span"); b != nil {
			out[n].compressed = b
			l.im.cacheHits.Add(1)
			continue
		}
		missing = append(missing, n)
	}
	if len(missing) == 0 {
		return out
	}
	parts := make([]fetch.Part, len(missing))
	for k, n := range missing {
		sp := l.table.Spans[run[n]]
		parts[k] = fetch.Part{Off: sp.C, N: sp.CEnd - sp.C, Digest: sp.Digest}
	}
	defer l.im.fg.begin()()
	if err := l.im.fetchSem.Acquire(ctx); err != nil {
		for _, n := range missing {
			out[n].err = err
		}
		return out
	}
	data, errs := l.im.img.FetchParts(ctx, l.desc, parts)
	l.im.fetchSem.Release()
	for k, n := range missing {
		l.im.cacheMisses.Add(1)
		out[n] = spanBytes{compressed: data[k], err: errs[k], fetched: errs[k] == nil}
	}
	return out
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
