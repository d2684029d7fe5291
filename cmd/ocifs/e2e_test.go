package main

// End-to-end tests of issue 2's "as a new user would" promises: the real
// ocifs binary, the Debian docker-registry on loopback, a real FUSE mount
// through the daemon path, and umoci's unpack as the independent reference.

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// e2eMount runs `ocifs --cache-dir CACHE mount [flags] REF DIR` with the
// built binary on a fresh directory, and returns the directory and the
// daemon's log path as mount printed it. The mount and its daemon never
// outlive the test.
func e2eMount(t *testing.T, bin, cache, ref string, flags ...string) (dir, logPath string) {
	t.Helper()
	dir = t.TempDir()
	cleanupMount(t, cache, dir)
	args := append([]string{"--cache-dir", cache, "mount"}, flags...)
	out, errs, code := execOcifs(t, bin, append(args, ref, dir)...)
	if code != 0 {
		t.Fatalf("ocifs mount %s %s: exit %d\nstdout: %s\nstderr: %s", ref, dir, code, out, errs)
	}
	_, logPath, ok := strings.Cut(strings.TrimSpace(out), ", log ")
	if !strings.HasPrefix(out, "mounted "+ref+" at "+dir+" (pid ") || !ok || !strings.HasSuffix(logPath, ")") {
		t.Fatalf("ocifs mount printed %q, want \"mounted REF at DIR (pid N, log PATH)\"", out)
	}
	return dir, strings.TrimSuffix(logPath, ")")
}

// e2eUnmount runs `ocifs unmount DIR` with the built binary and checks that
// the daemon is gone and nothing of the mount is left.
func e2eUnmount(t *testing.T, bin, cache, dir string) {
	t.Helper()
	pid := daemonPID(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir)
	if code != 0 || out != "unmounted "+dir+"\n" {
		t.Fatalf("ocifs unmount %s: exit %d, stdout %q, stderr %s", dir, code, out, errs)
	}
	checkGone(t, cache, dir, pid)
}

// reportDiffs prints every difference CompareTrees found, one error each.
func reportDiffs(t *testing.T, what string, diffs []string) {
	t.Helper()
	for _, d := range diffs {
		t.Errorf("%s: %s", what, d)
	}
}

// umociReference is umoci's unpack of layers built as OCI gzip: umoci reads
// neither zstd layers nor Docker schema 2 manifests.
func umociReference(t *testing.T, layers []fstest.Layer) string {
	t.Helper()
	for i := range layers {
		layers[i].Compression = fstest.Gzip
	}
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatalf("build reference image: %v", err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := img.WriteLayout(layout, "ref"); err != nil {
		t.Fatalf("write reference layout: %v", err)
	}
	return fstest.UmociUnpack(t, layout, "ref")
}

// TestCLIMountEqualsUmoci is the "done when": `ocifs mount` of the
// fixture generator's corner image, pushed to the real registry in every
// encoding, equals umoci's unpack with zero differences, and so does
// `ocifs pull` of the same image.
func TestCLIMountEqualsUmoci(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	want := umociReference(t, fstest.Corners())
	opts := fstest.CompareOptions{IgnoreMtimePaths: fstest.CornerUnstableMtimes}

	variants := []struct {
		name   string
		layers []fstest.Layer
		opts   fstest.Options
	}{
		{"gzip", fstest.Corners(), fstest.Options{}},
		{"zstd", fstest.CornersWith(fstest.Zstd), fstest.Options{}},
		{"plain-tar", fstest.CornersWith(fstest.None), fstest.Options{}},
		{"docker-schema2", fstest.Corners(), fstest.Options{Docker: true}},
		{"mixed", fstest.MixedCorners(), fstest.Options{}}, // gzip, zstd and plain layers in one image
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			img, err := fstest.Build(v.layers, v.opts)
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			repo := "e2e/corners-" + v.name
			if err := img.Push(t.Context(), host, repo, "v1"); err != nil {
				t.Fatalf("push: %v", err)
			}
			ref := host + "/" + repo + ":v1"
			cache := isolate(t)

			dir, _ := e2eMount(t, bin, cache, ref)
			reportDiffs(t, "mount", fstest.CompareTrees(dir, want, opts))
			e2eUnmount(t, bin, cache, dir)

			if v.name == "gzip" {
				// The writable view (kernel overlayfs over the merged view,
				// an empty upper) shows the same tree.
				wdir := t.TempDir()
				cleanupMount(t, cache, wdir)
				if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", ref, wdir); code != 0 {
					t.Fatalf("ocifs mount --writable: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
				}
				reportDiffs(t, "writable mount", fstest.CompareTrees(wdir, want, opts))
				e2eUnmount(t, bin, cache, wdir)
			}

			// A fresh cache, so pull fetches and unpacks on its own.
			pulled := filepath.Join(t.TempDir(), "rootfs")
			out, errs, code := execOcifs(t, bin, "--cache-dir", isolate(t), "pull", ref, pulled)
			if code != 0 {
				t.Fatalf("ocifs pull: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
			}
			reportDiffs(t, "pull", fstest.CompareTrees(pulled, want, opts))
		})
	}
}

// statsOf runs `ocifs stats --json DIR` with the built binary and decodes it
// twice: into fs.Stats for the values and into a map for the JSON types.
func statsOf(t *testing.T, bin, cache, dir string) (fs.Stats, map[string]any) {
	t.Helper()
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "stats", "--json", dir)
	if code != 0 {
		t.Fatalf("ocifs stats --json: exit %d: %s", code, errs)
	}
	var s fs.Stats
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("stats --json does not parse: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("stats --json does not parse: %v\n%s", err, out)
	}
	return s, raw
}

// removeLayerBytes deletes img's layer bytes from the cache (today the
// verified uncompressed tar, kept by DiffID; a compressed blob would be kept
// by layer digest: see fetch/cache.go) but keeps the layers' indexes (kept
// by layer digest), so the next mount answers at once and fetches each
// layer only when it is read.
func removeLayerBytes(t *testing.T, cache string, img *fstest.Image) {
	t.Helper()
	blobFile := func(kind string, d digest.Digest) string {
		return filepath.Join(cache, kind, d.Algorithm().String(), d.Encoded())
	}
	for i, desc := range img.LayerDescs {
		removed := 0
		for _, d := range []digest.Digest{img.DiffIDs[i], desc.Digest} {
			err := os.Remove(blobFile("blobs", d))
			switch {
			case err == nil:
				removed++
			case !errors.Is(err, os.ErrNotExist):
				t.Fatalf("remove cached layer %d: %v", i, err)
			}
		}
		if removed == 0 {
			t.Fatalf("layer %d: neither its DiffID nor its digest is in %s/blobs after a mount (has the cache layout changed?)", i, cache)
		}
		if _, err := os.Stat(blobFile("index", desc.Digest)); err != nil {
			t.Fatalf("no cached index for layer %d after a mount: %v", i, err)
		}
	}
}

// layerModes are the lazy modes DESIGN.md lets stats report.
var layerModes = map[string]bool{"estargz": true, "zstd-chunked": true, "index": true, "soci": true, fs.ModeStream: true, fs.ModeWhole: true}

// TestCLIStatsAfterRead reads through a lazy mount and watches stats --json
// follow: bytes served grow by what was read, and only the layer that held
// the file is fetched, completed and verified.
func TestCLIStatsAfterRead(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	if err := img.Push(t.Context(), host, "e2e/stats", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	ref := host + "/e2e/stats:v1"
	cache := isolate(t)

	// A first mount indexes both layers; drop their bytes, keep the indexes.
	dir, _ := e2eMount(t, bin, cache, ref)
	e2eUnmount(t, bin, cache, dir)
	removeLayerBytes(t, cache, img)

	dir, _ = e2eMount(t, bin, cache, ref, "--prefetch=none")
	before, raw := statsOf(t, bin, cache, dir)
	for _, k := range []string{"bytes_fetched", "requests", "bytes_served", "cache_hits", "cache_misses", "verify_failures"} {
		if _, ok := raw[k].(float64); !ok {
			t.Errorf("stats %q = %#v, want a number", k, raw[k])
		}
	}
	if before.BytesServed != 0 {
		t.Errorf("bytes_served before any read = %d, want 0", before.BytesServed)
	}
	if len(before.Layers) != 2 {
		t.Fatalf("stats lists %d layers, want 2", len(before.Layers))
	}
	for i, l := range before.Layers {
		if l.Complete || l.Verified {
			t.Errorf("layer %d before any read: complete %v verified %v, want both false (nothing fetched with --prefetch=none)", i, l.Complete, l.Verified)
		}
	}

	// etc/motd is in layer 1 (small zstd, fetched whole).
	got, err := os.ReadFile(filepath.Join(dir, "etc/motd"))
	if err != nil || string(got) != fixtureMotd {
		t.Fatalf("read etc/motd = %q, %v; want %q", got, err, fixtureMotd)
	}
	mid, _ := statsOf(t, bin, cache, dir)
	if want := before.BytesServed + int64(len(fixtureMotd)); mid.BytesServed != want {
		t.Errorf("bytes_served after reading etc/motd = %d, want %d", mid.BytesServed, want)
	}
	if mid.CacheMisses < 1 {
		t.Errorf("cache_misses after the first read of a layer not fetched = %d, want >= 1", mid.CacheMisses)
	}
	if l := mid.Layers[1]; !l.Complete || !l.Verified || l.BytesFetched != img.LayerDescs[1].Size {
		t.Errorf("layer 1 after reading its file: complete %v verified %v bytes_fetched %d; want true, true, %d", l.Complete, l.Verified, l.BytesFetched, img.LayerDescs[1].Size)
	}
	if l := mid.Layers[0]; l.Complete || l.Verified || l.BytesFetched != 0 {
		t.Errorf("layer 0 after reading a file of layer 1 only: complete %v verified %v bytes_fetched %d; want false, false, 0 (a read waits only for its layer)", l.Complete, l.Verified, l.BytesFetched)
	}

	// big.bin is in layer 0 (large gzip, streamed).
	big, err := os.ReadFile(filepath.Join(dir, "big.bin"))
	if err != nil || string(big) != string(fixtureBig) {
		t.Fatalf("read big.bin: %d bytes, %v; want %d bytes", len(big), err, len(fixtureBig))
	}
	after, _ := statsOf(t, bin, cache, dir)
	if want := mid.BytesServed + int64(len(fixtureBig)); after.BytesServed != want {
		t.Errorf("bytes_served after reading big.bin = %d, want %d", after.BytesServed, want)
	}
	if after.CacheHits+after.CacheMisses <= mid.CacheHits+mid.CacheMisses {
		t.Errorf("cache hits+misses did not grow with a read: %d+%d then %d+%d", mid.CacheHits, mid.CacheMisses, after.CacheHits, after.CacheMisses)
	}
	if l := after.Layers[0]; l.BytesFetched <= 0 || after.BytesFetched < mid.BytesFetched+l.BytesFetched {
		t.Errorf("bytes_fetched after reading big.bin: layer 0 %d, total %d (was %d); want layer 0 > 0 and counted in the total", l.BytesFetched, after.BytesFetched, mid.BytesFetched)
	}
	if after.VerifyFailures != 0 {
		t.Errorf("verify_failures = %d on a good image", after.VerifyFailures)
	}
	for i, l := range after.Layers {
		if l.Digest != img.LayerDescs[i].Digest {
			t.Errorf("layer %d digest = %s, want %s", i, l.Digest, img.LayerDescs[i].Digest)
		}
		if !layerModes[l.Mode] {
			t.Errorf("layer %d mode = %q, want one of DESIGN.md's", i, l.Mode)
		}
		if l.Complete && !l.Verified {
			t.Errorf("layer %d complete but not verified", i)
		}
		// A layer fetched whole is complete and verified once a read of
		// it returned; a lazy one (an index's spans) need not be complete.
		if (l.Mode == fs.ModeWhole || l.Mode == fs.ModeStream) && (!l.Complete || !l.Verified) {
			t.Errorf("layer %d (mode %s) after reading its file: complete %v verified %v, want both true", i, l.Mode, l.Complete, l.Verified)
		}
	}
	t.Logf("layer modes on a mount with cached indexes: %s, %s", after.Layers[0].Mode, after.Layers[1].Mode)
	e2eUnmount(t, bin, cache, dir)
}
