package fs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// fillDisk writes a file in dir until the file system answers ENOSPC, and
// fails the test unless no byte is left free afterwards.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "filler-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for len(buf) > 0 {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			buf = buf[:len(buf)/2] // the last blocks, one smaller write at a time
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bavail != 0 {
		t.Fatalf("%s still has %d blocks free after filling it", dir, st.Bavail)
	}
}

// smallTmpfs mounts a tmpfs of size bytes on a fresh directory.
func smallTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestFullDiskServesVerifiedBytes mounts the lazy image (an indexed-size
// gzip layer and a small one, fetched whole) with the cache on a tmpfs
// that is full before the first read: not one byte of a span or a blob fits.
// Every file still reads right, because the bytes are verified as they
// arrive and the cache is only where they are kept if there is room; the
// cache keeps nothing half-written. "indexed" has both layers' indexes in
// the cache, so the small layer is fetched whole at its first read;
// "unindexed" streams both layers at Load, to build their indexes.
//
// Without the fix, a layer fetched whole (fetchWhole) fails when its blob
// cannot be written: "indexed" fails reading etc/os-release with EIO (the
// e2e TestReliabilityFullDisk's flaky "EIO reading etc/motd", there when a
// background span write had just taken the last free blocks), and
// "unindexed" fails at Load with ENOSPC.
func TestFullDiskServesVerifiedBytes(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(31, 40)
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "fulldisk/app", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/fulldisk/app:v1"
	opts := func() Options {
		return Options{Logger: testLogger(t), SpanSize: lazySpan, WholeThreshold: 64 << 10, NoRemoteIndex: true}
	}

	// The layers' indexes, built on a cache with room.
	built, err := fetch.New(fetch.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	im, err := Resolve(t.Context(), built, ref, opts())
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	im.Close()

	for _, tc := range []struct {
		name    string
		indexed bool
	}{{"indexed", true}, {"unindexed", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(smallTmpfs(t, 1<<20), "cache")
			c, err := fetch.New(fetch.Options{CacheDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if tc.indexed {
				for _, d := range img.LayerDescs {
					b, err := built.Cache().ReadIndex(d.Digest)
					if err != nil {
						t.Fatal(err)
					}
					if err := c.Cache().WriteIndex(d.Digest, b); err != nil {
						t.Fatal(err)
					}
				}
			}
			fillDisk(t, dir)
			im, err := Resolve(t.Context(), c, ref, opts())
			if err != nil {
				t.Fatal(err)
			}
			if err := im.Load(t.Context()); err != nil {
				t.Fatalf("Load on a full disk: %v", err)
			}
			ls := im.Layers()
			if ls[1].Mode != ModeWhole {
				t.Fatalf("fixture: layer 1 mode %q, want %q", ls[1].Mode, ModeWhole)
			}
			if want := map[bool]string{true: ModeIndex, false: ModeStream}[tc.indexed]; ls[0].Mode != want {
				t.Fatalf("fixture: layer 0 mode %q, want %q", ls[0].Mode, want)
			}
			t.Cleanup(func() { // after the unmount
				im.Close()
				if ents, err := os.ReadDir(filepath.Join(dir, "tmp")); err != nil || len(ents) > 0 {
					t.Errorf("cache tmp/ after the image closed: %v, %v; want it empty", ents, err)
				}
				soundCache(t, dir)
			})
			mnt := mountImage(t, im)
			for name, want := range content {
				got, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(mnt, name))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("read %s on a full disk: %d bytes, %v; want the image's %d bytes", name, len(got), err, len(want))
				}
			}
			if s := im.Stats(); s.CacheMisses == 0 {
				t.Errorf("stats %+v: no cache miss, so nothing was read with the disk full", s)
			}
		})
	}
}

// soundCache fails unless every blob in the cache at dir hashes to its name.
func soundCache(t *testing.T, dir string) {
	t.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	ents, err := os.ReadDir(blobs)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(blobs, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.Name() {
			t.Errorf("cached blob %s holds %d bytes hashing to %x", e.Name(), len(b), sum)
		}
	}
}

// fullCache returns a client whose cache is on a small tmpfs that is full,
// and the cache's directory.
func fullCache(t *testing.T, transport http.RoundTripper) (*fetch.Client, string) {
	t.Helper()
	dir := filepath.Join(smallTmpfs(t, 1<<20), "cache")
	c := newClient(t, dir, transport)
	fillDisk(t, dir)
	return c, dir
}

// TestFullDiskLyingIndexSpans: as TestLyingIndexSpans (a registry index
// with one wrong span window, so reads are served from the spans of the
// table built from the verified layer once the background check has it),
// with the cache full: the verified blob is not cached, and those spans are
// fetched by range and checked against the verified table's digests.
// Without verifiedReader's fallback to the disk cache and the registry,
// every read of layer 0 after the check fails ("verified blob not open");
// without the blobSink in fetchWhole, the check itself fails with ENOSPC.
func TestFullDiskLyingIndexSpans(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	const bad = 3
	ref, content := pushLyingIndex(t, host, "fulldisk/window", 4, 120, func(tbl *index.Table) {
		w, err := tbl.Window(bad)
		if err != nil || len(w) == 0 {
			t.Fatalf("span %d has no window to lie about (%v)", bad, err)
		}
		for i := range w {
			w[i] ^= 0x20
		}
	})
	c, dir := fullCache(t, nil)
	im := resolveLoad(t, c, ref, Options{Logger: testLogger(t), WholeThreshold: 1})
	l := im.layers[0]
	if l.mode != ModeIndex || l.remote == nil {
		t.Fatalf("layer 0: mode %s, registry index %v; want the registry's index", l.mode, l.remote)
	}
	if err := l.ensure(t.Context()); err != nil {
		t.Fatalf("background check on a full disk: %v", err)
	}
	if _, verified := l.reader().(*verifiedReader); !verified || l.complete() != nil {
		t.Fatalf("after the check: verified spans %v, cached blob %v; want the verified spans and no blob (the disk is full)",
			verified, l.complete() != nil)
	}
	im.Tree().Walk(func(p string, n *Node) error {
		if n.Type != index.TypeReg || n.Layer != 0 {
			return nil
		}
		b := make([]byte, n.Size)
		if got, err := l.readAt(t.Context(), b, n.Offset, n.Offset+n.Size); err != nil || !bytes.Equal(b[:got], content[p]) {
			t.Errorf("layer read of %s after the check: %d bytes, err %v; want its %d bytes", p, got, err, len(content[p]))
		}
		return nil
	})
	mnt := mountImage(t, im)
	for name, want := range content {
		readWant(t, filepath.Join(mnt, name), want)
	}
	t.Cleanup(func() { soundCache(t, dir) })
}

// TestFullDiskProgressive: a progressive load with the cache full. The
// stream's temp file holds nothing, so a file the stream has passed is
// fetched again by range, checked against the span digests the stream
// computed, and reads right while the rest of the stream is held back; once
// the stream ends every file reads right. Without the range fetch of
// streamReader.set, the read while held back fails with EIO (the span is
// not in the temp file); without the blobSink, the stream itself fails.
func TestFullDiskProgressive(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(5, 200)
	ref, img := pushPlain(t, host, "fulldisk/progressive", layers)
	blob := img.LayerDescs[0]
	const first = "data/f0000.txt"
	gate := newGate(blob.Digest.String(), blob.Size/2, 0)
	c, dir := fullCache(t, gate)
	im := resolveLoad(t, c, ref, progressiveOpts(t, true))
	mnt := mountImage(t, im)
	loaded := make(chan error, 1)
	go func() {
		_, err := im.WaitTree(t.Context())
		loaded <- err
	}()
	select {
	case <-gate.reached:
	case err := <-loaded:
		t.Fatalf("the streams ended (%v) before layer 0's reached the gate", err)
	case <-time.After(time.Minute):
		t.Fatal("the stream has not reached the gate after a minute")
	}
	readWant(t, filepath.Join(mnt, first), content[first])
	if im.Tree() != nil {
		t.Fatalf("the tree is final while a stream is held back: the read above proves nothing")
	}
	close(gate.open)
	if err := <-loaded; err != nil {
		t.Fatalf("progressive load on a full disk: %v", err)
	}
	for name, want := range content {
		readWant(t, filepath.Join(mnt, name), want)
	}
	t.Cleanup(func() { soundCache(t, dir) })
}
