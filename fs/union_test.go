package fs

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/ocifs/ocifs/index"
)

// Shorthands for building layers in tests.
func dir(name string, mode uint32) index.Entry {
	return index.Entry{Name: name, Type: index.TypeDir, Mode: mode}
}
func reg(name string, off int64) index.Entry {
	return index.Entry{Name: name, Type: index.TypeReg, Mode: 0o644, Offset: off, Size: 1}
}
func sym(name, target string) index.Entry {
	return index.Entry{Name: name, Type: index.TypeSymlink, Mode: 0o777, Linkname: target}
}
func hard(name, target string) index.Entry {
	return index.Entry{Name: name, Type: index.TypeHardlink, Linkname: target}
}
func wh(name string) index.Entry  { return index.Entry{Name: name, Type: index.TypeWhiteout} }
func opq(name string) index.Entry { return index.Entry{Name: name, Type: index.TypeOpaque} }

func layers(ls ...[]index.Entry) []*index.Table {
	var out []*index.Table
	for _, es := range ls {
		out = append(out, &index.Table{Entries: es})
	}
	return out
}

// render lists every path of the tree with what identifies its node:
// "path dir|file@layer:offset|->target", hardlinked files with their link count.
func render(t *testing.T, tree *Tree) string {
	t.Helper()
	var lines []string
	err := tree.Walk(func(p string, n *Node) error {
		var what string
		switch n.Type {
		case index.TypeDir:
			what = fmt.Sprintf("dir %o", n.Mode)
			if n.Implied {
				what += " implied"
			}
		case index.TypeReg:
			what = fmt.Sprintf("file@%d:%d", n.Layer, n.Offset)
			if n.Nlink != 1 {
				what += fmt.Sprintf(" nlink=%d", n.Nlink)
			}
		case index.TypeSymlink:
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

func TestMerge(t *testing.T) {
	tests := []struct {
		name   string
		layers []*index.Table
		want   []string
	}{{
		name:   "implied parents are directories 0755",
		layers: layers([]index.Entry{reg("a/b/c", 0)}),
		want:   []string{"/ dir 755 implied", "/a dir 755 implied", "/a/b dir 755 implied", "/a/b/c file@0:0"},
	}, {
		name:   "root entry sets the root's mode",
		layers: layers([]index.Entry{dir("", 0o700), reg("f", 0)}),
		want:   []string{"/ dir 700", "/f file@0:0"},
	}, {
		name:   "a later entry of the same path wins, in one layer and across layers",
		layers: layers([]index.Entry{reg("f", 1), reg("f", 2), reg("g", 3)}, []index.Entry{reg("g", 4)}),
		want:   []string{"/ dir 755 implied", "/f file@0:2", "/g file@1:4"},
	}, {
		name:   "a directory entry over a directory keeps its children",
		layers: layers([]index.Entry{dir("d", 0o755), reg("d/f", 0)}, []index.Entry{dir("d", 0o700)}),
		want:   []string{"/ dir 755 implied", "/d dir 700", "/d/f file@0:0"},
	}, {
		name:   "whiteout of a file and of a directory with contents",
		layers: layers([]index.Entry{reg("f", 0), dir("d", 0o755), reg("d/x", 1), reg("d/y/z", 2)}, []index.Entry{wh("f"), wh("d")}),
		want:   []string{"/ dir 755 implied"},
	}, {
		name:   "whiteout of a missing path does nothing",
		layers: layers([]index.Entry{reg("f", 0)}, []index.Entry{wh("nope/x"), wh("g")}),
		want:   []string{"/ dir 755 implied", "/f file@0:0"},
	}, {
		name: "opaque directory hides lower contents but keeps its own layer's",
		layers: layers(
			[]index.Entry{dir("d", 0o755), reg("d/low", 0), dir("d/sub", 0o755), reg("d/sub/low", 1)},
			[]index.Entry{dir("d", 0o750), reg("d/new", 2), opq("d"), dir("d/sub", 0o755), reg("d/sub/new", 3)},
		),
		want: []string{"/ dir 755 implied", "/d dir 750", "/d/new file@1:2", "/d/sub dir 755", "/d/sub/new file@1:3"},
	}, {
		name:   "file replaced by a directory and back",
		layers: layers([]index.Entry{reg("p", 0)}, []index.Entry{dir("p", 0o755), reg("p/in", 1)}, []index.Entry{reg("p", 2)}),
		want:   []string{"/ dir 755 implied", "/p file@2:2"},
	}, {
		name:   "symlink replaced by a directory",
		layers: layers([]index.Entry{sym("s", "elsewhere")}, []index.Entry{dir("s", 0o711)}),
		want:   []string{"/ dir 755 implied", "/s dir 711"},
	}, {
		name:   "hardlinks in one layer share a node",
		layers: layers([]index.Entry{reg("a", 7), hard("b", "a"), hard("c", "b")}),
		want:   []string{"/ dir 755 implied", "/a file@0:7 nlink=3", "/b file@0:7 nlink=3", "/c file@0:7 nlink=3"},
	}, {
		name:   "a hardlink keeps the content its target had when it was applied",
		layers: layers([]index.Entry{reg("a", 7)}, []index.Entry{hard("b", "a")}, []index.Entry{reg("a", 9)}),
		want:   []string{"/ dir 755 implied", "/a file@2:9", "/b file@0:7"},
	}, {
		name:   "whiting out one name of a hardlink group drops the count",
		layers: layers([]index.Entry{reg("a", 7), hard("b", "a")}, []index.Entry{wh("a")}),
		want:   []string{"/ dir 755 implied", "/b file@0:7"},
	}, {
		name: "a symlinked parent is followed, as unpackers do (merged /usr)",
		layers: layers(
			[]index.Entry{dir("usr", 0o755), dir("usr/lib", 0o755), sym("lib", "usr/lib"), sym("abs", "/usr")},
			[]index.Entry{reg("lib/x.so", 1), reg("abs/lib/y.so", 2)},
			[]index.Entry{wh("lib/x.so")},
		),
		want: []string{"/ dir 755 implied", "/abs ->/usr", "/lib ->usr/lib", "/usr dir 755", "/usr/lib dir 755", "/usr/lib/y.so file@1:2"},
	}, {
		name: "a whiteout after its own layer's entries hides the lower layers only",
		layers: layers(
			[]index.Entry{dir("d", 0o755), reg("d/lower", 0), reg("f", 1)},
			[]index.Entry{dir("d", 0o700), reg("d/x", 2), wh("d"), reg("f", 3), wh("f")},
		),
		want: []string{"/ dir 755 implied", "/d dir 700", "/d/x file@1:2", "/f file@1:3"},
	}, {
		name: "a whiteout of a directory its layer only wrote inside keeps it, with the lower attributes",
		layers: layers(
			[]index.Entry{dir("a", 0o711), reg("a/old", 0), dir("a/sub", 0o755), reg("a/sub/old", 1)},
			[]index.Entry{reg("a/sub/z", 2), wh("a")},
		),
		want: []string{"/ dir 755 implied", "/a dir 711", "/a/sub dir 755", "/a/sub/z file@1:2"},
	}, {
		name: "a late opaque marker keeps what its layer wrote, through a symlinked parent too",
		layers: layers(
			[]index.Entry{dir("usr", 0o755), dir("usr/o", 0o755), reg("usr/o/lower", 0), dir("usr/o/sub", 0o750), reg("usr/o/sub/low", 1), sym("o", "usr/o")},
			[]index.Entry{reg("o/y", 2), reg("usr/o/sub/new", 3), opq("usr/o")},
		),
		want: []string{"/ dir 755 implied", "/o ->usr/o", "/usr dir 755", "/usr/o dir 755", "/usr/o/sub dir 750", "/usr/o/sub/new file@1:3", "/usr/o/y file@1:2"},
	}, {
		name: "a whiteout of one name of a hardlink written in the same layer removes only the lower name",
		layers: layers(
			[]index.Entry{reg("a", 7)},
			[]index.Entry{hard("b", "a"), wh("a")},
		),
		want: []string{"/ dir 755 implied", "/b file@0:7"},
	}, {
		name:   "a symlink with .. cannot leave the root",
		layers: layers([]index.Entry{sym("up", "../../.."), reg("up/etc/f", 0)}),
		want:   []string{"/ dir 755 implied", "/etc dir 755 implied", "/etc/f file@0:0", "/up ->../../.."},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree, err := Merge(tt.layers)
			if err != nil {
				t.Fatalf("Merge: %v", err)
			}
			if got, want := render(t, tree), strings.Join(tt.want, "\n"); got != want {
				t.Errorf("Merge gave\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestMergeErrors(t *testing.T) {
	tests := []struct {
		name   string
		layers []*index.Table
		want   string
	}{
		{"hardlink to a missing file", layers([]index.Entry{hard("b", "a")}), `hardlink "b" to "a"`},
		{"hardlink to a directory", layers([]index.Entry{dir("d", 0o755), hard("b", "d")}), `hardlink "b" to directory "d"`},
		{"symlink loop in a parent", layers([]index.Entry{sym("a", "b"), sym("b", "a"), reg("a/f", 0)}), "too many levels of symbolic links"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Merge(tt.layers)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Merge error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestMergeInodesAreStable(t *testing.T) {
	ls := layers([]index.Entry{dir("b", 0o755), reg("b/2", 0), reg("a", 1), hard("b/1", "a")}, []index.Entry{reg("c", 2)})
	first, err := Merge(ls)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Merge(ls)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(tree *Tree) map[string]uint64 {
		m := map[string]uint64{}
		tree.Walk(func(p string, n *Node) error { m[p] = n.ID; return nil })
		return m
	}
	a, b := ids(first), ids(second)
	for p, id := range a {
		if b[p] != id {
			t.Errorf("inode of %q: %d then %d", p, id, b[p])
		}
	}
	if a["a"] != a["b/1"] {
		t.Errorf("hardlinks a and b/1 have inodes %d and %d, want one", a["a"], a["b/1"])
	}
	if a[""] != 1 {
		t.Errorf("root inode = %d, want 1", a[""])
	}
	seen := map[uint64]string{}
	for p, id := range a {
		if q, ok := seen[id]; ok && !(p == "a" || p == "b/1") {
			t.Errorf("%q and %q share inode %d", p, q, id)
		}
		seen[id] = p
	}
	if first.Nodes != len(a)-1 {
		t.Errorf("Nodes = %d, want %d", first.Nodes, len(a)-1)
	}
}

func TestMergeDirLinkCount(t *testing.T) {
	tree, err := Merge(layers([]index.Entry{dir("d", 0o755), dir("d/x", 0o755), dir("d/y", 0o755), reg("d/f", 0)}))
	if err != nil {
		t.Fatal(err)
	}
	d, err := tree.Lookup("d")
	if err != nil {
		t.Fatal(err)
	}
	if d.Nlink != 4 {
		t.Errorf("nlink of d = %d, want 4 (2 + two subdirectories)", d.Nlink)
	}
	names := append([]string(nil), d.Names()...)
	if !sort.StringsAreSorted(names) || len(names) != 3 {
		t.Errorf("Names() = %v, want 3 sorted names", names)
	}
}

// TestNodeSize keeps a Node within the 128-byte malloc size class: a mount
// holds one per inode of the image for its whole life.
func TestNodeSize(t *testing.T) {
	if got := unsafe.Sizeof(Node{}); got > 128 {
		t.Errorf("unsafe.Sizeof(Node{}) = %d, want <= 128", got)
	}
}

// BenchmarkMerge merges a 100,000-file layer (1,000 directories of 100
// files, as bench's files100k image) and looks every file up.
func BenchmarkMerge(b *testing.B) {
	var es []index.Entry
	for d := range 1000 {
		dir := fmt.Sprintf("srv/data/d%03d/d%04d", d/100, d)
		for f := range 100 {
			es = append(es, reg(fmt.Sprintf("%s/f%03d.txt", dir, f), int64(len(es))))
		}
	}
	tables := layers(es)
	b.ReportAllocs()
	for b.Loop() {
		tree, err := Merge(tables)
		if err != nil {
			b.Fatal(err)
		}
		for i := range es {
			if _, err := tree.Lookup(es[i].Name); err != nil {
				b.Fatal(err)
			}
		}
	}
}
