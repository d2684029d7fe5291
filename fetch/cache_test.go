package fetch

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func newCache(t testing.TB) *Cache {
	t.Helper()
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tmpFiles lists what is left in the cache's tmp/.
func tmpFiles(t *testing.T, c *Cache) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(c.Dir(), tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestCacheCommit(t *testing.T) {
	good := []byte("hello, cache")
	d := digest.FromBytes(good)
	for _, tc := range []struct {
		name      string
		write     []byte
		abort     bool
		wantErr   error
		wantCache bool
	}{
		{"good", good, false, nil, true},
		{"bad bytes", []byte("hello, cachE"), false, ErrFormat, false},
		{"short", good[:5], false, ErrFormat, false},
		{"abort", good, true, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t)
			p, err := c.Create(d)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Abort()
			if _, err := p.Write(tc.write); err != nil {
				t.Fatal(err)
			}
			if tc.abort {
				p.Abort()
			} else if err := p.Commit(); !errors.Is(err, tc.wantErr) {
				t.Fatalf("Commit() = %v, want %v", err, tc.wantErr)
			}
			p.Abort() // safe after Commit
			if got := c.Has(d); got != tc.wantCache {
				t.Errorf("Has(%s) = %v, want %v", d, got, tc.wantCache)
			}
			if left := tmpFiles(t, c); len(left) != 0 {
				t.Errorf("tmp/ holds %v after Commit/Abort", left)
			}
			f, err := c.Open(d)
			if !tc.wantCache {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("Open of an absent blob: err = %v, want ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var buf bytes.Buffer
			buf.ReadFrom(f)
			if !bytes.Equal(buf.Bytes(), good) {
				t.Errorf("cached = %q, want %q", buf.Bytes(), good)
			}
		})
	}
}

func TestCacheBadNeverReplacesGood(t *testing.T) {
	c := newCache(t)
	good := []byte("good bytes")
	d := digest.FromBytes(good)
	if err := c.Put(d, bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	var de *DigestError
	if err := c.Put(d, bytes.NewReader([]byte("evil bytes"))); !errors.As(err, &de) || de.Want != d {
		t.Fatalf("Put of bad bytes over a good entry: err = %v, want *DigestError", err)
	}
	b, err := os.ReadFile(filepath.Join(c.Dir(), "blobs", "sha256", d.Encoded()))
	if err != nil || !bytes.Equal(b, good) {
		t.Errorf("entry after a bad Put = %q, %v; want %q", b, err, good)
	}
}

func TestCacheConcurrentCommit(t *testing.T) {
	c := newCache(t)
	data := bytes.Repeat([]byte("abc"), 100000)
	d := digest.FromBytes(data)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			p, err := c.Create(d)
			if err != nil {
				errs[i] = err
				return
			}
			defer p.Abort()
			for off := 0; off < len(data); off += 4096 {
				if _, err := p.Write(data[off:min(off+4096, len(data))]); err != nil {
					errs[i] = err
					return
				}
			}
			errs[i] = p.Commit()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("goroutine %d: %v", i, err)
		}
	}
	f, err := c.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var buf bytes.Buffer
	buf.ReadFrom(f)
	if !bytes.Equal(buf.Bytes(), data) {
		t.Errorf("cached blob is %d bytes, want %d identical bytes", buf.Len(), len(data))
	}
	if left := tmpFiles(t, c); len(left) != 0 {
		t.Errorf("tmp/ holds %v", left)
	}
}

func TestCacheIndex(t *testing.T) {
	c := newCache(t)
	layer := digest.FromString("layer")
	if _, err := c.ReadIndex(layer); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadIndex of nothing: err = %v, want ErrNotFound", err)
	}
	data := []byte("opaque index bytes")
	if err := c.WriteIndex(layer, data); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadIndex(layer)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadIndex = %q, %v; want %q", got, err, data)
	}
	// Corrupt one payload byte: the checksum must catch it and drop the file.
	p := filepath.Join(c.Dir(), "index", "sha256", layer.Encoded())
	b, _ := os.ReadFile(p)
	b[len(b)-1] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadIndex(layer); !errors.Is(err, ErrFormat) {
		t.Fatalf("ReadIndex of a corrupted file: err = %v, want ErrFormat", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("corrupted index file still there: %v", err)
	}
	// A truncated file too.
	if err := os.WriteFile(p, []byte("OCIF"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadIndex(layer); !errors.Is(err, ErrFormat) {
		t.Errorf("ReadIndex of a truncated file: err = %v, want ErrFormat", err)
	}
}

func TestCacheListRemove(t *testing.T) {
	c := newCache(t)
	blob := []byte("blob")
	bd := digest.FromBytes(blob)
	ld := digest.FromString("layer")
	if err := c.Put(bd, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteIndex(ld, []byte("ix")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(c.Dir(), "blobs", "sha256", "not-a-digest"), nil, 0o600)
	got, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Kind != KindBlob || got[0].Digest != bd || got[0].Size != 4 ||
		got[1].Kind != KindIndex || got[1].Digest != ld {
		t.Fatalf("List() = %+v, want the blob and the index", got)
	}
	if err := c.Remove(KindBlob, bd); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(KindBlob, bd); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: err = %v, want ErrNotFound", err)
	}
	if err := c.Remove(KindIndex, ld); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove("other", ld); err == nil {
		t.Error("Remove of an unknown kind succeeded")
	}
}

func TestCacheRejectsBadDigests(t *testing.T) {
	c := newCache(t)
	for _, d := range []digest.Digest{"", "sha256:../../etc/passwd", "sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e", "../x"} {
		if c.Has(d) {
			t.Errorf("Has(%q) = true", d)
		}
		if _, err := c.Open(d); err == nil {
			t.Errorf("Open(%q) succeeded", d)
		}
		if _, err := c.Create(d); err == nil {
			t.Errorf("Create(%q) succeeded", d)
		}
		if err := c.WriteIndex(d, nil); err == nil {
			t.Errorf("WriteIndex(%q) succeeded", d)
		}
	}
}

func TestCacheRemovesStaleTemps(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, tmpDir, "stale")
	fresh := filepath.Join(dir, tmpDir, "fresh")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	if _, err := OpenCache(dir); err != nil {
		t.Fatal(err)
	}
	if left := tmpFiles(t, c); len(left) != 1 || left[0] != "fresh" {
		t.Errorf("tmp/ = %v, want only the fresh file", left)
	}
	fi, err := os.Stat(filepath.Join(dir, blobsDir))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("blobs/ mode = %v, %v; want 0700", fi.Mode().Perm(), err)
	}
}

// TestCacheENOSPC fills a tiny tmpfs: the write must fail and leave
// nothing in blobs/.
func TestCacheENOSPC(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to mount a tmpfs, and CI=true")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	c, err := OpenCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 1<<20)
	d := digest.FromBytes(big)
	err = c.Put(d, bytes.NewReader(big))
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("Put on a full disk: err = %v, want ENOSPC naming the blob", err)
	}
	if c.Has(d) {
		t.Error("a failed write left the blob in the cache")
	}
	if left := tmpFiles(t, c); len(left) != 0 {
		t.Errorf("tmp/ holds %v after a failed write", left)
	}
	if err := c.WriteIndex(d, big); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("WriteIndex on a full disk: err = %v, want ENOSPC", err)
	}
	if _, err := c.ReadIndex(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadIndex after a failed write: err = %v, want ErrNotFound", err)
	}
}
