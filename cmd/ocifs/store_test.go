package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
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

// TestStoreMetricsAndCacheMax starts the store daemon (the real binary,
// without --foreground) with --metrics-address and --cache-max from the
// configuration file's [store] table, and reads every file of an image of
// three 2.5 MiB layers through the store's diff/ directories against a
// 3 MiB bound: every read is right; the scrape, parsed by Prometheus' text
// parser, shows the image loaded, its bytes served and fetched for the
// reader; and the daemon's own count of the cache (its peak) never passed
// the bound although the image is larger, with entries evicted on the way
// and none of what the store pinned (manifest, config, layer indexes).
func TestStoreMetricsAndCacheMax(t *testing.T) {
	requireRoot(t)
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	img, want := boundImage(t)
	ref := registryRef(t, img, nil)
	cache := isolate(t)
	dir, err := os.MkdirTemp("", "ocsm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mnt := filepath.Join(dir, "store")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const limit = 3 << 20
	cfg := writeConfig(t, fmt.Sprintf("[store]\nmetrics-address = %q\ncache-max = \"3M\"\ncache-trim-interval = \"100ms\"\n", addr))
	out, errs, code := execOcifs(t, bin, "--config", cfg, "--cache-dir", cache, "store", mnt)
	if code != 0 || !strings.HasPrefix(out, "layer store at "+mnt+" (pid ") {
		t.Fatalf("ocifs store: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	var pid int
	fmt.Sscanf(strings.TrimPrefix(out, "layer store at "+mnt+" (pid "), "%d", &pid)
	t.Cleanup(func() {
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			syscall.Kill(pid, syscall.SIGKILL)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	before := scrape(t, addr)
	if v, ok := metricValue(before, "ocifs_cache_max_bytes"); !ok || v != limit {
		t.Fatalf("ocifs_cache_max_bytes = %v (present %v), want the [store] cache-max %d", v, ok, limit)
	}

	c, err := fetch.OpenCache(cache)
	if err != nil {
		t.Fatal(err)
	}
	refDir := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(ref)))
	var read int64
	for round := range 2 {
		for i, l := range img.LayerDescs {
			for j := range 5 {
				name := fmt.Sprintf("l%d/f%d", i, j)
				got, err := os.ReadFile(filepath.Join(refDir, l.Digest.String(), "diff", name))
				if err != nil || !bytes.Equal(got, want[name]) {
					t.Fatalf("round %d: read %s through the store: %d bytes, %v; want its %d bytes", round, name, len(got), err, len(want[name]))
				}
				read += int64(len(got))
				fams := scrape(t, addr)
				if peak, _ := metricValue(fams, "ocifs_cache_peak_bytes"); peak > limit {
					t.Errorf("round %d, after %s: the cache's entries reached %v bytes, bound %d", round, name, peak, limit)
				}
			}
		}
	}
	after := scrape(t, addr)
	for _, w := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"ocifs_images", nil, 1},
		{"ocifs_mount_ready_seconds", nil, 1},
		{"ocifs_layers", []string{"mode", "stream"}, 3},
		{"ocifs_layer_fetch_bytes_total", []string{"purpose", "reader"}, float64(imageBytes(img))},
		{"ocifs_cache_evictions_total", nil, 1},
		{"ocifs_cache_bound_bytes", nil, 1},
	} {
		if v, ok := metricValue(after, w.name, w.labels...); !ok || v < w.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", w.name, w.labels, v, ok, w.min)
		}
	}
	// Reads podman's overlay would pass on: some through the daemon (the
	// rest the kernel may serve from its page cache, or by passthrough).
	if v, _ := metricValue(after, "ocifs_served_bytes_total"); v <= 0 || v > float64(read) {
		t.Errorf("ocifs_served_bytes_total = %v after reading %d bytes through the store", v, read)
	}
	for _, l := range img.LayerDescs {
		if !c.HasIndex(l.Digest) {
			t.Errorf("the index of layer %s, which the store pinned, was evicted", l.Digest)
		}
	}
	if !c.Has(img.ConfigDesc.Digest) {
		t.Errorf("the image's config, which the store pinned, was evicted")
	}
	// cache prune removes old logs of daemons that are gone, not the log
	// the live store daemon writes, however long it has been quiet.
	storeLog := namePaths(cache, mnt).log
	gone := filepath.Join(cache, "mounts", "0123456789abcdef-gone.log")
	if err := os.WriteFile(gone, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{gone, storeLog} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	r := mustRun(t, "--cache-dir", cache, "cache", "prune", "--older-than", "1d")
	if _, err := os.Stat(gone); !os.IsNotExist(err) || !strings.Contains(r.stdout, "removed 1 logs") {
		t.Errorf("prune --older-than 1d: a gone daemon's log: stat err %v; stdout %q", err, r.stdout)
	}
	if _, err := os.Stat(storeLog); err != nil {
		t.Errorf("prune removed the live store daemon's log: %v", err)
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
