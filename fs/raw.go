package fs

// The raw FUSE protocol for a mount that another daemon may take over: see
// "Serving a connection another daemon started" in doc.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/index"
)

// RawFS serves an image's merged tree as a [fuse.RawFileSystem] whose node
// ids and file handles are the tree's own numbers: it keeps no table of
// what the kernel was told, so it answers for nodes another daemon of the
// same image handed out, and a FORGET costs nothing. It is what a
// connection handed from one daemon to the next is served with
// ([github.com/ocifs/ocifs/fs/takeover]).
type RawFS struct {
	fuse.RawFileSystem // ENOSYS for everything a read-only tree does not do

	im      *Image
	tree    *Tree
	gen     uint64
	timeout time.Duration
	// view is set when the tree is a layer's view among others in one
	// connection (a [LayerFS] served raw): its node ids are view.base |
	// the tree's numbers, and every node, its root too, has view.gen.
	view *ServedTree
	base uint64
}

// ErrNotDerivable is returned by [Image.RawFS] for a progressive load: it
// numbers nodes in the order it first sees them, so a second daemon cannot
// derive the node ids the kernel holds.
var ErrNotDerivable = errors.New("a progressive load numbers nodes in the order it sees them, not as a function of the image, so another daemon cannot take its connection over; mount without --progressive")

// RawFS returns the raw file system of the loaded image. timeout is how
// long the kernel may cache entries and attributes (0: one hour).
func (im *Image) RawFS(timeout time.Duration) (*RawFS, error) {
	if im.prog != nil {
		return nil, ErrNotDerivable
	}
	t := im.Tree()
	if t == nil {
		return nil, errors.New("raw file system: image not loaded")
	}
	if t.Root.ID != fuse.FUSE_ROOT_ID {
		return nil, fmt.Errorf("raw file system: the tree's root is node %d, want %d", t.Root.ID, fuse.FUSE_ROOT_ID)
	}
	if timeout == 0 {
		timeout = time.Hour
	}
	return &RawFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), im: im, tree: t, gen: im.generation(), timeout: timeout}, nil
}

// Generation is the generation of the tree's nodes: equal in two daemons
// exactly when they number the same tree the same way.
func (r *RawFS) Generation() uint32 { return uint32(r.gen) }

func (r *RawFS) String() string { return "ocifs" }

// node returns the node numbered id, or nil for an id the tree does not
// have (a kernel that asks for one is talking to the wrong daemon).
func (r *RawFS) node(id uint64) *Node {
	if r.view != nil {
		if id&^slotMask != r.base {
			return nil
		}
		id &= slotMask
	}
	if id == fuse.FUSE_ROOT_ID {
		return r.tree.Root
	}
	return r.tree.byID(id)
}

// slotMask keeps the node's own number of a node id of a mount of many
// trees (layerfs.go).
const slotMask = 1<<32 - 1

// rawView is the raw file system of the served tree st, for a connection
// of many trees (LayerFS.Raw).
func rawView(st *ServedTree, timeout time.Duration) *RawFS {
	return &RawFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), im: st.im, tree: st.tree, gen: st.gen, timeout: timeout, view: st, base: st.base}
}

// refused returns why n must not be served, or nil.
func (r *RawFS) refused(n *Node) error {
	if r.view != nil {
		return r.im.refusedView(n, r.view.layer)
	}
	return r.im.refusedNode(n)
}

// refusedList returns why directory n's names must not be listed, or nil.
func (r *RawFS) refusedList(n *Node) error {
	if r.view != nil {
		return r.im.refusedView(n, r.view.layer)
	}
	return r.im.refusedList(n)
}

// data is the node a read of n reads through: n, or for a sparse file of
// a layer's view, the merged tree's (Image.viewNode).
func (r *RawFS) data(n *Node) (*Node, error) {
	if r.view == nil {
		return n, nil
	}
	return r.im.viewNode(n)
}

// requestCtx is the context of one request: done when the kernel
// interrupts it.
type requestCtx struct {
	context.Context
	cancel <-chan struct{}
}

func (c requestCtx) Done() <-chan struct{} { return c.cancel }

func (c requestCtx) Err() error {
	select {
	case <-c.cancel:
		return context.Canceled
	default:
		return nil
	}
}

func newRequestCtx(cancel <-chan struct{}) context.Context {
	//nolint:staticcheck // the root of a request's context: the kernel's interrupt is its cancel
	return requestCtx{Context: context.Background(), cancel: cancel}
}

// status maps an error met serving n to a status, logging as errno does.
func (r *RawFS) status(cancel <-chan struct{}, n *Node, off int64, err error) fuse.Status {
	return fuse.Status(r.im.errno(newRequestCtx(cancel), n, off, err))
}

// lookupNode checks that n may be served and fills out for it.
func (r *RawFS) fillEntry(n *Node, out *fuse.EntryOut) {
	out.NodeId = r.base | n.ID
	out.Generation = r.gen
	if n.ID == fuse.FUSE_ROOT_ID && r.view == nil {
		out.Generation = 0
	}
	r.fillAttr(n, &out.Attr)
	out.SetEntryTimeout(r.timeout)
	out.SetAttrTimeout(r.timeout)
}

// fillAttr is fillAttr with the node's id in the connection.
func (r *RawFS) fillAttr(n *Node, a *fuse.Attr) {
	fillAttr(n, a)
	a.Ino = r.base | n.ID
}

// fillAttr is inode.fill for a node of the merged tree.
func fillAttr(n *Node, a *fuse.Attr) {
	a.Ino = n.ID
	a.Mode = typeBits(n.Type) | n.Mode
	a.Nlink = n.Nlink
	a.Uid, a.Gid = uint32(n.UID), uint32(n.GID)
	a.Size = uint64(n.Size)
	if n.IsDir() {
		a.Size = 4096
	}
	a.Blksize = 4096
	a.Blocks = (uint64(n.Size) + 511) / 512
	sec, nsec := uint64(n.ModTime.Unix()), uint32(n.ModTime.Nanosecond())
	a.Mtime, a.Mtimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
	if n.Type == index.TypeChar || n.Type == index.TypeBlock {
		a.Rdev = uint32(unix.Mkdev(uint32(n.Devmajor), uint32(n.Devminor)))
	}
}

func (r *RawFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	d := r.node(h.NodeId)
	if d == nil {
		return fuse.Status(syscall.ESTALE)
	}
	if !d.IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	c := d.Child(name)
	if c == nil {
		if err := r.refusedList(d); err != nil {
			return r.status(cancel, d, 0, err)
		}
		// A negative entry, cached as long as a positive one: the image
		// never changes.
		out.NodeId = 0
		out.SetEntryTimeout(r.timeout)
		return fuse.OK
	}
	if err := r.refused(c); err != nil {
		return r.status(cancel, c, 0, err)
	}
	r.fillEntry(c, out)
	return fuse.OK
}

// Forget does nothing: node ids are the tree's numbers, not entries of a
// table that must be kept in step with the kernel's.
func (r *RawFS) Forget(nodeID, nlookup uint64) {}

func (r *RawFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n := r.node(in.NodeId)
	if n == nil {
		return fuse.Status(syscall.ESTALE)
	}
	if err := r.refused(n); err != nil {
		return r.status(cancel, n, 0, err)
	}
	r.fillAttr(n, &out.Attr)
	out.SetTimeout(r.timeout)
	return fuse.OK
}

// Open refuses writes. The file handle is the node id, so a file opened
// under one daemon reads on under the next. The image is immutable: the
// kernel keeps the page cache across opens, and sends no FLUSH at close.
func (r *RawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := r.node(in.NodeId)
	if n == nil {
		return fuse.Status(syscall.ESTALE)
	}
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	if n.Type != index.TypeReg {
		return fuse.EINVAL
	}
	if err := r.refused(n); err != nil {
		return r.status(cancel, n, 0, err)
	}
	out.Fh = r.base | n.ID
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH
	return fuse.OK
}

// Read reads through the image's verified read path, by node id (the file
// handle names the same node).
func (r *RawFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	n := r.node(in.NodeId)
	if n == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if int(in.Size) < len(buf) {
		buf = buf[:in.Size]
	}
	if err := r.refused(n); err != nil {
		return nil, r.status(cancel, n, int64(in.Offset), err)
	}
	dn, err := r.data(n)
	if err != nil {
		return nil, r.status(cancel, n, int64(in.Offset), err)
	}
	got, err := r.im.ReadAt(newRequestCtx(cancel), dn, buf, int64(in.Offset))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, r.status(cancel, n, int64(in.Offset), err)
	}
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

func (r *RawFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {}

// Flush answers ENOSYS, as the bridge's mount does: nothing is written.
func (r *RawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

func (r *RawFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n := r.node(h.NodeId)
	if n == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if err := r.refused(n); err != nil {
		return nil, r.status(cancel, n, 0, err)
	}
	if n.Type != index.TypeSymlink {
		return nil, fuse.EINVAL
	}
	return []byte(n.Linkname), fuse.OK
}

func (r *RawFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n := r.node(h.NodeId)
	if n == nil {
		return 0, fuse.Status(syscall.ESTALE)
	}
	if err := r.refused(n); err != nil {
		return 0, r.status(cancel, n, 0, err)
	}
	v, ok := n.Xattrs[attr]
	if !ok {
		return 0, fuse.ENOATTR
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

func (r *RawFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n := r.node(h.NodeId)
	if n == nil {
		return 0, fuse.Status(syscall.ESTALE)
	}
	if err := r.refused(n); err != nil {
		return 0, r.status(cancel, n, 0, err)
	}
	size, ok := listXattrs(n.Xattrs, dest)
	if !ok {
		return size, fuse.ERANGE
	}
	return size, fuse.OK
}

// OpenDir gives the node id as the handle, as Open does.
func (r *RawFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := r.node(in.NodeId)
	if n == nil {
		return fuse.Status(syscall.ESTALE)
	}
	if !n.IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	if err := r.refusedList(n); err != nil {
		return r.status(cancel, n, 0, err)
	}
	out.Fh = r.base | n.ID
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_CACHE_DIR
	return fuse.OK
}

// ReadDir lists a directory in name order; the offset of an entry is its
// place in that order plus one, so a listing begun under one daemon goes
// on under the next.
func (r *RawFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(cancel, in, out, false)
}

func (r *RawFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(cancel, in, out, true)
}

func (r *RawFS) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	d := r.node(in.NodeId)
	if d == nil {
		return fuse.Status(syscall.ESTALE)
	}
	if !d.IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	if err := r.refusedList(d); err != nil {
		return r.status(cancel, d, 0, err)
	}
	names := d.Names()
	AddDirEntries(out, in.Offset, uint64(len(names)), plus, func(i uint64) fuse.DirEntry {
		c := d.dir.nodes[i]
		return fuse.DirEntry{Name: names[i], Ino: r.base | c.ID, Mode: typeBits(c.Type)}
	}, func(i uint64, eo *fuse.EntryOut) {
		if c := d.dir.nodes[i]; r.refused(c) == nil {
			r.fillEntry(c, eo)
		} // else: no entry; a LOOKUP of the name gets the refusal
	})
	return fuse.OK
}

func (r *RawFS) ReleaseDir(in *fuse.ReleaseIn) {}

func (r *RawFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	out.Files = uint64(r.tree.Nodes)
	out.Blocks = uint64(r.im.Stats().ImageSize+4095) / 4096
	return fuse.OK
}

// Raw returns the raw file system of the served tree, for a connection of
// many trees that its caller dispatches by slot (node id >> 32): its node
// ids and handles are slot<<32 | the tree's numbers, every node has the
// tree's generation. timeout is as [Image.RawFS]'s.
func (s *ServedTree) Raw(timeout time.Duration) *RawFS {
	if timeout == 0 {
		timeout = time.Hour
	}
	return rawView(s, timeout)
}

// RootEntry fills out with the entry of the tree's root, for the lookup
// of the directory it is served as.
func (r *RawFS) RootEntry(out *fuse.EntryOut) { r.fillEntry(r.tree.Root, out) }

// AddDirEntries answers a READDIR (plus false) or READDIRPLUS of a
// directory of n entries from offset off, whose offsets are their places
// plus one: entry(i) gives entry i (AddDirEntries sets its Off) and, for
// READDIRPLUS, fill, if not nil, fills its lookup answer (left empty, the
// kernel makes no entry for it). It stops when out is full. The raw file
// systems of a tree, of a layer mount's root and of the layer store share
// it.
func AddDirEntries(out *fuse.DirEntryList, off, n uint64, plus bool, entry func(i uint64) fuse.DirEntry, fill func(i uint64, eo *fuse.EntryOut)) {
	for i := off; i < n; i++ {
		e := entry(i)
		e.Off = i + 1
		if !plus {
			if !out.AddDirEntry(e) {
				return
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			return
		}
		if fill != nil {
			fill(i, eo)
		}
	}
}
