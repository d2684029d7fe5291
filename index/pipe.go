package index

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
)

// spanHasher computes, on its own goroutine, the blob digest and the digest
// of every span from the compressed bytes and the span boundaries the
// indexer sends it in blob order.
type spanHasher struct {
	prog *progress // told each span digest as it is known
	msgs chan hashMsg
	free chan []byte
	done chan hashResult
}

type hashMsg struct {
	data []byte // the next bytes of the blob
	safe int64  // no span starts below this offset from now on
	cut  bool   // end the current span at end and start one at next
	end  int64  // -1: there is no current span
	next int64  // -1: no next span
}

type hashResult struct {
	blob  digest.Digest
	spans []digest.Digest
	err   error
}

func startSpanHasher(prog *progress) *spanHasher {
	h := &spanHasher{prog: prog, msgs: make(chan hashMsg, 16), free: make(chan []byte, 20), done: make(chan hashResult, 1)}
	go h.loop()
	return h
}

// buffer returns an empty buffer for the next bytes of the blob.
func (h *spanHasher) buffer() []byte {
	select {
	case b := <-h.free:
		return b[:0]
	default:
		return make([]byte, 0, hasherChunkSize+64<<10)
	}
}

func (h *spanHasher) data(b []byte, safe int64) { h.msgs <- hashMsg{data: b, safe: safe} }

// cut ends the current span just before blob offset end and starts the next
// at next. The bytes up to end must have been sent.
func (h *spanHasher) cut(end, next int64) { h.msgs <- hashMsg{cut: true, end: end, next: next} }

// finish ends the last span at size (when spans is set), stops the hasher
// goroutine and returns its digests.
func (h *spanHasher) finish(size int64, spans bool) hashResult {
	if spans {
		h.cut(size, -1)
	}
	close(h.msgs)
	return <-h.done
}

func (h *spanHasher) loop() {
	blob := sha256.New()
	var (
		res       hashResult
		span      hash.Hash
		spanPos   int64 // next offset to hash into span
		pend      []byte
		pendStart int64 // offset of pend[0]
		safe      int64
	)
	hashTo := func(x int64, strict bool) {
		end := pendStart + int64(len(pend))
		if !strict {
			x = min(x, end)
		}
		if span == nil || x <= spanPos {
			return
		}
		if x > end {
			if res.err == nil {
				res.err = fmt.Errorf("indexing layer: span boundary %d past the %d bytes read", x, end)
			}
			x = end
		}
		if spanPos < pendStart {
			if res.err == nil {
				res.err = fmt.Errorf("indexing layer: span byte %d no longer held", spanPos)
			}
			return
		}
		span.Write(pend[spanPos-pendStart : x-pendStart])
		spanPos = x
	}
	for m := range h.msgs {
		if m.data != nil {
			blob.Write(m.data)
			pend = append(pend, m.data...)
			select {
			case h.free <- m.data:
			default:
			}
		}
		if m.cut {
			if m.end >= 0 && span != nil {
				hashTo(m.end, true)
				res.spans = append(res.spans, digest.NewDigestFromBytes(digest.SHA256, span.Sum(nil)))
				if res.err == nil {
					h.prog.digest(res.spans[len(res.spans)-1])
				}
			}
			span = nil
			if m.next >= 0 {
				span = sha256.New()
				spanPos = m.next
			}
		} else {
			safe = max(safe, m.safe)
			hashTo(safe, false)
		}
		// Drop what no span can need any more.
		keep := safe
		if span != nil {
			keep = min(keep, spanPos)
		}
		if drop := keep - pendStart; drop > 0 && int(min(drop, int64(len(pend)))) > len(pend)/2 {
			drop = min(drop, int64(len(pend)))
			pend = pend[:copy(pend, pend[drop:])]
			pendStart += drop
		}
	}
	res.blob = digest.NewDigestFromBytes(digest.SHA256, blob.Sum(nil))
	h.done <- res
}

// errPipeClosed is what the writer of a chunkPipe gets once the reader has
// stopped: the tar side failed, and its error is the one to report.
var errPipeClosed = errors.New("tar reader stopped")

// errMemberCheck is what the reader of a chunkPipe gets once a gzip
// member's CRC-32 or length did not match its trailer; the pipe's checkErr
// says which.
var errMemberCheck = errors.New("gzip member check failed")

// chunkPipe carries the uncompressed stream from the inflating goroutine to
// the tar goroutine in large buffers, so the two run in parallel (io.Pipe
// would make the writer wait for every read).
//
// It also checks each gzip member's CRC-32 and length off the inflating
// goroutine: the writer marks where a member ends with its trailer
// ([chunkPipe.endMember]), and the reader checks the mark against the bytes
// as each buffer arrives, before the tar reader sees any of them. Once both
// sides are done, [chunkPipe.finish] checks what the reader never took, so
// a member whose trailer the inflater read is checked whether or not the
// tar reader got that far, as it was when the inflater checked it itself.
type chunkPipe struct {
	full      chan chunk
	free      chan []byte
	abort     chan struct{}
	abortOnce sync.Once
	err       error // the writer's error, set before full is closed

	// writer side
	buf       []byte
	marks     []memberMark // members ending in buf (or at its end)
	unsent    []chunk      // what send could not hand over once the reader stopped
	allocated int

	// reader side
	cur, curBuf []byte
	readErr     error
	pos         int64  // stream offset of the first byte of the next chunk
	crc         uint32 // CRC-32 of the current member's bytes so far
	memberU     int64  // stream offset of the current member's first byte
	checkErr    error  // the first member that did not match its trailer

	// checkCRC is set for gzip streams, before the reader starts.
	checkCRC bool
}

// chunk is one buffer of the stream and the members ending in it.
type chunk struct {
	data  []byte
	marks []memberMark
}

// memberMark is a gzip member's end: its stream offset and what its trailer
// says.
type memberMark struct {
	end     int64 // stream offset just past the member's last byte
	blobOff int64 // blob offset of its deflate data, for the error
	sum     uint32
	size    uint32
}

const (
	pipeChunkSize = 256 << 10
	pipeChunks    = 4
)

// newChunkPipe returns a pipe; checkCRC makes the reader run the CRC-32 of
// the stream for [chunkPipe.endMember] marks.
func newChunkPipe(checkCRC bool) *chunkPipe {
	return &chunkPipe{
		full:     make(chan chunk, pipeChunks),
		free:     make(chan []byte, pipeChunks),
		abort:    make(chan struct{}),
		checkCRC: checkCRC,
	}
}

// space returns the free part of the current buffer, getting a buffer if
// there is none.
func (p *chunkPipe) space() ([]byte, error) {
	if p.buf == nil {
		select {
		case b := <-p.free:
			p.buf = b[:0]
		default:
			if p.allocated < pipeChunks {
				p.allocated++
				p.buf = make([]byte, 0, pipeChunkSize)
				break
			}
			select {
			case b := <-p.free:
				p.buf = b[:0]
			case <-p.abort:
				return nil, errPipeClosed
			}
		}
	}
	return p.buf[len(p.buf):cap(p.buf)], nil
}

// commit adds n bytes written into the last space to the stream.
func (p *chunkPipe) commit(n int) error {
	p.buf = p.buf[:len(p.buf)+n]
	if len(p.buf) == cap(p.buf) {
		return p.send()
	}
	return nil
}

// endMember marks the end of a gzip member at stream offset end (every byte
// before it committed) with the CRC-32 and size its trailer gives.
func (p *chunkPipe) endMember(m memberMark) { p.marks = append(p.marks, m) }

func (p *chunkPipe) send() error {
	c := chunk{data: p.buf, marks: p.marks}
	p.buf, p.marks = nil, nil
	if len(c.data) == 0 && len(c.marks) == 0 {
		if c.data != nil {
			p.free <- c.data
		}
		return nil
	}
	select {
	case p.full <- c:
		return nil
	case <-p.abort:
		p.unsent = append(p.unsent, c)
		return errPipeClosed
	}
}

// closeWrite ends the stream: the reader gets err, or io.EOF if it is nil.
func (p *chunkPipe) closeWrite(err error) {
	if err == nil {
		err = p.send()
	} else if p.buf != nil || p.marks != nil {
		p.unsent = append(p.unsent, chunk{data: p.buf, marks: p.marks})
		p.buf, p.marks = nil, nil
	}
	p.err = err
	close(p.full)
}

// closeRead tells the writer that nothing more will be read.
func (p *chunkPipe) closeRead() { p.abortOnce.Do(func() { close(p.abort) }) }

// finish checks the member marks the reader did not get to and returns the
// first member whose bytes did not match its trailer, or nil. It must be
// called once both sides are done: after closeWrite and once the reader has
// stopped reading.
func (p *chunkPipe) finish() error {
	for c := range p.full {
		p.check(c)
	}
	for _, c := range p.unsent {
		p.check(c)
	}
	p.unsent = nil
	return p.checkErr
}

// check runs the CRC-32 of the stream over c and checks every member ending
// in it against its trailer.
func (p *chunkPipe) check(c chunk) {
	b := c.data
	for _, m := range c.marks {
		n := m.end - p.pos
		p.crc = crc32.Update(p.crc, crc32.IEEETable, b[:n])
		b, p.pos = b[n:], m.end
		if size := uint32(m.end - p.memberU); (m.sum != p.crc || m.size != size) && p.checkErr == nil {
			p.checkErr = formatErrorf("gzip member at blob offset %d: trailer says CRC %#08x and %d bytes, data has CRC %#08x and %d bytes (mod 2^32)",
				m.blobOff, m.sum, m.size, p.crc, size)
		}
		p.crc, p.memberU = 0, m.end
	}
	if p.checkCRC {
		p.crc = crc32.Update(p.crc, crc32.IEEETable, b)
	}
	p.pos += int64(len(b))
}

func (p *chunkPipe) Read(b []byte) (int, error) {
	for len(p.cur) == 0 {
		if p.readErr != nil {
			return 0, p.readErr
		}
		if p.curBuf != nil {
			select {
			case p.free <- p.curBuf:
			default:
			}
			p.curBuf = nil
		}
		next, ok := <-p.full
		if !ok {
			p.readErr = io.EOF
			if p.err != nil {
				p.readErr = p.err
			}
			return 0, p.readErr
		}
		p.check(next)
		if p.checkErr != nil {
			p.readErr = errMemberCheck
			return 0, p.readErr
		}
		p.cur, p.curBuf = next.data, next.data
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}
