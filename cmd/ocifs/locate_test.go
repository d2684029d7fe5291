package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// A mount made with --cache-dir is found from its mountpoint alone: stats
// and unmount work without repeating --cache-dir, and the daemon is called
// ocifs in the process table.
func TestMountFoundFromMountpoint(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	img := fixtureImage(t)
	ref := layoutRef(t, img)
	cache := isolate(t)
	dir := mountedDaemon(t, bin, cache, ref)
	pid := daemonPID(t, cache, dir)

	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || string(comm) != "ocifs\n" {
		t.Errorf("/proc/%d/comm = %q, %v; want \"ocifs\\n\"", pid, comm, err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); err != nil || argv0 != "ocifs" {
		t.Errorf("daemon argv[0] = %q, %v; want ocifs", argv0, err)
	}

	p := namePaths(cache, dir)
	rec, err := readStateFile(p.run)
	if err != nil {
		t.Fatalf("run record: %v", err)
	}
	if rec.CacheDir != cache || rec.PID != pid || rec.Mountpoint != dir {
		t.Errorf("run record = %+v, want cache %s pid %d mountpoint %s", rec, cache, pid, dir)
	}

	checkContent(t, dir)
	// No --cache-dir: the default cache holds no state for dir.
	out, errs, code := execOcifs(t, bin, "stats", "--json", dir)
	if code != 0 {
		t.Fatalf("stats --json without --cache-dir: exit %d: %s", code, errs)
	}
	var s struct {
		Image       string `json:"image"`
		BytesServed int64  `json:"bytes_served"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.Image != ref {
		t.Errorf("stats without --cache-dir: image %q, err %v; want %s\n%s", s.Image, err, ref, out)
	}
	// An explicit --cache-dir that is not the mount's still finds it.
	other := isolate(t)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", other, "stats", dir); code != 0 || !strings.Contains(out, ref) {
		t.Errorf("stats --cache-dir OTHER: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stats created the cache %s it was pointed at (stat err %v)", other, err)
	}

	out, errs, code = execOcifs(t, bin, "unmount", dir)
	if code != 0 || out != "unmounted "+dir+"\n" {
		t.Fatalf("unmount without --cache-dir: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	checkGone(t, cache, dir, pid)
	if _, err := os.Stat(p.run); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run record %s left behind (stat err %v)", p.run, err)
	}

	// Nothing there now: a clear error naming both places looked in.
	_, errs, code = execOcifs(t, bin, "stats", dir)
	if code != exitFailure || !strings.Contains(errs, "no ocifs mount there") || !strings.Contains(errs, runDir()) {
		t.Errorf("stats after unmount: exit %d, stderr %q", code, errs)
	}
}
