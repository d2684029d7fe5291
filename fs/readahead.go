package fs

import (
	"sync"

	"github.com/ocifs/ocifs/index"
)

// Read-ahead for sequential readers of a span layer.
//
// The kernel reads a FUSE file ahead by at most 1 MiB, so without help a
// reader streaming a big file fetches one span per round trip, serially.
// readAhead watches the reads of each layer for streams: a read that starts
// in the span where an earlier read ended, or in the next one, continues
// that stream. A stream is sequential once it steps into a new span (reads
// within one span, such as those of a small file, fetch nothing ahead);
// its window is then half the spans it has stepped into, at least
// readAheadStart and at most the cap below, and the spans of the window that are neither
// decoded nor being fetched are claimed (in the image's piece cache, so a reader that
// reaches one waits for that fetch instead of sending its own: pieceCache.claim) and fetched
// in the background in runs of up to readAheadRunBytes, several at once, as
// soon as a whole run (or half the window, if less) of it is free.
//
// Streams are kept per image, keyed by layer and position, not per open
// file: the layer sees tar offsets only (and the end of the file being
// read, where read-ahead stops). Keeping a few streams apart lets several readers stream
// different files of one layer without resetting each other's window; a
// read that continues no stream starts a new one, with no window, in place
// of the stream used least recently. A random reader thus fetches only the
// spans it reads.
//
// Bounds: one stream's window is at most readAheadMaxBytes of tar, and all
// streams' windows together at most half the piece cache (by the spans'
// decoded sizes), so spans fetched
// ahead never push out the spans their readers are about to reach; a span
// evicted anyway is read again from the disk cache, not the network. At most
// FetchParallel-1 read-ahead runs are in flight per image, so a read that
// waits for a span of its own still finds a request slot, and the runs go
// through the image's fetch semaphore like every Range GET. Every span read
// ahead is verified and decoded by fetchRun (pieces.go), as any other: nothing
// unverified is kept or served, and a span that fails is dropped (the read
// that reaches it fetches it again and gets the error).

const (
	readAheadStart    = 1        // spans of a new sequential stream's window
	readAheadMaxBytes = 64 << 20 // tar bytes one stream keeps fetched ahead, at most
	readAheadRunBytes = 8 << 20  // tar bytes one read-ahead Range GET asks for, at most
	readAheadStreams  = 8        // streams remembered per image
	readAheadIdle     = 256      // reads of the image after which a quiet stream no longer counts
)

// readAhead is an image's sequential-read detector and read-ahead state.
type readAhead struct {
	// mu guards everything below; it is taken before the piece cache's
	// lock, never under it.
	mu       sync.Mutex
	tick     uint64 // reads seen, for the age of streams
	streams  [readAheadStreams]stream
	inflight int // read-ahead runs being fetched
}

// stream is one run of sequential reads of a layer.
type stream struct {
	used   uint64 // tick of the latest read; 0: slot unused
	layer  int
	span   int // span of the latest read's last byte
	window int // spans kept fetched ahead of span; 0 until the stream is sequential
	ahead  int // the last span read ahead (claimed, or found decoded)
	steps  int // spans the stream has stepped into
}

// active reports whether s is reading ahead and has read recently.
func (s *stream) active(tick uint64) bool {
	return s.used != 0 && s.window > 0 && tick-s.used < readAheadIdle
}

// readAhead notes a read of tar bytes [off, end) of a file whose content
// ends at fileEnd and, when it continues a stream, starts fetching the spans
// ahead of it, up to the file's last, that are neither decoded nor being
// fetched.
func (r *spanReader) readAhead(off, end, fileEnd int64) {
	l, t := r.l, r.t
	if len(t.Spans) < 2 || t.SpanSize <= 0 || l.im.ctx.Err() != nil || l.complete() != nil || l.quarantined() != nil {
		return
	}
	set := r.set()
	set.ahead = true
	key := set.key()
	ra := &l.im.ahead
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.tick++
	first, last := t.SpanFor(off), t.SpanFor(end-1)
	var s *stream
	for k := range ra.streams {
		c := &ra.streams[k]
		if c.used != 0 && c.layer == l.idx && (first == c.span || first == c.span+1) {
			s = c
			break
		}
	}
	if s == nil {
		s = &ra.streams[0]
		for k := range ra.streams {
			if ra.streams[k].used < s.used {
				s = &ra.streams[k]
			}
		}
		*s = stream{used: ra.tick, layer: l.idx, span: last, ahead: last}
		return
	}
	s.used = ra.tick
	if last > s.span {
		// The stream steps into a new span: it is sequential, or more so.
		// The window grows with what the stream has read, to half of it:
		// a reader that stops (a program reading the head of a big file)
		// has had at most half as much again fetched for nothing.
		s.steps += last - s.span
		s.window = max(readAheadStart, s.steps/2)
		s.span = last
	} else if s.window == 0 {
		return // still within the span it started in
	}
	s.ahead = max(s.ahead, s.span)

	// The window's cap: readAheadMaxBytes, and an equal share of half the
	// piece cache among the streams reading ahead.
	n := int64(0)
	for k := range ra.streams {
		if ra.streams[k].active(ra.tick) {
			n++
		}
	}
	s.window = min(s.window, windowSpans(t, s.span, min(readAheadMaxBytes, l.im.spans.max/2/max(n, 1))))
	runSpans := max(1, int(readAheadRunBytes/t.SpanSize))
	lastSpan := min(len(t.Spans)-1, t.SpanFor(max(fileEnd, end)-1))
	to := min(s.span+s.window, lastSpan)
	if s.window <= 0 || to-s.ahead < min(max(1, s.window/2), runSpans) && to < lastSpan {
		return // too little of the window is free yet: fetch in large runs, a little later
	}
	limit := max(1, cap(l.im.fetchSem)-1)
	for j := s.ahead + 1; j <= to; j++ {
		if l.im.spans.has(key.at(j)) {
			s.ahead = j
			continue
		}
		if ra.inflight >= limit {
			return // the next read of the stream tries again
		}
		_, run := l.im.spans.claim(key.at(j), to, func(_, n int) bool { return n < runSpans })
		if len(run) == 0 {
			s.ahead = j // being fetched already
			continue
		}
		ra.inflight++
		l.im.bg.Go(func() error {
			l.fetchRun(set, run, true)
			ra.mu.Lock()
			ra.inflight--
			ra.mu.Unlock()
			return nil
		})
		j = run[len(run)-1]
		s.ahead = j
	}
}

// windowSpans returns how many spans after span fit in budget bytes of
// decoded tar. Spans are counted by their real sizes, not the table's
// SpanSize: that is a target a span reaches and passes (a gzip checkpoint
// falls on the first deflate block boundary after it, 1.5 times the target
// or more on incompressible data), and a window counted in targets would
// hold more than its share of the span cache, pushing out spans fetched
// ahead before their reader reaches them.
func windowSpans(t *index.Table, span int, budget int64) int {
	n := 0
	for i := span + 1; i < len(t.Spans); i++ {
		budget -= t.SpanEnd(i) - t.Spans[i].U
		if budget < 0 {
			break
		}
		n++
	}
	return n
}
