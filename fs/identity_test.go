package fs

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// identityLayers is a small image of nested directories, files, a hardlink
// and a symlink; the image of another tag has the same paths with other
// bytes, so its node ids are the same numbers.
func identityLayers(tag string) []fstest.Layer {
	mt := time.Date(2022, 2, 3, 4, 5, 6, 0, time.UTC)
	h := func(typ byte, name string, mode int64) tar.Header {
		return tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: mt, Format: tar.FormatPAX}
	}
	dir := func(name string) fstest.File { return fstest.File{Header: h(tar.TypeDir, name+"/", 0o755)} }
	file := func(name string) fstest.File {
		return fstest.File{Header: h(tar.TypeReg, name, 0o644), Data: []byte(tag + ": " + name + "\n")}
	}
	link := fstest.File{Header: h(tar.TypeLink, "d/hard", 0o644)}
	link.Header.Linkname = "d/g1"
	sym := fstest.File{Header: h(tar.TypeSymlink, "s", 0o777)}
	sym.Header.Linkname = "a/b"
	return []fstest.Layer{
		{Compression: fstest.Gzip, Files: []fstest.File{
			dir("a"), file("a/f1"), dir("a/b"), file("a/b/f2"), dir("a/b/c"), file("a/b/c/f3"),
			dir("d"), file("d/g1"), file("d/g2"), file("d/g3"), file("d/g4"), file("d/g5"), link, sym, file("top"),
		}},
		{Compression: fstest.Gzip, Files: []fstest.File{
			file("a/b/f4"), file("d/.wh.g5"), file("top"),
		}},
	}
}

// identity is what a mount says about one path: its inode number and file
// handle, and what it holds (a file's bytes, a directory's names).
type identity struct {
	ino    uint64
	handle unix.FileHandle
	dir    bool
	bytes  []byte
	names  []string
}

// identities looks up every path of the mount at mnt in the order given
// (nil: a walk in name order) and records each one's identity.
func identities(t *testing.T, mnt string, order []string) map[string]identity {
	t.Helper()
	if order == nil {
		err := filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err == nil && p != mnt && d.Type()&fs.ModeSymlink == 0 {
				rel, _ := filepath.Rel(mnt, p)
				order = append(order, rel)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]identity{}
	for _, p := range order {
		full := filepath.Join(mnt, p)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			t.Fatal(err)
		}
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, full, 0)
		if err != nil {
			t.Fatalf("name_to_handle_at %s: %v", full, err)
		}
		id := identity{ino: st.Ino, handle: h, dir: st.Mode&unix.S_IFMT == unix.S_IFDIR}
		if id.dir {
			ents, err := os.ReadDir(full)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				id.names = append(id.names, e.Name())
			}
		} else if id.bytes, err = os.ReadFile(full); err != nil {
			t.Fatal(err)
		}
		ids[p] = id
	}
	return ids
}

// openHandle opens the node file handle h names on the mount at mnt.
func openHandle(t *testing.T, mnt string, h unix.FileHandle) (*os.File, error) {
	t.Helper()
	mfd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	fd, err := unix.OpenByHandleAt(mfd, h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "handle"), nil
}

// checkResolves decodes every handle of ids on the mount at mnt, deepest
// paths first (so a directory's parents are not known to the kernel yet
// when it is reconnected), and checks that each names its own path's node.
func checkResolves(t *testing.T, what, mnt string, ids map[string]identity) {
	t.Helper()
	paths := slices.Sorted(func(yield func(string) bool) {
		for p := range ids {
			if !yield(p) {
				return
			}
		}
	})
	slices.Reverse(paths)
	for _, p := range paths {
		id := ids[p]
		f, err := openHandle(t, mnt, id.handle)
		if err != nil {
			t.Errorf("%s: open_by_handle_at of %s: %v", what, p, err)
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Ino != id.ino {
			t.Errorf("%s: the handle of %s opens inode %d (%v), want %d", what, p, st.Ino, err, id.ino)
		}
		if id.dir {
			names, err := f.Readdirnames(-1)
			slices.Sort(names)
			if err != nil || !slices.Equal(names, id.names) {
				t.Errorf("%s: the handle of directory %s lists %q (%v), want %q", what, p, names, err, id.names)
			}
		} else if b, err := io.ReadAll(f); err != nil || !bytes.Equal(b, id.bytes) {
			t.Errorf("%s: the handle of %s reads %q (%v), want %q", what, p, b, err, id.bytes)
		}
		f.Close()
	}
}

// checkStale decodes every handle of ids on the mount at mnt and wants
// ESTALE for each: they are handles of another mount's nodes.
func checkStale(t *testing.T, what, mnt string, ids map[string]identity) {
	t.Helper()
	for p, id := range ids {
		f, err := openHandle(t, mnt, id.handle)
		if err == nil {
			var st unix.Stat_t
			_ = unix.Fstat(int(f.Fd()), &st)
			f.Close()
			t.Errorf("%s: the handle of %s opened inode %d; want ESTALE", what, p, st.Ino)
		} else if !errors.Is(err, unix.ESTALE) {
			t.Errorf("%s: the handle of %s: %v; want ESTALE", what, p, err)
		}
	}
}

// forged is h with its node id replaced: FUSE encodes a handle as the node
// id (two 32-bit words, high first) and the 32-bit generation.
func forged(t *testing.T, h unix.FileHandle, id uint64) unix.FileHandle {
	t.Helper()
	b := slices.Clone(h.Bytes())
	if len(b) != 12 {
		t.Fatalf("FUSE file handle of %d bytes (type %#x), want 12", len(b), h.Type())
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(id>>32))
	binary.NativeEndian.PutUint32(b[4:], uint32(id))
	return unix.NewFileHandle(h.Type(), b)
}

// TestFileHandlesAcrossMounts: a node's id and file handle are the same in
// every mount of an image, whatever order the paths are looked up in; a
// handle decodes to its own node in a mount that has looked the path up,
// and with ExportHandles in one that has not (the kernel asks the daemon
// for the node id). A handle of a mount of another image, or of a
// progressive mount, gives ESTALE, never another file.
func TestFileHandlesAcrossMounts(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	refA, _ := pushPlain(t, host, "identity/a", identityLayers("A"))
	refB, _ := pushPlain(t, host, "identity/b", identityLayers("B"))
	mountRef := func(ref string, export bool) string {
		return mountWith(t, loadImage(t, newClient(t, "", nil), ref), MountOptions{ExportHandles: export}).Dir
	}

	a1 := identities(t, mountRef(refA, false), nil)
	if len(a1) < 12 {
		t.Fatalf("the image has %d paths, want the fixture's", len(a1))
	}
	var reverse []string
	for p := range a1 {
		reverse = append(reverse, p)
	}
	slices.Sort(reverse)
	slices.Reverse(reverse)

	t.Run("same image, another lookup order", func(t *testing.T) {
		mnt := mountRef(refA, false)
		a2 := identities(t, mnt, reverse)
		for p, id := range a1 {
			if a2[p].ino != id.ino {
				t.Errorf("%s: inode %d in one mount, %d in another", p, id.ino, a2[p].ino)
			}
			if h := a2[p].handle; h.Type() != id.handle.Type() || !bytes.Equal(h.Bytes(), id.handle.Bytes()) {
				t.Errorf("%s: file handle %x in one mount, %x in another", p, id.handle.Bytes(), h.Bytes())
			}
		}
		checkResolves(t, "looked up", mnt, a1)
	})

	t.Run("same image, nothing looked up", func(t *testing.T) {
		checkStale(t, "fresh mount without ExportHandles", mountRef(refA, false), a1)
		mnt := mountRef(refA, true)
		checkResolves(t, "fresh mount", mnt, a1)
		h := a1["a/f1"].handle
		for _, id := range []uint64{1 << 20, 1<<32 + 3} {
			if f, err := openHandle(t, mnt, forged(t, h, id)); !errors.Is(err, unix.ESTALE) {
				t.Errorf("a handle of node id %d, which the image does not have: %v; want ESTALE", id, err)
				if f != nil {
					f.Close()
				}
			}
		}
	})

	t.Run("another image", func(t *testing.T) {
		mnt := mountRef(refB, true)
		checkStale(t, "fresh mount of another image", mnt, a1)
		b := identities(t, mnt, nil)
		checkStale(t, "mount of another image, every path looked up", mnt, a1)
		checkResolves(t, "its own handles", mnt, b)
	})

	t.Run("progressive", func(t *testing.T) {
		im := resolveLoad(t, newClient(t, "", nil), refA, progressiveOpts(t, true))
		if im.prog == nil {
			t.Fatal("the load is not progressive")
		}
		p1 := mountImage(t, im)
		p := identities(t, p1, nil)
		checkStale(t, "progressive mount, handles of a plain one", p1, a1)
		plain := mountRef(refA, false)
		identities(t, plain, nil)
		checkStale(t, "plain mount, handles of a progressive one", plain, p)

		// A second mount of the same load shares its numbering.
		p2 := mountWith(t, im, MountOptions{ExportHandles: true}).Dir
		checkResolves(t, "second mount of the progressive load", p2, p)
		if f, err := openHandle(t, p2, forged(t, p["a/f1"].handle, 1<<20)); !errors.Is(err, unix.ESTALE) {
			t.Errorf("a handle of a node id the progressive load never gave: %v; want ESTALE", err)
			if f != nil {
				f.Close()
			}
		}
		// Another progressive load of the same image numbers by its own
		// order, so its handles are its own.
		other := mountImage(t, resolveLoad(t, newClient(t, "", nil), refA, progressiveOpts(t, true)))
		identities(t, other, nil)
		checkStale(t, "another progressive load", other, p)
	})
}

// identityTables are layers with nested and implied directories, a
// hardlink across directories, a whiteout and an opaque directory.
func identityTables() []*index.Table {
	return layers(
		[]index.Entry{dir("a", 0o755), reg("a/f", 0), dir("a/b", 0o755), reg("a/b/g", 1), dir("a/b/c", 0o755),
			reg("z/implied/h", 2), hard("z/link", "a/f"), dir("m", 0o755), reg("m/old", 3), sym("s", "a")},
		[]index.Entry{opq("m/.wh..wh..opq"), reg("m/new", 4), wh("a/b/.wh.g"), dir("a/b/d", 0o755), reg("a/b/d/e", 5)},
	)
}

// TestTreeByIDAndParent: every node is found by its number, and every
// directory's parent and name are found from the depth-first numbering.
func TestTreeByIDAndParent(t *testing.T) {
	tree, err := Merge(identityTables())
	if err != nil {
		t.Fatal(err)
	}
	if tree.byID(0) != nil || tree.byID(uint64(tree.Nodes)+1) != nil || tree.byID(1<<40) != nil {
		t.Errorf("byID answers a number the tree does not have")
	}
	paths := 0
	err = tree.Walk(func(p string, n *Node) error {
		paths++
		if got := tree.byID(n.ID); got != n {
			t.Errorf("byID(%d) = %p, want the node at %q (%p)", n.ID, got, p, n)
		}
		if !n.IsDir() {
			return nil
		}
		parent, name := tree.parentOf(n)
		if p == "" {
			if parent != nil {
				t.Errorf("parentOf(root) = %p %q, want none", parent, name)
			}
			return nil
		}
		dir, base := path.Split(p)
		want, err := tree.Lookup(dir)
		if err != nil {
			return err
		}
		if parent != want || name != base {
			t.Errorf("parentOf(%q) = node %d %q, want node %d %q", p, parent.ID, name, want.ID, base)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if paths != tree.Nodes+1 { // z/link and a/f are one node
		t.Errorf("%d paths for %d nodes, want one hardlink", paths, tree.Nodes)
	}
	if d, _ := tree.parentOf(&Node{ID: 3, Type: index.TypeDir}); d != nil {
		t.Errorf("parentOf a directory not in the tree = node %d, want none", d.ID)
	}
}

// TestTreeGeneration: the generation is a function of the DiffIDs and the
// numbered tree, never 0, never with the progressive bit.
func TestTreeGeneration(t *testing.T) {
	diffIDs := []string{"sha256:aa", "sha256:bb"}
	gen := func(tables []*index.Table, diffIDs []string) uint32 {
		t.Helper()
		tree, err := Merge(tables)
		if err != nil {
			t.Fatal(err)
		}
		return treeGeneration(diffIDs, tree)
	}
	g := gen(identityTables(), diffIDs)
	if g == 0 || g&progressiveGen != 0 {
		t.Errorf("generation %#x: want nonzero with the progressive bit clear", g)
	}
	if again := gen(identityTables(), diffIDs); again != g {
		t.Errorf("generation %#x, then %#x for the same layers", g, again)
	}
	if other := gen(identityTables(), []string{"sha256:aa", "sha256:cc"}); other == g {
		t.Errorf("generation %#x for other DiffIDs too", g)
	}
	renamed := identityTables()
	renamed[1].Entries[1].Name = "m/new2" // same shape, another name
	if other := gen(renamed, diffIDs); other == g {
		t.Errorf("generation %#x for a tree with another name too", g)
	}
	retyped := identityTables()
	retyped[0].Entries[9] = index.Entry{Name: "s", Type: index.TypeReg, Mode: 0o644, Offset: 6, Size: 1}
	if other := gen(retyped, diffIDs); other == g {
		t.Errorf("generation %#x for a tree with a symlink made a file too", g)
	}
}

// BenchmarkHandleIdentity measures what a mount of a 100,000-file tree (as
// BenchmarkMerge's) spends on handles: the generation, once per mount, and
// the node index, once per mount that decodes a handle.
func BenchmarkHandleIdentity(b *testing.B) {
	var es []index.Entry
	for d := range 1000 {
		dir := fmt.Sprintf("srv/data/d%03d/d%04d", d/100, d)
		for f := range 100 {
			es = append(es, reg(fmt.Sprintf("%s/f%03d.txt", dir, f), int64(len(es))))
		}
	}
	tree, err := Merge(layers(es))
	if err != nil {
		b.Fatal(err)
	}
	diffIDs := []string{"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
	b.Run("generation", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			treeGeneration(diffIDs, tree)
		}
	})
	b.Run("index", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tree.byIDs = nodeIndex{}
			if tree.byID(uint64(tree.Nodes)) == nil {
				b.Fatal("the last node is not indexed")
			}
		}
		b.ReportMetric(float64(cap(tree.byIDs.nodes)*8)/float64(tree.Nodes), "index-bytes/node")
	})
}

// TestProgressiveHandlesWhileStreaming: a handle taken while the stream of
// a progressive load is held back decodes, in another mount of the load
// that never looked its path up, to the same file, before the final tree
// and after it: the final tree keeps the numbers the load gave.
func TestProgressiveHandlesWhileStreaming(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(5, 200)
	ref, img := pushPlain(t, host, "identity/progressive", layers)
	blob := img.LayerDescs[0]
	first := "data/f0000.txt"
	gate := newGate(blob.Digest.String(), blob.Size/2, 0)
	im := resolveLoad(t, newClient(t, "", gate), ref, progressiveOpts(t, true))
	p1 := mountWith(t, im, MountOptions{}).Dir
	p2 := mountWith(t, im, MountOptions{ExportHandles: true}).Dir
	var release sync.Once
	open := func() { release.Do(func() { close(gate.open) }) }
	t.Cleanup(open) // before the mounts and the image end, which wait for the stream
	waitClosed(t, gate.reached, "the stream reaching the gate")

	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(p1, first), &st); err != nil {
		t.Fatal(err)
	}
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(p1, first), 0)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, f *os.File) {
		t.Helper()
		var fst unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &fst); err != nil || fst.Ino != st.Ino {
			t.Errorf("%s: the handle of %s opens inode %d (%v), want %d", what, first, fst.Ino, err, st.Ino)
		}
		if b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30)); err != nil || !bytes.Equal(b, content[first]) {
			t.Errorf("%s: the handle of %s reads %d bytes (%v), want %d", what, first, len(b), err, len(content[first]))
		}
	}
	// The path is settled: decoding it must not wait for the stream. A
	// minute is a guard against that hang, not a timing assertion.
	type opened struct {
		f   *os.File
		err error
	}
	done := make(chan opened, 1)
	go func() {
		f, err := openHandle(t, p2, h)
		done <- opened{f, err}
	}()
	var o opened
	select {
	case o = <-done:
	case <-time.After(time.Minute):
		open()
		o = <-done
		if o.f != nil {
			o.f.Close()
		}
		t.Fatalf("open_by_handle_at of %s waited for the held-back stream (then: %v)", first, o.err)
	}
	if o.err != nil {
		t.Fatalf("open_by_handle_at of %s while the stream is held back: %v", first, o.err)
	}
	f := o.f
	defer f.Close()
	check("while streaming", f)
	if im.Tree() != nil {
		t.Fatal("the tree is final while a stream is held back")
	}

	open()
	if _, err := im.WaitTree(t.Context()); err != nil {
		t.Fatal(err)
	}
	check("opened while streaming, read after", f)
	p3 := mountWith(t, im, MountOptions{ExportHandles: true}).Dir
	f3, err := openHandle(t, p3, h)
	if err != nil {
		t.Fatalf("open_by_handle_at of %s after the stream: %v", first, err)
	}
	defer f3.Close()
	check("after the stream", f3)
	var late unix.Stat_t
	if err := unix.Lstat(filepath.Join(p1, first), &late); err != nil || late.Ino != st.Ino {
		t.Errorf("%s: inode %d while streaming, %d after (%v)", first, st.Ino, late.Ino, err)
	}
}
