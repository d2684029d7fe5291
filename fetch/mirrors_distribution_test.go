package fetch

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/opencontainers/go-digest"
)

// fronted is a docker-registry behind a fault front that records what it
// is asked.
type fronted struct {
	host   string // the front's host:port
	faults *fstest.Faults
}

func startFronted(t *testing.T) (raw string, f fronted) {
	t.Helper()
	raw = fstest.StartRegistry(t)
	faults, err := fstest.NewFaults(raw)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(faults)
	t.Cleanup(srv.Close)
	return raw, fronted{host: strings.TrimPrefix(srv.URL, "http://"), faults: faults}
}

// count counts the GETs the front saw whose path contains part.
func (f fronted) count(part string) int {
	n := 0
	for _, r := range f.faults.Requests() {
		if r.Method == http.MethodGet && strings.Contains(r.Path, part) {
			n++
		}
	}
	return n
}

// TestMirrorDistribution runs the mirror chain against two Debian
// docker-registry (distribution 2.8) instances, each behind a fault front:
// a mirror answering 503 falls through to the upstream, one serving the
// image spares the upstream every blob GET, and one flipping bytes of a
// range falls through for that range.
func TestMirrorDistribution(t *testing.T) {
	ctx := t.Context()
	upRaw, up := startFronted(t)
	mirrorRaw, mirror := startFronted(t)
	img := buildImage(t, "file", 300000)
	for _, host := range []string{upRaw, mirrorRaw} {
		if err := img.Push(ctx, host, "app", "v1"); err != nil {
			t.Fatal(err)
		}
	}
	dir := writeHosts(t, "", hostDir(up.host), "[host.\"http://"+mirror.host+"\"]\ncapabilities = [\"pull\", \"resolve\"]\n")
	layer := img.LayerDescs[0]
	readImage := func(t *testing.T) *Image {
		t.Helper()
		c, _ := testClient(t, Options{HostsDir: dir})
		im, err := c.Resolve(ctx, up.host+"/app:v1")
		if err != nil {
			t.Fatal(err)
		}
		if im.ManifestDigest != img.ManifestDesc.Digest {
			t.Fatalf("Resolve = %s, want %s", im.ManifestDigest, img.ManifestDesc.Digest)
		}
		b, err := readAll(t, im, layer)
		if err != nil || !bytes.Equal(b, img.Layers[0]) {
			t.Fatalf("layer = %d bytes, %v; want the pushed %d", len(b), err, len(img.Layers[0]))
		}
		return im
	}

	t.Run("mirror answers 503", func(t *testing.T) {
		rule := mirror.faults.Add(&fstest.Rule{Path: "/v2/app/", Fault: fstest.Fault{Kind: fstest.Status, Status: http.StatusServiceUnavailable}})[0]
		defer mirror.faults.Clear()
		before := up.count("/blobs/")
		readImage(t)
		if got := mirror.faults.Hits(rule); got != 3 { // tag, config, layer: one attempt each
			t.Errorf("the mirror answered 503 %d times, want 3 (one per request)", got)
		}
		if got := up.count("/blobs/") - before; got != 2 {
			t.Errorf("upstream saw %d blob GETs, want 2 (config and layer)", got)
		}
	})
	t.Run("mirror has the image", func(t *testing.T) {
		before := up.count("/v2/app/")
		readImage(t)
		if got := up.count("/v2/app/") - before; got != 0 {
			t.Errorf("upstream saw %d GETs, want none", got)
		}
	})
	t.Run("mirror flips a byte of a range", func(t *testing.T) {
		im := readImage(t)
		mirror.faults.Add(&fstest.Rule{Path: "/blobs/" + layer.Digest.String(), Ranged: fstest.WithRange, Fault: fstest.Fault{Kind: fstest.Flip, N: 3}})
		defer mirror.faults.Clear()
		before := up.count("/blobs/" + layer.Digest.String())
		want := img.Layers[0][1000:5000]
		got, err := im.FetchRange(ctx, layer, 1000, 4000, digest.FromBytes(want))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("FetchRange = %d bytes, %v; want the upstream's", len(got), err)
		}
		if n := up.count("/blobs/"+layer.Digest.String()) - before; n != 1 {
			t.Errorf("upstream saw %d GETs of the layer, want the one range the mirror got wrong", n)
		}
	})
}
