package fs

import (
	"bytes"
	"context"
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

// layer is one layer of an image: its plan, its entry table, how its bytes
// are reached (its reader), and its lifecycle: the current attempt to get
// its complete bytes, and quarantine.
//
// A layer with spans (gzip or plain tar) serves reads span by span, each
// verified against its digest, until its whole blob is in the cache and
// verified; then from that blob. A layer without spans (zstd) waits for its
// whole uncompressed tar, verified against the config's DiffID. An eStargz
// or zstd:chunked layer serves reads chunk by chunk through its TOC.
type layer struct {
	im          *Image
	idx         int
	desc        ocispec.Descriptor
	diffID      digest.Digest
	compression string // "gzip", "zstd" or "none"
	mode        string // for LayerInfo: how the plan reaches the bytes
	why         string
	remote      *ocispec.Descriptor // the registry's index blob for this layer, if any
	remoteFrom  *fetch.Image        // where remote is: the image's own repository or an index repository (indexImage)

	indexFile *os.File          // the index file table reads windows from, if any
	indexSrc  *io.SectionReader // the index itself within indexFile, or lazy
	lazy      *lazyIndex        // the registry's index, read piece by piece (indexes.go), if so
	built     bool              // table was built here from verified bytes, now or by an earlier mount (local index cache), not taken from a registry

	// mu guards table, rd, cur and bad.
	mu sync.Mutex
	// table is the layer's entry table, set by load; it is never modified:
	// ReleaseEntries replaces it with a copy without its entries.
	table *index.Table
	// rd is how the layer's bytes are reached (readers.go): chosen when
	// the layer is planned or loaded, replaced when a progressive stream
	// ends or when the verified bytes replace a wrong index's spans.
	rd reader
	// cur is the latest attempt to get the layer's complete bytes; a new
	// one is made when the last failed for a reason other than verification.
	cur *attempt
	// bad is why the layer is quarantined: its bytes failed verification
	// (or its table in use disagreed with them in a way disagree could not
	// narrow down). Every read is then EIO.
	bad error

	// urgent is set once a reader waits for the whole layer: its background
	// fetch then stops yielding and keeps no rate (setUrgent, which also
	// closes urgentc: a background fetch waiting for its turn stops waiting).
	urgent     atomic.Bool
	urgentc    chan struct{}
	urgentMake sync.Once

	served atomic.Int64 // bytes of its files read through the daemon (LayerInfo.BytesServed)

	// tree is the layer's regular files, extracted from a stream checked
	// against its DiffID, once unpack has made it (gzip layers whose blob
	// is complete); nil again if its files turn out damaged.
	tree       atomic.Pointer[fetch.Tree]
	unpackOnce sync.Once
	settled    atomic.Bool // the background is done with the layer (LayerInfo.Settled)

	// disagreed is set once the background check found the table in use
	// disagreeing with the layer's verified bytes (disagree.go).
	disagreed atomic.Pointer[disagreement]
	// pack, when set, holds the layer's frames of the start-up profile's
	// pack (pack.go), served until the layer is complete; packWarned is
	// set once a frame could not be served.
	pack       atomic.Pointer[layerPack]
	packWarned atomic.Bool
}

// setUrgent marks the layer as one a reader waits for whole.
func (l *layer) setUrgent() {
	if !l.urgent.Swap(true) {
		close(l.urgentDone())
	}
}

// urgentDone is closed once the layer is urgent.
func (l *layer) urgentDone() chan struct{} {
	l.urgentMake.Do(func() { l.urgentc = make(chan struct{}) })
	return l.urgentc
}

// tbl returns the layer's entry table (nil before load).
func (l *layer) tbl() *index.Table {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.table
}

// setTable sets the layer's table and, unless r is nil, its reader.
func (l *layer) setTable(t *index.Table, r reader) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.table = t
	if r != nil {
		l.rd = r
	}
}

// setReader makes r the way the layer's bytes are reached, and returns the
// one before.
func (l *layer) setReader(r reader) reader {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.rd
	l.rd = r
	return old
}

// reader returns how the layer's bytes are reached now.
func (l *layer) reader() reader {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rd
}

// current returns the layer's reader and why it is quarantined, if it is.
func (l *layer) current() (reader, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rd, l.bad
}

// attempt is one fetch of the layer's complete bytes; done is closed once
// data or err is set, and both are immutable after.
type attempt struct {
	done chan struct{}
	data *os.File // the verified blob (spans) or uncompressed tar (no spans)
	err  error
}

func (a *attempt) result() (*os.File, error, bool) {
	select {
	case <-a.done:
		return a.data, a.err, true
	default:
		return nil, nil, false
	}
}

// isVerification reports whether err means bytes or an index failed a
// check (quarantine), rather than a fetch that may work next time.
func isVerification(err error) bool {
	var de *fetch.DigestError
	return errors.As(err, &de) || errors.Is(err, fetch.ErrFormat) || errors.Is(err, index.ErrFormat)
}

// whole reports whether the layer's bytes live in one file that must be
// complete before anything is served: no spans to read it by.
func (l *layer) whole() bool { return l.tbl().Spans == nil }

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
	if c := l.chunks(); c != nil {
		return c.load(ctx)
	}
	if t := l.cachedIndex(); t != nil {
		l.setTable(t, l.tableReader(t))
		return nil
	}
	if l.remote != nil {
		t, err := l.remoteIndex(ctx)
		if err == nil {
			l.setTable(t, l.tableReader(t))
			return nil
		}
		l.im.log.Warn("registry index unusable; streaming the layer instead", "layer", l.desc.Digest, "source", l.indexImage().Source(), "err", err)
		l.im.fellBack(fbRemoteIndex)
		l.mode, l.why = ModeStream, "the index from "+l.im.indexWhere(l.indexImage())+" was unusable ("+err.Error()+"): streamed and indexed"
	}
	// A whole fetch takes one of Parallel slots; the tables above are
	// small, and all layers fetch theirs at once.
	if err := l.im.loadSem.Acquire(ctx); err != nil {
		return err
	}
	defer l.im.loadSem.Release()
	a := &attempt{done: make(chan struct{})}
	l.mu.Lock()
	l.cur = a
	l.mu.Unlock()
	t, f, err := l.fetchWhole(ctx, nil, nil)
	if err == nil {
		l.built = true
		l.setTable(t, l.tableReader(t))
	}
	l.finish(a, f, err)
	return err
}

// tableReader returns the reader of a layer with table t: its spans, once
// the layer is complete for one planned whole, or its uncompressed tar
// (no spans).
func (l *layer) tableReader(t *index.Table) reader {
	var spans *spanReader
	if t.Spans != nil {
		spans = &spanReader{l: l, t: withoutEntries(t), parts: l.im.img}
	}
	if spans != nil && l.mode != ModeWhole {
		return spans
	}
	return &wholeReader{l: l, spans: spans}
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

// cachedIndex opens the local index of this layer, if there is one. Its
// windows stay in the file until a span needs one (index.Open).
func (l *layer) cachedIndex() *index.Table {
	f, r, err := l.im.client.Cache().OpenIndex(l.desc.Digest)
	if errors.Is(err, fetch.ErrNotFound) {
		return nil
	}
	if err == nil {
		var t *index.Table
		if t, err = index.Open(r, r.Size()); err == nil {
			if err = l.valid(t); err == nil {
				// The local index cache holds only indexes built here
				// from verified bytes (a registry's index is kept as a
				// blob): the background fetch checks the blob's digest
				// and need not decode the layer again to re-check it.
				l.indexFile, l.indexSrc = f, r
				l.built = true
				return t
			}
		}
		f.Close()
	}
	l.im.log.Warn("cached index unusable; rebuilding it", "layer", l.desc.Digest, "err", err)
	l.im.fellBack(fbCachedIndex)
	return nil
}

// remoteIndex fetches the registry's index for this layer and checks that it
// names this layer. Its span digests are what reads are verified against
// until the whole blob has been fetched and compared with it (fill).
func (l *layer) remoteIndex(ctx context.Context) (*index.Table, error) {
	cache := l.im.client.Cache()
	// An index with a published head is read piece by piece, unless it is
	// cached whole already or its layer is fetched whole anyway (then every
	// window is needed at once).
	if size, d, ok := fetch.IndexHead(*l.remote); ok && l.mode != ModeWhole && !cache.Has(l.remote.Digest) {
		t, li, err := l.openLazyIndex(ctx, *l.remote, size, d)
		if err != nil {
			return nil, err
		}
		if err := l.valid(t); err != nil {
			li.close()
			return nil, fmt.Errorf("%w: %v", index.ErrFormat, err)
		}
		l.lazy, l.indexSrc = li, io.NewSectionReader(li, 0, l.remote.Size)
		return t, nil
	}
	b, err := l.indexImage().FetchBlob(indexBytes(ctx), *l.remote)
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
	// Only an index built here from verified bytes goes into the local
	// index cache (fill writes it once the whole layer checks out). The
	// registry's index blob is kept as a blob, by its own digest, so the
	// next mount reads it from disk, still as the registry's index.
	if err := cache.Put(l.remote.Digest, bytes.NewReader(b)); err != nil {
		l.im.log.Warn("caching the registry's index blob", "layer", l.desc.Digest, "err", err)
		return t, nil
	}
	// Read the windows from the cached blob when a span needs one, rather
	// than keeping them in memory.
	if f, err := cache.Open(l.remote.Digest); err == nil {
		if ft, err := index.Open(f, int64(len(b))); err == nil {
			l.indexFile, l.indexSrc = f, io.NewSectionReader(f, 0, int64(len(b)))
			return ft, nil
		}
		f.Close()
	}
	return t, nil
}

// fetchWhole fetches the whole layer in order, builds its table on the way
// and admits its bytes to the cache once the blob digest and the config's
// DiffID have both checked out. It returns the table and the cached file.
// With pace, the blob is read through it (background prefetch); with stream,
// a progressive load's reader learns of every span as it is indexed.
func (l *layer) fetchWhole(ctx context.Context, pace func(io.Reader) io.Reader, stream *streamReader) (*index.Table, *os.File, error) {
	start := time.Now()
	ctx = l.countStream(ctx, pace != nil)
	cache := l.im.client.Cache()
	inUse := l.tbl()
	var blob io.ReadCloser
	if inUse != nil && len(inUse.Spans) > 0 && stream == nil && !cache.Has(l.desc.Digest) {
		blob = newGapStream(ctx, l, inUse, pace != nil) // skips what readers fetched already (gapstream.go)
	} else if pace != nil && stream == nil && !l.urgent.Load() && !cache.Has(l.desc.Digest) {
		// In pieces that take turns with readers; a layer a reader waits
		// for whole is streamed in one GET instead.
		blob = newGapStream(ctx, l, nil, true)
	} else {
		var err error
		if blob, err = l.im.img.OpenBlob(ctx, l.desc); err != nil {
			return nil, nil, err
		}
	}
	defer blob.Close()
	rc := io.Reader(blob)
	if pace != nil {
		rc = pace(blob)
	}
	// A layer without spans is served from its cached tar alone: without
	// room for it, there is nothing to serve it from.
	sink := &blobSink{strict: l.compression == "zstd"}
	if p, err := cache.Create(l.cacheKey()); err != nil {
		sink.drop(err)
	} else {
		sink.p = p
		defer p.Abort()
	}
	if sink.strict && sink.err != nil {
		return nil, nil, l.uncacheable(sink.err)
	}
	var t *index.Table
	var err error
	if l.compression == "zstd" {
		t, err = l.buildDiff(rc, sink)
	} else {
		opts := l.im.opts.Index
		opts.SpanSize = l.im.opts.SpanSize
		if inUse != nil {
			opts.SpanSize = inUse.SpanSize // to compare with the index in use
		}
		if stream != nil {
			name := ""
			if sink.p != nil {
				name = sink.p.Name()
			}
			stream.started(sink, name)
			opts.Progress = stream.publish
		}
		t, err = index.BuildLayer(io.TeeReader(rc, sink), l.desc.MediaType, opts)
	}
	if err != nil {
		if sink.strict && sink.err != nil {
			return nil, nil, l.uncacheable(sink.err)
		}
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
	f, err := sink.admit(cache, l.cacheKey())
	if err != nil {
		if isVerification(err) {
			return nil, nil, l.failed(err)
		}
		if sink.strict {
			return nil, nil, l.uncacheable(err)
		}
		l.im.log.Warn("layer verified but not cached; its reads fetch and verify its spans instead", "layer", l.desc.Digest, "err", err)
		l.im.fellBack(fbNotCached)
	}
	if b, err := t.MarshalBinary(); err != nil {
		l.im.log.Warn("encoding layer index", "layer", l.desc.Digest, "err", err)
	} else if err := cache.WriteIndex(l.desc.Digest, b); err != nil {
		l.im.log.Warn("caching layer index", "layer", l.desc.Digest, "err", err)
	}
	l.im.log.Info("layer fetched and indexed", "layer", l.desc.Digest, "entries", len(t.Entries),
		"bytes", t.Size, "tar_bytes", t.TarSize, "spans", len(t.Spans), "cached", f != nil, "duration", time.Since(start).Round(time.Millisecond))
	return t, f, nil
}

// uncacheable is the error of a layer without spans whose uncompressed tar
// the cache could not take (err): it cannot be served.
func (l *layer) uncacheable(err error) error {
	return fmt.Errorf("layer %s has no random access and is served only from its cached tar, which the cache could not take: %w", l.desc.Digest, err)
}

// blobSink writes a layer's bytes into their pending cache entry as the
// stream passes them. A write the cache refuses (a full disk) must not fail
// the stream: its bytes are verified as they pass and the table built from
// them, which is what serving needs; so the sink drops the entry, freeing
// its space, and takes the rest of the stream without keeping it. The
// layer's reads then fetch and verify its spans, as if it had not been
// fetched whole. Only a strict sink (a layer without spans, whose reads
// have nothing else to come from) fails the stream instead.
type blobSink struct {
	strict bool
	p      *fetch.Pending // nil once dropped

	// kept counts the blob bytes the pending entry holds; err, why the
	// blob is not cached, is set once, before dropped. A progressive
	// reader reads kept and dropped while the stream runs (streamReader).
	err     error
	kept    atomic.Int64
	dropped atomic.Bool
}

func (s *blobSink) Write(b []byte) (int, error) {
	if s.p == nil {
		if s.strict {
			return 0, s.err
		}
		return len(b), nil
	}
	n, err := s.p.Write(b)
	if err != nil {
		s.kept.Add(int64(n))
		s.drop(err)
		if s.strict {
			return n, err
		}
		return len(b), nil
	}
	s.kept.Add(int64(n))
	return n, nil
}

// drop gives up caching the blob because of err, and frees what the
// pending entry held.
func (s *blobSink) drop(err error) {
	s.err = err
	if s.p != nil {
		s.p.Abort()
		s.p = nil
	}
	s.dropped.Store(true)
}

// holds reports whether the pending entry holds the blob's bytes up to end:
// always, unless it was dropped before them.
func (s *blobSink) holds(end int64) bool {
	return !s.dropped.Load() || end <= s.kept.Load()
}

// admit commits the blob the sink wrote, its digest checked again, and
// opens it. It returns nil and why when the blob is not cached: a
// verification error (a *DigestError) if what was written is not the
// blob, which no stream that checked out can give.
func (s *blobSink) admit(c *fetch.Cache, key digest.Digest) (*os.File, error) {
	if s.p == nil {
		return nil, s.err
	}
	if err := s.p.Commit(); err != nil {
		s.p = nil
		return nil, err
	}
	s.p = nil
	return c.Open(key)
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
	if isVerification(err) {
		l.im.verifyFailures.Add(1)
		l.im.log.Error("layer bytes failed verification; they are not served", "layer", l.desc.Digest, "err", err)
	}
	return err
}

// start fetches the layer's bytes in the background unless an attempt is
// under way, has succeeded, or the layer is quarantined; it returns the
// attempt to wait for.
func (l *layer) start() *attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a := l.cur; a != nil {
		if _, err, ok := a.result(); !ok || err == nil || l.bad != nil {
			return a
		}
	}
	a := &attempt{done: make(chan struct{})}
	l.cur = a
	r := l.rd
	l.im.bg.Go(func() error {
		var f *os.File
		err := errors.New("layer not loaded")
		if r != nil {
			f, err = r.fill(l.im.ctx)
		}
		l.finish(a, f, err)
		return nil
	})
	return a
}

// ensure fetches the layer's bytes and waits for them.
func (l *layer) ensure(ctx context.Context) error {
	a := l.start()
	select {
	case <-a.done:
		return a.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// filler is what fill needs of one way of getting a layer's complete
// bytes: an ocifs index's (or none: tarFiller) or a TOC's (chunkReader).
type filler interface {
	// fillCached checks f, the cached complete bytes, and returns the table
	// they give (nil: the table in use was built from them). A damaged f
	// (not what the cache admitted) is fetched again; err fails the fill.
	fillCached(f *os.File) (t *index.Table, damaged, err error)
	// fillFetch fetches the complete bytes, read through pace, verifies
	// and caches them; a nil file means the cache had no room.
	fillFetch(ctx context.Context, pace func(io.Reader) io.Reader) (*index.Table, *os.File, error)
	// fillCompare checks the table in use against t, from the verified
	// bytes, and acts on a disagreement (disagree).
	fillCompare(ctx context.Context, t *index.Table) error
}

// fill gets the layer's complete bytes, cached under key: from the cache
// (their digest checked again) or by fetching the whole layer in the
// background (prefetchReader), and checks the table in use against the one
// those verified bytes give (w.fillCompare). A registry index or a TOC is
// trusted for its span or chunk digests only until this check.
func (l *layer) fill(ctx context.Context, key digest.Digest, w filler) (*os.File, error) {
	cache := l.im.client.Cache()
	if f, err := cache.Open(key); err == nil {
		t, damaged, err := w.fillCached(f)
		if damaged == nil {
			if err == nil {
				err = l.compareFilled(ctx, w, f, t)
			}
			if err != nil {
				f.Close()
				return nil, l.failed(err)
			}
			return f, nil
		}
		f.Close()
		l.im.log.Error("cached layer damaged on disk; fetching it again", "layer", l.desc.Digest, "err", damaged)
		if err := cache.Remove(fetch.KindBlob, key); err != nil {
			l.im.log.Warn("removing damaged cache entry", "digest", key, "err", err)
		}
	}
	l.im.counts.streams.Add(1)
	t, f, err := w.fillFetch(l.countStream(ctx, true), func(r io.Reader) io.Reader {
		return &prefetchReader{ctx: ctx, r: r, l: l, rate: l.im.opts.PrefetchRate, start: time.Now()}
	})
	l.im.counts.streams.Add(-1)
	if err != nil {
		return nil, err
	}
	if err := l.compareFilled(ctx, w, f, t); err != nil {
		if f != nil {
			f.Close()
		}
		return nil, l.failed(err)
	}
	return f, nil
}

// compareFilled checks what was served of the layer against its verified
// bytes f, which give table t: the table in use (w.fillCompare), then the
// frames of a start-up profile's pack (checkPack).
func (l *layer) compareFilled(ctx context.Context, w filler, f *os.File, t *index.Table) error {
	if err := w.fillCompare(ctx, t); err != nil {
		return err
	}
	return l.checkPack(ctx, f, t)
}

// fillWhole fills a layer with an ocifs index (or none).
func (l *layer) fillWhole(ctx context.Context) (*os.File, error) {
	return l.fill(ctx, l.cacheKey(), tarFiller{l})
}

// tarFiller fills a layer with an ocifs index (or none): unless its table
// was built here from verified bytes, its entries, spans and windows must
// be those the verified bytes give, or what it got wrong is refused and the
// rest served from the verified bytes (check).
type tarFiller struct{ l *layer }

func (w tarFiller) fillCached(f *os.File) (*index.Table, error, error) {
	t, err := w.l.rebuild(f)
	return t, err, nil
}

func (w tarFiller) fillFetch(ctx context.Context, pace func(io.Reader) io.Reader) (*index.Table, *os.File, error) {
	return w.l.fetchWhole(ctx, pace, nil)
}

func (w tarFiller) fillCompare(ctx context.Context, t *index.Table) error { return w.l.check(ctx, t) }

// rebuild checks a cached file against its digest and, unless the table in
// use was built here (then it returns no table), rebuilds the table from it.
func (l *layer) rebuild(f *os.File) (*index.Table, error) {
	if l.built {
		return nil, l.im.client.Cache().Verify(f, l.cacheKey())
	}
	r := io.NewSectionReader(f, 0, 1<<62)
	var t *index.Table
	var err error
	if l.compression == "zstd" {
		t, err = index.Build(r, l.im.opts.Index)
		if err == nil && t.DiffID != l.diffID {
			err = &fetch.DigestError{What: "cached " + f.Name(), Want: l.diffID, Got: t.DiffID}
		}
	} else {
		opts := l.im.opts.Index
		opts.SpanSize = l.tbl().SpanSize
		t, err = index.BuildLayer(r, l.desc.MediaType, opts)
		if err == nil && (t.Digest != l.desc.Digest || t.DiffID != l.diffID) {
			err = &fetch.DigestError{What: "cached " + f.Name(), Want: l.desc.Digest, Got: t.Digest}
		}
	}
	return t, err
}

// check compares the table in use with t, built from the verified bytes,
// and acts on a disagreement (disagree): what the table got wrong is
// refused, the rest served from the verified bytes, through t's spans when
// the table's spans or windows differ. Entries released to save memory are
// read again from the index file. No t: the table in use was built here.
func (l *layer) check(ctx context.Context, t *index.Table) error {
	cur := l.tbl()
	if t == nil || cur == t {
		return nil
	}
	if l.lazy != nil {
		// Every window is compared below: fetch the rest of the index
		// at once and check it whole.
		if err := l.lazy.complete(ctx); err != nil {
			return fmt.Errorf("reading the registry's index whole: %w", err)
		}
	}
	if cur.Entries == nil && len(t.Entries) > 0 && l.indexSrc != nil {
		var err error
		if cur, err = index.Open(l.indexSrc, l.indexSrc.Size()); err != nil {
			return fmt.Errorf("%w: reading the index in use again: %v", index.ErrFormat, err)
		}
	}
	spans, err := spansDiffer(cur, t)
	if err != nil {
		return fmt.Errorf("%w: comparing the index in use with the verified layer: %v", index.ErrFormat, err)
	}
	differ, first := diffByPath(cur.Entries, t.Entries)
	if differ == 0 && !spans {
		return nil
	}
	var inUse reader
	if spans {
		inUse = l.setReader(&verifiedReader{l: l, t: withoutEntries(t), parts: l.im.img})
	}
	if err := l.disagree(ctx, "index", t.Entries, differ, first, spans); err != nil {
		if spans {
			l.setReader(inUse)
		}
		return err
	}
	// Built here from verified bytes, t may go into the local index cache
	// (fetchWhole put it there already unless the blob was cached): the
	// next mount serves the layer from it.
	cache := l.im.client.Cache()
	if !cache.HasIndex(l.desc.Digest) {
		if b, err := t.MarshalBinary(); err != nil {
			l.im.log.Warn("encoding layer index", "layer", l.desc.Digest, "err", err)
		} else if err := cache.WriteIndex(l.desc.Digest, b); err != nil {
			l.im.log.Warn("caching layer index", "layer", l.desc.Digest, "err", err)
		}
	}
	return nil
}

// spansDiffer reports whether two tables of one layer differ in their
// uncompressed stream, their spans or any span's window (a span's digest
// covers only its compressed bytes; the window it decodes with must be
// right too).
func spansDiffer(a, b *index.Table) (bool, error) {
	switch {
	case a.DiffID != b.DiffID || a.TarSize != b.TarSize:
		return true, nil
	case a.SpanSize != b.SpanSize || !slices.Equal(a.Spans, b.Spans):
		return true, nil
	}
	for i := range a.Spans {
		wa, err := a.Window(i)
		if err != nil {
			return false, err
		}
		wb, err := b.Window(i)
		if err != nil {
			return false, err
		}
		if !bytes.Equal(wa, wb) {
			return true, nil
		}
	}
	return false, nil
}

// diffByPath counts the paths whose entries (all of them, in order, offsets
// included) differ between the table in use and the verified one, and
// describes the first.
func diffByPath(inUse, verified []index.Entry) (int, string) {
	byPath := func(es []index.Entry) (map[string][]index.Entry, []string) {
		m := map[string][]index.Entry{}
		var order []string
		for _, e := range es {
			if _, ok := m[e.Name]; !ok {
				order = append(order, e.Name)
			}
			m[e.Name] = append(m[e.Name], e)
		}
		return m, order
	}
	a, aOrder := byPath(inUse)
	b, bOrder := byPath(verified)
	n, first := 0, ""
	note := func(p, how string) {
		if n++; n == 1 {
			first = fmt.Sprintf("%q %s", p, how)
		}
	}
	for _, p := range aOrder {
		switch w, ok := b[p]; {
		case !ok:
			note(p, "is not in the verified layer")
		case !reflect.DeepEqual(a[p], w):
			note(p, "differs")
		}
	}
	for _, p := range bOrder {
		if _, ok := a[p]; !ok {
			note(p, "is missing from the index")
		}
	}
	return n, first
}

// finish publishes the outcome of an attempt; a verification failure
// quarantines the layer.
func (l *layer) finish(a *attempt, f *os.File, err error) {
	l.mu.Lock()
	if err != nil && isVerification(err) && l.bad == nil {
		l.bad = err
		l.im.fellBack(fbQuarantine)
	}
	a.data, a.err = f, err
	close(a.done)
	l.mu.Unlock()
	// Without the blob in the cache there is nothing to extract files from.
	if err == nil && (f == nil || !l.startUnpack()) {
		l.settled.Store(true)
	}
}

// quarantined returns why the layer must not be served, or nil.
func (l *layer) quarantined() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bad
}

// fetched reports whether an attempt to get the layer's complete bytes has
// succeeded, and returns its file: the verified blob (or tar), or nil when
// the cache had no room for it. Such a layer's bytes were verified as they
// streamed, its table is built, and its reads go through its spans.
func (l *layer) fetched() (*os.File, bool) {
	l.mu.Lock()
	a := l.cur
	l.mu.Unlock()
	if a == nil {
		return nil, false
	}
	if f, err, ok := a.result(); ok && err == nil {
		return f, true
	}
	return nil, false
}

// complete returns the layer's verified file once an attempt has
// succeeded and the cache holds it, else nil.
func (l *layer) complete() *os.File {
	f, _ := l.fetched()
	return f
}

// blobFile returns the layer's verified blob once it is complete, else nil.
func (l *layer) blobFile() *os.File {
	if l.whole() {
		return nil
	}
	return l.complete()
}

// readAt serves bytes of the uncompressed tar, for a read of a file whose
// content ends at fileEnd: read-ahead stops there.
func (l *layer) readAt(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	r, bad := l.current()
	if bad != nil {
		return 0, fmt.Errorf("layer %s is quarantined: %w", l.desc.Digest, bad)
	}
	if r == nil {
		return 0, fmt.Errorf("layer %s: not loaded", l.desc.Digest)
	}
	if lp := l.pack.Load(); lp != nil && l.complete() == nil {
		return l.readPacked(ctx, lp, r, p, off, fileEnd)
	}
	return r.readAt(ctx, p, off, fileEnd)
}

// state reports whether the layer's bytes are all here, and whether they
// and everything served of the layer are verified: complete bytes are
// admitted only verified, but a table in use that disagrees with them
// leaves nodes refused (disagree.go).
func (l *layer) state() (complete, verified bool) {
	ok := l.complete() != nil && l.quarantined() == nil
	return ok, ok && l.refusedCount() == 0
}

func (l *layer) close() error {
	var errs []error
	if l.indexFile != nil {
		errs = append(errs, l.indexFile.Close())
	}
	if l.lazy != nil {
		errs = append(errs, l.lazy.close())
	}
	if t := l.tree.Load(); t != nil {
		errs = append(errs, t.Close())
	}
	if f := l.complete(); f != nil {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
