package fs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// layer is one layer of an image: its plan, its entry table, and its bytes.
//
// A layer with spans (gzip or plain tar) serves reads span by span, each
// verified against its digest, until its whole blob is in the cache and
// verified; then from that blob. A layer without spans (zstd) waits for its
// whole uncompressed tar, verified against the config's DiffID.
type layer struct {
	im          *Image
	idx         int
	desc        ocispec.Descriptor
	diffID      digest.Digest
	compression string // "gzip", "zstd" or "none"
	mode        string
	why         string
	remote      *ocispec.Descriptor // the registry's index blob for this layer, if any

	table *index.Table // set by load, immutable after

	// ready is closed once data or err is set; both are then immutable.
	ready chan struct{}

	// mu guards started, data and err until ready is closed.
	mu      sync.Mutex
	started bool
	data    *os.File // the verified blob (spans) or uncompressed tar (no spans)
	err     error    // why the layer cannot be served: it is quarantined

	// urgent is set once a reader waits for the whole layer: its background
	// fetch then stops yielding and keeps no rate.
	urgent atomic.Bool

	// fmu guards fetching: the spans being fetched right now.
	fmu      sync.Mutex
	fetching map[int]*spanFetch
}

// whole reports whether the layer's bytes live in one file that must be
// complete before anything is served: no spans to read it by.
func (l *layer) whole() bool { return l.table.Spans == nil }

// cacheKey is the digest under which the layer's complete bytes are cached:
// the blob itself when it has spans, the uncompressed tar otherwise.
func (l *layer) cacheKey() digest.Digest {
	if l.compression == "zstd" {
		return l.diffID
	}
	return l.desc.Digest
}

// load sets the layer's entry table: from the index cache, from the
// registry's index artifact, or by streaming the whole layer, which also
// leaves its bytes ready.
func (l *layer) load(ctx context.Context) error {
	if t := l.cachedIndex(); t != nil {
		l.table = t
		return nil
	}
	if l.remote != nil {
		t, err := l.remoteIndex(ctx)
		if err == nil {
			l.table = t
			return nil
		}
		l.im.log.Warn("registry index unusable; streaming the layer instead", "layer", l.desc.Digest, "err", err)
		l.mode, l.why = ModeStream, "the registry's index was unusable ("+err.Error()+"): streamed and indexed"
	}
	l.mu.Lock()
	l.started = true
	l.mu.Unlock()
	t, f, err := l.fetchWhole(ctx, nil)
	l.finish(f, err)
	if err != nil {
		return err
	}
	l.table = t
	return nil
}

// valid reports whether t describes this layer's bytes.
func (l *layer) valid(t *index.Table) error {
	switch {
	case t.Digest != l.desc.Digest:
		return fmt.Errorf("index is for layer %s", t.Digest)
	case t.DiffID != l.diffID:
		return fmt.Errorf("index has DiffID %s, the config says %s", t.DiffID, l.diffID)
	case t.Spans == nil && l.compression != "zstd":
		return fmt.Errorf("index has no spans for a %s layer", l.compression)
	}
	return nil
}

func (l *layer) cachedIndex() *index.Table {
	b, err := l.im.client.Cache().ReadIndex(l.desc.Digest)
	if errors.Is(err, fetch.ErrNotFound) {
		return nil
	}
	if err == nil {
		var t *index.Table
		if t, err = index.Unmarshal(b); err == nil {
			if err = l.valid(t); err == nil {
				return t
			}
		}
	}
	l.im.log.Warn("cached index unusable; rebuilding it", "layer", l.desc.Digest, "err", err)
	return nil
}

// remoteIndex fetches the registry's index for this layer, checks that it
// describes this layer and keeps it in the index cache. Its span digests are
// what reads are verified against until the whole blob has been fetched and
// compared with it (fill).
func (l *layer) remoteIndex(ctx context.Context) (*index.Table, error) {
	b, err := l.im.img.FetchBlob(ctx, *l.remote)
	if err != nil {
		return nil, err
	}
	t, err := index.Unmarshal(b)
	if err != nil {
		return nil, err
	}
	if err := l.valid(t); err != nil {
		return nil, fmt.Errorf("%w: %v", index.ErrFormat, err)
	}
	if err := l.im.client.Cache().WriteIndex(l.desc.Digest, b); err != nil {
		l.im.log.Warn("caching layer index", "layer", l.desc.Digest, "err", err)
	}
	return t, nil
}

// fetchWhole fetches the whole layer in order, builds its table on the way
// and admits its bytes to the cache once the blob digest and the config's
// DiffID have both checked out. It returns the table and the cached file.
// With pace, the blob is read through it (background prefetch).
func (l *layer) fetchWhole(ctx context.Context, pace func(io.Reader) io.Reader) (*index.Table, *os.File, error) {
	start := time.Now()
	cache := l.im.client.Cache()
	blob, err := l.im.img.OpenBlob(ctx, l.desc)
	if err != nil {
		return nil, nil, err
	}
	defer blob.Close()
	rc := io.Reader(blob)
	if pace != nil {
		rc = pace(blob)
	}
	p, err := cache.Create(l.cacheKey())
	if err != nil {
		return nil, nil, err
	}
	defer p.Abort()
	var t *index.Table
	if l.compression == "zstd" {
		t, err = l.buildDiff(rc, p)
	} else {
		opts := l.im.opts.Index
		opts.SpanSize = l.im.opts.SpanSize
		t, err = index.BuildLayer(io.TeeReader(rc, p), l.desc.MediaType, opts)
	}
	if err != nil {
		return nil, nil, l.failed(rootCause(rc, err))
	}
	// The blob's digest is checked when its reader reaches the end; bytes
	// after the compressed stream must be read to get there.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return nil, nil, l.failed(err)
	}
	t.Digest, t.Size = l.desc.Digest, l.desc.Size
	if t.DiffID != l.diffID {
		return nil, nil, l.failed(&fetch.DigestError{What: fmt.Sprintf("uncompressed layer %s", l.desc.Digest), Want: l.diffID, Got: t.DiffID})
	}
	if err := p.Commit(); err != nil {
		return nil, nil, l.failed(err)
	}
	if b, err := t.MarshalBinary(); err != nil {
		l.im.log.Warn("encoding layer index", "layer", l.desc.Digest, "err", err)
	} else if err := cache.WriteIndex(l.desc.Digest, b); err != nil {
		l.im.log.Warn("caching layer index", "layer", l.desc.Digest, "err", err)
	}
	l.im.log.Info("layer fetched and indexed", "layer", l.desc.Digest, "entries", len(t.Entries),
		"bytes", t.Size, "tar_bytes", t.TarSize, "spans", len(t.Spans), "duration", time.Since(start).Round(time.Millisecond))
	f, err := cache.Open(l.cacheKey())
	return t, f, err
}

// buildDiff decompresses a layer with no random access and writes the
// uncompressed tar to w while building the table.
func (l *layer) buildDiff(rc io.Reader, w io.Writer) (*index.Table, error) {
	dr, err := index.Decompress(l.desc.MediaType, rc)
	if err != nil {
		return nil, err
	}
	defer dr.Close()
	t, err := index.Build(io.TeeReader(dr, w), l.im.opts.Index)
	if err != nil {
		return nil, err
	}
	t.Compression = "zstd"
	return t, nil
}

// rootCause explains a failure to decode a blob: when the blob's own bytes
// do not match its digest, that is the cause to report (the registry sent
// wrong bytes), not the decoder's complaint about them. Finding out means
// reading the rest of the blob, which the stream was going to read anyway.
func rootCause(blob io.Reader, err error) error {
	var de *fetch.DigestError
	if errors.As(err, &de) || !errors.Is(err, index.ErrFormat) {
		return err
	}
	if _, derr := io.Copy(io.Discard, blob); errors.As(derr, &de) {
		return derr
	}
	return err
}

// failed counts and logs a verification failure; other errors pass through.
func (l *layer) failed(err error) error {
	var de *fetch.DigestError
	if errors.As(err, &de) || errors.Is(err, fetch.ErrFormat) || errors.Is(err, index.ErrFormat) {
		l.im.verifyFailures.Add(1)
		l.im.log.Error("layer bytes failed verification; they are not served", "layer", l.desc.Digest, "err", err)
	}
	return err
}

// start fetches the layer's bytes in the background unless that has begun.
func (l *layer) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return
	}
	l.started = true
	l.im.bg.Go(func() error {
		l.finish(l.fill(l.im.ctx))
		return nil
	})
}

// ensure fetches the layer's bytes and waits for them.
func (l *layer) ensure(ctx context.Context) error {
	l.start()
	select {
	case <-l.ready:
		return l.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fill gets the layer's complete bytes: from the cache, re-checking their
// digest, or by fetching the whole layer. A layer whose table came from an
// index is then checked against what the verified stream shows: the entries
// and spans must be the index's, or the layer is quarantined.
func (l *layer) fill(ctx context.Context) (*os.File, error) {
	cache := l.im.client.Cache()
	key := l.cacheKey()
	if f, err := cache.Open(key); err == nil {
		if err := verifyFile(f, key); err == nil {
			return f, nil
		} else {
			f.Close()
			l.im.log.Error("cached layer damaged on disk; fetching it again", "layer", l.desc.Digest, "err", err)
			if err := cache.Remove(fetch.KindBlob, key); err != nil {
				l.im.log.Warn("removing damaged cache entry", "digest", key, "err", err)
			}
		}
	}
	t, f, err := l.fetchWhole(ctx, func(r io.Reader) io.Reader {
		return &prefetchReader{ctx: ctx, r: r, l: l, rate: l.im.opts.PrefetchRate, start: time.Now()}
	})
	if err != nil {
		return nil, err
	}
	if err := sameTable(l.table, t); err != nil {
		f.Close()
		cache.Remove(fetch.KindIndex, l.desc.Digest)
		return nil, l.failed(fmt.Errorf("%w: the index in use does not match the verified layer: %v", index.ErrFormat, err))
	}
	return f, nil
}

// sameTable reports how two tables of one layer differ, if they do.
func sameTable(a, b *index.Table) error {
	switch {
	case a.DiffID != b.DiffID || a.TarSize != b.TarSize:
		return fmt.Errorf("uncompressed stream differs")
	case !reflect.DeepEqual(a.Entries, b.Entries):
		return fmt.Errorf("entries differ")
	case a.SpanSize == b.SpanSize && !slices.Equal(a.Spans, b.Spans):
		return fmt.Errorf("spans differ")
	}
	return nil
}

func verifyFile(f *os.File, want digest.Digest) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return err
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != want {
		return &fetch.DigestError{What: "cached " + f.Name(), Want: want, Got: got}
	}
	return nil
}

// finish publishes the outcome of fetching the layer's bytes.
func (l *layer) finish(f *os.File, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.ready:
		if f != nil {
			f.Close()
		}
		return
	default:
	}
	l.data, l.err = f, err
	close(l.ready)
}

// done reports whether the layer's complete bytes have been settled, and
// with what outcome, without waiting.
func (l *layer) done() (f *os.File, err error, ok bool) {
	select {
	case <-l.ready:
		return l.data, l.err, true
	default:
		return nil, nil, false
	}
}

// blobFile returns the layer's verified blob once it is complete, else nil.
func (l *layer) blobFile() *os.File {
	if f, err, ok := l.done(); ok && err == nil && !l.whole() {
		return f
	}
	return nil
}

// readAt serves bytes of the uncompressed tar.
func (l *layer) readAt(ctx context.Context, p []byte, off int64) (int, error) {
	f, err, ok := l.done()
	if ok && err != nil {
		return 0, fmt.Errorf("layer %s is quarantined: %w", l.desc.Digest, err)
	}
	if !l.whole() && l.mode != ModeWhole {
		return l.readSpans(ctx, p, off)
	}
	if !ok {
		l.im.cacheMisses.Add(1)
		l.urgent.Store(true)
		if err := l.ensure(ctx); err != nil {
			return 0, err
		}
		f = l.data
	} else {
		l.im.cacheHits.Add(1)
	}
	if !l.whole() {
		return l.readSpans(ctx, p, off)
	}
	return f.ReadAt(p, off)
}

// state reports whether the layer's bytes are all here and verified. Both are
// the same today: complete bytes are admitted only verified.
func (l *layer) state() (complete, verified bool) {
	_, err, ok := l.done()
	return ok && err == nil, ok && err == nil
}

func (l *layer) close() error {
	if f, _, ok := l.done(); ok && f != nil {
		return f.Close()
	}
	return nil
}
