package main

// Writable mounts: the kernel's overlayfs over the read-only FUSE view. The
// copy-on-write layer itself is package fs's (fs/upper_linux.go); here are
// the paths under the cache directory and the steps the mount command takes.

import (
	"log/slog"
	"path/filepath"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/mountinfo"
)

// writableDirs names the directories of a writable mount at dir (absolute).
// Without --upper they live under <cache>/mounts; with --upper DIR the work
// directory is DIR.work beside it.
func writableDirs(cacheDir, dir, upper string) (fs.UpperDirs, error) {
	return fs.WritableDirs(filepath.Join(cacheDir, "mounts"), mountName(dir), dir, upper)
}

// undo takes down a writable mount that cannot be served: the overlay if it
// is up, then the FUSE view m, however far Upper.Mount got.
func undo(log *slog.Logger, ul *fs.Upper, m *fs.Mount, dir string) {
	if mi, ok, _ := mountinfo.At(dir); ok && fs.IsOverlay(mi) {
		fs.UnmountOverlay(log, dir)
	}
	if _, ok, _ := mountinfo.At(ul.Dirs().Lower); ok {
		unmountServed(log, m, ul.Dirs().Lower)
		return
	}
	m.Wait() // the overlay held the only reference
}

// cleanWritable removes what a writable mount at dir left when its daemon
// died: the read-only view, if the overlay never took it over, and the
// default upper. A kept --upper stays, with its changes.
func cleanWritable(log *slog.Logger, cacheDir, dir string) {
	if d, err := writableDirs(cacheDir, dir, ""); err == nil {
		fs.CleanWritable(log, d)
	}
}

// upperSummary is how the mount command names the upper of a mount.
func upperSummary(d fs.UpperDirs) string {
	if d.Ephemeral {
		return "writable, changes in " + d.Upper + " until unmount"
	}
	return "writable, changes kept in " + d.Upper
}
