package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// Layer modes, as `ocifs inspect` and `ocifs stats` print them. See DESIGN.md.
const (
	ModeIndex  = "index"  // an ocifs index (local cache or registry): reads fetch only the spans they need
	ModeStream = "stream" // no index anywhere: the blob is fetched once, in order, and indexed on the way
	ModeWhole  = "whole"  // small layer, or no random access (zstd): fetched whole before it is served

	ModeEstargz     = "estargz"      // eStargz TOC bound by the manifest: chunks fetched and verified on demand (chunked.go)
	ModeZstdChunked = "zstd-chunked" // zstd:chunked TOC bound by the manifest: chunks fetched and verified on demand (chunked.go)
)

// DefaultWholeThreshold is the compressed size under which a layer is simply
// fetched whole.
const DefaultWholeThreshold = 1 << 20

// Options configure how an image is resolved and served. The zero value works.
type Options struct {
	// Logger receives lifecycle lines (Info), retries (Warn) and served EIOs
	// (Error). Nil discards.
	Logger *slog.Logger

	// Parallel bounds how many layers a load fetches whole (streamed,
	// or small) at once; 0 means 3. Their tables (ocifs indexes,
	// eStargz and zstd:chunked TOCs) are all fetched at once.
	Parallel int

	// WholeThreshold is the compressed size below which a layer is fetched
	// whole; 0 means DefaultWholeThreshold.
	WholeThreshold int64

	// Index caps what a layer's tar may claim (entries, names, sizes).
	Index index.Options

	// SpanSize is the uncompressed bytes per span of the indexes this image
	// builds; 0 means index.DefaultSpanSize.
	SpanSize int64

	// SpanCacheBytes bounds the decoded spans kept in memory; 0 means
	// DefaultSpanCacheBytes.
	SpanCacheBytes int64

	// FetchParallel bounds the Range requests in flight; 0 means 4.
	FetchParallel int

	// NoRemoteIndex skips looking for index artifacts (and start-up
	// profiles) in the registry.
	NoRemoteIndex bool

	// IndexRepos are repositories ("HOST/REPO") where index artifacts of
	// images are looked for, in order, after the image's own repository,
	// by the image's manifest digest (an index repository: see
	// [Image.PushIndexTo]). What they hold is checked as an index from the
	// image's repository is.
	IndexRepos []string

	// PushIndexTo, when set ("HOST/REPO"), is where the indexes of the
	// layers this image streamed (no index anywhere) are pushed once each
	// is built and the whole image's layers are verified, in the
	// background, so that mounts elsewhere read them lazily: a cluster
	// pays each stream once. It is also looked in, after IndexRepos. Off
	// by default: it needs push access, and it writes to a registry.
	PushIndexTo string
	// NoProfile makes [Image.Replay] do nothing: no recorded start-up
	// profile is looked for or replayed (profile.go).
	NoProfile bool
	// NoProfilePack makes a replay leave a profile's pack (pack.go) unused:
	// every byte then comes from the layers' own spans, verified against
	// the digests of their index, at the cost of fetching whole spans.
	NoProfilePack bool
	// StartProfileLookup makes Resolve start the search for the start-up
	// profile ([Image.LookupProfile]) as soon as the manifest is known,
	// before it plans the layers: the search's round trips (referrers,
	// the profile's manifest and blob) then overlap the index lookup's
	// and the load's, and a replay starts when the tables are in. For the
	// callers that replay: mounts, the snapshotter and the layer store.
	StartProfileLookup bool

	// PrefetchRate caps the background fetch, in bytes per second; 0 means
	// no cap. Background fetches always pause while a reader waits.
	PrefetchRate int64

	// Progressive serves the files of a stream-mode layer (one with no
	// index anywhere) as soon as its stream has passed them, before the
	// layer's digest has been checked. Off by default: it trades the check
	// for time to first byte, and a later mismatch quarantines the layer.
	Progressive bool

	// InsecureLazy serves eStargz and zstd:chunked layers lazily even when
	// no digest annotation binds their TOC to the manifest. Off by default:
	// such layers are streamed (gzip) or fetched whole (zstd) and verified
	// against the layer digest instead.
	InsecureLazy bool
}

// Image is a resolved image: its layers, each with a plan for reaching its
// bytes, and, after [Image.Load], the merged tree. An Image is safe for
// concurrent use once loaded.
type Image struct {
	img      *fetch.Image
	client   *fetch.Client
	opts     Options
	log      *slog.Logger
	layers   []*layer
	tree     atomic.Pointer[Tree] // the merged tree, once every layer's table is known
	prog     *progress            // a progressive load's growing tree; nil otherwise
	gen      nodeGen              // the generation of the mounts' file handles (identity.go)
	spans    *pieceCache          // decoded spans and chunks of every layer, and their fetches in flight
	ahead    readAhead            // sequential readers, and what is fetched ahead of them
	fetchSem semaphore            // bounds Range requests in flight
	loadSem  semaphore            // bounds the layers a load fetches whole at once (Options.Parallel)
	fg       *foreground          // fetches readers wait on; prefetch yields to them

	// counters for Stats; atomics because FUSE reads run concurrently
	bytesServed      atomic.Int64
	passthroughFiles atomic.Int64
	passthrough      bool          // set by Mount: hand extracted files to the kernel
	quietUntil       atomic.Int64  // Unix ns: until then background streams wait for quiet (prefetch.go)
	views            imageViews    // per-layer views, computed on first use (views.go)
	podmanViews      podmanViews   // podman's flavour of them (views_podman.go)
	keeping          chan struct{} // runs of fetched spans waiting to be written to the disk cache (layer.keep)
	counts           imageCounts   // by cache kind, fetch purpose, fallback reason (counters.go)
	verifyFailures   atomic.Int64
	refused          sync.Map                    // *Node whose EIO has been logged at Error (not the inode number: the views of two layers number their nodes alike)
	rec              atomic.Pointer[recorder]    // the start-up profile being recorded, if any (profile.go)
	replay           atomic.Pointer[replayState] // the replay of a start-up profile, once Replay ran
	lookup           profileLookup               // the search for that profile (profile.go)

	// refusal is what verified bytes contradict in the tree, once a
	// layer's check has found its table in use disagreeing with them
	// (disagree.go); nil while nothing is. rmu serialises its updates.
	refusal atomic.Pointer[refusal]
	rmu     sync.Mutex

	ctx    context.Context // background work; cancelled by Close
	cancel context.CancelFunc
	bg     errgroup.Group // background layer fetches, waited for by Close
}

// Resolve fetches and verifies the manifest and config of ref and plans each
// layer. It reads no layer bytes.
func Resolve(ctx context.Context, c *fetch.Client, ref string, opts Options) (*Image, error) {
	fi, err := c.Resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 3
	}
	if opts.WholeThreshold <= 0 {
		opts.WholeThreshold = DefaultWholeThreshold
	}
	descs := fi.Layers()
	diffIDs := fi.Config.RootFS.DiffIDs
	if len(diffIDs) != len(descs) {
		return nil, fmt.Errorf("%s: %w: config lists %d diff_ids for %d layers", fi.Ref, fetch.ErrFormat, len(diffIDs), len(descs))
	}
	if opts.SpanCacheBytes <= 0 {
		opts.SpanCacheBytes = DefaultSpanCacheBytes
	}
	if opts.FetchParallel <= 0 {
		opts.FetchParallel = 4
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	im := &Image{img: fi, client: c, opts: opts, log: log.With("image", fi.Ref), ctx: bg, cancel: cancel,
		spans: newPieceCache(opts.SpanCacheBytes), fetchSem: make(semaphore, opts.FetchParallel), loadSem: make(semaphore, opts.Parallel),
		fg: newForeground(), keeping: make(chan struct{}, 8)}
	for i, d := range descs {
		comp, err := index.MediaTypeCompression(d.MediaType)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%s: layer %d (%s): %w", fi.Ref, i, d.Digest, err)
		}
		im.layers = append(im.layers, &layer{im: im, idx: i, desc: d, diffID: diffIDs[i], compression: comp})
	}
	if opts.StartProfileLookup {
		// It needs the manifest only. Should the plan fail, it is
		// cancelled and waited for: nothing outlives Resolve's error.
		im.LookupProfile()
	}
	if err := im.plan(ctx); err != nil {
		cancel()
		im.bg.Wait()
		return nil, err
	}
	return im, nil
}

// plan decides how each layer's bytes will be reached, and says why.
func (im *Image) plan(ctx context.Context) error {
	cache := im.client.Cache()
	var unindexed []*layer
	for _, l := range im.layers {
		switch {
		case cache.HasIndex(l.desc.Digest):
			l.mode, l.why = ModeIndex, "ocifs index in the local cache"
		case l.compression == "zstd":
			// Nothing to look for: a zstd layer has no ocifs index.
		default:
			unindexed = append(unindexed, l)
		}
	}
	if len(unindexed) > 0 && !im.opts.NoRemoteIndex {
		// What the registry answered before (saved with the referrers
		// list) will do when it indexes every layer that needs an index:
		// then the registry is not asked, and a daemon restarting while
		// it is down loads at once. A layer whose blob is cached needs
		// none (without one it is read, and indexed, from the cache), nor
		// one whose TOC its annotations bind.
		offline := fetch.Offline(ctx)
		remote, _ := im.remoteIndexes(offline)
		_, unsaved := im.img.Referrers(offline, fetch.ArtifactTypeIndex)
		if unsaved != nil || !coversAll(remote, unindexed, cache) {
			var err error
			remote, err = im.remoteIndexes(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				im.log.Warn("looking for index artifacts in the registry", "err", err)
			}
		}
		for _, l := range unindexed {
			if d, ok := remote[l.desc.Digest]; ok {
				l.remote, l.remoteFrom = &d.desc, d.from
				l.mode, l.why = ModeIndex, "ocifs index from "+im.indexWhere(d.from)+" ("+d.desc.Annotations[referrerAnnotation]+")"
			}
		}
	}
	for _, l := range im.layers {
		switch {
		case l.compression == "zstd":
			l.mode, l.why = ModeWhole, "zstd layer without a chunked TOC: no random access, fetched whole and verified"
		case l.desc.Size < im.opts.WholeThreshold:
			l.mode, l.why = ModeWhole, fmt.Sprintf("smaller than %d bytes: fetched whole", im.opts.WholeThreshold)
		case l.mode == "":
			l.mode, l.why = ModeStream, "no index anywhere: the blob is fetched once, in order, verified and indexed (later mounts are lazy)"
		}
	}
	return im.planChunked(ctx)
}

// coversAll reports whether remote has an index for each of layers that
// needs one: not one whose blob is in cache, nor one whose annotations bind
// an eStargz or zstd:chunked TOC (served lazily from that without one).
func coversAll(remote map[digest.Digest]remoteIndex, layers []*layer, cache *fetch.Cache) bool {
	for _, l := range layers {
		if _, ok := remote[l.desc.Digest]; !ok && !cache.Has(l.desc.Digest) && !l.boundTOC() {
			return false
		}
	}
	return true
}

// Ref returns the fully qualified reference the image was resolved from.
func (im *Image) Ref() string { return im.img.Ref }

// Fetched returns the resolved manifest and config.
func (im *Image) Fetched() *fetch.Image { return im.img }

// Load makes every layer's entry table available, from the index cache or by
// streaming the layer, and merges them into the tree. Layers whose tables come
// from the cache but whose bytes do not are fetched in the background: a read
// waits only for the layer that holds its file.
func (im *Image) Load(ctx context.Context) error {
	start := time.Now()
	var g errgroup.Group // whole fetches take loadSem (layer.load)
	for i, l := range im.layers {
		if im.opts.Progressive && l.mode == ModeStream {
			continue // streamed in the background by loadProgressive
		}
		g.Go(func() error {
			if err := l.load(ctx); err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, l.desc.Digest, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if im.opts.Progressive {
		var streams []*layer
		for _, l := range im.layers {
			// A layer whose TOC was given up at load (unchunk) is
			// streamed already.
			if l.mode == ModeStream && l.tbl() == nil {
				streams = append(streams, l)
			}
		}
		if len(streams) > 0 {
			return im.loadProgressive(streams, start)
		}
	}
	tables := make([]*index.Table, len(im.layers))
	for i, l := range im.layers {
		tables[i] = l.tbl()
	}
	tree, err := Merge(tables)
	if err != nil {
		return err
	}
	im.tree.Store(tree)
	im.log.Info("image loaded", "layers", len(im.layers), "inodes", tree.Nodes, "duration", time.Since(start).Round(time.Millisecond))
	if blobs := im.builtIndexBlobs(); blobs != nil {
		im.bg.Go(func() error {
			im.pushBuilt(im.ctx, blobs)
			return nil
		})
	}
	return nil
}

// loadProgressive starts the stream of each layer in streams and returns:
// the mount serves what the streams pass (see progress).
func (im *Image) loadProgressive(streams []*layer, start time.Time) error {
	prog := newProgress(len(im.layers))
	for i, l := range im.layers {
		prog.tables[i] = l.tbl() // nil for the layers about to stream
	}
	im.prog = prog
	for _, l := range streams {
		prog.running[l.idx] = true // before any stream starts: each waits for the layers above (progress.turn)
	}
	for _, l := range streams {
		l.loadProgressive(prog)
	}
	im.log.Info("image loading progressively", "layers", len(im.layers), "streaming", len(streams),
		"duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// ReleaseEntries drops the entry tables the merged tree was made from, to
// save memory in a long-lived mount: the tree holds what serving needs.
// The background check of a layer against its index reads the entries
// again from the index file; a table built here is not checked. The tables
// themselves are not changed: each layer drops its reference to its table
// for one without entries, which is all its reads need. Call it
// after Load and before Mount or Prefetch, and not when the tables are still
// wanted (PushIndex, IndexSizes). A progressive load keeps them all.
func (im *Image) ReleaseEntries() {
	if im.prog != nil {
		return // the streams' final merge still needs every table
	}
	for _, l := range im.layers {
		if l.chunks() != nil {
			continue
		}
		l.mu.Lock()
		if t := l.table; t != nil && t.Entries != nil && (l.built || l.indexSrc != nil) {
			l.table = withoutEntries(t)
		}
		l.mu.Unlock()
	}
}

// Tree returns the merged tree; nil before Load, and during a progressive
// load until every stream has ended (see [Image.WaitTree]).
func (im *Image) Tree() *Tree { return im.tree.Load() }

// WaitTree returns the merged tree, waiting for a progressive load to end.
func (im *Image) WaitTree(ctx context.Context) (*Tree, error) {
	if t := im.tree.Load(); t != nil || im.prog == nil {
		if t == nil {
			return nil, errors.New("image not loaded")
		}
		return t, nil
	}
	return im.prog.wait(ctx)
}

// Prefetch starts fetching, in the background, every layer whose bytes are
// not cached yet, once the reads that follow have paused (quietPeriod),
// one small request at a time and never while a read waits (prefetch.go).
// Close cancels it.
func (im *Image) Prefetch() {
	im.quietUntil.Store(time.Now().Add(startupWindow).UnixNano())
	im.fg.touch() // the program's first reads are about to come: quiet first (prefetch.go)
	im.bg.Go(func() error {
		// Nothing of it runs before then, not even the setting up.
		if im.fg.waitQuiet(im.ctx, im.bgQuiet(), nil) != nil {
			return nil
		}
		for _, l := range im.layers {
			im.bg.Go(func() error {
				l.ensure(im.ctx)
				return nil
			})
		}
		return nil
	})
}

// StopFetching cancels every fetch in flight and refuses new ones: reads are
// served from what is cached, and others fail. For a mount that is going
// away while files on it are still open.
func (im *Image) StopFetching() { im.cancel() }

// Close cancels background work, waits for it and closes cached files.
func (im *Image) Close() error {
	im.cancel()
	im.bg.Wait()
	var errs []error
	for _, l := range im.layers {
		errs = append(errs, l.close())
	}
	return errors.Join(errs...)
}

// ReadAt reads a regular file's bytes at off, waiting for the layer that
// holds them. It returns io.EOF past the end, as io.ReaderAt does.
func (im *Image) ReadAt(ctx context.Context, n *Node, p []byte, off int64) (int, error) {
	if n.Type != index.TypeReg {
		return 0, fmt.Errorf("read of a %s", n.Type)
	}
	if err := im.refusedNode(n); err != nil {
		return 0, err
	}
	im.fg.read() // the background waits for quiet (prefetch.go)
	if off >= n.Size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := n.Size - off; int64(want) > rem {
		p = p[:rem]
	}
	var got int
	var err error
	sparse := im.sparseMap(n)
	if t := im.layers[n.Layer].tree.Load(); t != nil && !hasTreeFile(n.Size, sparse != nil) {
		im.hit(kindFile)
		got, err = t.ReadPack(p, n.Offset+off)
	} else if f := im.openFile(n); f != nil {
		im.hit(kindFile)
		got, err = f.ReadAt(p, off)
		f.Close()
	} else if sparse != nil {
		got, err = im.readSparse(ctx, n, sparse, p, off)
	} else {
		got, err = im.layers[n.Layer].readAt(ctx, p, n.Offset+off, n.Offset+n.Size)
	}
	if got < len(p) && (err == nil || errors.Is(err, io.EOF)) {
		// p ends inside the file: a source that ends before it (a cached
		// or temp file cut short) lost bytes. Its io.EOF must not reach
		// the reader, who would take it for the end of the file and get
		// a short file without an error.
		err = fmt.Errorf("layer %s: %d of the %d bytes at file offset %d: %w (%v)",
			im.layers[n.Layer].desc.Digest, got, len(p), off, io.ErrUnexpectedEOF, err)
	}
	im.bytesServed.Add(int64(got))
	im.layers[n.Layer].served.Add(int64(got))
	im.record(n, off, got)
	if err == nil && got < want {
		err = io.EOF
	}
	return got, err
}

// sparseMap returns the sparse map of regular file n, or nil when n is
// stored whole. A node of a progressive load's growing tree is looked up
// among the maps of every tree the load has made.
func (im *Image) sparseMap(n *Node) *index.SparseMap {
	if t := im.tree.Load(); t != nil {
		if sp := t.sparse[n]; sp != nil {
			return sp
		}
	}
	if im.prog != nil {
		return im.prog.sparseMap(n)
	}
	return nil
}

// readSparse reads bytes [off, off+len(p)) of sparse file n through its
// layer: zeros for the holes, and for the data segments the bytes of the
// layer's tar at which the map puts them, packed from n.Offset. Only the
// segments the read touches are read, so a read of a hole fetches nothing.
func (im *Image) readSparse(ctx context.Context, n *Node, sp *index.SparseMap, p []byte, off int64) (int, error) {
	l := im.layers[n.Layer]
	end := off + int64(len(p))
	dataEnd := n.Offset + sp.DataSize() // read-ahead stops there
	segs := sp.Segments
	i := sort.Search(len(segs), func(i int) bool { return segs[i].Off+segs[i].Len > off })
	for pos := off; pos < end; i++ {
		if i == len(segs) || segs[i].Off >= end {
			clear(p[pos-off:])
			break
		}
		s := segs[i]
		if pos < s.Off {
			clear(p[pos-off : s.Off-off])
			pos = s.Off
		}
		hi := min(end, s.Off+s.Len)
		got, err := l.readAt(ctx, p[pos-off:hi-off], n.Offset+s.Data+pos-s.Off, dataEnd)
		if err == nil && int64(got) < hi-pos {
			err = fmt.Errorf("layer %s: %d bytes of tar at %d, want %d: %w", l.desc.Digest, got, n.Offset+s.Data+pos-s.Off, hi-pos, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return int(pos-off) + got, err
		}
		pos = hi
	}
	return len(p), nil
}

// Open returns a reader of a regular file's content, for `ocifs cat`.
func (im *Image) Open(ctx context.Context, n *Node) io.Reader {
	return io.NewSectionReader(readerAt{ctx, im, n}, 0, n.Size)
}

type readerAt struct {
	ctx context.Context
	im  *Image
	n   *Node
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) { return r.im.ReadAt(r.ctx, r.n, p, off) }

// LayerInfo describes one layer for inspect and stats.
type LayerInfo struct {
	Digest       digest.Digest `json:"digest"`
	DiffID       digest.Digest `json:"diff_id"`
	MediaType    string        `json:"media_type"`
	Mode         string        `json:"mode"`
	Why          string        `json:"why"`
	Size         int64         `json:"size"`
	BytesFetched int64         `json:"bytes_fetched"`
	BytesServed  int64         `json:"bytes_served"` // of the layer's files, through the daemon
	Complete     bool          `json:"complete"`
	Verified     bool          `json:"verified"`
	// Extracted: the layer's files are extracted into the cache and opened
	// files are served from there (passthrough). Settled: the background
	// has nothing more to do for the layer (fetch, checks, extraction, or
	// a failure of one of them).
	Extracted bool `json:"extracted"`
	Settled   bool `json:"settled"`
	// Refused counts the nodes of the tree whose entry in the layer's
	// table in use (TOC or index) disagrees with the layer's verified
	// bytes: they are EIO, the rest of the layer is served.
	Refused int `json:"refused,omitempty"`
}

// Stats is what a mount fetched, served and verified; its JSON form is the
// `ocifs stats --json` contract in DESIGN.md.
type Stats struct {
	Image            string        `json:"image"`
	ManifestDigest   digest.Digest `json:"manifest_digest"`
	BytesFetched     int64         `json:"bytes_fetched"`
	Requests         int64         `json:"requests"`
	BytesServed      int64         `json:"bytes_served"`      // through the daemon; passthrough reads bypass it
	PassthroughFiles int64         `json:"passthrough_files"` // files handed to the kernel to read itself
	CacheHits        int64         `json:"cache_hits"`        // every kind of Cache
	CacheMisses      int64         `json:"cache_misses"`      // every kind of Cache
	VerifyFailures   int64         `json:"verify_failures"`
	// Cache is the hits and misses by kind (CacheSpan, CacheChunk,
	// CacheFile, CacheWhole).
	Cache map[string]CacheCount `json:"cache"`
	// FetchedFor is the layer bytes received (registry or layout, not
	// the cache) by why they were fetched: FetchReader, FetchReadAhead,
	// FetchBackground.
	FetchedFor map[string]int64 `json:"fetched_for"`
	// Fallbacks counts, by reason (the Fallback constants), the layers
	// served otherwise than planned, or refused.
	Fallbacks map[string]int64 `json:"fallbacks"`
	// Background is the background work under way.
	Background BackgroundStats `json:"background"`
	ImageSize  int64           `json:"image_size"` // compressed bytes of all layers plus config
	Inodes     int             `json:"inodes"`
	Layers     []LayerInfo     `json:"layers"`
	Profile    *ProfileStats   `json:"profile,omitempty"` // the start-up profile's replay, when one ran
}

// Layers describes each layer's plan and progress.
func (im *Image) Layers() []LayerInfo {
	fs := im.client.Stats()
	out := make([]LayerInfo, len(im.layers))
	for i, l := range im.layers {
		out[i] = LayerInfo{
			Digest: l.desc.Digest, DiffID: l.diffID, MediaType: l.desc.MediaType,
			Mode: l.mode, Why: l.why, Size: l.desc.Size, BytesFetched: fs.Blobs[l.desc.Digest],
		}
		out[i].Complete, out[i].Verified = l.state()
		out[i].Extracted = l.tree.Load() != nil
		out[i].Settled = l.settled.Load() || l.quarantined() != nil
		out[i].Refused = l.refusedCount()
		out[i].BytesServed = l.served.Load()
	}
	return out
}

// Stats returns the counters of this image since it was resolved.
func (im *Image) Stats() Stats {
	fs := im.client.Stats()
	s := Stats{
		Image:            im.img.Ref,
		ManifestDigest:   im.img.ManifestDigest,
		BytesFetched:     fs.BytesFetched,
		Requests:         fs.Requests,
		BytesServed:      im.bytesServed.Load(),
		PassthroughFiles: im.passthroughFiles.Load(),
		VerifyFailures:   im.verifyFailures.Load(),
		ImageSize:        im.img.Manifest.Config.Size,
		Layers:           im.Layers(),
	}
	im.fillStats(&s)
	for _, l := range im.img.Layers() {
		s.ImageSize += l.Size
	}
	if t := im.tree.Load(); t != nil {
		s.Inodes = t.Nodes
	}
	if im.replay.Load() != nil {
		ps := im.ProfileStats()
		s.Profile = &ps
	}
	return s
}
