package store

import (
	"context"
	"crypto/md5"
	"fmt"
	"path"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// lazyImage is busybox under a large layer (size bytes of files): a program
// that reads one small file of it needs a small part of the image.
func lazyImage(t testing.TB, format string, size int64) (*fstest.Image, string, string) {
	t.Helper()
	large := fstest.Large(7, size)
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	layers := []fstest.Layer{bb, large.Layer}
	var im *fstest.Image
	switch format {
	case "gzip+index", "gzip":
		im, err = fstest.Build(layers, fstest.Options{})
	case "estargz":
		im, err = fstest.BuildLazy(layers, fstest.LazyOptions{Format: fstest.Estargz})
	case "zstd:chunked":
		im, err = fstest.BuildLazy(layers, fstest.LazyOptions{Format: fstest.ZstdChunked})
	}
	if err != nil {
		t.Fatal(err)
	}
	probe := path.Join("/", large.Probe.Header.Name)
	return im, probe, fmt.Sprintf("%x  %s\n", md5.Sum(large.Probe.Data), probe)
}

func imageSize(im *fstest.Image) int64 {
	var n int64
	for _, d := range im.LayerDescs {
		n += d.Size
	}
	return n
}

// TestPodmanRunLazy runs podman run through the store for a gzip image
// with an ocifs index, an eStargz and a zstd:chunked image (and a gzip
// image without one, served in stream mode: fetched whole, timed): the
// container's output is right, every layer came from the store (one use
// each), the store fetched well under the image's size, and podman rmi releases every
// layer (use count back to 0). The time to the container's first output
// is logged beside podman's own pull of the same image.
func TestPodmanRunLazy(t *testing.T) {
	requirePodman(t)
	for _, format := range []string{"gzip+index", "estargz", "zstd:chunked", "gzip"} {
		t.Run(format, func(t *testing.T) {
			im, probe, want := lazyImage(t, format, 32<<20)
			reg := newRegistry(t)
			if err := im.Push(t.Context(), reg.host, "store/lazy", "1"); err != nil {
				t.Fatal(err)
			}
			ref := reg.host + "/store/lazy:1"
			if format == "gzip+index" {
				pushIndex(t, ref)
			}
			s := mountStore(t, filepath.Join(shortDir(t), "store"))
			p := startPodman(t, podmantest.Options{Registries: []string{reg.host}, AdditionalLayerStore: s.Dir})
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			cmd := []string{critest.BusyboxPath, "md5sum", probe}
			before := len(reg.front.Requests())
			res, err := p.Run(ctx, podmantest.RunSpec{Image: ref, Command: cmd})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 0 || string(res.Stdout) != want {
				t.Fatalf("podman run through the store = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, want)
			}
			var digests []string
			for _, d := range im.LayerDescs {
				digests = append(digests, d.Digest.String())
			}
			// The store's own fetches go through the same front, but
			// by Range: podman's pull would GET whole blobs without one.
			fetched := s.client.Stats().BytesFetched
			size := imageSize(im)
			t.Logf("%s: to first output %v through the store; store fetched %d of %d bytes", format, res.Timings.ToFirstOutput().Round(time.Millisecond), fetched, size)
			if format == "gzip" {
				// No index: stream mode fetches every layer once (the
				// lookup waits for it); timed, not lazy.
				if fetched < size {
					t.Errorf("unindexed gzip: store fetched %d bytes of %d: not the whole image?", fetched, size)
				}
			} else if fetched*4 > size {
				t.Errorf("store fetched %d bytes of an image of %d: not lazy", fetched, size)
			}
			for i, d := range im.LayerDescs {
				if n := s.Uses(ref, d.Digest); n != 1 {
					t.Errorf("layer %d: use count after the run = %d, want 1 (podman holds the image)", i, n)
				}
			}
			if err := p.Rmi(ctx, ref); err != nil {
				t.Fatal(err)
			}
			for i, d := range im.LayerDescs {
				if n := s.Uses(ref, d.Digest); n != 0 {
					t.Errorf("layer %d: use count after podman rmi = %d, want 0", i, n)
				}
			}
			stored, err := p.StoredLayers()
			if err != nil {
				t.Fatal(err)
			}
			if len(stored) != 0 {
				t.Errorf("layers left in podman's store after rmi: %v", stored)
			}

			// podman's own pull, same image, same run (a fresh podman
			// without the store).
			plain := startPodman(t, podmantest.Options{Registries: []string{reg.host}})
			before = len(reg.front.Requests())
			res2, err := plain.Run(ctx, podmantest.RunSpec{Image: ref, Command: cmd})
			if err != nil {
				t.Fatal(err)
			}
			if res2.ExitCode != 0 || string(res2.Stdout) != want {
				t.Fatalf("podman run without the store = exit %d, stdout %q, stderr %q", res2.ExitCode, res2.Stdout, res2.Stderr)
			}
			if got := reg.blobGETs(before, digests...); len(got) < len(digests) {
				t.Errorf("podman's own pull fetched %q: the comparison is not a pull", got)
			}
			t.Logf("TIMING %s: podman run to first output: store %v, podman's pull %v (image %d bytes)", format,
				res.Timings.ToFirstOutput().Round(time.Millisecond), res2.Timings.ToFirstOutput().Round(time.Millisecond), size)
		})
	}
}
