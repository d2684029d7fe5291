package fs

import (
	"errors"
	"io"
	"log"
	"log/slog"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// testLogger sends the image's log lines to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// layoutRef builds layers into an OCI image layout under t.TempDir() and
// returns its reference.
func layoutRef(t testing.TB, layers []fstest.Layer) string {
	t.Helper()
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layout := t.TempDir()
	if err := img.WriteLayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	return "oci:" + layout + ":v1"
}

// pushIndexOf indexes every layer of ref on a throwaway cache (with opts;
// never looking for an index in the registry) and pushes the indexes to
// the registry as a referrer of the image.
func pushIndexOf(tb testing.TB, ref string, opts Options) {
	tb.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	opts.NoRemoteIndex = true
	im, err := Resolve(tb.Context(), c, ref, opts)
	if err != nil {
		tb.Fatal(err)
	}
	defer im.Close()
	if err := im.Load(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	if _, err := im.PushIndex(tb.Context()); err != nil {
		tb.Fatalf("PushIndex: %v", err)
	}
}

// unmountAtCleanup unmounts m when tb ends. A copy of the mount held by a
// mount namespace another process made meanwhile (a container runtime or a
// podman started by a test of another package running at the same time)
// keeps the kernel's connection alive after the mount is gone from ours:
// Unmount says so with ErrMountLingers, which is not this test's failure.
func unmountAtCleanup(tb testing.TB, m *Mount, dir string) {
	tb.Cleanup(func() {
		err := m.Unmount()
		switch {
		case errors.Is(err, ErrMountLingers):
			tb.Logf("Unmount %s: %v (a namespace made by another process holds a copy)", dir, err)
		case err != nil:
			tb.Errorf("Unmount: %v", err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}
