package critest

import (
	"context"
	"fmt"
	"path"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// benchImage is a python-like image built with fstest.Large: three
// distribution-like gzip layers of about 96, 40 and 16 MB of files (about
// 150 MB unpacked, like the benchmark's python image) and busybox on top.
// The program reads one file from the middle of the first layer.
func benchImage(b *testing.B) (*fstest.Image, []string) {
	b.Helper()
	l0, l1, l2 := fstest.Large(1, 96<<20), fstest.Large(2, 40<<20), fstest.Large(3, 16<<20)
	bb, err := BusyboxLayer(fstest.Gzip)
	if err != nil {
		b.Fatal(err)
	}
	im, err := fstest.Build([]fstest.Layer{l0.Layer, l1.Layer, l2.Layer, bb}, fstest.Options{BlobDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	var size int64
	for _, d := range im.LayerDescs {
		size += d.Size
	}
	b.Logf("image: %d layers, %.1f MB compressed, %.1f MB of files", len(im.LayerDescs), float64(size)/1e6, float64(l0.Bytes+l1.Bytes+l2.Bytes)/1e6)
	return im, []string{BusyboxPath, "md5sum", path.Join("/", l0.Probe.Header.Name)}
}

// BenchmarkCRIPullRun measures, through CRI with containerd's overlayfs
// snapshotter, the time from PullImage sent to the program's exit seen
// with its output, for a cold pull of a python-like image from the
// loopback registry (every iteration removes the image, so containerd's
// garbage collection drops its content and snapshots). It reports the
// pull, the rest of the run and the total per iteration; ns/op also
// counts the removal. containerd 2.x runs both pull paths.
func BenchmarkCRIPullRun(b *testing.B) {
	bins := binaries()
	requireCRI(b, bins[0])
	im, cmd := benchImage(b)
	f := newFixture(b)
	if err := im.Push(b.Context(), f.host, "critest/python-like", "1"); err != nil {
		b.Fatal(err)
	}
	ref := f.host + "/critest/python-like:1"
	for _, bin := range bins {
		modes := []PullMode{PullLocal}
		if bin.name != "containerd-1.6" {
			modes = append(modes, PullTransfer)
		}
		for _, mode := range modes {
			b.Run(bin.name+"/"+mode.String()+"-pull", func(b *testing.B) {
				requireCRI(b, bin)
				benchPullRun(b, bin, f, mode, ref, cmd)
			})
		}
	}
}

// benchPullRun runs cmd from ref in a pod, pulling it afresh every
// iteration.
func benchPullRun(b *testing.B, bin binary, f fixture, mode PullMode, ref string, cmd []string) {
	c := startContainerd(b, bin, f, Options{Pull: mode})
	ctx := b.Context()
	cl, err := c.Dial(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	pod, err := cl.RunPod(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	var pull, run, total time.Duration
	n := 0
	for b.Loop() {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		res, err := cl.Run(rctx, pod, ContainerSpec{Name: fmt.Sprintf("run-%d", n), Image: ref, Command: cmd}, nil)
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		if res.ExitCode != 0 || len(res.Output.Stdout) == 0 {
			cancel()
			b.Fatalf("run: exit %d, output %q", res.ExitCode, res.Output.Combined)
		}
		b.Logf("iteration %d: pull %v, total %v", n, res.Timings.Pull().Round(time.Millisecond), res.Timings.Total().Round(time.Millisecond))
		pull += res.Timings.Pull()
		total += res.Timings.Total()
		run += res.Timings.Done.Sub(res.Timings.Pulled)
		n++
		if err := cl.RemoveContainer(rctx, res.ContainerID); err != nil {
			cancel()
			b.Fatal(err)
		}
		if err := cl.RemoveImage(rctx, ref); err != nil {
			cancel()
			b.Fatal(err)
		}
		cancel()
	}
	b.ReportMetric(float64(pull.Milliseconds())/float64(n), "pull-ms/op")
	b.ReportMetric(float64(run.Milliseconds())/float64(n), "run-ms/op")
	b.ReportMetric(float64(total.Milliseconds())/float64(n), "total-ms/op")
}
