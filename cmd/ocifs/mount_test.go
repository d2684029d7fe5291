package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireFUSE skips a test that mounts when this process cannot (not root,
// no /dev/fuse), or fails it under CI.
func requireFUSE(t *testing.T) {
	t.Helper()
	err := checkFUSE()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test mounts, and CI=true: %v", err)
	}
	t.Skipf("cannot mount here: %v", err)
}

// The built command, shared by the tests of one run (TestMain removes it).
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// ocifsBinary builds the command once: the daemon re-executes
// /proc/self/exe, which under `go test` is the test binary, so mount tests
// exec the real one.
func ocifsBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "ocifs-test-bin-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "ocifs")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// execOcifs runs the built binary and returns its output and exit status.
func execOcifs(t testing.TB, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %s %q: %v", bin, args, err)
	}
	return out.String(), errb.String(), code
}

// cleanupMount makes sure no mount or daemon outlives the test, whatever it
// did: detach the mount, then kill a daemon still serving it.
func cleanupMount(t testing.TB, cache, dir string) {
	t.Helper()
	t.Cleanup(func() {
		for range 3 {
			if _, ok, _ := findMount(dir); !ok {
				break
			}
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("cleanup: unmount %s: %v", dir, err)
			}
		}
		if p, err := pathsFor(cache, dir); err == nil {
			if st, err := readState(p); err == nil && isDaemon(st.PID) {
				_ = syscall.Kill(st.PID, syscall.SIGKILL)
			}
		}
	})
}

// daemonPID reads the pid the mount daemon at dir recorded.
func daemonPID(t *testing.T, cache, dir string) int {
	t.Helper()
	p, err := pathsFor(cache, dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := readState(p)
	if err != nil {
		t.Fatalf("mount state of %s: %v", dir, err)
	}
	return st.PID
}

func checkContent(t *testing.T, dir string) {
	t.Helper()
	for p, want := range map[string]string{"etc/os-release": fixtureRelease, "bin/tool": fixtureTool, "etc/motd": fixtureMotd, "big.bin": string(fixtureBig)} {
		got, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Errorf("read %s through the mount: %v", p, err)
		} else if !bytes.Equal(got, []byte(want)) {
			t.Errorf("read %s through the mount: %d bytes, want %d", p, len(got), len(want))
		}
	}
}

// mountedDaemon mounts ref at a fresh directory with the built binary.
func mountedDaemon(t *testing.T, bin, cache, ref string) string {
	t.Helper()
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", ref, dir)
	if code != 0 {
		t.Fatalf("ocifs mount: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if !strings.HasPrefix(out, "mounted "+ref+" at "+dir+" (pid ") || !strings.Contains(out, ", log ") {
		t.Errorf("ocifs mount printed %q", out)
	}
	return dir
}

func TestMountDaemon(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	img := fixtureImage(t)
	ref := layoutRef(t, img)
	cache := isolate(t)
	dir := mountedDaemon(t, bin, cache, ref)
	pid := daemonPID(t, cache, dir)

	checkContent(t, dir)
	if target, err := os.Readlink(filepath.Join(dir, "bin")); err != nil || target != "usr/bin" {
		t.Errorf("readlink bin = %q, %v; want usr/bin", target, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gone.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("whited-out gone.txt: stat err %v, want not exist", err)
	}

	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "stats", "--json", dir)
	if code != 0 {
		t.Fatalf("stats --json: exit %d: %s", code, errs)
	}
	if strings.Count(out, "\n") != 1 {
		t.Errorf("stats --json printed %d lines, want one object and a newline", strings.Count(out, "\n"))
	}
	var stats map[string]any
	if err := json.Unmarshal([]byte(out), &stats); err != nil {
		t.Fatalf("stats --json does not parse: %v\n%s", err, out)
	}
	for _, k := range []string{"image", "manifest_digest", "bytes_fetched", "requests", "bytes_served", "passthrough_files", "cache_hits", "cache_misses", "verify_failures", "layers",
		"cache", "fetched_for", "fallbacks", "background"} {
		if _, ok := stats[k]; !ok {
			t.Errorf("stats --json lacks %q: %s", k, out)
		}
	}
	if stats["image"] != ref || stats["manifest_digest"] != img.ManifestDesc.Digest.String() {
		t.Errorf("stats image %v digest %v, want %s %s", stats["image"], stats["manifest_digest"], ref, img.ManifestDesc.Digest)
	}
	// big.bin is read by the daemon, or, once its layer is extracted, by
	// the kernel itself (passthrough), which the daemon does not see.
	served, _ := stats["bytes_served"].(float64)
	passthrough, _ := stats["passthrough_files"].(float64)
	if served < float64(len(fixtureBig)) && passthrough == 0 {
		t.Errorf("bytes_served = %v, passthrough_files = %v after reading big.bin (%d bytes)", stats["bytes_served"], stats["passthrough_files"], len(fixtureBig))
	}
	layers, _ := stats["layers"].([]any)
	if len(layers) != len(img.LayerDescs) {
		t.Fatalf("stats has %d layers, want %d", len(layers), len(img.LayerDescs))
	}
	for i, l := range layers {
		m, _ := l.(map[string]any)
		for _, k := range []string{"digest", "media_type", "mode", "size", "bytes_fetched", "complete", "verified", "extracted", "settled"} {
			if _, ok := m[k]; !ok {
				t.Errorf("stats layer %d lacks %q: %v", i, k, m)
			}
		}
		if m["digest"] != img.LayerDescs[i].Digest.String() {
			t.Errorf("stats layer %d digest = %v, want %s", i, m["digest"], img.LayerDescs[i].Digest)
		}
	}

	// The human table, in-process.
	r := mustRun(t, "--cache-dir", cache, "stats", dir)
	for _, w := range []string{ref, img.ManifestDesc.Digest.String(), "verify failures", "layer bytes for", "hits/misses", "LAYER", "stream", "whole"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stats lacks %q:\n%s", w, r.stdout)
		}
	}

	// A second mount on the same directory is refused.
	r = runCLI(t, "--cache-dir", cache, "mount", ref, dir)
	if r.code != exitFailure || !strings.Contains(r.stderr, "already a mount point") {
		t.Errorf("mount over a mount: exit %d, stderr %q", r.code, r.stderr)
	}

	out, errs, code = execOcifs(t, bin, "--cache-dir", cache, "unmount", dir)
	if code != 0 || out != "unmounted "+dir+"\n" {
		t.Fatalf("unmount: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	checkGone(t, cache, dir, pid)
}

// checkGone checks that the daemon pid has exited and dir is a plain empty
// directory with no state left behind.
func checkGone(t *testing.T, cache, dir string, pid int) {
	t.Helper()
	if isDaemon(pid) {
		t.Errorf("daemon pid %d still running after unmount", pid)
	}
	if mi, ok, err := findMount(dir); err != nil || ok {
		t.Errorf("%s still mounted (%v), err %v", dir, mi, err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("%s after unmount: %d entries, err %v; want empty", dir, len(ents), err)
	}
	p, _ := pathsFor(cache, dir)
	for _, f := range []string{p.state, p.sock} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (stat err %v)", f, err)
		}
	}
}

func TestMountStale(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	ref := registryRef(t, fixtureImage(t), nil)
	cache := isolate(t)
	dir := mountedDaemon(t, bin, cache, ref)
	pid := daemonPID(t, cache, dir)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill daemon: %v", err)
	}
	if err := waitExit(t.Context(), pid, time.Minute); err != nil {
		t.Fatalf("killed daemon %d did not exit: %v", pid, err)
	}
	var fsst unix.Statfs_t
	if err := unix.Statfs(dir, &fsst); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of a mount whose daemon died: %v, want ENOTCONN", err)
	}

	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", ref, dir)
	if code != 0 {
		t.Fatalf("mount over a stale mount: exit %d\n%s\n%s", code, out, errs)
	}
	checkContent(t, dir)
	pid2 := daemonPID(t, cache, dir)
	p, _ := pathsFor(cache, dir)
	logb, err := os.ReadFile(p.log)
	if err != nil || !bytes.Contains(logb, []byte("cleaning a stale mount")) {
		t.Errorf("daemon log (err %v) lacks the stale-mount line:\n%s", err, logb)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
		t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
	}
	checkGone(t, cache, dir, pid2)
}

func TestUnmountBusy(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	dir := mountedDaemon(t, bin, cache, layoutRef(t, fixtureImage(t)))
	pid := daemonPID(t, cache, dir)
	f, err := os.Open(filepath.Join(dir, "etc/os-release"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := runCLI(t, "--cache-dir", cache, "unmount", dir)
	if r.code != exitFailure || !strings.Contains(r.stderr, "busy: close files and leave the directory, or use --lazy") {
		t.Fatalf("unmount with an open file: exit %d, stderr %q", r.code, r.stderr)
	}
	r = mustRun(t, "--cache-dir", cache, "unmount", "--lazy", dir)
	if !strings.Contains(r.stdout, "detached "+dir) {
		t.Errorf("unmount --lazy printed %q", r.stdout)
	}
	// The open file is still served after the detach.
	b := make([]byte, len(fixtureRelease))
	if n, err := f.ReadAt(b, 0); err != nil || string(b[:n]) != fixtureRelease {
		t.Errorf("read of an open file after a lazy unmount = %q, %v", b[:n], err)
	}
	f.Close()
	if err := waitExit(t.Context(), pid, time.Minute); err != nil {
		t.Fatalf("daemon did not exit once the last file closed: %v", err)
	}
	checkGone(t, cache, dir, pid)
}

// TestMountDaemonFails checks that a daemon's startup error reaches the user
// through its parent: its error, and where its log is.
func TestMountDaemonFails(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	missing := filepath.Join(t.TempDir(), "nowhere")
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "oci:"+missing+":v1", dir)
	if code != exitFailure || out != "" {
		t.Fatalf("mount of a missing layout: exit %d, stdout %q; want 1 and nothing", code, out)
	}
	for _, w := range []string{"ocifs: oci:" + missing, "the mount daemon's log: " + cache} {
		if !strings.Contains(errs, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errs)
		}
	}
	// The daemon's error is the message; its log lines stay in its log.
	if strings.Contains(errs, "mount starting") || strings.Count(strings.TrimSpace(errs), "\n") > 1 {
		t.Errorf("stderr holds more than the error and where the log is:\n%s", errs)
	}
	if _, ok, _ := findMount(dir); ok {
		t.Errorf("%s mounted after a failed mount", dir)
	}
}

func TestMountForeground(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	ref := layoutRef(t, fixtureImage(t))
	dir := t.TempDir()
	cleanupMount(t, cache, dir)

	cmd := exec.CommandContext(t.Context(), bin, "--cache-dir", cache, "mount", "--foreground", "--prefetch=none", ref, dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "mounted "+ref+" at "+dir) {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("--foreground first line %q; stderr:\n%s", sc.Text(), stderr.String())
	}
	checkContent(t, dir)
	p, _ := pathsFor(cache, dir)
	st, err := readState(p)
	if err != nil || st.PID != cmd.Process.Pid || st.Log != "" || st.Mountpoint != dir {
		t.Errorf("state of a --foreground mount = %+v, %v; want pid %d, no log file", st, err, cmd.Process.Pid)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("--foreground after SIGTERM: %v; stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "signal received; unmounting") {
		t.Errorf("stderr lacks the unmount line:\n%s", stderr.String())
	}
	checkGone(t, cache, dir, cmd.Process.Pid)
}
