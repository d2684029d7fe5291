package fs

import (
	"context"
	"errors"
	"io"
	"sort"
	"syscall"

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

func (in *inode) fill(a *fuse.Attr) {
	n := in.n
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
	t := n.ModTime
	sec, nsec := uint64(t.Unix()), uint32(t.Nanosecond())
	a.Mtime, a.Mtimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
	if n.Type == index.TypeChar || n.Type == index.TypeBlock {
		a.Rdev = uint32(unix.Mkdev(uint32(n.Devmajor), uint32(n.Devminor)))
	}
}

// Lookup finds a child in the merged tree; hardlinked names share one inode
// because the inode number is the Node's.
func (in *inode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	c := in.n.Child(name)
	if c == nil {
		return nil, syscall.ENOENT
	}
	child := &inode{im: in.im, n: c}
	child.fill(&out.Attr)
	return in.NewInode(ctx, child, fusefs.StableAttr{Mode: typeBits(c.Type), Ino: c.ID}), 0
}

// Readdir lists a directory in name order, which is stable across calls.
func (in *inode) Readdir(ctx context.Context) (fusefs.DirStream, syscall.Errno) {
	names := in.n.Names()
	ents := make([]fuse.DirEntry, len(names))
	for i, name := range names {
		c := in.n.Child(name)
		ents[i] = fuse.DirEntry{Name: name, Ino: c.ID, Mode: typeBits(c.Type)}
	}
	return fusefs.NewListDirStream(ents), 0
}

func (in *inode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	in.fill(&out.Attr)
	return 0
}

// Getxattr serves the xattrs the layer's tar recorded (PAX SCHILY.xattr.*).
func (in *inode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := in.n.Xattrs[attr]
	if !ok {
		return 0, unix.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (in *inode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names := make([]string, 0, len(in.n.Xattrs))
	size := 0
	for k := range in.n.Xattrs {
		names = append(names, k)
		size += len(k) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	sort.Strings(names)
	off := 0
	for _, k := range names {
		off += copy(dest[off:], k)
		dest[off] = 0
		off++
	}
	return uint32(off), 0
}

func (in *inode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if in.n.Type != index.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(in.n.Linkname), 0
}

// Open refuses writes; the image is immutable, so the kernel may keep the
// page cache across opens.
func (in *inode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if in.n.Type != index.TypeReg {
		return nil, 0, syscall.EINVAL
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (in *inode) Read(ctx context.Context, f fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := in.im.ReadAt(ctx, in.n, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, in.im.errno(ctx, in.n, off, err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Statfs reports the image's size so df shows something meaningful.
func (in *inode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	out.Files = uint64(in.im.tree.Nodes)
	out.Blocks = uint64(in.im.Stats().ImageSize+4095) / 4096
	return 0
}
