package fs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// loadReaders is how many goroutines read at once in the load test.
const loadReaders = 64

// loadMount is one mounted image and the reference content of its files.
type loadMount struct {
	dir   string
	files map[string][]byte
	names []string // sorted keys of files
}

// loadSetup pushes three images that share their big base layer (and two
// of them a second layer), each with its index as a referrer, and mounts
// all three from one client and cache, as one machine running three
// containers of related images would. The base layer is read lazily with
// Range requests, and both mounts reading it share its cached spans.
func loadSetup(tb testing.TB) []loadMount {
	fstest.RequireFUSE(tb)
	host := fstest.StartRegistry(tb)
	base, baseContent := lazyLayers(21, 150)
	mtime := time.Unix(1700000000, 0)
	file := func(name string, data []byte) fstest.File {
		return fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: data}
	}
	rng := rand.New(rand.NewPCG(5, 5))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// Shared by images b and c: incompressible files in a lazily read layer.
	var shared []fstest.File
	sharedContent := map[string][]byte{}
	for i := range 6 {
		name := fmt.Sprintf("opt/blob%d.bin", i)
		sharedContent[name] = random(512<<10 + i*1000)
		shared = append(shared, file(name, sharedContent[name]))
	}
	override := []byte("image b overrides this file\n")
	images := []struct {
		repo   string
		layers []fstest.Layer
		want   map[string][]byte
	}{
		{"load/a", base, baseContent},
		{"load/b", append(append([]fstest.Layer{}, base...),
			fstest.Layer{Compression: fstest.Gzip, Files: shared},
			fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{file("data/f0003.txt", override)}}), nil},
		{"load/c", append(append([]fstest.Layer{}, base...),
			fstest.Layer{Compression: fstest.Gzip, Files: shared}), nil},
	}
	merge := func(ms ...map[string][]byte) map[string][]byte {
		out := map[string][]byte{}
		for _, m := range ms {
			for k, v := range m {
				out[k] = v
			}
		}
		return out
	}
	images[1].want = merge(baseContent, sharedContent, map[string][]byte{"data/f0003.txt": override})
	images[2].want = merge(baseContent, sharedContent)

	opts := Options{SpanSize: lazySpan, WholeThreshold: 64 << 10}
	c, err := fetch.New(fetch.Options{CacheDir: tb.TempDir(), MaxAttempts: 3})
	if err != nil {
		tb.Fatal(err)
	}
	var mounts []loadMount
	for _, im := range images {
		img, err := fstest.Build(im.layers, fstest.Options{})
		if err != nil {
			tb.Fatal(err)
		}
		if err := img.Push(context.Background(), host, im.repo, "v1"); err != nil {
			tb.Fatal(err)
		}
		ref := host + "/" + im.repo + ":v1"
		pushIndexOf(tb, ref, Options{SpanSize: lazySpan, WholeThreshold: 64 << 10})

		served, err := Resolve(context.Background(), c, ref, opts)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { served.Close() })
		if err := served.Load(context.Background()); err != nil {
			tb.Fatal(err)
		}
		for _, l := range served.Layers() {
			if l.Size > 64<<10 && l.Mode != ModeIndex {
				tb.Fatalf("fixture: %s layer %s mode %q, want %q", im.repo, l.Digest, l.Mode, ModeIndex)
			}
		}
		dir := tb.TempDir()
		m, err := served.Mount(context.Background(), dir, MountOptions{})
		if err != nil {
			tb.Fatalf("Mount: %v", err)
		}
		unmountAtCleanup(tb, m, dir)
		lm := loadMount{dir: dir, files: im.want}
		for name := range im.want {
			lm.names = append(lm.names, name)
		}
		sort.Strings(lm.names)
		mounts = append(mounts, lm)
	}
	return mounts
}

func filepathTemp(tb testing.TB) string { return tb.TempDir() }

// loadResult is what a load run did.
type loadResult struct {
	reads, bytes  int64
	errs, wrong   int64
	firstErr      string
	elapsed       time.Duration
	peakHeapInuse uint64
	peakRSSKiB    int64
	perMountReads [3]int64
}

// runLoad has loadReaders goroutines read random ranges of random files of
// random mounts until stop returns true, checking every byte against the
// reference. It samples the Go heap while it runs.
func runLoad(mounts []loadMount, seed uint64, stop func(reads int64) bool) loadResult {
	var res loadResult
	var mu sync.Mutex
	var reads, nbytes, errs, wrong atomic.Int64
	var perMount [3]atomic.Int64
	done := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			mu.Lock()
			res.peakHeapInuse = max(res.peakHeapInuse, ms.HeapInuse)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for g := range loadReaders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			buf := make([]byte, 256<<10)
			for !stop(reads.Load()) {
				mi := rng.IntN(len(mounts))
				m := mounts[mi]
				name := m.names[rng.IntN(len(m.names))]
				want := m.files[name]
				off := rng.IntN(len(want) + 1)
				n := rng.IntN(min(len(buf), len(want)-off) + 1)
				f, err := os.Open(filepath.Join(m.dir, name))
				if err == nil {
					var got int
					got, err = f.ReadAt(buf[:n], int64(off))
					f.Close()
					if err != nil && got == n {
						err = nil // io.EOF at the very end
					}
					if err == nil && !bytes.Equal(buf[:got], want[off:off+n]) {
						if wrong.Add(1) == 1 {
							mu.Lock()
							res.firstErr = fmt.Sprintf("wrong bytes: %s of mount %d at %d+%d", name, mi, off, n)
							mu.Unlock()
						}
					}
					nbytes.Add(int64(got))
				}
				if err != nil && errs.Add(1) == 1 {
					mu.Lock()
					res.firstErr = fmt.Sprintf("%s of mount %d at %d+%d: %v", name, mi, off, n, err)
					mu.Unlock()
				}
				reads.Add(1)
				perMount[mi].Add(1)
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	close(done)
	sampler.Wait()
	res.reads, res.bytes, res.errs, res.wrong = reads.Load(), nbytes.Load(), errs.Load(), wrong.Load()
	for i := range perMount {
		res.perMountReads[i] = perMount[i].Load()
	}
	res.peakRSSKiB = vmHWM()
	return res
}

// vmHWM returns this process's peak resident set size in KiB, or -1.
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// loadMemoryBound is the most Go heap the load may hold: the span LRU
// (DefaultSpanCacheBytes) plus in-flight buffers with a wide margin. A leak
// per read (a span or buffer kept) or an unbounded span cache crosses it.
const loadMemoryBound = DefaultSpanCacheBytes + 192<<20

// TestLoad: 64 readers over 3 mounts of images sharing layers, random
// files and ranges, for a short while (this runs under -race in make test):
// zero errors, zero wrong bytes, every mount read, and the Go heap bounded.
// A served wrong byte fails at "wrong bytes"; a read error (EIO from a
// race in the shared span fetches) at "errors"; an unbounded span cache
// at the heap check.
func TestLoad(t *testing.T) {
	mounts := loadSetup(t)
	deadline := time.Now().Add(2 * time.Second)
	res := runLoad(mounts, 1, func(int64) bool { return time.Now().After(deadline) })
	t.Logf("%d reads, %.1f MiB in %v (%.1f MB/s), peak heap in use %d MiB, peak RSS %d MiB",
		res.reads, float64(res.bytes)/(1<<20), res.elapsed.Round(time.Millisecond),
		float64(res.bytes)/1e6/res.elapsed.Seconds(), res.peakHeapInuse>>20, res.peakRSSKiB>>10)
	if res.errs != 0 || res.wrong != 0 {
		t.Errorf("%d errors, %d wrong reads of %d; first: %s", res.errs, res.wrong, res.reads, res.firstErr)
	}
	for i, n := range res.perMountReads {
		if n == 0 {
			t.Errorf("mount %d was never read", i)
		}
	}
	if res.peakHeapInuse > loadMemoryBound {
		t.Errorf("peak heap in use %d MiB, want at most %d MiB", res.peakHeapInuse>>20, loadMemoryBound>>20)
	}
}

// BenchmarkLoad is TestLoad's workload as a benchmark: b.N random reads by
// 64 goroutines over the 3 mounts, each checked, reporting throughput and
// this process's peak RSS (VmHWM: mounts, readers and test together).
//
//	go test -run '^$' -bench BenchmarkLoad -benchtime 20000x ./fs
func BenchmarkLoad(b *testing.B) {
	mounts := loadSetup(b)
	b.ResetTimer()
	n := int64(b.N)
	res := runLoad(mounts, uint64(b.N), func(reads int64) bool { return reads >= n })
	b.StopTimer()
	if res.errs != 0 || res.wrong != 0 {
		b.Fatalf("%d errors, %d wrong reads of %d; first: %s", res.errs, res.wrong, res.reads, res.firstErr)
	}
	b.ReportMetric(float64(res.bytes)/1e6/res.elapsed.Seconds(), "MB/s")
	b.ReportMetric(float64(res.peakRSSKiB)/1024, "peak-RSS-MiB")
	b.ReportMetric(float64(res.peakHeapInuse)/(1<<20), "peak-heap-MiB")
}
