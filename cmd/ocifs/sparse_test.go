package main

import (
	"bytes"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestPullSparse: `ocifs pull` of an image of GNU sparse files (every PAX
// format) gives umoci's tree, with each sparse file written with its holes,
// and `ocifs cat` prints a sparse file's logical content.
func TestPullSparse(t *testing.T) {
	requireRoot(t)
	want := umociReference(t, fstest.SparseLayers())
	img, err := fstest.Build(fstest.SparseLayers(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := layoutRef(t, img)
	dir := filepath.Join(t.TempDir(), "rootfs")
	mustRun(t, "--cache-dir", isolate(t), "pull", ref, dir)
	reportDiffs(t, "pull", fstest.CompareTrees(dir, want, fstest.CompareOptions{}))

	for _, l := range fstest.SparseLayers() {
		for _, f := range l.Files {
			if f.Sparse == nil {
				continue
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(dir, f.Header.Name), &st); err != nil {
				t.Fatal(err)
			}
			// The holes stay holes: no more than the blocks the data needs.
			var room int64
			for _, s := range f.Sparse.Segments {
				room += (s.Off+s.Len+4095)/4096*4096 - s.Off/4096*4096
			}
			if st.Size != f.Sparse.Size || st.Blocks*512 > room {
				t.Errorf("pulled %s: %d bytes in %d blocks; want %d bytes in at most %d bytes of blocks", f.Header.Name, st.Size, st.Blocks, f.Sparse.Size, room)
			}
		}
	}

	name := "sparse/0.0/holes-both.bin"
	var content []byte
	for _, f := range fstest.SparseLayers()[0].Files {
		if f.Header.Name == name {
			content = f.Sparse.Expand(f.Data)
		}
	}
	r := mustRun(t, "--cache-dir", isolate(t), "cat", ref, name)
	if !bytes.Equal([]byte(r.stdout), content) {
		t.Errorf("cat %s: %d bytes, want its %d bytes", name, len(r.stdout), len(content))
	}
}
