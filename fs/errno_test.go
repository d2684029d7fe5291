package fs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

// TestErrnoLogsOncePerNode: a file's EIO is logged at Error once, its
// repeats at Debug, and two files that share an inode number (nodes of two
// layers' views) are each logged.
func TestErrnoLogsOncePerNode(t *testing.T) {
	var buf bytes.Buffer
	im := &Image{
		log:    slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError})),
		layers: []*layer{{}, {}},
	}
	a := &Node{ID: 7, Layer: 0}
	b := &Node{ID: 7, Layer: 1} // same number, another layer's view
	bad := errors.New("registry gone")
	for _, n := range []*Node{a, a, b, b, a} {
		if got := im.errno(context.Background(), n, 0, bad); got != syscall.EIO {
			t.Fatalf("errno = %v, want EIO", got)
		}
	}
	if n := strings.Count(buf.String(), "level=ERROR"); n != 2 {
		t.Errorf("%d lines at Error, want 2 (one per file):\n%s", n, buf.String())
	}
}
