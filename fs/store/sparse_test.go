package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// TestDiffSparseEqualsPodmanUnpack serves an image of GNU tar's PAX sparse
// files (formats 0.0, 0.1 and 1.0) from the store: each layer's diff/
// equals the layer applied by containers/storage's own applier
// (podmantest.WriteImage), and every sparse file reads as its logical
// content, holes as zeros. The store used to refuse such an image
// (ENOENT for every layer), and podman then pulled it itself.
func TestDiffSparseEqualsPodmanUnpack(t *testing.T) {
	fstest.RequireFUSE(t)
	layers := fstest.SparseLayers()
	im, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "store/sparse", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/store/sparse:1"
	pushIndex(t, ref)
	want, err := podmantest.WriteImage(t.TempDir(), ref, im)
	if err != nil {
		t.Fatal(err)
	}
	s := mountStore(t, filepath.Join(t.TempDir(), "store"))
	sparse := 0
	for i, l := range want {
		dir := filepath.Join(podmantest.LayerDir(s.Dir, ref, im.LayerDescs[i].Digest), "diff")
		for _, d := range fstest.CompareTrees(dir, filepath.Join(l.Dir, "diff"), fstest.CompareOptions{}) {
			if strings.HasPrefix(d, ".: mtime ") {
				continue // podman's applier leaves its time of unpack on the layer's root
			}
			t.Errorf("layer %d: store vs podman's unpack: %s", i, d)
		}
		for _, f := range layers[i].Files {
			if f.Sparse == nil {
				continue
			}
			got, err := os.ReadFile(filepath.Join(dir, f.Header.Name))
			if err != nil {
				t.Errorf("layer %d: read %s: %v", i, f.Header.Name, err)
				continue
			}
			ref, err := os.ReadFile(filepath.Join(l.Dir, "diff", f.Header.Name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, ref) {
				t.Errorf("layer %d: %s: %d bytes, podman's unpack has %d other bytes", i, f.Header.Name, len(got), len(ref))
				continue
			}
			sparse++
		}
	}
	if sparse < 10 {
		t.Errorf("%d sparse files compared, want the fixture's", sparse)
	}
}
