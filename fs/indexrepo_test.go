package fs

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// pathRecorder records the paths of the requests a client sent.
type pathRecorder struct {
	base http.RoundTripper
	// mu guards paths.
	mu    sync.Mutex
	paths []string
}

func (r *pathRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.paths = append(r.paths, req.Method+" "+req.URL.Path)
	r.mu.Unlock()
	return r.base.RoundTrip(req)
}

func (r *pathRecorder) asked(s string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, p := range r.paths {
		if strings.Contains(p, s) {
			out = append(out, p)
		}
	}
	return out
}

// TestIndexRepoOrder: the image's own repository is looked in first; an
// index repository is asked only for layers it left unindexed, and its
// index is then read from there.
func TestIndexRepoOrder(t *testing.T) {
	host := fstest.StartRegistry(t)
	// Small layers: WholeThreshold 1 puts them in index mode anyway.
	layers, _ := lazyLayers(7, 60)
	ref, _ := pushIndexed(t, host, layers) // indexed in its own repository
	repoB := host + "/indexes/b"
	pushIndexTo(t, ref, repoB)

	rec := &pathRecorder{base: http.DefaultTransport}
	im, err := Resolve(t.Context(), newClient(t, "", rec), ref, Options{Logger: testLogger(t), IndexRepos: []string{repoB}, WholeThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for _, l := range im.Layers() {
		if l.Mode != ModeIndex || !strings.Contains(l.Why, "from the registry") {
			t.Errorf("layer %s: mode %s (%s), want the index of its own repository", l.Digest, l.Mode, l.Why)
		}
	}
	if got := rec.asked("/v2/indexes/"); len(got) != 0 {
		t.Errorf("the index repository was asked although the image's repository indexes every layer: %v", got)
	}

	// Another image of the same layers, indexed only in B.
	img, err := fstest.Build(layers, fstest.Options{Platform: "linux/s390x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "lazy/other", "v1"); err != nil {
		t.Fatal(err)
	}
	other := host + "/lazy/other:v1"
	pushIndexTo(t, other, repoB)
	rec = &pathRecorder{base: http.DefaultTransport}
	im2, err := Resolve(t.Context(), newClient(t, "", rec), other, Options{Logger: testLogger(t), IndexRepos: []string{repoB}, WholeThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer im2.Close()
	for _, l := range im2.Layers() {
		if l.Mode != ModeIndex || !strings.Contains(l.Why, "index repository "+repoB) {
			t.Errorf("layer %s of the other image: mode %s (%s), want the index from %s", l.Digest, l.Mode, l.Why, repoB)
		}
	}
	if err := im2.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := rec.asked("/v2/indexes/b/blobs/"); len(got) != len(layers) {
		t.Errorf("index blobs read from B: %v, want one per layer (%d)", got, len(layers))
	}
	for _, d := range img.LayerDescs {
		if got := rec.asked("/v2/lazy/other/blobs/" + d.Digest.String()); len(got) != 0 {
			t.Errorf("layer %s read at load although B indexes it: %v", d.Digest, got)
		}
	}
}

// pushIndexTo indexes ref on a throwaway cache and pushes the indexes to
// repo.
func pushIndexTo(t *testing.T, ref, repo string) {
	t.Helper()
	im, err := Resolve(t.Context(), newClient(t, "", nil), ref, Options{Logger: testLogger(t), SpanSize: lazySpan, NoRemoteIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := im.PushIndexTo(t.Context(), repo); err != nil {
		t.Fatalf("PushIndexTo(%s): %v", repo, err)
	}
}

// TestPushIndexToProgressive: a progressive load that streamed the layers
// pushes the indexes it built to Options.PushIndexTo once every stream has
// been verified, and a later image given that repository reads them.
func TestPushIndexToProgressive(t *testing.T) {
	host := fstest.StartRegistry(t)
	layers, _ := lazyLayers(8, 60)
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "lazy/app", "v1"); err != nil {
		t.Fatal(err)
	}
	ref, repo := host+"/lazy/app:v1", host+"/indexes/pushed"
	im, err := Resolve(t.Context(), newClient(t, "", nil), ref, Options{Logger: testLogger(t), Progressive: true, PushIndexTo: repo, WholeThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for _, l := range im.Layers() {
		if l.Mode != ModeStream {
			t.Fatalf("layer %s: mode %s (%s), want stream (no index anywhere yet)", l.Digest, l.Mode, l.Why)
		}
	}
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := im.WaitTree(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The push follows the last stream in the background: wait for it to
	// be found, as another machine would find it.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for {
		im2, err := Resolve(ctx, newClient(t, "", nil), ref, Options{Logger: testLogger(t), IndexRepos: []string{repo}, WholeThreshold: 1})
		if err != nil {
			t.Fatal(err)
		}
		l := im2.Layers()[0]
		if l.Mode == ModeIndex {
			if !strings.Contains(l.Why, "index repository "+repo) {
				t.Errorf("layer mode %s (%s), want the index from %s", l.Mode, l.Why, repo)
			}
			if err := im2.Load(ctx); err != nil {
				t.Errorf("load with the pushed index: %v", err)
			}
			im2.Close()
			return
		}
		im2.Close()
		select {
		case <-ctx.Done():
			t.Fatalf("no index in %s after the progressive load: layer mode %s (%s)", repo, l.Mode, l.Why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lockedBuffer is a log sink safe for the image's goroutines.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestIndexRepoWrongLayer: an artifact in an index repository that names
// the mounted image as its subject but whose blob indexes another layer
// than the one it is annotated for is refused with a log line, and the
// layer streams.
func TestIndexRepoWrongLayer(t *testing.T) {
	host := fstest.StartRegistry(t)
	layersX, _ := lazyLayers(9, 60)
	layersY, _ := lazyLayers(10, 60)
	push := func(name string, layers []fstest.Layer) string {
		img, err := fstest.Build(layers[:1], fstest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := img.Push(t.Context(), host, name, "v1"); err != nil {
			t.Fatal(err)
		}
		return host + "/" + name + ":v1"
	}
	refX, refY := push("app/x", layersX), push("app/y", layersY)
	opts := Options{Logger: testLogger(t), WholeThreshold: 1, NoRemoteIndex: true}
	y, err := Resolve(t.Context(), newClient(t, "", nil), refY, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	if err := y.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	blobs, err := y.indexBlobs(y.layers)
	if err != nil {
		t.Fatal(err)
	}
	x, err := Resolve(t.Context(), newClient(t, "", nil), refX, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	repoB := host + "/indexes/b"
	inB, err := x.Fetched().InRepository(repoB)
	if err != nil {
		t.Fatal(err)
	}
	// y's index, claimed to be x's layer's, in an artifact about x.
	blobs[0].Desc.Annotations[fetch.AnnotationLayerDigest] = x.layers[0].desc.Digest.String()
	if _, err := inB.PushReferrer(t.Context(), fetch.ArtifactTypeIndex, nil, blobs); err != nil {
		t.Fatal(err)
	}

	var logs lockedBuffer
	im, err := Resolve(t.Context(), newClient(t, "", nil), refX, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		WholeThreshold: 1, IndexRepos: []string{repoB}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if l := im.Layers()[0]; l.Mode != ModeIndex {
		t.Fatalf("planned mode %s (%s), want index from %s (refused only once read)", l.Mode, l.Why, repoB)
	}
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	l := im.Layers()[0]
	if l.Mode != ModeStream || !strings.Contains(l.Why, "index is for layer "+y.layers[0].desc.Digest.String()) {
		t.Errorf("layer mode %s (%s), want stream after refusing the index of layer %s", l.Mode, l.Why, y.layers[0].desc.Digest)
	}
	if got := logs.String(); !strings.Contains(got, "registry index unusable; streaming the layer instead") || !strings.Contains(got, "source="+repoB) {
		t.Errorf("no log line refusing the index from %s:\n%s", repoB, got)
	}
}
