package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/index"
)

// LabelDiffID is the layer's DiffID, which containerd 2.x adds to every
// unpack's Prepare.
const LabelDiffID = "containerd.io/snapshot/diff-id"

// RemoteOptions configure [NewRemote].
type RemoteOptions struct {
	// Client fetches manifests, configs and layer bytes, with its digest
	// cache shared by every image. Required.
	Client *fetch.Client
	// FS is the mount the layers' views are served in. Required.
	FS *fs.LayerFS
	// Image configures how each image is resolved and served; its
	// Progressive is ignored (a view needs every table). Its Logger is
	// replaced by Logger.
	Image fs.Options
	// Logger receives a line per image loaded and per layer served; each
	// image logs its reads (and every EIO) here too. Nil discards.
	Logger *slog.Logger
	// OnResolve, when set, is called with each image once it is
	// resolved, before its load fetches any layer (the daemon pins in its
	// cache what the image cannot do without).
	OnResolve func(im *fs.Image)
	// OnLoad, when set, is called with each image once it is loaded,
	// before any of its layers is served (the daemon's metrics count it).
	OnLoad func(im *fs.Image, took time.Duration)
	// OnClose, when set, is called with each image OnLoad was called
	// with, before it is closed (no layer of it is held any more).
	OnClose func(im *fs.Image)
}

// Remote is the [Layers] of ocifs: each layer containerd unpacks is the
// per-layer view of its image (fs.Image.LayerView), served in a
// [fs.LayerFS] under the snapshot's id. An image is resolved by its
// reference pinned to the manifest digest containerd names, and loaded
// once however many of its layers are asked for at once; it stays open
// while any of its layers is held. It is safe for concurrent use.
type Remote struct {
	client *fetch.Client
	lfs    *fs.LayerFS
	opts   fs.Options
	log    *slog.Logger
	onLoad func(*fs.Image, time.Duration)
	onRes  func(*fs.Image)
	onClos func(*fs.Image)

	ctx    context.Context // the loads' (shared by every waiter); Close cancels it
	cancel context.CancelFunc

	// mu guards images and held.
	mu     sync.Mutex
	images map[string]*remoteImage // by pinned reference
	held   map[string]*remoteImage // by snapshot id
}

var _ Layers = (*Remote)(nil)

// remoteImage is one image being loaded or loaded; ready is closed once
// im or err is set.
type remoteImage struct {
	pinned string
	ready  chan struct{}
	im     *fs.Image
	err    error
	refs   int // the snapshot ids holding it, and the loads waiting for it
}

// NewRemote returns the Layers that serves layers through opts.FS. Image
// loads run on ctx (shared by every Prepare waiting for one), until ctx
// ends or Close.
func NewRemote(ctx context.Context, opts RemoteOptions) (*Remote, error) {
	if opts.Client == nil || opts.FS == nil {
		return nil, errors.New("remote layers: a fetch client and a layer mount are required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	io := opts.Image
	io.StartProfileLookup = true // its round trips overlap the plan's and the load's
	io.Logger = log
	io.Progressive = false
	ctx, cancel := context.WithCancel(ctx)
	return &Remote{client: opts.Client, lfs: opts.FS, opts: io, log: log, onLoad: opts.OnLoad, onRes: opts.OnResolve, onClos: opts.OnClose, ctx: ctx, cancel: cancel,
		images: map[string]*remoteImage{}, held: map[string]*remoteImage{}}, nil
}

// Prepare serves the layer the cri.* labels name as snapshot id, after
// checking it against the image: the layer digest must be in the manifest,
// and the chain ID of the DiffIDs up to it (the config's) must be the
// snapshot.ref label, as must the layers above it (cri.image-layers) and
// containerd 2.x's diff-id label, so that the directory is the layer
// containerd would have applied there.
func (r *Remote) Prepare(ctx context.Context, id string, labels map[string]string) (Layer, error) {
	pinned, err := remoteLabels(labels)
	if err != nil {
		return Layer{}, err
	}
	layer, err := digest.Parse(pinned[LabelLayer])
	if err != nil {
		return Layer{}, fmt.Errorf("label %s: %w", LabelLayerDigest, err)
	}
	start := time.Now()
	ri, i, err := r.serve(ctx, id, pinned[LabelRemote], layer, labels)
	if err != nil {
		return Layer{}, err
	}
	view, err := ri.im.LayerView(i)
	if err != nil {
		r.Release(ctx, id)
		return Layer{}, err
	}
	info := ri.im.Layers()[i]
	r.log.Info("layer served lazily", "layer", layer, "image", ri.pinned, "snapshot", id, "index", i,
		"mode", info.Mode, "duration", time.Since(start).Round(time.Millisecond))
	return Layer{Dir: filepath.Join(r.lfs.Dir, id), Usage: viewUsage(view)}, nil
}

// Dir returns the directory of snapshot id; after a restart it serves the
// layer again from the labels the snapshot was committed with.
func (r *Remote) Dir(ctx context.Context, id string, labels map[string]string) (string, error) {
	r.mu.Lock()
	_, ok := r.held[id]
	r.mu.Unlock()
	if ok {
		return filepath.Join(r.lfs.Dir, id), nil
	}
	pinned := labels[LabelRemote]
	layer, err := digest.Parse(labels[LabelLayer])
	if pinned == "" || err != nil {
		return "", fmt.Errorf("snapshot %s has no usable %s and %s labels", id, LabelRemote, LabelLayer)
	}
	ri, i, err := r.serve(ctx, id, pinned, layer, labels)
	if err != nil {
		return "", err
	}
	r.log.Info("layer served again", "layer", layer, "image", ri.pinned, "snapshot", id, "index", i)
	return filepath.Join(r.lfs.Dir, id), nil
}

// Release stops serving snapshot id, and closes its image once no
// snapshot holds it.
func (r *Remote) Release(ctx context.Context, id string) error {
	r.mu.Lock()
	ri, ok := r.held[id]
	if !ok {
		r.mu.Unlock()
		return nil
	}
	delete(r.held, id)
	err := r.lfs.Remove(id)
	last := r.unref(ri)
	r.mu.Unlock()
	if last != nil {
		r.closeImage(last)
	}
	return err
}

// Close releases every layer and closes every image. The LayerFS stays
// mounted: its owner unmounts it.
func (r *Remote) Close() error {
	r.cancel()
	r.mu.Lock()
	var errs []error
	var closing []*fs.Image
	for id, ri := range r.held {
		errs = append(errs, r.lfs.Remove(id))
		delete(r.held, id)
		if im := r.unref(ri); im != nil {
			closing = append(closing, im)
		}
	}
	r.mu.Unlock()
	for _, im := range closing {
		r.closeImage(im)
	}
	return errors.Join(errs...)
}

// serve loads the image pinned (once for all callers), checks the layer
// and adds its view as id.
func (r *Remote) serve(ctx context.Context, id, pinned string, layer digest.Digest, labels map[string]string) (*remoteImage, int, error) {
	ri, err := r.acquire(ctx, pinned)
	if err != nil {
		return nil, 0, err
	}
	fail := func(err error) (*remoteImage, int, error) {
		r.mu.Lock()
		last := r.unref(ri)
		r.mu.Unlock()
		if last != nil {
			r.closeImage(last)
		}
		return nil, 0, err
	}
	i, err := layerIndex(ri.im, layer, labels)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", pinned, err))
	}
	// The views are computed once per image, outside the lock.
	if _, err := ri.im.LayerView(i); err != nil {
		return fail(fmt.Errorf("%s: %w", pinned, err))
	}
	r.mu.Lock()
	if _, ok := r.held[id]; ok {
		// A concurrent Dir of the same snapshot won.
		last := r.unref(ri)
		r.mu.Unlock()
		if last != nil {
			r.closeImage(last)
		}
		return ri, i, nil
	}
	if _, err := r.lfs.Add(id, ri.im, i); err != nil {
		r.mu.Unlock()
		return fail(err)
	}
	r.held[id] = ri
	r.mu.Unlock()
	return ri, i, nil
}

// acquire returns the loaded image pinned, holding one reference to it,
// loading it if no one is.
func (r *Remote) acquire(ctx context.Context, pinned string) (*remoteImage, error) {
	r.mu.Lock()
	ri, ok := r.images[pinned]
	if !ok {
		ri = &remoteImage{pinned: pinned, ready: make(chan struct{})}
		r.images[pinned] = ri
		go r.load(ri)
	}
	ri.refs++
	r.mu.Unlock()
	select {
	case <-ri.ready:
	case <-ctx.Done():
		r.mu.Lock()
		last := r.unref(ri)
		r.mu.Unlock()
		if last != nil {
			r.closeImage(last)
		}
		return nil, ctx.Err()
	}
	if ri.err != nil {
		r.mu.Lock()
		r.unref(ri)
		r.mu.Unlock()
		return nil, ri.err
	}
	return ri, nil
}

// load resolves and loads ri's image with the Remote's context: a caller
// that gives up does not fail the others waiting for the same image.
func (r *Remote) load(ri *remoteImage) {
	defer func() {
		if ri.err != nil {
			// Not cached: the next Prepare tries again.
			r.mu.Lock()
			if r.images[ri.pinned] == ri {
				delete(r.images, ri.pinned)
			}
			r.mu.Unlock()
		}
		close(ri.ready)
	}()
	start := time.Now()
	before := r.client.Stats().BytesFetched
	im, err := fs.Resolve(r.ctx, r.client, ri.pinned, r.opts)
	if err != nil {
		ri.err = fmt.Errorf("resolve %s: %w", ri.pinned, err)
		return
	}
	if r.onRes != nil {
		r.onRes(im)
	}
	if err := im.Load(r.ctx); err != nil {
		im.Close()
		ri.err = fmt.Errorf("load %s: %w", ri.pinned, err)
		return
	}
	im.Replay() // the image's start-up profile, fetched before the container asks
	modes := map[string]int{}
	for _, l := range im.Layers() {
		modes[l.Mode]++
	}
	var ms []string
	for m, n := range modes {
		ms = append(ms, fmt.Sprintf("%s=%d", m, n))
	}
	r.log.Info("image loaded", "image", ri.pinned, "layers", len(im.Layers()), "modes", strings.Join(ms, ","),
		"bytes_fetched", r.client.Stats().BytesFetched-before, "duration", time.Since(start).Round(time.Millisecond))
	if r.onLoad != nil {
		r.onLoad(im, time.Since(start))
	}
	ri.im = im
}

// unref drops one reference to ri, under r.mu. When it was the last, ri
// leaves images and its image (if loaded) is returned for the caller to
// close outside the lock.
func (r *Remote) unref(ri *remoteImage) *fs.Image {
	ri.refs--
	if ri.refs > 0 {
		return nil
	}
	if r.images[ri.pinned] == ri {
		delete(r.images, ri.pinned)
	}
	select {
	case <-ri.ready:
		return ri.im
	default:
		// Still loading, and nobody waits any more: the load finishes
		// and its image is closed then.
		go func() {
			<-ri.ready
			if ri.im != nil {
				r.closeImage(ri.im)
			}
		}()
		return nil
	}
}

func (r *Remote) closeImage(im *fs.Image) {
	if r.onClos != nil {
		r.onClos(im)
	}
	if err := im.Close(); err != nil {
		r.log.Warn("close image", "image", im.Ref(), "err", err)
	}
}

// layerIndex finds layer in im and checks it against containerd's labels:
// its chain ID (snapshot.ref), the layers above it (cri.image-layers,
// which may be cut short) and its DiffID (2.x's diff-id label).
func layerIndex(im *fs.Image, layer digest.Digest, labels map[string]string) (int, error) {
	digests, diffIDs := im.LayerDigests()
	return checkLayer(digests, diffIDs, layer, labels)
}

// checkLayer is layerIndex over the image's layer digests and DiffIDs.
func checkLayer(digests, diffIDs []digest.Digest, layer digest.Digest, labels map[string]string) (int, error) {
	i := -1
	for j, d := range digests {
		if d == layer {
			i = j
			break
		}
	}
	if i < 0 {
		return 0, fmt.Errorf("layer %s is not in the manifest", layer)
	}
	if want := labels[snapshots.LabelSnapshotRef]; want != "" {
		if got := identity.ChainID(diffIDs[:i+1]); got.String() != want {
			return 0, fmt.Errorf("layer %s (index %d): chain ID %s from the config, containerd unpacks it as %s", layer, i, got, want)
		}
	}
	if want := labels[LabelDiffID]; want != "" && want != diffIDs[i].String() {
		return 0, fmt.Errorf("layer %s (index %d): DiffID %s in the config, containerd says %s", layer, i, diffIDs[i], want)
	}
	if above := labels[LabelImageLayers]; above != "" {
		for k, s := range strings.Split(above, ",") {
			if i+k >= len(digests) || digests[i+k].String() != s {
				return 0, fmt.Errorf("layer %s (index %d): containerd's layer list %s does not match the manifest", layer, i, LabelImageLayers)
			}
		}
	}
	return i, nil
}

// viewUsage is what a layer's tree takes once complete: its regular
// files' sizes in 4 KiB blocks, and a block per directory and symlink, as
// the disk usage of containerd's applied upper directory would count
// them; one inode per node.
func viewUsage(t *fs.Tree) snapshots.Usage {
	const block = 4096
	var u snapshots.Usage
	seen := map[*fs.Node]bool{}
	t.Walk(func(_ string, n *fs.Node) error {
		if seen[n] {
			return nil
		}
		seen[n] = true
		u.Inodes++
		switch n.Type {
		case index.TypeReg:
			u.Size += (n.Size + block - 1) / block * block
		case index.TypeDir, index.TypeSymlink:
			u.Size += block
		}
		return nil
	})
	return u
}
