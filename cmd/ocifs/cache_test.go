package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
)

// populatedCache fills a fresh cache by reading a file of the fixture, and
// returns it with what fetch says it holds.
func populatedCache(t *testing.T) (string, []fetch.CacheEntry) {
	t.Helper()
	cache := isolate(t)
	mustRun(t, "--cache-dir", cache, "cat", layoutRef(t, fixtureImage(t)), "/etc/motd")
	c, err := fetch.OpenCache(cache)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) == 0 {
		t.Fatal("reading a file cached nothing")
	}
	return cache, ents
}

func TestCacheLsDu(t *testing.T) {
	cache, ents := populatedCache(t)
	r := mustRun(t, "--cache-dir", cache, "cache", "ls")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != len(ents)+1 || !strings.HasPrefix(lines[0], "KIND") {
		t.Fatalf("cache ls: %d lines, want a header and %d entries:\n%s", len(lines), len(ents), r.stdout)
	}
	var total int64
	for _, en := range ents {
		total += en.Size
		if !strings.Contains(r.stdout, en.Digest.String()) {
			t.Errorf("cache ls lacks %s %s", en.Kind, en.Digest)
		}
	}
	r = mustRun(t, "--cache-dir", cache, "cache", "du")
	want := "total  " + strconv.Itoa(len(ents)) + " entries"
	if !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, "("+strconv.FormatInt(total, 10)+" bytes)") {
		t.Errorf("cache du lacks %q and %d bytes:\n%s", want, total, r.stdout)
	}

	// Listing a cache that does not exist shows nothing and creates nothing.
	none := filepath.Join(t.TempDir(), "none")
	r = mustRun(t, "--cache-dir", none, "cache", "ls")
	if strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("cache ls of no cache = %q, want the header only", r.stdout)
	}
	if _, err := os.Stat(none); !os.IsNotExist(err) {
		t.Errorf("cache ls created %s (stat err %v)", none, err)
	}
}

func TestCachePrune(t *testing.T) {
	cache, ents := populatedCache(t)
	c, err := fetch.OpenCache(cache)
	if err != nil {
		t.Fatal(err)
	}

	// Fresh entries survive the default 30 days.
	r := mustRun(t, "--cache-dir", cache, "cache", "prune")
	if !strings.Contains(r.stdout, "removed 0 of "+strconv.Itoa(len(ents))) {
		t.Errorf("default prune of a fresh cache: %q", r.stdout)
	}

	// Age one entry past 7 days: --older-than 7d removes it alone.
	old := ents[0]
	p := filepath.Join(cache, old.Kind+"s", old.Digest.Algorithm().String(), old.Digest.Encoded())
	if old.Kind == fetch.KindIndex {
		p = filepath.Join(cache, "index", old.Digest.Algorithm().String(), old.Digest.Encoded())
	}
	then := time.Now().Add(-8 * 24 * time.Hour)
	if err := os.Chtimes(p, then, then); err != nil {
		t.Fatalf("age %s: %v", p, err)
	}
	r = mustRun(t, "--cache-dir", cache, "cache", "prune", "--older-than", "7d")
	if want := "removed 1 of " + strconv.Itoa(len(ents)) + " entries, freed "; !strings.Contains(r.stdout, want) ||
		!strings.Contains(r.stdout, "("+strconv.FormatInt(old.Size, 10)+" bytes)") {
		t.Errorf("prune --older-than 7d = %q, want %q and %d bytes", r.stdout, want, old.Size)
	}
	left, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != len(ents)-1 {
		t.Errorf("after pruning one entry %d remain, want %d", len(left), len(ents)-1)
	}
	for _, en := range left {
		if en.Digest == old.Digest && en.Kind == old.Kind {
			t.Errorf("aged entry %s %s survived", old.Kind, old.Digest)
		}
	}

	r = mustRun(t, "--cache-dir", cache, "cache", "prune", "--all")
	if !strings.Contains(r.stdout, "pruned all entries: removed "+strconv.Itoa(len(left))) {
		t.Errorf("prune --all = %q", r.stdout)
	}
	if left, err := c.List(); err != nil || len(left) != 0 {
		t.Errorf("after prune --all: %d entries, err %v", len(left), err)
	}
}

// TestCacheVerify: cache verify hashes every blob whatever its stamp says:
// a blob damaged in place with its mtime put back is found, removed and
// reported with exit status 1; the rest stay, and a second run is clean.
func TestCacheVerify(t *testing.T) {
	cache, ents := populatedCache(t)
	var blobs []fetch.CacheEntry
	for _, en := range ents {
		if en.Kind == fetch.KindBlob {
			blobs = append(blobs, en)
		}
	}
	if len(blobs) == 0 {
		t.Fatal("no blob cached")
	}
	r := mustRun(t, "--cache-dir", cache, "cache", "verify")
	if want := "verified " + strconv.Itoa(len(blobs)) + " blobs"; !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, ": 0 damaged") {
		t.Fatalf("cache verify of a sound cache = %q, want %q and 0 damaged", r.stdout, want)
	}

	bad := blobs[len(blobs)-1]
	p := filepath.Join(cache, "blobs", bad.Digest.Algorithm().String(), bad.Digest.Encoded())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, bad.ModTime, bad.ModTime)
	r = runCLI(t, "--cache-dir", cache, "cache", "verify")
	if r.code != 1 || !strings.Contains(r.stdout, "damaged: "+bad.Digest.String()) || !strings.Contains(r.stdout, ": 1 damaged") {
		t.Fatalf("cache verify with a damaged blob: exit %d, stdout %q, stderr %q; want exit 1 naming %s", r.code, r.stdout, r.stderr, bad.Digest)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("damaged blob still cached (stat err %v)", err)
	}
	r = mustRun(t, "--cache-dir", cache, "cache", "verify")
	if want := "verified " + strconv.Itoa(len(blobs)-1) + " blobs"; !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, ": 0 damaged") {
		t.Errorf("cache verify after the removal = %q, want %q and 0 damaged", r.stdout, want)
	}
}

func TestParseAge(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30d", 30 * 24 * time.Hour, true},
		{"0d", 0, true},
		{"12h", 12 * time.Hour, true},
		{"1h30m", 90 * time.Minute, true},
		{"-1h", 0, false},
		{"d", 0, false},
		{"1.5d", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, err := parseAge(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseAge(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"},
		{5 << 20, "5.0 MiB"}, {3 << 30, "3.0 GiB"}, {1 << 50, "1.0 PiB"},
	}
	for _, tt := range tests {
		if got := humanBytes(tt.n); got != tt.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
