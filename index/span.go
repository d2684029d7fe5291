package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/flate"
	"github.com/opencontainers/go-digest"
)

// SpanFor returns the index of the span holding uncompressed offset off, or
// -1 when t has no spans or off is outside [0, TarSize).
func (t *Table) SpanFor(off int64) int {
	if len(t.Spans) == 0 || off < 0 || off >= t.TarSize {
		return -1
	}
	return sort.Search(len(t.Spans), func(i int) bool { return t.Spans[i].U > off }) - 1
}

// SpanEnd returns the uncompressed end of span i: the next span's U, or
// TarSize for the last.
func (t *Table) SpanEnd(i int) int64 {
	if i+1 < len(t.Spans) {
		return t.Spans[i+1].U
	}
	return t.TarSize
}

// Window returns the window span i decodes with: the up to 32 KiB of output
// that precede it in its gzip member. It is empty for the first span of a
// member and for plain tar. A table from [BuildLayer] or [Unmarshal] holds
// its windows in memory; one from [Open] reads the window it needs from the
// index file on every call (about 10-20 KiB, checked against its sha256 and
// inflated) and caches nothing: callers cache decoded spans, not windows.
// The result must not be modified. Window is safe for concurrent use.
func (t *Table) Window(i int) ([]byte, error) {
	if i < 0 || i >= len(t.Spans) {
		return nil, fmt.Errorf("window of span %d: the table has %d spans", i, len(t.Spans))
	}
	if t.windows == nil {
		return nil, nil
	}
	return t.windows.window(i)
}

// WindowLocation returns where span i's stored window lies in the encoding
// the table was read from ([Open], [Unmarshal]): n bytes at off, whose
// sha256 is sum, checked by [Table.Window] before the window is used. A
// reader that holds only the head of an index (through [HeadLen]) fetches
// a window's bytes from there when its span is read. n is 0 when span i
// has no stored window, when i is out of range, or when t holds its
// windows as [BuildLayer] made them.
func (t *Table) WindowLocation(i int) (off, n int64, sum digest.Digest) {
	w, ok := t.windows.(*storedWindows)
	if !ok || i < 0 || i >= len(w.dir) || w.dir[i].n == 0 {
		return 0, 0, ""
	}
	ref := w.dir[i]
	return w.at + ref.off, ref.n, digest.NewDigestFromBytes(digest.SHA256, ref.sum[:])
}

// windowSource holds the windows of a table's spans.
type windowSource interface {
	// window returns window i, uncompressed.
	window(i int) ([]byte, error)
	// stored returns window i as the encoding stores it (flate-compressed,
	// empty for an empty window) and its uncompressed length.
	stored(i int) (packed []byte, raw int, err error)
}

// memWindows are windows in memory, uncompressed, as BuildLayer makes them.
type memWindows [][]byte

func (w memWindows) window(i int) ([]byte, error) { return w[i], nil }

func (w memWindows) stored(i int) ([]byte, int, error) {
	if len(w[i]) == 0 {
		return nil, 0, nil
	}
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		return nil, 0, err
	}
	if _, err := fw.Write(w[i]); err != nil {
		return nil, 0, err
	}
	if err := fw.Close(); err != nil {
		return nil, 0, err
	}
	return buf.Bytes(), len(w[i]), nil
}

// storedWindows are windows as encoded, read through r: from memory after
// Unmarshal, from the index file after Open.
type storedWindows struct {
	r    io.ReaderAt
	base int64 // offset of the windows section in r
	at   int64 // offset of the windows section in the encoding
	dir  []windowRef
}

// windowRef locates one stored window in the windows section.
type windowRef struct {
	off, n int64 // stored bytes at off in the section
	raw    int   // uncompressed length
	sum    [sha256.Size]byte
}

// maxStoredWindow caps the stored (compressed) size of one window; flate
// never makes 32 KiB much larger.
const maxStoredWindow = maxWindow + 1<<10

func (w *storedWindows) stored(i int) ([]byte, int, error) {
	ref := w.dir[i]
	if ref.n == 0 {
		return nil, 0, nil
	}
	b := make([]byte, ref.n)
	n, err := w.r.ReadAt(b, w.base+ref.off)
	if n < len(b) {
		if err == nil || err == io.EOF {
			return nil, 0, formatErrorf("ocifs index: window %d truncated", i)
		}
		return nil, 0, fmt.Errorf("reading window %d of the index: %w", i, err)
	}
	if sha256.Sum256(b) != ref.sum {
		return nil, 0, formatErrorf("ocifs index: window %d checksum mismatch: the index is damaged; rebuild it", i)
	}
	return b, ref.raw, nil
}

func (w *storedWindows) window(i int) ([]byte, error) {
	packed, raw, err := w.stored(i)
	if err != nil || raw == 0 {
		return nil, err
	}
	out := make([]byte, raw+1)
	fr := flate.NewReader(bytes.NewReader(packed))
	n, err := io.ReadFull(fr, out)
	if n != raw || err != io.ErrUnexpectedEOF {
		return nil, formatErrorf("ocifs index: window %d does not inflate to its %d bytes", i, raw)
	}
	return out[:raw], nil
}

// The compressions the encoding accepts.
var knownCompressions = map[string]bool{compressionNone: true, compressionGzip: true, compressionZstd: true}

// minSpanLen is the fewest bytes an encoded span takes: U, C and CEnd
// deltas, bits, digest, stored window length.
const minSpanLen = 5 + sha256.Size

// checkSpans checks the spans of t against the invariants Span documents,
// given the per-span window lengths raw (nil: none).
func checkSpans(t *Table, raw []int) error {
	if !knownCompressions[t.Compression] {
		return fmt.Errorf("compression %q is not one of none, gzip, zstd", t.Compression)
	}
	if t.Compression == compressionZstd || t.Spans == nil {
		if t.Spans != nil || t.SpanSize != 0 || raw != nil {
			return fmt.Errorf("%s layer with %d spans and span size %d", t.Compression, len(t.Spans), t.SpanSize)
		}
		return nil
	}
	if t.SpanSize <= 0 {
		return fmt.Errorf("span size %d", t.SpanSize)
	}
	if t.TarSize == 0 && len(t.Spans) != 1 {
		return fmt.Errorf("%d spans for an empty stream", len(t.Spans))
	}
	for i, sp := range t.Spans {
		end := t.SpanEnd(i)
		switch {
		case i == 0 && sp.U != 0:
			return fmt.Errorf("span 0 starts at %d, not 0", sp.U)
		case i > 0 && (sp.U <= t.Spans[i-1].U || sp.U >= t.TarSize):
			return fmt.Errorf("span %d starts at %d, after %d, in a %d-byte stream", i, sp.U, t.Spans[i-1].U, t.TarSize)
		case sp.Bits > 7:
			return fmt.Errorf("span %d: bit offset %d", i, sp.Bits)
		case sp.C < 0 || sp.CEnd < sp.C || sp.CEnd > t.Size || i > 0 && sp.C < t.Spans[i-1].C:
			return fmt.Errorf("span %d: blob range [%d, %d) out of order or outside %d bytes", i, sp.C, sp.CEnd, t.Size)
		case i+1 == len(t.Spans) && sp.CEnd != t.Size:
			return fmt.Errorf("last span ends at %d, not at the blob size %d", sp.CEnd, t.Size)
		case i+1 < len(t.Spans) && sp.CEnd != t.Spans[i+1].C+int64(min(1, t.Spans[i+1].Bits)):
			return fmt.Errorf("span %d ends at %d, not where span %d starts", i, sp.CEnd, i+1)
		case sp.Digest.Algorithm() != digest.SHA256 || sp.Digest.Validate() != nil:
			return fmt.Errorf("span %d: digest %q is not a sha256 digest", i, sp.Digest)
		}
		w := 0
		if raw != nil {
			w = raw[i]
		}
		switch t.Compression {
		case compressionNone:
			if sp.C != sp.U || sp.CEnd-sp.C != end-sp.U || sp.Bits != 0 || w != 0 {
				return fmt.Errorf("plain tar span %d: blob [%d, %d), tar [%d, %d), bits %d, window %d", i, sp.C, sp.CEnd, sp.U, end, sp.Bits, w)
			}
		case compressionGzip:
			if w > maxWindow || int64(w) > sp.U || i == 0 && w != 0 {
				return fmt.Errorf("span %d at %d: window of %d bytes", i, sp.U, w)
			}
			if end-sp.U > (sp.CEnd-sp.C)*maxDeflateRatio+maxWindow {
				return fmt.Errorf("span %d: %d compressed bytes cannot hold %d", i, sp.CEnd-sp.C, end-sp.U)
			}
		}
	}
	return nil
}

// appendSpans appends the spans section body of t and returns the windows
// section that goes with it.
func (t *Table) appendSpans(buf []byte) ([]byte, []byte, error) {
	if t.windows == nil {
		if err := checkSpans(t, nil); err != nil {
			return nil, nil, err
		}
		return appendSpanRecords(buf, t, nil, nil, nil), nil, nil
	}
	raw := make([]int, len(t.Spans))
	storedLen := make([]int, len(t.Spans))
	sums := make([][sha256.Size]byte, len(t.Spans))
	var windows []byte
	for i := range t.Spans {
		packed, n, err := t.windows.stored(i)
		if err != nil {
			return nil, nil, fmt.Errorf("window %d: %w", i, err)
		}
		if len(packed) > maxStoredWindow || (len(packed) == 0) != (n == 0) {
			return nil, nil, fmt.Errorf("window %d: %d bytes stored for %d", i, len(packed), n)
		}
		raw[i], storedLen[i], sums[i] = n, len(packed), sha256.Sum256(packed)
		windows = append(windows, packed...)
	}
	if err := checkSpans(t, raw); err != nil {
		return nil, nil, err
	}
	return appendSpanRecords(buf, t, raw, storedLen, sums), windows, nil
}

func appendSpanRecords(buf []byte, t *Table, raw, storedLen []int, sums [][sha256.Size]byte) []byte {
	buf = appendString(buf, t.Compression)
	buf = binary.AppendUvarint(buf, uint64(t.SpanSize))
	buf = binary.AppendUvarint(buf, uint64(len(t.Spans)))
	var prevU, prevC int64
	for i, sp := range t.Spans {
		buf = binary.AppendUvarint(buf, uint64(sp.U-prevU))
		buf = binary.AppendUvarint(buf, uint64(sp.C-prevC))
		buf = binary.AppendUvarint(buf, uint64(sp.CEnd-sp.C))
		buf = append(buf, sp.Bits)
		sum, _ := hexDigest(sp.Digest)
		buf = append(buf, sum[:]...)
		if storedLen == nil || storedLen[i] == 0 {
			buf = append(buf, 0)
		} else {
			buf = binary.AppendUvarint(buf, uint64(storedLen[i]))
			buf = binary.AppendUvarint(buf, uint64(raw[i]))
			buf = append(buf, sums[i][:]...)
		}
		prevU, prevC = sp.U, sp.C
	}
	return buf
}

// hexDigest returns the raw bytes of a sha256 digest.
func hexDigest(d digest.Digest) ([sha256.Size]byte, bool) {
	var b [sha256.Size]byte
	hex := d.Encoded()
	if len(hex) != 2*sha256.Size {
		return b, false
	}
	for i := range b {
		hi, ok1 := unhex(hex[2*i])
		lo, ok2 := unhex(hex[2*i+1])
		if !ok1 || !ok2 {
			return b, false
		}
		b[i] = hi<<4 | lo
	}
	return b, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// decodeSpans decodes a spans section body into t and returns the window
// directory; windowsLen is the size of the windows section.
func decodeSpans(t *Table, body []byte, windowsLen int64) ([]windowRef, error) {
	d := &decoder{b: body}
	t.Compression = d.string(16, "compression")
	t.SpanSize = d.int64("span size")
	count := d.uvarint("span count")
	if d.err != nil {
		return nil, d.err
	}
	if count > uint64(d.left()/minSpanLen) {
		return nil, fmt.Errorf("span count %d exceeds what %d bytes can hold", count, d.left())
	}
	if count == 0 {
		if d.left() != 0 || windowsLen != 0 {
			return nil, fmt.Errorf("%d bytes after an empty spans section", d.left())
		}
		return nil, checkSpans(t, nil)
	}
	t.Spans = make([]Span, count)
	var dir []windowRef
	raw := make([]int, count)
	var prevU, prevC, off int64
	for i := range t.Spans {
		sp := &t.Spans[i]
		sp.U = prevU + d.int64("span offset")
		sp.C = prevC + d.int64("span blob offset")
		sp.CEnd = sp.C + d.int64("span blob length")
		if sp.U < prevU || sp.C < prevC || sp.CEnd < sp.C {
			return nil, fmt.Errorf("span %d: offsets overflow", i)
		}
		sp.Bits = d.byte("span bit offset")
		sum := d.raw(sha256.Size, "span digest")
		n := d.uint("window length", maxStoredWindow)
		var ref windowRef
		if n > 0 {
			ref.raw = int(d.uint("window size", maxWindow))
			copy(ref.sum[:], d.raw(sha256.Size, "window digest"))
			if ref.raw == 0 {
				d.fail("span %d: a stored window of size 0", i)
			}
		}
		if d.err != nil {
			return nil, fmt.Errorf("span %d: %w", i, d.err)
		}
		sp.Digest = digest.NewDigestFromBytes(digest.SHA256, sum)
		ref.off, ref.n = off, int64(n)
		off += int64(n)
		raw[i] = ref.raw
		dir = append(dir, ref)
		prevU, prevC = sp.U, sp.C
	}
	if d.left() != 0 {
		return nil, fmt.Errorf("%d bytes after the spans", d.left())
	}
	if off != windowsLen {
		return nil, fmt.Errorf("windows take %d bytes, the windows section has %d", off, windowsLen)
	}
	if t.Compression != compressionGzip {
		raw = nil
		if off != 0 {
			return nil, fmt.Errorf("%s layer with windows", t.Compression)
		}
		dir = nil
	}
	if err := checkSpans(t, raw); err != nil {
		return nil, err
	}
	return dir, nil
}

// raw reads n bytes.
func (d *decoder) raw(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if d.left() < n {
		d.fail("%s: truncated", what)
		return nil
	}
	b := d.b[d.off : d.off+n]
	d.off += n
	return b
}
