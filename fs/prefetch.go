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
		if f.n == 0 {
			close(f.idle)
		}
		f.mu.Unlock()
	}
}

// wait returns once no reader waits on a fetch, or ctx is done.
func (f *foreground) wait(ctx context.Context) error {
	_, err := f.waitFor(ctx, -1)
	return err
}

// waitFor is wait for at most d (forever if d < 0); busy reports that a
// reader still waits.
func (f *foreground) waitFor(ctx context.Context, d time.Duration) (busy bool, err error) {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	var timeout <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-idle:
		return false, nil
	case <-timeout:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// While a reader waits on a fetch, a background stream slows to steps of
// yieldStep after a pause of yieldPause each (at most 64 MB/s) instead of
// stopping: a program starting up waits on one small read after another,
// each mostly round-trip time, and a stream that stopped for each of them
// would hardly move, leaving the link idle while the program waits on read
// after read. At that pace the stream shares the link with the reader
// rather than taking it.
const (
	yieldPause = time.Millisecond
	yieldStep  = 64 << 10
)

// prefetchReader is the blob stream of a background fetch: it slows down
// while readers wait on fetches of their own, and keeps to a byte rate,
// unless a reader has come to need this layer (urgent).
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
		busy, err := p.l.im.fg.waitFor(p.ctx, yieldPause)
		if err != nil {
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
		step := 256 << 10 // small steps, so a reader never waits long behind us
		if busy {
			step = yieldStep
		}
		if len(b) > step {
			b = b[:step]
		}
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}
