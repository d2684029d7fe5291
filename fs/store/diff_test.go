package store

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

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

// TestTOCDigestAndBlob looks an eStargz and a zstd:chunked layer up the
// way containers/storage 1.54 and later do, by TOC digest: the same diff/
// as by compressed digest, and info carrying toc-digest and
// flags.expected-layer-diffid (the config's DiffID). Reading blob gives
// the layer's compressed bytes, checked against its digest; a digest the
// image does not have is ENOENT.
func TestTOCDigestAndBlob(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, format := range []string{"estargz", "zstd:chunked"} {
		t.Run(format, func(t *testing.T) {
			im, probe, _ := lazyImage(t, format, 4<<20)
			reg := newRegistry(t)
			if err := im.Push(t.Context(), reg.host, "store/toc", "1"); err != nil {
				t.Fatal(err)
			}
			ref := reg.host + "/store/toc:1"
			s := mountStore(t, filepath.Join(t.TempDir(), "store"))
			i := len(im.LayerDescs) - 1
			desc := im.LayerDescs[i]
			toc := tocDigest(desc)
			if toc == "" {
				t.Fatalf("layer %d has no TOC digest annotation: %v", i, desc.Annotations)
			}
			byDigest := podmantest.LayerDir(s.Dir, ref, desc.Digest)
			byTOC := podmantest.LayerDir(s.Dir, ref, toc)
			if d := fstest.CompareTrees(filepath.Join(byTOC, "diff"), filepath.Join(byDigest, "diff"), fstest.CompareOptions{}); len(d) != 0 {
				t.Errorf("diff/ by TOC digest vs by digest: %q", d)
			}
			if _, err := os.Stat(filepath.Join(byTOC, "diff", probe)); err != nil {
				t.Errorf("probe by TOC digest: %v", err)
			}
			b, err := os.ReadFile(filepath.Join(byTOC, "info"))
			if err != nil {
				t.Fatal(err)
			}
			var info podmantest.Info
			if err := json.Unmarshal(b, &info); err != nil {
				t.Fatal(err)
			}
			if info.TOCDigest != toc || info.Flags["expected-layer-diffid"] != im.DiffIDs[i].String() || info.UncompressedDigest != im.DiffIDs[i] {
				t.Errorf("info by TOC digest = %s; want toc-digest %s, expected-layer-diffid and diff-digest %s", b, toc, im.DiffIDs[i])
			}
			blob, err := os.ReadFile(filepath.Join(byDigest, "blob"))
			if err != nil {
				t.Fatal(err)
			}
			if got := digest.FromBytes(blob); got != desc.Digest {
				t.Errorf("blob digest %s, want %s", got, desc.Digest)
			}
			missing := podmantest.LayerDir(s.Dir, ref, digest.FromString("not a layer"))
			if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat of a layer the image lacks: %v, want ENOENT", err)
			}
		})
	}
}
