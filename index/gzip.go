package index

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
)

// The gzip header flags (RFC 1952, section 2.3.1).
const (
	gzipFlagHCRC     = 1 << 1
	gzipFlagExtra    = 1 << 2
	gzipFlagName     = 1 << 3
	gzipFlagComment  = 1 << 4
	gzipFlagReserved = 0xe0

	// gzipMaxString caps FNAME and FCOMMENT, as klauspost's gzip reader
	// (which Decompress uses) does.
	gzipMaxString = 511
)

// readGzipHeader reads one gzip member header from r, which must start at
// its first byte, checking the magic, the reserved flags and the header
// CRC when there is one. An io.EOF before the first byte is returned as is.
func readGzipHeader(r io.ByteReader) error {
	var fixed [10]byte
	for i := range fixed {
		c, err := r.ReadByte()
		if err != nil {
			if i == 0 {
				return err
			}
			return noEOF(err)
		}
		fixed[i] = c
	}
	if !bytes.HasPrefix(fixed[:], gzipMagic) {
		return formatErrorf("gzip member header starts with % x, not % x", fixed[:3], gzipMagic)
	}
	flg := fixed[3]
	if flg&gzipFlagReserved != 0 {
		return formatErrorf("gzip member header has reserved flags %#x set", flg&gzipFlagReserved)
	}
	sum := crc32.ChecksumIEEE(fixed[:])
	next := func() (byte, error) {
		c, err := r.ReadByte()
		if err != nil {
			return 0, noEOF(err)
		}
		if flg&gzipFlagHCRC != 0 {
			sum = crc32.Update(sum, crc32.IEEETable, []byte{c})
		}
		return c, nil
	}
	if flg&gzipFlagExtra != 0 {
		lo, err := next()
		if err != nil {
			return err
		}
		hi, err := next()
		if err != nil {
			return err
		}
		for range int(lo) | int(hi)<<8 {
			if _, err := next(); err != nil {
				return err
			}
		}
	}
	for _, f := range []byte{gzipFlagName, gzipFlagComment} {
		if flg&f == 0 {
			continue
		}
		for i := 0; ; i++ {
			c, err := next()
			if err != nil {
				return err
			}
			if c == 0 {
				break
			}
			if i >= gzipMaxString {
				return formatErrorf("gzip member header: name or comment longer than %d bytes", gzipMaxString)
			}
		}
	}
	if flg&gzipFlagHCRC != 0 {
		var b [2]byte
		for i := range b {
			c, err := r.ReadByte()
			if err != nil {
				return noEOF(err)
			}
			b[i] = c
		}
		if got := binary.LittleEndian.Uint16(b[:]); got != uint16(sum) {
			return formatErrorf("gzip member header CRC %#04x, want %#04x", got, uint16(sum))
		}
	}
	return nil
}

// readGzipTrailer reads a member's CRC-32 and ISIZE.
func readGzipTrailer(r io.Reader) (sum, size uint32, err error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, 0, noEOF(err)
	}
	return binary.LittleEndian.Uint32(b[:4]), binary.LittleEndian.Uint32(b[4:]), nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Checkpoint verification: a checkpoint inside a member is kept only once
// resuming from it reproduces verifyLen bytes of the output that followed
// it (or all of it up to the member's end). verifyNeed is how much output
// must have been decoded past it first, so that the trial resume never needs
// compressed bytes the main decoder has not read yet: flate decodes up to
// its 32 KiB window ahead of what a Read returns.
const (
	verifyLen  = 4 << 10
	verifyNeed = verifyLen + 64<<10
	// driftSlack is how far below the decoder's read position a block may
	// end: flate holds at most 32 bits it has read but not used.
	driftSlack = 4
	// maxWindow is the deflate window: no span needs more history.
	maxWindow = 32 << 10
)

// gzipIndexer inflates a gzip layer on the calling goroutine and places
// the checkpoints that start spans.
type gzipIndexer struct {
	lb       *layerBuild
	br       *bufio.Reader
	spanSize int64

	out     int64 // uncompressed bytes produced so far
	memberU int64 // uncompressed offset of the current member's first byte
	memberC int64 // blob offset of the current member's deflate data
	drift   int64 // how far flate's CompressedOffset runs ahead in this member

	lastU   int64        // U of the newest span or pending checkpoint
	pending []checkpoint // found but not yet verified, oldest first
	recent  []byte       // output from recentStart on, kept while pending
	recentU int64

	// verify's inflater and buffers, kept between calls.
	verifier resetter
	got      []byte
	histRd   bytes.Reader
}

// checkpoint is a candidate span start.
type checkpoint struct {
	u           int64
	cands       []int64 // blob offsets the block end may lie at, most likely first
	bits        uint8
	window      []byte
	memberStart bool // at a member's deflate data: exact, needs no check
}

// consumed returns the blob offset of the next byte the decoder will read.
func (g *gzipIndexer) consumed() int64 { return g.lb.src.n - int64(g.br.Buffered()) }

// gzip indexes a gzip layer; see BuildLayer.
func (lb *layerBuild) gzip() error {
	g := &gzipIndexer{lb: lb, spanSize: lb.opts.SpanSize}
	src := lb.src
	g.br = bufio.NewReaderSize(src, 64<<10)
	src.keepHist = true
	src.keepFrom = func() int64 {
		low := src.n - 64
		for _, p := range g.pending {
			low = min(low, p.cands[len(p.cands)-1])
		}
		return low
	}
	src.safe = g.safe
	err := g.run()
	if err != nil && !errors.Is(err, errPipeClosed) && !errors.Is(err, ErrFormat) {
		return src.sr.wrap(compressionGzip, err)
	}
	return err
}

// safe is the offset below which no span will start from now on, given
// that the decoder has consumed the bytes before consumed.
func (g *gzipIndexer) safe(consumed int64) int64 {
	low := consumed - 2*driftSlack
	for _, p := range g.pending {
		for _, c := range p.cands {
			low = min(low, c)
		}
	}
	return low
}

func (g *gzipIndexer) run() error {
	lb := g.lb
	if err := readGzipHeader(g.br); err != nil {
		if err == io.EOF {
			return formatErrorf("layer is not gzip (starts with %s)", describeHead(nil))
		}
		if errors.Is(err, ErrFormat) && lb.src.n > 0 {
			return err
		}
		return g.headerError(err, 0)
	}
	first := g.consumed()
	lb.spans = []Span{{U: 0, C: first}}
	lb.windows = [][]byte{nil}
	lb.prog.span(lb.spans[0], nil)
	lb.src.flush(first)
	lb.hasher.cut(-1, first)
	for {
		g.memberU, g.memberC, g.drift = g.out, g.consumed(), 0
		if err := g.member(); err != nil {
			return err
		}
		start := g.consumed()
		err := readGzipHeader(g.br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return g.headerError(err, start)
		}
		c := g.consumed()
		if n := len(g.pending); n > 0 && g.pending[n-1].memberStart && g.pending[n-1].u == g.out {
			// The member before was empty: start at this one instead.
			g.pending[n-1].cands[0] = c
		} else if g.out-g.lastU >= g.spanSize {
			g.addPending(checkpoint{u: g.out, cands: []int64{c}, memberStart: true})
		}
	}
	// A span starting at the very end would be empty.
	if n := len(g.pending); n > 0 {
		g.pending = g.pending[:0]
	}
	return nil
}

func (g *gzipIndexer) headerError(err error, off int64) error {
	if errors.Is(err, ErrFormat) {
		return fmt.Errorf("%w (blob offset %d)", err, off)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) && g.lb.src.sr.err == nil {
		return formatErrorf("gzip member header at blob offset %d truncated", off)
	}
	return err
}

// member inflates one member, from its deflate data to its trailer.
func (g *gzipIndexer) member() error {
	fr := flate.NewReaderOpts(g.br, flate.WithEobCallback(g.onBlock))
	for {
		buf, err := g.lb.out.space()
		if err != nil {
			return err
		}
		n, rerr := fr.Read(buf)
		if n > 0 {
			b := buf[:n]
			if len(g.pending) > 0 {
				// recent holds [recentU, ...); the checkpoint may lie
				// inside b.
				if skip := g.recentU + int64(len(g.recent)) - g.out; skip < int64(n) {
					g.recent = append(g.recent, b[max(0, skip):]...)
				}
			}
			g.out += int64(n)
			if err := g.lb.out.commit(n); err != nil {
				return err
			}
			g.resolve(false)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if g.lb.src.sr.err != nil {
				return fmt.Errorf("reading gzip layer: %w", g.lb.src.sr.err)
			}
			if errors.Is(rerr, io.ErrUnexpectedEOF) {
				return formatErrorf("gzip stream truncated at blob offset %d", g.consumed())
			}
			return fmt.Errorf("%w: gzip stream: deflate data of the member at blob offset %d: %w", ErrFormat, g.memberC, rerr)
		}
	}
	g.resolve(true)
	at := g.consumed()
	sum, size, err := readGzipTrailer(g.br)
	if err != nil {
		if g.lb.src.sr.err != nil {
			return fmt.Errorf("reading gzip layer: %w", g.lb.src.sr.err)
		}
		return formatErrorf("gzip stream truncated in the member trailer at blob offset %d", at)
	}
	// The tar side checks them, off this goroutine (see chunkPipe).
	g.lb.out.endMember(memberMark{end: g.out, blobOff: g.memberC, sum: sum, size: size})
	return nil
}

// onBlock is flate's callback at every deflate block end. It tracks flate's
// offset drift and records a checkpoint when a span is due.
//
// klauspost/compress v1.20.4 counts the whole bytes still held in its bit
// buffer twice when a stored block starts, so CompressedOffset runs ahead of
// the truth by a few bytes after each stored block, while BitOffset is
// right. The decoder reads through our bufio.Reader only, so its real read
// position is known exactly (consumed); the block end lies at most 4 bytes
// below it. The drift only grows, and only at stored blocks, which end with
// nothing held (so there the block end is the read position): a reported
// offset past the read position means the drift just grew. The predicted
// offset is still only a candidate: verify tries it first and falls back to
// every other offset within 4 bytes of the read position.
func (g *gzipIndexer) onBlock(cp flate.InflateCheckpoint) {
	if cp.Final {
		return
	}
	read := g.consumed() - g.memberC
	var x int64
	x, g.drift = correctOffset(cp.CompressedOffset, read, g.drift)
	x += g.lb.skew
	u := g.memberU + cp.UncompressedOffset
	if u-g.lastU < g.spanSize || u <= g.memberU {
		return
	}
	cands := make([]int64, 0, driftSlack+2)
	if x >= 0 && x >= read-driftSlack {
		cands = append(cands, g.memberC+x)
	}
	for c := read; c >= max(0, read-driftSlack); c-- {
		if c != x {
			cands = append(cands, g.memberC+c)
		}
	}
	w := cp.Window
	if len(w) > maxWindow {
		w = w[len(w)-maxWindow:]
	}
	g.addPending(checkpoint{u: u, cands: cands, bits: cp.BitOffset, window: bytes.Clone(w)})
}

// addPending queues a checkpoint; recent then holds the output from the
// oldest pending one on.
func (g *gzipIndexer) addPending(p checkpoint) {
	if len(g.pending) == 0 {
		g.recent, g.recentU = g.recent[:0], p.u
	}
	g.pending = append(g.pending, p)
	g.lastU = p.u
}

// correctOffset returns the likely true block end given flate's reported
// CompressedOffset, the decoder's real read position and the drift so far,
// all relative to the start of the deflate stream, and the drift from now on.
func correctOffset(reported, read, drift int64) (int64, int64) {
	x := reported - drift
	if x > read {
		return read, reported - read
	}
	return x, drift
}

// resolve verifies the pending checkpoints that can be verified now: those
// with verifyNeed bytes of output after them, or all of them once their
// member has ended.
func (g *gzipIndexer) resolve(memberEnd bool) {
	for len(g.pending) > 0 {
		p := &g.pending[0]
		avail := g.out - p.u
		switch {
		case p.memberStart:
			if avail == 0 {
				return
			}
			g.accept(p, p.cands[0])
		case avail == 0 && memberEnd:
			g.drop()
			continue
		case avail >= verifyNeed || memberEnd:
			want := g.recent[p.u-g.recentU:][:min(avail, verifyLen)]
			c, ok := g.verify(p, want, avail <= verifyLen)
			if !ok {
				g.drop()
				continue
			}
			g.accept(p, c)
		default:
			return
		}
		g.pending = g.pending[1:]
	}
	if len(g.pending) == 0 {
		g.recent = g.recent[:0]
	} else if cut := g.pending[0].u - g.recentU; cut > int64(len(g.recent))/2 {
		g.recent = g.recent[:copy(g.recent, g.recent[cut:])]
		g.recentU += cut
	}
}

// drop forgets the oldest pending checkpoint: no candidate offset resumed
// correctly (or it would start an empty span); the span before grows.
func (g *gzipIndexer) drop() {
	g.pending = g.pending[1:]
	g.lastU = g.lb.spans[len(g.lb.spans)-1].U
	if n := len(g.pending); n > 0 {
		g.lastU = g.pending[n-1].u
	}
	g.lb.opts.Logger.Debug("dropped gzip checkpoint: no offset resumed correctly")
}

func (g *gzipIndexer) accept(p *checkpoint, c int64) {
	lb := g.lb
	lb.spans = append(lb.spans, Span{U: p.u, C: c, Bits: p.bits})
	lb.windows = append(lb.windows, p.window)
	lb.prog.span(lb.spans[len(lb.spans)-1], p.window)
	end := c
	if p.bits > 0 {
		end++
	}
	lb.src.flush(g.safe(g.consumed()))
	lb.hasher.cut(end, c)
}

// verify returns the first candidate offset of p from which resuming
// reproduces want, followed by the member's end if atEnd.
func (g *gzipIndexer) verify(p *checkpoint, want []byte, atEnd bool) (int64, bool) {
	src := g.lb.src
	if g.got == nil {
		g.got = make([]byte, verifyLen+1)
	}
	got := g.got[:len(want)+1]
	for i, c := range p.cands {
		if c < src.histStart || c-src.histStart > int64(len(src.hist)) {
			continue
		}
		g.histRd.Reset(src.hist[c-src.histStart:])
		cp := flate.InflateCheckpoint{BitOffset: p.bits, Window: p.window}
		var err error
		if g.verifier == nil {
			fr, ok := flate.NewReaderOpts(&g.histRd, flate.WithResumeFrom(cp)).(resetter)
			if !ok {
				return 0, false
			}
			g.verifier = fr
		} else if err = g.verifier.ResetCP(&g.histRd, cp); err != nil {
			continue
		}
		n, err := io.ReadFull(g.verifier, got)
		ok := bytes.Equal(got[:min(n, len(want))], want) && n >= len(want)
		if atEnd {
			ok = ok && n == len(want) && err == io.ErrUnexpectedEOF
		}
		if ok {
			if i > 0 {
				g.lb.misses++
			}
			return c, true
		}
	}
	return 0, false
}

// maxDeflateRatio bounds how many bytes one compressed byte can become:
// a 258-byte match can cost as little as 2 bits.
const maxDeflateRatio = 1032

// DecodeSpan decodes span i of t from compressed, the blob bytes
// [sp.C, sp.CEnd), and returns exactly the uncompressed bytes
// [sp.U, t.SpanEnd(i)). For Compression "none" it returns compressed itself.
//
// DecodeSpan does not check sp.Digest: verifying compressed against it
// first is the caller's job, and only that check catches every damaged
// byte (a flipped bit in a trailer or in bits that belong to the next span
// changes nothing here). What it does check: the length of compressed, that
// the deflate data decodes to at least the span's length, and the CRC-32
// and length of every member that starts and ends inside the span. It never
// panics; anything wrong is an [ErrFormat] error. It is safe to call
// concurrently.
func DecodeSpan(t *Table, i int, compressed []byte) ([]byte, error) {
	if i < 0 || i >= len(t.Spans) {
		return nil, fmt.Errorf("decoding span %d: the table has %d spans", i, len(t.Spans))
	}
	sp := t.Spans[i]
	want := t.SpanEnd(i) - sp.U
	if int64(len(compressed)) != sp.CEnd-sp.C || want < 0 {
		return nil, formatErrorf("span %d: %d compressed bytes for blob range [%d, %d) and %d uncompressed bytes",
			i, len(compressed), sp.C, sp.CEnd, want)
	}
	switch t.Compression {
	case compressionNone:
		if int64(len(compressed)) != want {
			return nil, formatErrorf("span %d: %d bytes for a %d-byte span of a plain tar", i, len(compressed), want)
		}
		return compressed, nil
	case compressionGzip:
	default:
		return nil, fmt.Errorf("decoding span %d: compression %q has no random access", i, t.Compression)
	}
	if want > int64(len(compressed))*maxDeflateRatio+maxWindow {
		return nil, formatErrorf("span %d: %d compressed bytes cannot hold %d uncompressed ones", i, len(compressed), want)
	}
	win, err := t.Window(i)
	if err != nil {
		return nil, err
	}
	out := make([]byte, want)
	var tailBits uint8 // bits of the last byte that belong to this span; 0: all of it
	switch {
	case i+1 < len(t.Spans):
		tailBits = t.Spans[i+1].Bits
	case i+1 == len(t.Spans):
		tailBits = t.lastTailBits // a snapshot's last span: the next is not in t
	}
	if err := inflateSpan(out, compressed, sp.Bits, tailBits, win); err != nil {
		return nil, fmt.Errorf("%w: span %d (blob [%d, %d)): %w", ErrFormat, i, sp.C, sp.CEnd, err)
	}
	return out, nil
}

// resetter is what flate's reader offers beyond io.ReadCloser.
type resetter interface {
	io.ReadCloser
	ResetCP(r io.Reader, cp flate.InflateCheckpoint) error
}

// inflaters keeps flate readers (each holds a 32 KiB window) between spans.
var inflaters sync.Pool

func getInflater(r io.Reader, cp flate.InflateCheckpoint) (resetter, error) {
	if f, ok := inflaters.Get().(resetter); ok {
		return f, f.ResetCP(r, cp)
	}
	f, ok := flate.NewReaderOpts(r, flate.WithResumeFrom(cp)).(resetter)
	if !ok {
		return nil, errors.New("flate reader cannot resume")
	}
	return f, nil
}

// inflateSpan fills out from deflate data starting bits into compressed,
// with the window win, crossing gzip member boundaries as needed.
//
// klauspost's inflater may read a byte or two past the end of a block's
// last symbol, and hands out the block's output only after trying to read
// the next block; a span ends at a block end, so the input is padded with
// zeros. Bits past a symbol cannot change it, so the output still depends
// on compressed alone; an inflater that reads deep into the padding (a
// span too short for its output) is an error.
//
// When the next span starts inside the last byte (tailBits > 0), that
// byte's high bits are the next block's header: left as they are, the
// inflater would start decoding that block (a dynamic Huffman header read
// from the zero padding reads well over 100 bytes of it). They are cleared,
// so what follows the span's last block reads as an empty stored block
// header and the inflater stops within a few bytes.
func inflateSpan(out, compressed []byte, bits, tailBits uint8, win []byte) error {
	padded := make([]byte, len(compressed)+spanPadding)
	copy(padded, compressed)
	if tailBits > 0 && len(compressed) > 0 {
		padded[len(compressed)-1] &= 1<<tailBits - 1
	}
	rd := bytes.NewReader(padded)
	f, err := getInflater(rd, flate.InflateCheckpoint{BitOffset: bits, Window: win})
	if f != nil {
		defer inflaters.Put(f)
	}
	if err != nil {
		return fmt.Errorf("resuming deflate: %w", noEOF(err))
	}
	n := 0
	memberStart := -1 // where in out the current member began, -1: before the span
	var crc uint32
	for n < len(out) {
		m, err := f.Read(out[n:])
		if m < 0 || m > len(out)-n {
			return errors.New("deflate reader misbehaved")
		}
		if memberStart >= 0 {
			crc = crc32.Update(crc, crc32.IEEETable, out[n:n+m])
		}
		n += m
		// The span ends at a block end; flate only hands out the
		// block's last bytes once it has tried to read the next block,
		// which lies past the span, so an error may come with them.
		if n == len(out) || err == nil {
			continue
		}
		if err != io.EOF {
			return fmt.Errorf("deflate data at offset %d of the span: %w", len(padded)-rd.Len(), noEOF(err))
		}
		at := len(padded) - rd.Len()
		sum, size, err := readGzipTrailer(rd)
		if err != nil {
			return fmt.Errorf("member trailer at offset %d: %w", at, err)
		}
		if memberStart >= 0 && (sum != crc || size != uint32(n-memberStart)) {
			return fmt.Errorf("member ending at offset %d: CRC or length does not match its trailer", at)
		}
		at = len(padded) - rd.Len()
		if err := readGzipHeader(rd); err != nil {
			return fmt.Errorf("member header at offset %d: %w", at, noEOF(err))
		}
		if err := f.ResetCP(rd, flate.InflateCheckpoint{}); err != nil {
			return err
		}
		memberStart, crc = n, 0
	}
	if len(padded)-rd.Len() > len(compressed)+spanOverread {
		return errors.New("deflate data runs past the end of the span")
	}
	return nil
}

// spanPadding is how many zero bytes inflateSpan appends to a span, and
// spanOverread how many of them the inflater may read for a span that
// decodes from its own bytes: a byte or two of look-ahead, then the next
// block's header and, when the zeros read as a stored block, its four
// length bytes (which do not match, so inflation stops there).
const (
	spanPadding  = 64
	spanOverread = 16
)
