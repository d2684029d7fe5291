package store

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// BenchmarkPodmanRunStore times podman run to the container's first
// output for a python-like image (three layers of about 150 MB of files
// and busybox: gzip with an ocifs index, the same as eStargz, and gzip
// without an index, which the store serves in stream mode), cold
// each time: through a fresh store with an empty cache, and podman's own
// pull into a fresh graph root, on the same registry in the same run.
// The eStargz image also runs through stargz-snapshotter's stargz-store
// (v0.15.1, the last to write the info containers/storage 1.43 reads;
// `make peers` builds it into bench/peers/bin) when OCIFS_STARGZ_STORE names
// its binary.
// The metric is s-to-first-output (ns/op includes starting podman).
//
//	make peers
//	OCIFS_STARGZ_STORE=$PWD/bench/peers/bin/stargz-store go test -run XXX -bench BenchmarkPodmanRunStore -benchtime 3x ./fs/store/
func BenchmarkPodmanRunStore(b *testing.B) {
	requirePodman(b)
	l0, l1, l2 := fstest.Large(1, 96<<20), fstest.Large(2, 40<<20), fstest.Large(3, 16<<20)
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		b.Fatal(err)
	}
	layers := []fstest.Layer{l0.Layer, l1.Layer, l2.Layer, bb}
	cmd := []string{critest.BusyboxPath, "md5sum", path.Join("/", l0.Probe.Header.Name)}
	reg := newRegistry(b)
	for _, format := range []string{"gzip+index", "estargz", "gzip"} {
		var im *fstest.Image
		if format == "estargz" {
			im, err = fstest.BuildLazy(layers, fstest.LazyOptions{Format: fstest.Estargz, BlobDir: b.TempDir()})
		} else {
			im, err = fstest.Build(layers, fstest.Options{BlobDir: b.TempDir()})
		}
		if err != nil {
			b.Fatal(err)
		}
		repo := "bench/" + map[string]string{"gzip+index": "indexed", "estargz": "estargz", "gzip": "gzip"}[format]
		if err := im.Push(b.Context(), reg.host, repo, "1"); err != nil {
			b.Fatal(err)
		}
		ref := reg.host + "/" + repo + ":1"
		if format == "gzip+index" {
			pushIndex(b, ref)
		}
		hows := []string{"store", "pull"}
		if format == "estargz" {
			hows = append(hows, "stargz-store")
		}
		for _, how := range hows {
			b.Run(format+"/"+how, func(b *testing.B) {
				if how == "stargz-store" && os.Getenv("OCIFS_STARGZ_STORE") == "" {
					b.Skip("set OCIFS_STARGZ_STORE to a stargz-store binary (make peers: bench/peers/bin/stargz-store) to compare")
				}
				var total time.Duration
				n := 0
				for b.Loop() {
					opts := podmantest.Options{Registries: []string{reg.host}}
					switch how {
					case "store":
						s := mountStore(b, filepath.Join(shortDir(b), "store"))
						opts.AdditionalLayerStore = s.Dir
					case "stargz-store":
						opts.AdditionalLayerStore = startStargzStore(b)
					}
					p := startPodman(b, opts)
					ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
					res, err := p.Run(ctx, podmantest.RunSpec{Image: ref, Command: cmd})
					cancel()
					if err != nil {
						b.Fatal(err)
					}
					if res.ExitCode != 0 || len(res.Stdout) == 0 {
						b.Fatalf("run: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
					}
					total += res.Timings.ToFirstOutput()
					n++
				}
				b.ReportMetric(total.Seconds()/float64(n), "s-to-first-output")
			})
		}
	}
}

// startStargzStore starts $OCIFS_STARGZ_STORE on a fresh mountpoint and
// root, and stops it at cleanup.
func startStargzStore(b *testing.B) string {
	b.Helper()
	dir := shortDir(b)
	mnt, root := filepath.Join(dir, "store"), filepath.Join(dir, "root")
	for _, d := range []string{mnt, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	cmd := exec.Command(os.Getenv("OCIFS_STARGZ_STORE"), "--root", root, mnt)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		b.Fatalf("stargz-store: %q, %v", line, err)
	}
	return mnt
}
