package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// profileImage is a gzip image with a static busybox to run chrooted and
// data files to read, pushed to the real registry with its index.
type profileImage struct {
	bin, ref string
	content  map[string][]byte
}

func setupProfileImage(t *testing.T) *profileImage {
	t.Helper()
	fstest.RequireFUSE(t)
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs a static /bin/busybox (busybox-static): %v", err)
		}
		t.Skipf("needs a static /bin/busybox (busybox-static): %v", err)
	}
	pi := &profileImage{bin: ocifsBinary(t), content: map[string][]byte{}}
	host := fstest.StartRegistry(t)
	rng := rand.New(rand.NewPCG(16, 16))
	files := []fstest.File{tarDir("bin", 0o755), tarFile("bin/busybox", 0o755, busybox), tarDir("data", 0o755)}
	for i := range 120 {
		var b bytes.Buffer
		for b.Len() < 16<<10+rng.IntN(48<<10) {
			fmt.Fprintf(&b, "line %d of file %d: %x\n", b.Len(), i, rng.Uint64())
		}
		name := fmt.Sprintf("data/f%03d.txt", i)
		pi.content[name] = b.Bytes()
		files = append(files, tarFile(name, 0o644, b.Bytes()))
	}
	img, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: files}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "profile/app", "v1"); err != nil {
		t.Fatal(err)
	}
	pi.ref = host + "/profile/app:v1"
	isolate(t)
	if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", filepath.Join(t.TempDir(), "cache"), "index", "build", "--push", pi.ref); code != 0 {
		t.Fatalf("ocifs index build --push: exit %d\n%s%s", code, out, errs)
	}
	return pi
}

// profileStatsOf runs `ocifs stats --json` on the mount at dir.
func profileStatsOf(t *testing.T, bin, cache, dir string) fs.Stats {
	t.Helper()
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "stats", "--json", dir)
	var s fs.Stats
	if code != 0 || json.Unmarshal([]byte(out), &s) != nil {
		t.Fatalf("ocifs stats --json: exit %d: %s%s", code, out, errs)
	}
	return s
}

// waitReplayed waits for the mount's profile replay to end, as its stats
// say (profile.done), and returns those stats.
func waitReplayed(t *testing.T, bin, cache, dir string) fs.Stats {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s := profileStatsOf(t, bin, cache, dir)
		if s.Profile != nil && s.Profile.Done {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("the profile replay did not end: stats say %+v", s.Profile)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not a timed assertion
	}
}

// TestProfileRecordCLI: `ocifs profile record --push` runs a command
// chrooted in the image and records what it reads; a mount on a cold cache
// on "another machine" (a fresh cache) finds the profile beside the image
// in distribution 2.8 (the fallback tag) and fetches its pieces before
// anything reads: reading those files then sends no request. `profile show`
// prints it, --profile=none does not replay it, and `mount
// --record-profile` records one of its own reads into the cache.
func TestProfileRecordCLI(t *testing.T) {
	pi := setupProfileImage(t)
	read := []string{"data/f010.txt", "data/f099.txt", "data/f042.txt"}
	var want bytes.Buffer
	for _, name := range read {
		want.Write(pi.content[name])
	}

	t.Run("usage", func(t *testing.T) {
		r := runCLI(t, "--cache-dir", t.TempDir(), "profile", "record", pi.ref, "/bin/busybox")
		if r.code != 2 || !strings.Contains(r.stderr, "IMAGE -- CMD") {
			t.Errorf("exit %d, stderr %q; want 2 and how to give the command", r.code, r.stderr)
		}
		r = runCLI(t, "--cache-dir", t.TempDir(), "profile", "record", "--runs", "0", pi.ref, "--", "/bin/busybox")
		if r.code != 2 || !strings.Contains(r.stderr, "--runs") {
			t.Errorf("--runs 0: exit %d, stderr %q; want 2 and what --runs takes", r.code, r.stderr)
		}
	})

	recCache := t.TempDir()
	// Two runs, each on a mount of its own: the command's output twice.
	args := []string{"--cache-dir", recCache, "profile", "record", "--push", "--runs", "2", pi.ref, "--", "busybox", "cat"}
	for _, name := range read {
		args = append(args, "/"+name)
	}
	r := mustRun(t, args...)
	twice := want.String() + want.String()
	if !strings.HasPrefix(r.stdout, twice) {
		t.Fatalf("the recorded command's output is not the files it read, twice (%d bytes)", len(r.stdout))
	}
	tail := r.stdout[len(twice):]
	if !strings.Contains(tail, "recorded ") || !strings.Contains(tail, "pushed profile artifact sha256:") {
		t.Fatalf("profile record printed %q, want what it recorded and pushed", tail)
	}

	show := runCLI(t, "--cache-dir", t.TempDir(), "profile", "show", "--json", pi.ref)
	var shown struct {
		Source string `json:"source"`
		Bytes  int64  `json:"bytes"`
		Ranges []struct{ Layer, Off, Len int64 }
		Pack   *struct{ Frames int }
	}
	if show.code != 0 || json.Unmarshal([]byte(show.stdout), &shown) != nil {
		t.Fatalf("profile show --json: exit %d\n%s%s", show.code, show.stdout, show.stderr)
	}
	if shown.Source != fs.ProfileRegistry || len(shown.Ranges) == 0 || shown.Bytes < int64(want.Len()) {
		t.Fatalf("profile show = source %q, %d ranges, %d bytes; want the registry's, covering the %d bytes read",
			shown.Source, len(shown.Ranges), shown.Bytes, want.Len())
	}
	if shown.Pack == nil || shown.Pack.Frames == 0 {
		t.Errorf("profile show: pack %+v, want the pushed profile's pack (an indexed gzip image)", shown.Pack)
	}

	t.Run("replay", func(t *testing.T) {
		cache, dir := filepath.Join(t.TempDir(), "cache"), t.TempDir()
		cleanupMount(t, cache, dir)
		if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "mount", "--prefetch=none", pi.ref, dir); code != 0 {
			t.Fatalf("ocifs mount: exit %d\n%s%s", code, out, errs)
		}
		before := waitReplayed(t, pi.bin, cache, dir)
		p := before.Profile
		if p.Source != fs.ProfileRegistry || p.Ranges != len(shown.Ranges) || p.Failed != 0 || p.Bytes < int64(want.Len()) {
			t.Fatalf("replay = %+v, want the registry's %d ranges, none failed", p, len(shown.Ranges))
		}
		for _, name := range read {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || !bytes.Equal(got, pi.content[name]) {
				t.Fatalf("read %s: %d bytes, %v; want the %d written", name, len(got), err, len(pi.content[name]))
			}
		}
		after := profileStatsOf(t, pi.bin, cache, dir)
		t.Logf("replay %+v; then the reads sent %d requests (%d bytes)", *p, after.Requests-before.Requests, after.BytesFetched-before.BytesFetched)
		if after.Requests != before.Requests {
			t.Errorf("reading the profiled files after the replay sent %d requests, want 0", after.Requests-before.Requests)
		}
		if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "unmount", dir); code != 0 {
			t.Fatalf("ocifs unmount: exit %d\n%s%s", code, out, errs)
		}
	})

	t.Run("off", func(t *testing.T) {
		cache, dir := filepath.Join(t.TempDir(), "cache"), t.TempDir()
		cleanupMount(t, cache, dir)
		if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "mount", "--prefetch=none", "--profile=none", pi.ref, dir); code != 0 {
			t.Fatalf("ocifs mount: exit %d\n%s%s", code, out, errs)
		}
		s := waitReplayed(t, pi.bin, cache, dir)
		if s.Profile.Source != "" || s.Profile.Ranges != 0 {
			t.Errorf("replay with --profile=none = %+v, want nothing", *s.Profile)
		}
		if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "unmount", dir); code != 0 {
			t.Fatalf("ocifs unmount: exit %d\n%s%s", code, out, errs)
		}
	})

	t.Run("mountrec", func(t *testing.T) {
		cache, dir := filepath.Join(t.TempDir(), "cache"), t.TempDir()
		cleanupMount(t, cache, dir)
		if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "mount", "--prefetch=none", "--profile=none", "--record-profile=1h", pi.ref, dir); code != 0 {
			t.Fatalf("ocifs mount: exit %d\n%s%s", code, out, errs)
		}
		name := "data/f077.txt"
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, pi.content[name]) {
			t.Fatalf("read %s: %d bytes, %v", name, len(got), err)
		}
		// Unmounting ends the recording early; the daemon saves it.
		if out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "unmount", dir); code != 0 {
			t.Fatalf("ocifs unmount: exit %d\n%s%s", code, out, errs)
		}
		out, errs, code := execOcifs(t, pi.bin, "--cache-dir", cache, "profile", "show", "--json", pi.ref)
		var got struct {
			Source string `json:"source"`
			Bytes  int64  `json:"bytes"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
			t.Fatalf("profile show: exit %d\n%s%s", code, out, errs)
		}
		if got.Source != fs.ProfileLocal || got.Bytes < int64(len(pi.content[name])) {
			t.Errorf("profile after mount --record-profile = %+v, want the cache's, covering the %d bytes read", got, len(pi.content[name]))
		}
	})
}
