package fs

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	carchive "github.com/containerd/containerd/v2/pkg/archive"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// builtLayers is an image built from fstest layers: its blobs' tables (as
// ocifs indexes them) and uncompressed tars.
type builtLayers struct {
	img    *fstest.Image
	tables []*index.Table
	tars   [][]byte
}

func buildLayers(t *testing.T, layers []fstest.Layer) *builtLayers {
	t.Helper()
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := &builtLayers{img: img}
	for i, desc := range img.LayerDescs {
		table, err := index.BuildLayer(bytes.NewReader(img.Layers[i]), desc.MediaType, index.Options{})
		if err != nil {
			t.Fatalf("index layer %d: %v", i, err)
		}
		rc, err := index.Decompress(desc.MediaType, bytes.NewReader(img.Layers[i]))
		if err != nil {
			t.Fatal(err)
		}
		tr, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("decompress layer %d: %v", i, err)
		}
		b.tables = append(b.tables, table)
		b.tars = append(b.tars, tr)
	}
	return b
}

// containerdApply applies the tars with containerd's own applier as its
// overlayfs snapshotter does (core/diff/apply/apply_linux.go): each layer
// into a fresh directory (0755, as the snapshotter makes it), the bottom
// one plainly (its snapshot is a bind mount), every other with the overlay
// whiteout converter and the directories below as parents, top first. It
// returns the directories applied so far and the first error.
func containerdApply(t *testing.T, tars [][]byte) ([]string, error) {
	t.Helper()
	root := t.TempDir()
	var dirs []string
	for i, tr := range tars {
		dir := filepath.Join(root, strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var opts []carchive.ApplyOpt
		if i > 0 {
			parents := slices.Clone(dirs)
			slices.Reverse(parents)
			opts = append(opts, carchive.WithConvertWhiteout(carchive.OverlayConvertWhiteout), carchive.WithParents(parents))
		}
		if _, err := carchive.Apply(t.Context(), dir, bytes.NewReader(tr), opts...); err != nil {
			return dirs, fmt.Errorf("layer %d: %w", i, err)
		}
		dirs = append(dirs, dir)
	}
	return dirs, nil
}

// viewManifest describes a view as fstest.Manifest describes a directory,
// a file's content digest taken from the layer tar its node points into;
// inode identity is the node (Dev 1, Ino its ID).
func viewManifest(t *testing.T, v *Tree, tars [][]byte) map[string]fstest.EntryInfo {
	t.Helper()
	m := map[string]fstest.EntryInfo{}
	err := v.Walk(func(p string, n *Node) error {
		e := fstest.EntryInfo{Mode: n.Mode, Uid: uint32(n.UID), Gid: uint32(n.GID), Mtime: n.ModTime.UTC(),
			Nlink: uint64(n.Nlink), Dev: 1, Ino: n.ID, Xattrs: n.Xattrs}
		switch n.Type {
		case index.TypeReg:
			e.Type, e.Size = "file", n.Size
			tr := tars[n.Layer]
			if n.Offset+n.Size > int64(len(tr)) {
				return fmt.Errorf("%s: content %d+%d past the end of layer %d", p, n.Offset, n.Size, n.Layer)
			}
			sum := sha256.Sum256(tr[n.Offset : n.Offset+n.Size])
			e.SHA256 = hex.EncodeToString(sum[:])
		case index.TypeDir:
			e.Type = "dir"
		case index.TypeSymlink:
			e.Type, e.Size, e.Target = "symlink", n.Size, n.Linkname
		case index.TypeFifo:
			e.Type = "fifo"
		case index.TypeChar, index.TypeBlock:
			e.Type = n.Type.String()
			e.Major, e.Minor = uint32(n.Devmajor), uint32(n.Devminor)
		}
		if p == "" {
			p = "."
		}
		m[p] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// compareWithContainerd applies layers with containerd's applier and with
// LayerViews and reports every difference of each layer's directory from
// its view. mtimes are compared except where containerd's is the time of
// unpack: the root, directories no entry described and whiteout devices
// (and then only if the view has such a node there).
func compareWithContainerd(t *testing.T, layers []fstest.Layer) {
	t.Helper()
	b := buildLayers(t, layers)
	start := time.Now().Add(-time.Second)
	dirs, err := containerdApply(t, b.tars)
	if err != nil {
		t.Fatalf("containerd's applier: %v", err)
	}
	views, err := LayerViews(b.tables)
	if err != nil {
		t.Fatalf("LayerViews: %v", err)
	}
	for i, dir := range dirs {
		want, err := fstest.Manifest(dir)
		if err != nil {
			t.Fatal(err)
		}
		got := viewManifest(t, views[i], b.tars)
		var unstable []string
		for p, w := range want {
			n, err := views[i].Lookup(p)
			if err != nil || w.Mtime.Before(start) {
				continue
			}
			if p == "." || (n.IsDir() && n.Implied) || isWhiteout(n) {
				unstable = append(unstable, p)
			}
		}
		diffs := fstest.CompareManifests(got, want, fstest.CompareOptions{IgnoreMtimePaths: unstable})
		for _, d := range diffs {
			t.Errorf("layer %d: view vs containerd: %s", i, d)
		}
		if len(diffs) == 0 {
			t.Logf("layer %d: %d paths alike (%d mtimes of unpack time not compared)", i, len(want), len(unstable))
		}
	}
}

// TestLayerViewsContainerd compares each layer's view with what containerd's
// own applier (pkg/archive of containerd 2.4, as its overlayfs snapshotter
// calls it) writes for that layer: type, mode, owner, size, content, link
// target, xattrs (trusted.overlay.opaque included), device numbers, mtime,
// nlink and hardlink groups of every path.
func TestLayerViewsContainerd(t *testing.T) {
	fstest.RequireRoot(t) // mknod, trusted.* xattrs, chown
	t.Run("corners", func(t *testing.T) {
		layers, _ := cornersContainerdApplies()
		compareWithContainerd(t, layers)
	})
	t.Run("quirks", func(t *testing.T) { compareWithContainerd(t, quirkLayers()) })
	t.Run("merged-usr", func(t *testing.T) { compareWithContainerd(t, mergedUsrLayers()) })
	for seed := int64(1); seed <= 40; seed++ {
		t.Run(fmt.Sprintf("random-%d", seed), func(t *testing.T) {
			compareWithContainerd(t, linksWithinLayers(fstest.Random(seed, 20+int(seed%7)*20)))
		})
	}
}

// TestLayerViewsWhereContainerdFails checks that containerd's applier fails
// on each entry the differential test leaves out, so that the views' own
// choice there (layerview.go) is the only reference, and that LayerViews
// does not fail on them.
func TestLayerViewsWhereContainerdFails(t *testing.T) {
	fstest.RequireRoot(t)
	_, failing := cornersContainerdApplies()
	failing = append(failing, containerdFailures()...)
	for _, f := range failing {
		t.Run(f.name, func(t *testing.T) {
			b := buildLayers(t, f.layers)
			_, err := containerdApply(t, b.tars)
			if err == nil || !strings.Contains(err.Error(), f.wantErr) {
				t.Errorf("containerd's applier: err = %v, want one saying %q", err, f.wantErr)
			} else {
				t.Logf("containerd's applier, as expected: %v", err)
			}
			if _, err := LayerViews(b.tables); err != nil {
				t.Errorf("LayerViews: %v", err)
			}
		})
	}
}

// failingImage is an image containerd's applier cannot apply.
type failingImage struct {
	name    string
	layers  []fstest.Layer
	wantErr string
}

// cornersContainerdApplies returns the corner image without the entries
// containerd's applier fails on, and for each of those the corner image
// with only it put back.
func cornersContainerdApplies() ([]fstest.Layer, []failingImage) {
	leaveOut := map[string]string{
		"upper-link":   "no such file or directory", // hardlink to layer 0's lower-target
		".wh.samewh":   "file exists",               // after samewh/ and samewh/x of the same layer
		".wh.sameanc":  "file exists",               // after sameanc/z
		".wh.samefile": "file exists",               // after samefile
	}
	without := func(keep string) []fstest.Layer {
		layers := fstest.Corners()
		for i := range layers {
			layers[i].Files = slices.DeleteFunc(slices.Clone(layers[i].Files), func(f fstest.File) bool {
				_, out := leaveOut[f.Header.Name]
				return out && f.Header.Name != keep
			})
		}
		return layers
	}
	var failing []failingImage
	for _, name := range slices.Sorted(maps.Keys(leaveOut)) {
		failing = append(failing, failingImage{"corners with " + name, without(name), leaveOut[name]})
	}
	return without(""), failing
}

// Headers for hand-made layers.
var quirkTime = time.Date(2021, 3, 4, 5, 6, 7, 890, time.UTC)

func qdir(name string, mode int64) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: quirkTime, Format: tar.FormatPAX}}
}
func qfile(name string, mode int64, data string) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: quirkTime, Format: tar.FormatPAX}, Data: []byte(data)}
}
func qlink(name, target string, mode int64) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: mode, ModTime: quirkTime.Add(time.Hour), Format: tar.FormatPAX}}
}
func qsym(name, target string) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: quirkTime, Format: tar.FormatPAX}}
}
func qwh(dir, name string) fstest.File {
	return qfile(path.Join(dir, ".wh."+name), 0o644, "")
}
func qopq(dir string) fstest.File { return qfile(dir+"/.wh..wh..opq", 0o644, "") }

func withXattrs(f fstest.File, kv ...string) fstest.File {
	f.Header.PAXRecords = map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		f.Header.PAXRecords["SCHILY.xattr."+kv[i]] = kv[i+1]
	}
	return f
}
func withOwnerFile(f fstest.File, uid, gid int) fstest.File {
	f.Header.Uid, f.Header.Gid = uid, gid
	return f
}
func withTime(f fstest.File, mt time.Time) fstest.File {
	f.Header.ModTime = mt
	return f
}

// capability is a security.capability value (v2, cap_net_bind_service).
const capability = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// quirkLayers is an image of what containerd's applier does that the
// generators do not exercise: in the bottom layer the ignored root entry, a
// directory entry twice (xattrs added up), a hardlink entry's attributes on
// the inode (a file capability dropped by its chown), a whiteout and an
// opaque marker deleting what the layer wrote, xattrs it refuses, an mtime
// before 1970; above it implied parents copying attributes (from below an
// opaque ancestor too), a whiteout or a non-directory then a directory at
// one path, a late opaque marker (over a directory made for a whiteout
// too), missing parents of markers, a hardlink to a symlink, and a
// directory entry whose mtime lands on the file that replaced it.
func quirkLayers() []fstest.Layer {
	root := withOwnerFile(qdir(".", 0o700), 5, 5)
	root.Header.Name = "./"
	l0 := []fstest.File{
		root,
		withXattrs(qdir("q", 0o755), "user.one", "1"),
		withOwnerFile(qfile("q/f", 0o644, "q/f\n"), 7, 7),
		withXattrs(qfile("cap", 0o755, "capable\n"), "security.capability", capability, "user.keep", "k"),
		withOwnerFile(qlink("cap2", "cap", 0o600), 9, 9),
		withXattrs(qdir("q", 0o750), "user.two", "2"),
		qfile("late", 0o644, "whited out by its own layer\n"),
		qwh("", "late"),
		qdir("o", 0o755),
		qfile("o/keep", 0o644, "kept\n"),
		qfile("o/imp/x", 0o644, "in an implied directory\n"),
		qopq("o"),
		withXattrs(qfile("trust", 0o644, "trusted\n"), "trusted.foo", "no", "user.x", "yes"),
		withXattrs(qsym("sl", "trust"), "user.bad", "no"),
		withTime(qfile("old", 0o644, "1969\n"), time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC)),
		qdir("wd", 0o755),
		qfile("wd/a", 0o644, "lower content of wd\n"),
		qfile("gonefile", 0o644, "whited out above\n"),
		qfile("f2", 0o644, "file, then a directory above\n"),
		qdir("op", 0o755),
		qfile("op/theirs", 0o644, "hidden by the late marker above\n"),
		qdir("a", 0o755),
		withOwnerFile(qdir("a/b", 0o700), 3, 4),
		qdir("mk", 0o755),
		qdir("mk/sub", 0o750),
		qfile("mk/sub/f", 0o644, "whited out above, its directory made for the whiteout\n"),
	}
	l1 := []fstest.File{
		qwh("", "gonefile"),
		qwh("", "wd"),
		qdir("wd", 0o700),
		qfile("f2x", 0o644, "a file of this layer\n"),
		qdir("f2x", 0o711),
		qwh("deep/x", "y"),
		qfile("q/new", 0o644, "in an implied q\n"),
		qsym("s1", "trust"),
		withOwnerFile(qlink("s2", "s1", 0o600), 3, 3),
		qdir("op", 0o755),
		qfile("op/mine", 0o644, "mine\n"),
		qopq("op"),
		qopq("a"),
		withTime(qdir("r", 0o755), quirkTime.Add(-time.Hour)),
		qfile("r", 0o644, "a file where a directory entry stood\n"),
		qwh("mk/sub", "f"),
		qfile("mk/new", 0o644, "new\n"),
		qopq("mk"),
	}
	l2 := []fstest.File{
		qfile("a/b/c", 0o644, "below an opaque a, a/b copied from layer 0\n"),
		qfile("wd/b", 0o644, "over the plain wd\n"),
	}
	return []fstest.Layer{{Files: l0}, {Files: l1}, {Files: l2}}
}

// mergedUsrLayers is an image with a merged /usr: lib is a symlink to
// usr/lib in the bottom layer, and the layer above writes through it.
// containerd writes lib/newlib.so at its literal path (the symlink is not
// in the new layer's directory), so overlayfs shows a directory lib hiding
// the symlink; Merge follows the symlink into usr/lib, as umoci does.
func mergedUsrLayers() []fstest.Layer {
	return []fstest.Layer{{Files: []fstest.File{
		qdir("usr", 0o755),
		withOwnerFile(qdir("usr/lib", 0o711), 0, 2),
		qfile("usr/lib/libc.so", 0o755, "libc\n"),
		qsym("lib", "usr/lib"),
		qsym("lib64", "/usr/lib"),
	}}, {Files: []fstest.File{
		qfile("lib/newlib.so", 0o755, "written through the symlink\n"),
		qfile("lib64/x/y.so", 0o755, "through an absolute symlink, below a missing directory\n"),
		qfile("usr/lib/other.so", 0o755, "at its real path\n"),
	}}}
}

// containerdFailures are images containerd's applier fails on, beyond the
// corner image's, where the views follow Merge.
func containerdFailures() []failingImage {
	return []failingImage{{
		name: "a whiteout below a whiteout",
		layers: []fstest.Layer{{Files: []fstest.File{qdir("foo", 0o755), qfile("foo/bar", 0o644, "x")}},
			{Files: []fstest.File{qwh("", "foo"), qwh("foo", "bar")}}},
		wantErr: "not a directory",
	}, {
		name: "an entry below a file of the same layer",
		layers: []fstest.Layer{{Files: []fstest.File{qfile("x", 0o644, "x")}},
			{Files: []fstest.File{qfile("a", 0o644, "a"), qfile("a/b", 0o644, "b")}}},
		wantErr: "not a directory",
	}, {
		name: "an entry below a whiteout of the same layer",
		layers: []fstest.Layer{{Files: []fstest.File{qdir("d", 0o755), qfile("d/low", 0o644, "low")}},
			{Files: []fstest.File{qwh("", "d"), qfile("d/new", 0o644, "new")}}},
		wantErr: "not a directory",
	}}
}

// linksWithinLayers returns layers with every hardlink whose target is not
// written earlier in its own layer replaced by a regular file with the
// target's content (and the link entry's attributes): containerd's applier
// cannot apply those. Paths are as fstest.Random writes them (clean, no
// symlinks on the way).
func linksWithinLayers(layers []fstest.Layer) []fstest.Layer {
	content := map[string][]byte{} // path → the file's content in the merged tree
	out := make([]fstest.Layer, len(layers))
	for i, l := range layers {
		seen := map[string]bool{}
		out[i] = fstest.Layer{Compression: l.Compression}
		for _, f := range l.Files {
			h := f.Header
			name := path.Clean(h.Name)
			dir, base := path.Split(name)
			switch {
			case base == ".wh..wh..opq":
				for p := range content {
					if strings.HasPrefix(p, dir) && !seen[p] {
						delete(content, p)
					}
				}
			case strings.HasPrefix(base, ".wh."):
				gone := path.Join(dir, strings.TrimPrefix(base, ".wh."))
				for p := range content {
					if p == gone || strings.HasPrefix(p, gone+"/") {
						delete(content, p)
					}
				}
			case h.Typeflag == tar.TypeLink:
				target := path.Clean(h.Linkname)
				content[name] = content[target]
				if !seen[target] {
					h.Typeflag, h.Linkname = tar.TypeReg, ""
					f = fstest.File{Header: h, Data: content[target]}
				}
			case h.Typeflag == tar.TypeReg:
				content[name] = f.Data
			}
			seen[name] = true
			out[i].Files = append(out[i].Files, f)
		}
	}
	return out
}
