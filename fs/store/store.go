package store

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/index/toc"
)

// Options configure [Mount].
type Options struct {
	// Client resolves references and fetches every byte, with its digest
	// cache and credentials shared by every image. Required.
	Client *fetch.Client
	// Image configures how each image is loaded; Progressive is ignored
	// (a view needs every table) and Logger is replaced by Logger.
	Image fs.Options
	// Logger receives a line per image loaded and per layer served, and
	// each image's reads and EIOs. Nil discards.
	Logger *slog.Logger
	// BlobDir is where a layer's blob is kept once something reads it
	// (podman push or save); empty means os.TempDir(). Files there are
	// unlinked as soon as they are opened.
	BlobDir string
	// Debug logs every FUSE request at Debug.
	Debug bool
	// OnResolve, when set, is called with each image once it is
	// resolved, before its load fetches any layer (the daemon pins in its
	// cache what the image cannot do without). OnLoad, when set, is
	// called with each image once it is loaded, before any of its layers
	// is served (the daemon's metrics count it).
	OnResolve func(im *fs.Image)
	OnLoad    func(im *fs.Image, took time.Duration)
}

// Store is one FUSE mount serving any number of images as a
// containers/storage additional layer store (see the package doc). It is
// safe for concurrent use.
type Store struct {
	// Dir is the mountpoint.
	Dir string

	client  *fetch.Client
	imgOpts fs.Options
	log     *slog.Logger
	blobDir string
	server  interface{ Wait() } // go-fuse's, or the raw server's (SetServer)
	onLoad  func(*fs.Image, time.Duration)
	// Served raw (NewRaw): ids and slots from their file, and each
	// slot's raw file system once served.
	assign  *assignments
	trees   map[uint64]*fs.RawFS
	started chan struct{} // closed once assign is read (StartRaw)
	onRes   func(*fs.Image)

	ctx    context.Context // the loads'; Unmount cancels it
	cancel context.CancelFunc

	// mu guards everything below.
	mu       sync.Mutex
	images   map[string]*image // by reference
	ids      map[string]uint64 // the slot-0 node id of each path of the mount's own nodes
	nextSlot uint64
	uses     map[string]int // by layer directory path (ref dir/digest)
}

// image is one reference being loaded or loaded; ready is closed once im
// or err is set.
type image struct {
	ref   string
	ready chan struct{}
	im    *fs.Image
	err   error
	views []*fs.Tree
	sizes []int64
	// byDigest maps the compressed digest and, for eStargz and
	// zstd:chunked, the TOC digest of each layer to its index.
	byDigest map[digest.Digest]int
	// served holds each layer's tree once its diff/ was looked up.
	smu    sync.Mutex
	served map[int]*fs.ServedTree
	blobs  map[int]*blobFile
}

// Mount mounts an empty store at dir (created if missing); the images
// load on a child of ctx (cancelled by Unmount, or when ctx ends). A mount left
// at dir by a daemon that died (ENOTCONN) is detached first. It is
// mounted read-write (podman's use and release notifications must reach
// it: every write is answered ENOENT), nosuid, nodev, visible to every
// user. It needs root and /dev/fuse.
func Mount(ctx context.Context, dir string, opts Options) (*Store, error) {
	s, err := newStore(ctx, dir, opts)
	if err != nil {
		return nil, err
	}
	if err := s.prepareMountpoint(); err != nil {
		s.cancel()
		return nil, err
	}
	s.ids[""] = fuse.FUSE_ROOT_ID
	cancel := s.cancel
	lg := s.log
	dir = s.Dir
	timeout := time.Hour
	zero := time.Duration(0)
	fo := &fusefs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &zero, // a layer not served now may be later (an image that failed to load)
		NullPermissions: true,
		ExternalNodeID:  true, // slot 0: the store's own nodes; slot n: a served diff/ (fs.ServedTree)
		RootStableAttr:  &fusefs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
		MountOptions: fuse.MountOptions{
			FsName:            "ocifs-store",
			Name:              "ocifs",
			AllowOther:        true,
			DirectMountStrict: true,
			DirectMountFlags:  syscall.MS_NOSUID | syscall.MS_NODEV,
			Options:           []string{"default_permissions"},
			MaxReadAhead:      1 << 20,
			Debug:             opts.Debug,
		},
	}
	if opts.Debug {
		fo.MountOptions.Logger = slog.NewLogLogger(lg.Handler(), slog.LevelDebug)
	}
	fo.Logger = log.New(logWriter{lg}, "", 0)
	root := &refDir{s: s}
	if s.server, err = fusefs.Mount(dir, root, fo); err != nil {
		cancel()
		return nil, fmt.Errorf("layer store at %s: %w", dir, err)
	}
	lg.Info("layer store mounted", "path", dir)
	return s, nil
}

// newStore is a store at dir (absolute once returned), not mounted.
func newStore(ctx context.Context, dir string, opts Options) (*Store, error) {
	if opts.Client == nil {
		return nil, errors.New("layer store: a fetch client is required")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("layer store at %s: %w", dir, err)
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	imgOpts := opts.Image
	imgOpts.Logger = lg
	imgOpts.Progressive = false
	imgOpts.StartProfileLookup = true // its round trips overlap the plan's and the load's
	ctx, cancel := context.WithCancel(ctx)
	return &Store{Dir: dir, client: opts.Client, imgOpts: imgOpts, log: lg, blobDir: opts.BlobDir, onLoad: opts.OnLoad, onRes: opts.OnResolve, ctx: ctx, cancel: cancel,
		images: map[string]*image{}, ids: map[string]uint64{}, nextSlot: 1, uses: map[string]int{}}, nil
}

// prepareMountpoint detaches a mount at s.Dir whose daemon died (ENOTCONN)
// and creates the directory.
func (s *Store) prepareMountpoint() error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.Dir, &st); errors.Is(err, syscall.ENOTCONN) {
		if err := syscall.Unmount(s.Dir, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("layer store at %s: detach the mount a dead daemon left there: %w", s.Dir, err)
		}
		s.log.Warn("detached the layer store a dead daemon left", "path", s.Dir)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("layer store at %s: %w", s.Dir, err)
	}
	return nil
}

// Unmount unmounts the store, waits (at most a second) for its FUSE
// connection to end, and closes every image. Containers still running
// keep their overlay mounts, whose reads of the store fail once this
// process exits.
func (s *Store) Unmount() error {
	ended, err := fs.UnmountServer(s.Dir, s.server)
	if err != nil {
		return fmt.Errorf("unmount layer store at %s: %w", s.Dir, err)
	}
	if ended {
		s.log.Info("layer store unmounted", "path", s.Dir)
	} else {
		s.log.Warn("layer store unmounted, still in use by the overlay mounts of running containers: their reads fail once this process exits", "path", s.Dir)
	}
	s.cancel()
	s.mu.Lock()
	images := s.images
	s.images = map[string]*image{}
	s.mu.Unlock()
	for _, img := range images {
		<-img.ready
		if img.im != nil {
			img.close()
		}
	}
	if s.assign != nil {
		return s.assign.close()
	}
	return nil
}

// Generation identifies how a store served raw numbers its nodes, for a
// takeover's check that the next daemon numbers them as the kernel was
// told.
func Generation() uint32 {
	h := sha256.Sum256([]byte("ocifs store ids 1: slot 0 and slots as store-ids.jsonl gives them\n"))
	return fs.LayerGeneration() ^ max(binary.BigEndian.Uint32(h[:4]), 1)
}

func (img *image) close() {
	img.smu.Lock()
	for _, b := range img.blobs {
		b.close()
	}
	img.smu.Unlock()
	img.im.Close()
}

// Uses returns the use count of layer d of reference ref: podman's
// creates of its use file less its rmdirs of the layer's directory.
func (s *Store) Uses(ref string, d digest.Digest) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uses[layerKey(ref, d)]
}

// Images returns the references loaded (or loading).
func (s *Store) Images() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for r := range s.images {
		out = append(out, r)
	}
	return out
}

func layerKey(ref string, d digest.Digest) string { return ref + "\x00" + d.String() }

// id returns the slot-0 node id of the store's own node at path p.
func (s *Store) id(p string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.ids[p]; ok {
		return id
	}
	id := uint64(len(s.ids)) + 1
	s.ids[p] = id
	return id
}

// decodeRef returns the reference whose base64 is b64, or "": only the
// canonical encoding (what containers/storage writes), so that no two
// directories name one image.
func decodeRef(b64 string) string {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) == 0 || !utf8.Valid(b) || strings.ContainsAny(string(b), "\x00\n") ||
		base64.StdEncoding.EncodeToString(b) != b64 {
		return ""
	}
	return string(b)
}

// acquire returns the loaded image ref, loading it if no one has.
func (s *Store) acquire(ctx context.Context, ref string) (*image, error) {
	s.mu.Lock()
	img, ok := s.images[ref]
	if !ok {
		img = &image{ref: ref, ready: make(chan struct{}), served: map[int]*fs.ServedTree{}, blobs: map[int]*blobFile{}}
		s.images[ref] = img
		go s.load(img)
	}
	s.mu.Unlock()
	select {
	case <-img.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return img, img.err
}

// load resolves and loads img with the store's context (a lookup that
// gives up does not fail the others), and computes its podman views.
func (s *Store) load(img *image) {
	defer func() {
		if img.err != nil {
			s.log.Warn("image not served: podman pulls its layers itself", "image", img.ref, "err", img.err)
			s.mu.Lock()
			if s.images[img.ref] == img {
				delete(s.images, img.ref) // the next lookup tries again
			}
			s.mu.Unlock()
		}
		close(img.ready)
	}()
	start := time.Now()
	before := s.client.Stats().BytesFetched
	im, err := fs.Resolve(s.ctx, s.client, img.ref, s.imgOpts)
	if err != nil {
		img.err = fmt.Errorf("resolve %s: %w", img.ref, err)
		return
	}
	if s.onRes != nil {
		s.onRes(im)
	}
	if err := im.Load(s.ctx); err != nil {
		im.Close()
		img.err = fmt.Errorf("load %s: %w", img.ref, err)
		return
	}
	im.Replay() // the image's start-up profile, fetched before the container asks
	views, sizes, err := im.PodmanLayerViews()
	if err != nil {
		im.Close()
		img.err = fmt.Errorf("%s: %w", img.ref, err)
		return
	}
	img.byDigest = map[digest.Digest]int{}
	for i, desc := range im.Fetched().Layers() {
		img.byDigest[desc.Digest] = i
		if d := tocDigest(desc); d != "" {
			img.byDigest[d] = i
		}
	}
	var modes []string
	for _, l := range im.Layers() {
		modes = append(modes, l.Mode)
	}
	s.log.Info("image loaded", "image", img.ref, "layers", len(views), "modes", strings.Join(modes, ","),
		"bytes_fetched", s.client.Stats().BytesFetched-before, "duration", time.Since(start).Round(time.Millisecond))
	if s.onLoad != nil {
		s.onLoad(im, time.Since(start))
	}
	img.im, img.views, img.sizes = im, views, sizes
}

// tocDigest is the digest containers/storage 1.54 and later name an
// eStargz or zstd:chunked layer by: its TOC digest annotation.
func tocDigest(desc ocispec.Descriptor) digest.Digest {
	for _, k := range []string{toc.AnnotationTOCDigest, toc.AnnotationManifestChecksum, "io.containers.zstd-chunked.manifest-checksum"} {
		if d, err := digest.Parse(desc.Annotations[k]); err == nil {
			return d
		}
	}
	return ""
}

// layerInfo is the info file: the fields of a containers/storage Layer
// that a store fills in (containers/storage 1.43 needs diff-digest; 1.54
// and later read toc-digest and flags.expected-layer-diffid too).
type layerInfo struct {
	CompressedDigest   digest.Digest  `json:"compressed-diff-digest,omitempty"`
	CompressedSize     int64          `json:"compressed-size,omitempty"`
	UncompressedDigest digest.Digest  `json:"diff-digest"`
	UncompressedSize   int64          `json:"diff-size,omitempty"`
	Compression        int            `json:"compression"`
	TOCDigest          digest.Digest  `json:"toc-digest,omitempty"`
	Flags              map[string]any `json:"flags,omitempty"`
}

// containers/storage's archive.Compression values.
const (
	compressionNone = 0
	compressionGzip = 2
	compressionZstd = 4
)

func compressionOf(mediaType string) int {
	switch {
	case strings.HasSuffix(mediaType, "gzip"):
		return compressionGzip
	case strings.HasSuffix(mediaType, "zstd"):
		return compressionZstd
	}
	return compressionNone
}

// info returns the info file of layer i: the manifest's descriptor, the
// config's DiffID (bound to the manifest by the config's digest; the
// layer's served bytes are checked by the read path as every mount's
// are) and the tar's size.
func (img *image) info(i int) ([]byte, error) {
	desc := img.im.Fetched().Layers()[i]
	diffID := img.im.Layers()[i].DiffID
	in := layerInfo{
		CompressedDigest: desc.Digest, CompressedSize: desc.Size,
		UncompressedDigest: diffID, UncompressedSize: img.sizes[i],
		Compression: compressionOf(desc.MediaType),
	}
	if d := tocDigest(desc); d != "" {
		in.TOCDigest = d
		in.Flags = map[string]any{"expected-layer-diffid": diffID.String()}
	}
	return json.Marshal(in)
}

// servedTree returns layer i's diff/ tree, given a slot the first time.
func (s *Store) servedTree(img *image, i int) (*fs.ServedTree, error) {
	img.smu.Lock()
	defer img.smu.Unlock()
	if st := img.served[i]; st != nil {
		return st, nil
	}
	var slot uint64
	if s.assign != nil {
		var err error
		if slot, err = s.assign.slot(img.ref, i); err != nil {
			return nil, err
		}
	} else {
		s.mu.Lock()
		slot = s.nextSlot
		s.nextSlot++
		s.mu.Unlock()
	}
	st, err := fs.NewServedTree(img.im, img.views[i], i, slot)
	if err != nil {
		return nil, err
	}
	img.served[i] = st
	l := img.im.Layers()[i]
	s.log.Info("layer served lazily", "image", img.ref, "layer", l.Digest, "index", i, "mode", l.Mode)
	return st, nil
}

// use counts a create of the layer's use file (+1) or an rmdir of its
// directory (-1).
func (s *Store) use(key string, delta int, ref string, d digest.Digest) {
	s.mu.Lock()
	n := s.uses[key] + delta
	if n < 0 {
		n = 0 // a release of a use from before this daemon started
	}
	s.uses[key] = n
	s.mu.Unlock()
	s.log.Debug("layer use", "image", ref, "layer", d, "delta", delta, "uses", n)
}

// logWriter turns go-fuse's log lines into Warn records.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn("fuse", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}
