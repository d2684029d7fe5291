package fs

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/index"
)

// renderView lists every path of a view as render does, with what overlayfs
// reads from it: "wh" for a whiteout device, " opaque" on an opaque
// directory, and the owner of directories that are not root's.
func renderView(t *testing.T, tree *Tree) string {
	t.Helper()
	var lines []string
	err := tree.Walk(func(p string, n *Node) error {
		var what string
		switch {
		case isWhiteout(n):
			what = "wh"
		case n.Type == index.TypeDir:
			what = fmt.Sprintf("dir %o", n.Mode)
			if n.UID != 0 || n.GID != 0 {
				what += fmt.Sprintf(" %d:%d", n.UID, n.GID)
			}
			if n.Xattrs[opaqueXattr] == "y" {
				what += " opaque"
			}
		case n.Type == index.TypeReg:
			what = fmt.Sprintf("file@%d:%d %o", n.Layer, n.Offset, n.Mode)
			if n.Nlink != 1 {
				what += fmt.Sprintf(" nlink=%d", n.Nlink)
			}
		case n.Type == index.TypeSymlink:
			what = "->" + n.Linkname
		default:
			what = n.Type.String()
		}
		lines = append(lines, "/"+p+" "+what)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func withMode(e index.Entry, mode uint32) index.Entry { e.Mode = mode; return e }
func withOwner(e index.Entry, uid, gid int64) index.Entry {
	e.UID, e.GID = uid, gid
	return e
}

// TestLayerView pins the rules of layerview.go on small layer tables, one
// case per rule; the differential test against containerd's own applier
// (TestLayerViewsContainerd) checks them on real tars.
func TestLayerView(t *testing.T) {
	tests := []struct {
		name   string
		layers []*index.Table
		want   []string // the top layer's view
	}{{
		name:   "whiteout is a device, opaque marker an xattr",
		layers: layers([]index.Entry{dir("d", 0o755), reg("d/f", 1), reg("g", 2)}, []index.Entry{wh("g"), opq("d")}),
		want:   []string{"/ dir 755", "/d dir 755 opaque", "/g wh"},
	}, {
		name:   "bottom layer: a whiteout deletes, even what the layer wrote",
		layers: layers([]index.Entry{reg("a", 1), wh("a"), reg("b", 2)}),
		want:   []string{"/ dir 755", "/b file@0:2 644"},
	}, {
		name:   "bottom layer: an opaque marker deletes what the layer only implied",
		layers: layers([]index.Entry{dir("d", 0o700), reg("d/i/x", 1), reg("d/f", 2), opq("d")}),
		want:   []string{"/ dir 755", "/d dir 700", "/d/f file@0:2 644"},
	}, {
		name:   "implied parents copy the attributes of the directory below",
		layers: layers([]index.Entry{withOwner(dir("d", 0o2750), 5, 6), reg("d/f", 1)}, []index.Entry{reg("d/g", 2)}),
		want:   []string{"/ dir 755", "/d dir 2750 5:6", "/d/g file@1:2 644"},
	}, {
		name: "implied parents: the first layer below with the path decides",
		layers: layers([]index.Entry{dir("d", 0o700)}, []index.Entry{wh("d"), reg("x", 1)},
			[]index.Entry{reg("d/g", 2)}),
		want: []string{"/ dir 755", "/d dir 755", "/d/g file@2:2 644"},
	}, {
		name:   "implied parents copy from below an opaque ancestor (containerd)",
		layers: layers([]index.Entry{dir("a", 0o755), dir("a/b", 0o700)}, []index.Entry{opq("a")}, []index.Entry{reg("a/b/c", 3)}),
		want:   []string{"/ dir 755", "/a dir 755", "/a/b dir 700", "/a/b/c file@2:3 644"},
	}, {
		name:   "implied parents follow a lower layer's own symlinks",
		layers: layers([]index.Entry{dir("usr", 0o755), dir("usr/lib", 0o711), sym("lib", "usr/lib")}, []index.Entry{reg("lib/x", 1)}),
		want:   []string{"/ dir 755", "/lib dir 711", "/lib/x file@1:1 644"},
	}, {
		name:   "the layer's own symlinks are followed",
		layers: layers([]index.Entry{sym("l", "/real"), reg("l/x", 1)}),
		want:   []string{"/ dir 755", "/l ->/real", "/real dir 755", "/real/x file@0:1 644"},
	}, {
		name:   "markers create missing parents",
		layers: layers([]index.Entry{reg("f", 1)}, []index.Entry{wh("a/b/c"), opq("o")}),
		want:   []string{"/ dir 755", "/a dir 755", "/a/b dir 755", "/a/b/c wh", "/o dir 755 opaque"},
	}, {
		name:   "a marker under a whiteout is a no-op",
		layers: layers([]index.Entry{dir("foo", 0o755), reg("foo/bar", 1)}, []index.Entry{wh("foo"), wh("foo/bar")}),
		want:   []string{"/ dir 755", "/foo wh"},
	}, {
		name:   "late whiteout of a directory the layer wrote: opaque",
		layers: layers([]index.Entry{dir("d", 0o755), reg("d/low", 1)}, []index.Entry{dir("d", 0o700), reg("d/x", 2), wh("d")}),
		want:   []string{"/ dir 755", "/d dir 700 opaque", "/d/x file@1:2 644"},
	}, {
		name: "late whiteout of a directory made for markers: a whiteout",
		layers: layers([]index.Entry{dir("d", 0o755), dir("d/s", 0o755), reg("d/s/f", 1)},
			[]index.Entry{wh("d/s/f"), wh("d")}),
		want: []string{"/ dir 755", "/d wh"},
	}, {
		name: "late whiteout of a directory the layer wrote in: marker-only directories go",
		layers: layers([]index.Entry{dir("d", 0o755), dir("d/s", 0o755), reg("d/s/f", 1)},
			[]index.Entry{wh("d/s/f"), reg("d/x", 2), wh("d")}),
		want: []string{"/ dir 755", "/d dir 755 opaque", "/d/x file@1:2 644"},
	}, {
		name: "late opaque marker keeps a directory made for a marker (containerd)",
		layers: layers([]index.Entry{dir("d", 0o755), dir("d/s", 0o750), reg("d/s/f", 1)},
			[]index.Entry{wh("d/s/f"), opq("d")}),
		want: []string{"/ dir 755", "/d dir 755 opaque", "/d/s dir 750", "/d/s/f wh"},
	}, {
		name:   "late whiteout of a file the layer wrote: the file stays",
		layers: layers([]index.Entry{reg("f", 1)}, []index.Entry{reg("f", 2), wh("f")}),
		want:   []string{"/ dir 755", "/f file@1:2 644"},
	}, {
		name:   "a whiteout, then a directory: a plain directory (containerd)",
		layers: layers([]index.Entry{dir("d", 0o755), reg("d/low", 1)}, []index.Entry{wh("d"), dir("d", 0o700)}),
		want:   []string{"/ dir 755", "/d dir 700"},
	}, {
		name:   "a whiteout, then a file below it: an opaque directory",
		layers: layers([]index.Entry{dir("d", 0o755), reg("d/low", 1)}, []index.Entry{wh("d"), reg("d/new", 2)}),
		want:   []string{"/ dir 755", "/d dir 755 opaque", "/d/new file@1:2 644"},
	}, {
		name:   "a hardlink applies its own mode to the inode",
		layers: layers([]index.Entry{reg("f", 1), withMode(hard("g", "f"), 0o600)}),
		want:   []string{"/ dir 755", "/f file@0:1 600 nlink=2", "/g file@0:1 600 nlink=2"},
	}, {
		name:   "a hardlink to a lower file is a file of its own, with the lower attributes",
		layers: layers([]index.Entry{reg("f", 1)}, []index.Entry{hard("g", "f")}),
		want:   []string{"/ dir 755", "/g file@0:1 644"},
	}, {
		name:   "a hardlink to a hardlink to a lower file shares it",
		layers: layers([]index.Entry{reg("f", 1)}, []index.Entry{hard("g", "f"), withMode(hard("h", "g"), 0o640)}),
		want:   []string{"/ dir 755", "/g file@0:1 640 nlink=2", "/h file@0:1 640 nlink=2"},
	}, {
		name:   "a hardlink to itself keeps the file",
		layers: layers([]index.Entry{reg("f", 1), hard("f", "f")}),
		want:   []string{"/ dir 755", "/f file@0:1 0"},
	}, {
		name:   "the root entry is ignored",
		layers: layers([]index.Entry{withOwner(dir("", 0o700), 1, 1), reg("f", 1)}),
		want:   []string{"/ dir 755", "/f file@0:1 644"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			views, err := LayerViews(tt.layers)
			if err != nil {
				t.Fatalf("LayerViews: %v", err)
			}
			got := renderView(t, views[len(views)-1])
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("top view:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestLayerViewAttributes checks what the view of a layer keeps of its
// entries' attributes: xattrs (not trusted.*, not user.* on a symlink),
// the mtime of a directory (its last entry's, once every entry is written),
// symlink modes, and out-of-range mtimes.
func TestLayerViewAttributes(t *testing.T) {
	t1 := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	t2 := t1.Add(time.Hour)
	d1 := index.Entry{Name: "d", Type: index.TypeDir, Mode: 0o755, ModTime: t1,
		Xattrs: map[string]string{"user.a": "1", "trusted.overlay.opaque": "y", "security.x": "s"}}
	d2 := index.Entry{Name: "d", Type: index.TypeDir, Mode: 0o700, ModTime: t2, Xattrs: map[string]string{"user.b": "2"}}
	l := index.Entry{Name: "d/l", Type: index.TypeSymlink, Mode: 0o644, Linkname: "x", ModTime: time.Unix(-5, 0),
		Xattrs: map[string]string{"user.c": "3", "security.y": "t"}}
	views, err := LayerViews(layers([]index.Entry{d1, l, d2, reg("d/f", 1)}))
	if err != nil {
		t.Fatal(err)
	}
	d, err := views[0].Lookup("d")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"user.a": "1", "user.b": "2", "security.x": "s"}; fmt.Sprint(d.Xattrs) != fmt.Sprint(want) {
		t.Errorf("d xattrs = %v, want %v (added up, no trusted.*)", d.Xattrs, want)
	}
	if !d.ModTime.Equal(t2) || d.Mode != 0o700 {
		t.Errorf("d mtime %v mode %o, want %v and 0700 (the last entry's)", d.ModTime, d.Mode, t2)
	}
	s, err := views[0].Lookup("d/l")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"security.y": "t"}; fmt.Sprint(s.Xattrs) != fmt.Sprint(want) {
		t.Errorf("d/l xattrs = %v, want %v (no user.* on a symlink)", s.Xattrs, want)
	}
	if s.Mode != 0o777 || !s.ModTime.Equal(time.Unix(0, 0)) {
		t.Errorf("d/l mode %o mtime %v, want 0777 and the Unix epoch", s.Mode, s.ModTime)
	}
	if d1.Xattrs["trusted.overlay.opaque"] != "y" || len(d1.Xattrs) != 3 {
		t.Errorf("the entry's own xattrs changed: %v", d1.Xattrs)
	}
}

// TestLayerViewNumbering checks that each view numbers its nodes 1..n in
// depth-first name order, the root first, hardlinked names sharing one.
func TestLayerViewNumbering(t *testing.T) {
	views, err := LayerViews(layers([]index.Entry{reg("b/x", 1), reg("a", 2), hard("c", "a")}, []index.Entry{reg("z", 3), wh("a")}))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"/:1 /a:2 /b:3 /b/x:4 /c:2", "/:1 /a:2 /z:3"} {
		var got []string
		views[i].Walk(func(p string, n *Node) error {
			got = append(got, fmt.Sprintf("/%s:%d", p, n.ID))
			return nil
		})
		if strings.Join(got, " ") != want {
			t.Errorf("view %d numbered %s, want %s", i, strings.Join(got, " "), want)
		}
	}
	if views[0].Nodes != 4 || views[1].Nodes != 3 {
		t.Errorf("Nodes = %d, %d; want 4, 3", views[0].Nodes, views[1].Nodes)
	}
}

// BenchmarkLayerViews computes the views of three layers: BenchmarkMerge's
// 100,000 files, then 10,000 files written into those directories (their
// parents implied, attributes looked up below) with 1,000 whiteouts, then
// 1,000 hardlinks to files of the bottom layer. "merge" merges the same
// layers, for scale.
func BenchmarkLayerViews(b *testing.B) {
	var base, upper, links []index.Entry
	for d := range 1000 {
		dir := fmt.Sprintf("srv/data/d%03d/d%04d", d/100, d)
		for f := range 100 {
			base = append(base, reg(fmt.Sprintf("%s/f%03d.txt", dir, f), int64(len(base))))
		}
		for f := range 10 {
			upper = append(upper, reg(fmt.Sprintf("%s/new%02d.txt", dir, f), int64(len(upper))))
		}
		upper = append(upper, wh(fmt.Sprintf("%s/f000.txt", dir)))
		links = append(links, hard(fmt.Sprintf("links/l%04d", d), fmt.Sprintf("%s/f001.txt", dir)))
	}
	tables := layers(base, upper, links)
	b.Run("views", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := LayerViews(tables); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("merge", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Merge(tables); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestLayerViewErrors checks that a view fails where Merge does: a hardlink
// to a directory (itself included) or to nothing, a symlink loop.
func TestLayerViewErrors(t *testing.T) {
	for _, tt := range []struct {
		name   string
		layers []*index.Table
	}{
		{"hardlink to a directory", layers([]index.Entry{dir("d", 0o755), hard("l", "d")})},
		{"hardlink of a directory to itself", layers([]index.Entry{dir("d", 0o755), hard("d", "d")})},
		{"hardlink to a lower directory", layers([]index.Entry{dir("d", 0o755)}, []index.Entry{hard("l", "d")})},
		{"hardlink to nothing", layers([]index.Entry{reg("f", 1)}, []index.Entry{hard("l", "g")})},
		{"symlink loop", layers([]index.Entry{sym("a", "b"), sym("b", "a"), reg("a/x", 1)})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Merge(tt.layers); err == nil {
				t.Fatalf("Merge: no error; the case is wrong")
			}
			_, err := LayerViews(tt.layers)
			if !errors.Is(err, ErrFormat) {
				t.Errorf("LayerViews: err = %v, want ErrFormat", err)
			}
		})
	}
}
