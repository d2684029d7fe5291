package fs

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/ocifs/ocifs/index"
)

// This file computes per-layer views: for each layer of an image, the tree
// that containerd's applier writes into the empty snapshot directory of that
// layer for its overlayfs snapshotter, in overlayfs's on-disk format. The
// containerd snapshotter and the containers/storage additional layer store
// serve these trees (over FUSE) as the lower directories that the kernel's
// overlayfs stacks; the bytes of their files come from the same verified read
// path as the merged tree's (a view's Node carries Layer and Offset).
//
// # What containerd writes (the rules a view follows)
//
// Read from containerd 2.4 (pkg/archive tar.go, tar_unix.go,
// tar_opts_linux.go; core/diff/apply/apply_linux.go; the overlayfs
// snapshotter) and 1.6 (archive/, diff/apply/), which apply layers alike,
// and checked against containerd's own pkg/archive in
// layerview_containerd_test.go.
// Layer i > 0 is applied with archive.Apply straight into its empty upper
// directory with WithConvertWhiteout(OverlayConvertWhiteout) and
// WithParents(the upper directories of the layers below, top first). The
// bottom layer's snapshot has no parents, so the snapshotter mounts it as a
// bind mount, and the applier then applies it with the plain whiteout
// handling (deletion) instead.
//
//   - Every entry is written at its cleaned path, its parent path resolved
//     inside the layer's own directory with symlinks followed (continuity's
//     fs.RootPath: absolute targets start at the directory, ".." stops
//     there). Symlinks of lower layers are not there to follow: an entry
//     written through a lower layer's symlink lands at its literal path, and
//     overlayfs then shows a directory hiding that symlink. This differs from
//     [Merge], which follows symlinks across layers as unpackers (umoci) do.
//   - A later entry of the same path replaces the earlier one, except a
//     directory over a directory, which keeps its children and takes the new
//     owner and mode; its xattrs are added to those it had (setxattr, no
//     removal) and its mtime is the last entry's. A directory entry over a
//     non-directory of the same layer (a file, a whiteout) is a plain new
//     directory, not opaque: overlayfs then shows the lower directory's
//     contents in it too. [Merge] shows only the layer's.
//   - The root directory's own entry ("./") is ignored: the view's root is
//     0755, root-owned (the snapshotter makes it so), with the Unix epoch as
//     mtime here (containerd's is the time of unpack).
//   - ".wh.NAME" (layers above the bottom) is a character device 0/0 called
//     NAME, mode 0, owned as the whiteout's entry says; ".wh..wh..opq" in DIR
//     sets xattr trusted.overlay.opaque=y on DIR. In the bottom layer a
//     whiteout deletes NAME (even what the layer itself wrote before it) and
//     an opaque marker deletes from DIR everything this layer did not write
//     (directories it only implied included); nothing of either is left.
//   - Missing parents, of markers too, are created: mode 0755, root, unless
//     the first layer below (top first) whose directory has that path (its
//     own symlinks followed) has a directory there: then its mode, owner,
//     mtime and xattrs (trusted.* excepted) are copied, even from below a
//     layer that made an ancestor opaque. A non-directory there means 0755,
//     root. containerd's mtime is the time of unpack (children are created
//     after it); the view keeps the copied one.
//   - A hardlink names the inode at its target in the same layer, and the
//     link entry's own owner, mode (but not a symlink's), mtime and xattrs
//     are applied to that inode: every name of it shows them. [Merge] keeps
//     the target's attributes (as umoci does).
//   - Xattrs come from the tar (SCHILY.xattr.*), except trusted.* (refused
//     by containerd) and user.* on anything but files and directories (the
//     kernel refuses them). A symlink's mode is 0777. Mtimes before 1970 or
//     after 2262 become the Unix epoch.
//
// Where containerd fails the pull, a view shows what keeps the overlay of
// the views equal to [Merge]'s tree instead:
//
//   - A hardlink whose target is not in its own layer (ENOENT in containerd,
//     whose applier writes into the new upper only): the view has a file of
//     its own, with the target's bytes (its Layer and Offset) and attributes
//     as the layers below show them through overlayfs; names of this layer
//     linking to it then share it. Through overlayfs its nlink is this
//     layer's count, and it is not the lower file's inode: [Merge] makes it
//     one inode with the target.
//   - A whiteout of a path the layer wrote before it (mknod: EEXIST): a
//     directory stays and is made opaque, so that only what the layer wrote
//     in it shows, as [Merge] keeps it (the directories in it that the
//     layer made only as parents of its markers go); anything else stays as
//     written (it hides the lower path already). A directory made only as
//     the parent of markers becomes a whiteout. An opaque marker after the
//     layer's own entries is no failure in containerd: the directory keeps
//     them (and the parents of its earlier markers).
//   - An entry whose parent path meets a non-directory that the layer wrote
//     (ENOTDIR): the non-directory is replaced by a directory (0755, root,
//     opaque: the lower path was gone), as [Merge] does. A marker there is
//     a no-op.
//   - Parents implied below a directory made opaque for one of these two
//     reasons are 0755, root: Merge has dropped what the layers below held.
//   - A lower layer with a non-directory on the way to a missing parent
//     (RootPath fails with ENOTDIR): as a non-directory at that path, 0755.
//   - A hardlink to a path below its own (containerd removes the link's
//     path first: ENOENT): the target as it was, as [Merge] finds it.
//
// # Where containers/storage differs
//
// Its overlay driver (drivers/overlay ApplyDiff: chrootarchive
// UntarUncompressed, which runs pkg/archive Unpack with
// OverlayWhiteoutFormat) writes a layer's diff/ otherwise. Read in
// go.podman.io/storage v1.65.1 and measured there by applying the test
// images with its Unpack beside containerd's applier (a scratch program, not
// in this repository):
//
//   - Missing parents are MkdirAll 0777 less the umask (0755), root, mtime
//     of unpack, nothing copied: overlayfs then shows them so where the
//     image has other attributes (the random images' 0700 and 01777
//     directories come out 0755). Views copy, as containerd does.
//   - The root entry's mode, owner and mtime are applied to diff/.
//   - The bottom layer is in overlay format too: devices, the opaque xattr,
//     nothing deleted; a whiteout after an entry of its path fails (EEXIST)
//     there as well.
//   - trusted.* xattrs from the tar are set; a user.* xattr on a symlink
//     fails the pull (EPERM); names starting with "../" fail ("outside of").
//   - A whiteout below a whiteout (".wh.foo", then "foo/.wh.bar") is
//     skipped, not a failure.
//   - A directory entry's mtime is not put on what replaced it; a hardlink
//     to a symlink leaves the symlink's mtime as it was.
//   - Rootless, the opaque xattr is user.overlay.opaque (read, not measured).
//
// Alike: a hardlink to a lower layer's file fails (ENOENT), so does a late
// whiteout (EEXIST) and a path through a non-directory of the layer
// (ENOTDIR); a link entry's attributes go on the inode; a directory written
// twice adds up xattrs; a whiteout, then a directory, is a plain directory;
// parent paths follow the layer's own symlinks (securejoin). For the
// additional layer store, then, a view is not what podman's own applier
// writes where the two differ above: it keeps the image's attributes. Its
// third applier, pkg/chunked (partial pulls of zstd:chunked and eStargz),
// was not examined.
//
// Neither applier knows aufs metadata (".wh..wh.plnk/..."): read, not
// measured, both write a whiteout device ".wh.plnk" and the files below the
// directory, which the index drops ([index.IsAufsMeta]) and views do not
// show.
//
// # Where the overlay of the views differs from Merge
//
// Besides the failures above, where the views follow Merge: symlinks of
// lower layers in parent paths; the attributes of hardlinked inodes; nlink
// of hardlinked lower files a later layer whites out or replaces (overlayfs
// reports the lower inode's count); cross-layer hardlinks (two inodes); a
// directory written over a same-layer non-directory or whiteout (lower
// contents show); empty directories made for the parents of a whiteout or
// marker of a path that does not exist, or shown by an opaque marker after
// them; implied parents' attributes copied from below an opaque ancestor
// (a marker's, or, in a lower layer, one the views made where containerd
// fails); a directory entry's mtime landing on what replaced it (or a
// parent of it) later in its layer; xattrs added up when a directory is
// written twice in a layer (or implied, then written); the bottom layer's
// markers, which delete what it wrote before them; the root entry's
// attributes; symlink modes; trusted.* xattrs and user.* xattrs on symlinks
// and devices; mtimes out of range. FuzzLayerViews checks everything else.

// opaqueXattr marks a directory whose lower layers overlayfs must not merge.
const opaqueXattr = "trusted.overlay.opaque"

// maxRootPathLinks is how many symlinks continuity's fs.RootPath follows in
// one path before it fails.
const maxRootPathLinks = 255

// LayerViews returns the view of every layer of tables (bottom first): the
// tree containerd's applier writes into an empty directory for that layer
// (see the rules at the top of layerview.go). Each view numbers its nodes
// from 1, the root first, in depth-first name order, like [Merge]: a
// function of the image. Errors wrap [ErrFormat] where [Merge] would fail
// too (a hardlink to a missing file or to a directory, a symlink loop).
func LayerViews(tables []*index.Table) ([]*Tree, error) {
	views := make([]*Tree, 0, len(tables))
	for i, t := range tables {
		v, err := layerView(t, i, views)
		if err != nil {
			return nil, fmt.Errorf("view of layer %d (%s): %w", i, t.Digest, err)
		}
		views = append(views, v)
	}
	return views, nil
}

// LayerView returns the view of layer i of tables (bottom first), which
// depends on the views below it (their directories' attributes are copied
// to the parents layer i implies). To serve every layer, [LayerViews]
// computes them once each.
func LayerView(tables []*index.Table, i int) (*Tree, error) {
	if i < 0 || i >= len(tables) {
		return nil, fmt.Errorf("layer view %d of an image of %d layers", i, len(tables))
	}
	views, err := LayerViews(tables[:i+1])
	if err != nil {
		return nil, err
	}
	return views[i], nil
}

// PodmanLayerViews returns the view of every layer of tables (bottom
// first) as containers/storage 1.43's overlay driver writes a layer's
// diff/ (podman 4.3.1's pull; fs/store/podmantest measures it): the rules
// of [LayerViews] but for three. Missing parents are 0755, root's, with
// the Unix epoch as mtime (podman's is the time of unpack), whatever a
// lower layer has there; the bottom layer is in overlay format too
// (whiteout devices, the opaque xattr, nothing deleted); the root is 0555,
// the mode the overlay driver gives a diff directory. Through overlayfs
// podman's container root then equals its own pull's.
func PodmanLayerViews(tables []*index.Table) ([]*Tree, error) {
	views := make([]*Tree, 0, len(tables))
	for i, t := range tables {
		v, err := buildView(&viewBuilder{li: i, overlay: true, podman: true}, t, views)
		if err != nil {
			return nil, fmt.Errorf("podman view of layer %d (%s): %w", i, t.Digest, err)
		}
		v.Root.Mode = podmanDiffMode
		views = append(views, v)
	}
	return views, nil
}

// podmanDiffMode is the mode of a layer's diff directory in
// containers/storage 1.43.
const podmanDiffMode = 0o555

// viewBuilder applies one layer's entries to an empty tree as containerd's
// applier applies them to an empty directory.
type viewBuilder struct {
	li      int
	overlay bool    // whiteouts are devices, opaque markers xattrs (every layer but the bottom; every layer for podman)
	podman  bool    // containers/storage's applier: implied parents 0755, root, nothing copied
	lowers  []*Node // the roots of the views below, top first
	root    *Node

	// unpacked holds the resolved paths of the entries written, which the
	// bottom layer's opaque markers keep; nil in other layers, and in a
	// bottom layer without opaque markers (a path string and a map entry
	// for each of its entries, read by none).
	unpacked map[string]bool
	// dirTimes are the directory entries, whose mtimes are set once every
	// entry is written, at the path each names then.
	dirTimes []*index.Entry
	// hidden are the directories the view made opaque where containerd
	// fails (a late whiteout, a non-directory replaced): Merge has dropped
	// what the layers below held there, so parents implied below them copy
	// nothing from those layers.
	hidden map[*Node]bool
	// markerOnly are the directories made only as parents of whiteouts
	// and opaque markers, which Merge does not make: a late whiteout of
	// one of them, or of a directory holding them, removes them.
	markerOnly map[*Node]bool

	// parentPath, parent and parentNames cache the last parent path of
	// an entry (not a marker's) that mkparents resolved, the directory it
	// names and the path it resolved to, as merger caches its parents:
	// until a removal from the tree, the same walk would find the same
	// directories (created or not, none marker-only any more).
	parentPath  string
	parent      *Node
	parentNames string
}

func layerView(t *index.Table, li int, below []*Tree) (*Tree, error) {
	return buildView(&viewBuilder{li: li, overlay: li > 0}, t, below)
}

func buildView(b *viewBuilder, t *index.Table, below []*Tree) (*Tree, error) {
	b.root, b.hidden, b.markerOnly = newDir(true), map[*Node]bool{}, map[*Node]bool{}
	for i := len(below) - 1; i >= 0; i-- {
		b.lowers = append(b.lowers, below[i].Root)
	}
	if !b.overlay && hasOpaque(t.Entries) {
		b.unpacked = map[string]bool{}
	}
	for i := range t.Entries {
		if err := b.apply(&t.Entries[i]); err != nil {
			return nil, err
		}
	}
	for _, e := range b.dirTimes {
		// containerd: chtimes(RootPath(root, name)), which follows a last
		// symlink too; a path gone by then fails its pull, and is skipped.
		if _, n, err := rootPath(b.root, cleanPath(e.Name)); err == nil && n != nil {
			n.ModTime = boundTime(e.ModTime)
		}
	}
	return (&merger{root: b.root}).finish(), nil
}

func (b *viewBuilder) apply(e *index.Entry) error {
	switch e.Type {
	case index.TypeWhiteout:
		dirPath, base := path.Split(e.Name)
		p, _ := b.markerDir(dirPath)
		if p == nil {
			return nil
		}
		old := p.Child(base)
		switch {
		case !b.overlay:
			b.remove(p, base)
		case old == nil:
			link(p, base, whiteoutNode(e), b.li)
		case b.markerOnly[old]:
			// containerd: mknod fails with EEXIST. The layer wrote
			// nothing in it: Merge removes it.
			b.remove(p, base)
			link(p, base, whiteoutNode(e), b.li)
		case old.IsDir():
			// containerd: mknod fails with EEXIST. Merge keeps what
			// the layer wrote and drops the rest: opaque does that.
			b.pruneMarkerOnly(old)
			setXattr(old, opaqueXattr, "y")
			b.hidden[old] = true
		}
		return nil
	case index.TypeOpaque:
		d, names := b.markerDir(e.Name)
		switch {
		case d == nil:
		case b.overlay:
			setXattr(d, opaqueXattr, "y")
		default:
			b.pruneUnpacked(d, names)
		}
		return nil
	}
	if e.Name == "" {
		if e.Type == index.TypeDir {
			return nil // containerd: "resolved to root", ignored
		}
		return fmt.Errorf("%w: %s entry for the root directory", ErrFormat, e.Type)
	}
	dirPath, base := path.Split(e.Name)
	p, names, err := b.parentDir(dirPath)
	if err != nil {
		return err
	}
	old := p.Child(base)
	var target *Node // a hardlink's, found before its path is cleared, as Merge finds it
	if e.Type == index.TypeHardlink {
		target = b.linkTarget(e)
		if target != nil && target.IsDir() {
			return fmt.Errorf("%w: hardlink %q to directory %q", ErrFormat, e.Name, e.Linkname)
		}
		if old != nil && old == target {
			// A link to itself or to another name of its own inode:
			// containerd removes the name first, then links to what
			// is left (nothing, for a link to itself: ENOENT). The
			// inode stays, with the link entry's attributes.
			b.linkAttrs(old, e)
			return nil
		}
	}
	if old != nil && !(old.IsDir() && e.Type == index.TypeDir) {
		b.remove(p, base)
		old = nil
	}
	switch e.Type {
	case index.TypeDir:
		d := old
		if d == nil {
			d = newDir(false)
			link(p, base, d, b.li)
		}
		d.Implied = false
		delete(b.markerOnly, d) // the layer writes it
		setEntryAttrs(d, e)
		b.dirTimes = append(b.dirTimes, e)
	case index.TypeHardlink:
		n, err := b.hardlinkTarget(e, target)
		if err != nil {
			return err
		}
		link(p, base, n, b.li)
	case index.TypeReg, index.TypeSymlink, index.TypeChar, index.TypeBlock, index.TypeFifo:
		n := &Node{Type: e.Type, Nlink: 1, Layer: int32(b.li), Offset: e.Offset, Size: e.Size,
			Devmajor: e.Devmajor, Devminor: e.Devminor}
		if e.Type == index.TypeSymlink {
			n.Linkname = e.Linkname
			n.Size = int64(len(e.Linkname))
			n.Mode = 0o777
		}
		setEntryAttrs(n, e)
		link(p, base, n, b.li)
	default:
		return fmt.Errorf("%w: entry %q has unknown type %d", ErrFormat, e.Name, e.Type)
	}
	if b.unpacked != nil {
		b.unpacked[path.Join(names, base)] = true
	}
	return nil
}

// linkTarget returns the node of the layer's own tree a hardlink entry
// names, or nil: containerd's hardlinkRootPath resolves the target's parent
// in the layer's directory and does not follow its last name (a link to a
// symlink links the symlink).
func (b *viewBuilder) linkTarget(e *index.Entry) *Node {
	tdir, tbase := path.Split(e.Linkname)
	_, td, err := rootPath(b.root, cleanPath(tdir))
	if err != nil || td == nil || !td.IsDir() {
		return nil
	}
	return td.Child(tbase)
}

// hardlinkTarget returns the node a hardlink entry names, with the link
// entry's attributes applied as containerd applies them (to the shared
// inode); for a target outside the layer, a node of its own. target is
// what linkTarget found before the link's path was cleared (containerd
// clears it first: a link to a path below its own fails there with ENOENT).
func (b *viewBuilder) hardlinkTarget(e *index.Entry, target *Node) (*Node, error) {
	if target != nil {
		target.Nlink++
		b.linkAttrs(target, e)
		return target, nil
	}
	// Not in this layer: containerd fails (ENOENT). Serve the file the
	// layers below show at the target's path, the layer's own symlinks
	// followed in its parent path as containerd would have, as a file of
	// this layer's own.
	tdir, tbase := path.Split(e.Linkname)
	names, _, err := rootPath(b.root, cleanPath(tdir))
	if err != nil {
		names = cleanPath(tdir)
	}
	low := overlayLookup(b.lowers, append(splitPath(names), tbase))
	if low == nil {
		return nil, fmt.Errorf("%w: hardlink %q to %q: %v", ErrFormat, e.Name, e.Linkname, errNoEntry)
	}
	if low.IsDir() {
		return nil, fmt.Errorf("%w: hardlink %q to directory %q", ErrFormat, e.Name, e.Linkname)
	}
	n := *low
	n.ID, n.Nlink, n.dir = 0, 1, nil
	return &n, nil
}

// linkAttrs applies a hardlink entry's attributes to the inode it names, as
// containerd does after link(2).
func (b *viewBuilder) linkAttrs(n *Node, e *index.Entry) {
	setEntryAttrs(n, e)
	if n.Type == index.TypeReg {
		// chown(2) of a file drops its file capability (the kernel's
		// killpriv); containerd chowns before it sets the link entry's
		// own xattrs.
		if _, ok := e.Xattrs["security.capability"]; !ok {
			deleteXattr(n, "security.capability")
		}
	}
}

// parentDir returns the directory an entry at dirPath/NAME goes in, as
// mkparents returns it.
func (b *viewBuilder) parentDir(dirPath string) (*Node, string, error) {
	if b.parent != nil && dirPath == b.parentPath {
		return b.parent, b.parentNames, nil
	}
	d, names, err := b.mkparents(cleanPath(dirPath), false)
	if err == nil {
		b.parentPath, b.parent, b.parentNames = dirPath, d, names
	}
	return d, names, err
}

// remove is removeChild for the view being built, where a path may
// resolve otherwise once a name is gone.
func (b *viewBuilder) remove(d *Node, name string) {
	if removeChild(d, name) {
		b.parent = nil
	}
}

// markerDir returns the directory a whiteout or opaque marker applies in
// (dirPath resolved in the layer's tree, missing parents created as
// containerd's mkparent creates them for markers too), with its resolved
// path; nil where a non-directory is in the way (containerd: ENOTDIR, the
// pull fails; Merge: nothing to delete).
func (b *viewBuilder) markerDir(dirPath string) (*Node, string) {
	names, n, err := rootPath(b.root, cleanPath(dirPath))
	if err != nil || (n != nil && !n.IsDir()) {
		return nil, ""
	}
	d, names, err := b.mkparents(names, true)
	if err != nil {
		return nil, ""
	}
	return d, names
}

// mkparents returns the directory at the clean path todo (see cleanPath) in
// the layer's tree, following the layer's own symlinks, and the clean path
// it resolved to; missing
// directories are created as containerd's mkparent creates them (attributes
// from the layers below), and a non-directory in the way is replaced by an
// opaque directory, as Merge replaces it (containerd fails: ENOTDIR).
// forMarker says the directory is for a whiteout or opaque marker.
func (b *viewBuilder) mkparents(todo string, forMarker bool) (*Node, string, error) {
	// As in merger.resolveDir, the names left are todo[i:], those walked
	// todo[:i].
	d := b.root
	hidden := false // below a directory of b.hidden
	hops := 0
	for i := 0; i < len(todo); {
		name, next := nextName(todo, i)
		c := d.Child(name)
		if c != nil && c.Type == index.TypeSymlink {
			if hops++; hops > maxRootPathLinks {
				return nil, "", fmt.Errorf("%w: too many levels of symbolic links at %q", ErrFormat, todo[:next-1])
			}
			todo = joinNames(linkTarget(todo[:i], c.Linkname), restNames(todo, next))
			i, d, hidden = 0, b.root, false
			continue
		}
		cur := todo[:next-1]
		created := c == nil
		switch {
		case c == nil && hidden:
			c = newDir(true)
			link(d, name, c, b.li)
		case c == nil:
			c = b.impliedDir(cur)
			link(d, name, c, b.li)
		case !c.IsDir():
			b.remove(d, name)
			c = newDir(true)
			if b.overlay {
				setXattr(c, opaqueXattr, "y")
				b.hidden[c] = true
			}
			link(d, name, c, b.li)
		}
		switch {
		case !forMarker:
			delete(b.markerOnly, c) // on the way to what the layer writes
		case created:
			b.markerOnly[c] = true
		}
		hidden = hidden || b.hidden[c]
		i, d = next, c
	}
	return d, todo, nil
}

// impliedDir returns a new directory for the clean path names that no
// entry of the layer described, with containerd's mkparent attributes: those of the
// first layer below that has the path (its own symlinks followed), if a
// directory is there; else 0755, root.
func (b *viewBuilder) impliedDir(names string) *Node {
	d := newDir(true)
	if b.podman {
		return d
	}
	for _, low := range b.lowers {
		_, n, err := rootPath(low, names)
		if err != nil {
			break // containerd: ENOTDIR fails the pull; nothing to copy
		}
		if n == nil {
			continue
		}
		if n.IsDir() {
			d.Mode, d.UID, d.GID, d.ModTime = n.Mode, n.UID, n.GID, n.ModTime
			for k, v := range n.Xattrs {
				if !strings.HasPrefix(k, "trusted.") {
					setXattr(d, k, v)
				}
			}
		}
		break
	}
	return d
}

// hasOpaque reports whether ents hold an opaque marker.
func hasOpaque(ents []index.Entry) bool {
	for i := range ents {
		if ents[i].Type == index.TypeOpaque {
			return true
		}
	}
	return false
}

// whiteoutNode returns the character device 0/0 a whiteout entry becomes,
// owned as the entry says (containerd chowns it), mode 0.
func whiteoutNode(e *index.Entry) *Node {
	return &Node{Type: index.TypeChar, Nlink: 1, UID: e.UID, GID: e.GID, ModTime: boundTime(e.ModTime)}
}

// pruneMarkerOnly removes from d, and from the directories in it, the
// directories made only for markers: what Merge keeps of a directory
// that a late whiteout names is what the layer wrote in it.
func (b *viewBuilder) pruneMarkerOnly(d *Node) {
	for _, name := range slices.Collect(maps.Keys(d.dir.byName)) {
		switch c := d.dir.byName[name]; {
		case b.markerOnly[c]:
			b.remove(d, name)
		case c.IsDir():
			b.pruneMarkerOnly(c)
		}
	}
}

// pruneUnpacked removes from d, at the resolved path names, every child whose path
// no entry of the layer wrote, and prunes the rest the same way: the plain
// handling of an opaque marker that containerd applies to the bottom layer.
func (b *viewBuilder) pruneUnpacked(d *Node, names string) {
	for _, name := range slices.Collect(maps.Keys(d.dir.byName)) {
		p := path.Join(names, name)
		c := d.dir.byName[name]
		switch {
		case !b.unpacked[p]:
			b.remove(d, name)
		case c.IsDir():
			b.pruneUnpacked(c, p)
		}
	}
}

// rootPath resolves the clean path todo (see cleanPath) in the tree at root
// as continuity's fs.RootPath resolves a path in a directory: every symlink
// followed, the last name's too, absolute targets from the root, ".."
// stopping there, names past a missing one taken literally. It returns the
// resolved clean path and the node there (nil if missing); a non-directory
// before the last name is errNotDir (RootPath's Lstat fails with ENOTDIR).
func rootPath(root *Node, todo string) (string, *Node, error) {
	n, d := root, root // d: the directory reached; nil past a missing name
	hops := 0
	for i := 0; i < len(todo); {
		name, next := nextName(todo, i)
		var c *Node
		if d != nil {
			c = d.Child(name)
		}
		if c != nil && c.Type == index.TypeSymlink {
			if hops++; hops > maxRootPathLinks {
				return "", nil, fmt.Errorf("%w: too many levels of symbolic links at %q", ErrFormat, todo[:next-1])
			}
			todo = joinNames(linkTarget(todo[:i], c.Linkname), restNames(todo, next))
			i, n, d = 0, root, root
			continue
		}
		n = c
		switch {
		case c == nil:
			d = nil
		case c.IsDir():
			d = c
		case next < len(todo):
			return "", nil, errNotDir
		}
		i = next
	}
	return todo, n, nil
}

// linkTarget returns the clean path from the root that a symlink in the
// directory dir points to.
func linkTarget(dir, target string) string {
	if !strings.HasPrefix(target, "/") {
		target = path.Join(dir, target)
	}
	return cleanPath(target)
}

// overlayLookup returns the node overlayfs shows at names over the views
// whose roots are lowers (top first), or nil: in each directory, the top
// view's entry wins; a whiteout (character device 0/0) hides the name in the
// views below it; a directory merges with the directories below it until
// one is opaque or a view has a non-directory there. Symlinks are followed
// in the parent path (as [Merge] follows them), not in the last name.
func overlayLookup(lowers []*Node, names []string) *Node {
	dirs := overlayRoots(lowers)
	if len(names) == 0 {
		if len(dirs) == 0 {
			return nil
		}
		return dirs[0]
	}
	todo := slices.Clone(names)
	var cur []string
	hops := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		n, sub := overlayChild(dirs, name)
		switch {
		case n == nil:
			return nil
		case n.Type == index.TypeSymlink && len(todo) > 0:
			if hops++; hops > maxSymlinkHops {
				return nil
			}
			todo = append(splitPath(linkTarget(path.Join(cur...), n.Linkname)), todo...)
			cur, dirs = nil, overlayRoots(lowers)
			continue
		case len(todo) == 0:
			return n
		case !n.IsDir():
			return nil
		}
		cur = append(cur, name)
		dirs = sub
	}
	return nil
}

// overlayRoots returns the roots overlayfs merges: from the top view down
// to the first whose root is opaque.
func overlayRoots(lowers []*Node) []*Node {
	for i, r := range lowers {
		if r.Xattrs[opaqueXattr] == "y" {
			return lowers[:i+1]
		}
	}
	return lowers
}

// overlayChild looks name up in a merged directory whose views' directories
// are dirs (top first): it returns the node overlayfs shows (the top one),
// or nil, and for a directory the views' directories it merges.
func overlayChild(dirs []*Node, name string) (*Node, []*Node) {
	var sub []*Node
	for _, d := range dirs {
		c := d.Child(name)
		switch {
		case c == nil:
			continue
		case isWhiteout(c):
		case !c.IsDir():
			if sub == nil {
				return c, nil
			}
		default:
			sub = append(sub, c)
			if c.Xattrs[opaqueXattr] != "y" {
				continue
			}
		}
		break
	}
	if sub == nil {
		return nil, nil
	}
	return sub[0], sub
}

// isWhiteout reports whether n is an overlayfs whiteout: a character device 0/0.
func isWhiteout(n *Node) bool {
	return n.Type == index.TypeChar && n.Devmajor == 0 && n.Devminor == 0
}

// setEntryAttrs applies an entry's owner, mode, mtime and xattrs to n as
// containerd's createTarFile does: lchown, setxattr of each (adding to those
// n has), chmod unless n is a symlink, utimes.
func setEntryAttrs(n *Node, e *index.Entry) {
	n.UID, n.GID = e.UID, e.GID
	var x map[string]string
	for k, v := range e.Xattrs {
		if !xattrApplies(n, k) {
			continue
		}
		if x == nil {
			x = make(map[string]string, len(n.Xattrs)+len(e.Xattrs))
			maps.Copy(x, n.Xattrs)
		}
		x[k] = v
	}
	if x != nil {
		n.Xattrs = x // a new map: views share maps until they change them
	}
	if n.Type != index.TypeSymlink {
		n.Mode = e.Mode & 0o7777
	}
	n.ModTime = boundTime(e.ModTime)
}

// xattrApplies reports whether containerd's applier sets the xattr called
// name from a tar entry on n: never trusted.* (it refuses them), and user.*
// only on files and directories (the kernel refuses others with EPERM,
// which the applier ignores).
func xattrApplies(n *Node, name string) bool {
	switch {
	case strings.HasPrefix(name, "trusted."):
		return false
	case strings.HasPrefix(name, "user."):
		return n.Type == index.TypeReg || n.Type == index.TypeDir
	}
	return true
}

// setXattr sets one xattr of n. The map is copied first: views share their
// entries' maps until they change them.
func setXattr(n *Node, name, value string) {
	if v, ok := n.Xattrs[name]; ok && v == value {
		return
	}
	x := make(map[string]string, len(n.Xattrs)+1)
	maps.Copy(x, n.Xattrs)
	x[name] = value
	n.Xattrs = x
}

// deleteXattr removes one xattr of n, copying the map first.
func deleteXattr(n *Node, name string) {
	if _, ok := n.Xattrs[name]; !ok {
		return
	}
	x := maps.Clone(n.Xattrs)
	delete(x, name)
	if len(x) == 0 {
		x = nil
	}
	n.Xattrs = x
}

// Bounds of the mtimes containerd's applier sets (its boundTime): others
// become the Unix epoch.
var (
	minViewTime = time.Unix(0, 0).UTC()
	maxViewTime = time.Unix(0, 1<<63-1).UTC()
)

func boundTime(t time.Time) time.Time {
	if t.Before(minViewTime) || t.After(maxViewTime) {
		return minViewTime
	}
	return t
}
