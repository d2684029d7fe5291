package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestUnmountWithNamespaceCopy: a mount namespace made while the image is
// mounted (a container, `ip netns exec`) holds a copy of the mount, which
// keeps the kernel's FUSE connection after the mount is gone from ours.
// `ocifs unmount` must still end the daemon (it used to wait for the
// connection and time out), and the copy then fails with ENOTCONN rather
// than serving from a daemon that is gone. `umount` from outside ends the
// daemon the same way.
func TestUnmountWithNamespaceCopy(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	img := fixtureImage(t)
	layout := t.TempDir()
	if err := img.WriteLayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := "oci:" + layout + ":v1"
	cache := isolate(t)

	for _, how := range []string{"ocifs unmount", "umount"} {
		t.Run(how, func(t *testing.T) {
			dir, _ := e2eMount(t, bin, cache, ref, "--prefetch=none")
			pid := daemonPID(t, cache, dir)
			// The new namespace copies every mount there is, those of tests
			// running in parallel too: it drops the other FUSE mounts, so
			// it holds a copy of this test's mount only.
			// It says "ready" once it runs: unshare has made every mount
			// private by then. Until it has, an unmount outside would
			// still propagate into the new namespace and take the copy
			// with it (this test failed now and then when it waited only
			// for the copy to show in the namespace's mountinfo).
			script := `grep ' - fuse' /proc/self/mountinfo | cut -d' ' -f5 | grep -vxF "$1" | xargs -r -n1 umount -l; echo ready; exec sleep 600`
			holder := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir)
			stdout, err := holder.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := holder.Start(); err != nil {
				t.Fatalf("unshare: %v", err)
			}
			t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
			ready := make(chan string, 1)
			go func() {
				line, _ := bufio.NewReader(stdout).ReadString('\n')
				ready <- line
			}()
			select {
			case line := <-ready:
				if line != "ready\n" {
					t.Fatalf("the namespace holder said %q, want \"ready\"", line)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the namespace holder never got ready")
			}
			info := filepath.Join("/proc", strconv.Itoa(holder.Process.Pid), "mountinfo")
			if b, err := os.ReadFile(info); err != nil || !strings.Contains(string(b), " "+dir+" ") {
				t.Fatalf("the unshared namespace does not hold %s (%v):\n%s", dir, err, b)
			}

			if how == "umount" {
				if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
					t.Fatalf("umount %s: %v\n%s", dir, err, out)
				}
				// The daemon notices on its own (bounded wait, not a timing assertion).
				for deadline := time.Now().Add(time.Minute); isDaemon(pid) && time.Now().Before(deadline); {
					time.Sleep(50 * time.Millisecond)
				}
			} else if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
				t.Fatalf("ocifs unmount with a copy of the mount in another namespace: exit %d\n%s%s", code, out, errs)
			}
			checkGone(t, cache, dir, pid)
			out, err := exec.Command("nsenter", "-t", strconv.Itoa(holder.Process.Pid), "-m", "cat", filepath.Join(dir, "etc/motd")).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "not connected") {
				t.Errorf("reading the copy after the daemon ended: err %v, output %q; want ENOTCONN", err, out)
			}
		})
	}
}
