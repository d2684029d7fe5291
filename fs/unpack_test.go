package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// mountWith mounts im at a temp dir with opts and returns the mount.
func mountWith(t testing.TB, im *Image, opts MountOptions) *Mount {
	t.Helper()
	fstest.RequireFUSE(t)
	dir := t.TempDir()
	m, err := im.Mount(context.WithoutCancel(t.Context()), dir, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	unmountAtCleanup(t, m, dir)
	return m
}

// readAllFiles reads every file of content through dir and compares it.
func readAllFiles(t *testing.T, dir string, content map[string][]byte) {
	t.Helper()
	for name, want := range content {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
		}
	}
}

// TestUnpackServesFromTree: once a gzip layer's blob is complete, its files
// are extracted into the cache and reads come from them: reading every
// file decodes no span. With passthrough (where the kernel grants it) the
// daemon serves no byte at all; without, it serves each from the tree
// file. A tree file changed on disk is noticed when it is opened: the read
// goes through the verified spans instead (never the changed bytes), the
// tree is dropped, and the next mount extracts it again.
func TestUnpackServesFromTree(t *testing.T) {
	fstest.RequireFUSE(t)
	layers, content := lazyLayers(8, 150)
	// Large files too: they get tree files of their own, the small ones
	// stay in the pack.
	var large []string
	for i, n := range []int{treeFileMin, 700 << 10, 3 << 20} {
		name := fmt.Sprintf("data/large%d.bin", i)
		b := mixedContent(uint64(i), n)
		layers[0].Files = append(layers[0].Files, fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}, Data: b})
		content[name] = b
		large = append(large, name)
	}
	ref := layoutRef(t, layers)
	dir := t.TempDir()
	big := map[string][]byte{} // the files of layer 0
	for name, b := range content {
		if name != "etc/os-release" {
			big[name] = b
		}
	}

	load := func() *Image {
		im, err := Resolve(t.Context(), newClient(t, dir, nil), ref, Options{Logger: testLogger(t), SpanSize: lazySpan, WholeThreshold: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { im.Close() })
		if err := im.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		// As the daemon does: extraction reads the entries from the
		// cached index again (it extracted zeros once).
		im.ReleaseEntries()
		if err := im.layers[0].ensure(t.Context()); err != nil {
			t.Fatal(err)
		}
		im.layers[0].unpack(t.Context())
		return im
	}
	im := load()
	l := im.layers[0]
	if l.tree.Load() == nil {
		t.Fatalf("layer 0 (%s) has no tree after unpack", l.mode)
	}
	treeDir := filepath.Join(dir, "trees", "sha256", l.diffID.Encoded())
	files, err := os.ReadDir(treeDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(large)+2 { // one per large file, the pack and the seal
		t.Fatalf("tree holds %d names, want %d large files, the pack and the seal", len(files), len(large))
	}

	// Served from the tree through the daemon.
	m := mountWith(t, im, MountOptions{NoPassthrough: true})
	readAllFiles(t, m.Dir, big)
	if n := im.spans.order.Len(); n != 0 {
		t.Errorf("%d spans decoded while reading from the tree; want none", n)
	}
	var total int64
	for _, b := range big {
		total += int64(len(b))
	}
	if s := im.Stats(); s.BytesServed != total || s.PassthroughFiles != 0 {
		t.Errorf("without passthrough: %d bytes served by the daemon, %d passthrough files; want %d and 0", s.BytesServed, s.PassthroughFiles, total)
	}

	// Handed to the kernel: the daemon serves nothing.
	im2 := load()
	m2 := mountWith(t, im2, MountOptions{})
	readAllFiles(t, m2.Dir, big)
	if m2.server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("the kernel offers no FUSE passthrough (needs Linux 6.9+)")
		}
		t.Logf("the kernel offers no FUSE passthrough (needs Linux 6.9+): only the Read path was tested")
	} else {
		var small int64
		for name, b := range big {
			if !slices.Contains(large, name) {
				small += int64(len(b))
			}
		}
		if s := im2.Stats(); s.BytesServed != small || s.PassthroughFiles != int64(len(large)) {
			t.Errorf("with passthrough: %d bytes served by the daemon, %d passthrough files; want the small files' %d and %d", s.BytesServed, s.PassthroughFiles, small, len(large))
		}
	}

	// Change one tree file in place: the next mount reads the right bytes
	// through the spans, drops the tree, and a later one makes it again.
	victim := large[1]
	n, err := im.Tree().Lookup(victim)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(treeDir, fmtOffset(n.Offset))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	im3 := load()
	m3 := mountWith(t, im3, MountOptions{})
	if got, err := os.ReadFile(filepath.Join(m3.Dir, victim)); err != nil || !bytes.Equal(got, big[victim]) {
		t.Fatalf("read of %s after its tree file changed: %d bytes, err %v; want the verified %d bytes", victim, len(got), err, len(big[victim]))
	}
	if im3.layers[0].tree.Load() != nil {
		t.Errorf("the tree with a changed file is still in use")
	}
	if _, err := os.Stat(treeDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tree with a changed file is still cached (stat: %v)", err)
	}
	readAllFiles(t, m3.Dir, big)
	if im4 := load(); im4.layers[0].tree.Load() == nil {
		t.Errorf("no tree after the changed one was dropped")
	}

	// A pack changed after the seal: the next mount extracts the tree
	// again rather than reading it.
	packPath := filepath.Join(treeDir, "pack")
	if err := os.Chmod(packPath, 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(packPath)
	im5 := load()
	if im5.layers[0].tree.Load() == nil {
		t.Fatalf("no tree after the pack changed")
	}
	if after, err := os.Stat(packPath); err != nil || os.SameFile(before, after) {
		t.Errorf("the changed pack is still in use (stat err %v)", err)
	}
	readAllFiles(t, mountWith(t, im5, MountOptions{}).Dir, big)
}

// fmtOffset names a tree file as fetch does.
func fmtOffset(off int64) string { return fmt.Sprintf("%016x", off) }

// TestExtractChecksDiffID: extraction refuses a stream whose digest is not
// the DiffID, and entries whose contents overlap; nothing is committed.
func TestExtractChecksDiffID(t *testing.T) {
	layers, _ := lazyLayers(3, 20)
	img, err := fstest.Build(withCompression(layers[:1], fstest.None), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tarBytes := img.Layers[0]
	tab, err := index.Build(bytes.NewReader(tarBytes), index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := fetch.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	p, _ := c.CreateTree(tab.DiffID, treeFileMin)
	if _, err := extract(bytes.NewReader(tarBytes), tab.Entries, tab.DiffID, tab.TarSize, p); err != nil {
		t.Fatalf("extract of the right stream: %v", err)
	}
	p.Abort()

	bad := bytes.Clone(tarBytes)
	bad[len(bad)/2] ^= 1
	p, _ = c.CreateTree(tab.DiffID, treeFileMin)
	var de *fetch.DigestError
	if _, err := extract(bytes.NewReader(bad), tab.Entries, tab.DiffID, tab.TarSize, p); !errors.As(err, &de) {
		t.Fatalf("extract of a changed stream: %v; want a *fetch.DigestError", err)
	}
	p.Abort()

	ents := append([]index.Entry(nil), tab.Entries...)
	var regs []int
	for i, e := range ents {
		if e.Type == index.TypeReg && e.Size > 0 {
			regs = append(regs, i)
		}
	}
	ents[regs[1]].Offset = ents[regs[0]].Offset + 1
	p, _ = c.CreateTree(tab.DiffID, treeFileMin)
	if _, err := extract(bytes.NewReader(tarBytes), ents, tab.DiffID, tab.TarSize, p); !errors.Is(err, index.ErrFormat) {
		t.Fatalf("extract with overlapping entries: %v; want index.ErrFormat", err)
	}
	p.Abort()
	if _, err := c.OpenTree(tab.DiffID, treeFileMin); !errors.Is(err, fetch.ErrNotFound) {
		t.Errorf("a tree is cached after aborted extractions: %v", err)
	}
}
