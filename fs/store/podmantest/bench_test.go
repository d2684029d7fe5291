package podmantest

import (
	"context"
	"path"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// BenchmarkPodmanRun measures podman run --rm of a python-like image
// (fstest.Large: gzip layers of about 96, 40 and 16 MB of files, busybox
// on top; the program md5sums one file of the first layer) from podman
// run started to the container's first output, two ways: "pull", a cold
// pull from the loopback registry (every iteration removes the image);
// and "store", the image laid out beforehand in the fake store (a FUSE
// loopback of finished diff directories: what a store costs podman when
// it has every byte at hand; the layout itself is not timed).
func BenchmarkPodmanRun(b *testing.B) {
	requirePodman(b)
	l0, l1, l2 := fstest.Large(1, 96<<20), fstest.Large(2, 40<<20), fstest.Large(3, 16<<20)
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		b.Fatal(err)
	}
	im, err := fstest.Build([]fstest.Layer{l0.Layer, l1.Layer, l2.Layer, bb}, fstest.Options{BlobDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	cmd := []string{critest.BusyboxPath, "md5sum", path.Join("/", l0.Probe.Header.Name)}
	f := newStoreFixture(b, im, "podmantest/python-like")
	for _, withStore := range []bool{false, true} {
		name := "pull"
		if withStore {
			name = "store"
		}
		b.Run(name, func(b *testing.B) {
			opts := Options{Registries: []string{f.reg.host}}
			if withStore {
				opts.AdditionalLayerStore = f.store.mnt
			}
			p := startPodman(b, opts)
			var first time.Duration
			n := 0
			for b.Loop() {
				ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
				before := len(f.reg.front.Requests())
				res, err := p.Run(ctx, RunSpec{Image: f.ref, Command: cmd})
				if err != nil {
					cancel()
					b.Fatal(err)
				}
				if res.ExitCode != 0 || len(res.Stdout) == 0 {
					cancel()
					b.Fatalf("run: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
				}
				if got := f.layerBlobGETs(before); withStore && len(got) != 0 {
					cancel()
					b.Fatalf("run from the store fetched layer blobs %q", got)
				}
				b.Logf("iteration %d: first output after %v", n, res.Timings.ToFirstOutput().Round(time.Millisecond))
				first += res.Timings.ToFirstOutput()
				n++
				if err := p.Rmi(ctx, f.ref); err != nil {
					cancel()
					b.Fatal(err)
				}
				cancel()
			}
			b.ReportMetric(float64(first.Milliseconds())/float64(n), "first-output-ms/op")
		})
	}
}
