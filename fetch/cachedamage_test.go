package fetch

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// damage flips one byte of cached blob d in place.
func damage(t *testing.T, c *Client, d digest.Digest) {
	t.Helper()
	p := filepath.Join(c.Cache().Dir(), blobsDir, d.Algorithm().String(), d.Encoded())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("cached blob %s: %v", d, err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCachedConfigDamaged: a config damaged in the cache is detected, and
// Resolve fetches it again instead of failing; the cache then holds the
// right bytes. Found by cmd/ocifs TestReliabilityCorruptCache: Resolve used
// to fail with "config: digest mismatch (cached)" until the cache was
// cleared by hand. Removing the verify-first branch in OpenBlob fails the
// second Resolve.
func TestCachedConfigDamaged(t *testing.T) {
	tr := newTestRegistry(t, nil)
	pushOne(t, tr, "app", 1000)
	cache := t.TempDir()
	c, _ := testClient(t, Options{CacheDir: cache})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	want := im.ConfigBytes()
	damage(t, c, im.ConfigDigest)

	c2, _ := testClient(t, Options{CacheDir: cache})
	im2, err := c2.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatalf("Resolve with a damaged cached config: %v; want it fetched again", err)
	}
	if !bytes.Equal(im2.ConfigBytes(), want) {
		t.Errorf("config after re-fetch differs")
	}
	f, err := c2.Cache().Open(im.ConfigDigest)
	if err != nil {
		t.Fatalf("config not cached again: %v", err)
	}
	defer f.Close()
	if err := c2.Cache().VerifyAll(f, im.Manifest.Config.Digest); err != nil {
		t.Errorf("cached config after re-fetch: %v", err)
	}
}

// TestCachedBigBlobDamaged: a cached blob over maxVerifyFirst is checked as
// it streams; a damaged copy fails that read with a *DigestError (its bytes
// were already handed out) and is removed, so the next read fetches it from
// the registry and succeeds. Without the removal the second read fails the
// same way, forever.
func TestCachedBigBlobDamaged(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img, _, want := pushOne(t, tr, "app", maxVerifyFirst+4096)
	desc := layerDesc(t, img, 0)
	c, _ := testClient(t, Options{})
	im, err := c.Resolve(t.Context(), tr.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := im.OpenBlob(t.Context(), desc)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cache().Put(desc.Digest, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	damage(t, c, desc.Digest)

	_, err = readAll(t, im, desc)
	var de *DigestError
	if !errors.As(err, &de) {
		t.Fatalf("read of a damaged cached blob: %v; want a *DigestError", err)
	}
	if c.Cache().Has(desc.Digest) {
		t.Errorf("the damaged copy is still cached")
	}
	got, err := readAll(t, im, desc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the damaged copy was dropped: %d bytes, %v", len(got), err)
	}
}
