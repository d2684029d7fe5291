package snapshotter

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// takeoverFiles is how many files of random bytes the takeover image's
// data layer holds, each takeoverFileSize bytes.
const (
	takeoverFiles    = 8
	takeoverFileSize = 512 << 10
)

// takeoverDaemon is `ocifs snapshotter --takeover` run as containerd's
// proxy snapshotter: the holder process, and through it the daemon.
type takeoverDaemon struct {
	bin, cache, root, sock string
	holder                 *exec.Cmd
	log                    string
	exited                 chan struct{}
}

// startTakeoverDaemon starts the holder and waits until a daemon answers
// `ocifs stats`; t.Cleanup stops it (register it before containerd's).
func startTakeoverDaemon(t *testing.T, bin, dir string) *takeoverDaemon {
	t.Helper()
	d := &takeoverDaemon{bin: bin, cache: filepath.Join(dir, "cache"), root: filepath.Join(dir, "root"),
		sock: filepath.Join(dir, "snapshotter.sock"), log: filepath.Join(dir, "ocifs.log"), exited: make(chan struct{})}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.holder = exec.Command(bin, "--cache-dir", d.cache, "--hosts-dir", "", "snapshotter", "--takeover", "--root", d.root, "--address", d.sock)
	d.holder.Stdout, d.holder.Stderr = logf, logf
	d.holder.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.holder.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = d.holder.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = d.holder.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			t.Errorf("the holder (pid %d) runs on 30s after SIGTERM", d.holder.Process.Pid)
			_ = d.holder.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("ocifs log:\n%s", tail(string(b), 60))
		}
	})
	d.waitServer(t, 0)
	return d
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// layers is the layer mount, the MOUNTPOINT of `ocifs stats` and `ocifs
// upgrade`.
func (d *takeoverDaemon) layers() string { return filepath.Join(d.root, "layers") }

// servingPID is the daemon serving the layers, as `ocifs stats` says; 0
// while none answers.
func (d *takeoverDaemon) servingPID(t *testing.T) int {
	s, err := critest.Stats(d.bin, d.cache, d.layers())
	if err != nil {
		return 0
	}
	return s.PID
}

// waitServer waits until a daemon other than old serves, and returns it.
func (d *takeoverDaemon) waitServer(t *testing.T, old int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pid, err := critest.WaitServer(ctx, d.bin, d.cache, d.layers(), old, d.holder.Process.Pid)
	if err != nil {
		b, _ := os.ReadFile(d.log)
		t.Fatalf("%v\n%s", err, tail(string(b), 40))
	}
	return pid
}

// servedAgain checks that daemon pid serves a layer: one the kernel
// named after the takeover (the container's reads, and dropPages's
// lookups), served again from the snapshotter's metadata; nothing else
// asks a daemon for a layer while the container runs.
func (d *takeoverDaemon) servedAgain(t *testing.T, pid int) {
	t.Helper()
	s, err := critest.Stats(d.bin, d.cache, d.layers())
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != pid || s.Served == 0 {
		t.Fatalf("stats after the takeover: pid %d serving %d layers; want pid %d serving the container's", s.PID, s.Served, pid)
	}
}

// checkLog is what a running checkLoop container has printed so far.
type checkLog struct {
	oks     int
	bad     []string
	longest time.Duration // between two lines (containerd's timestamps)
	first   time.Time
	last    time.Time
}

// readCheckLog reads the CRI log of a checkLoop container.
func readCheckLog(t *testing.T, path string) checkLog {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("container log: %v", err)
	}
	var l checkLog
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// <RFC 3339 time> <stream> <P|F> <text>
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) < 4 {
			continue // a line being written
		}
		at, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			continue
		}
		if !l.last.IsZero() {
			l.longest = max(l.longest, at.Sub(l.last))
		} else {
			l.first = at
		}
		l.last = at
		switch {
		case strings.HasPrefix(f[3], "ok "):
			l.oks++
		default:
			l.bad = append(l.bad, f[3])
		}
	}
	return l
}

// progress waits until the container has printed k more ok lines.
func progress(t *testing.T, logPath string, k int) checkLog {
	t.Helper()
	target := readCheckLog(t, logPath).oks + k
	deadline := time.Now().Add(time.Minute)
	for {
		l := readCheckLog(t, logPath)
		if len(l.bad) > 0 {
			t.Fatalf("the container's reads failed: %s", strings.Join(l.bad[:min(len(l.bad), 5)], "; "))
		}
		if l.oks >= target {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container made no progress for a minute (%d checks, want %d): its reads hang", l.oks, target)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dropPages drops the page cache of the data files every few
// milliseconds until stop is closed, so that the container's reads keep
// reaching the daemon rather than the kernel's cache.
func dropPages(root string, stop <-chan struct{}, wg *sync.WaitGroup) {
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			files, _ := filepath.Glob(filepath.Join(root, "snapshots", "*", "fs", "data", "f*"))
			for _, p := range files {
				if f, err := os.Open(p); err == nil {
					_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
					f.Close()
				}
			}
		}
	})
}

// TestCRITakeover: a container started through `ocifs snapshotter
// --takeover` keeps reading its lazy layer, every byte checked, while the
// snapshotter's daemon is killed with SIGKILL six times (the first while
// the container's first read of the layer stalls in the registry), then handed
// over by `ocifs upgrade` and by SIGHUP to the holder: no read fails or
// returns other bytes, none hangs, the container still runs afterwards,
// and a new container of the image starts. The longest pause between two
// of its checks is logged.
func TestCRITakeover(t *testing.T) {
	for _, b := range containerdBinaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			fstest.RequireFUSE(t)
			f := newCRIFixture(t)
			im, sums, err := critest.ChecksumImage(takeoverFiles, takeoverFileSize)
			if err != nil {
				t.Fatal(err)
			}
			if err := im.Push(t.Context(), f.host, "snap/takeover", "1"); err != nil {
				t.Fatal(err)
			}
			pushIndex(t, f.host+"/snap/takeover:1")
			ref := f.front + "/snap/takeover:1"
			dir := tmpDir(t, "snapt-")
			bin, err := critest.BuildOcifs(dir)
			if err != nil {
				t.Fatal(err)
			}
			d := startTakeoverDaemon(t, bin, dir)
			c := startCRI(t, b, f, pullModes(t, b)[0], &critest.ProxySnapshotter{Name: "ocifs", Address: d.sock})
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			cl, err := c.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if _, err := cl.PullImage(ctx, ref, nil); err != nil {
				t.Fatal(err)
			}
			// The container's first read of the data layer stalls in the
			// registry: the daemon is killed with that read in flight.
			data := im.LayerDescs[len(im.LayerDescs)-1].Digest
			f.faults.Add(&fstest.Rule{Method: "GET", Path: "/blobs/" + data.String(), Times: 1, Fault: fstest.Fault{Kind: fstest.Stall}})
			t.Cleanup(f.faults.Release)
			pod, err := cl.RunPod(ctx, "takeover")
			if err != nil {
				t.Fatal(err)
			}
			id, err := cl.CreateContainer(ctx, pod, critest.ContainerSpec{Name: "check", Image: ref, Command: critest.CheckLoop(takeoverFiles)})
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.StartContainer(ctx, id); err != nil {
				t.Fatal(err)
			}
			logPath := filepath.Join(pod.LogDir, "check.log")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			dropPages(d.root, stop, &wg)
			defer func() {
				close(stop)
				wg.Wait()
			}()
			if _, err := f.faults.WaitRequest(ctx, func(r fstest.Request) bool { return r.Fault == fstest.Stall }); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			stalled := d.servingPID(t)
			killed := time.Now()
			if err := syscall.Kill(stalled, syscall.SIGKILL); err != nil {
				t.Fatalf("kill %d: %v", stalled, err)
			}
			pid := d.waitServer(t, stalled)
			l := progress(t, logPath, 20)
			d.servedAgain(t, pid)
			t.Logf("a read stalled in the registry when pid %d was killed: answered by pid %d, its check printed %v after the kill", stalled, pid, l.first.Sub(killed))

			for k := range 5 {
				old := d.servingPID(t)
				if old == 0 || old == d.holder.Process.Pid {
					t.Fatalf("stats names pid %d as the serving daemon (holder %d)", old, d.holder.Process.Pid)
				}
				if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
					t.Fatalf("kill %d: %v", old, err)
				}
				pid := d.waitServer(t, old)
				l := progress(t, logPath, 20)
				d.servedAgain(t, pid)
				t.Logf("kill %d of pid %d: %d checks so far, longest pause %v", k+1, old, l.oks, l.longest)
			}

			// A hand-over on purpose: ocifs upgrade, then SIGHUP to the holder.
			old := d.servingPID(t)
			if out, err := exec.Command(bin, "--cache-dir", d.cache, "upgrade", d.layers()).CombinedOutput(); err != nil {
				t.Fatalf("ocifs upgrade: %v\n%s", err, out)
			}
			old = d.waitServer(t, old)
			progress(t, logPath, 20)
			d.servedAgain(t, old)
			if err := d.holder.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			pid = d.waitServer(t, old)
			l = progress(t, logPath, 20)
			d.servedAgain(t, pid)

			st, err := cl.ContainerStatus(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
				t.Fatalf("the container is %s after the takeovers, want running", st.State)
			}
			// A new container of the image starts and reads the same.
			code, out := runOut(t, ctx, cl, pod, "after", ref, critest.BusyboxPath, "sha256sum", "/data/f3")
			if code != 0 || string(out.Stdout) != sums[3] {
				t.Fatalf("a new container after the takeovers: exit %d, stdout %q, stderr %q", code, out.Stdout, out.Stderr)
			}
			t.Logf("takeover under containerd %s: %d checks of %d KiB files, 6 SIGKILLs, an upgrade and a SIGHUP, no failure; longest pause between two checks %v",
				c.Version.Raw, l.oks, takeoverFileSize>>10, l.longest)
			if err := cl.RemovePod(ctx, pod.ID); err != nil {
				t.Error(err)
			}
		})
	}
}
