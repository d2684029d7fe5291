package fetch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestTree: a committed tree opens and serves its files; a file of the
// wrong size, one changed after the seal, and one missing are refused with
// ErrTreeChanged; an aborted tree leaves nothing; List shows the tree with
// its size and Remove deletes it.
func TestTree(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("a layer's tar")
	if _, err := c.OpenTree(d, 1024); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenTree before any: %v; want ErrNotFound", err)
	}

	p, err := c.CreateTree(d, 1024)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := p.Create(512)
	f.WriteString("abandoned")
	f.Close()
	p.Abort()
	if _, err := c.OpenTree(d, 1024); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenTree after Abort: %v; want ErrNotFound", err)
	}

	files := map[int64]string{512: "hello", 2048: "world, longer"}
	p, err = c.CreateTree(d, 1024)
	if err != nil {
		t.Fatal(err)
	}
	createFiles(t, p, files)
	if _, err := p.Create(512); err == nil {
		t.Errorf("Create of an offset twice succeeded")
	}
	if err := p.Commit(); err == nil {
		t.Fatalf("Commit of a tree without a pack succeeded")
	}
	p, err = c.CreateTree(d, 1024)
	if err != nil {
		t.Fatal(err)
	}
	createFiles(t, p, files)
	pack, err := p.CreatePack()
	if err != nil {
		t.Fatal(err)
	}
	pack.WriteAt([]byte("small"), 1<<20)
	pack.Truncate(2 << 20)
	pack.Close()
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	tr, err := c.OpenTree(d, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for off, s := range files {
		f, err := tr.Open(off, int64(len(s)))
		if err != nil {
			t.Fatalf("Open(%d): %v", off, err)
		}
		b := make([]byte, len(s))
		if _, err := f.ReadAt(b, 0); err != nil || string(b) != s {
			t.Errorf("file at %d = %q, %v; want %q", off, b, err, s)
		}
		f.Close()
	}
	b := make([]byte, 5)
	if _, err := tr.ReadPack(b, 1<<20); err != nil || string(b) != "small" {
		t.Errorf("ReadPack = %q, %v; want %q", b, err, "small")
	}
	if _, err := tr.Open(512, 6); !errors.Is(err, ErrTreeChanged) {
		t.Errorf("Open with the wrong size: %v; want ErrTreeChanged", err)
	}
	if _, err := tr.Open(4096, 1); !errors.Is(err, ErrTreeChanged) {
		t.Errorf("Open of a missing file: %v; want ErrTreeChanged", err)
	}
	p2 := filepath.Join(c.Dir(), treesDir, "sha256", d.Encoded(), treeFileName(2048))
	if err := os.WriteFile(p2, []byte("WORLD, LONGER"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Open(2048, int64(len(files[2048]))); !errors.Is(err, ErrTreeChanged) {
		t.Errorf("Open of a file rewritten after the seal: %v; want ErrTreeChanged", err)
	}
	tr.Close()
	packPath := filepath.Join(c.Dir(), treesDir, "sha256", d.Encoded(), packName)
	if err := os.Chmod(packPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenTree(d, 1024); !errors.Is(err, ErrTreeChanged) {
		t.Errorf("OpenTree with a pack changed after the seal: %v; want ErrTreeChanged", err)
	}
	// A tree whose large files start at another size, or whose seal is
	// unreadable, is not this tree: its pack may lack files.
	if _, err := c.OpenTree(d, 2048); !errors.Is(err, ErrTreeChanged) {
		t.Errorf("OpenTree with another file size: %v; want ErrTreeChanged", err)
	}
	seal := filepath.Join(c.Dir(), treesDir, "sha256", d.Encoded(), sealedName)
	if err := os.WriteFile(seal, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenTree(d, 1024); !errors.Is(err, ErrTreeChanged) {
		t.Errorf("OpenTree with an empty seal: %v; want ErrTreeChanged", err)
	}

	ents, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, en := range ents {
		if en.Kind == KindTree && en.Digest == d {
			found = true
			// The files, and one block of the sparse 2 MiB pack.
			if want := int64(len(files[512]) + len(files[2048])); en.Size < want || en.Size > want+64<<10 {
				t.Errorf("listed tree size %d, want %d plus a block or so of the pack", en.Size, want)
			}
		}
	}
	if !found {
		t.Errorf("List lacks the tree: %+v", ents)
	}
	if err := c.Remove(KindTree, d); err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenTree(d, 1024); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenTree after Remove: %v; want ErrNotFound", err)
	}
	if err := c.Remove(KindTree, d); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v; want ErrNotFound", err)
	}
}

// createFiles writes each file of files (content by tar offset) into p.
func createFiles(t *testing.T, p *PendingTree, files map[int64]string) {
	t.Helper()
	for off, s := range files {
		f, err := p.Create(off)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
}
