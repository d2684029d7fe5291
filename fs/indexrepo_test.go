package fs

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

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
