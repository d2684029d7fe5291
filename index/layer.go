package index

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// DefaultSpanSize is the span size [BuildLayer] aims at when
// Options.SpanSize is zero: a read fetches and decodes at most about this
// much (a start-up of many small files pays about one span per file it
// touches), and the window each span keeps (32 KiB, about 10 KiB stored)
// costs about 1% of the tar. Measured on the bench's Debian python and Go
// images (eight gzip layers, 397 MB of tar): the index is 0.35% of the tar
// at 4 MiB, 0.57% at 2 MiB, 1.02% (at most 1.17% for one layer) at 1 MiB
// and 1.81% at 512 KiB; the head (entries and spans, all a mount fetches
// before a read) 0.13% at every size.
const DefaultSpanSize = 1 << 20

// minSpanSize is the smallest span size BuildLayer uses; smaller values are
// raised to it. Each gzip span keeps a window of up to 32 KiB, so spans much
// smaller than that make an index larger than its layer.
const minSpanSize = 1 << 10

// BuildLayer reads a whole layer blob r, as stored (compressed), in one pass
// and returns its complete [Table]: Digest and Size of the blob (sha256 of the
// bytes read), DiffID and TarSize of the uncompressed tar, the Entries
// ([Build]'s rules), Compression, and for gzip and plain tar layers SpanSize
// and Spans with their windows held in memory. mediaType chooses the
// decompressor as in [Decompress]; zstd layers get no Spans.
//
// Gzip input may hold any number of members, with any of the optional header
// fields (FEXTRA, FNAME, FCOMMENT, FHCRC); the CRC-32 and length of every
// member are checked on this pass. A span starts at the first deflate block
// end at or after SpanSize bytes of output since the previous span, or at the
// deflate data of a member that starts after SpanSize bytes (with an empty
// window), so a span may cross member boundaries and members shorter than a
// span never add spans. The first span starts at the first member's deflate
// data: the bytes of its gzip header are covered by the blob digest only.
// Every other byte of the blob, trailers and later headers included, lies in
// some span's digested range.
//
// The work is spread over three goroutines (inflate, tar and diff ID,
// compressed digests), all finished before BuildLayer returns. Errors follow
// [Build] and [Decompress]: bad bytes wrap [ErrFormat], errors of r are
// passed on wrapped.
func BuildLayer(r io.Reader, mediaType string, opts Options) (*Table, error) {
	kind, err := MediaTypeCompression(mediaType)
	if err != nil {
		return nil, err
	}
	lb := &layerBuild{opts: opts.withDefaults(), kind: kind, mediaType: mediaType}
	return lb.run(r)
}

// layerBuild is the state of one BuildLayer call on the inflating goroutine.
type layerBuild struct {
	opts      Options
	kind      string
	mediaType string
	src       *blobSource
	hasher    *spanHasher
	out       *chunkPipe
	prog      *progress // nil unless Options.Progress is set

	spans   []Span   // C, U and Bits so far; CEnd and Digest filled at the end
	windows [][]byte // windows[i] is span i's window (gzip only)

	// misses counts gzip checkpoints whose predicted blob offset failed
	// verification; skew is added to every prediction. Both for tests.
	misses int
	skew   int64
}

func (lb *layerBuild) run(r io.Reader) (*Table, error) {
	lb.prog = newProgress(lb.opts, lb.kind)
	lb.hasher = startSpanHasher(lb.prog)
	lb.src = &blobSource{sr: &sourceReader{r: r}, hasher: lb.hasher, safe: func(int64) int64 { return math.MaxInt64 }}
	lb.out = newChunkPipe(lb.kind == compressionGzip)

	var tab *Table
	var tarErr error
	tarDone := make(chan struct{})
	go func() {
		defer close(tarDone)
		opts := lb.opts
		opts.onEntry = lb.prog.entry
		tab, tarErr = Build(lb.out, opts)
		lb.out.closeRead()
	}()

	var err error
	switch lb.kind {
	case compressionGzip:
		err = lb.gzip()
	default:
		err = lb.stream()
	}
	lb.out.closeWrite(err)
	<-tarDone
	// Both sides are done: check the members the tar side did not get to.
	checkErr := lb.out.finish()
	if err == nil {
		lb.src.flush(math.MaxInt64)
	}
	res := lb.hasher.finish(lb.src.n, err == nil && lb.spans != nil)

	switch {
	case checkErr != nil:
		// The inflater read that member's trailer before anything
		// else went wrong: it is the first error in the stream.
		return nil, checkErr
	case err != nil && !errors.Is(err, errPipeClosed):
		return nil, err
	case tarErr != nil:
		return nil, tarErr
	case err != nil:
		return nil, fmt.Errorf("indexing layer: tar reader stopped early: %w", err)
	case res.err != nil:
		return nil, res.err
	}
	tab.Digest = res.blob
	tab.Size = lb.src.n
	tab.Compression = lb.kind
	if lb.spans != nil {
		if len(res.spans) != len(lb.spans) {
			return nil, fmt.Errorf("indexing layer: %d span digests for %d spans", len(res.spans), len(lb.spans))
		}
		for i := range lb.spans {
			sp := &lb.spans[i]
			sp.CEnd = tab.Size
			if i+1 < len(lb.spans) {
				next := lb.spans[i+1]
				sp.CEnd = next.C
				if next.Bits > 0 {
					sp.CEnd++
				}
			}
			sp.Digest = res.spans[i]
		}
		tab.SpanSize = lb.opts.SpanSize
		tab.Spans = lb.spans
		if lb.windows != nil {
			tab.windows = memWindows(lb.windows)
		}
	}
	return tab, nil
}

// stream reads a plain tar or zstd layer through [Decompress]. A plain tar is
// cut into spans of exactly SpanSize bytes.
func (lb *layerBuild) stream() error {
	rc, err := Decompress(lb.mediaType, lb.src)
	if err != nil {
		return err
	}
	defer rc.Close()
	plain := lb.kind == compressionNone
	var out, nextCut int64
	if plain {
		lb.src.safe = func(int64) int64 { return nextCut }
		lb.spans = []Span{{}}
		lb.prog.span(lb.spans[0], nil)
		lb.hasher.cut(-1, 0)
		nextCut = lb.opts.SpanSize
	}
	for {
		buf, err := lb.out.space()
		if err != nil {
			return err
		}
		n, rerr := rc.Read(buf)
		if n < 0 || n > len(buf) {
			return fmt.Errorf("reading layer: reader returned %d bytes for a %d-byte buffer", n, len(buf))
		}
		out += int64(n)
		if err := lb.out.commit(n); err != nil {
			return err
		}
		for plain && nextCut < out {
			lb.src.flush(nextCut)
			lb.spans = append(lb.spans, Span{U: nextCut, C: nextCut})
			lb.prog.span(lb.spans[len(lb.spans)-1], nil)
			lb.hasher.cut(nextCut, nextCut)
			nextCut += lb.opts.SpanSize
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// blobSource is the reader every compressed byte passes through: it counts
// them, hands them to the span hasher, and keeps a short history for the
// gzip indexer to check checkpoints against.
type blobSource struct {
	sr     *sourceReader
	hasher *spanHasher
	n      int64 // bytes read so far

	// safe returns, given the bytes the decoder has consumed, the offset
	// below which no span will start from now on.
	safe  func(consumed int64) int64
	chunk []byte // bytes not yet sent to the hasher

	// keepHist makes the source keep the bytes from keepFrom() on in hist
	// (gzip only).
	keepHist  bool
	keepFrom  func() int64
	hist      []byte
	histStart int64 // blob offset of hist[0]
}

// hasherChunkSize is how many compressed bytes go to the hasher at once.
const hasherChunkSize = 128 << 10

func (s *blobSource) Read(p []byte) (int, error) {
	before := s.n
	n, err := s.sr.Read(p)
	if n < 0 || n > len(p) {
		return 0, fmt.Errorf("reading layer: reader returned %d bytes for a %d-byte buffer", n, len(p))
	}
	if n > 0 {
		b := p[:n]
		if s.keepHist {
			if from := min(s.keepFrom(), before); from > s.histStart {
				drop := min(from-s.histStart, int64(len(s.hist)))
				s.hist = s.hist[:copy(s.hist, s.hist[drop:])]
				s.histStart += drop
			}
			s.hist = append(s.hist, b...)
		}
		if s.chunk == nil {
			s.chunk = s.hasher.buffer()
		}
		s.chunk = append(s.chunk, b...)
		s.n += int64(n)
		if len(s.chunk) >= hasherChunkSize {
			// Callers read only when their buffer is empty, so every
			// byte before this read has been consumed.
			s.flush(s.safe(before))
		}
	}
	return n, err
}

// flush sends the bytes not yet sent to the hasher, with the offset below
// which it may hash them into the current span.
func (s *blobSource) flush(safe int64) {
	s.hasher.data(s.chunk, safe)
	s.chunk = nil
}
