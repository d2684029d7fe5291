package podmantest

import (
	"archive/tar"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// TestImpliedParent pins down how podman 4.3.1's own pull treats a
// directory that a layer writes into without an entry for it, when a
// lower layer made it with another mode and owner: containers/storage's
// applier creates it in the upper layer's diff as 0777 less podman's
// umask (022, which podman sets itself), root's: not copied from the
// lower layer, as containerd's applier does. That diff directory,
// topmost, gives the merged directory its attributes. WriteImage's diff
// must say the same.
func TestImpliedParent(t *testing.T) {
	requirePodman(t)
	mt := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	l0 := fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o700, Uid: 1000, Gid: 1000, ModTime: mt}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "d/a", Mode: 0o644, ModTime: mt}, Data: []byte("a\n")},
	}}
	l1 := fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "d/b", Mode: 0o644, ModTime: mt}, Data: []byte("b\n")},
	}}
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	im, err := fstest.Build([]fstest.Layer{l0, l1, bb}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := newStoreFixture(t, im, "podmantest/implied")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	stat := []string{critest.BusyboxPath, "stat", "-c", "%n %a %u:%g", "/d", "/d/a", "/d/b"}
	const want = "/d 755 0:0\n/d/a 644 0:0\n/d/b 644 0:0\n"
	for _, withStore := range []bool{false, true} {
		opts := Options{Registries: []string{f.reg.host}}
		if withStore {
			opts.AdditionalLayerStore = f.store.mnt
		}
		p := startPodman(t, opts)
		res, err := p.Run(ctx, RunSpec{Image: f.ref, Command: stat})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || string(res.Stdout) != want {
			t.Errorf("store=%v: stat in the container = exit %d, %q (stderr %q), want %q", withStore, res.ExitCode, res.Stdout, strings.TrimSpace(string(res.Stderr)), want)
		}
	}
	m, err := fstest.Manifest(f.layers[1].Dir + "/diff")
	if err != nil {
		t.Fatal(err)
	}
	if d := m["d"]; d.Mode != 0o755 || d.Uid != 0 || d.Gid != 0 {
		t.Errorf("layer 1's diff/d: mode %o owner %d:%d, want 755 0:0", d.Mode, d.Uid, d.Gid)
	}
}
