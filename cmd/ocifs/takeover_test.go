package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// takeoverImage builds a two-layer gzip image of random files (the top
// layer replaces some of the bottom's) and returns the merged contents by
// path: the reference the readers compare with, from the image's own tars.
func takeoverImage(t *testing.T) (*fstest.Image, map[string][]byte) {
	t.Helper()
	rng := rand.New(rand.NewSource(18))
	want := map[string][]byte{}
	layer := func(dir string, n int, replace []string) fstest.Layer {
		files := []fstest.File{tarDir(dir, 0o755)}
		add := func(name string) {
			b := make([]byte, 1+rng.Intn(1536<<10))
			rng.Read(b)
			files = append(files, tarFile(name, 0o644, b))
			want[name] = b
		}
		for i := range n {
			add(fmt.Sprintf("%s/f%02d.bin", dir, i))
		}
		for _, name := range replace {
			add(name)
		}
		return fstest.Layer{Compression: fstest.Gzip, Files: files}
	}
	l0 := layer("data", 20, nil)
	l1 := layer("more", 12, []string{"data/f00.bin", "data/f07.bin"})
	img, err := fstest.Build([]fstest.Layer{l0, l1}, fstest.Options{})
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	return img, want
}

// takeoverMount mounts ref at a fresh directory with --takeover, and makes
// sure neither the mount, nor its daemon, nor its holder outlives the test.
func takeoverMount(t *testing.T, bin, cache, ref string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	args := append([]string{"--cache-dir", cache, "mount", "--takeover"}, flags...)
	out, errs, code := execOcifs(t, bin, append(args, ref, dir)...)
	if code != 0 {
		t.Fatalf("ocifs mount --takeover: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	st := mountStateOf(t, cache, dir)
	if st.HolderPID == 0 || st.HolderPID == st.PID || st.Holder == "" {
		t.Fatalf("mount state: holder %q pid %d, daemon pid %d; want a holder apart from the daemon", st.Holder, st.HolderPID, st.PID)
	}
	holder := st.HolderPID
	t.Cleanup(func() {
		// Last (cleanups run in reverse): after the mount is gone, the
		// holder must not start daemons again.
		if isHolder(holder) {
			_ = syscall.Kill(holder, syscall.SIGKILL)
		}
	})
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", holder)); err != nil || string(comm) != "ocifs\n" {
		t.Errorf("the holder (pid %d) is named %q in the process table, want ocifs (%v)", holder, comm, err)
	}
	return dir
}

func isHolder(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte("\x00holder\x00"))
}

func mountStateOf(t *testing.T, cache, dir string) *mountState {
	t.Helper()
	p, err := pathsFor(cache, dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := readState(p)
	if err != nil {
		t.Fatalf("mount state of %s: %v", dir, err)
	}
	return st
}

// servingPID asks `ocifs stats --json` which process serves dir; 0 while
// none answers.
func servingPID(t *testing.T, cache, dir string) int {
	t.Helper()
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"--cache-dir", cache, "stats", "--json", dir}, &out, &errb); err != nil {
		return 0
	}
	var s struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("stats --json: %v\n%s", err, out.Bytes())
	}
	return s.PID
}

// waitNewServer waits until a process other than old serves dir, and
// returns it.
func waitNewServer(t *testing.T, cache, dir string, old int) int {
	t.Helper()
	deadline := time.Now().Add(relGuard)
	for time.Now().Before(deadline) {
		if pid := servingPID(t, cache, dir); pid != 0 && pid != old {
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no new daemon serves %s %v after pid %d stopped", dir, relGuard, old)
	return 0
}

// readers is a crowd of readers of random ranges of random files over
// several mounts, each range compared with the reference.
type readers struct {
	stop    atomic.Bool
	wg      sync.WaitGroup
	reads   atomic.Int64
	errs    atomic.Int64
	wrong   atomic.Int64
	mu      sync.Mutex
	first   []string      // the first few failures
	longest time.Duration // the longest read, open to close
}

func (r *readers) fail(format string, args ...any) {
	r.errs.Add(1)
	r.mu.Lock()
	if len(r.first) < 10 {
		r.first = append(r.first, fmt.Sprintf(format, args...))
	}
	r.mu.Unlock()
}

func (r *readers) took(d time.Duration) {
	r.mu.Lock()
	r.longest = max(r.longest, d)
	r.mu.Unlock()
}

// start runs n readers over dirs. Every fourth keeps one file open for
// the whole run (its handle must survive the takeovers); the others open
// a file per read. Each drops the pages it read, so reads keep reaching
// the daemon rather than the page cache.
func (r *readers) start(n int, dirs []string, want map[string][]byte) {
	names := make([]string, 0, len(want))
	for p := range want {
		names = append(names, p)
	}
	sort.Strings(names)
	for i := range n {
		r.wg.Go(func() {
			rng := rand.New(rand.NewSource(int64(i)))
			dir := dirs[i%len(dirs)]
			var held *os.File
			var heldName string
			if i%4 == 0 {
				heldName = names[rng.Intn(len(names))]
				f, err := os.Open(filepath.Join(dir, heldName))
				if err != nil {
					r.fail("open %s: %v", heldName, err)
					return
				}
				held = f
				defer f.Close()
			}
			buf := make([]byte, 256<<10)
			for !r.stop.Load() {
				name, f := heldName, held
				start := time.Now()
				if f == nil {
					name = names[rng.Intn(len(names))]
					var err error
					if f, err = os.Open(filepath.Join(dir, name)); err != nil {
						r.fail("open %s: %v", name, err)
						continue
					}
				}
				ref := want[name]
				off := rng.Intn(len(ref))
				n := 1 + rng.Intn(min(len(buf), len(ref)-off))
				got, err := f.ReadAt(buf[:n], int64(off))
				_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				if f != held {
					f.Close()
				}
				r.took(time.Since(start))
				r.reads.Add(1)
				switch {
				case err != nil && err != io.EOF:
					r.fail("read %s at %d+%d (%s): %v", name, off, n, dir, err)
				case got != n || !bytes.Equal(buf[:n], ref[off:off+n]):
					r.wrong.Add(1)
					r.fail("read %s at %d+%d (%s): %d bytes, not the reference's %d", name, off, n, dir, got, n)
				}
			}
		})
	}
}

// progress waits until the readers have done k more reads.
func (r *readers) progress(t *testing.T, k int64) {
	t.Helper()
	target := r.reads.Load() + k
	deadline := time.Now().Add(relGuard)
	for r.reads.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("readers made no progress for %v (%d reads, want %d): a read hangs", relGuard, r.reads.Load(), target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finish stops the readers and checks that none failed or hung.
func (r *readers) finish(t *testing.T) {
	t.Helper()
	r.stop.Store(true)
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(relGuard):
		t.Fatalf("readers still blocked %v after being told to stop: a read hangs", relGuard)
	}
	if e := r.errs.Load(); e != 0 {
		t.Errorf("%d of %d reads failed (%d with wrong bytes); first: %s", e, r.reads.Load(), r.wrong.Load(), strings.Join(r.first, "; "))
	}
}

// takeoverSetup pushes the image to the registry on loopback and mounts it
// twice with --takeover, with bin.
func takeoverSetup(t *testing.T, bin string) (cache string, dirs []string, want map[string][]byte) {
	t.Helper()
	host := fstest.StartRegistry(t)
	img, want := takeoverImage(t)
	if err := img.Push(t.Context(), host, "takeover/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	ref := host + "/takeover/app:v1"
	cache = isolate(t)
	dirs = []string{takeoverMount(t, bin, cache, ref), takeoverMount(t, bin, cache, ref)}
	return cache, dirs, want
}

// unmountTakeover unmounts dir with `ocifs unmount` and checks that its
// holder ends too.
func unmountTakeover(t *testing.T, bin, cache, dir string) {
	t.Helper()
	st := mountStateOf(t, cache, dir)
	holder := st.HolderPID
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
		logTail, _ := os.ReadFile(st.Log)
		if len(logTail) > 8<<10 {
			logTail = logTail[len(logTail)-8<<10:]
		}
		t.Fatalf("ocifs unmount %s: exit %d\n%s%s\nthe daemon's log ends:\n%s", dir, code, out, errs, logTail)
	}
	if err := waitExit(t.Context(), holder, relGuard); err != nil {
		t.Errorf("the holder (pid %d) still runs %v after the unmount: %v", holder, relGuard, err)
	}
}

// TestTakeoverSIGKILL: 64 readers over two --takeover mounts of one image,
// while the serving daemon of one mount or the other is killed with
// SIGKILL six times: every read succeeds with the reference's bytes, none
// hangs, and `ocifs stats` names the new daemon each time. The longest read
// is logged: the pause a reader saw across a takeover.
func TestTakeoverSIGKILL(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	cache, dirs, want := takeoverSetup(t, bin)
	var r readers
	r.start(64, dirs, want)
	for k := range 6 {
		r.progress(t, 300)
		dir := dirs[k%2]
		old := servingPID(t, cache, dir)
		if old == 0 {
			t.Fatalf("no daemon answers stats for %s", dir)
		}
		if h := mountStateOf(t, cache, dir).HolderPID; old == h {
			t.Fatalf("stats names the holder (pid %d) as the serving process", h)
		}
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the daemon of %s: %v", dir, err)
		}
		waitNewServer(t, cache, dir, old)
	}
	r.progress(t, 300)
	r.finish(t)
	t.Logf("takeover after SIGKILL: %d reads over 2 mounts, 6 kills; longest read (the pause across a takeover): %v", r.reads.Load(), r.longest)
	for _, d := range dirs {
		unmountTakeover(t, bin, cache, d)
	}
}

// TestTakeoverUpgrade: as TestTakeoverSIGKILL, but each mount is handed to
// a freshly built binary, put where the first was, by `ocifs upgrade` (the
// last time by SIGHUP to the holder): the new daemon runs the new file,
// and no read fails.
func TestTakeoverUpgrade(t *testing.T) {
	fstest.RequireFUSE(t)
	built := ocifsBinary(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "ocifs")
	copyFile(t, built, bin)
	fresh := filepath.Join(dir, "ocifs.fresh")
	if out, err := exec.Command("go", "build", "-trimpath", "-o", fresh, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cache, dirs, want := takeoverSetup(t, bin)
	var r readers
	r.start(64, dirs, want)
	for k := range 4 {
		r.progress(t, 300)
		// Install another binary at the mount's path, as a package
		// upgrade does: a new file renamed over the old.
		src := fresh
		if k%2 == 1 {
			src = built
		}
		copyFile(t, src, bin+".new")
		if err := os.Rename(bin+".new", bin); err != nil {
			t.Fatal(err)
		}
		d := dirs[k%2]
		old := servingPID(t, cache, d)
		if k == 3 {
			// The signal way: SIGHUP to the holder.
			if err := syscall.Kill(mountStateOf(t, cache, d).HolderPID, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
		} else {
			out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "upgrade", d)
			if code != 0 || !strings.HasPrefix(out, "upgraded "+d+": pid ") {
				t.Fatalf("ocifs upgrade %s: exit %d\nstdout: %s\nstderr: %s", d, code, out, errs)
			}
		}
		pid := waitNewServer(t, cache, d, old)
		exe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(bin); err != nil || !os.SameFile(exe, st) {
			t.Errorf("after the upgrade the daemon (pid %d) does not run the binary installed at %s (%v)", pid, bin, err)
		}
	}
	r.progress(t, 300)
	r.finish(t)
	t.Logf("takeover by upgrade: %d reads over 2 mounts, 4 upgrades; longest read (the pause across a hand-over): %v", r.reads.Load(), r.longest)
	for _, d := range dirs {
		unmountTakeover(t, bin, cache, d)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestTakeoverRefusedCombinations: --takeover says why it does not go with
// --writable or --progressive, before mounting anything. (With --foreground
// it runs the holder attached: TestTakeoverForegroundNotifies.)
func TestTakeoverRefusedCombinations(t *testing.T) {
	fstest.RequireFUSE(t)
	cache := isolate(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"writable", []string{"--writable"}, "does not go with --writable"},
		{"progressive", []string{"--progressive"}, "numbers nodes in the order it sees them"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"--cache-dir", cache, "mount", "--takeover"}, c.args...)
			r := runCLI(t, append(args, "oci:/nonexistent:v1", dir)...)
			if r.code != 2 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("mount --takeover %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(c.args, " "), r.code, r.stderr, c.want)
			}
			if _, ok, _ := findMount(dir); ok {
				t.Errorf("mount --takeover %s mounted %s", strings.Join(c.args, " "), dir)
			}
		})
	}
}

// TestTakeoverUpgradeNeedsTakeover: a mount made without --takeover cannot
// be handed over, and `ocifs upgrade` says how to get one that can; its
// stats name its daemon as the serving process.
func TestTakeoverUpgradeNeedsTakeover(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	dir := mountedDaemon(t, bin, cache, layoutRef(t, fixtureImage(t)))
	if got, want := servingPID(t, cache, dir), daemonPID(t, cache, dir); got != want {
		t.Errorf("stats --json pid = %d, want the daemon's %d", got, want)
	}
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "upgrade", dir)
	if code != 1 || !strings.Contains(errs, "made without --takeover") || !strings.Contains(errs, "ocifs mount --takeover") {
		t.Errorf("upgrade of a mount without --takeover: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	checkContent(t, dir)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
		t.Fatalf("ocifs unmount %s: exit %d\n%s%s", dir, code, out, errs)
	}
}

// TestTakeoverEqualsUmoci: a --takeover mount (the raw protocol server) of
// the corner image equals umoci's unpack, and still does after its daemon
// was killed and another took over.
func TestTakeoverEqualsUmoci(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	want := umociReference(t, fstest.Corners())
	opts := fstest.CompareOptions{IgnoreMtimePaths: fstest.CornerUnstableMtimes}
	img, err := fstest.Build(fstest.Corners(), fstest.Options{})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if err := img.Push(t.Context(), host, "takeover/corners", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	cache := isolate(t)
	dir := takeoverMount(t, bin, cache, host+"/takeover/corners:v1")
	reportDiffs(t, "takeover mount", fstest.CompareTrees(dir, want, opts))
	old := servingPID(t, cache, dir)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNewServer(t, cache, dir, old)
	reportDiffs(t, "takeover mount after a takeover", fstest.CompareTrees(dir, want, opts))
	unmountTakeover(t, bin, cache, dir)
}

// TestTakeoverMountFails: a --takeover mount of an image that cannot be
// loaded fails with the daemon's reason, mounts nothing, and leaves no
// holder restarting daemons.
func TestTakeoverMountFails(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	missing := filepath.Join(t.TempDir(), "no-layout")
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--takeover", "oci:"+missing+":v1", dir)
	if code != 1 || !strings.Contains(errs, missing) {
		t.Errorf("mount --takeover of a missing layout: exit %d\nstdout: %s\nstderr: %s\nwant exit 1 naming %s", code, out, errs, missing)
	}
	if _, ok, _ := findMount(dir); ok {
		t.Errorf("a failed mount --takeover left a mount at %s", dir)
	}
	sock := holderSocketPath(namePaths(cache, dir))
	deadline := time.Now().Add(relGuard)
	for {
		if _, err := os.Stat(sock); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the holder's socket %s is still there %v after the mount failed: the holder lives on", sock, relGuard)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTakeoverKillMidRead: the daemon is killed with SIGKILL while a read
// waits in it on a stalled registry answer. The read is neither failed nor
// left hanging: the new daemon has the kernel resend it, and answers it
// with the file's bytes once the registry answers. (Without a holder the
// same read fails: TestReliabilityKillMidRead.)
func TestTakeoverKillMidRead(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	ri := newRelImage(t, "", "")
	ri.seedCache(t, cache)
	ri.front.Add(&fstest.Rule{Method: "GET", Path: "/blobs/", Ranged: fstest.WithRange,
		Fault: fstest.Fault{Kind: fstest.Stall, N: 10}})
	dir := takeoverMount(t, bin, cache, ri.ref, "--prefetch=none")
	old := servingPID(t, cache, dir)

	readDone := make(chan error, 1)
	var got []byte
	go func() {
		var err error
		got, err = os.ReadFile(filepath.Join(dir, "b.bin"))
		readDone <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), relGuard)
	defer cancel()
	if _, err := ri.front.WaitRequest(ctx, func(r fstest.Request) bool { return r.Fault == fstest.Stall }); err != nil {
		t.Fatalf("the read never reached the registry: %v", err)
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the daemon: %v", err)
	}
	waitNewServer(t, cache, dir, old)
	select {
	case err := <-readDone:
		t.Fatalf("the read ended (%v) before the registry answered", err)
	default:
	}
	ri.front.Clear()
	ri.front.Release()
	select {
	case err := <-readDone:
		if err != nil || !bytes.Equal(got, relFiles["b.bin"]) {
			t.Errorf("read across the takeover: %d bytes, %v; want the image's %d bytes", len(got), err, len(relFiles["b.bin"]))
		}
	case <-time.After(relGuard):
		t.Fatalf("the read is still blocked %v after the new daemon took over and the registry answered", relGuard)
	}
	checkRelFiles(t, dir)
	unmountTakeover(t, bin, cache, dir)
}
