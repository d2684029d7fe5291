package fetch

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// putBlobs caches n blobs of size bytes each and returns their digests.
func putBlobs(t *testing.T, c *Cache, n, size int) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	for i := range n {
		b := bytes.Repeat([]byte{byte(i + 1)}, size)
		d := digest.FromBytes(b)
		if err := c.Put(d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// setUse sets the entry's write time and its use stamp to at.
func setUse(t *testing.T, c *Cache, d digest.Digest, at time.Time) {
	t.Helper()
	p, _ := c.path(blobsDir, d)
	if err := os.Chtimes(p, at, at); err != nil {
		t.Fatal(err)
	}
	u, _ := c.path(filepath.Join(usedDir, KindBlob), d)
	os.MkdirAll(filepath.Dir(u), 0o700)
	if err := os.WriteFile(u, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(u, at, at); err != nil {
		t.Fatal(err)
	}
}

func has(c *Cache, ds ...digest.Digest) []bool {
	var out []bool
	for _, d := range ds {
		out = append(out, c.Has(d))
	}
	return out
}

// TestTrim: least recently used first down to the bound, never a pinned
// entry nor one being written; a pin whose process is gone is stale.
func TestTrim(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ds := putBlobs(t, c, 5, 1000)
	now := time.Now()
	for i, d := range ds {
		setUse(t, c, d, now.Add(-time.Duration(10-i)*time.Hour)) // ds[0] used longest ago
	}
	// ds[0] is pinned; opening ds[1] renews its use past everyone else's.
	pin, err := c.Pin("mount-a", []PinEntry{{Digest: ds[0]}, {Kind: KindIndex, Digest: ds[2]}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Open(ds[1])
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	// A blob being written: not listed, not counted, not removed.
	w, err := c.Create(digest.FromString("pending"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte{9}, 5000)); err != nil {
		t.Fatal(err)
	}

	res, err := c.Trim(TrimOptions{MaxBytes: 3000})
	if err != nil {
		t.Fatal(err)
	}
	// 5000 bytes: remove the LRU unpinned ones, ds[2] then ds[3], to 3000
	// (the index of ds[2] is pinned, not its blob).
	if got, want := has(c, ds...), []bool{true, true, false, false, true}; !slices.Equal(got, want) {
		t.Errorf("after Trim(3000) present = %v, want %v (ds[0] pinned, ds[1] just used)", got, want)
	}
	if res.Removed != 2 || res.Freed != 2000 || res.Left != 3000 || res.Pinned != 1000 || res.Entries != 5 {
		t.Errorf("Trim = %+v, want 2 removed, 2000 freed, 3000 left, 1000 pinned of 5", res)
	}
	// The bound cannot hold below the pinned bytes.
	res, err = c.Trim(TrimOptions{MaxBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := has(c, ds...), []bool{true, false, false, false, false}; !slices.Equal(got, want) || res.Left != 1000 {
		t.Errorf("after Trim(1): present %v, left %d; want only the pinned ds[0], 1000 bytes", got, res.Left)
	}
	w.Abort()

	// Released, the pin no longer protects; a pin file no process holds
	// (its owner died) is removed by Trim.
	pin.Release()
	pin2, err := c.Pin("mount-b", []PinEntry{{Digest: ds[0]}})
	if err != nil {
		t.Fatal(err)
	}
	pin2.f.Close() // what the kernel does when the owner dies
	res, err = c.Trim(TrimOptions{OlderThan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if c.Has(ds[0]) || res.Removed != 1 {
		t.Errorf("Trim(OlderThan 1h) with only a stale pin: ds[0] present %v, %+v", c.Has(ds[0]), res)
	}
	if _, err := os.Stat(pin2.path); !os.IsNotExist(err) {
		t.Errorf("stale pin %s left (stat err %v)", pin2.path, err)
	}
	if _, err := c.Pin("../x", nil); err == nil {
		t.Errorf("Pin accepted a name with a slash")
	}
}
