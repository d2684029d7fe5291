package fs

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestPrefetchYields: a background stream reads in steps while no reader
// waits; while one waits it does not read at all, and after the reader's
// fetch ends (or a read of a file without one) it waits quietPeriod more
// (within the start-up window); it does not pause for a layer a
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

	// A read served without a fetch counts as well.
	read := time.Now()
	im.fg.read()
	if _, err := p.Read(buf); err != nil {
		t.Fatalf("read after a reader's read: %v", err)
	}
	if d := time.Since(read); d < quietPeriod {
		t.Errorf("the stream read %v after a reader's read, want at least %v", d, quietPeriod)
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

// TestBackgroundTurn: the background sends one request at a time for the
// image: a second waits until the first is done; none is sent while a
// reader waits on a fetch, unless the layer becomes urgent (a reader waits
// for this very fetch, which would otherwise never come); and the size of
// a request follows the rate the transfers showed, less the round trip.
func TestBackgroundTurn(t *testing.T) {
	guard, cancel := context.WithTimeout(t.Context(), readGuard)
	defer cancel()
	f := newForeground()
	size, done, err := f.background(guard, 0, nil)
	if err != nil || size != bgPieceFirst {
		t.Fatalf("first turn: size %d, err %v; want %d (rate not known yet)", size, err, bgPieceFirst)
	}
	second := make(chan error, 1)
	go func() {
		_, done2, err := f.background(guard, 0, nil)
		if err == nil {
			done2(0)
		}
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("a second background request got its turn while the first was in flight (err %v)", err)
	default:
	}
	done(0)
	if err := <-second; err != nil {
		t.Fatalf("second turn: %v", err)
	}

	end := f.begin() // a reader waits on a fetch
	stop := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		_, done3, err := f.background(guard, 0, stop)
		if err == nil {
			done3(0)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a background request got its turn while a reader waited (err %v)", err)
	default:
	}
	close(stop) // the layer became urgent
	if err := <-got; err != nil {
		t.Fatalf("urgent turn: %v", err)
	}
	end()

	// The piece follows the rate, at most doubling, and begins small again
	// after an idle spell.
	now := time.Now()
	f.observe(4<<10, 10*time.Millisecond) // a small fetch: the round trip
	f.observe(1<<20, 90*time.Millisecond) // 1 MiB in 80 ms past it
	f.lastSize, f.lastEnd = 1<<20, now
	want := int64(float64(1<<20) / 0.080 * bgPieceTime.Seconds())
	if got := f.pieceSize(now); got != want {
		t.Errorf("piece after 1 MiB in 80 ms past a 10 ms round trip: %d bytes, want %d", got, want)
	}
	f.observe(1<<20, 11*time.Millisecond) // a burst: 1 MiB in 1 ms past the round trip
	if got := f.pieceSize(now); got != 2<<20 {
		t.Errorf("piece after a burst that followed a 1 MiB piece: %d bytes, want twice that piece", got)
	}
	if got := f.pieceSize(now.Add(bgPieceRestart + time.Millisecond)); got != bgPieceFirst {
		t.Errorf("piece after an idle spell: %d bytes, want %d", got, bgPieceFirst)
	}
	f.lastSize = 6 << 20
	if got := f.pieceSize(now); got != bgPieceMax {
		t.Errorf("piece at a very high rate: %d, want the cap %d", got, bgPieceMax)
	}
}
