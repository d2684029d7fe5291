package podmantest

import (
	"archive/tar"
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

func TestMain(m *testing.M) {
	if Init() { // the re-executed applier of WriteImage
		return
	}
	os.Exit(m.Run())
}

// skipOrFail skips the test with reason, or fails it when CI=true.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true, so this is a failure)", reason)
	}
	t.Skip(reason)
}

// requirePodman skips (fails with CI=true) unless the test can run
// podman: root, /dev/fuse, the binaries, busybox and the registry.
func requirePodman(t testing.TB) {
	t.Helper()
	fstest.RequireFUSE(t)
	for _, p := range []string{DebianPodman, DebianConmon, DebianRunc, unshareBin, nsenterBin, critest.BusyboxBinary, fstest.RegistryBinary} {
		if _, err := exec.LookPath(p); err != nil {
			skipOrFail(t, "needs "+p+" (make deps): "+err.Error())
		}
	}
}

// startPodman starts an instance in a fresh directory (Dir filled in when
// empty), stops it in t.Cleanup and checks Stop left nothing behind.
func startPodman(t testing.TB, opts Options) *Podman {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = shortTempDir(t)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	p, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if len(p.Leftovers) > 0 {
			t.Logf("Stop cleaned up by force: %q", p.Leftovers)
		}
		checkNothingLeft(t, p)
	})
	return p
}

// shortTempDir is a temporary directory short enough for a podman Dir
// (t.TempDir() of a long test name is not).
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("remove %s: %v", d, err)
		}
	})
	return d
}

// checkNothingLeft fails the test if a process, a cgroup or a host mount
// of p is still there after Stop.
func checkNothingLeft(t testing.TB, p *Podman) {
	t.Helper()
	if p.Running() {
		t.Errorf("namespace holder %d still running after Stop", p.NamespacePID())
	}
	pids, err := p.Processes()
	if err != nil {
		t.Error(err)
	}
	for _, pid := range pids {
		t.Errorf("pid %d (%s) still running after Stop", pid, comm(pid))
	}
	dirs, err := p.CgroupDirs()
	if err != nil {
		t.Error(err)
	}
	for _, d := range dirs {
		t.Errorf("cgroup still there after Stop: %s", d)
	}
	mounts, err := readMountinfo()
	if err != nil {
		t.Error(err)
	}
	for _, m := range mounts {
		if m.point == p.dir || strings.HasPrefix(m.point, p.dir+"/") {
			t.Errorf("still mounted after Stop: %s (%s)", m.point, m.fstype)
		}
	}
}

// registry is a loopback registry behind a fault front that counts the
// requests (no faults are added unless a test does).
type registry struct {
	upstream string // the registry itself, host:port
	host     string // the front, host:port: what podman pulls from
	front    *fstest.Faults
}

func newRegistry(t testing.TB) *registry {
	t.Helper()
	up := fstest.StartRegistry(t)
	front, err := fstest.NewFaults(up)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	return &registry{upstream: up, host: srv.Listener.Addr().String(), front: front}
}

// blobGETs returns the paths of the blob GETs the front has seen from
// index from on (requests before it were counted earlier).
func (r *registry) blobGETs(from int) []string {
	var out []string
	for _, req := range r.front.Requests()[from:] {
		if req.Method == "GET" && strings.Contains(req.Path, "/blobs/") {
			out = append(out, req.Path)
		}
	}
	return out
}

// cornerBusybox is fs/fstest's corner image with busybox on top, without
// the entries podman 4.3.1 cannot pull (each left out entry is logged):
//
//   - a path twice in one layer: containers/storage records each layer's
//     tar with tar-split, which refuses a second entry of a name
//     ("duplicates of file paths not supported"); the last one is kept;
//   - hardlinks whose target is in a lower layer: the applier writes one
//     layer into an empty directory and link(2) fails with ENOENT (as
//     containerd's does);
//   - whiteouts of a path their own layer wrote before: the whiteout's
//     device node fails with EEXIST (as containerd's does).
func cornerBusybox(t testing.TB) *fstest.Image {
	t.Helper()
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	layers := fstest.Corners()
	for i := range layers {
		var dropped []string
		layers[i].Files, dropped = DropUnpullable(layers[i].Files)
		for _, d := range dropped {
			t.Logf("corner layer %d: left out %s", i, d)
		}
	}
	im, err := fstest.Build(append(layers, bb), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// smallImage is two gzip layers: busybox and a file, then a whiteout of
// that file and another file, so a program's output shows both layers
// merged.
func smallImage(t testing.TB) *fstest.Image {
	t.Helper()
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	reg := func(name, data string) fstest.File {
		return fstest.File{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: mtime}, Data: []byte(data)}
	}
	bb.Files = append(bb.Files, reg("etc/hello", "hello from layer 0\n"), reg("gone", "whited out\n"))
	top := fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{reg(".wh.gone", ""), reg("top.txt", "top layer\n")}}
	im, err := fstest.Build([]fstest.Layer{bb, top}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// smallCommand prints what only the merged layers give, and whether the
// whited-out file is gone.
var smallCommand = []string{critest.BusyboxPath, "sh", "-c", "cat /etc/hello /top.txt; test -e /gone && echo gone-is-there || echo gone-is-gone"}

const smallOutput = "hello from layer 0\ntop layer\ngone-is-gone\n"
