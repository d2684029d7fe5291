package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// offlineGuard bounds a read that must end, with bytes or an error, while
// the registry is down (a few retries with backoff, not a wait forever).
const offlineGuard = 60 * time.Second

// offlineSetup pushes the takeover image to a registry on loopback, as
// gzip layers with an ocifs index in the registry (built with another
// cache, so the test's cache starts cold) or, with estargz, as eStargz
// layers whose TOCs the manifest binds; either way reads fetch only the
// pieces they need, so some files stay uncached. It returns the registry's
// stop function, the tag and pinned references, and the merged contents.
func offlineSetup(t *testing.T, bin string, estargz bool) (stop func(), ref, pinned string, want map[string][]byte) {
	t.Helper()
	host, stop := fstest.StartStoppableRegistry(t)
	img, want := takeoverImage(t)
	if estargz {
		img = lazyTakeoverImage(t, want)
	}
	if err := img.Push(t.Context(), host, "offline/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	ref = host + "/offline/app:v1"
	if !estargz {
		if out, errs, code := execOcifs(t, bin, "--cache-dir", filepath.Join(t.TempDir(), "c"), "index", "build", "--push", ref); code != 0 {
			t.Fatalf("ocifs index build --push: exit %d\n%s%s", code, out, errs)
		}
	}
	return stop, ref, host + "/offline/app@" + img.ManifestDesc.Digest.String(), want
}

// lazyTakeoverImage is an eStargz image of the merged contents want: the
// data directory in one layer, the more directory in another.
func lazyTakeoverImage(t *testing.T, want map[string][]byte) *fstest.Image {
	t.Helper()
	var layers []fstest.Layer
	for _, dir := range []string{"data", "more"} {
		files := []fstest.File{tarDir(dir, 0o755)}
		var names []string
		for name := range want {
			if strings.HasPrefix(name, dir+"/") {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		for _, name := range names {
			files = append(files, tarFile(name, 0o644, want[name]))
		}
		layers = append(layers, fstest.Layer{Files: files})
	}
	img, err := fstest.BuildLazy(layers, fstest.LazyOptions{Format: fstest.Estargz, ChunkSize: 256 << 10})
	if err != nil {
		t.Fatalf("build the eStargz image: %v", err)
	}
	return img
}

// Files of the bottom layer read while the registry is up, and one of the
// top layer nobody reads before it goes down (with --prefetch=none and no
// start-up profile, nothing fetches it).
var (
	offlineRead     = []string{"data/f01.bin", "data/f02.bin", "data/f03.bin"}
	offlineUncached = "more/f09.bin"
)

// readAndCompare reads each file of names under dir and compares it with
// want.
func readAndCompare(t *testing.T, dir string, names []string, want map[string][]byte) {
	t.Helper()
	for _, name := range names {
		got, err := fstest.ReadFileWithin(t, offlineGuard, filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want[name]) {
			t.Errorf("read %s: %d bytes, %v; want its %d bytes", name, len(got), err, len(want[name]))
		}
	}
}

// readFails reads a file whose bytes are not cached while the registry is
// down: the read ends with an error, as it does today when the registry is
// unreachable (retries, then EIO), and does not hang.
func readFails(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, offlineUncached)
	got, err := fstest.ReadFileWithin(t, offlineGuard, p)
	if err == nil {
		t.Errorf("read %s (never read, not cached) with the registry down: %d bytes and no error", offlineUncached, len(got))
	} else if !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("read %s with the registry down: %v, want EIO", offlineUncached, err)
	}
}

// TestTakeoverRegistryDown: a --takeover mount whose registry goes away
// after some files were read: its daemon is killed, and the new one the
// holder starts loads the pinned image from the cache (manifest, config,
// and the registry's index artifact and its head, or the layers' eStargz
// TOCs) and takes the mount over without asking the registry; the files
// read before read back right, and a file never read fails with EIO
// instead of hanging.
func TestTakeoverRegistryDown(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	for _, tc := range []struct {
		name    string
		estargz bool
	}{{"gzip", false}, {"estargz", true}} {
		t.Run(tc.name, func(t *testing.T) {
			stop, ref, _, want := offlineSetup(t, bin, tc.estargz)
			cache := isolate(t)
			// No start-up profile is looked for: every request the new
			// daemon makes before it serves is one the load needed.
			dir := takeoverMount(t, bin, cache, ref, "--prefetch=none", "--profile=none")
			readAndCompare(t, dir, offlineRead, want)

			stop()
			old := servingPID(t, cache, dir)
			if old == 0 {
				t.Fatalf("no daemon answers stats for %s", dir)
			}
			killed := time.Now()
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatalf("kill the daemon: %v", err)
			}
			pid := waitNewServer(t, cache, dir, old)
			served := time.Since(killed)
			readAndCompare(t, dir, offlineRead, want)
			failing := time.Now()
			readFails(t, dir)
			t.Logf("registry down: a new daemon served %v after the SIGKILL; the read of an uncached file failed after %v",
				served.Round(time.Millisecond), time.Since(failing).Round(time.Millisecond))
			if got := servingPID(t, cache, dir); got != pid {
				t.Errorf("after the failed read, pid %d serves the mount, want %d (the daemon must survive it)", got, pid)
			}
			checkLoadedOffline(t, mountStateOf(t, cache, dir).Log)
			unmountTakeover(t, bin, cache, dir)
		})
	}
}

// checkLoadedOffline checks, in the log of a --takeover mount, that the
// last daemon loaded the image and took the mount over without asking the
// registry (no retried request, no index given up) while it was down.
func checkLoadedOffline(t *testing.T, logFile string) {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Errorf("the mount's log: %v", err)
		return
	}
	log := string(b)
	start := strings.LastIndex(log, `msg="mount starting"`)
	took := strings.LastIndex(log, `msg="took over the mount's FUSE connection"`)
	if start < 0 || took < start {
		t.Errorf("no daemon took the mount over after starting, says its log:\n%s", log)
		return
	}
	load := log[start:took]
	for _, bad := range []string{"retrying request", "streaming the layer instead", "looking for index artifacts"} {
		if strings.Contains(load, bad) {
			t.Errorf("the new daemon logged %q before it took over (it should load from the cache):\n%s", bad, load)
		}
	}
}

// TestMountPinnedRegistryDown: with the cache warm from an earlier mount,
// `ocifs mount REPO@DIGEST` mounts while the registry is down and serves
// the cached files; a file never read fails with EIO. Then, with the
// cache's copy of the manifest damaged, the same mount is refused (the
// copy is removed, and the registry that would give it again is down)
// rather than served from bytes that do not match the digest.
func TestMountPinnedRegistryDown(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	stop, ref, pinned, want := offlineSetup(t, bin, false)
	cache := isolate(t)

	warm := t.TempDir()
	cleanupMount(t, cache, warm)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--prefetch=none", ref, warm); code != 0 {
		t.Fatalf("ocifs mount %s: exit %d\n%s%s", ref, code, out, errs)
	}
	readAndCompare(t, warm, offlineRead, want)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", warm); code != 0 {
		t.Fatalf("ocifs unmount: exit %d\n%s%s", code, out, errs)
	}

	stop()
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--prefetch=none", pinned, dir); code != 0 {
		t.Fatalf("ocifs mount %s with the registry down and a warm cache: exit %d\n%s%s", pinned, code, out, errs)
	}
	readAndCompare(t, dir, offlineRead, want)
	readFails(t, dir)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
		t.Fatalf("ocifs unmount: exit %d\n%s%s", code, out, errs)
	}

	// A tag needs the registry, and says so.
	tagDir := t.TempDir()
	cleanupMount(t, cache, tagDir)
	_, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--prefetch=none", ref, tagDir)
	if code != 1 || !strings.Contains(errs, "needs the registry") || !strings.Contains(errs, pinned) {
		t.Errorf("ocifs mount %s (a tag) with the registry down: exit %d\n%s\nwant 1 and an error saying a tag needs the registry and naming %s", ref, code, errs, pinned)
	}

	d := pinned[strings.LastIndex(pinned, ":")+1:]
	file := filepath.Join(cache, "blobs", "sha256", d)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the manifest is not in the cache: %v", err)
	}
	b = append(b, '\n') // still the same JSON: only the digest can tell
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := t.TempDir()
	cleanupMount(t, cache, bad)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--prefetch=none", pinned, bad); code != 1 {
		t.Errorf("ocifs mount %s over a damaged cached manifest, registry down: exit %d\n%s%s\nwant 1", pinned, code, out, errs)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the damaged cached manifest is still there: %v", err)
	}
}
