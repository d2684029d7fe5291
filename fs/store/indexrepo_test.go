package store

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// TestStoreIndexRepo: the store given an index repository
// (Options.Image.IndexRepos) finds there the index of an image whose own
// repository has none, and serves its layer lazily: a small file's read
// fetches a part of the layer, not all of it.
func TestStoreIndexRepo(t *testing.T) {
	fstest.RequireFUSE(t)
	ll := fstest.Large(11, 8<<20)
	img, err := fstest.Build([]fstest.Layer{ll.Layer}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	if err := img.Push(t.Context(), reg.host, "store/app", "1"); err != nil {
		t.Fatal(err)
	}
	ref, repoB := reg.host+"/store/app:1", reg.host+"/indexes/b"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	im, err := fs.Resolve(ctx, c, ref, fs.Options{NoRemoteIndex: true, SpanSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Load(ctx); err == nil {
		_, err = im.PushIndexTo(ctx, repoB)
	}
	im.Close()
	if err != nil {
		t.Fatalf("index into %s: %v", repoB, err)
	}

	c2, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	lb := &lockedBuffer{}
	s, err := Mount(context.WithoutCancel(t.Context()), filepath.Join(t.TempDir(), "store"), Options{Client: c2,
		Logger: slog.New(slog.NewTextHandler(lb, nil)), Image: fs.Options{IndexRepos: []string{repoB}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount store: %v", err)
		}
		t.Logf("store log:\n%s", lb.String())
	})
	from := len(reg.front.Requests())
	layer := img.LayerDescs[0]
	got, err := os.ReadFile(filepath.Join(podmantest.LayerDir(s.Dir, ref, layer.Digest), "diff", ll.Probe.Header.Name))
	if err != nil || !bytes.Equal(got, ll.Probe.Data) {
		t.Fatalf("read %s through the store: %d bytes, %v; want the %d bytes of the image", ll.Probe.Header.Name, len(got), err, len(ll.Probe.Data))
	}
	if log := lb.String(); !strings.Contains(log, "modes="+fs.ModeIndex) {
		t.Errorf("the store did not load the layer in index mode:\n%s", log)
	}
	var fetched int64
	for _, l := range c2.Stats().Blobs {
		fetched += l
	}
	if n := c2.Stats().Blobs[layer.Digest]; n == 0 || n >= layer.Size/2 {
		t.Errorf("%d bytes of the %d-byte layer fetched for one small file, want some and under half", n, layer.Size)
	}
	if gets := reg.blobGETs(from); !slices.ContainsFunc(gets, func(p string) bool { return strings.HasPrefix(p, "/v2/indexes/b/blobs/") }) {
		t.Errorf("no blob read from %s: %v", repoB, gets)
	}
	t.Logf("layer %d bytes; fetched %d bytes of it, %d in all", layer.Size, c2.Stats().Blobs[layer.Digest], fetched)
}
