package fs

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// A layer served piece by piece (the spans of a gzip or plain tar layer,
// spans.go; the chunks of an eStargz or zstd:chunked one, chunked.go; the
// spans a progressive stream has passed, progressive.go; the spans of the
// table built from a verified blob, disagree.go) is read by one algorithm,
// written once here: the read loop (readPieces), fetching one piece
// (piece), gathering the verified bytes of a run of pieces (gather) and
// decoding and publishing them (fetchRun). What differs between the modes
// is a pieceSet: where a piece lies in the tar and in the blob, under which
// digest the disk cache holds it, how its bytes are checked and decoded,
// and how the registry is asked for the missing ones.
//
// Every image has one pieceCache: the decoded pieces of all its layers in
// memory, least recently used dropped first, and the fetches in flight, so
// that readers needing one piece wait for one fetch.

// pieceKey names one decoded piece: piece i of blob, in its table in use or
// (verified) in the table built from its verified bytes.
type pieceKey struct {
	blob     digest.Digest
	verified bool
	i        int
}

// at returns the key of piece i of the same blob and table.
func (k pieceKey) at(i int) pieceKey { k.i = i; return k }

// pieceCache keeps recently decoded pieces, so sequential reads decode each
// piece once, and the fetches in flight.
type pieceCache struct {
	max int64

	// mu guards everything below. It is taken under readAhead.mu, never
	// the other way round, and nothing else is taken under it.
	mu       sync.Mutex
	size     int64
	order    *list.List // of *pieceEntry, most recent at the front
	byKey    map[pieceKey]*list.Element
	fetching map[pieceKey]*pieceFetch
}

type pieceEntry struct {
	key  pieceKey
	data []byte
}

// pieceFetch is one piece being fetched and decoded; readers that need the
// same piece wait for it instead of fetching it again.
type pieceFetch struct {
	done chan struct{}
	data []byte
	err  error
}

func newPieceCache(max int64) *pieceCache {
	return &pieceCache{max: max, order: list.New(), byKey: map[pieceKey]*list.Element{}, fetching: map[pieceKey]*pieceFetch{}}
}

func (c *pieceCache) get(k pieceKey) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.getLocked(k)
}

func (c *pieceCache) getLocked(k pieceKey) []byte {
	if e, ok := c.byKey[k]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*pieceEntry).data
	}
	return nil
}

// has reports whether piece k is decoded, without making it more recent.
func (c *pieceCache) has(k pieceKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.byKey[k]
	return ok
}

func (c *pieceCache) put(k pieceKey, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[k]; ok {
		return
	}
	c.byKey[k] = c.order.PushFront(&pieceEntry{k, data})
	c.size += int64(len(data))
	for c.size > c.max && c.order.Len() > 1 {
		e := c.order.Back()
		pe := e.Value.(*pieceEntry)
		c.order.Remove(e)
		delete(c.byKey, pe.key)
		c.size -= int64(len(pe.data))
	}
}

// claim returns the fetch of piece k. When nobody fetches it yet, it also
// claims k and the adjacent pieces after it, up to last, that nobody holds,
// that are not decoded already and that join(j, n) admits (n: pieces
// claimed so far), and returns their numbers as run: the caller fetches
// them and releases the claims.
func (c *pieceCache) claim(k pieceKey, last int, join func(j, n int) bool) (f *pieceFetch, run []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, waiting := c.fetching[k]; waiting {
		return f, nil
	}
	// A fetch that ended since the caller looked put its piece here before
	// dropping its claim: look again under the lock, or the piece would be
	// fetched twice.
	if data := c.getLocked(k); data != nil {
		f := &pieceFetch{done: make(chan struct{}), data: data}
		close(f.done)
		return f, nil
	}
	for j := k.i; j <= last && (j == k.i || join(j, len(run))); j++ {
		kj := k.at(j)
		if _, busy := c.fetching[kj]; busy || (j > k.i && c.byKey[kj] != nil) {
			break
		}
		c.fetching[kj] = &pieceFetch{done: make(chan struct{})}
		run = append(run, j)
	}
	return c.fetching[k], run
}

// claimEach claims every piece of want that nobody holds and skip does not
// reject, and returns them: the caller fetches them and releases the claims.
func (c *pieceCache) claimEach(k pieceKey, want []int, skip func(j int) bool) (run []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range want {
		kj := k.at(j)
		if _, busy := c.fetching[kj]; busy || skip(j) {
			continue
		}
		c.fetching[kj] = &pieceFetch{done: make(chan struct{})}
		run = append(run, j)
	}
	return run
}

// release publishes the result of claimed piece k to its waiters and drops
// the claim.
func (c *pieceCache) release(k pieceKey, data []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.fetching[k]
	f.data, f.err = data, err
	delete(c.fetching, k)
	close(f.done)
}

// wait returns the fetch's result, or ctx's error if that ends first.
func (f *pieceFetch) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// pieceSet is what one mode's pieces are. Its values are small and made
// for a read (or a run of read-ahead): file is what holds the blob then.
type pieceSet interface {
	// size is the end of the bytes the pieces cover; pieceFor the piece
	// holding off (-1 for none); bounds piece i's extent in them.
	size() int64
	pieceFor(off int64) int
	bounds(i int) (lo, hi int64)
	// key names piece 0 in the piece cache.
	key() pieceKey
	// join reports whether piece j may join a run that starts at i and has
	// n pieces, for one request.
	join(i, j, n int) bool
	// file returns what holds piece i's blob bytes (the verified blob, a
	// stream's temp file), or nil; fromFile reads and checks them.
	file(i int) io.ReaderAt
	fromFile(f io.ReaderAt, i int) ([]byte, error)
	// disk names the piece's file in the disk cache: digest, size and
	// what it is, for messages.
	disk(i int) (digest.Digest, int64, string)
	// fetch gets the verified bytes of the pieces of run at positions
	// missing from the registry into out.
	fetch(ctx context.Context, run, missing []int, out []pieceBytes, foreground bool)
	// decode makes piece i's verified bytes its uncompressed ones.
	decode(i int, raw []byte) ([]byte, error)
	// failure says which piece failed.
	failure(i int, err error) error
	// keep is called with the pieces fetched from the registry (fetched
	// set), once their waiters have them.
	keep(run []int, out []pieceBytes)
}

// pieceBytes is one piece of a run as gather found it.
type pieceBytes struct {
	raw     []byte // its verified bytes: compressed (a span), or the chunk itself
	data    []byte // its uncompressed bytes
	err     error
	fetched bool // raw came from the registry
}

// readPieces serves bytes [off, off+len(p)) of s piece by piece: each from
// the piece cache, a fetch in flight, or fetched (with the missing pieces
// after it that the read also needs, in one request).
func (l *layer) readPieces(ctx context.Context, s pieceSet, p []byte, off int64) (int, error) {
	r, err := l.pieceRunOf(s, off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	return l.readPiecesAhead(ctx, s, p, r, -1)
}

// pieceRun is the pieces first to last of a pieceSet that a read of bytes
// [off, end) needs, end cut to the set's size.
type pieceRun struct {
	off, end    int64
	first, last int
}

// pieceRunOf returns the run of s that a read of n bytes at off needs;
// io.EOF when off is at or past s's end.
func (l *layer) pieceRunOf(s pieceSet, off, n int64) (pieceRun, error) {
	end := min(off+n, s.size())
	if off >= end {
		return pieceRun{}, io.EOF
	}
	first, last := s.pieceFor(off), s.pieceFor(end-1)
	if first < 0 || last < 0 {
		return pieceRun{}, fmt.Errorf("layer %s: bytes %d-%d lie in no piece", l.desc.Digest, off, end)
	}
	return pieceRun{off: off, end: end, first: first, last: last}, nil
}

// readPiecesAhead serves run r of s into p, as readPieces does, and its
// fetches may also take the missing pieces after the read's own up to
// piece ahead (neighbours: chunked.go).
func (l *layer) readPiecesAhead(ctx context.Context, s pieceSet, p []byte, r pieceRun, ahead int) (int, error) {
	n := 0
	for i := r.first; i <= r.last; i++ {
		data, err := l.piece(ctx, s, i, max(r.last, ahead))
		if err != nil {
			return n, err
		}
		lo, hi := s.bounds(i)
		n += copy(p[n:], data[max(r.off, lo)-lo:min(r.end, hi)-lo])
	}
	return n, nil
}

// piece returns the decoded bytes of piece i of s. When it has to fetch, it
// also fetches the missing pieces after i up to last that s joins to it.
func (l *layer) piece(ctx context.Context, s pieceSet, i, last int) ([]byte, error) {
	k := s.key().at(i)
	if data := l.im.spans.get(k); data != nil {
		l.im.hit(pieceKind(s))
		return data, nil
	}
	f, run := l.im.spans.claim(k, last, func(j, n int) bool { return s.join(i, j, n) })
	if run != nil {
		l.fetchRun(s, run, true)
	}
	return f.wait(ctx)
}

// fetchRun gets, verifies and decodes the claimed pieces of run, publishes
// each result to its waiters (and, in the foreground, the piece cache) and
// releases the claims. The fetch runs on the image's context, not the
// reader's: another reader may be waiting for the same piece after this one
// gives up. Each piece is released as soon as it is decoded, so a reader
// waiting for the first piece of a long run does not wait for the others to
// decode, nor for the disk cache (keep).
func (l *layer) fetchRun(s pieceSet, run []int, foreground bool) {
	out := l.gather(l.im.ctx, s, run, foreground)
	base := s.key()
	for n, i := range run {
		r := &out[n]
		if r.err == nil {
			r.data, r.err = s.decode(i, r.raw)
		}
		if r.err != nil {
			r.data, r.err = nil, l.failed(s.failure(i, r.err))
		} else if foreground {
			l.im.spans.put(base.at(i), r.data)
		}
		l.im.spans.release(base.at(i), r.data, r.err)
	}
	s.keep(run, out)
}

// gather returns the verified bytes of each piece of run: read from the file
// holding the blob and checked, read from the disk cache (checked again), or
// fetched from the registry (s.fetch) for all the pieces found in neither.
func (l *layer) gather(ctx context.Context, s pieceSet, run []int, foreground bool) []pieceBytes {
	out := make([]pieceBytes, len(run))
	var missing []int // positions in run
	for n, i := range run {
		if f := s.file(i); f != nil {
			out[n].raw, out[n].err = s.fromFile(f, i)
			if out[n].err == nil {
				l.im.hit(pieceKind(s))
			}
			continue
		}
		if b := l.cachedPiece(s.disk(i)); b != nil {
			out[n].raw = b
			l.im.hit(pieceKind(s))
			continue
		}
		missing = append(missing, n)
	}
	if len(missing) == 0 {
		return out
	}
	if foreground {
		defer l.im.fg.begin()()
	}
	start := time.Now()
	s.fetch(ctx, run, missing, out, foreground)
	var got int64
	for _, n := range missing {
		if out[n].fetched {
			got += int64(len(out[n].raw))
		}
	}
	// A small fetch tells the round trip (prefetch.go); the rate comes from
	// the background's own pieces, whose bytes are those on the wire (a
	// chunk's raw bytes here are decompressed) and which run alone.
	if got <= rttSampleMax {
		l.im.fg.observe(got, time.Since(start))
	}
	return out
}

// readRange reads blob bytes [c, cend) from f.
func readRange(f io.ReaderAt, c, cend int64) ([]byte, error) {
	b := make([]byte, cend-c)
	if _, err := f.ReadAt(b, c); err != nil {
		return nil, err
	}
	return b, nil
}
