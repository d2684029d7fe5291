package fs

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/ocifs/ocifs/index"
)

// maxSymlinkHops bounds how many symlinks one parent path may pass through,
// as the kernel's MAXSYMLINKS does, so a loop in an image ends with an error.
const maxSymlinkHops = 40

// Node is one inode of the merged tree. Hardlinked names share one Node, so
// the tree is a DAG at its leaves; directories appear once. A Node is
// immutable once [Merge] returns.
//
// A mount keeps one Node per inode of the image for as long as it lives, so
// the fields are ordered to pack into 128 bytes (a malloc size class) and a
// directory's children live behind one pointer that files leave nil.
type Node struct {
	ID       uint64 // inode number and FUSE node id (see "Identity across daemons" in doc.go)
	Size     int64  // file content size; for a symlink the target's length
	Offset   int64  // with Layer, where a regular file's bytes are: the offset in that layer's uncompressed tar
	ModTime  time.Time
	Linkname string // symlink target
	Xattrs   map[string]string
	UID      int64
	GID      int64
	Devmajor int64
	Devminor int64
	Mode     uint32 // permission bits plus setuid, setgid and sticky
	Nlink    uint32 // names for a file; 2 + subdirectories for a directory
	Layer    int32  // the index of the layer whose uncompressed tar holds a regular file's bytes
	Type     index.Type
	Implied  bool // a directory no tar entry described: created for its children

	dir *dirEntries // a directory's children; nil for every other type
}

// dirEntries are the children of a directory. While the merge runs they are
// found by name in byName; once it ends they are the sorted names and the
// nodes in the same order (three words per child instead of a map's slot,
// control byte and spare capacity), and byName is dropped.
type dirEntries struct {
	names []string // sorted, filled when the merge ends
	nodes []*Node  // nodes[i] is called names[i]

	byName map[string]*Node // during the merge only
	// wrote holds the last layer that wrote each child name, for a
	// progressive load's lookups (Node.writer); nil in other trees.
	wrote map[string]int
}

// IsDir reports whether n is a directory.
func (n *Node) IsDir() bool { return n.Type == index.TypeDir }

// Names returns the sorted names of a directory's children. The slice is
// shared: callers must not change it.
func (n *Node) Names() []string {
	if n.dir == nil {
		return nil
	}
	return n.dir.names
}

// Child returns the child called name, or nil.
func (n *Node) Child(name string) *Node {
	d := n.dir
	switch {
	case d == nil:
		return nil
	case d.byName != nil:
		return d.byName[name]
	}
	if i, ok := slices.BinarySearch(d.names, name); ok {
		return d.nodes[i]
	}
	return nil
}

// Tree is the merged view of an image's layers: what a full unpack of the
// layers in order would leave on disk.
type Tree struct {
	Root  *Node
	Nodes int // distinct inodes, the root included

	byIDs nodeIndex // nodes by ID, for file handles (identity.go)

	// sparse holds the maps of the tree's sparse files (index.SparseMap).
	// They are rare, and a Node stays at 128 bytes without a field for
	// them, so they live here, by node.
	sparse map[*Node]*index.SparseMap
}

// Lookup returns the node at p, a slash-separated path relative to the root
// ("" or "/" is the root). Symlinks are not followed.
func (t *Tree) Lookup(p string) (*Node, error) {
	n := t.Root
	names := cleanPath(p)
	for i := 0; i < len(names); {
		name, next := nextName(names, i)
		if !n.IsDir() {
			return nil, fmt.Errorf("%s: %w", p, errNotDir)
		}
		c := n.Child(name)
		if c == nil {
			return nil, fmt.Errorf("%s: %w", p, errNoEntry)
		}
		n, i = c, next
	}
	return n, nil
}

// Resolve returns the node at p, following symlinks inside the image as the
// kernel would inside a chroot: an absolute target starts at the root and
// ".." stops there. The last element is followed only if followLast (stat
// against lstat). Unlike [Tree.Lookup], ".." is applied where it stands,
// after the symlinks before it. A loop ends after the kernel's MAXSYMLINKS
// hops.
func (t *Tree) Resolve(p string, followLast bool) (*Node, error) {
	stack := []*Node{t.Root}
	todo := pathElems(p)
	hops := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		cur := stack[len(stack)-1]
		if name == ".." {
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		if !cur.IsDir() {
			return nil, fmt.Errorf("%s: %w", p, errNotDir)
		}
		c := cur.Child(name)
		if c == nil {
			return nil, fmt.Errorf("%s: %w", p, errNoEntry)
		}
		if c.Type != index.TypeSymlink || (len(todo) == 0 && !followLast) {
			stack = append(stack, c)
			continue
		}
		if hops++; hops > maxSymlinkHops {
			return nil, fmt.Errorf("%s: %w", p, errSymlinks)
		}
		if strings.HasPrefix(c.Linkname, "/") {
			stack = stack[:1]
		}
		todo = append(pathElems(c.Linkname), todo...)
	}
	return stack[len(stack)-1], nil
}

// pathElems splits a slash-separated path into its elements, keeping ".."
// for Resolve to apply (splitPath and path.Clean fold "a/.." before the
// symlinks on the way are followed).
func pathElems(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" && s != "." {
			out = append(out, s)
		}
	}
	return out
}

var (
	errNoEntry  = errors.New("no such file or directory")
	errNotDir   = errors.New("not a directory")
	errSymlinks = errors.New("too many levels of symbolic links")
)

// Walk calls fn for every path of the tree in depth-first, name order, the
// root ("") first. Hardlinked nodes are visited once per name.
func (t *Tree) Walk(fn func(p string, n *Node) error) error {
	return walk("", t.Root, fn)
}

func walk(p string, n *Node, fn func(string, *Node) error) error {
	if err := fn(p, n); err != nil {
		return err
	}
	for i, name := range n.Names() {
		if err := walk(path.Join(p, name), n.dir.nodes[i], fn); err != nil {
			return err
		}
	}
	return nil
}

// Merge applies the layers' entry tables bottom-up, the way an unpacker
// applies layers to a directory, and returns the resulting tree:
//
//   - an entry replaces whatever was at its path, except that a directory
//     entry over a directory only replaces the directory's own metadata;
//   - ".wh.NAME" (TypeWhiteout) removes NAME and everything under it from
//     the lower layers;
//   - ".wh..wh..opq" (TypeOpaque) removes the lower layers' contents of its
//     directory;
//   - whiteouts and opaque markers apply to lower layers only: what the same
//     layer wrote, wherever the marker stands in its tar, stays (the image
//     spec: "files that are present in the same layer as a whiteout file can
//     only be hidden by whiteout files in subsequent layers"), as umoci
//     unpacks it: a path the layer wrote, and every directory on the way to
//     it, survives; only the rest under the marked path goes;
//   - missing parents are created as implied directories (0755, root);
//   - a symlink met in a parent path is followed inside the tree, as
//     unpackers do (securejoin rules: absolute targets start at the root, ".."
//     stops at the root);
//   - a hardlink names the node found at its target when it is applied, so it
//     keeps that content even if the target path is replaced later.
func Merge(tables []*index.Table) (*Tree, error) {
	return merge(tables, false)
}

// merge is Merge; with keepWrote, every directory keeps, for each child
// name, the last layer that wrote it (see [Node.writer]), and a nil table
// counts as an empty layer: a progressive load merges partial tables.
func merge(tables []*index.Table, keepWrote bool) (*Tree, error) {
	m := &merger{keepWrote: keepWrote}
	m.root = m.newDir(true)
	for li, t := range tables {
		if t == nil {
			continue
		}
		m.startLayer(t.Entries)
		for i := range t.Entries {
			if err := m.apply(li, &t.Entries[i]); err != nil {
				return nil, fmt.Errorf("layer %d (%s): %w", li, t.Digest, err)
			}
		}
	}
	return m.finish(), nil
}

type merger struct {
	root      *Node
	keepWrote bool
	sparse    map[*Node]*index.SparseMap // every sparse file made, kept or not

	// upper holds the names the layer being applied has written, and every
	// directory on the way to them, as (directory, name): what its own
	// whiteouts and opaque markers must leave alone. Nil for a layer whose
	// markers all come before its other entries (the order the image spec
	// asks writers for), where nothing can have been written yet.
	upper map[upperName]struct{}

	// parentPath and parent cache the last parent path that resolveDir
	// resolved with create in the layer being applied, and the directory
	// it named: a tar lists a directory's entries together. Adding a name
	// changes no path that resolved (every name on it was there, and link
	// never replaces one), so only a removal from the tree, or a new
	// layer (whose upper must learn the path), forgets it.
	parentPath string
	parent     *Node
}

// upperName is a child name in a directory of the tree being merged.
type upperName struct {
	dir  *Node
	name string
}

// startLayer prepares upper for a layer with entries ents.
func (m *merger) startLayer(ents []index.Entry) {
	m.upper, m.parent = nil, nil
	written := false
	for i := range ents {
		switch ents[i].Type {
		case index.TypeWhiteout, index.TypeOpaque:
			if written {
				m.upper = map[upperName]struct{}{}
				return
			}
		default:
			written = true
		}
	}
}

// wrote records that the layer being applied wrote name in d.
func (m *merger) wrote(d *Node, name string) {
	if m.upper != nil {
		m.upper[upperName{d, name}] = struct{}{}
	}
}

// written reports whether the layer being applied wrote name in d, or
// something below it.
func (m *merger) written(d *Node, name string) bool {
	_, ok := m.upper[upperName{d, name}]
	return ok
}

// writer returns the last layer that wrote the child called name, or -1:
// known only in a tree merged with keepWrote.
func (n *Node) writer(name string) int {
	if n.dir == nil {
		return -1
	}
	if li, ok := n.dir.wrote[name]; ok {
		return li
	}
	return -1
}

// newDir returns an empty directory. Until an entry describes it, it has the
// attributes unpackers give a directory they create: 0755, root, and (ours,
// for stable attributes) the Unix epoch as mtime.
func newDir(implied bool) *Node {
	return &Node{Type: index.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0).UTC(), Implied: implied,
		dir: &dirEntries{byName: map[string]*Node{}}}
}

// newDir returns an empty directory of the tree being merged, which
// records its children's writers if the merge keeps them.
func (m *merger) newDir(implied bool) *Node {
	d := newDir(implied)
	if m.keepWrote {
		d.dir.wrote = map[string]int{}
	}
	return d
}

// link puts c in d under name, recording that layer li wrote that name.
func link(d *Node, name string, c *Node, li int) {
	d.dir.byName[name] = c
	d.dir.setWriter(name, li)
}

// setWriter records that layer li wrote the child called name, in a tree
// that keeps writers.
func (d *dirEntries) setWriter(name string, li int) {
	if d.wrote != nil {
		d.wrote[name] = li
	}
}

func (m *merger) apply(li int, e *index.Entry) error {
	if e.Name == "" {
		switch e.Type {
		case index.TypeDir:
			setAttrs(m.root, e)
			m.root.Implied = false
			return nil
		case index.TypeOpaque:
			m.prune(m.root)
			return nil
		}
		return fmt.Errorf("%w: %s entry for the root directory", ErrFormat, e.Type)
	}
	dirPath, base := path.Split(e.Name)
	switch e.Type {
	case index.TypeWhiteout:
		parent, err := m.resolveDir(dirPath, li, false)
		if err != nil || parent == nil {
			return err // nothing to delete under a path that does not exist
		}
		if !m.written(parent, base) {
			m.remove(parent, base)
		} else if c := parent.dir.byName[base]; c != nil && c.IsDir() {
			m.prune(c) // the layer wrote inside it: only the lower contents go
		}
		return nil
	case index.TypeOpaque:
		d, err := m.resolveDir(e.Name, li, false)
		if err != nil || d == nil {
			return err // a marker in a directory that does not exist is a no-op
		}
		m.prune(d)
		return nil
	}
	parent, err := m.resolveDir(dirPath, li, true)
	if err != nil {
		return err
	}
	m.wrote(parent, base)
	old := parent.dir.byName[base]
	switch e.Type {
	case index.TypeDir:
		if old != nil && old.IsDir() {
			setAttrs(old, e)
			old.Implied = false
			parent.dir.setWriter(base, li)
			return nil
		}
		d := m.newDir(false)
		setAttrs(d, e)
		m.remove(parent, base)
		link(parent, base, d, li)
		return nil
	case index.TypeHardlink:
		target, err := m.resolve(e.Linkname, li)
		if err != nil {
			return fmt.Errorf("%w: hardlink %q to %q: %v", ErrFormat, e.Name, e.Linkname, err)
		}
		if target.IsDir() {
			return fmt.Errorf("%w: hardlink %q to directory %q", ErrFormat, e.Name, e.Linkname)
		}
		if old == target {
			return nil
		}
		m.remove(parent, base)
		target.Nlink++
		link(parent, base, target, li)
		return nil
	case index.TypeReg, index.TypeSymlink, index.TypeChar, index.TypeBlock, index.TypeFifo:
		n := &Node{Type: e.Type, Nlink: 1, Layer: int32(li), Offset: e.Offset}
		setAttrs(n, e)
		n.Size = e.Size
		if e.Linkname != "" {
			// Not an empty string sliced from a table's names, which
			// would keep them all alive (see finish).
			n.Linkname = e.Linkname
		}
		if e.Type == index.TypeSymlink {
			n.Size = int64(len(e.Linkname))
		}
		n.Devmajor, n.Devminor = e.Devmajor, e.Devminor
		if e.Sparse != nil {
			if m.sparse == nil {
				m.sparse = map[*Node]*index.SparseMap{}
			}
			m.sparse[n] = e.Sparse
		}
		m.remove(parent, base)
		link(parent, base, n, li)
		return nil
	}
	return fmt.Errorf("%w: entry %q has unknown type %d", ErrFormat, e.Name, e.Type)
}

func setAttrs(n *Node, e *index.Entry) {
	n.Mode = e.Mode & 0o7777
	n.UID, n.GID = e.UID, e.GID
	n.ModTime = e.ModTime
	n.Xattrs = e.Xattrs
}

// resolveDir walks p from the root, following symlinks in every component,
// and returns the directory it names. With create, missing components become
// implied directories and a non-directory in the way is replaced, as an
// unpacker's MkdirAll over a removed path would; without it, a missing
// component gives nil and no error.
func (m *merger) resolveDir(p string, li int, create bool) (*Node, error) {
	if create && m.parent != nil && p == m.parentPath {
		return m.parent, nil
	}
	// The names left to walk are todo[i:]; todo[:i] are the real
	// directories walked so far, from the root. An entry's path is
	// clean: it is walked in place, and only a symlink on the way
	// builds a new string.
	todo := cleanPath(p)
	d := m.root
	hops := 0
	for i := 0; i < len(todo); {
		name, next := nextName(todo, i)
		c := d.dir.byName[name]
		if c != nil && c.Type == index.TypeSymlink {
			if hops++; hops > maxSymlinkHops {
				return nil, fmt.Errorf("%w: too many levels of symbolic links at %q", ErrFormat, todo[:next-1])
			}
			target := c.Linkname
			if !strings.HasPrefix(target, "/") {
				target = path.Join(todo[:i], target)
			}
			todo = joinNames(cleanPath(target), restNames(todo, next))
			i, d = 0, m.root
			continue
		}
		if c == nil || !c.IsDir() {
			if !create {
				return nil, nil
			}
			m.remove(d, name)
			c = m.newDir(true)
			link(d, name, c, li)
		}
		if create {
			m.wrote(d, name) // a directory on the way to what the layer writes
		}
		i, d = next, c
	}
	if create {
		m.parentPath, m.parent = p, d
	}
	return d, nil
}

// resolve returns the node at p, following symlinks in the parent path but
// not in the last component.
func (m *merger) resolve(p string, li int) (*Node, error) {
	dirPath, base := path.Split(p)
	d, err := m.resolveDir(dirPath, li, false)
	if err != nil {
		return nil, err
	}
	if d == nil || d.dir.byName[base] == nil {
		return nil, errNoEntry
	}
	return d.dir.byName[base], nil
}

// prune removes from d everything that the layer being applied did not
// write, keeping the directories it wrote in (or on the way to what it
// wrote) but pruning their contents the same way.
func (m *merger) prune(d *Node) {
	for name, c := range d.dir.byName {
		switch {
		case !m.written(d, name):
			m.remove(d, name)
		case c.IsDir():
			m.prune(c)
		}
	}
}

// remove is removeChild for the tree being merged, where a path may
// resolve otherwise once a name is gone.
func (m *merger) remove(d *Node, name string) {
	if removeChild(d, name) {
		m.parent = nil
	}
}

// removeChild unlinks name from d, dropping the link counts of every file
// under it, and reports whether there was such a child.
func removeChild(d *Node, name string) bool {
	c := d.dir.byName[name]
	if c == nil {
		return false
	}
	delete(d.dir.byName, name)
	delete(d.dir.wrote, name)
	unlink(c)
	return true
}

func unlink(n *Node) {
	if !n.IsDir() {
		n.Nlink--
		return
	}
	for _, c := range n.dir.byName {
		unlink(c)
	}
}

// finish sorts every directory, counts directory links and numbers the
// inodes from 1 in depth-first name order, each directory before what it
// holds, so the numbers are a function of the layers. They are the FUSE
// node ids of a mount, and so part of its file handles, which name the same
// files in every daemon of the image; the handles' generation is a digest
// of the numbered tree (identity.go), so a handle numbered otherwise (by
// another ocifs, another merge) does not decode.
// It also copies every name and link target into one string, which the tree
// keeps instead of the entry tables' strings: those hold whole paths (a base
// name is a slice of its entry's path) and go once the tables are released.
func (m *merger) finish() *Tree {
	t := &Tree{Root: m.root}
	var next uint64 = 1
	var strs []*string // every child name and link target, to copy
	size := 0
	keep := func(s *string) {
		strs = append(strs, s)
		size += len(*s)
	}
	var visit func(n *Node)
	visit = func(n *Node) {
		if n.ID != 0 {
			return // another name of a hardlinked file
		}
		n.ID = next
		next++
		if n.Linkname != "" {
			keep(&n.Linkname)
		}
		if !n.IsDir() {
			return
		}
		d := n.dir
		d.names = make([]string, 0, len(d.byName))
		for name := range d.byName {
			d.names = append(d.names, name)
		}
		slices.Sort(d.names)
		d.nodes = make([]*Node, len(d.names))
		n.Nlink = 2
		for i, name := range d.names {
			c := d.byName[name]
			d.nodes[i] = c
			if c.IsDir() {
				n.Nlink++
			}
		}
		d.byName = nil // Child searches the sorted names from now on
		for i, c := range d.nodes {
			keep(&d.names[i])
			visit(c)
		}
	}
	visit(m.root)
	t.Nodes = int(next - 1)
	for n, sp := range m.sparse {
		if n.ID != 0 { // still in the tree: finish numbered it
			if t.sparse == nil {
				t.sparse = map[*Node]*index.SparseMap{}
			}
			t.sparse[n] = sp
		}
	}
	var b strings.Builder
	b.Grow(size)
	for _, s := range strs {
		b.WriteString(*s)
	}
	all, off := b.String(), 0
	for _, s := range strs {
		n := len(*s)
		*s = all[off : off+n]
		off += n
	}
	return t
}

// splitPath splits a slash-separated path into its names, dropping empty and
// "." elements and resolving ".." without ever leaving the root.
func splitPath(p string) []string {
	var out []string
	for _, name := range strings.Split(p, "/") {
		switch name {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, name)
		}
	}
	return out
}

// cleanPath returns the names splitPath returns for p joined by slashes.
// It is p itself, less slashes at its ends, when p has no empty, "." or
// ".." names (as an entry's name never has), so that walking an entry's
// path with nextName allocates nothing.
func cleanPath(p string) string {
	p = strings.Trim(p, "/")
	for i := 0; i < len(p); {
		name, next := nextName(p, i)
		if name == "" || name == "." || name == ".." {
			return strings.Join(splitPath(p), "/")
		}
		i = next
	}
	return p
}

// nextName returns the name that starts at byte i of the clean path p
// (see cleanPath) and where the one after it starts: past len(p) after
// the last one, so that p[:next-1] is the path up to and with name.
func nextName(p string, i int) (name string, next int) {
	j := strings.IndexByte(p[i:], '/')
	if j < 0 {
		return p[i:], len(p) + 1
	}
	return p[i : i+j], i + j + 1
}

// restNames returns the names of the clean path p from byte next on, as
// nextName returned next.
func restNames(p string, next int) string {
	if next >= len(p) {
		return ""
	}
	return p[next:]
}

// joinNames joins two clean paths.
func joinNames(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "/" + b
}
