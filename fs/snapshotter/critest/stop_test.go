package critest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestStop runs a pod with a sleeping container and stops containerd two
// ways: Stop on a healthy containerd must remove everything through CRI
// and force nothing; after containerd was killed with SIGKILL (its shims,
// the pod's processes and their mounts survive it) Stop must find and
// kill the shims and the container, remove the shims' sockets, unmount
// what is left and remove the cgroups.
func TestStop(t *testing.T) {
	for _, b := range binaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			f := newFixture(t)
			im := cornerBusybox(t, true)
			if err := im.Push(t.Context(), f.host, "critest/corners", "1"); err != nil {
				t.Fatal(err)
			}
			for _, kill := range []bool{false, true} {
				name := "healthy"
				if kill {
					name = "after SIGKILL"
				}
				t.Run(name, func(t *testing.T) {
					c := startContainerd(t, b, f, Options{})
					ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
					defer cancel()
					cl, err := c.Dial(ctx)
					if err != nil {
						t.Fatal(err)
					}
					defer cl.Close()
					pod, err := cl.RunPod(ctx, "stop")
					if err != nil {
						t.Fatal(err)
					}
					ref := f.host + "/critest/corners:1"
					if _, err := cl.PullImage(ctx, ref, nil); err != nil {
						t.Fatal(err)
					}
					id, err := cl.CreateContainer(ctx, pod, ContainerSpec{Name: "sleep", Image: ref, Command: []string{BusyboxPath, "sleep", "3600"}})
					if err != nil {
						t.Fatal(err)
					}
					if err := cl.StartContainer(ctx, id); err != nil {
						t.Fatal(err)
					}
					pid, err := cl.ContainerPID(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					root, err := cl.ContainerRoot(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					shims, err := findShims(c.Address)
					if err != nil || len(shims) == 0 {
						t.Fatalf("no shim of %s found (%v): the backstop would have nothing to find", c.Address, err)
					}
					if kill {
						if err := c.cmd.Process.Kill(); err != nil {
							t.Fatal(err)
						}
						<-c.exited
					}
					if err := c.Stop(); err != nil {
						t.Fatal(err)
					}
					t.Logf("Leftovers: %q", c.Leftovers)
					if processAlive(pid) {
						t.Errorf("container process %d still alive after Stop", pid)
					}
					for _, sh := range shims {
						if processAlive(sh.pid) {
							t.Errorf("shim %d still alive after Stop", sh.pid)
						}
						for _, p := range shimSockets(c.Address, sh.namespace, sh.id) {
							if _, err := os.Lstat(p); err == nil {
								t.Errorf("shim %d's socket %s still there after Stop", sh.pid, p)
							}
						}
					}
					if ok, err := IsMountPoint(root); err != nil || ok {
						t.Errorf("%s still mounted after Stop (%v)", root, err)
					}
					forced := strings.Join(c.Leftovers, "\n")
					switch {
					case !kill && forced != "":
						t.Errorf("Stop of a healthy containerd had to force:\n%s", forced)
					case kill && (!strings.Contains(forced, "shim pid") || !strings.Contains(forced, "unmounted "+root)):
						t.Errorf("after SIGKILL, Stop should have killed shims and unmounted %s; it forced:\n%s", root, forced)
					}
					// t.Cleanup's checkNothingLeft checks the rest.
				})
			}
		})
	}
}

// TestStartTimeout: when CRI does not answer in time, Start stops
// containerd again and says so, quoting its log; no process is left.
func TestStartTimeout(t *testing.T) {
	b := binaries()[0]
	requireCRI(t, b)
	dir := shortTempDir(t)
	_, err := Start(t.Context(), Options{Binary: b.path, Dir: dir, StartTimeout: time.Nanosecond})
	if err == nil || !strings.Contains(err.Error(), "wait for CRI") || !strings.Contains(err.Error(), "containerd.log") {
		t.Fatalf("Start with a 1ns timeout: err = %v, want a CRI wait error quoting the log", err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(b), dir) {
			t.Errorf("process %s still running after the failed Start: %q", e.Name(), b)
		}
	}
}
