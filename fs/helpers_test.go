package fs

import (
	"io"
	"log"
	"log/slog"
	"testing"
)

// testLogger sends the image's log lines to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }
