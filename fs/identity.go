package fs

// File handles of a mount: node ids and generations, and the LOOKUPs by node
// id that decode them. See "Identity across daemons" in doc.go.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"math/rand/v2"
	"path"
	"sync"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// idScheme names how a tree merged by [Merge] is numbered (finish:
// depth-first, in name order, from 1) and how the generation of its handles
// is derived. The generation already changes with any change of the numbers
// or the tree; this string changes with the derivation itself.
const idScheme = "ocifs node ids 1: depth-first name order; generation over the DiffIDs and the numbered tree\n"

// progressiveGen is set in the generation of a progressive load and clear
// in one derived from an image, so the two never meet. A generation has 32
// bits: the kernel keeps no more (i_generation), and a file handle carries
// no more. 0 is neither kind: ocifs gave every node generation 0 before it
// had stable ids, and such a handle names whatever the lookup order of its
// daemon put at that id.
const progressiveGen = 1 << 31

// nodeGen is the generation of every node (the root's aside, which the
// kernel fixes at 0) in the mounts of one Image.
type nodeGen struct {
	once sync.Once
	gen  uint32
}

// generation returns the generation of im's nodes. For a tree merged by
// [Merge] it is a digest of the image's DiffIDs and the numbered tree, so
// every daemon of the image gives it and a daemon of any other image (or
// of a tree numbered otherwise) almost surely does not. A progressive
// load numbers paths in the order they are first seen, not a function of
// the image: its generation is random, with progressiveGen set, and shared
// only by the mounts of this load, which share its numbers.
func (im *Image) generation() uint64 {
	im.gen.once.Do(func() {
		if im.prog != nil {
			im.gen.gen = progressiveGen | rand.Uint32()
			return
		}
		diffIDs := make([]string, len(im.layers))
		for i, l := range im.layers {
			diffIDs[i] = l.diffID.String()
		}
		im.gen.gen = treeGeneration(diffIDs, im.Tree())
	})
	return uint64(im.gen.gen)
}

// treeGeneration digests idScheme, the DiffIDs and t's shape: every
// directory's ID, and each of its children's name, type and ID.
func treeGeneration(diffIDs []string, t *Tree) uint32 {
	h := sha256.New()
	io.WriteString(h, idScheme)
	for _, d := range diffIDs {
		io.WriteString(h, d+"\n")
	}
	w := shapeWriter{h: h}
	w.dir(t.Root)
	w.flush()
	g := binary.BigEndian.Uint32(h.Sum(nil)) &^ progressiveGen
	if g == 0 {
		g = 1
	}
	return g
}

// shapeWriter feeds a tree's shape to a hash through a buffer: a 100,000-file
// tree is a few MB, written in a few milliseconds.
type shapeWriter struct {
	h   hash.Hash
	buf []byte
}

func (w *shapeWriter) dir(d *Node) {
	w.buf = binary.AppendUvarint(w.buf, d.ID)
	w.buf = binary.AppendUvarint(w.buf, uint64(len(d.Names())))
	for i, name := range d.Names() {
		c := d.dir.nodes[i]
		w.buf = binary.AppendUvarint(w.buf, uint64(len(name)))
		w.buf = append(w.buf, name...)
		w.buf = append(w.buf, byte(c.Type))
		w.buf = binary.AppendUvarint(w.buf, c.ID)
		if len(w.buf) >= 32<<10 {
			w.flush()
		}
	}
	for _, c := range d.dir.nodes {
		if c.IsDir() {
			w.dir(c)
		}
	}
}

func (w *shapeWriter) flush() {
	w.h.Write(w.buf)
	w.buf = w.buf[:0]
}

// nodeIndex finds a tree's nodes by ID. It is built on first use, 8 bytes a
// node: only a kernel decoding a handle of a node it holds no inode for
// needs it (with ExportHandles: NFS, open_by_handle_at of a handle from an
// earlier mount).
type nodeIndex struct {
	once  sync.Once
	nodes []*Node // nodes[id-1]
}

// byID returns the node numbered id, or nil.
func (t *Tree) byID(id uint64) *Node {
	t.byIDs.once.Do(func() {
		nodes := make([]*Node, t.Nodes)
		var visit func(n *Node)
		visit = func(n *Node) {
			if n.ID > uint64(len(nodes)) {
				nodes = append(nodes, make([]*Node, n.ID-uint64(len(nodes)))...)
			}
			nodes[n.ID-1] = n
			if n.dir != nil {
				for _, c := range n.dir.nodes {
					visit(c)
				}
			}
		}
		visit(t.Root)
		t.byIDs.nodes = nodes
	})
	if id == 0 || id > uint64(len(t.byIDs.nodes)) {
		return nil
	}
	return t.byIDs.nodes[id-1]
}

// parentOf returns the directory holding directory d, and d's name in it,
// in a tree numbered by finish; nil for the root or a node not in t. That
// numbering gives a directory's subdirectories increasing numbers in name
// order, each below everything it holds, so the subtree holding d is that
// of the last subdirectory numbered at most d.ID.
func (t *Tree) parentOf(d *Node) (*Node, string) {
	for p := t.Root; p != d; {
		var next *Node
		var name string
		for i, c := range p.dir.nodes {
			if !c.IsDir() {
				continue
			}
			if c.ID > d.ID {
				break
			}
			next, name = c, p.dir.names[i]
		}
		switch next {
		case nil:
			return nil, ""
		case d:
			return p, name
		}
		p = next
	}
	return nil, ""
}

var (
	_ fusefs.NodeLookupNoder    = (*inode)(nil)
	_ fusefs.NodeLookupParenter = (*inode)(nil)
)

// stableAttr is the identity of n's inode: its node id is n.ID (the mount
// sets ExternalNodeID), so a file handle, (node id, generation), names n
// in every mount that numbers the tree the same way and gives the same
// generation.
func (im *Image) stableAttr(n *Node) fusefs.StableAttr {
	return fusefs.StableAttr{Mode: typeBits(n.Type), Ino: n.ID, Gen: im.generation()}
}

// LookupNode answers the kernel's LOOKUP of "." in node id, which it sends
// (to the root, in go-fuse) to decode a file handle of a node it holds no
// inode for, when the mount has ExportHandles. An id the tree does not
// have is ESTALE; one it has, from a handle of another image, the kernel
// refuses itself when the generation differs.
func (in *inode) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	if in.view != nil {
		return nil, syscall.ESTALE // a mount of many trees decodes no handles
	}
	if id == fuse.FUSE_ROOT_ID {
		root := in.Root()
		root.Operations().(*inode).fill(&out.Attr)
		return root, 0
	}
	early := in.provisional()
	var n *Node
	var p string // kept only while the tree may change, as in Lookup
	if prog := in.im.prog; prog != nil {
		name, ok := prog.pathOf(id)
		if !ok {
			return nil, syscall.ESTALE
		}
		c, err := prog.lookup(ctx, name)
		switch {
		case errors.Is(err, errNoEntry) || errors.Is(err, errNotDir):
			return nil, syscall.ESTALE
		case err != nil:
			return nil, in.im.errno(ctx, in.node(), 0, err)
		case c.ID != id:
			return nil, syscall.ESTALE // the path now names another node
		}
		n = c
		if early {
			p = name
		}
	} else if n = in.im.Tree().byID(id); n == nil {
		return nil, syscall.ESTALE
	}
	child := &inode{im: in.im, n: n, path: p, early: early}
	child.fill(&out.Attr)
	if early {
		out.SetEntryTimeout(provisionalTimeout)
		out.SetAttrTimeout(provisionalTimeout)
	}
	return in.NewInode(ctx, child, in.im.stableAttr(n)), 0
}

// LookupParent answers the kernel's LOOKUP of ".." in a directory it
// reached by a file handle alone: to connect it to the tree, the kernel
// asks for its parent, then reads the parent for the directory's name. It
// asks only of directories.
func (in *inode) LookupParent(ctx context.Context, out *fuse.EntryOut) (*fusefs.Inode, string, syscall.Errno) {
	if in.view != nil {
		return nil, "", syscall.ESTALE
	}
	d := in.node()
	if !d.IsDir() {
		return nil, "", syscall.ESTALE
	}
	early := in.provisional()
	var parent *Node
	var p, name string
	if prog := in.im.prog; prog != nil {
		dp, ok := prog.pathOf(d.ID)
		if !ok || dp == "" {
			return nil, "", syscall.ESTALE
		}
		p, name = path.Dir(dp), path.Base(dp)
		if p == "." {
			p = ""
		}
		c, err := prog.lookup(ctx, p)
		switch {
		case errors.Is(err, errNoEntry) || errors.Is(err, errNotDir):
			return nil, "", syscall.ESTALE
		case err != nil:
			return nil, "", in.im.errno(ctx, d, 0, err)
		}
		parent = c
		if !early {
			p = ""
		}
	} else if parent, name = in.im.Tree().parentOf(d); parent == nil {
		return nil, "", syscall.ESTALE
	}
	if parent.ID == fuse.FUSE_ROOT_ID {
		root := in.Root()
		root.Operations().(*inode).fill(&out.Attr)
		return root, name, 0
	}
	pin := &inode{im: in.im, n: parent, path: p, early: early}
	pin.fill(&out.Attr)
	if early {
		out.SetEntryTimeout(provisionalTimeout)
		out.SetAttrTimeout(provisionalTimeout)
	}
	return in.NewInode(ctx, pin, in.im.stableAttr(parent)), name, 0
}
