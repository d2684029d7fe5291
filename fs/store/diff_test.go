package store

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// TestDiffEqualsPodmanUnpack serves the corner image (whiteouts, opaque
// directories, hardlinks, devices, xattrs, implied parents, minus what
// podman cannot pull) from the store and compares each layer's diff/ with
// the same layer applied by containers/storage's own applier
// (podmantest.WriteImage, the call podman 4.3.1's overlay driver makes):
// only mtimes of directories, symlinks and whiteout devices may differ
// (podman leaves its time of unpack on implied parents, whiteouts and
// some symlinks), and each layer's info must carry what the applier
// computed (DiffID, tar size) and the manifest's digest, size and
// compression.
func TestDiffEqualsPodmanUnpack(t *testing.T) {
	fstest.RequireFUSE(t)
	im := cornerBusybox(t)
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "store/corners", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/store/corners:1"
	pushIndex(t, ref)
	backing := t.TempDir()
	want, err := podmantest.WriteImage(backing, ref, im)
	if err != nil {
		t.Fatal(err)
	}
	s := mountStore(t, filepath.Join(t.TempDir(), "store"))
	unpackTimes := 0
	for i, l := range want {
		dir := podmantest.LayerDir(s.Dir, ref, im.LayerDescs[i].Digest)
		for _, d := range fstest.CompareTrees(filepath.Join(dir, "diff"), filepath.Join(l.Dir, "diff"), fstest.CompareOptions{}) {
			p, rest, _ := strings.Cut(d, ": ")
			if st, err := os.Lstat(filepath.Join(l.Dir, "diff", p)); err == nil && strings.HasPrefix(rest, "mtime ") &&
				st.Mode()&(os.ModeDir|os.ModeSymlink|os.ModeCharDevice) != 0 {
				// podman's applier leaves the time of unpack on implied
				// parents, whiteout devices and symlinks.
				t.Logf("layer %d: %s (%s)", i, d, st.Mode().Type())
				unpackTimes++
				continue
			}
			t.Errorf("layer %d: store vs podman's unpack: %s", i, d)
		}
		b, err := os.ReadFile(filepath.Join(dir, "info"))
		if err != nil {
			t.Fatal(err)
		}
		var got podmantest.Info
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("layer %d: info %s: %v", i, b, err)
		}
		if got.CompressedDigest != l.Info.CompressedDigest || got.CompressedSize != l.Info.CompressedSize || got.UncompressedDigest != l.Info.UncompressedDigest ||
			got.UncompressedSize != l.Info.UncompressedSize || got.Compression != l.Info.Compression || got.TOCDigest != "" || got.Flags != nil {
			t.Errorf("layer %d: info = %+v, podman's applier computed %+v", i, got, l.Info)
		}
		st, err := os.Stat(filepath.Join(dir, "blob"))
		if err != nil || st.Size() != im.LayerDescs[i].Size {
			t.Errorf("layer %d: blob: %v, size %v, want %d", i, err, st, im.LayerDescs[i].Size)
		}
	}
	t.Logf("%d mtimes differ (podman's time of unpack)", unpackTimes)
	m, err := fstest.Manifest(podmantest.LayerDir(s.Dir, ref, im.LayerDescs[0].Digest) + "/diff")
	if err != nil || len(m) < 10 {
		t.Fatalf("layer 0 diff: %d entries, %v: not the corner image?", len(m), err)
	}
}
