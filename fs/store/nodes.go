package store

import (
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
)

// refDir is the store's root (b64 "") or a directory of a reference's
// base64, which may be several path elements (a '/' of base64 is a path
// separator). Its children are the next element of a longer base64 and,
// when b64 decodes to a reference, that image's layers by digest: a
// digest has a ':', which base64 has not, so the two never meet.
type refDir struct {
	fusefs.Inode
	s   *Store
	b64 string
}

var (
	_ fusefs.NodeLookuper  = (*refDir)(nil)
	_ fusefs.NodeGetattrer = (*refDir)(nil)
	_ fusefs.NodeReaddirer = (*refDir)(nil)
	_ fusefs.NodeRmdirer   = (*refDir)(nil)
	_ fusefs.NodeStatfser  = (*refDir)(nil)
)

const b64Chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

func (d *refDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	if dg, err := digest.Parse(name); err == nil {
		return d.lookupLayer(ctx, dg, out)
	}
	if strings.Trim(name, b64Chars) != "" {
		return nil, syscall.ENOENT
	}
	b64 := name
	if d.b64 != "" {
		b64 = d.b64 + "/" + name
	}
	c := &refDir{s: d.s, b64: b64}
	id := d.s.id(b64)
	fillDir(&out.Attr, id)
	return d.NewInode(ctx, c, fusefs.StableAttr{Mode: syscall.S_IFDIR, Ino: id}), 0
}

// lookupLayer loads the image (once) and finds layer dg in it, by
// compressed digest or TOC digest. Anything it cannot serve is ENOENT,
// which podman takes as "pull this layer yourself".
func (d *refDir) lookupLayer(ctx context.Context, dg digest.Digest, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	ref := decodeRef(d.b64)
	if ref == "" {
		return nil, syscall.ENOENT
	}
	img, err := d.s.acquire(ctx, ref)
	if err != nil {
		return nil, syscall.ENOENT
	}
	i, ok := img.byDigest[dg]
	if !ok {
		d.s.log.Warn("layer not in the image: podman pulls it itself", "image", ref, "layer", dg)
		return nil, syscall.ENOENT
	}
	p := d.b64 + "/" + dg.String()
	id := d.s.id(p)
	fillDir(&out.Attr, id)
	l := &layerDir{s: d.s, img: img, i: i, key: layerKey(ref, dg), dg: dg}
	return d.NewInode(ctx, l, fusefs.StableAttr{Mode: syscall.S_IFDIR, Ino: id}), 0
}

// Rmdir of a layer's directory is podman's release of a use: counted,
// answered ENOENT (containers/storage then knows the store counts).
func (d *refDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	dg, err := digest.Parse(name)
	ref := decodeRef(d.b64)
	if err != nil || ref == "" {
		return syscall.ENOENT
	}
	d.s.use(layerKey(ref, dg), -1, ref, dg)
	return syscall.ENOENT
}

func (d *refDir) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillDir(&out.Attr, d.StableAttr().Ino)
	return 0
}

func (d *refDir) Readdir(ctx context.Context) (fusefs.DirStream, syscall.Errno) {
	return fusefs.NewListDirStream(nil), 0
}

func (d *refDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return 0
}

func fillDir(a *fuse.Attr, id uint64) {
	a.Ino = id
	a.Mode = syscall.S_IFDIR | 0o755
	a.Nlink = 2
	a.Size = 4096
	a.Blksize = 4096
}

// layerDir is <ref>/<digest>: diff/, info, blob; a create of use counts a
// use and is answered ENOENT.
type layerDir struct {
	fusefs.Inode
	s   *Store
	img *image
	i   int
	key string
	dg  digest.Digest
}

var (
	_ fusefs.NodeLookuper  = (*layerDir)(nil)
	_ fusefs.NodeGetattrer = (*layerDir)(nil)
	_ fusefs.NodeReaddirer = (*layerDir)(nil)
	_ fusefs.NodeCreater   = (*layerDir)(nil)
	_ fusefs.NodeMkdirer   = (*layerDir)(nil)
)

func (l *layerDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	base := l.key
	switch name {
	case "diff":
		st, err := l.s.servedTree(l.img, l.i)
		if err != nil {
			l.s.log.Warn("layer not served", "image", l.img.ref, "layer", l.dg, "err", err)
			return nil, syscall.EIO
		}
		node, attr := st.Root()
		st.FillEntry(out)
		out.Ino = attr.Ino
		return l.NewInode(ctx, node, attr), 0
	case "info":
		b, err := l.img.info(l.i)
		if err != nil {
			return nil, syscall.EIO
		}
		id := l.s.id(base + "\x00info")
		f := &memFile{data: b, id: id}
		f.fill(&out.Attr)
		return l.NewInode(ctx, f, fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: id}), 0
	case "blob":
		id := l.s.id(base + "\x00blob")
		b := l.blob()
		b.fill(&out.Attr, id)
		return l.NewInode(ctx, &blobNode{b: b, id: id}, fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: id}), 0
	}
	return nil, syscall.ENOENT
}

func (l *layerDir) blob() *blobFile {
	l.img.smu.Lock()
	defer l.img.smu.Unlock()
	b := l.img.blobs[l.i]
	if b == nil {
		b = &blobFile{s: l.s, img: l.img, i: l.i}
		l.img.blobs[l.i] = b
	}
	return b
}

func (l *layerDir) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	if name == "use" {
		l.s.use(l.key, 1, l.img.ref, l.dg)
	}
	return nil, nil, 0, syscall.ENOENT
}

// Mkdir is refused like every other write.
func (l *layerDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (l *layerDir) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillDir(&out.Attr, l.StableAttr().Ino)
	out.Nlink = 3
	return 0
}

func (l *layerDir) Readdir(ctx context.Context) (fusefs.DirStream, syscall.Errno) {
	return fusefs.NewListDirStream([]fuse.DirEntry{
		{Name: "blob", Mode: syscall.S_IFREG, Ino: l.s.id(l.key + "\x00blob")},
		{Name: "diff", Mode: syscall.S_IFDIR},
		{Name: "info", Mode: syscall.S_IFREG, Ino: l.s.id(l.key + "\x00info")},
	}), 0
}

// memFile is a read-only file of fixed bytes (info).
type memFile struct {
	fusefs.Inode
	data []byte
	id   uint64
}

var (
	_ fusefs.NodeOpener    = (*memFile)(nil)
	_ fusefs.NodeReader    = (*memFile)(nil)
	_ fusefs.NodeGetattrer = (*memFile)(nil)
)

func (f *memFile) fill(a *fuse.Attr) {
	a.Ino = f.id
	a.Mode = syscall.S_IFREG | 0o444
	a.Nlink = 1
	a.Size = uint64(len(f.data))
	a.Blksize = 4096
}

func (f *memFile) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fill(&out.Attr)
	return 0
}

func (f *memFile) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *memFile) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(f.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(f.data[off:min(int64(len(f.data)), off+int64(len(dest)))]), 0
}

// blobFile is a layer's compressed bytes: fetched whole and checked
// against the layer digest the first time anything reads them (podman
// only stats blob in a pull or a run; push and save read it), then
// served from an unlinked file.
type blobFile struct {
	s    *Store
	img  *image
	i    int
	once sync.Once
	f    *os.File
	err  error
}

func (b *blobFile) fill(a *fuse.Attr, id uint64) {
	a.Ino = id
	a.Mode = syscall.S_IFREG | 0o444
	a.Nlink = 1
	a.Size = uint64(b.img.im.Fetched().Layers()[b.i].Size)
	a.Blksize = 4096
	a.Mtime = uint64(time.Unix(0, 0).Unix())
}

// fetch gets the verified blob into an unlinked file, once.
func (b *blobFile) fetch(ctx context.Context) (*os.File, error) {
	b.once.Do(func() {
		desc := b.img.im.Fetched().Layers()[b.i]
		f, err := os.CreateTemp(b.s.blobDir, "ocifs-blob-*")
		if err != nil {
			b.err = err
			return
		}
		os.Remove(f.Name())
		rc, err := b.img.im.Fetched().OpenBlob(b.s.ctx, desc)
		if err == nil {
			_, err = io.Copy(f, rc) // io.EOF only when size and digest match
			rc.Close()
		}
		if err != nil {
			f.Close()
			b.err = err
			b.s.log.Error("layer blob failed its check or could not be fetched: reads of blob are EIO", "image", b.img.ref, "layer", desc.Digest, "err", err)
			return
		}
		b.f = f
	})
	return b.f, b.err
}

func (b *blobFile) close() {
	if b.f != nil {
		b.f.Close()
	}
}

type blobNode struct {
	fusefs.Inode
	b  *blobFile
	id uint64
}

var (
	_ fusefs.NodeOpener    = (*blobNode)(nil)
	_ fusefs.NodeReader    = (*blobNode)(nil)
	_ fusefs.NodeGetattrer = (*blobNode)(nil)
)

func (n *blobNode) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.b.fill(&out.Attr, n.id)
	return 0
}

func (n *blobNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *blobNode) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f, err := n.b.fetch(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	k, err := f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:k]), 0
}
