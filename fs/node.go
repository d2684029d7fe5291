package fs

import (
	"context"
	"errors"
	"io"
	"sort"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/index"
)

// inode is the FUSE face of one merged-tree Node. Children are made on
// Lookup, not up front, so a mount of a 100,000-file image costs memory only
// for what the kernel has asked about.
type inode struct {
	fusefs.Inode
	im *Image
	n  *Node

	// path is the node's path in the tree; early marks an inode made while
	// a progressive load was still streaming, whose n is from a snapshot:
	// node() looks it up again in the final tree once there is one.
	path  string
	early bool

	// view is set for an inode of a tree served among others under one
	// mount ([ServedTree]: a layer's view in a [LayerFS]); nil for the
	// merged tree of [Image.Mount].
	view *ServedTree

	// omu guards the io mode of the inode's open files (see fileHandle).
	omu   sync.Mutex
	opens int32
	pt    bool
}

// provisionalTimeout is how long the kernel may cache an entry or its
// attributes while a progressive load streams: a directory's link count and
// attributes may still change.
const provisionalTimeout = 200 * time.Millisecond

// node returns the node the inode stands for, from the final tree when
// there is one.
func (in *inode) node() *Node {
	if !in.early {
		return in.n
	}
	if t := in.im.Tree(); t != nil {
		if n, err := t.Lookup(in.path); err == nil {
			return n
		}
	}
	return in.n
}

// provisional reports whether answers about the tree may still change.
func (in *inode) provisional() bool {
	return in.im.prog != nil && in.im.Tree() == nil
}

var (
	_ fusefs.NodeLookuper    = (*inode)(nil)
	_ fusefs.NodeReaddirer   = (*inode)(nil)
	_ fusefs.NodeGetattrer   = (*inode)(nil)
	_ fusefs.NodeGetxattrer  = (*inode)(nil)
	_ fusefs.NodeListxattrer = (*inode)(nil)
	_ fusefs.NodeReadlinker  = (*inode)(nil)
	_ fusefs.NodeOpener      = (*inode)(nil)
	_ fusefs.NodeReader      = (*inode)(nil)
	_ fusefs.NodeStatfser    = (*inode)(nil)
	_ fusefs.NodeFlusher     = (*inode)(nil)
)

// typeBits maps a node type to the S_IF* bits of st_mode.
func typeBits(t index.Type) uint32 {
	switch t {
	case index.TypeDir:
		return syscall.S_IFDIR
	case index.TypeSymlink:
		return syscall.S_IFLNK
	case index.TypeChar:
		return syscall.S_IFCHR
	case index.TypeBlock:
		return syscall.S_IFBLK
	case index.TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

// stable is the identity of the inode of n, a node of in's tree.
func (in *inode) stable(n *Node) fusefs.StableAttr {
	if v := in.view; v != nil {
		return fusefs.StableAttr{Mode: typeBits(n.Type), Ino: v.base | n.ID, Gen: v.gen}
	}
	return in.im.stableAttr(n)
}

// ino is the inode number of n, a node of in's tree.
func (in *inode) ino(n *Node) uint64 {
	if in.view != nil {
		return in.view.base | n.ID
	}
	return n.ID
}

// refused returns why n, a node of in's tree, must not be served, or nil.
func (in *inode) refused(n *Node) error {
	if in.view != nil {
		return in.im.refusedView(n, in.view.layer)
	}
	return in.im.refusedNode(n)
}

// refusedList returns why directory n's names must not be listed, or nil.
func (in *inode) refusedList(n *Node) error {
	if in.view != nil {
		return in.im.refusedView(n, in.view.layer)
	}
	return in.im.refusedList(n)
}

// data returns the node a read of in's file reads through: in's own, or
// in a layer's view, for a sparse file, the merged tree's (see
// Image.viewNode).
func (in *inode) data() (*Node, error) {
	n := in.node()
	if in.view == nil {
		return n, nil
	}
	return in.im.viewNode(n)
}

func (in *inode) fill(a *fuse.Attr) {
	n := in.node()
	fillAttr(n, a)
	a.Ino = in.ino(n)
}

// Lookup finds a child in the merged tree; hardlinked names share one inode
// because the inode number is the Node's.
func (in *inode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	early := in.provisional()
	var p string // kept only while the tree may change: node() needs it then
	var c *Node
	if early {
		p = joinPath(in.path, name)
		var err error
		if c, err = in.im.prog.lookup(ctx, p); err != nil {
			if errors.Is(err, errNotDir) {
				return nil, syscall.ENOTDIR
			}
			return nil, in.im.errno(ctx, in.node(), 0, err)
		}
		out.SetEntryTimeout(provisionalTimeout)
		out.SetAttrTimeout(provisionalTimeout)
	} else if c = in.node().Child(name); c == nil {
		if err := in.refusedList(in.node()); err != nil {
			return nil, in.im.errno(ctx, in.node(), 0, err) // the name may be there in truth
		}
		return nil, syscall.ENOENT
	}
	if err := in.refused(c); err != nil {
		return nil, in.im.errno(ctx, c, 0, err)
	}
	child := &inode{im: in.im, n: c, path: p, early: early, view: in.view}
	child.fill(&out.Attr)
	return in.NewInode(ctx, child, in.stable(c)), 0
}

// Readdir lists a directory in name order, which is stable across calls.
// During a progressive load it waits until the tree is final.
func (in *inode) Readdir(ctx context.Context) (fusefs.DirStream, syscall.Errno) {
	if in.provisional() {
		if _, err := in.im.prog.wait(ctx); err != nil {
			return nil, in.im.errno(ctx, in.n, 0, err)
		}
	}
	n := in.node()
	if err := in.refusedList(n); err != nil {
		return nil, in.im.errno(ctx, n, 0, err)
	}
	names := n.Names()
	ents := make([]fuse.DirEntry, len(names))
	for i, name := range names {
		c := n.Child(name)
		ents[i] = fuse.DirEntry{Name: name, Ino: in.ino(c), Mode: typeBits(c.Type)}
	}
	return fusefs.NewListDirStream(ents), 0
}

func (in *inode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if err := in.refused(in.node()); err != nil {
		return in.im.errno(ctx, in.node(), 0, err)
	}
	in.fill(&out.Attr)
	if in.provisional() {
		out.SetTimeout(provisionalTimeout)
	}
	return 0
}

// Getxattr serves the xattrs the layer's tar recorded (PAX SCHILY.xattr.*).
func (in *inode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if err := in.refused(in.node()); err != nil {
		return 0, in.im.errno(ctx, in.node(), 0, err)
	}
	v, ok := in.node().Xattrs[attr]
	if !ok {
		return 0, unix.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (in *inode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if err := in.refused(in.node()); err != nil {
		return 0, in.im.errno(ctx, in.node(), 0, err)
	}
	n, ok := listXattrs(in.node().Xattrs, dest)
	if !ok {
		return n, syscall.ERANGE
	}
	return n, 0
}

func (in *inode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	n := in.node()
	if err := in.refused(n); err != nil {
		return nil, in.im.errno(ctx, n, 0, err)
	}
	if n.Type != index.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(n.Linkname), 0
}

// Open refuses writes; the image is immutable, so the kernel may keep the
// page cache across opens (go-fuse drops that flag for passthrough opens,
// whose pages are the tree file's).
func (in *inode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if in.node().Type != index.TypeReg {
		return nil, 0, syscall.EINVAL
	}
	if err := in.refused(in.node()); err != nil {
		return nil, 0, in.im.errno(ctx, in.node(), 0, err)
	}
	if _, err := in.data(); err != nil {
		return nil, 0, in.im.errno(ctx, in.node(), 0, err)
	}
	return in.open(), fuse.FOPEN_KEEP_CACHE, 0
}

func (in *inode) Read(ctx context.Context, f fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	node := in.node()
	if err := in.refused(node); err != nil {
		return nil, in.im.errno(ctx, node, off, err) // a file opened before the check found the lie
	}
	if h, ok := f.(*fileHandle); ok && h.f != nil {
		return h.read(node, dest, off)
	}
	node, err := in.data()
	if err != nil {
		return nil, in.im.errno(ctx, in.node(), off, err)
	}
	n, err := in.im.ReadAt(ctx, node, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, in.im.errno(ctx, node, off, err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Flush answers ENOSYS: nothing is ever written, and the kernel then stops
// sending a FLUSH on every close (one round trip per file opened).
func (in *inode) Flush(ctx context.Context, f fusefs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

// Statfs reports the image's size so df shows something meaningful.
func (in *inode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	if t := in.im.Tree(); t != nil {
		out.Files = uint64(t.Nodes)
	}
	out.Blocks = uint64(in.im.Stats().ImageSize+4095) / 4096
	return 0
}

// listXattrs writes the names of xattrs into dest, sorted, each ended by a
// NUL, as listxattr(2) wants them, and returns their length; ok is false,
// with the length needed, when dest is too small.
func listXattrs(xattrs map[string]string, dest []byte) (n uint32, ok bool) {
	names := make([]string, 0, len(xattrs))
	size := 0
	for k := range xattrs {
		names = append(names, k)
		size += len(k) + 1
	}
	if len(dest) < size {
		return uint32(size), false
	}
	sort.Strings(names)
	off := 0
	for _, k := range names {
		off += copy(dest[off:], k)
		dest[off] = 0
		off++
	}
	return uint32(off), true
}
