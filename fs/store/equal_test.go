package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// storeVsPull are the paths whose mtime may differ between a container's
// root through the store and one from podman's own pull of the corner
// image, each a time of unpack or of the container's creation (as
// podmantest's TestStoreRootEqualsPull measured with its fake store): the
// root, etc, run and the runtime's files (creation), and the directories
// a layer writes into without an entry for them (podman: time of unpack;
// the store: the Unix epoch).
var storeVsPull = map[string]bool{
	".": true, "etc": true, "run": true, "proc": true, "sys": true,
	"etc/hosts": true, "etc/hostname": true, "etc/mtab": true, "run/.containerenv": true,
	"bin": true, "gnu": true, "hl": true, "implied": true, "implied/a": true, "implied/a/b": true,
	"opaque": true, "private": true, "sameanc": true, "sameopq": true, "sameopq/sub": true,
}

// TestRootEqualsPull runs the corner image (whiteouts, opaque
// directories, hardlinks, devices, xattrs, long names; minus what podman
// cannot pull) twice, once pulled by podman the ordinary way and once
// through the store, and compares the two containers' roots: they may
// differ only in storeVsPull's mtimes. Then podman is SIGKILLed while a
// container from the store runs: the store still serves, and the next
// podman run prints the right output without podman fetching a layer.
func TestRootEqualsPull(t *testing.T) {
	requirePodman(t)
	im := cornerBusybox(t)
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "store/corners", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/store/corners:1"
	pushIndex(t, ref)
	s := mountStore(t, filepath.Join(shortDir(t), "store"))
	plain := startPodman(t, podmantest.Options{Registries: []string{reg.host}})
	stored := startPodman(t, podmantest.Options{Registries: []string{reg.host}, AdditionalLayerStore: s.Dir})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	sleep := podmantest.RunSpec{Image: ref, Command: []string{critest.BusyboxPath, "sleep", "3600"}}
	id, err := plain.RunDetached(ctx, sleep)
	if err != nil {
		t.Fatal(err)
	}
	want, err := plain.ContainerRoot(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := stored.RunDetached(ctx, sleep)
	if err != nil {
		t.Fatal(err)
	}
	got, err := stored.ContainerRoot(ctx, id2)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range im.LayerDescs {
		if n := s.Uses(ref, d.Digest); n != 1 {
			t.Errorf("layer %d: use count %d, want 1: not from the store", i, n)
		}
	}
	for _, d := range fstest.CompareTrees(got, want, fstest.CompareOptions{}) {
		p, rest, _ := strings.Cut(d, ": ")
		if strings.HasPrefix(rest, "mtime ") && storeVsPull[p] {
			t.Logf("store vs pull (a time of unpack or of creation): %s", d)
			continue
		}
		t.Errorf("store vs pull: %s", d)
	}
	m, err := fstest.Manifest(got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compared %d entries", len(m))
	if len(m) < 30 {
		t.Errorf("the container root has %d entries: not the corner image?", len(m))
	}
	if err := stored.RemoveContainer(ctx, id2); err != nil {
		t.Fatal(err)
	}

	// podman SIGKILLed mid-run.
	cmd := stored.Podman(ctx, "run", "--rm", "--quiet", "--tls-verify=false", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"--runtime", "runc", "--cgroup-parent", stored.CgroupParent, "--name", "killed", ref,
		critest.BusyboxPath, "sh", "-c", "echo started; exec "+critest.BusyboxPath+" sleep 3600")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, len("started\n"))
	if _, err := out.Read(line); err != nil || string(line) != "started\n" {
		t.Fatalf("first output = %q (%v), want started", line, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	before := len(reg.front.Requests())
	res, err := stored.Run(ctx, podmantest.RunSpec{Image: ref, Command: []string{critest.BusyboxPath, "echo", "after-kill"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || string(res.Stdout) != "after-kill\n" {
		t.Fatalf("podman run after the kill = exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	for _, r := range reg.front.Requests()[before:] {
		if r.Method == "GET" && strings.Contains(r.Path, "/blobs/") {
			t.Errorf("after the kill: blob GET %s (the image is stored)", r.Path)
		}
	}
	if err := stored.RemoveContainer(ctx, "killed"); err != nil {
		t.Fatal(err)
	}
	var st os.FileInfo
	if st, err = os.Stat(filepath.Join(podmantest.LayerDir(s.Dir, ref, im.LayerDescs[0].Digest), "info")); err != nil || st.Size() == 0 {
		t.Errorf("the store after the kill: info %v, %v", st, err)
	}

}
