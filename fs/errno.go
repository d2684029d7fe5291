package fs

import (
	"context"
	"errors"
	"log/slog"
	"syscall"
)

// errno maps an error met while serving n to the errno the reader gets, and
// logs it once. A digest mismatch, bad layer bytes or an unreachable registry
// are all EIO: the reader never gets different data, only an error.
func (im *Image) errno(ctx context.Context, n *Node, off int64, err error) syscall.Errno {
	switch {
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return syscall.EINTR
	case errors.Is(err, errNoEntry):
		return syscall.ENOENT
	}
	what := "read failed"
	// ErrFormat and ErrDigest are kinds shared with fetch and index (see
	// errors.go): they match those packages' sentinels and digest errors too.
	if errors.Is(err, ErrFormat) || errors.Is(err, ErrDigest) {
		what = "read refused: layer failed verification"
	}
	// The kernel retries a failed read (and readahead asks too): say it once
	// per file at Error, the repeats at Debug.
	level := slog.LevelError
	if _, seen := im.refused.LoadOrStore(n, true); seen {
		level = slog.LevelDebug
	}
	im.log.Log(ctx, level, what, "inode", n.ID, "layer", im.layers[n.Layer].desc.Digest, "off", off, "err", err)
	return syscall.EIO
}
