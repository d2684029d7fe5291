package fs

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// materializeView writes a view to dir (which must not exist) as an
// overlayfs lower directory: whiteouts as character devices 0/0, opaque
// directories with trusted.overlay.opaque, files with their bytes read
// through im (the verified read path), hardlinked names as hardlinks.
func materializeView(t *testing.T, im *Image, v *Tree, dir string) {
	t.Helper()
	links := map[*Node]string{}
	var dirs []string // set their attributes last, deepest first, so children do not change mtimes
	var dirNodes []*Node
	err := v.Walk(func(p string, n *Node) error {
		full := filepath.Join(dir, p)
		if other, ok := links[n]; ok {
			return os.Link(other, full)
		}
		switch n.Type {
		case index.TypeDir:
			if err := os.Mkdir(full, 0o700); err != nil {
				return err
			}
			dirs, dirNodes = append(dirs, full), append(dirNodes, n)
			return nil
		case index.TypeReg:
			f, err := os.OpenFile(full, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, im.Open(t.Context(), n))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", p, err)
			}
			links[n] = full
		case index.TypeSymlink:
			if err := os.Symlink(n.Linkname, full); err != nil {
				return err
			}
		case index.TypeChar, index.TypeBlock, index.TypeFifo:
			mode := map[index.Type]uint32{index.TypeChar: unix.S_IFCHR, index.TypeBlock: unix.S_IFBLK, index.TypeFifo: unix.S_IFIFO}[n.Type]
			if err := unix.Mknod(full, mode, int(unix.Mkdev(uint32(n.Devmajor), uint32(n.Devminor)))); err != nil {
				return &os.PathError{Op: "mknod", Path: full, Err: err}
			}
		}
		links[n] = full
		return setAttrsOnDisk(full, n)
	})
	if err != nil {
		t.Fatalf("materialize view: %v", err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setAttrsOnDisk(dirs[i], dirNodes[i]); err != nil {
			t.Fatalf("materialize view: %v", err)
		}
	}
}

// setAttrsOnDisk gives the file at p n's owner, xattrs, mode and mtime.
func setAttrsOnDisk(p string, n *Node) error {
	if err := os.Lchown(p, int(n.UID), int(n.GID)); err != nil {
		return err
	}
	for k, v := range n.Xattrs {
		if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
			return &os.PathError{Op: "lsetxattr " + k, Path: p, Err: err}
		}
	}
	if n.Type != index.TypeSymlink {
		// chmod(2) takes the setuid, setgid and sticky bits as they are.
		if err := unix.Chmod(p, n.Mode); err != nil {
			return &os.PathError{Op: "chmod", Path: p, Err: err}
		}
	}
	ts := unix.NsecToTimespec(n.ModTime.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: p, Err: err}
	}
	return nil
}

// mountOverlay mounts overlayfs read-only over lowers (bottom first) at a
// temp dir, unmounted at cleanup.
func mountOverlay(t *testing.T, lowers []string) string {
	t.Helper()
	mnt := t.TempDir()
	top := slices.Clone(lowers)
	slices.Reverse(top)
	opts := "lowerdir=" + strings.Join(top, ":")
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("mount overlay %s: %v", opts, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount overlay: %v", err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt
}

// overlayOfViews builds layers into an OCI layout, loads it, materializes
// every layer's view through the image's read path and mounts the kernel's
// overlayfs over them. It returns the mount, the layout, the views and the
// merged tree.
func overlayOfViews(t *testing.T, layers []fstest.Layer) (mnt, layout string, views []*Tree, merged *Tree) {
	t.Helper()
	b := buildLayers(t, layers)
	layout = t.TempDir()
	if err := b.img.WriteLayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	im := loadImage(t, newClient(t, "", nil), "oci:"+layout+":v1")
	views, err := LayerViews(b.tables)
	if err != nil {
		t.Fatalf("LayerViews: %v", err)
	}
	root := t.TempDir()
	var lowers []string
	for i, v := range views {
		dir := filepath.Join(root, strconv.Itoa(i))
		materializeView(t, im, v, dir)
		lowers = append(lowers, dir)
	}
	merged, err = Merge(b.tables)
	if err != nil {
		t.Fatalf("Merge: %v", err)
	}
	return mountOverlay(t, lowers), layout, views, merged
}

// TestLayerViewsOverlayEqualsUmoci mounts the kernel's overlayfs over the
// views of an image and compares the mount with umoci's unpack of the image
// (which ocifs's merged tree equals): type, mode, owner, size, content,
// link target, xattrs, device numbers, mtime of every path, and hardlink
// groups and nlink as overlayfs must show them. The images avoid what
// legitimately differs (layerview.go): their hardlink entries carry their
// target's attributes, as tar writers make them, and no entry is written
// through a symlink of a lower layer. Two overlayfs facts remain, each
// checked where it shows: a file's nlink is that of the layer's inode that
// overlayfs shows (the names a later layer whites out still count), and a
// hardlink to a file of a lower layer is an inode of its own.
func TestLayerViewsOverlayEqualsUmoci(t *testing.T) {
	fstest.RequireRoot(t) // mknod, trusted.* xattrs, mount
	type image struct {
		name     string
		layers   []fstest.Layer
		unstable []string // umoci's mtimes of the time of unpack
	}
	images := []image{{"corners", linkAttrsOfTargets(fstest.Corners()), fstest.CornerUnstableMtimes}}
	for seed := int64(1); seed <= 12; seed++ {
		images = append(images, image{fmt.Sprintf("random-%d", seed), linkAttrsOfTargets(fstest.Random(seed, 30+int(seed)*10)), nil})
	}
	for _, img := range images {
		t.Run(img.name, func(t *testing.T) {
			mnt, layout, views, merged := overlayOfViews(t, img.layers)
			want := fstest.UmociUnpack(t, layout, "v1")
			diffs := fstest.CompareTrees(mnt, want, fstest.CompareOptions{IgnoreMtimePaths: img.unstable})
			got, err := fstest.Manifest(mnt)
			if err != nil {
				t.Fatal(err)
			}
			facts := newOverlayFacts(views, merged, got)
			explained := 0
			for _, d := range diffs {
				if why := facts.explain(d); why != "" {
					explained++
					t.Logf("overlay vs umoci, %s: %s", why, d)
					continue
				}
				t.Errorf("overlay of the views vs umoci: %s", d)
			}
			t.Logf("%d paths, %d differences that are overlayfs facts", len(got), explained)
		})
	}
}

// overlayFacts tells the differences between the overlay of the views and
// umoci's unpack that overlayfs must show: its inodes are the views' nodes
// (the top one at each path), umoci's the merged tree's.
type overlayFacts struct {
	roots  []*Node            // the views' roots, top first
	merged *Tree              //
	shown  map[*Node][]string // a view's node → the paths of the mount showing it
	names  map[*Node][]string // a merged tree's node → its paths
	layer  map[*Node]int      // a view's node → the layer of its view
}

func newOverlayFacts(views []*Tree, merged *Tree, mounted map[string]fstest.EntryInfo) *overlayFacts {
	f := &overlayFacts{merged: merged, shown: map[*Node][]string{}, names: map[*Node][]string{}, layer: map[*Node]int{}}
	for i := len(views) - 1; i >= 0; i-- {
		f.roots = append(f.roots, views[i].Root)
		views[i].Walk(func(_ string, n *Node) error {
			f.layer[n] = i
			return nil
		})
	}
	for p, e := range mounted {
		if e.Type == "file" {
			if n := overlayLookup(f.roots, splitPath(p)); n != nil {
				f.shown[n] = append(f.shown[n], p)
			}
		}
	}
	merged.Walk(func(p string, n *Node) error {
		if n.Type == index.TypeReg {
			f.names[n] = append(f.names[n], p)
		}
		return nil
	})
	for _, g := range f.shown {
		slices.Sort(g)
	}
	return f
}

// explain returns why a difference is an overlayfs fact, or "" if it is
// not: an nlink that is the count of the view's node overlayfs shows, where
// umoci's is the merged tree's; hardlink groups that are the paths showing
// one view's node, where umoci's are those of the merged tree's node, split
// because a hardlink to a lower layer's file is a node of its own.
func (f *overlayFacts) explain(diff string) string {
	p, rest, _ := strings.Cut(diff, ": ")
	shown := overlayLookup(f.roots, splitPath(p))
	m, err := f.merged.Lookup(p)
	if shown == nil || err != nil {
		return ""
	}
	var gotN, wantN uint64
	if _, err := fmt.Sscanf(rest, "nlink got %d want %d", &gotN, &wantN); err == nil {
		if gotN == uint64(shown.Nlink) && wantN == uint64(m.Nlink) {
			return "nlink of the view's inode"
		}
		return ""
	}
	if rest != fmt.Sprintf("hardlinks got %q want %q", f.shown[shown], f.names[m]) {
		return ""
	}
	for _, q := range f.names[m] {
		if n := overlayLookup(f.roots, splitPath(q)); n != nil && int(n.Layer) != f.layer[n] {
			return "a hardlink to a lower layer's file is a file of its own"
		}
	}
	return ""
}

// linkAttrsOfTargets gives every hardlink entry the attributes (mode,
// owner, mtime, xattrs) of the file it links to, as tar writers write them,
// so that containerd's way of applying a link entry's own attributes to the
// inode changes nothing.
func linkAttrsOfTargets(layers []fstest.Layer) []fstest.Layer {
	clean := func(p string) string { return path.Clean("/" + p)[1:] }
	inode := map[string]tar.Header{} // path → the header that gave its file its attributes
	out := make([]fstest.Layer, len(layers))
	for i, l := range layers {
		out[i] = fstest.Layer{Compression: l.Compression, Files: slices.Clone(l.Files)}
		for j := range out[i].Files {
			h := &out[i].Files[j].Header
			name := clean(h.Name)
			base := path.Base(name)
			switch {
			case strings.HasPrefix(base, ".wh."):
				gone := path.Join(path.Dir(name), strings.TrimPrefix(base, ".wh."))
				for p := range inode {
					if p == gone || strings.HasPrefix(p, gone+"/") || (base == ".wh..wh..opq" && strings.HasPrefix(p, path.Dir(name)+"/")) {
						delete(inode, p)
					}
				}
			case h.Typeflag == tar.TypeLink:
				target, ok := inode[clean(h.Linkname)]
				if !ok {
					continue
				}
				h.Mode, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime = target.Mode, target.Uid, target.Gid, target.Uname, target.Gname, target.ModTime
				for k, v := range target.PAXRecords {
					if strings.HasPrefix(k, "SCHILY.xattr.") {
						if h.PAXRecords == nil {
							h.PAXRecords = map[string]string{}
						}
						h.PAXRecords[k] = v
					}
				}
				inode[name] = target
			default:
				inode[name] = *h
			}
		}
	}
	return out
}
