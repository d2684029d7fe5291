package fs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// LayerFSOptions configure [MountLayerFS]. The zero value works.
type LayerFSOptions struct {
	// Logger receives lifecycle lines; nil discards. Each image logs its
	// own reads (its Options.Logger).
	Logger *slog.Logger
	// Debug logs every FUSE request at Debug.
	Debug bool
	// NoPassthrough serves every read through the daemon, also of files
	// whose layer is extracted into the cache.
	NoPassthrough bool
	// Timeout is how long the kernel may cache the entries and attributes
	// of the trees (immutable); 0 means one hour.
	Timeout time.Duration
}

// LayerFS is one FUSE mount serving many trees, each a directory of its
// root: the per-layer views of a containerd snapshotter's remote layers,
// each the lower directory of its snapshot. It is read-only, nosuid and
// nodev, visible to every user (overlayfs reaches its lower directories
// with the credentials of the container's processes too), and serves each
// tree's files from its image's verified read path, handing extracted
// files to the kernel with passthrough. Node ids are unique across the
// mount; a numeric name (a snapshot id) is its own slot, so its nodes keep
// their ids across daemons (see [ServedTree] and LayerFS.slot). It is safe
// for concurrent use.
type LayerFS struct {
	// Dir is the mountpoint.
	Dir string

	server        interface{ Wait() } // go-fuse's, or the raw server's (SetServer)
	root          *layersRoot         // nil when served raw
	raw           bool                // served by Raw: every slot derivable
	log           *slog.Logger
	noPassthrough bool
	timeout       time.Duration

	// mu guards names, used and nextSlot.
	mu    sync.RWMutex
	names map[string]*ServedTree
	// used holds every slot given in this mount's life: the kernel may
	// still hold nodes of a removed tree, so no slot serves two.
	used     map[uint64]bool
	nextSlot uint64 // the next slot for a name that is not a number, counting down
	// Served raw: the raw file system of each slot, and the generation
	// each slot has served in this daemon's life (a slot serves one tree).
	slots map[uint64]*RawFS
	gens  map[uint64]uint64
}

// numberedSlots bounds the slots named by their number (a containerd
// snapshot id): names that are no number, or one past it, get slots
// counting down from MaxSlot.
const numberedSlots = 1 << 31

// rootEntryTimeout is how long the kernel may cache a name of the mount's
// root: names come and go with snapshots (Remove also tells the kernel).
const rootEntryTimeout = time.Second

// MountLayerFS mounts an empty LayerFS at dir (created if missing). A
// mount left at dir by a daemon that died (ENOTCONN) is detached first.
// It needs root and /dev/fuse.
func MountLayerFS(dir string, opts LayerFSOptions) (*LayerFS, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mount layers at %s: %w", dir, err)
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if err := detachStale(dir, lg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mount layers at %s: %w", dir, err)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = time.Hour
	}
	l := &LayerFS{Dir: dir, log: lg, noPassthrough: opts.NoPassthrough, timeout: timeout,
		names: map[string]*ServedTree{}, used: map[uint64]bool{}, nextSlot: MaxSlot}
	l.root = &layersRoot{fs: l}
	fo := &fusefs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
		ExternalNodeID:  true, // node ids are slot<<32 | the tree's numbers (layerfs.go)
		RootStableAttr:  &fusefs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
		MountOptions: fuse.MountOptions{
			FsName:            "ocifs-layers",
			Name:              "ocifs",
			AllowOther:        true,
			DirectMountStrict: true,
			DirectMountFlags:  syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
			Options:           []string{"ro", "default_permissions"},
			MaxReadAhead:      1 << 20,
			Debug:             opts.Debug,
		},
	}
	if opts.Debug {
		fo.MountOptions.Logger = slog.NewLogLogger(lg.Handler(), slog.LevelDebug)
	}
	fo.Logger = log.New(logWriter{lg}, "", 0)
	if l.server, err = fusefs.Mount(dir, l.root, fo); err != nil {
		return nil, fmt.Errorf("mount layers at %s: %w", dir, err)
	}
	lg.Info("layers mounted", "path", dir)
	return l, nil
}

// detachStale detaches a mount at dir whose daemon is gone. statfs(2)
// asks the daemon every time (stat may answer from the kernel's cache).
func detachStale(dir string, lg *slog.Logger) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		return nil
	}
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("mount layers at %s: detach the mount a dead daemon left there: %w", dir, err)
	}
	lg.Warn("detached the layer mount a dead daemon left", "path", dir)
	return nil
}

// Add serves layer layer's view of the loaded image im as directory name
// of the mount and returns its path. The name must be new, a single path
// element; the image must stay open until the name is removed.
func (l *LayerFS) Add(name string, im *Image, layer int) (string, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return "", fmt.Errorf("add layer %q: not a plain name", name)
	}
	view, err := im.LayerView(layer)
	if err != nil {
		return "", fmt.Errorf("add layer %q: %w", name, err)
	}
	if err := l.add(name, im, view, layer); err != nil {
		return "", fmt.Errorf("add layer %q: %w", name, err)
	}
	// The kernel may keep a negative entry of the name from a lookup
	// before (NegativeTimeout): drop it.
	if l.raw {
		return filepath.Join(l.Dir, name), nil // no negative entries at the root (layerraw_linux.go)
	}
	if errno := l.root.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		l.log.Warn("telling the kernel of a new layer", "name", name, "err", errno)
	}
	return filepath.Join(l.Dir, name), nil
}

// add serves view as name.
func (l *LayerFS) add(name string, im *Image, view *Tree, layer int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.names[name]; ok {
		return os.ErrExist
	}
	slot := l.slot(name)
	if slot == 0 && l.raw {
		return errors.New("a layer mount that may be taken over serves only snapshot ids (decimal names), whose slots the next daemon derives")
	}
	if slot == 0 {
		return errors.New("no free slot")
	}
	st, err := NewServedTree(im, view, layer, slot)
	if err != nil {
		return err
	}
	if l.raw {
		if g, ok := l.gens[slot]; ok && g != st.gen {
			return fmt.Errorf("slot %d served a tree of generation %08x in this mount's life, this one has %08x", slot, g, st.gen)
		}
		l.gens[slot] = st.gen
		l.slots[slot] = rawView(st, l.timeout)
	}
	l.used[slot] = true
	if want := !l.noPassthrough; im.passthrough != want {
		im.passthrough = want // before any node of im is served here
	}
	l.names[name] = st
	return nil
}

// slot chooses the slot of name, under l.mu: a decimal name below
// numberedSlots (a containerd snapshot id, which no snapshot reuses) is
// its own slot, so its tree has the same node ids, and with the same view
// the same handles, in every daemon; other names, and a number whose slot
// this mount has given before, count down from MaxSlot. 0: none is free.
func (l *LayerFS) slot(name string) uint64 {
	if l.raw {
		// Served raw, every slot must be derivable: the snapshot id's own,
		// served again only with the same tree (add checks).
		if n, err := strconv.ParseUint(name, 10, 64); err == nil && n >= 1 && n < numberedSlots {
			return n
		}
		return 0
	}
	if n, err := strconv.ParseUint(name, 10, 64); err == nil && n >= 1 && n < numberedSlots && !l.used[n] {
		return n
	}
	for ; l.nextSlot >= numberedSlots; l.nextSlot-- {
		if !l.used[l.nextSlot] {
			s := l.nextSlot
			l.nextSlot--
			return s
		}
	}
	return 0
}

// Remove stops serving name; the kernel is told to forget it. Removing a
// name not served is no error.
func (l *LayerFS) Remove(name string) error {
	l.mu.Lock()
	st, ok := l.names[name]
	delete(l.names, name)
	if ok && l.raw {
		delete(l.slots, st.Slot())
	}
	l.mu.Unlock()
	if !ok || l.raw {
		// Served raw, the kernel keeps the name at most rootEntryTimeout,
		// and a request about its nodes then finds no slot: ESTALE.
		return nil
	}
	l.root.RmChild(name)
	if errno := l.root.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		return fmt.Errorf("remove layer %q: tell the kernel: %w", name, errno)
	}
	return nil
}

// Names returns the names served, sorted.
func (l *LayerFS) Names() []string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	names := make([]string, 0, len(l.names))
	for n := range l.names {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Unmount unmounts the file system and waits for its FUSE connection to
// end. Overlay mounts of running containers keep the connection (they
// hold private copies of their lower directories' mount), however the
// mount itself goes: then Unmount waits at most endWait, logs that and
// returns; those containers' reads of their lower layers fail once this
// process exits.
func (l *LayerFS) Unmount() error {
	ended, err := UnmountServer(l.Dir, l.server)
	if err != nil {
		return fmt.Errorf("unmount layers at %s: %w", l.Dir, err)
	}
	if ended {
		l.log.Info("layers unmounted", "path", l.Dir)
	} else {
		l.log.Warn("layers unmounted, still in use by the overlay mounts of running containers: their reads fail once this process exits", "path", l.Dir)
	}
	return nil
}

// UnmountServer unmounts dir, served by server: retrying a moment while
// it is busy, then detaching it. It waits at most endWait for the FUSE
// connection to end and reports whether it did: overlay mounts of running
// containers keep the connection (they hold private copies of their lower
// directories' mount), however the mount itself goes.
func UnmountServer(dir string, server interface{ Wait() }) (ended bool, err error) {
	for try, delay := 0, 5*time.Millisecond; try < 5; try, delay = try+1, delay*2 {
		if err = syscall.Unmount(dir, 0); err != syscall.EBUSY {
			break
		}
		time.Sleep(delay)
	}
	if err == syscall.EBUSY {
		err = syscall.Unmount(dir, syscall.MNT_DETACH)
	}
	if err != nil {
		return false, err
	}
	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true, nil
	case <-time.After(endWait):
		return false, nil
	}
}

// endWait is how long UnmountServer waits for the kernel to end the connection.
const endWait = time.Second

// layersRoot is the mount's root: one directory per name.
type layersRoot struct {
	fusefs.Inode
	fs *LayerFS
}

var (
	_ fusefs.NodeLookuper  = (*layersRoot)(nil)
	_ fusefs.NodeReaddirer = (*layersRoot)(nil)
	_ fusefs.NodeGetattrer = (*layersRoot)(nil)
	_ fusefs.NodeStatfser  = (*layersRoot)(nil)
)

func (r *layersRoot) served(name string) *ServedTree {
	r.fs.mu.RLock()
	defer r.fs.mu.RUnlock()
	return r.fs.names[name]
}

func (r *layersRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	st := r.served(name)
	if st == nil {
		return nil, syscall.ENOENT
	}
	node, attr := st.Root()
	st.FillEntry(out)
	out.SetEntryTimeout(rootEntryTimeout)
	return r.NewInode(ctx, node, attr), 0
}

func (r *layersRoot) Readdir(ctx context.Context) (fusefs.DirStream, syscall.Errno) {
	r.fs.mu.RLock()
	ents := make([]fuse.DirEntry, 0, len(r.fs.names))
	for name, st := range r.fs.names {
		ents = append(ents, fuse.DirEntry{Name: name, Ino: st.base | st.tree.Root.ID, Mode: syscall.S_IFDIR})
	}
	r.fs.mu.RUnlock()
	slices.SortFunc(ents, func(a, b fuse.DirEntry) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return fusefs.NewListDirStream(ents), 0
}

func (r *layersRoot) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.fs.mu.RLock()
	n := len(r.fs.names)
	r.fs.mu.RUnlock()
	out.Ino = fuse.FUSE_ROOT_ID
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = uint32(2 + n)
	out.Size = 4096
	out.Blksize = 4096
	out.SetTimeout(rootEntryTimeout)
	return 0
}

func (r *layersRoot) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return 0
}
