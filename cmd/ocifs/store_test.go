package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// TestStoreCommand starts `ocifs store --foreground` and runs podman
// (Debian 12's 4.3.1, its own storage.conf naming the store) through it:
// podman run of a gzip image with an ocifs index prints the right output
// with a fraction of the image fetched, and the store stops cleanly on
// its signal, unmounting.
func TestStoreCommand(t *testing.T) {
	requireRoot(t)
	fstest.RequireFUSE(t)
	for _, p := range []string{podmantest.DebianPodman, podmantest.DebianConmon, podmantest.DebianRunc, critest.BusyboxBinary} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("needs %s (make deps): %v", p, err)
			}
			t.Skipf("needs %s (make deps): %v", p, err)
		}
	}
	large := fstest.Large(9, 48<<20)
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	im, err := fstest.Build([]fstest.Layer{bb, large.Layer}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := fstest.StartRegistry(t)
	if err := im.Push(t.Context(), host, "cmd/store", "1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/cmd/store:1"
	// After the registry started: docker-registry reads REGISTRY_* from
	// its environment (REGISTRY_AUTH_FILE as its auth configuration).
	cache := isolate(t)
	// podman reads that auth file too, and fails if it is missing.
	if err := os.WriteFile(os.Getenv("REGISTRY_AUTH_FILE"), []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := fs.Resolve(t.Context(), c, ref, fs.Options{NoRemoteIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.Load(t.Context()); err == nil {
		_, err = ix.PushIndex(t.Context())
	}
	ix.Close()
	if err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "ocst-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mnt := filepath.Join(dir, "store")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--cache-dir", cache, "--insecure", "store", "--foreground", mnt}, &bytes.Buffer{}, &stderr)
	}()
	for deadline := time.Now().Add(20 * time.Second); !mounted(t, mnt); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("store exited early: %v; stderr:\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not mounted after 20s; stderr:\n%s", mnt, stderr.String())
		}
	}
	pdir, err := os.MkdirTemp("", "pm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pdir) })
	pctx, pcancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer pcancel()
	p, err := podmantest.Start(pctx, podmantest.Options{Dir: pdir, Registries: []string{host}, AdditionalLayerStore: mnt})
	if err != nil {
		t.Fatal(err)
	}
	probe := path.Join("/", large.Probe.Header.Name)
	want := fmt.Sprintf("%x  %s\n", md5.Sum(large.Probe.Data), probe)
	res, err := p.Run(pctx, podmantest.RunSpec{Image: ref, Command: []string{critest.BusyboxPath, "md5sum", probe}})
	if err == nil && res.ExitCode == 0 {
		err = p.Rmi(pctx, ref)
	}
	if serr := p.Stop(); serr != nil {
		t.Errorf("stop podman: %v", serr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || string(res.Stdout) != want {
		t.Fatalf("podman run through ocifs store = exit %d, stdout %q, stderr %q; want %q", res.ExitCode, res.Stdout, res.Stderr, want)
	}
	t.Logf("podman run through ocifs store: first output after %v", res.Timings.ToFirstOutput().Round(time.Millisecond))

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("store after its context ended: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("store still running 30s after its context ended")
	}
	if mounted(t, mnt) {
		t.Errorf("%s still mounted after the store stopped", mnt)
	}
	log := stderr.String()
	for _, w := range []string{"layer store serving", "image loaded", "layer served lazily", "layer store stopped"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	var size int64
	for _, d := range im.LayerDescs {
		size += d.Size
	}
	var fetched int64
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "layer store stopped") {
			fmt.Sscanf(line[strings.Index(line, "bytes_fetched=")+len("bytes_fetched="):], "%d", &fetched)
		}
	}
	if fetched == 0 || fetched*4 > size {
		t.Errorf("the store fetched %d bytes of an image of %d: not lazy (or not counted)", fetched, size)
	}
	t.Logf("store fetched %d of %d bytes", fetched, size)
}

// TestStoreDaemon starts `ocifs store` without --foreground (the real
// binary): it returns once the store answers, printing the daemon's pid
// and log; a second store on the same mountpoint is refused with what to
// do; SIGTERM to the daemon unmounts the store and ends it.
func TestStoreDaemon(t *testing.T) {
	requireRoot(t)
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	dir, err := os.MkdirTemp("", "ocsd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mnt := filepath.Join(dir, "store")
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "store", mnt)
	var pid int
	if code != 0 || !strings.HasPrefix(out, "layer store at "+mnt+" (pid ") {
		t.Fatalf("ocifs store: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	fmt.Sscanf(strings.TrimPrefix(out, "layer store at "+mnt+" (pid "), "%d", &pid)
	t.Cleanup(func() {
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			syscall.Kill(pid, syscall.SIGKILL)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	if !mounted(t, mnt) {
		t.Fatalf("%s not mounted after ocifs store returned", mnt)
	}
	if st, err := os.Stat(filepath.Join(mnt, "bm90LWEtcmVm", "sha256:"+strings.Repeat("0", 64))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a layer of an unknown reference: %v, %v; want ENOENT", st, err)
	}
	_, errs, code = execOcifs(t, bin, "--cache-dir", cache, "store", mnt)
	if code == 0 || !strings.Contains(errs, "already a mount point") {
		t.Errorf("a second store on %s: exit %d, stderr %q; want a refusal", mnt, code, errs)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if time.Now().After(deadline) {
			t.Fatalf("store daemon %d still running 20s after SIGTERM", pid)
		}
	}
	if mounted(t, mnt) {
		t.Errorf("%s still mounted after the daemon stopped", mnt)
	}
}
