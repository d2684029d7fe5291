package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// Layer modes, as `ocifs inspect` and `ocifs stats` print them. See DESIGN.md.
const (
	ModeStream = "stream" // no index anywhere: the blob is fetched once, in order, and indexed on the way
	ModeWhole  = "whole"  // small layer: fetched whole
)

// DefaultWholeThreshold is the compressed size under which a layer is simply
// fetched whole.
const DefaultWholeThreshold = 1 << 20

// Options configure how an image is resolved and served. The zero value works.
type Options struct {
	// Logger receives lifecycle lines (Info), retries (Warn) and served EIOs
	// (Error). Nil discards.
	Logger *slog.Logger

	// Parallel bounds how many layers are fetched at once; 0 means 3.
	Parallel int

	// WholeThreshold is the compressed size below which a layer is fetched
	// whole; 0 means DefaultWholeThreshold.
	WholeThreshold int64

	// Index caps what a layer's tar may claim (entries, names, sizes).
	Index index.Options
}

// Image is a resolved image: its layers, each with a plan for reaching its
// bytes, and, after [Image.Load], the merged tree. An Image is safe for
// concurrent use once loaded.
type Image struct {
	img    *fetch.Image
	client *fetch.Client
	opts   Options
	log    *slog.Logger
	layers []*layer
	tree   *Tree

	// counters for Stats; atomics because FUSE reads run concurrently
	bytesServed    atomic.Int64
	cacheHits      atomic.Int64
	cacheMisses    atomic.Int64
	verifyFailures atomic.Int64

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
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	im := &Image{img: fi, client: c, opts: opts, log: log.With("image", fi.Ref), ctx: bg, cancel: cancel}
	for i, d := range descs {
		if _, err := index.MediaTypeCompression(d.MediaType); err != nil {
			cancel()
			return nil, fmt.Errorf("%s: layer %d (%s): %w", fi.Ref, i, d.Digest, err)
		}
		l := &layer{im: im, idx: i, desc: d, diffID: diffIDs[i], ready: make(chan struct{})}
		l.mode, l.why = ModeStream, "no index for this layer: the blob is fetched once, in order, verified and indexed"
		if d.Size < opts.WholeThreshold {
			l.mode, l.why = ModeWhole, fmt.Sprintf("smaller than %d bytes: fetched whole", opts.WholeThreshold)
		}
		im.layers = append(im.layers, l)
	}
	return im, nil
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
	tables := make([]*index.Table, len(im.layers))
	var g errgroup.Group
	g.SetLimit(im.opts.Parallel)
	for i, l := range im.layers {
		g.Go(func() error {
			t, err := l.load(ctx)
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, l.desc.Digest, err)
			}
			tables[i] = t
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	tree, err := Merge(tables)
	if err != nil {
		return err
	}
	im.tree = tree
	im.log.Info("image loaded", "layers", len(im.layers), "inodes", tree.Nodes, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// Tree returns the merged tree; nil before Load.
func (im *Image) Tree() *Tree { return im.tree }

// Prefetch starts fetching, in the background, every layer whose bytes are
// not cached yet. Close cancels it.
func (im *Image) Prefetch() {
	for _, l := range im.layers {
		im.bg.Go(func() error {
			l.ensure(im.ctx)
			return nil
		})
	}
}

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
	if off >= n.Size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := n.Size - off; int64(want) > rem {
		p = p[:rem]
	}
	got, err := im.layers[n.Layer].readAt(ctx, p, n.Offset+off)
	im.bytesServed.Add(int64(got))
	if err == nil && got < want {
		err = io.EOF
	}
	return got, err
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
	Complete     bool          `json:"complete"`
	Verified     bool          `json:"verified"`
}

// Stats is what a mount fetched, served and verified; its JSON form is the
// `ocifs stats --json` contract in DESIGN.md.
type Stats struct {
	Image          string        `json:"image"`
	ManifestDigest digest.Digest `json:"manifest_digest"`
	BytesFetched   int64         `json:"bytes_fetched"`
	Requests       int64         `json:"requests"`
	BytesServed    int64         `json:"bytes_served"`
	CacheHits      int64         `json:"cache_hits"`
	CacheMisses    int64         `json:"cache_misses"`
	VerifyFailures int64         `json:"verify_failures"`
	ImageSize      int64         `json:"image_size"` // compressed bytes of all layers plus config
	Inodes         int           `json:"inodes"`
	Layers         []LayerInfo   `json:"layers"`
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
	}
	return out
}

// Stats returns the counters of this image since it was resolved.
func (im *Image) Stats() Stats {
	fs := im.client.Stats()
	s := Stats{
		Image:          im.img.Ref,
		ManifestDigest: im.img.ManifestDigest,
		BytesFetched:   fs.BytesFetched,
		Requests:       fs.Requests,
		BytesServed:    im.bytesServed.Load(),
		CacheHits:      im.cacheHits.Load(),
		CacheMisses:    im.cacheMisses.Load(),
		VerifyFailures: im.verifyFailures.Load(),
		ImageSize:      im.img.Manifest.Config.Size,
		Layers:         im.Layers(),
	}
	for _, l := range im.img.Layers() {
		s.ImageSize += l.Size
	}
	if im.tree != nil {
		s.Inodes = im.tree.Nodes
	}
	return s
}
