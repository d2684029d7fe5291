package fs

import (
	"context"
	"io"
	"sync"
	"time"
)

// foreground counts the fetches a reader is waiting on, so that background
// prefetch can step aside for them.
type foreground struct {
	// mu guards n and idle.
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0
	last time.Time     // when the latest fetch a reader waited on ended
}

func newForeground() *foreground {
	f := &foreground{idle: make(chan struct{})}
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

// wait returns once no reader waits on a fetch, or ctx is done.
func (f *foreground) wait(ctx context.Context) error {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitQuiet returns once no reader has waited on a fetch for quiet, or ctx
// is done.
func (f *foreground) waitQuiet(ctx context.Context, quiet time.Duration) error {
	for {
		if err := f.wait(ctx); err != nil {
			return err
		}
		f.mu.Lock()
		left := quiet - time.Since(f.last)
		busy := f.n > 0
		f.mu.Unlock()
		if busy {
			continue
		}
		if left <= 0 {
			return nil
		}
		t := time.NewTimer(left)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// quietPeriod is how long background streams wait after the last fetch a
// reader waited on. A program starting up waits on one read after another
// with a few milliseconds of its own work between them; a stream that went
// on in those gaps took link and CPU from it (on 2 cores the background
// check and extraction of a layer are CPU work too): python's start-up in
// the cloud profile took 2.85 s with the background fetch against 1.62 s
// without it. A reader streaming a file is served by read-ahead meanwhile,
// and the stream later skips what that fetched (gapstream.go). eStargz and
// zstd:chunked layers do not wait: their reads fetch one small chunk per
// file, each a round trip, and python's start-up sent 116 of them one after
// another (4.2 s in the cloud profile) when the stream waited for quiet,
// against about 20 (2.5-2.8 s) when it ran in every gap between them.
//
// And only in the first startupWindow after Prefetch: the start of a
// program is what waits on its reads one after another. A workload that
// goes on reading (every file of the go toolchain, in name order, across
// five layers) starved the stream for its whole run and fetched span after
// span itself: 9.96 s in the cloud profile against 7.50 s when the stream
// ran in the gaps. After the window, streams again wait only while a
// reader waits.
const startupWindow = 3 * time.Second
const quietPeriod = 200 * time.Millisecond

// prefetchReader is the blob stream of a background fetch: it pauses while
// readers wait on fetches of their own and for quietPeriod after, and keeps
// to a byte rate, unless a reader has come to need this layer (urgent).
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
		var quiet time.Duration
		if p.l.chunks() == nil && time.Now().UnixNano() < p.l.im.quietUntil.Load() {
			quiet = quietPeriod // see there
		}
		if err := p.l.im.fg.waitQuiet(p.ctx, quiet); err != nil {
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
