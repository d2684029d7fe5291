package critest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// Containerd2DirEnv names the directory holding a containerd 2.x build
// (containerd, containerd-shim-runc-v2); `make containerd2` fills
// /usr/local/lib/ocifs-test/containerd-2.4.2 and `make test-containerd2`
// sets it.
const Containerd2DirEnv = "OCIFS_CONTAINERD2_DIR"

// skipOrFail skips the test with reason, or fails it when CI=true.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true, so this is a failure)", reason)
	}
	t.Skip(reason)
}

// binary is one containerd to test against.
type binary struct {
	name string // subtest name: "containerd-1.6", "containerd-2"
	path string
}

// binaries returns Debian's containerd and, when Containerd2DirEnv is set,
// the 2.x build.
func binaries() []binary {
	bs := []binary{{"containerd-1.6", DebianContainerd}}
	bs = append(bs, binary{"containerd-2", ""})
	if d := os.Getenv(Containerd2DirEnv); d != "" {
		bs[1].path = filepath.Join(d, "containerd")
	}
	return bs
}

// requireCRI skips (fails with CI=true) unless the test can run
// containerd b: root, the binaries, busybox and the registry. A 2.x
// binary that was not asked for (Containerd2DirEnv unset) is a plain
// skip even in CI: `make test-containerd2` is the run that sets it.
func requireCRI(t testing.TB, b binary) {
	t.Helper()
	if b.path == "" {
		t.Skipf("%s not set: `make test-containerd2` runs the containerd 2.x tests", Containerd2DirEnv)
	}
	fstest.RequireRoot(t)
	for _, p := range []string{b.path, filepath.Join(filepath.Dir(b.path), ShimBinary), DebianRunc, BusyboxBinary, fstest.RegistryBinary} {
		if _, err := exec.LookPath(p); err != nil {
			skipOrFail(t, "needs "+p+" (make deps; make containerd2 for 2.x): "+err.Error())
		}
	}
}

// fixture is a registry with the pause image pushed.
type fixture struct {
	host  string // registry host:port
	pause string // sandbox image reference
}

// newFixture starts a registry and pushes the pause image.
func newFixture(t testing.TB) fixture {
	t.Helper()
	host := fstest.StartRegistry(t)
	pause, err := PushPauseImage(t.Context(), host, "critest/pause", "1")
	if err != nil {
		t.Fatal(err)
	}
	return fixture{host: host, pause: pause}
}

// startContainerd starts b with opts (Dir, Registries and SandboxImage
// filled in from f when empty), stops it in t.Cleanup (printing the log
// tail when the test failed) and checks Stop left nothing behind.
func startContainerd(t testing.TB, b binary, f fixture, opts Options) *Containerd {
	t.Helper()
	opts.Binary = b.path
	if opts.Dir == "" {
		opts.Dir = shortTempDir(t)
	}
	if opts.Registries == nil {
		opts.Registries = []string{f.host}
	}
	if opts.SandboxImage == "" {
		opts.SandboxImage = f.pause
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd %s (%s) pull=%s snapshotter=%s dir=%s", c.Version, c.Version.Raw, c.Pull, c.Snapshotter, opts.Dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.LogTail(60))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if len(c.Leftovers) > 0 {
			t.Logf("Stop cleaned up by force: %q", c.Leftovers)
		}
		checkNothingLeft(t, c)
	})
	return c
}

// shortTempDir is a t.TempDir() short enough for unix socket paths (test
// names can be long).
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "critest-")
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

// checkNothingLeft fails the test if a shim of c, a mount under its
// directory or its pods' cgroup is still there.
func checkNothingLeft(t testing.TB, c *Containerd) {
	t.Helper()
	if c.Running() {
		t.Errorf("containerd pid %d still running after Stop", c.cmd.Process.Pid)
	}
	pids, err := shimPIDs(c.Address)
	if err != nil {
		t.Error(err)
	}
	for _, pid := range pids {
		if processAlive(pid) {
			t.Errorf("shim pid %d still running after Stop", pid)
		}
	}
	mounts, err := readMountinfo()
	if err != nil {
		t.Error(err)
	}
	for _, m := range mounts {
		if m.point == c.dir || len(m.point) > len(c.dir) && m.point[:len(c.dir)+1] == c.dir+"/" {
			t.Errorf("still mounted after Stop: %s (%s)", m.point, m.fstype)
		}
	}
	dirs, err := c.cgroupDirs()
	if err != nil {
		t.Error(err)
	}
	for _, d := range dirs {
		t.Errorf("cgroup still there after Stop: %s", d)
	}
}
