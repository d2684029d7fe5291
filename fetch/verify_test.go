package fetch

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/opencontainers/go-digest"
)

// putBlob caches n random bytes and returns their digest and path.
func putBlob(t *testing.T, c *Cache, n int) (digest.Digest, string) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	d := digest.FromBytes(b)
	if err := c.Put(d, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return d, filepath.Join(c.Dir(), blobsDir, d.Algorithm().String(), d.Encoded())
}

// verifyCounting runs Verify on a fresh open of blob d and returns its error
// and how many bytes it hashed.
func verifyCounting(t *testing.T, c *Cache, d digest.Digest) (error, int64) {
	t.Helper()
	f, err := c.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := c.hashed.Load()
	err = c.Verify(f, d)
	return err, c.hashed.Load() - before
}

// TestVerifyStamp: a blob admitted by Commit is trusted by Verify without
// being read again while its file is unchanged; a byte changed in place
// (even with its mtime put back), a file replaced by a copy, a stamp that
// names another file and a removed blob are all hashed again, and damage
// is a *DigestError.
func TestVerifyStamp(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("stamps need the file identity Linux gives")
	}
	const size = 1 << 20
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	d, p := putBlob(t, c, size)
	if err, n := verifyCounting(t, c, d); err != nil || n != 0 {
		t.Fatalf("Verify after Commit: err %v, hashed %d bytes; want nil, 0", err, n)
	}

	// Damage in place, mtime restored: ctime still moves.
	fi, _ := os.Stat(p)
	b, _ := os.ReadFile(p)
	b[size/2] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	err, n := verifyCounting(t, c, d)
	var de *DigestError
	if !errors.As(err, &de) || n != size {
		t.Fatalf("Verify of a blob damaged in place: err %v, hashed %d; want a *DigestError after hashing %d", err, n, size)
	}

	// Mended by a copy under a new inode: hashed once, then trusted.
	b[size/2] ^= 1
	tmp := p + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	if err, n := verifyCounting(t, c, d); err != nil || n != size {
		t.Fatalf("Verify of a replaced file: err %v, hashed %d; want nil after hashing %d", err, n, size)
	}
	if err, n := verifyCounting(t, c, d); err != nil || n != 0 {
		t.Fatalf("second Verify of the replaced file: err %v, hashed %d; want nil, 0", err, n)
	}

	// A stamp naming another file is not trusted.
	stamp := filepath.Join(c.Dir(), verifiedDir, d.Algorithm().String(), d.Encoded())
	if err := os.WriteFile(stamp, []byte("dev 1 ino 2 size 3 mtime 0.0 ctime 0.0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err, n := verifyCounting(t, c, d); err != nil || n != size {
		t.Fatalf("Verify with a foreign stamp: err %v, hashed %d; want nil after hashing %d", err, n, size)
	}

	// VerifyAll always hashes.
	f, _ := c.Open(d)
	before := c.hashed.Load()
	if err := c.VerifyAll(f, d); err != nil || c.hashed.Load()-before != size {
		t.Fatalf("VerifyAll: err %v, hashed %d; want nil after hashing %d", err, c.hashed.Load()-before, size)
	}
	f.Close()

	// Remove drops the stamp with the blob.
	if err := c.Remove(KindBlob, d); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stamp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stamp after Remove: %v; want it gone", err)
	}
}

// TestVerifyWrongDigest: Verify of a file against a digest it does not have
// fails and records nothing, so the next Verify hashes again.
func TestVerifyWrongDigest(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, _ := putBlob(t, c, 4096)
	f, err := c.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other := digest.FromString("something else")
	for i := 0; i < 2; i++ {
		before := c.hashed.Load()
		var de *DigestError
		if err := c.Verify(f, other); !errors.As(err, &de) || c.hashed.Load()-before != 4096 {
			t.Fatalf("Verify %d against the wrong digest: %v, hashed %d; want a *DigestError after hashing 4096", i, err, c.hashed.Load()-before)
		}
	}
}
