package fs

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/index"
)

// FuzzLayerViews checks, for fuzzed layer tables, that every view is a
// consistent tree numbered 1..n and that overlayfs's lookup over the views,
// modelled in Go (overlayChild), shows what Merge's tree holds: the same
// names in every directory and, at every path, the same type, mode, owner,
// mtime, link target, device, content location (Layer, Offset, Size) and
// xattrs (overlayfs hides trusted.overlay.*), and hardlink groups that are
// Merge's (equal to them unless a layer links to a lower layer's file).
//
// agreeable first leaves out, or rewrites, the entries where the two
// legitimately differ (layerview.go says why):
//
//   - entries with a symlink in their parent path or their hardlink
//     target's (containerd writes at the literal path; Merge follows);
//   - whiteouts and opaque markers of the bottom layer (containerd deletes
//     what the layer wrote before them), markers whose directory does not
//     exist (containerd creates it, empty), and an opaque marker after a
//     marker of its layer in a directory below it (containerd made that
//     directory for the marker; the opaque one then shows it, empty);
//   - entries whose parents containerd would imply below an opaque
//     directory (it copies their attributes from the layers below it);
//   - a directory entry over a non-directory or whiteout of its own layer
//     (a plain directory: the lower contents show), and a non-directory
//     over a directory entry of its own layer or over a directory above one
//     (the entry's mtime, set last, lands on what is at its path then);
//   - a hardlink entry's own attributes (containerd applies them to the
//     inode; rewritten to the target's), symlink modes (0777 on disk) and
//     mtimes (rewritten into the range containerd keeps).
//
// Not compared: nlink of files (overlayfs reports the count of the layer's
// inode it shows, names whited out above included) and of directories.
func FuzzLayerViews(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 0, 0xff, 0, 0, 4, 0, 2})
	f.Add([]byte{1, 0, 0, 0, 3, 0, 0xff, 0, 5, 3, 0, 0, 0, 0xff, 0, 4, 0, 0})
	f.Add([]byte{2, 1, 0, 0, 5, 1, 7, 2, 3, 0, 8, 1})
	f.Add([]byte{1, 0, 0, 0, 3, 0, 0xff, 1, 0, 1, 0, 4, 0, 0xff, 0, 6, 0})
	f.Add([]byte{1, 0, 1, 0, 3, 2, 0xff, 0, 0, 2, 0, 4, 0, 0, 0, 1, 3, 1, 0, 0xff, 0, 0, 0, 0, 4, 0, 0})
	f.Add([]byte{1, 0, 5, 0, 3, 1, 0, 4, 2, 0xff, 0, 0, 0, 1, 4, 9, 4, 0, 0, 0, 6, 3})
	// a/b/c; then a whiteout of a/b/c (containerd makes a and a/b for
	// it), a/c, and an opaque marker on a, which shows a/b (empty) in
	// containerd's tree but not in Merge's: agreeable leaves it out.
	f.Add([]byte{0, 6, 0, 0xff, 0, 0, 4, 6, 0, 0, 4, 0, 5, 0, 0})
	// b/a; then a whiteout of b/a (containerd makes b for it) and one of
	// b, which finds that b (EEXIST): the view whites b out, as Merge.
	f.Add([]byte{0, 5, 0, 0xff, 0, 0, 4, 5, 0, 4, 1, 0})
	// a/b, then a hardlink a to a/b: containerd clears a first (ENOENT);
	// Merge, and the view, link what a/b was.
	f.Add([]byte{0, 3, 0, 3, 0, 3})
	// a/b; then an opaque marker on a (containerd makes a for it), a
	// directory entry a, and a whiteout of a, which finds a (EEXIST): the
	// layer wrote a, so the view keeps it (opaque), as Merge.
	f.Add([]byte{0, 3, 0, 0xff, 0, 0, 5, 0, 0, 1, 0, 0, 4, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 3*64 {
			data = data[:3*64] // 64 entries: agreeable merges once per entry
		}
		tables, crossLayer := agreeable(fuzzLayers(data))
		if tables == nil {
			return
		}
		merged, err := Merge(tables)
		if err != nil {
			return
		}
		views, err := LayerViews(tables)
		if err != nil {
			t.Fatalf("LayerViews fails where Merge does not: %v", err)
		}
		for i, v := range views {
			checkTree(t, fmt.Sprintf("view %d", i), v)
		}
		var roots []*Node
		for i := len(views) - 1; i >= 0; i-- {
			roots = append(roots, views[i].Root)
		}
		c := &overlayCompare{t: t, shown: map[*Node]string{}, mergedOf: map[*Node]*Node{}}
		c.dir("", overlayRoots(roots), merged.Root)
		if !crossLayer {
			// Every Merge node shown at two paths must be one view node.
			seen := map[*Node]*Node{}
			for n, p := range c.shown {
				m := c.mergedOf[n]
				if other, ok := seen[m]; ok && other != n {
					t.Errorf("%s: shown by two view nodes, one node in Merge's tree", p)
				}
				seen[m] = n
			}
		}
	})
}

// overlayCompare walks the overlay of the views and Merge's tree together.
type overlayCompare struct {
	t        *testing.T
	shown    map[*Node]string // a view node shown → a path showing it
	mergedOf map[*Node]*Node  // a view node shown → the Merge node at its path
}

// dir compares the merged directory whose views' directories are dirs
// (top first) with Merge's directory m, at path p.
func (c *overlayCompare) dir(p string, dirs []*Node, m *Node) {
	t := c.t
	names := map[string]bool{}
	for _, d := range dirs {
		for _, name := range d.Names() {
			if n, _ := overlayChild(dirs, name); n != nil {
				names[name] = true
			}
		}
	}
	got, want := slices.Sorted(maps.Keys(names)), m.Names()
	if !slices.Equal(got, want) {
		t.Fatalf("/%s: overlay lists %q, Merge %q", p, got, want)
	}
	for _, name := range want {
		q := path.Join(p, name)
		n, sub := overlayChild(dirs, name)
		mc := m.Child(name)
		if d := nodeDiff(n, mc); d != "" {
			t.Fatalf("/%s: overlay vs Merge: %s", q, d)
		}
		if other, ok := c.mergedOf[n]; ok && other != mc {
			t.Fatalf("/%s: one view node shown where Merge has two (%s too)", q, c.shown[n])
		}
		c.shown[n], c.mergedOf[n] = q, mc
		if n.IsDir() {
			c.dir(q, sub, mc)
		}
	}
}

// nodeDiff says how a node overlayfs shows differs from Merge's, or "".
func nodeDiff(got, want *Node) string {
	visible := func(x map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range x {
			if !strings.HasPrefix(k, "trusted.overlay.") {
				out[k] = v
			}
		}
		return out
	}
	switch {
	case got.Type != want.Type:
		return fmt.Sprintf("type %s, want %s", got.Type, want.Type)
	case got.Mode != want.Mode || got.UID != want.UID || got.GID != want.GID:
		return fmt.Sprintf("mode %o owner %d:%d, want %o %d:%d", got.Mode, got.UID, got.GID, want.Mode, want.UID, want.GID)
	case !got.ModTime.Equal(want.ModTime):
		return fmt.Sprintf("mtime %v, want %v", got.ModTime, want.ModTime)
	case got.Linkname != want.Linkname || got.Devmajor != want.Devmajor || got.Devminor != want.Devminor:
		return fmt.Sprintf("target %q dev %d,%d, want %q %d,%d", got.Linkname, got.Devmajor, got.Devminor, want.Linkname, want.Devmajor, want.Devminor)
	case got.Type == index.TypeReg && (got.Layer != want.Layer || got.Offset != want.Offset || got.Size != want.Size):
		return fmt.Sprintf("content %d:%d+%d, want %d:%d+%d", got.Layer, got.Offset, got.Size, want.Layer, want.Offset, want.Size)
	case !maps.Equal(visible(got.Xattrs), visible(want.Xattrs)):
		return fmt.Sprintf("xattrs %v, want %v", got.Xattrs, want.Xattrs)
	}
	return ""
}

// checkTree checks what FuzzMerge checks of a merged tree: names sorted,
// one number per node, numbers 1..Nodes, link counts that count the names
// and subdirectories pointing at each node.
func checkTree(t *testing.T, what string, tree *Tree) {
	t.Helper()
	names := map[*Node]uint32{}
	ids := map[uint64]*Node{}
	err := tree.Walk(func(p string, n *Node) error {
		if other, ok := ids[n.ID]; ok && other != n {
			return fmt.Errorf("%s %q: inode %d shared by two nodes", what, p, n.ID)
		}
		if n.ID == 0 || n.ID > uint64(tree.Nodes) {
			return fmt.Errorf("%s %q: inode %d outside 1..%d", what, p, n.ID, tree.Nodes)
		}
		ids[n.ID] = n
		if !n.IsDir() {
			names[n]++
			return nil
		}
		if !slices.IsSorted(n.Names()) || len(n.Names()) != len(n.dir.nodes) {
			return fmt.Errorf("%s %q: names %v not sorted or not the children", what, p, n.Names())
		}
		subdirs := uint32(0)
		for _, name := range n.Names() {
			if n.Child(name).IsDir() {
				subdirs++
			}
		}
		if n.Nlink != 2+subdirs {
			return fmt.Errorf("%s %q: dir nlink %d, want %d", what, p, n.Nlink, 2+subdirs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for n, count := range names {
		if n.Nlink != count {
			t.Fatalf("%s: inode %d: nlink %d, but %d names", what, n.ID, n.Nlink, count)
		}
	}
	if len(ids) != tree.Nodes || tree.Root.ID != 1 {
		t.Fatalf("%s: Nodes = %d, walked %d, root %d", what, tree.Nodes, len(ids), tree.Root.ID)
	}
}

// agreeable returns tables without the entries where the overlay of the
// views and Merge legitimately differ (see FuzzLayerViews), and whether a
// hardlink is left whose target no earlier entry of its own layer wrote.
// It returns nil for layers Merge fails on. It decides each entry on the
// tree Merge makes of what it kept before it.
func agreeable(tables []*index.Table) ([]*index.Table, bool) {
	var out []*index.Table
	// opaque holds the directories whose lower contents Merge has dropped
	// and under which containerd would imply parents with attributes
	// copied from below: by layer, the directory, and whether entries of
	// the same layer after it count (real markers) or only later layers
	// (the views' own opaque directories).
	type opaqueDir struct {
		layer     int
		dir       string
		sameLayer bool
	}
	var opaque []opaqueDir
	crossLayer := false
	under := func(p, dir string) bool { return dir == "" || strings.HasPrefix(p, dir+"/") }
	for li, t := range tables {
		cur := &index.Table{Digest: t.Digest}
		out = append(out, cur)
		written := map[string]bool{}     // names this layer wrote (not markers)
		upperNonDir := map[string]bool{} // paths where this layer left a non-directory or a whiteout
		dirEntry := map[string]bool{}    // directory entries of this layer
		var markerDirs []string          // directories of this layer's markers
		for _, e := range t.Entries {
			e.ModTime = time.Unix(1_600_000_000+int64(e.Mode)*1000+e.Offset, 0).UTC()
			if e.Type == index.TypeSymlink {
				e.Mode = 0o777
			}
			merged, err := Merge(out)
			if err != nil {
				return nil, false
			}
			marker := e.Type == index.TypeWhiteout || e.Type == index.TypeOpaque
			parent := path.Dir(e.Name) // the directory containerd makes the parents of
			if e.Type == index.TypeOpaque {
				parent = e.Name
			}
			if parent == "." {
				parent = ""
			}
			if symlinkOnTheWay(merged, parent) || (e.Type == index.TypeHardlink && symlinkOnTheWay(merged, path.Dir(e.Linkname))) {
				continue
			}
			if marker {
				if li == 0 {
					continue
				}
				if n, err := merged.Lookup(parent); err != nil || !n.IsDir() {
					continue
				}
				if e.Type == index.TypeOpaque && slices.ContainsFunc(markerDirs, func(d string) bool { return d != parent && under(d, parent) }) {
					continue
				}
			}
			if slices.ContainsFunc(opaque, func(o opaqueDir) bool {
				return (o.layer < li || o.sameLayer) && o.dir != parent && under(parent, o.dir)
			}) {
				continue
			}
			if e.Type == index.TypeDir && upperNonDir[e.Name] {
				continue
			}
			if e.Type != index.TypeDir && !marker && slices.ContainsFunc(slices.Collect(maps.Keys(dirEntry)), func(d string) bool {
				return d == e.Name || under(d, e.Name)
			}) {
				continue
			}
			if e.Type == index.TypeHardlink {
				if target, err := merged.Lookup(e.Linkname); err == nil && !target.IsDir() {
					e.Mode, e.UID, e.GID, e.ModTime, e.Xattrs = target.Mode, target.UID, target.GID, target.ModTime, target.Xattrs
				}
				if !written[path.Clean("/" + e.Linkname)[1:]] {
					crossLayer = true
				}
			}
			// The views' own opaque directories: a non-directory of
			// this layer on the way, replaced; a late whiteout of what
			// the layer wrote in.
			for q := parent; q != "" && !marker; q = dirOf(q) {
				if upperNonDir[q] {
					opaque = append(opaque, opaqueDir{li, q, false})
					upperNonDir[q] = false
				}
			}
			switch e.Type {
			case index.TypeWhiteout:
				if dirEntry[e.Name] || slices.ContainsFunc(slices.Collect(maps.Keys(written)), func(w string) bool { return under(w, e.Name) }) {
					opaque = append(opaque, opaqueDir{li, e.Name, false})
				} else if !written[e.Name] {
					upperNonDir[e.Name] = true
				}
			case index.TypeOpaque:
				opaque = append(opaque, opaqueDir{li, e.Name, true})
			}
			switch {
			case marker:
				markerDirs = append(markerDirs, parent)
			default:
				written[e.Name] = true
				upperNonDir[e.Name] = e.Type != index.TypeDir
				if e.Type == index.TypeDir {
					dirEntry[e.Name] = true
				}
				for q := parent; q != ""; q = dirOf(q) {
					written[q] = true
				}
			}
			cur.Entries = append(cur.Entries, e)
		}
	}
	return out, crossLayer
}

// dirOf is path.Dir for the slash paths of a tree, "" for the root.
func dirOf(p string) string {
	if d := path.Dir(p); d != "." {
		return d
	}
	return ""
}

// symlinkOnTheWay reports whether a symlink of tree is on the way to the
// directory p, p itself included.
func symlinkOnTheWay(tree *Tree, p string) bool {
	names := splitPath(p)
	for i := range names {
		n, err := tree.Lookup(strings.Join(names[:i+1], "/"))
		if err != nil {
			return false
		}
		if n.Type == index.TypeSymlink {
			return true
		}
	}
	return false
}
