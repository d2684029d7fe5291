package critest

// What the takeover tests of the snapshotter and of the layer store share:
// an image whose container checks its own files in a loop, the ocifs
// binary, and `ocifs stats` to find the daemon serving a mount.

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// ChecksumImage is busybox and a layer of files random files of size bytes,
// /data/f0.., with their sha256sum lines in /sums/f0..; the lines are
// returned too (what `busybox sha256sum /data/fK` prints).
func ChecksumImage(files, size int) (*fstest.Image, []string, error) {
	bb, err := BusyboxLayer(fstest.Gzip)
	if err != nil {
		return nil, nil, err
	}
	hdr := func(name string, n int) tar.Header {
		return tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(n), ModTime: fstest.CornerTime, Format: tar.FormatPAX}
	}
	var data []fstest.File
	var lines []string
	for i := range files {
		b := make([]byte, size)
		rand.Read(b)
		sum := sha256.Sum256(b)
		line := fmt.Sprintf("%s  /data/f%d\n", hex.EncodeToString(sum[:]), i)
		lines = append(lines, line)
		data = append(data, fstest.File{Header: hdr(fmt.Sprintf("data/f%d", i), len(b)), Data: b},
			fstest.File{Header: hdr(fmt.Sprintf("sums/f%d", i), len(line)), Data: []byte(line)})
	}
	im, err := fstest.Build([]fstest.Layer{bb, {Compression: fstest.Gzip, Files: data}}, fstest.Options{})
	if err != nil {
		return nil, nil, err
	}
	return im, lines, nil
}

// CheckLoop is the command of a container of a [ChecksumImage] of files
// files that reads them forever, file after file, comparing each one's
// sha256sum with its line of /sums: it prints "ok N" or "BAD N K: what it
// got".
func CheckLoop(files int) []string {
	return []string{BusyboxPath, "sh", "-c", fmt.Sprintf(`bb=%s; i=0
while :; do
  k=$((i %% %d)); i=$((i+1))
  got=$($bb sha256sum /data/f$k 2>&1)
  if [ "$got" = "$($bb cat /sums/f$k 2>&1)" ]; then echo "ok $i"; else echo "BAD $i $k: $got"; fi
done`, BusyboxPath, files)}
}

// BuildOcifs builds cmd/ocifs into dir and returns the binary's path.
func BuildOcifs(dir string) (string, error) {
	bin := filepath.Join(dir, "ocifs")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ocifs/ocifs/cmd/ocifs").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build ocifs: %w\n%s", err, out)
	}
	return bin, nil
}

// DaemonStats is what `ocifs stats --json` says of the snapshotter's layer
// mount or the layer store.
type DaemonStats struct {
	// PID is the daemon serving now (not its holder).
	PID int `json:"pid"`
	// Served counts the layers (the snapshotter) or images (the store)
	// the daemon serves.
	Served int `json:"layers_served"`
}

// Stats asks `ocifs --cache-dir cache stats --json dir`, with bin.
func Stats(bin, cache, dir string) (DaemonStats, error) {
	var s DaemonStats
	out, err := exec.Command(bin, "--cache-dir", cache, "stats", "--json", dir).Output()
	if err != nil {
		return s, fmt.Errorf("ocifs stats %s: %w", dir, err)
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return s, fmt.Errorf("ocifs stats --json %s: %w\n%s", dir, err, out)
	}
	return s, nil
}

// WaitServer waits until a daemon other than old (and not holder)
// answers `ocifs stats` for dir, and returns its pid.
func WaitServer(ctx context.Context, bin, cache, dir string, old, holder int) (int, error) {
	for {
		if s, err := Stats(bin, cache, dir); err == nil && s.PID != 0 && s.PID != old && s.PID != holder {
			return s.PID, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no new daemon serves %s after pid %d: %w", dir, old, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
