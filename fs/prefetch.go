package fs

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// foreground counts the fetches a reader is waiting on, so that background
// prefetch can step aside for them, and paces the background's requests.
//
// A request cannot be paused once sent: whatever it asked for crosses the
// link, and a reader's request sent meanwhile shares the link with it (and
// queues behind it at the bottleneck). So the background sends one request
// at a time for the whole image (its turn), only while no reader waits on a
// fetch (and, in the start-up window, after a quiet spell), and asks for at
// most bgPieceTime of the link at the rate measured so far: a read that
// comes while a background request is in flight waits for at most that one
// small piece, on a 100 Mbit/s link as on 1 Gbit/s. Before this, every
// layer's background stream asked for 8 MiB at a time (a fifth to two
// thirds of a second of these links), all layers at once, and an eStargz
// layer's was one GET of the whole blob that no pause could stop.
type foreground struct {
	// mu guards everything below.
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0
	last time.Time     // when the latest fetch a reader waited on ended (or the mount began)
	// What the transfers tell of the link (observe): rtt, the shortest
	// small transfer seen (about one round trip); rate, bytes per second
	// of the latest transfer of at least rateSampleMin bytes, 0 until one
	// was seen. lastSize and lastEnd: the bytes of the latest background
	// request and when it ended.
	rtt      time.Duration
	rate     float64
	lastSize int64
	lastEnd  time.Time

	turn semaphore // the background request in flight (one slot)

	// lastRead is when a reader last read a file, served from memory or
	// not (Unix ns; read): in the start-up window the quiet spell counts
	// from it too.
	lastRead atomic.Int64
}

// read notes that a reader read a file now.
func (f *foreground) read() { f.lastRead.Store(time.Now().UnixNano()) }

// The sizes of a background request: bgPieceTime of the link at the rate
// measured, within [bgPieceMin, bgPieceMax], and at most twice the one
// before; bgPieceFirst while the rate is not known, and again after the
// background was idle for bgPieceRestart. A shaped link lets a burst
// through at once after an idle spell (the bench's tbf: 1 MB), which a
// rate taken from one small transfer mistakes for the link's rate; a
// piece that at most doubles stays near what the link really did (as TCP
// restarts its slow start after idle). bgPieceUrgent is the request size
// of a layer a reader waits for whole: then the link is its own and round
// trips are the cost.
const (
	bgPieceTime    = 50 * time.Millisecond
	bgPieceMin     = 64 << 10
	bgPieceFirst   = 256 << 10
	bgPieceMax     = 8 << 20
	bgPieceUrgent  = 32 << 20
	bgPieceRestart = 100 * time.Millisecond
	rateSampleMin  = 128 << 10
	rttSampleMax   = 64 << 10
)

func newForeground() *foreground {
	f := &foreground{idle: make(chan struct{}), turn: make(semaphore, 1)}
	close(f.idle)
	return f
}

// begin marks a fetch a reader waits on; the returned func ends it.
func (f *foreground) begin() (end func()) {
	f.mu.Lock()
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.n--
		f.last = time.Now()
		if f.n == 0 {
			close(f.idle)
		}
		f.mu.Unlock()
	}
}

// touch counts now as the end of a reader's fetch: the quiet spell the
// background waits for starts again.
func (f *foreground) touch() {
	f.mu.Lock()
	f.last = time.Now()
	f.mu.Unlock()
}

// wait returns once no reader waits on a fetch, or ctx is done.
func (f *foreground) wait(ctx context.Context) error {
	return f.waitOr(ctx, nil)
}

// waitOr returns once no reader waits on a fetch, stop is closed, or ctx is
// done.
func (f *foreground) waitOr(ctx context.Context, stop <-chan struct{}) error {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-stop:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitQuiet returns once no reader has waited on a fetch for quiet, or
// stop is closed (nil: never), or ctx is done.
func (f *foreground) waitQuiet(ctx context.Context, quiet time.Duration, stop <-chan struct{}) error {
	for {
		if err := f.waitOr(ctx, stop); err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		default:
		}
		f.mu.Lock()
		last := f.last
		busy := f.n > 0
		f.mu.Unlock()
		if quiet > 0 {
			// A program reading what is in memory already is busy too:
			// its CPU is what the background's would take.
			if r := time.Unix(0, f.lastRead.Load()); r.After(last) {
				last = r
			}
		}
		left := quiet - time.Since(last)
		if busy {
			continue
		}
		if left <= 0 {
			return nil
		}
		t := time.NewTimer(left)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return nil
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// background waits for the background's turn to send a request: the one
// slot free, no reader waiting on a fetch and none for quiet (or stop
// closed: a reader waits for this very fetch). It returns how many bytes
// the request may ask for and the func to call, with the bytes received,
// once it has ended (which frees the slot).
func (f *foreground) background(ctx context.Context, quiet time.Duration, stop <-chan struct{}) (size int64, done func(n int64), err error) {
	select {
	case f.turn <- struct{}{}:
	case <-stop:
		return bgPieceUrgent, func(int64) {}, nil
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	if err := f.waitQuiet(ctx, quiet, stop); err != nil {
		f.turn.Release()
		return 0, nil, err
	}
	start := time.Now()
	size = f.pieceSize(start)
	return size, func(n int64) {
		end := time.Now()
		f.observe(n, end.Sub(start))
		f.mu.Lock()
		f.lastSize, f.lastEnd = n, end
		f.mu.Unlock()
		f.turn.Release()
	}, nil
}

// pieceSize is the size of a background request sent at now.
func (f *foreground) pieceSize(now time.Time) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rate == 0 || f.lastSize == 0 || now.Sub(f.lastEnd) > bgPieceRestart {
		return bgPieceFirst
	}
	size := min(int64(f.rate*bgPieceTime.Seconds()), 2*f.lastSize)
	return min(max(size, bgPieceMin), bgPieceMax)
}

// observe learns from a transfer of n bytes from the registry that took
// d, from the request to its last byte. The round trip is the shortest
// small transfer; the rate of a large one is its bytes over its time less
// that round trip (at most twice its plain rate, while the round trip is
// not known).
func (f *foreground) observe(n int64, d time.Duration) {
	if n <= 0 || d <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n <= rttSampleMax && (f.rtt == 0 || d < f.rtt) {
		f.rtt = d
	}
	if n < rateSampleMin {
		return
	}
	busy := max(d-f.rtt, d/2)
	f.rate = float64(n) / busy.Seconds()
}

// neighbourBytes is how many compressed bytes a reader's fetch may take
// beyond its own (chunked.go): the link's bandwidth-delay product once the
// transfers told it, within [neighbourMin, neighbourMax].
func (f *foreground) neighbourBytes() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rate == 0 || f.rtt == 0 {
		return neighbourDefault
	}
	return min(max(int64(f.rate*f.rtt.Seconds()), neighbourMin), neighbourMax)
}

// quietPeriod is how long background streams wait after the last fetch a
// reader waited on, or the last read of a file at all (and, at first,
// after Prefetch: the mount is where a program's reads begin). A program starting up waits on one read after
// another with a few milliseconds of its own work between them; a stream
// that went on in those gaps took link and CPU from it (on 2 cores the
// background check and extraction of a layer are CPU work too): python's
// start-up in the cloud profile took 2.85 s with the background fetch
// against 1.62 s without it. A reader streaming a file is served by
// read-ahead meanwhile, and the stream later skips what that fetched
// (gapstream.go). eStargz and zstd:chunked layers wait too: a stream that
// ran in every gap between python's 116 chunk reads made them 2.3x slower
// at 100 Mbit/s (a 10 ms round trip each, and a piece of the stream in
// front of nearly every one), although it helped at 1 Gbit/s, where the
// whole blob arrived within the start-up.
//
// And only in the first startupWindow after Prefetch: the start of a
// program is what waits on its reads one after another. A workload that
// goes on reading (every file of the go toolchain, in name order, across
// five layers) starved the stream for its whole run and fetched span after
// span itself: 9.96 s in the cloud profile against 7.50 s when the stream
// ran in the gaps. After the window, streams again wait only while a
// reader waits, and a read waits behind one small piece at most.
//
// Reads served from memory count: on the lan profile python's start-up
// fetched little after its first spans (4 MiB of tar each), and the stream
// ran in the gaps between its fetches, decompressing and indexing layers
// on the two cores python needed: 2.7 s against 1.2 s without it.
const startupWindow = 3 * time.Second
const quietPeriod = 200 * time.Millisecond

// bgQuiet is how long background streams wait after a reader's fetch now.
func (im *Image) bgQuiet() time.Duration {
	if time.Now().UnixNano() < im.quietUntil.Load() {
		return quietPeriod
	}
	return 0
}

// prefetchReader is the blob stream of a background fetch: it pauses while
// readers wait on fetches of their own and for quietPeriod after, and keeps
// to a byte rate, unless a reader has come to need this layer (urgent).
// This paces the work done on the bytes (decompressing, indexing, hashing:
// CPU a starting program needs too); the requests that bring them are paced
// by the stream itself (gapStream, foreground.background).
type prefetchReader struct {
	ctx    context.Context
	r      io.Reader
	l      *layer
	rate   int64 // bytes per second; 0 = unbounded
	start  time.Time
	n      int64
	paused time.Duration // time spent yielding, not counted against the rate
}

func (p *prefetchReader) Read(b []byte) (int, error) {
	if !p.l.urgent.Load() {
		t0 := time.Now()
		if err := p.l.im.fg.waitQuiet(p.ctx, p.l.im.bgQuiet(), p.l.urgentDone()); err != nil {
			return 0, err
		}
		p.paused += time.Since(t0)
		if p.rate > 0 {
			due := p.start.Add(p.paused + time.Duration(float64(p.n)/float64(p.rate)*float64(time.Second)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-p.ctx.Done():
					t.Stop()
					return 0, p.ctx.Err()
				}
			}
		}
		if len(b) > 256<<10 {
			b = b[:256<<10] // small steps, so a reader never waits long behind us
		}
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}
