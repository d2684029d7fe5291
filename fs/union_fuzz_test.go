package fs

import (
	"path"
	"slices"
	"testing"

	"github.com/ocifs/ocifs/index"
)

// fuzzNames are few and short so that random entries collide: the same path
// written, whited out, linked and replaced across layers.
var fuzzNames = []string{"a", "b", "c", "a/b", "a/c", "b/a", "a/b/c", "c/a/b", "../a"}

// fuzzLayers decodes bytes into layers: each entry takes three bytes (kind,
// name, target); a 0xff kind byte starts a new layer.
func fuzzLayers(data []byte) []*index.Table {
	tables := []*index.Table{{}}
	for len(data) >= 3 {
		k, n, tg := data[0], data[1], data[2]
		data = data[3:]
		if k == 0xff {
			tables = append(tables, &index.Table{})
			continue
		}
		name := path.Clean(fuzzNames[int(n)%len(fuzzNames)])
		for len(name) > 3 && name[:3] == "../" {
			name = name[3:]
		}
		target := fuzzNames[int(tg)%len(fuzzNames)]
		e := index.Entry{Name: name, Mode: uint32(tg) & 0o7777, Offset: int64(tg), Size: int64(n)}
		switch k % 8 {
		case 0:
			e.Type = index.TypeReg
		case 1:
			e.Type = index.TypeDir
		case 2:
			e.Type, e.Linkname = index.TypeSymlink, target
		case 3:
			e.Type, e.Linkname = index.TypeHardlink, path.Clean(target)
		case 4:
			e.Type = index.TypeWhiteout
		case 5:
			e.Type = index.TypeOpaque
		case 6:
			e.Type = index.TypeFifo
		case 7:
			e.Type, e.Linkname = index.TypeSymlink, "/"+target
		}
		t := tables[len(tables)-1]
		t.Entries = append(t.Entries, e)
	}
	return tables
}

// FuzzMerge checks that Merge never panics and that every tree it returns is
// consistent: names sorted, inode numbers unique per node, link counts equal
// to the names and subdirectories that point at each node.
func FuzzMerge(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 0, 0xff, 0, 0, 4, 0, 2})
	f.Add([]byte{1, 0, 0, 0, 3, 0, 0xff, 0, 5, 3, 0, 0, 0, 0xff, 0, 4, 0, 0})
	f.Add([]byte{2, 1, 0, 0, 5, 1, 7, 2, 3, 0, 8, 1})
	f.Add([]byte{2, 0, 1, 2, 1, 0, 0, 3, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		tree, err := Merge(fuzzLayers(data))
		if err != nil {
			return
		}
		names := map[*Node]uint32{}
		ids := map[uint64]*Node{}
		err = tree.Walk(func(p string, n *Node) error {
			if other, ok := ids[n.ID]; ok && other != n {
				t.Fatalf("%q: inode %d shared by two nodes", p, n.ID)
			}
			ids[n.ID] = n
			if !n.IsDir() {
				names[n]++
				return nil
			}
			if !slices.IsSorted(n.Names()) || len(n.Names()) != len(n.dir.nodes) {
				t.Fatalf("%q: names %v not sorted or not the children", p, n.Names())
			}
			subdirs := uint32(0)
			for _, name := range n.Names() {
				if n.Child(name).IsDir() {
					subdirs++
				}
			}
			if n.Nlink != 2+subdirs {
				t.Fatalf("%q: dir nlink %d, want %d", p, n.Nlink, 2+subdirs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for n, count := range names {
			if n.Nlink != count {
				t.Fatalf("inode %d: nlink %d, but %d names", n.ID, n.Nlink, count)
			}
		}
		if len(ids) != tree.Nodes {
			t.Fatalf("Nodes = %d, walked %d", tree.Nodes, len(ids))
		}
	})
}
