package fs

import (
	"errors"
	"testing"

	"github.com/ocifs/ocifs/index"
)

// fuzzTree is a small tree with two symlinks whose targets come from the
// fuzzer, as an image's would.
func fuzzTree(t *testing.T, target1, target2 string) *Tree {
	t.Helper()
	tree, err := Merge([]*index.Table{{Entries: []index.Entry{
		{Name: "a", Type: index.TypeDir, Mode: 0o755},
		{Name: "a/b", Type: index.TypeDir, Mode: 0o755},
		{Name: "a/b/f", Type: index.TypeReg, Mode: 0o644, Size: 3},
		{Name: "l1", Type: index.TypeSymlink, Mode: 0o777, Linkname: target1},
		{Name: "a/l2", Type: index.TypeSymlink, Mode: 0o777, Linkname: target2},
	}}})
	if err != nil {
		t.Fatalf("merge: %v", err)
	}
	return tree
}

func TestResolve(t *testing.T) {
	tree := fuzzTree(t, "a/l2", "../a/./b/f")
	tests := []struct {
		path   string
		follow bool
		want   string // "" for the root; names a node by a path Lookup takes
		err    error
	}{
		{"/", true, "", nil},
		{"../../a/b/f", true, "a/b/f", nil},
		{"/l1", true, "a/b/f", nil},
		{"/l1", false, "l1", nil},
		{"/a/l2", false, "a/l2", nil},
		{"/a/b/../../a/b/f", true, "a/b/f", nil},
		{"/a/b/f/x", true, "", errNotDir},
		{"/a/nope", true, "", errNoEntry},
		{"/l1/x", true, "", errNotDir},
	}
	for _, tt := range tests {
		got, err := tree.Resolve(tt.path, tt.follow)
		if !errors.Is(err, tt.err) {
			t.Errorf("Resolve(%q) err = %v, want %v", tt.path, err, tt.err)
			continue
		}
		if tt.err != nil {
			continue
		}
		want, err := tree.Lookup(tt.want)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("Resolve(%q, %v) = inode %d, want %d (%s)", tt.path, tt.follow, got.ID, want.ID, tt.want)
		}
	}
	loop := fuzzTree(t, "a/l2", "/l1")
	if _, err := loop.Resolve("/l1", true); !errors.Is(err, errSymlinks) {
		t.Errorf("Resolve of a symlink loop: err = %v, want %v", err, errSymlinks)
	}
}

// FuzzResolvePath checks that symlink targets from an image cannot make path
// resolution panic, loop forever, or end on anything but a tree node.
func FuzzResolvePath(f *testing.F) {
	f.Add("a/l2", "../a/./b/f", "/l1/x", true)
	f.Add("/l1", "/a/l2", "l1", true)
	f.Add("../../../..", "/", "a/l2/b/f", false)
	f.Add("a/b/f/", "//a//b//", "./a/./l2/./../l2", true)
	f.Fuzz(func(t *testing.T, target1, target2, p string, follow bool) {
		if target1 == "" || target2 == "" || len(p) > 4096 || len(target1)+len(target2) > 4096 {
			return
		}
		tree := fuzzTree(t, target1, target2)
		n, err := tree.Resolve(p, follow)
		if err != nil {
			if n != nil {
				t.Errorf("Resolve(%q) returned a node with error %v", p, err)
			}
			if !errors.Is(err, errNoEntry) && !errors.Is(err, errNotDir) && !errors.Is(err, errSymlinks) {
				t.Errorf("Resolve(%q): unexpected error %v", p, err)
			}
			return
		}
		found := false
		_ = tree.Walk(func(_ string, m *Node) error {
			found = found || m == n
			return nil
		})
		if !found {
			t.Errorf("Resolve(%q) returned a node not in the tree", p)
		}
		if follow && n.Type == index.TypeSymlink {
			t.Errorf("Resolve(%q, follow) ended on a symlink", p)
		}
	})
}
