package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// boundImage is three gzip layers of about 2.5 MiB each (incompressible,
// so the image is about 7.5 MiB compressed and uncompressed), and what
// each of its files holds.
func boundImage(t *testing.T) (*fstest.Image, map[string][]byte) {
	t.Helper()
	want := map[string][]byte{}
	var layers []fstest.Layer
	rnd := rand.New(rand.NewSource(7))
	for i := range 3 {
		l := fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{tarDir(fmt.Sprintf("l%d", i), 0o755)}}
		for j := range 5 {
			name := fmt.Sprintf("l%d/f%d", i, j)
			b := make([]byte, 500<<10+j*1000)
			rnd.Read(b)
			want[name] = b
			l.Files = append(l.Files, tarFile(name, 0o644, b))
		}
		layers = append(layers, l)
	}
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img, want
}

// cacheBytes is the size of everything the cache lists.
func cacheBytes(t *testing.T, c *fetch.Cache) int64 {
	t.Helper()
	ents, err := c.List()
	if err != nil {
		t.Fatalf("list cache: %v", err)
	}
	var n int64
	for _, e := range ents {
		n += e.Size
	}
	return n
}

// TestCacheMax: a mount with --cache-max smaller than its image (three
// layers of 2.5 MiB against 3 MiB) reads the whole image, twice, right,
// while the bound holds at write time: the daemon's own count of the
// cache's entries (ocifs_cache_peak_bytes, the highest it ever was) never
// passes the bound, and the cache's listing after every read is within it
// too, give or take the one entry that may be admitted while the listing
// runs (an eviction in one directory and its admission in another); the
// entries the mount cannot do without (manifest, config, layer indexes)
// are never removed; and `cache prune --max-size` while it is mounted
// keeps them too.
func TestCacheMax(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	img, want := boundImage(t)
	ref := registryRef(t, img, nil)
	cache := isolate(t)
	const limit = 3 << 20
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--cache-max=3M", "--cache-trim-interval=100ms",
		"--metrics-address=127.0.0.1:0", ref, dir)
	if code != 0 {
		t.Fatalf("mount: exit %d\n%s%s", code, out, errs)
	}
	st, err := readState(namePaths(cache, dir))
	if err != nil || st.Metrics == "" {
		t.Fatalf("mount state records no metrics address: %+v, %v", st, err)
	}
	c, err := fetch.OpenCache(cache)
	if err != nil {
		t.Fatal(err)
	}
	// The largest entry: a layer's blob, or its extracted files.
	var largest int64
	for i, l := range img.LayerDescs {
		var files int64
		for name, b := range want {
			if strings.HasPrefix(name, fmt.Sprintf("l%d/", i)) {
				files += int64(len(b)) + 4<<10 // a file's last block
			}
		}
		largest = max(largest, l.Size, files)
	}
	var listedPeak int64
	bounded := func(when string) {
		t.Helper()
		fams := scrape(t, st.Metrics)
		bmax, _ := metricValue(fams, "ocifs_cache_max_bytes")
		peak, ok := metricValue(fams, "ocifs_cache_peak_bytes")
		if !ok || bmax != limit {
			t.Fatalf("%s: ocifs_cache_max_bytes %v, ocifs_cache_peak_bytes present %v; want the bound %d", when, bmax, ok, limit)
		}
		if peak > limit {
			t.Errorf("%s: the cache's entries reached %v bytes, bound %d", when, peak, limit)
		}
		n := cacheBytes(t, c)
		listedPeak = max(listedPeak, n)
		if n > limit+largest {
			t.Errorf("%s: the cache lists %d bytes, bound %d (+%d for one entry admitted while listing)", when, n, limit, largest)
		}
	}
	essential := func(when string) {
		t.Helper()
		if !c.Has(img.ManifestDesc.Digest) && !c.Has(img.ConfigDesc.Digest) {
			t.Errorf("%s: manifest or config gone from the cache", when)
		}
		for _, l := range img.LayerDescs {
			if !c.HasIndex(l.Digest) {
				t.Errorf("%s: the index of layer %s, which the mount uses, is gone", when, l.Digest)
			}
		}
	}
	readAll := func(round int) {
		t.Helper()
		for name, b := range want {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || !bytes.Equal(got, b) {
				t.Errorf("round %d: read %s: %d bytes, %v; want its %d bytes", round, name, len(got), err, len(b))
			}
			bounded(fmt.Sprintf("round %d, after reading %s", round, name))
		}
	}
	readAll(1)
	// Wait for the background to settle every layer.
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, _ := statsOf(t, bin, cache, dir)
		settled := 0
		for _, l := range s.Layers {
			if l.Settled {
				settled++
			}
		}
		if settled == len(s.Layers) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("layers not settled after 60s: %+v", s.Layers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a few trims
	essential("after the background settled")
	if n := cacheBytes(t, c); n > limit {
		t.Errorf("cache holds %d bytes with --cache-max 3M (%d)", n, limit)
	}
	readAll(2)
	if b, err := os.ReadFile(namePaths(cache, dir).log); err == nil && testing.Verbose() {
		t.Logf("daemon log:\n%s", b)
	}
	fams := scrape(t, st.Metrics)
	peak, _ := metricValue(fams, "ocifs_cache_peak_bytes")
	evicted, _ := metricValue(fams, "ocifs_cache_evictions_total")
	if evicted < 1 {
		t.Errorf("ocifs_cache_evictions_total = %v: an image of %d bytes was read through a bound of %d without an eviction", evicted, imageBytes(img), limit)
	}
	t.Logf("image %d bytes compressed; cache peak %v bytes as the daemon counts, %d as listed after reads; bound %d; %v evictions",
		imageBytes(img), peak, listedPeak, limit, evicted)

	// cache prune --max-size below what the mount needs keeps what it uses.
	r := mustRun(t, "--cache-dir", cache, "cache", "prune", "--max-size", "1")
	if !strings.Contains(r.stdout, "that live mounts use") {
		t.Errorf("cache prune --max-size 1 while mounted: %q, want it to say what it kept", r.stdout)
	}
	essential("after cache prune --max-size 1")
	readAll(3)
	// A gone mount's old log is pruned; the live mount's is not.
	logPath := namePaths(cache, dir).log
	gone := filepath.Join(cache, "mounts", "0123456789abcdef-gone.log")
	if err := os.WriteFile(gone, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{gone, logPath} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	r = mustRun(t, "--cache-dir", cache, "cache", "prune", "--older-than", "1d")
	if _, err := os.Stat(gone); !os.IsNotExist(err) || !strings.Contains(r.stdout, "removed 1 logs") {
		t.Errorf("prune --older-than 1d: gone mount's log stat err %v; stdout %q", err, r.stdout)
	}
	if _, err := os.Stat(logPath); err != nil {
		t.Errorf("prune removed the live mount's log: %v", err)
	}
	essential("after cache prune --older-than 1d")
	readAll(4)
	if _, errs, code := execOcifs(t, bin, "unmount", dir); code != 0 {
		t.Fatalf("unmount: %d %s", code, errs)
	}
	// Unmounted, nothing is pinned: prune empties the cache.
	r = mustRun(t, "--cache-dir", cache, "cache", "prune", "--max-size", "1")
	if n := cacheBytes(t, c); n > 1 || strings.Contains(r.stdout, "live mounts") {
		t.Errorf("after unmount, prune --max-size 1 left %d bytes: %q", n, r.stdout)
	}
}

func imageBytes(img *fstest.Image) int64 {
	var n int64
	for _, l := range img.LayerDescs {
		n += l.Size
	}
	return n
}

// TestRotateLog: a log over the limit becomes .log.1, replacing an older one.
func TestRotateLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.log")
	if err := os.WriteFile(p+".1", []byte("oldest"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rotated, err := rotateLog(p, 10); rotated || err != nil {
		t.Errorf("rotateLog at the limit = %v, %v; want no rotation", rotated, err)
	}
	if err := os.WriteFile(p, []byte("0123456789a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rotated, err := rotateLog(p, 10); !rotated || err != nil {
		t.Fatalf("rotateLog over the limit = %v, %v; want rotated", rotated, err)
	}
	if b, err := os.ReadFile(p + ".1"); err != nil || string(b) != "0123456789a" {
		t.Errorf("%s.1 = %q, %v; want the rotated log", p, b, err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("%s still there after rotation (stat err %v)", p, err)
	}
}

// TestKeepLogRotated: a daemon's log that grows past the limit while it
// runs becomes .log.1, and what the daemon writes next (on its log's file
// descriptors) goes to a new file under the log's name.
func TestKeepLogRotated(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.log")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd()) // stands for the daemon's stdout
	if _, err := f.Write(bytes.Repeat([]byte("x"), 2000)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rotateEvery(ctx, slog.New(slog.DiscardHandler), p, logRotation{every: 5 * time.Millisecond, max: 1000, fds: []int{fd}})
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if fi, err := os.Stat(p); err == nil && fi.Size() == 0 {
			break // rotated, and the new file is there
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not rotated after 10s", p)
		}
	}
	cancel()
	<-done
	if _, err := f.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p + ".1"); err != nil || len(b) != 2000 {
		t.Errorf("%s.1: %d bytes, %v; want the 2000 written before", p, len(b), err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "after\n" {
		t.Errorf("%s after rotation = %q, %v; want what was written since", p, b, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "500M": 500 << 20, "10G": 10 << 30, "10GiB": 10 << 30, "1.5T": 3 << 39, "2k": 2048, "3MB": 3 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1G", "0", "ten", "1e30"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}
