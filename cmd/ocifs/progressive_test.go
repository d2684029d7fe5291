package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// TestCLIProgressive: `mount --progressive` of an image with no index
// anywhere serves its files from the stream (the fs tests show a file read
// while the rest of the stream is held back), and the streamed layer ends
// complete and verified, its index cached for the next mount.
func TestCLIProgressive(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	if err := img.Push(t.Context(), host, "e2e/progressive", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	ref := host + "/e2e/progressive:v1"
	cache := isolate(t)

	dir, _ := e2eMount(t, bin, cache, ref, "--progressive", "--prefetch=none")
	big, err := os.ReadFile(filepath.Join(dir, "big.bin"))
	if err != nil || !bytes.Equal(big, fixtureBig) {
		t.Fatalf("read big.bin: %d bytes, %v; want %d bytes", len(big), err, len(fixtureBig))
	}
	if got, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(got) != fixtureMotd {
		t.Fatalf("read etc/motd = %q, %v; want %q", got, err, fixtureMotd)
	}
	// The stream goes on in the background: poll until it has ended (a
	// guard of a minute against a hang, not a timing assertion).
	var st fs.Stats
	for deadline := time.Now().Add(time.Minute); ; {
		st, _ = statsOf(t, bin, cache, dir)
		if st.Layers[0].Complete || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l := st.Layers[0]; l.Mode != fs.ModeStream || !l.Complete || !l.Verified {
		t.Errorf("layer 0 after the stream: mode %s, complete %v, verified %v; want stream, true, true", l.Mode, l.Complete, l.Verified)
	}
	if st.VerifyFailures != 0 {
		t.Errorf("verify_failures = %d on a good image", st.VerifyFailures)
	}
	e2eUnmount(t, bin, cache, dir)

	out, _, code := execOcifs(t, bin, "--cache-dir", cache, "inspect", ref)
	if code != 0 || !bytes.Contains([]byte(out), []byte("local cache")) {
		t.Errorf("inspect after a progressive mount (exit %d) does not show the cached index:\n%s", code, out)
	}
}
