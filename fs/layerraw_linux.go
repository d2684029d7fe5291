package fs

// A LayerFS served by a raw FUSE protocol server, for a connection another
// daemon may take over (fs/takeover): see "A layer mount taken over" in
// fs/takeover's doc.go.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// NewRawLayerFS returns a LayerFS for the mount at dir that it does not
// mount: its trees are served by the file system [LayerFS.Raw] returns, on
// a connection its caller answers (a takeover.Server, which mounts, or
// takes over the mount another daemon answered). Only decimal names (the
// snapshot ids of a containerd snapshotter) may be added: each is its own
// slot, so the node ids the kernel holds name the same nodes in the next
// daemon, which serves a slot again when a request names it (the resolve
// function of Raw). Passthrough is off: a backing id belongs to the daemon
// that registered it. dir must exist, unless mount creates it.
func NewRawLayerFS(dir string, opts LayerFSOptions) (*LayerFS, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("layers at %s: %w", dir, err)
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = time.Hour
	}
	return &LayerFS{Dir: dir, log: lg, noPassthrough: true, timeout: timeout, raw: true,
		names: map[string]*ServedTree{}, used: map[uint64]bool{}, nextSlot: MaxSlot,
		slots: map[uint64]*RawFS{}, gens: map[uint64]uint64{}}, nil
}

// PrepareRawMount makes ready the mountpoint of a raw LayerFS that its
// caller mounts afresh (never one being taken over: a look at a mount whose
// daemon is being replaced waits for the replacement): a mount a dead
// daemon without a holder left is detached, the directory created.
func (l *LayerFS) PrepareRawMount() error {
	if err := detachStale(l.Dir, l.log); err != nil {
		return err
	}
	if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return fmt.Errorf("mount layers at %s: %w", l.Dir, err)
	}
	return nil
}

// SetServer names what serves the raw LayerFS's connection, for Unmount
// to wait on.
func (l *LayerFS) SetServer(s interface{ Wait() }) { l.server = s }

// Raw returns the raw file system of a LayerFS from [NewRawLayerFS]. A
// request about a slot not served yet calls resolve with the slot's name
// (once at a time per slot), which serves it ([LayerFS.Add]) or says why
// not: the request then gets ESTALE (ENOENT for a name looked up at the
// root), never another tree's node.
func (l *LayerFS) Raw(resolve func(ctx context.Context, name string) error) fuse.RawFileSystem {
	return &layerRaw{RawFileSystem: fuse.NewDefaultRawFileSystem(), l: l, resolve: resolve, failed: map[uint64]bool{}}
}

// layerRaw is the raw file system of a LayerFS: slot 0 is its root (node
// 1, one directory per name), every other slot a tree's [RawFS].
type layerRaw struct {
	fuse.RawFileSystem
	l       *LayerFS
	resolve func(ctx context.Context, name string) error

	mu     sync.Mutex // guards failed
	failed map[uint64]bool
}

func (r *layerRaw) String() string { return "ocifs-layers" }

// tree returns the RawFS of the slot of node id, serving it again when it
// is not served yet; nil when it cannot be (ESTALE).
func (r *layerRaw) tree(cancel <-chan struct{}, id uint64) *RawFS {
	return r.slot(cancel, id, true)
}

// slot is tree; noisy logs the first failure to serve a slot again (the
// kernel holds its nodes), where a name looked up at the root may just
// not be there.
func (r *layerRaw) slot(cancel <-chan struct{}, id uint64, noisy bool) *RawFS {
	slot := id >> 32
	r.l.mu.RLock()
	t := r.l.slots[slot]
	r.l.mu.RUnlock()
	if t != nil || slot == 0 || slot >= numberedSlots || r.resolve == nil {
		return t
	}
	name := strconv.FormatUint(slot, 10)
	if err := r.resolve(newRequestCtx(cancel), name); err != nil {
		r.mu.Lock()
		first := !r.failed[slot]
		if noisy {
			r.failed[slot] = true
		}
		r.mu.Unlock()
		if first && noisy {
			r.l.log.Warn("the kernel asks about a layer that cannot be served again: ESTALE", "snapshot", name, "err", err)
		}
		return nil
	}
	r.l.mu.RLock()
	t = r.l.slots[slot]
	r.l.mu.RUnlock()
	return t
}

// named returns the tree served as name at the root, serving a decimal
// name again when it is not served yet.
func (r *layerRaw) named(cancel <-chan struct{}, name string) *RawFS {
	r.l.mu.RLock()
	st := r.l.names[name]
	r.l.mu.RUnlock()
	if st != nil {
		return r.tree(cancel, st.base)
	}
	n, err := strconv.ParseUint(name, 10, 64)
	if err != nil || n == 0 || n >= numberedSlots || strconv.FormatUint(n, 10) != name {
		return nil
	}
	return r.slot(cancel, n<<32, false)
}

const rootID = fuse.FUSE_ROOT_ID

// stale is the answer to a node id of the root's slot other than the root.
var stale = fuse.Status(syscall.ESTALE)

func (r *layerRaw) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != rootID {
		t := r.tree(cancel, h.NodeId)
		if t == nil {
			return stale
		}
		return t.Lookup(cancel, h, name, out)
	}
	t := r.named(cancel, name)
	if t == nil {
		return fuse.ENOENT // not cached: names come with snapshots
	}
	t.fillEntry(t.tree.Root, out)
	out.SetEntryTimeout(rootEntryTimeout)
	return fuse.OK
}

func (r *layerRaw) Forget(nodeID, nlookup uint64) {}

func (r *layerRaw) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId == rootID {
		r.l.mu.RLock()
		n := len(r.l.names)
		r.l.mu.RUnlock()
		out.Ino = rootID
		out.Mode = syscall.S_IFDIR | 0o755
		out.Nlink = uint32(2 + n)
		out.Size = 4096
		out.Blksize = 4096
		out.SetTimeout(rootEntryTimeout)
		return fuse.OK
	}
	if t := r.tree(cancel, in.NodeId); t != nil {
		return t.GetAttr(cancel, in, out)
	}
	return stale
}

func (r *layerRaw) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId == rootID {
		return fuse.Status(syscall.EISDIR)
	}
	if t := r.tree(cancel, in.NodeId); t != nil {
		return t.Open(cancel, in, out)
	}
	return stale
}

func (r *layerRaw) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if in.NodeId == rootID {
		return nil, fuse.Status(syscall.EISDIR)
	}
	if t := r.tree(cancel, in.NodeId); t != nil {
		return t.Read(cancel, in, buf)
	}
	return nil, stale
}

func (r *layerRaw) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {}

func (r *layerRaw) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

func (r *layerRaw) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	if h.NodeId == rootID {
		return nil, fuse.EINVAL
	}
	if t := r.tree(cancel, h.NodeId); t != nil {
		return t.Readlink(cancel, h)
	}
	return nil, stale
}

func (r *layerRaw) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if h.NodeId == rootID {
		return 0, fuse.ENOATTR
	}
	if t := r.tree(cancel, h.NodeId); t != nil {
		return t.GetXAttr(cancel, h, attr, dest)
	}
	return 0, stale
}

func (r *layerRaw) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if h.NodeId == rootID {
		return 0, fuse.OK
	}
	if t := r.tree(cancel, h.NodeId); t != nil {
		return t.ListXAttr(cancel, h, dest)
	}
	return 0, stale
}

func (r *layerRaw) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId == rootID {
		out.Fh = rootID // listed afresh at every open: names come and go
		return fuse.OK
	}
	if t := r.tree(cancel, in.NodeId); t != nil {
		return t.OpenDir(cancel, in, out)
	}
	return stale
}

func (r *layerRaw) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(cancel, in, out, false)
}

func (r *layerRaw) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(cancel, in, out, true)
}

// readDir lists the root's names in order, the offset of each its place
// plus one; the names of other directories are their tree's.
func (r *layerRaw) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	if in.NodeId != rootID {
		t := r.tree(cancel, in.NodeId)
		switch {
		case t == nil:
			return stale
		case plus:
			return t.ReadDirPlus(cancel, in, out)
		}
		return t.ReadDir(cancel, in, out)
	}
	r.l.mu.RLock()
	names := make([]string, 0, len(r.l.names))
	for n := range r.l.names {
		names = append(names, n)
	}
	trees := make(map[string]*RawFS, len(names))
	for n, st := range r.l.names {
		trees[n] = r.l.slots[st.Slot()]
	}
	r.l.mu.RUnlock()
	slices.Sort(names)
	AddDirEntries(out, in.Offset, uint64(len(names)), plus, func(i uint64) fuse.DirEntry {
		return fuse.DirEntry{Name: names[i], Ino: trees[names[i]].base | rootID, Mode: syscall.S_IFDIR}
	}, func(i uint64, eo *fuse.EntryOut) {
		t := trees[names[i]]
		t.fillEntry(t.tree.Root, eo)
		eo.SetEntryTimeout(rootEntryTimeout)
	})
	return fuse.OK
}

func (r *layerRaw) ReleaseDir(in *fuse.ReleaseIn) {}

func (r *layerRaw) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return fuse.OK
}
