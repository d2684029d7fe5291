package snapshotter

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// TestRemoteIndexRepo: a Remote given an index repository
// (RemoteOptions.Image.IndexRepos) serves a layer whose index only that
// repository holds lazily: its view reads a small file without the layer.
func TestRemoteIndexRepo(t *testing.T) {
	fstest.RequireRoot(t)
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	ll := fstest.Large(12, 8<<20)
	im, err := fstest.Build([]fstest.Layer{ll.Layer}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Push(t.Context(), host, "remote/app", "1"); err != nil {
		t.Fatal(err)
	}
	faults, err := fstest.NewFaults(host)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(faults)
	t.Cleanup(srv.Close)
	front := srv.Listener.Addr().String()
	f := &remoteFixture{faults: faults, im: im, ref: front + "/remote/app:1", cache: t.TempDir(), log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	repoB := front + "/indexes/b"

	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	built, err := fs.Resolve(t.Context(), c, f.ref, fs.Options{NoRemoteIndex: true, SpanSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Load(t.Context()); err == nil {
		_, err = built.PushIndexTo(t.Context(), repoB)
	}
	built.Close()
	if err != nil {
		t.Fatalf("index into %s: %v", repoB, err)
	}

	if f.lfs, err = fs.MountLayerFS(filepath.Join(t.TempDir(), "layers"), fs.LayerFSOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.lfs.Unmount(); err != nil {
			t.Errorf("unmount layers: %v", err)
		}
	})
	client, err := fetch.New(fetch.Options{CacheDir: f.cache, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRemote(t.Context(), RemoteOptions{Client: client, FS: f.lfs,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{f.logMu, f.log}, nil)), Image: fs.Options{IndexRepos: []string{repoB}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close remote: %v", err)
		}
	})
	l, err := r.Prepare(t.Context(), "1", f.labels(0))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(l.Dir, ll.Probe.Header.Name))
	if err != nil || !bytes.Equal(got, ll.Probe.Data) {
		t.Fatalf("read %s through the layer: %d bytes, %v; want the %d bytes of the image", ll.Probe.Header.Name, len(got), err, len(ll.Probe.Data))
	}
	f.logMu.Lock()
	log := f.log.String()
	f.logMu.Unlock()
	if !strings.Contains(log, "mode="+fs.ModeIndex) {
		t.Errorf("the layer was not served in index mode:\n%s", log)
	}
	layer := im.LayerDescs[0]
	if n := client.Stats().Blobs[layer.Digest]; n == 0 || n >= layer.Size/2 {
		t.Errorf("%d bytes of the %d-byte layer fetched for one small file, want some and under half", n, layer.Size)
	}
	t.Logf("layer %d bytes, %d fetched for %s", layer.Size, client.Stats().Blobs[layer.Digest], ll.Probe.Header.Name)
	if err := r.Release(t.Context(), "1"); err != nil {
		t.Fatal(err)
	}
}
