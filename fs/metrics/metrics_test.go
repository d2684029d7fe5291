package metrics_test

import (
	"archive/tar"
	"bytes"
	"io"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/metrics"
)

func scrape(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the Prometheus parser refuses the scrape: %v", err)
	}
	return fams
}

// value is the sum of the samples of family name with label=want (every
// sample for label ""); a histogram's value is its count. It is -1 when
// there is no such sample.
func value(fams map[string]*dto.MetricFamily, name, label, want string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	sum, found := 0.0, false
	for _, m := range f.Metric {
		ok := label == ""
		for _, lp := range m.Label {
			if lp.GetName() == label && lp.GetValue() == want {
				ok = true
			}
		}
		if !ok {
			continue
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	if !found {
		return -1
	}
	return sum
}

// TestMetricsFold: what an image and a client counted stays in the totals
// after they are removed (counters never go down), the layers' gauges
// drop, and bytes are told apart by layer mode.
func TestMetricsFold(t *testing.T) {
	data := bytes.Repeat([]byte("ocifs metrics\n"), 1000)
	img, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, ModTime: time.Unix(1, 0)}, Data: data},
	}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := img.WriteLayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	m := metrics.New(metrics.Options{Cache: mustCache(t, cache)})
	c, err := fetch.New(fetch.Options{CacheDir: cache, ObserveRange: m.ObserveRange})
	if err != nil {
		t.Fatal(err)
	}
	removeClient := m.AddClient(c)
	ctx := t.Context()
	im, err := fs.Resolve(ctx, c, "oci:"+layout+":v1", fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	removeImage := m.AddImage(im, c)
	if err := im.Load(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := im.Tree().Lookup("f")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(im.Open(ctx, n))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read f: %d bytes, %v", len(got), err)
	}
	m.ObserveReady(1500 * time.Millisecond)
	live := scrape(t, m)
	mode := im.Layers()[0].Mode
	for _, w := range []struct {
		name, label, value string
		min                float64
	}{
		{"ocifs_served_bytes_total", "", "", float64(len(data))},
		{"ocifs_fetch_bytes_total", "mode", mode, float64(img.LayerDescs[0].Size)},
		{"ocifs_fetch_bytes_total", "mode", "metadata", 1},
		{"ocifs_images", "", "", 1},
		{"ocifs_layers", "mode", mode, 1},
		{"ocifs_mount_ready_seconds", "", "", 1},
		{"ocifs_cache_entries", "kind", "blob", 1},
	} {
		if v := value(live, w.name, w.label, w.value); v < w.min {
			t.Errorf("%s{%s=%q} = %v, want at least %v", w.name, w.label, w.value, v, w.min)
		}
	}
	removeImage()
	im.Close()
	removeClient()
	gone := scrape(t, m)
	for _, name := range []string{"ocifs_served_bytes_total", "ocifs_fetch_requests_total", "ocifs_cache_hits_total", "ocifs_cache_misses_total"} {
		if a, b := value(live, name, "", ""), value(gone, name, "", ""); b < a {
			t.Errorf("%s went down from %v to %v when the image was removed", name, a, b)
		}
	}
	if a, b := value(live, "ocifs_fetch_bytes_total", "mode", mode), value(gone, "ocifs_fetch_bytes_total", "mode", mode); b != a {
		t.Errorf("ocifs_fetch_bytes_total{mode=%s} %v -> %v after removal, want unchanged", mode, a, b)
	}
	if v := value(gone, "ocifs_images", "", ""); v != 0 {
		t.Errorf("ocifs_images = %v after removal", v)
	}
	if v := value(gone, "ocifs_layers", "mode", mode); v != -1 {
		t.Errorf("ocifs_layers{mode=%s} = %v after removal, want no sample", mode, v)
	}
}

func mustCache(t *testing.T, dir string) *fetch.Cache {
	t.Helper()
	c, err := fetch.OpenCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
