package fetch

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestCacheProfile: a profile is kept by manifest digest behind the same
// checksum header as an index, replaced by a later one, listed and removed
// as its own kind, and a damaged file is dropped, never returned.
func TestCacheProfile(t *testing.T) {
	c := newCache(t)
	m := digest.FromString("manifest")
	if _, err := c.ReadProfile(m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadProfile of nothing: err = %v, want ErrNotFound", err)
	}
	for _, data := range [][]byte{[]byte("first profile"), []byte("a later one")} {
		if err := c.WriteProfile(m, data); err != nil {
			t.Fatal(err)
		}
		if got, err := c.ReadProfile(m); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("ReadProfile = %q, %v; want %q", got, err, data)
		}
	}
	if c.HasIndex(m) {
		t.Error("a profile shows as an index")
	}
	ents, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Kind != KindProfile || ents[0].Digest != m {
		t.Fatalf("List() = %+v, want the profile", ents)
	}
	p := filepath.Join(c.Dir(), "profiles", "sha256", m.Encoded())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadProfile(m); !errors.Is(err, ErrFormat) {
		t.Fatalf("ReadProfile of a damaged file: err = %v, want ErrFormat", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("damaged profile still there: %v", err)
	}
	if err := c.WriteProfile(m, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(KindProfile, m); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(KindProfile, m); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: err = %v, want ErrNotFound", err)
	}
	// A cache made before profiles existed has no profiles directory.
	if err := os.RemoveAll(filepath.Join(c.Dir(), "profiles")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(); err != nil {
		t.Errorf("List of a cache without profiles/: %v", err)
	}
}
