package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ocifs/ocifs/fs/fstest"
)

// scrape GETs a Prometheus endpoint and parses it with Prometheus' own text
// parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: the Prometheus text parser refuses it: %v", addr, err)
	}
	return fams
}

// metricValue is the sum of the samples of family name whose labels
// include every pair of labels ("k", "v", ...); a histogram's value is its
// count. ok is false when there is no such sample.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.Label {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	return v, ok
}

// TestMountMetrics mounts an image whose layer has an index in the
// registry, with --metrics-address, reads through the mount, and checks
// with Prometheus' parser that the scrape says what happened: range reads
// from the registry timed, bytes fetched for the index-mode layer, bytes
// served, one mount made ready, the cache measured.
func TestMountMetrics(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	if err := img.Push(t.Context(), host, "metrics/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	ref := host + "/metrics/app:v1"
	isolate(t)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", filepath.Join(t.TempDir(), "c"), "index", "build", "--push", ref); code != 0 {
		t.Fatalf("index build --push: exit %d\n%s%s", code, out, errs)
	}

	cache := isolate(t)
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--prefetch=none", "--metrics-address=127.0.0.1:0", ref, dir)
	if code != 0 {
		t.Fatalf("mount: exit %d\n%s%s", code, out, errs)
	}
	st, err := readState(namePaths(cache, dir))
	if err != nil || st.Metrics == "" {
		t.Fatalf("mount state records no metrics address: %+v, %v", st, err)
	}
	before := scrape(t, st.Metrics)
	checkContent(t, dir)
	after := scrape(t, st.Metrics)

	delta := func(name string, labels ...string) float64 {
		a, ok := metricValue(after, name, labels...)
		if !ok {
			t.Errorf("scrape has no %s%v", name, labels)
		}
		b, _ := metricValue(before, name, labels...)
		return a - b
	}
	if d := delta("ocifs_served_bytes_total"); d < float64(len(fixtureBig)) {
		t.Errorf("ocifs_served_bytes_total grew by %v reading big.bin (%d bytes)", d, len(fixtureBig))
	}
	if d := delta("ocifs_fetch_range_reads_total", "source", "registry"); d < 1 {
		t.Errorf("ocifs_fetch_range_reads_total{source=registry} grew by %v over reads of an index-mode layer", d)
	}
	if d := delta("ocifs_fetch_range_duration_seconds"); d < 1 {
		t.Errorf("ocifs_fetch_range_duration_seconds observed %v range reads", d)
	}
	if d := delta("ocifs_fetch_bytes_total", "mode", "index"); d <= 0 {
		t.Errorf("ocifs_fetch_bytes_total{mode=index} grew by %v", d)
	}
	if d := delta("ocifs_fetch_requests_total", "mode", "index"); d < 1 {
		t.Errorf("ocifs_fetch_requests_total{mode=index} grew by %v over reads of an index-mode layer", d)
	}
	if v, ok := metricValue(after, "ocifs_fetch_requests_total", "mode", "metadata"); !ok || v < 2 {
		t.Errorf("ocifs_fetch_requests_total{mode=metadata} = %v (present %v), want the manifest and config requests", v, ok)
	}
	if d := delta("ocifs_cache_misses_total"); d < 1 {
		t.Errorf("ocifs_cache_misses_total grew by %v over first reads", d)
	}
	if d := delta("ocifs_cache_misses_total", "kind", "span"); d < 1 {
		t.Errorf("ocifs_cache_misses_total{kind=span} grew by %v over first reads of an index-mode layer", d)
	}
	if d := delta("ocifs_served_bytes_total", "mode", "index"); d < float64(len(fixtureBig)) {
		t.Errorf("ocifs_served_bytes_total{mode=index} grew by %v reading big.bin (%d bytes)", d, len(fixtureBig))
	}
	if d := delta("ocifs_layer_fetch_bytes_total", "purpose", "reader"); d <= 0 {
		t.Errorf("ocifs_layer_fetch_bytes_total{purpose=reader} grew by %v over first reads", d)
	}
	if d := delta("ocifs_layer_fetch_bytes_total", "purpose", "background"); d != 0 {
		t.Errorf("ocifs_layer_fetch_bytes_total{purpose=background} grew by %v with --prefetch=none", d)
	}

	// big.bin again, its pages dropped from the kernel's cache: the
	// daemon serves it again, from the span it decoded: span hits, no
	// span miss, nothing fetched.
	rereadDropped(t, filepath.Join(dir, "big.bin"), fixtureBig)
	again := scrape(t, st.Metrics)
	since := func(name string, labels ...string) float64 {
		a, _ := metricValue(again, name, labels...)
		b, _ := metricValue(after, name, labels...)
		return a - b
	}
	if d := since("ocifs_served_bytes_total", "mode", "index"); d < float64(len(fixtureBig)) {
		t.Fatalf("re-read of big.bin after dropping its pages: ocifs_served_bytes_total{mode=index} grew by %v, want %d (the kernel kept its pages?)", d, len(fixtureBig))
	}
	if d := since("ocifs_cache_hits_total", "kind", "span"); d < 1 {
		t.Errorf("re-read of big.bin: ocifs_cache_hits_total{kind=span} grew by %v", d)
	}
	if d := since("ocifs_cache_misses_total", "kind", "span"); d != 0 {
		t.Errorf("re-read of big.bin: ocifs_cache_misses_total{kind=span} grew by %v, want 0", d)
	}
	if d := since("ocifs_layer_fetch_bytes_total", "purpose", "reader"); d != 0 {
		t.Errorf("re-read of big.bin: ocifs_layer_fetch_bytes_total{purpose=reader} grew by %v, want 0", d)
	}
	after = again
	for _, want := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"ocifs_mount_ready_seconds", nil, 1},
		{"ocifs_images", nil, 1},
		{"ocifs_layers", []string{"mode", "index", "state", "partial"}, 1},
		{"ocifs_layers", []string{"mode", "whole"}, 1},
		{"ocifs_background_layers", []string{"mode", "index"}, 1}, // --prefetch=none: never fetched whole
		{"ocifs_cache_entries", []string{"kind", "blob"}, 1},
		{"ocifs_cache_bytes", []string{"kind", "blob"}, 1},
		{"ocifs_fetch_bytes_total", []string{"mode", "metadata"}, 1},
		{"ocifs_fallbacks_total", []string{"reason", "quarantine"}, 0},
		{"ocifs_fallbacks_total", []string{"reason", "toc_unverified"}, 0},
		{"ocifs_background_queue", []string{"work", "stream"}, 0},
		{"ocifs_background_queue", []string{"work", "read_ahead"}, 0},
		{"ocifs_cache_hits_total", []string{"kind", "chunk"}, 0},
		{"process_resident_memory_bytes", nil, 1},
	} {
		if v, ok := metricValue(after, want.name, want.labels...); !ok || v < want.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", want.name, want.labels, v, ok, want.min)
		}
	}
	if v, _ := metricValue(after, "ocifs_verify_failures_total"); v != 0 {
		t.Errorf("ocifs_verify_failures_total = %v after clean reads", v)
	}
	if v, _ := metricValue(after, "ocifs_fallbacks_total"); v != 0 {
		t.Errorf("ocifs_fallbacks_total = %v for a clean image", v)
	}
	// Every ocifs family follows the naming conventions, and no label
	// names a file, an image or a mountpoint.
	for name, f := range after {
		if !strings.HasPrefix(name, "ocifs_") {
			continue
		}
		if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if n := lp.GetName(); !slices.Contains([]string{"mode", "state", "kind", "source", "purpose", "reason", "work"}, n) {
					t.Errorf("%s has label %s=%q", name, n, lp.GetValue())
				}
			}
		}
	}
	if testing.Verbose() {
		if resp, err := http.Get("http://" + st.Metrics + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "ocifs_") && !strings.Contains(l, "_bucket") {
					t.Log(l)
				}
			}
		}
	}
	if _, errs, code := execOcifs(t, bin, "unmount", dir); code != 0 {
		t.Fatalf("unmount: %d %s", code, errs)
	}
}

// rereadDropped drops path's pages from the kernel's page cache and reads
// it again, so that the read goes to the daemon; the bytes must be want.
func rereadDropped(t *testing.T, path string, want []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise(DONTNEED) %s: %v", path, err)
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("re-read %s: %d bytes (want %d), equal %v, %v", path, len(got), len(want), bytes.Equal(got, want), err)
	}
}
