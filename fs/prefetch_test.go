package fs

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestPrefetchYields: a background stream reads in steps while no reader
// waits; while one waits it does not read at all, and after the reader's
// fetch ends it waits quietPeriod more (within the start-up window); it does not pause for a layer a
// reader needs whole (urgent), and a cancelled stream stops.
func TestPrefetchYields(t *testing.T) {
	im := &Image{fg: newForeground()}
	im.quietUntil.Store(time.Now().Add(time.Hour).UnixNano()) // as Prefetch does, for its startupWindow
	l := &layer{im: im}
	src := bytes.NewReader(make([]byte, 4<<20))
	p := &prefetchReader{ctx: t.Context(), r: src, l: l, start: time.Now()}
	buf := make([]byte, 1<<20)

	if n, err := p.Read(buf); err != nil || n != 256<<10 {
		t.Fatalf("idle: read %d, %v; want a 256 KiB step", n, err)
	}

	end := im.fg.begin()
	done := make(chan time.Time, 1)
	go func() {
		if _, err := p.Read(buf); err != nil {
			t.Errorf("read after the reader's fetch: %v", err)
		}
		done <- time.Now()
	}()
	select {
	case <-done:
		t.Fatal("the stream read while a reader waited on a fetch")
	default:
	}
	ended := time.Now()
	end()
	if at := <-done; at.Sub(ended) < quietPeriod {
		t.Errorf("the stream read %v after the reader's fetch ended, want at least %v", at.Sub(ended), quietPeriod)
	}

	defer im.fg.begin()()
	l.urgent.Store(true)
	if n, err := p.Read(buf); err != nil || n != len(buf) {
		t.Fatalf("urgent, a reader waiting: read %d, %v; want %d", n, err, len(buf))
	}
	l.urgent.Store(false)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	p.ctx = ctx
	if _, err := p.Read(buf); err == nil {
		t.Errorf("read of a cancelled stream succeeded")
	}
}
