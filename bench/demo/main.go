// Command demo is `make demo`: it needs nothing from the internet. It starts
// a registry on loopback, publishes the Go toolchain of this machine as a
// multi-layer gzip image, mounts it with ocifs on a fresh cache, runs
// `go version` from inside the mount and prints the image size beside the
// bytes ocifs fetched. Then it pushes the layer indexes to the registry and
// mounts again on another fresh cache, lazily, and once more warm.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

func main() {
	ocifs := flag.String("ocifs", "bin/ocifs", "the ocifs binary to demonstrate")
	tree := flag.String("tree", runtime.GOROOT(), "the directory tree to publish as an image")
	layers := flag.Int("layers", 4, "how many layers to split the tree into")
	keep := flag.Bool("keep", false, "keep the work directory (registry, caches, daemon logs) for a look afterwards")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *ocifs, *tree, *layers, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, ocifs, tree string, nLayers int, keep bool) error {
	ocifs, err := filepath.Abs(ocifs)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ocifs-demo-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Printf("    work directory (kept): %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}

	step("starting docker-registry on loopback")
	host, stopRegistry, err := fstest.RunRegistry(ctx, filepath.Join(work, "registry"))
	if err != nil {
		return err
	}
	defer stopRegistry()

	step(fmt.Sprintf("publishing %s as %d gzip layers", tree, nLayers))
	ls, err := fstest.GoToolchain(tree, nLayers)
	if err != nil {
		return err
	}
	prefix(ls, "usr/local/go")
	img, err := fstest.Build(ls, fstest.Options{BlobDir: filepath.Join(work, "blobs")})
	if err != nil {
		return err
	}
	ref := host + "/demo/go:" + runtime.Version()
	if err := img.Push(ctx, host, "demo/go", runtime.Version()); err != nil {
		return err
	}
	size := img.ConfigDesc.Size
	for _, d := range img.LayerDescs {
		size += d.Size
	}
	fmt.Printf("    image %s: %d layers, %s compressed\n", ref, len(img.LayerDescs), human(size))

	mnt := filepath.Join(work, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return err
	}
	coldCache, lazyCache := filepath.Join(work, "cache-a"), filepath.Join(work, "cache-b")
	runs := []struct {
		label, cache string
		args         []string
		note         string
	}{
		{"fresh cache, no index anywhere", coldCache, nil,
			"no index exists for these gzip layers yet: the mount streams each layer once, verifies it and indexes it"},
		{"another fresh cache, index in the registry, --prefetch=none", lazyCache, []string{"--prefetch=none"},
			"only the spans that go version read were fetched, each checked against its digest"},
		{"the same cache again", lazyCache, []string{"--prefetch=none"}, "everything it reads is cached"},
	}
	for i, r := range runs {
		if i == 1 {
			step("ocifs index build --push (stores the layer indexes as a referrer of the image)")
			if err := sh(ocifs, "--cache-dir", coldCache, "index", "build", "--push", ref); err != nil {
				return err
			}
		}
		step(fmt.Sprintf("ocifs mount (%s)", r.label))
		if err := demoMount(ctx, ocifs, ref, r.cache, mnt, size, r.args); err != nil {
			return err
		}
		fmt.Printf("    (%s)\n", r.note)
	}
	return nil
}

// demoMount mounts ref at mnt, runs go version from inside, prints the
// figures and unmounts.
func demoMount(ctx context.Context, ocifs, ref, cache, mnt string, size int64, extra []string) error {
	start := time.Now()
	args := append([]string{"--cache-dir", cache, "mount"}, extra...)
	if err := sh(ocifs, append(args, ref, mnt)...); err != nil {
		return err
	}
	mountTime := time.Since(start)
	goBin := filepath.Join(mnt, "usr/local/go/bin/go")
	fmt.Printf("    $ %s version\n", goBin)
	out, err := exec.CommandContext(ctx, goBin, "version").CombinedOutput()
	ran := time.Since(start)
	fmt.Printf("    %s", out)
	stats, serr := readStats(ocifs, cache, mnt)
	if err == nil && serr == nil {
		fmt.Printf("    time to mount %v, to mount and run go version %v\n", mountTime.Round(time.Millisecond), ran.Round(time.Millisecond))
		fmt.Printf("    image size %s, bytes fetched %s (%.1f%%), requests %d\n",
			human(size), human(stats.BytesFetched), 100*float64(stats.BytesFetched)/float64(size), stats.Requests)
	}
	if uerr := sh(ocifs, "--cache-dir", cache, "unmount", mnt); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("%s version: %v: %s", goBin, err, out)
	}
	return serr
}

type stats struct {
	BytesFetched int64 `json:"bytes_fetched"`
	Requests     int64 `json:"requests"`
}

func readStats(ocifs, cache, mnt string) (stats, error) {
	var s stats
	out, err := exec.Command(ocifs, "--cache-dir", cache, "stats", "--json", mnt).Output()
	if err != nil {
		return s, fmt.Errorf("ocifs stats: %w", err)
	}
	return s, json.NewDecoder(bytes.NewReader(out)).Decode(&s)
}

// prefix moves every entry of the layers under dir, adding dir's parents to
// the first layer, so the tree sits where a real image keeps it.
func prefix(ls []fstest.Layer, dir string) {
	var parents []fstest.File
	for p := dir; p != "."; p = filepath.Dir(p) {
		h := tar.Header{Name: p + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		parents = append([]fstest.File{{Header: h}}, parents...)
	}
	for i := range ls {
		for j := range ls[i].Files {
			h := &ls[i].Files[j].Header
			h.Name = filepath.Join(dir, h.Name)
			if h.Typeflag == tar.TypeDir {
				h.Name += "/"
			}
			if h.Typeflag == tar.TypeLink {
				h.Linkname = filepath.Join(dir, h.Linkname)
			}
		}
	}
	ls[0].Files = append(parents[:len(parents)-1], ls[0].Files...)
}

func sh(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	fmt.Printf("    $ ocifs %s\n", strings.Join(args, " "))
	return cmd.Run()
}

func step(s string) { fmt.Printf("==> %s\n", s) }

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
