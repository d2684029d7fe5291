package index

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// progress publishes snapshots of a table while [BuildLayer] builds it, for
// Options.Progress. Three goroutines feed it: the inflater starts spans, the
// span hasher finishes their digests, the tar builder adds entries. A
// snapshot is published each time a span's digest is known, from the
// hasher's goroutine, so calls come one at a time.
type progress struct {
	fn       func(*Table)
	kind     string
	spanSize int64

	// mu guards everything below.
	mu      sync.Mutex
	spans   []Span   // started spans: U, C and Bits
	windows [][]byte // their windows (gzip)
	digests []digest.Digest
	entries []Entry // parsed so far, in tar order
}

// newProgress returns nil when nobody asked for snapshots: every method is
// a no-op on nil.
func newProgress(opts Options, kind string) *progress {
	if opts.Progress == nil {
		return nil
	}
	return &progress{fn: opts.Progress, kind: kind, spanSize: opts.SpanSize}
}

// span records the start of a span; it must come before the hasher is told
// to cut the previous one.
func (p *progress) span(sp Span, window []byte) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.spans = append(p.spans, sp)
	p.windows = append(p.windows, window)
	p.mu.Unlock()
}

// entry records an entry the tar builder kept.
func (p *progress) entry(e Entry) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.entries = append(p.entries, e)
	p.mu.Unlock()
}

// digest records the digest of the next finished span and publishes a
// snapshot of everything up to the start of the span after it.
func (p *progress) digest(d digest.Digest) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.digests = append(p.digests, d)
	k := len(p.digests)
	if k >= len(p.spans) {
		p.mu.Unlock()
		return // the last span: BuildLayer returns the whole table next
	}
	t := &Table{Compression: p.kind, SpanSize: p.spanSize, TarSize: p.spans[k].U, lastTailBits: p.spans[k].Bits}
	t.Spans = make([]Span, k)
	copy(t.Spans, p.spans[:k])
	for i := range t.Spans {
		next := p.spans[i+1]
		t.Spans[i].CEnd = next.C
		if next.Bits > 0 {
			t.Spans[i].CEnd++
		}
		t.Spans[i].Digest = p.digests[i]
	}
	if p.kind == compressionGzip {
		t.windows = memWindows(p.windows[:k:k])
	}
	n := 0
	for n < len(p.entries) {
		e := &p.entries[n]
		if e.Type == TypeReg && e.Offset+e.DataSize() > t.TarSize {
			break
		}
		n++
	}
	t.Entries = p.entries[:n:n]
	p.mu.Unlock()
	p.fn(t)
}
