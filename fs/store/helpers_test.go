package store

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

func TestMain(m *testing.M) {
	if podmantest.Init() { // the re-executed applier of WriteImage
		return
	}
	os.Exit(m.Run())
}

func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true, so this is a failure)", reason)
	}
	t.Skip(reason)
}

// requirePodman skips (fails with CI=true) unless podman can run here.
func requirePodman(t testing.TB) {
	t.Helper()
	fstest.RequireFUSE(t)
	for _, p := range []string{podmantest.DebianPodman, podmantest.DebianConmon, podmantest.DebianRunc, critest.BusyboxBinary, fstest.RegistryBinary} {
		if _, err := exec.LookPath(p); err != nil {
			skipOrFail(t, "needs "+p+" (make deps): "+err.Error())
		}
	}
}

// registry is a loopback registry behind a request-counting front.
type registry struct {
	host  string
	front *fstest.Faults
}

func newRegistry(t testing.TB) *registry {
	t.Helper()
	up := fstest.StartRegistry(t)
	front, err := fstest.NewFaults(up)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	return &registry{host: srv.Listener.Addr().String(), front: front}
}

// blobGETs are the blob GETs (of the given digests, or all) from index
// from on.
func (r *registry) blobGETs(from int, of ...string) []string {
	var out []string
	for _, req := range r.front.Requests()[from:] {
		if req.Method != "GET" || !strings.Contains(req.Path, "/blobs/") {
			continue
		}
		if len(of) == 0 {
			out = append(out, req.Path)
		}
		for _, d := range of {
			if strings.HasSuffix(req.Path, d) {
				out = append(out, req.Path)
			}
		}
	}
	return out
}

// lockedBuffer collects the store's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// mounted is a store mounted in-process with a fetch client of its own.
type mounted struct {
	*Store
	client *fetch.Client
	log    *lockedBuffer
}

func mountStore(t testing.TB, dir string) *mounted {
	t.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	lb := &lockedBuffer{}
	s, err := Mount(context.WithoutCancel(t.Context()), dir, Options{Client: c, Logger: slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount store: %v", err)
		}
		t.Logf("store log:\n%s", lb.String())
	})
	return &mounted{Store: s, client: c, log: lb}
}

// pushIndex indexes every layer of ref on a throwaway cache and pushes
// the indexes, as `ocifs index build --push` does.
func pushIndex(t testing.TB, ref string) {
	t.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	im, err := fs.Resolve(ctx, c, ref, fs.Options{NoRemoteIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if err := im.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := im.PushIndex(ctx); err != nil {
		t.Fatalf("PushIndex: %v", err)
	}
}

// shortDir is a temporary directory short enough for a podman Dir.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "st-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func startPodman(t testing.TB, opts podmantest.Options) *podmantest.Podman {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = shortDir(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := podmantest.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop podman: %v", err)
		}
	})
	return p
}

// cornerBusybox is fs/fstest's corner image with busybox on top, without
// what podman cannot pull (each entry left out is logged).
func cornerBusybox(t testing.TB) *fstest.Image {
	t.Helper()
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	layers := fstest.Corners()
	for i := range layers {
		var dropped []string
		layers[i].Files, dropped = podmantest.DropUnpullable(layers[i].Files)
		for _, d := range dropped {
			t.Logf("corner layer %d: left out %s", i, d)
		}
	}
	im, err := fstest.Build(append(layers, bb), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}
