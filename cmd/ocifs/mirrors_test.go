package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/ocifs/ocifs/fs/fstest"
)

// countingRegistry is a registry on loopback that counts the requests for
// content (everything but the /v2/ ping) and with status set, answers them
// with that status instead.
type countingRegistry struct {
	host    string
	content atomic.Int64 // every request but the /v2/ ping
	pulls   atomic.Int64 // of those, for the image's manifests and blobs
}

func newCountingRegistry(t *testing.T, img *fstest.Image, status int) *countingRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	cr := &countingRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" {
			cr.content.Add(1)
			if isImagePull(r.URL.Path) {
				cr.pulls.Add(1)
			}
			if status != 0 {
				http.Error(w, http.StatusText(status), status)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	cr.host = u.Host
	if img != nil {
		direct := httptest.NewServer(reg)
		defer direct.Close()
		du, _ := url.Parse(direct.URL)
		if err := img.Push(t.Context(), du.Host, "test/app", "v1"); err != nil {
			t.Fatalf("push fixture: %v", err)
		}
	}
	return cr
}

// isImagePull reports whether path asks for the image's own manifest or
// blobs, not for its referrers (an ocifs index is looked up at the
// registry, which a mirror with only pull and resolve is not asked for).
func isImagePull(path string) bool {
	return strings.Contains(path, "/blobs/") ||
		strings.Contains(path, "/manifests/") && !strings.Contains(path, "/manifests/sha256-")
}

// writeHostsTOML writes a containerd hosts directory for registry host
// with the given hosts.toml.
func writeHostsTOML(t *testing.T, host, toml string) string {
	t.Helper()
	dir := t.TempDir()
	d := filepath.Join(dir, host) // "host:port", which containerd also reads
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestCLIMirrorFallsThrough: with --hosts-dir naming two mirrors, the first
// answering 503 to everything, the second holding the image, cat and a
// mount daemon read the image from the second: the upstream is not asked
// for anything.
func TestCLIMirrorFallsThrough(t *testing.T) {
	img := fixtureImage(t)
	up := newCountingRegistry(t, img, 0)
	down := newCountingRegistry(t, nil, http.StatusServiceUnavailable)
	good := newCountingRegistry(t, img, 0)
	hosts := writeHostsTOML(t, up.host, fmt.Sprintf(`
server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, up.host, down.host, good.host))
	ref := up.host + "/test/app:v1"
	up.pulls.Store(0)
	good.content.Store(0)

	cache := isolate(t)
	r := mustRun(t, "--cache-dir", cache, "--hosts-dir", hosts, "cat", ref, "/etc/os-release")
	if r.stdout != fixtureRelease {
		t.Errorf("cat through mirrors = %q, want %q", r.stdout, fixtureRelease)
	}
	if n := down.content.Load(); n == 0 {
		t.Errorf("the 503 mirror was never asked")
	}
	if n := good.content.Load(); n == 0 {
		t.Errorf("the second mirror served nothing")
	}
	if n := up.pulls.Load(); n != 0 {
		t.Errorf("the upstream saw %d manifest or blob requests, want none: the second mirror had everything", n)
	}

	t.Run("mount daemon", func(t *testing.T) {
		requireFUSE(t)
		bin := ocifsBinary(t)
		cache := isolate(t)
		before := good.content.Load()
		dir := t.TempDir()
		cleanupMount(t, cache, dir)
		out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "--hosts-dir", hosts, "mount", ref, dir)
		if code != 0 {
			t.Fatalf("mount --hosts-dir: exit %d\n%s%s", code, out, errs)
		}
		checkContent(t, dir)
		if _, errs, code := execOcifs(t, bin, "unmount", dir); code != 0 {
			t.Fatalf("unmount: exit %d: %s", code, errs)
		}
		if good.content.Load() == before {
			t.Errorf("the mount daemon did not read from the mirror")
		}
		if n := up.pulls.Load(); n != 0 {
			t.Errorf("the upstream saw %d manifest or blob requests, want none", n)
		}
	})
}

// TestCLIMirrorConfigErrors: a hosts.toml with an unknown key, or a
// registries.conf that is missing, is an error naming the file (and key)
// before anything is fetched.
func TestCLIMirrorConfigErrors(t *testing.T) {
	hosts := writeHostsTOML(t, "127.0.0.1:5000", "[host.\"http://127.0.0.1:5001\"]\n  capabilites = [\"pull\"]\n")
	r := runCLI(t, "--cache-dir", isolate(t), "--hosts-dir", hosts, "inspect", "127.0.0.1:5000/test/app:v1")
	if r.code != exitFailure || !strings.Contains(r.stderr, "hosts.toml") || !strings.Contains(r.stderr, "capabilites") ||
		!strings.Contains(r.stderr, "--hosts-dir") {
		t.Errorf("unknown hosts.toml key: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	missing := filepath.Join(t.TempDir(), "registries.conf")
	r = runCLI(t, "--cache-dir", isolate(t), "--registries-conf", missing, "inspect", "127.0.0.1:5000/test/app:v1")
	if r.code != exitFailure || !strings.Contains(r.stderr, missing) {
		t.Errorf("missing registries.conf: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}
