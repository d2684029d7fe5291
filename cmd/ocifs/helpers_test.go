package main

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/ocifs/ocifs/fs/fstest"
)

// cliResult is what one in-process run of the CLI printed and returned.
type cliResult struct {
	stdout, stderr string
	code           int
	err            error
}

// runCLI drives run in-process with args, as main would.
func runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), args, &stdout, &stderr)
	return cliResult{stdout: stdout.String(), stderr: stderr.String(), code: exitCode(err), err: err}
}

// mustRun runs the CLI and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) cliResult {
	t.Helper()
	r := runCLI(t, args...)
	if r.code != 0 {
		t.Fatalf("ocifs %s: exit %d, stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// Contents of the fixture image.
var (
	fixtureTime    = time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)
	fixtureRelease = "NAME=ocifs-test\nVERSION=1\n"
	fixtureTool    = "#!/bin/sh\necho tool\n"
	fixtureMotd    = "hello from the top layer\n"
	// fixtureBig is incompressible and over 1 MiB, so its layer is streamed
	// rather than fetched whole.
	fixtureBig = func() []byte {
		b := make([]byte, 3<<19+4321)
		rand.New(rand.NewSource(42)).Read(b)
		return b
	}()
)

func tarDir(name string, mode int64) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: fixtureTime}}
}

func tarFile(name string, mode int64, data []byte) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: fixtureTime}, Data: data}
}

func tarSymlink(name, target string) fstest.File {
	return fstest.File{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: fixtureTime}}
}

// fixtureLayers is a small two-layer image: a big gzip layer (streamed) with
// symlinks of every kind, and a small zstd layer (fetched whole) that adds a
// file and whites one out.
func fixtureLayers() []fstest.Layer {
	return []fstest.Layer{
		{Compression: fstest.Gzip, Files: []fstest.File{
			tarDir("etc", 0o755),
			tarFile("etc/os-release", 0o644, []byte(fixtureRelease)),
			tarSymlink("etc/release", "os-release"),
			tarDir("usr", 0o755),
			tarDir("usr/bin", 0o755),
			tarFile("usr/bin/tool", 0o4755, []byte(fixtureTool)),
			tarSymlink("bin", "usr/bin"),
			tarSymlink("abs", "/etc/os-release"),
			tarSymlink("up", "../../../etc/../etc/os-release"),
			tarSymlink("loop1", "loop2"),
			tarSymlink("loop2", "loop1"),
			tarFile("gone.txt", 0o644, []byte("whited out\n")),
			tarFile("big.bin", 0o600, fixtureBig),
			tarDir("tmp", 0o1777),
		}},
		{Compression: fstest.Zstd, Files: []fstest.File{
			tarFile(".wh.gone.txt", 0o644, nil),
			tarFile("etc/motd", 0o644, []byte(fixtureMotd)),
		}},
	}
}

// fixtureImage builds the fixture image once per test.
func fixtureImage(t *testing.T) *fstest.Image {
	t.Helper()
	img, err := fstest.Build(fixtureLayers(), fstest.Options{})
	if err != nil {
		t.Fatalf("build fixture image: %v", err)
	}
	return img
}

// layoutRef writes img into an OCI layout and returns its reference.
func layoutRef(t *testing.T, img *fstest.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if err := img.WriteLayout(dir, "v1"); err != nil {
		t.Fatalf("write layout: %v", err)
	}
	return "oci:" + dir + ":v1"
}

// registryRef serves an in-process registry holding img, wrapped by wrap
// (nil for none), and returns the image's reference (loopback: plain HTTP).
func registryRef(t *testing.T, img *fstest.Image, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var h http.Handler = reg
	if wrap != nil {
		h = wrap(reg)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// Push straight to the registry, bypassing any wrapper.
	direct := httptest.NewServer(reg)
	defer direct.Close()
	du, _ := url.Parse(direct.URL)
	if err := img.Push(t.Context(), du.Host, "test/app", "v1"); err != nil {
		t.Fatalf("push fixture: %v", err)
	}
	return u.Host + "/test/app:v1"
}

// isolate points the CLI at a fresh cache and an empty docker config, so no
// credentials or cached blobs of this machine leak into a test.
func isolate(t testing.TB) string {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(t.TempDir(), "auth.json"))
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	return filepath.Join(t.TempDir(), "cache")
}

// requireRoot skips a test that needs root, or fails it under CI.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root, and CI=true")
	}
	t.Skip("needs root")
}
