package fs

import (
	"io"
	"log"
	"log/slog"
	"testing"

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
