package fs

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestPrefetchYields: a background stream reads in full steps while no
// reader waits, and in small steps, without stopping, while one does; it
// does not slow a layer a reader needs whole (urgent).
func TestPrefetchYields(t *testing.T) {
	im := &Image{fg: newForeground()}
	l := &layer{im: im}
	src := bytes.NewReader(make([]byte, 4<<20))
	p := &prefetchReader{ctx: t.Context(), r: src, l: l, start: time.Now()}
	buf := make([]byte, 1<<20)

	if n, err := p.Read(buf); err != nil || n != 256<<10 {
		t.Fatalf("idle: read %d, %v; want a 256 KiB step", n, err)
	}
	end := im.fg.begin()
	for i := range 3 {
		if n, err := p.Read(buf); err != nil || n != yieldStep {
			t.Fatalf("reader waiting, step %d: read %d, %v; want %d", i, n, err, yieldStep)
		}
	}
	l.urgent.Store(true)
	if n, err := p.Read(buf); err != nil || n != len(buf) {
		t.Fatalf("urgent: read %d, %v; want %d", n, err, len(buf))
	}
	l.urgent.Store(false)
	end()
	if n, err := p.Read(buf); err != nil || n != 256<<10 {
		t.Fatalf("idle again: read %d, %v; want a 256 KiB step", n, err)
	}

	// A cancelled stream stops even while a reader waits.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	defer im.fg.begin()()
	p.ctx = ctx
	if _, err := p.Read(buf); err == nil {
		t.Errorf("read of a cancelled stream succeeded")
	}
}
