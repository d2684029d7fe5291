package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
	"github.com/ocifs/ocifs/index/toc"
)

// This file serves eStargz and zstd:chunked layers (modes ModeEstargz and
// ModeZstdChunked) with no ocifs index: the layer's own TOC, bound to the
// manifest by a digest annotation, gives the tree and the chunks; every
// chunk is checked against its TOC digest before a byte of it is served.
//
// Trust chain: manifest digest → layer descriptor (annotations) → TOC
// (toc.Decode checks it against the annotation digest) → chunkDigest
// (toc.DecodeChunk checks the uncompressed chunk) → the bytes served; the
// names come from the tar-split (bound by the TOC's tarSplitDigest) when
// the layer has one. When the whole blob has been fetched (background), its
// digest and its DiffID are checked against the descriptor and the config
// (a mismatch quarantines the layer), then its tar entries against the TOC
// in use: where they disagree, the verified bytes win (disagree.go).

// Chunk fetch bounds.
const (
	// maxRunBytes bounds the compressed bytes one foreground Range request
	// asks for, so one read cannot turn into a fetch of the whole layer.
	maxRunBytes = 16 << 20
	// maxPrefetchRequest bounds one request of the landmark prefetch.
	maxPrefetchRequest = 64 << 20
)

// rangeChecker fetches a range of a blob and hands it to check (fetch.Image);
// CheckRangeKept keeps what check accepted for the next load.
type rangeChecker interface {
	CheckRange(ctx context.Context, desc ocispec.Descriptor, off, n int64, check func(b []byte) error) error
	CheckRangeKept(ctx context.Context, desc ocispec.Descriptor, off, n int64, check func(b []byte) error) error
}

// chunkReader serves a lazy eStargz or zstd:chunked layer chunk by chunk:
// where its TOC is and, after load, the parsed TOC.
type chunkReader struct {
	l      *layer
	ranges rangeChecker
	loc    toc.Location
	toc    *toc.Layer // set by loadChunked, immutable after
	// landmarkDone is closed when the landmark prefetch has ended (or
	// was never started).
	landmarkDone chan struct{}
}

// chunks returns the layer's chunk reader, or nil when it is served
// otherwise.
func (l *layer) chunks() *chunkReader {
	c, _ := l.reader().(*chunkReader)
	return c
}

// tocOptions are the caps of a TOC, from the caps of a tar.
func (im *Image) tocOptions() toc.Options {
	o := im.opts.Index
	return toc.Options{MaxEntries: o.MaxEntries, MaxNameLen: o.MaxNameLen, MaxXattrBytes: o.MaxXattrBytes}
}

// planChunked looks at each layer that would be streamed or fetched whole
// (no ocifs index, gzip or zstd, not small) for an eStargz or zstd:chunked
// TOC, with at most one Range GET of the blob's last bytes per layer, and
// serves the ones whose TOC the manifest binds lazily.
func (im *Image) planChunked(ctx context.Context) error {
	var g errgroup.Group
	g.SetLimit(im.opts.FetchParallel)
	for _, l := range im.layers {
		candidate := l.mode == ModeStream || (l.mode == ModeWhole && l.compression == "zstd")
		if !candidate || l.desc.Size < im.opts.WholeThreshold {
			continue
		}
		g.Go(func() error { return l.planChunked(ctx) })
	}
	return g.Wait()
}

// boundTOC reports whether the layer's annotations bind an eStargz or
// zstd:chunked TOC by digest: then it is likely served lazily from that
// TOC, without an ocifs index (planChunked decides, after the footer).
func (l *layer) boundTOC() bool {
	if l.desc.Size < l.im.opts.WholeThreshold {
		return false
	}
	a := l.desc.Annotations
	return a[toc.AnnotationTOCDigest] != "" || a[toc.AnnotationManifestChecksum] != ""
}

// planChunked sets the layer's mode to ModeEstargz or ModeZstdChunked when
// its annotations or footer locate a TOC the manifest binds (or any TOC,
// with Options.InsecureLazy); otherwise it keeps the plan and says why in
// the layer's why.
func (l *layer) planChunked(ctx context.Context) error {
	opts := l.im.tocOptions()
	loc, err := toc.Locate(l.desc, nil, opts)
	if errors.Is(err, toc.ErrNeedTail) {
		n := min(toc.TailSize(), l.desc.Size)
		err = l.im.img.CheckRangeKept(ctx, l.desc, l.desc.Size-n, n, func(tail []byte) error {
			var lerr error
			loc, lerr = toc.Locate(l.desc, tail, opts)
			return lerr
		})
	}
	switch {
	case errors.Is(err, toc.ErrNotLazy):
		return nil
	case err != nil && ctx.Err() != nil:
		return err
	case err != nil:
		l.im.log.Warn("layer claims a lazy format but its TOC cannot be located; keeping the plan",
			"layer", l.desc.Digest, "mode", l.mode, "err", err)
		l.why = fmt.Sprintf("eStargz/zstd:chunked TOC not usable (%v); %s", err, l.why)
		l.im.fellBack(fbTOCUnusable)
		return nil
	}
	name := loc.Layout.String()
	if !loc.Verified() && !l.im.opts.InsecureLazy {
		l.im.log.Warn("lazy layer refused: its TOC is not bound to the manifest by a digest annotation",
			"layer", l.desc.Digest, "layout", name, "mode", l.mode)
		l.why = fmt.Sprintf("%s TOC found but unverified (no %s annotation binds it to the manifest): lazy serving refused (--insecure-lazy accepts it); %s",
			name, toc.AnnotationTOCDigest, l.why)
		l.im.fellBack(fbTOCUnverified)
		return nil
	}
	l.setReader(&chunkReader{l: l, ranges: l.im.img, loc: loc, landmarkDone: make(chan struct{})})
	l.mode = loc.Format()
	switch {
	case !loc.Verified():
		l.why = fmt.Sprintf("%s TOC NOT bound to the manifest (no digest annotation), accepted by --insecure-lazy: chunks fetched on demand, checked only against the unverified TOC", name)
	case loc.Digest != "":
		l.why = fmt.Sprintf("%s TOC bound by its manifest-checksum annotation: chunks fetched on demand, each verified against its chunk digest", name)
	default:
		l.why = fmt.Sprintf("%s TOC bound by its %s annotation: chunks fetched on demand, each verified against its chunk digest", name, toc.AnnotationTOCDigest)
	}
	return nil
}

// maxTarSplitGap is how far after the TOC the tar-split may start for one
// Range GET to fetch both: containers/storage puts one skippable frame
// header (8 bytes) between them.
const maxTarSplitGap = 64

// loadChunked fetches the layer's TOC with one Range GET (and its tar-split,
// in the same request when it follows the TOC), verifies and parses it, and
// sets the table from it. A TOC that does not match the digest the manifest
// binds fails the load. A TOC that cannot give the layer's names exactly (a
// tar-split that does not check out or match, or names with U+FFFD and no
// tar-split to correct them) is not used: the layer is loaded as if it had
// none (unchunk).
func (c *chunkReader) load(ctx context.Context) error {
	start := time.Now()
	l := c.l
	opts := l.im.tocOptions()
	off, n := c.loc.Offset, c.loc.Size
	splitOff, splitSize := c.loc.TarSplitOffset, c.loc.TarSplitSize
	together := splitSize > 0 && splitOff >= off+n && splitOff-(off+n) <= maxTarSplitGap && n+splitSize <= toc.DefaultMaxTOCSize
	if together {
		n = splitOff + splitSize - off
	}
	var lt, named *toc.Layer
	var splitErr error
	useSplit := func(lt *toc.Layer, raw []byte) {
		named, splitErr = toc.ApplyTarSplit(lt, c.loc, raw, opts)
	}
	// The TOC (and its tar-split) are kept in the cache once checked,
	// so that the next load of the layer, a daemon restarting while the
	// registry is down, say, needs no registry for them.
	err := c.ranges.CheckRangeKept(ctx, l.desc, off, n, func(raw []byte) error {
		var derr error
		lt, derr = toc.Decode(c.loc, raw[:c.loc.Size], opts)
		if derr == nil && together && lt.TarSplitDigest != "" {
			useSplit(lt, raw[splitOff-off:])
		}
		return derr
	})
	if err != nil {
		if errors.Is(err, toc.ErrDigest) {
			return l.failed(fmt.Errorf("%w: the %s TOC does not match the digest its manifest annotation binds: %w",
				index.ErrFormat, c.loc.Layout, err))
		}
		if errors.Is(err, index.ErrFormat) {
			return l.failed(fmt.Errorf("the %s TOC: %w", c.loc.Layout, err))
		}
		return fmt.Errorf("fetching the %s TOC: %w", c.loc.Layout, err)
	}
	hasSplit := lt.TarSplitDigest != "" && splitSize > 0
	if hasSplit && !together {
		err := c.ranges.CheckRangeKept(ctx, l.desc, splitOff, splitSize, func(raw []byte) error {
			useSplit(lt, raw)
			return nil
		})
		if err != nil {
			return fmt.Errorf("fetching the %s tar-split: %w", c.loc.Layout, err)
		}
	}
	switch name, inexact := lt.InexactName(); {
	case hasSplit && splitErr != nil:
		return c.unchunk(ctx, fmt.Sprintf("its tar-split does not give the TOC's names exactly (%v)", splitErr))
	case hasSplit:
		lt = named
		l.why += "; names from its tar-split, which the TOC binds by digest"
	case inexact:
		return c.unchunk(ctx, fmt.Sprintf("the TOC has %q, whose U+FFFD stands for bytes that are not UTF-8, and no tar-split to say which", name))
	}
	c.toc = lt
	l.setTable(&index.Table{
		Entries:     lt.Entries,
		Digest:      l.desc.Digest,
		DiffID:      l.diffID,
		Size:        l.desc.Size,
		TarSize:     lt.ContentSize,
		Compression: lt.Format,
	}, c)
	var splitBytes int64
	if hasSplit {
		splitBytes = splitSize
	}
	l.im.log.Info("layer TOC loaded", "layer", l.desc.Digest, "layout", c.loc.Layout, "entries", len(lt.Entries),
		"chunks", len(lt.Chunks), "toc_bytes", c.loc.Size, "tar_split_bytes", splitBytes,
		"landmark", lt.Landmark, "duration", time.Since(start).Round(time.Millisecond))
	if lt.Landmark != toc.LandmarkPrefetch || lt.PrefetchU == 0 {
		close(c.landmarkDone)
		return nil
	}
	l.im.bg.Go(func() error {
		defer close(c.landmarkDone)
		c.prefetchLandmark(l.im.ctx)
		return nil
	})
	return nil
}

// unchunk gives up serving the layer from its TOC, which cannot say the
// layer's names exactly (why), and loads it as it would have been without
// one: streamed (gzip) or fetched whole (zstd), verified against the layer
// digest and the config's DiffID, so that what it serves is exactly its tar,
// before the background check and after it.
func (c *chunkReader) unchunk(ctx context.Context, why string) error {
	l := c.l
	l.setReader(nil)
	close(c.landmarkDone)
	how := "streamed once, verified against the layer digest and indexed (later mounts are lazy)"
	l.mode = ModeStream
	if l.compression == "zstd" {
		how, l.mode = "fetched whole and verified against the layer digest", ModeWhole
	}
	l.im.log.Warn("lazy layer refused: its TOC cannot give its names exactly; "+how+" instead",
		"layer", l.desc.Digest, "layout", c.loc.Layout, "mode", l.mode, "err", why)
	l.why = fmt.Sprintf("%s TOC not used: %s; %s", c.loc.Layout, why, how)
	l.im.fellBack(fbTOCNames)
	return l.load(ctx)
}

// prefetchLandmark fetches the chunks of the files the layer's builder put
// before its .prefetch.landmark, in one request where nothing else holds
// them, into the chunk cache. It yields to readers.
func (c *chunkReader) prefetchLandmark(ctx context.Context) {
	l, lt := c.l, c.toc
	k := sort.Search(len(lt.Chunks), func(i int) bool { return lt.Chunks[i].U >= lt.PrefetchU })
	if k == 0 || l.im.fg.wait(ctx) != nil {
		return
	}
	start := time.Now()
	cache := l.im.client.Cache()
	set := c.set()
	run := l.im.spans.claimEach(set.key(), seq(k), func(j int) bool { return cache.Has(lt.Chunks[j].Digest) })
	if len(run) == 0 {
		return
	}
	l.fetchRun(set, run, false)
	l.im.log.Info("landmark prefetch done", "layer", l.desc.Digest, "chunks", len(run),
		"bytes", lt.PrefetchEnd, "duration", time.Since(start).Round(time.Millisecond))
}

// seq returns 0, 1, ..., n-1.
func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// readAt serves virtual bytes [off, off+len(p)) of a lazy layer: the
// concatenated content of its regular files, chunk by chunk.
func (c *chunkReader) readAt(ctx context.Context, p []byte, off, _ int64) (int, error) {
	s := c.set()
	r, err := c.l.pieceRunOf(s, off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	ahead := -1
	if s.blob == nil && !isReplay(ctx) && c.missing(s, r) {
		ahead = c.neighbours(r, off+int64(len(p)), c.l.im.fg.neighbourBytes())
	}
	return c.l.readPiecesAhead(ctx, s, p, r, ahead)
}

// missing reports whether a chunk of run r is neither in the piece cache
// nor in the disk cache: only a read that goes to the registry anyway
// takes its neighbours along.
func (c *chunkReader) missing(s chunkSet, r pieceRun) bool {
	cache := c.l.im.client.Cache()
	for i := r.first; i <= r.last; i++ {
		if c.l.im.spans.get(s.key().at(i)) == nil && !cache.Has(c.toc.Chunks[i].Digest) {
			return true
		}
	}
	return false
}

// Neighbour read-ahead. A program starting up reads many small files one
// after another, and each costs a round trip: python's imports read the
// .pyc files of a package, which lie side by side in the layer (tar
// order), as do a program's shared libraries. So a reader's fetch of
// chunks also asks for the chunks after its own, up to about what the
// link carries in one round trip (the bandwidth-delay product the
// transfers measured: prefetch.go), within [neighbourMin, neighbourMax],
// neighbourDefault while it is not known. The extra bytes cost the read
// about one more round trip at most, and a later read of a neighbour none.
// The neighbours are verified by their TOC digests like any chunk, and
// kept in the piece cache and the disk cache. A read served from the caches
// takes none: it costs no round trip to spare. On the bench's python
// start-up from its eStargz image at 10 ms / 100 Mbit/s this took the
// requests from 113 to 48 and the time from 3.2 s to 2.0 s, for 10.4 MB
// fetched instead of 8.3 (256 and 512 KiB did no better). A profile's
// replay knows what it needs, and does not read ahead.
const (
	neighbourMin     = 64 << 10
	neighbourDefault = 128 << 10
	neighbourMax     = 512 << 10
)

// neighbours returns the last chunk a fetch for run r, read up to end,
// may take: the chunks after r's last whose compressed bytes end within
// budget of its end. A read reaching past the content's end takes none.
func (c *chunkReader) neighbours(r pieceRun, end int64, budget int64) int {
	if end > r.end {
		return -1
	}
	chunks := c.toc.Chunks
	limit := chunks[r.last].CEnd + budget
	j := r.last
	for j+1 < len(chunks) && chunks[j+1].CEnd <= limit {
		j++
	}
	return j
}

func (c *chunkReader) fill(ctx context.Context) (*os.File, error) {
	return c.l.fill(ctx, c.l.desc.Digest, c)
}

// set returns the chunks of the TOC, decoded from the layer's verified blob
// once it is complete.
func (c *chunkReader) set() chunkSet {
	return chunkSet{c: c, blob: readerOf(c.l.complete())}
}

// chunkSet is the chunks of a TOC (pieces.go). Chunks fetched and verified
// are cached by their digest, so identical chunks of other layers and
// images are fetched once.
type chunkSet struct {
	c    *chunkReader
	blob io.ReaderAt // the verified blob, or nil
}

func (s chunkSet) size() int64            { return s.c.toc.ContentSize }
func (s chunkSet) pieceFor(off int64) int { return s.c.toc.ChunkFor(off) }
func (s chunkSet) bounds(i int) (int64, int64) {
	c := s.c.toc.Chunks[i]
	return c.U, c.U + c.Size
}
func (s chunkSet) key() pieceKey { return pieceKey{blob: s.c.l.desc.Digest} }
func (s chunkSet) join(i, j, _ int) bool {
	chunks := s.c.toc.Chunks
	return chunks[j].CEnd-chunks[i].C <= maxRunBytes
}
func (s chunkSet) file(int) io.ReaderAt { return s.blob }

func (s chunkSet) fromFile(f io.ReaderAt, i int) ([]byte, error) {
	c := s.c.toc.Chunks[i]
	b, err := readRange(f, c.C, c.CEnd)
	if err != nil {
		return nil, fmt.Errorf("cached blob: %w", err)
	}
	data, err := toc.DecodeChunk(s.c.toc.Format, c, b)
	return data, chunkError(err)
}

func (s chunkSet) disk(i int) (digest.Digest, int64, string) {
	c := s.c.toc.Chunks[i]
	return c.Digest, c.Size, "chunk"
}

// fetch gets the missing chunks with one Range GET for each stretch of
// adjacent ones (groupChunks).
func (s chunkSet) fetch(ctx context.Context, run, missing []int, out []pieceBytes, foreground bool) {
	if foreground {
		ctx = s.c.l.im.countFetched(ctx, forReader)
	} else {
		ctx = s.c.l.im.countFetched(ctx, forBackground) // the landmark prefetch
	}
	for _, group := range groupChunks(s.c.toc.Chunks, run, missing, foreground) {
		s.fetchGroup(ctx, run, group, out)
	}
}

func (s chunkSet) decode(_ int, raw []byte) ([]byte, error) { return raw, nil }

func (s chunkSet) failure(i int, err error) error {
	c := s.c.toc.Chunks[i]
	return fmt.Errorf("chunk %d (blob bytes %d-%d) of layer %s: %w", i, c.C, c.CEnd, s.c.l.desc.Digest, err)
}

func (s chunkSet) keep([]int, []pieceBytes) {} // fetchGroup cached them

// groupChunks splits the missing positions of run into stretches of
// adjacent chunks, each at most one request's worth of compressed bytes.
func groupChunks(chunks []toc.Chunk, run, missing []int, foreground bool) [][]int {
	limit := int64(maxRunBytes)
	if !foreground {
		limit = maxPrefetchRequest
	}
	var groups [][]int
	var cur []int
	for _, n := range missing {
		if len(cur) > 0 {
			prev, first := run[cur[len(cur)-1]], run[cur[0]]
			if run[n] != prev+1 || chunks[run[n]].CEnd-chunks[first].C > limit {
				groups = append(groups, cur)
				cur = nil
			}
		}
		cur = append(cur, n)
	}
	return append(groups, cur)
}

// fetchGroup fetches the compressed bytes of one stretch of adjacent
// chunks with one Range GET, decodes and verifies each chunk, and caches
// the good ones by digest.
func (s chunkSet) fetchGroup(ctx context.Context, run, group []int, out []pieceBytes) {
	l, lt := s.c.l, s.c.toc
	lo, hi := lt.Chunks[run[group[0]]].C, int64(0)
	for _, n := range group {
		hi = max(hi, lt.Chunks[run[n]].CEnd)
	}
	err := l.im.fetchSem.Acquire(ctx)
	if err == nil {
		err = s.c.ranges.CheckRange(ctx, l.desc, lo, hi-lo, func(b []byte) error {
			for _, n := range group {
				c := lt.Chunks[run[n]]
				out[n].raw, out[n].err = toc.DecodeChunk(lt.Format, c, b[c.C-lo:c.CEnd-lo])
			}
			return nil
		})
		l.im.fetchSem.Release()
	}
	cache := l.im.client.Cache()
	for _, n := range group {
		l.im.miss(kindChunk)
		if err != nil {
			out[n] = pieceBytes{err: err}
			continue
		}
		if out[n].err != nil {
			out[n].err = chunkError(out[n].err)
			continue
		}
		out[n].fetched = true
		d := lt.Chunks[run[n]].Digest
		if perr := cache.Put(d, bytes.NewReader(out[n].raw)); perr != nil {
			l.im.log.Warn("caching chunk", "layer", l.desc.Digest, "digest", d, "err", perr)
		}
	}
}

// chunkError makes a chunk digest mismatch a verification error (index.ErrFormat)
// as the rest of the package understands it.
func chunkError(err error) error {
	if err != nil && errors.Is(err, toc.ErrDigest) && !errors.Is(err, index.ErrFormat) {
		return fmt.Errorf("%w: %w", index.ErrFormat, err)
	}
	return err
}

// A lazy layer's complete blob is fetched by fill (layer.go): from the
// cache (its digest checked again) or whole; its DiffID is checked against
// the config, and once both have checked out its tar entries are compared
// with the TOC in use (compareChunked). Chunks are then decoded from it.

func (c *chunkReader) fillCached(f *os.File) (*index.Table, error, error) {
	l := c.l
	if err := l.im.client.Cache().Verify(f, l.desc.Digest); err != nil {
		return nil, err, nil
	}
	t, err := l.checkChunked(io.NewSectionReader(f, 0, l.desc.Size))
	return t, nil, err
}

func (c *chunkReader) fillFetch(ctx context.Context, pace func(io.Reader) io.Reader) (*index.Table, *os.File, error) {
	l := c.l
	cache := l.im.client.Cache()
	start := time.Now()
	// In pieces that take turns with readers (gapstream.go), not one GET
	// of the whole blob that no pause could stop (unless a reader waits
	// for all of it).
	var blob io.ReadCloser = newGapStream(ctx, l, nil, true)
	if l.urgent.Load() || cache.Has(l.desc.Digest) {
		var err error
		if blob, err = l.im.img.OpenBlob(ctx, l.desc); err != nil {
			return nil, nil, err
		}
	}
	defer blob.Close()
	rc := pace(blob)
	p, err := cache.Create(l.desc.Digest)
	if err != nil {
		return nil, nil, err
	}
	defer p.Abort()
	tee := io.TeeReader(rc, p)
	t, err := l.checkChunked(tee)
	if err != nil {
		return nil, nil, l.failed(rootCause(rc, err))
	}
	// The blob's digest is checked when its reader reaches the end; the TOC
	// and footer after the tar stream must be read (and cached) too.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, nil, l.failed(err)
	}
	if err := p.Commit(); err != nil {
		return nil, nil, l.failed(err)
	}
	l.im.log.Info("lazy layer fetched whole and verified", "layer", l.desc.Digest, "mode", l.mode,
		"bytes", l.desc.Size, "duration", time.Since(start).Round(time.Millisecond))
	f, err := cache.Open(l.desc.Digest)
	if err != nil {
		return nil, nil, err
	}
	return t, f, nil
}

func (c *chunkReader) fillCompare(ctx context.Context, t *index.Table) error {
	return c.l.compareChunked(ctx, c, t)
}

// checkChunked decompresses the blob r, checks the uncompressed stream
// against the config's DiffID and returns the tar's table.
func (l *layer) checkChunked(r io.Reader) (*index.Table, error) {
	dr, err := index.Decompress(l.desc.MediaType, r)
	if err != nil {
		return nil, err
	}
	defer dr.Close()
	t, err := index.Build(dr, l.im.opts.Index)
	if err != nil {
		return nil, err
	}
	if t.DiffID != l.diffID {
		return nil, &fetch.DigestError{What: fmt.Sprintf("uncompressed layer %s", l.desc.Digest), Want: l.diffID, Got: t.DiffID}
	}
	return t, nil
}

// compareChunked compares the tar entries of the verified layer (blob
// digest and DiffID checked) with the TOC in use and acts on a
// disagreement: what the TOC got wrong is refused, the rest is served
// (disagree).
func (l *layer) compareChunked(ctx context.Context, c *chunkReader, t *index.Table) error {
	differ, first, verified := diffEntries(c.toc, t.Entries)
	if differ == 0 {
		return nil
	}
	return l.disagree(ctx, c.loc.Layout.String()+" TOC", verified, differ, first, false)
}

// Names eStargz reserves at the layer root: not entries of the tree.
var estargzReserved = map[string]bool{"stargz.index.json": true, ".prefetch.landmark": true, ".no.prefetch.landmark": true}

// diffEntries compares a TOC's entries with the tar's, position by
// position: everything but offsets (the TOC's are virtual), and mtimes as
// toc.SameModTime allows (eStargz keeps only seconds). It returns how many
// positions differ, a description of the first, and the tar's entries in
// the TOC's terms: eStargz's reserved names dropped, virtual offsets, and
// the TOC's mtime where it stands for the tar's.
func diffEntries(lt *toc.Layer, tar []index.Entry) (int, string, []index.Entry) {
	estargz := lt.Layout == toc.LayoutEstargz || lt.Layout == toc.LayoutEstargzZstd
	var want []index.Entry
	var u int64 // the virtual offset of the next regular file
	for _, e := range tar {
		if estargz && e.Type == index.TypeReg && estargzReserved[e.Name] {
			continue
		}
		if e.Type == index.TypeReg {
			e.Offset = u
			u += e.Size
		}
		want = append(want, e)
	}
	differ, first := 0, ""
	if len(want) != len(lt.Entries) {
		differ, first = max(len(want), len(lt.Entries))-min(len(want), len(lt.Entries)),
			fmt.Sprintf("the TOC has %d entries, the tar %d", len(lt.Entries), len(want))
	}
	for i := range min(len(want), len(lt.Entries)) {
		g, w := lt.Entries[i], want[i]
		if toc.SameModTime(g.ModTime, w.ModTime, lt.Layout) {
			want[i].ModTime, w.ModTime = g.ModTime, g.ModTime
		}
		g.Offset, w.Offset = 0, 0
		if reflect.DeepEqual(g, w) {
			continue
		}
		if differ++; first == "" {
			first = fmt.Sprintf("entry %d: the TOC says %s %q (mode %o, uid %d, gid %d, %d bytes, mtime %s, link %q, xattrs %d), "+
				"the tar %s %q (mode %o, uid %d, gid %d, %d bytes, mtime %s, link %q, xattrs %d)",
				i, g.Type, g.Name, g.Mode, g.UID, g.GID, g.Size, g.ModTime.Format(time.RFC3339Nano), g.Linkname, len(g.Xattrs),
				w.Type, w.Name, w.Mode, w.UID, w.GID, w.Size, w.ModTime.Format(time.RFC3339Nano), w.Linkname, len(w.Xattrs))
		}
	}
	return differ, first, want
}
