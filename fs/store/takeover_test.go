package store

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// storeDaemon is `ocifs store --takeover DIR` run with bin.
type storeDaemon struct {
	bin, cache, dir string
}

// waitServer waits until a daemon other than old serves, and returns it.
func (d *storeDaemon) waitServer(t *testing.T, old int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pid, err := critest.WaitServer(ctx, d.bin, d.cache, d.dir, old, 0)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// serves checks that daemon pid serves the image: loaded again after a
// takeover, for the kernel's requests about its layer.
func (d *storeDaemon) serves(t *testing.T, pid int) {
	t.Helper()
	s, err := critest.Stats(d.bin, d.cache, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != pid || s.Served == 0 {
		t.Fatalf("stats after the takeover: pid %d serving %d images; want pid %d serving the container's", s.PID, s.Served, pid)
	}
}

// parentPID is pid's parent.
func parentPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}

// TestStoreTakeover: a container podman runs from a lazily served image,
// reading its layer in a loop and checking every file's sha256, keeps
// running without a failed or wrong read while the daemon of `ocifs store
// --takeover` is killed with SIGKILL five times (the first while the container's first
// read of its layer stalls in the registry) and then handed over by
// `ocifs upgrade`; a new container of the image runs afterwards. The
// longest pause between two checks is logged.
func TestStoreTakeover(t *testing.T) {
	requirePodman(t)
	const files = 8
	im, sums, err := critest.ChecksumImage(files, 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "store/takeover", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/store/takeover:1"
	pushIndex(t, ref)
	dir := shortDir(t)
	bin, err := critest.BuildOcifs(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := &storeDaemon{bin: bin, cache: filepath.Join(dir, "cache"), dir: filepath.Join(dir, "store")}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(d.bin, "--cache-dir", d.cache, "store", "--takeover", d.dir).CombinedOutput(); err != nil {
		t.Fatalf("ocifs store --takeover: %v\n%s", err, out)
	}
	first := d.waitServer(t, 0)
	holder := parentPID(t, first)
	t.Cleanup(func() {
		_ = syscall.Kill(holder, syscall.SIGTERM)
		for deadline := time.Now().Add(30 * time.Second); syscall.Kill(holder, 0) == nil; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("the holder (pid %d) runs on 30s after SIGTERM", holder)
				return
			}
		}
	})
	p := startPodman(t, podmantest.Options{Registries: []string{reg.host}, AdditionalLayerStore: d.dir})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	// The container's first read of the data layer stalls in the
	// registry: the daemon is killed with that read in flight.
	data := im.LayerDescs[len(im.LayerDescs)-1].Digest
	reg.front.Add(&fstest.Rule{Method: "GET", Path: "/blobs/" + data.String(), Times: 1, Fault: fstest.Fault{Kind: fstest.Stall}})
	t.Cleanup(reg.front.Release)
	id, err := p.RunDetached(ctx, podmantest.RunSpec{Image: ref, Command: critest.CheckLoop(files)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.RemoveContainer(context.WithoutCancel(ctx), id)

	// Drop the page cache of the data files, so the container's reads
	// keep reaching the daemon.
	layerDir := filepath.Join(d.dir, base64.StdEncoding.EncodeToString([]byte(ref)), data.String(), "diff")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var dropped atomic.Int64
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for k := range files {
				if f, err := os.Open(filepath.Join(layerDir, "data", "f"+strconv.Itoa(k))); err == nil {
					_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
					f.Close()
					dropped.Add(1)
				}
			}
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()

	// logs returns the ok lines so far, failing on a BAD one, and the
	// longest pause between two.
	var firstAt time.Time // of the first ok line
	logs := func() (int, time.Duration) {
		t.Helper()
		out, err := p.Output(ctx, "logs", "--timestamps", id)
		if err != nil {
			t.Fatal(err)
		}
		oks := 0
		var last time.Time
		var longest time.Duration
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line) // <time> ok <n>, or <time> BAD ...
			switch {
			case len(f) == 0:
			case len(f) == 3 && f[1] == "ok":
				oks++
				if at, err := time.Parse(time.RFC3339Nano, f[0]); err == nil {
					if !last.IsZero() {
						longest = max(longest, at.Sub(last))
					} else {
						firstAt = at
					}
					last = at
				}
			default:
				t.Fatalf("the container's read failed: %s", line)
			}
		}
		return oks, longest
	}
	progress := func(k int) time.Duration {
		t.Helper()
		n, _ := logs()
		deadline := time.Now().Add(time.Minute)
		for {
			m, longest := logs()
			if m >= n+k {
				return longest
			}
			if time.Now().After(deadline) {
				t.Fatalf("the container made no progress for a minute (%d checks): its reads hang", m)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if _, err := reg.front.WaitRequest(ctx, func(r fstest.Request) bool { return r.Fault == fstest.Stall }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	killed := time.Now()
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", first, err)
	}
	old := d.waitServer(t, first)
	progress(10)
	d.serves(t, old)
	t.Logf("a read stalled in the registry when pid %d was killed: answered by pid %d, its check printed %v after the kill", first, old, firstAt.Sub(killed))
	for k := range 4 {
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", old, err)
		}
		pid := d.waitServer(t, old)
		longest := progress(10)
		d.serves(t, pid)
		t.Logf("kill %d of pid %d: pid %d serves; longest pause so far %v", k+1, old, pid, longest)
		old = pid
	}
	if out, err := exec.Command(d.bin, "--cache-dir", d.cache, "upgrade", d.dir).CombinedOutput(); err != nil {
		t.Fatalf("ocifs upgrade: %v\n%s", err, out)
	}
	pid := d.waitServer(t, old)
	longest := progress(10)
	d.serves(t, pid)
	if dropped.Load() == 0 {
		t.Fatalf("no data file of %s could be opened to drop its pages", layerDir)
	}
	running, err := p.Output(ctx, "inspect", "--format", "{{.State.Running}}", id)
	if err != nil || strings.TrimSpace(running) != "true" {
		t.Fatalf("the container after the takeovers: running %q (%v), want true", running, err)
	}
	res, err := p.Run(ctx, podmantest.RunSpec{Image: ref, Command: []string{critest.BusyboxPath, "sha256sum", "/data/f3"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || string(res.Stdout) != sums[3] {
		t.Fatalf("a new container after the takeovers: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	n, _ := logs()
	t.Logf("store takeover under podman: %d checks, 5 SIGKILLs and an upgrade, no failure; longest pause between two checks %v", n, longest)
}
