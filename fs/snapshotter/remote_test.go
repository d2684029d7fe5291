package snapshotter

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// remoteFixture is a registry (behind a counting front) with the corner
// image, a LayerFS and a Remote on it.
type remoteFixture struct {
	faults *fstest.Faults
	im     *fstest.Image
	ref    string // through the front, with its tag
	lfs    *fs.LayerFS
	cache  string
	log    *bytes.Buffer
	logMu  *sync.Mutex
}

func newRemoteFixture(t *testing.T) *remoteFixture {
	t.Helper()
	fstest.RequireRoot(t)
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	im, err := fstest.Build(fstest.Corners(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Push(t.Context(), host, "remote/corners", "1"); err != nil {
		t.Fatal(err)
	}
	f := &remoteFixture{im: im, cache: t.TempDir(), log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	if f.faults, err = fstest.NewFaults(host); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.faults)
	t.Cleanup(srv.Close)
	f.ref = srv.Listener.Addr().String() + "/remote/corners:1"
	if f.lfs, err = fs.MountLayerFS(filepath.Join(t.TempDir(), "layers"), fs.LayerFSOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.lfs.Unmount(); err != nil {
			t.Errorf("unmount layers: %v", err)
		}
	})
	return f
}

// remote returns a new Remote with a fetch client of its own on the
// fixture's cache, closed at cleanup.
func (f *remoteFixture) remote(t *testing.T) *Remote { return f.remoteWith(t, RemoteOptions{}) }

// remoteWith is remote with opts' hooks.
func (f *remoteFixture) remoteWith(t *testing.T, opts RemoteOptions) *Remote {
	t.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: f.cache, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	opts.Client, opts.FS = c, f.lfs
	opts.Logger = slog.New(slog.NewTextHandler(lockedWriter{f.logMu, f.log}, nil))
	r, err := NewRemote(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close remote: %v", err)
		}
	})
	return r
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// labels are containerd's Prepare labels for layer i of the image.
func (f *remoteFixture) labels(i int) map[string]string {
	var above []string
	for _, d := range f.im.LayerDescs[i:] {
		above = append(above, d.Digest.String())
	}
	return map[string]string{
		snapshots.LabelSnapshotRef: identity.ChainID(f.im.DiffIDs[:i+1]).String(),
		LabelImageRef:              f.ref,
		LabelManifestDigest:        f.im.ManifestDesc.Digest.String(),
		LabelLayerDigest:           f.im.LayerDescs[i].Digest.String(),
		LabelImageLayers:           strings.Join(above, ","),
		LabelDiffID:                f.im.DiffIDs[i].String(),
	}
}

// manifestGETs counts the GETs of the image's manifest (by digest, as
// Remote pins it) through the front.
func (f *remoteFixture) manifestGETs() int {
	n := 0
	for _, r := range f.faults.Requests() {
		if r.Method == "GET" && strings.HasSuffix(r.Path, "/manifests/"+f.im.ManifestDesc.Digest.String()) {
			n++
		}
	}
	return n
}

// TestRemotePrepare: concurrent Prepares of every layer of one image share
// one load (one manifest GET); each layer's directory is its view through
// the LayerFS, with real usage; Release of the last layer closes the image,
// so the next Prepare loads it again. The daemon hears of each image
// resolved, loaded and closed, in that order (it pins and counts them).
func TestRemotePrepare(t *testing.T) {
	f := newRemoteFixture(t)
	var hmu sync.Mutex
	var events []string
	seen := map[*fs.Image]int{}
	note := func(what string, im *fs.Image) {
		hmu.Lock()
		defer hmu.Unlock()
		if _, ok := seen[im]; !ok {
			seen[im] = len(seen)
		}
		events = append(events, fmt.Sprintf("%s %d", what, seen[im]))
	}
	r := f.remoteWith(t, RemoteOptions{
		OnResolve: func(im *fs.Image) { note("resolved", im) },
		OnLoad:    func(im *fs.Image, _ time.Duration) { note("loaded", im) },
		OnClose:   func(im *fs.Image) { note("closed", im) },
	})
	n := len(f.im.LayerDescs)
	layers := make([]Layer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { layers[i], errs[i] = r.Prepare(t.Context(), "1"+string(rune('0'+i)), f.labels(i)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Prepare of layer %d: %v", i, err)
		}
	}
	if got := f.manifestGETs(); got != 1 {
		t.Errorf("%d manifest GETs for %d concurrent Prepares, want 1", got, n)
	}
	// Layer 0 holds /etc/passwd; every layer has a tree of its own.
	if b, err := os.ReadFile(filepath.Join(layers[0].Dir, "etc/passwd")); err != nil || !strings.HasPrefix(string(b), "root:") {
		t.Errorf("etc/passwd of layer 0 = %q, %v", b, err)
	}
	for i, l := range layers {
		if l.Usage.Inodes < 2 || l.Usage.Size <= 0 {
			t.Errorf("layer %d: usage %+v, want its tree's", i, l.Usage)
		}
		if filepath.Dir(l.Dir) != f.lfs.Dir {
			t.Errorf("layer %d: directory %s, not in the LayerFS %s", i, l.Dir, f.lfs.Dir)
		}
		dir, err := r.Dir(t.Context(), filepath.Base(l.Dir), nil)
		if err != nil || dir != l.Dir {
			t.Errorf("Dir of a held layer = %q, %v; want %q", dir, err, l.Dir)
		}
	}
	for i := range n {
		if err := r.Release(t.Context(), "1"+string(rune('0'+i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.lfs.Names(); len(got) != 0 {
		t.Errorf("LayerFS serves %v after every Release", got)
	}
	if err := r.Release(t.Context(), "10"); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if _, err := r.Prepare(t.Context(), "20", f.labels(0)); err != nil {
		t.Fatal(err)
	}
	// The second load reads the pinned manifest from the cache.
	if got := f.manifestGETs(); got != 1 {
		t.Errorf("%d manifest GETs after the image was closed and asked for again, want 1", got)
	}
	hmu.Lock()
	got := strings.Join(events, ", ")
	hmu.Unlock()
	if want := "resolved 0, loaded 0, closed 0, resolved 1, loaded 1"; got != want {
		t.Errorf("hooks: %s; want %s", got, want)
	}
}

// TestRemoteRefuses: a layer whose labels the image contradicts is an
// error (the snapshotter's loud fallback), and so is a registry that
// cannot be reached; nothing is left in the LayerFS.
func TestRemoteRefuses(t *testing.T) {
	f := newRemoteFixture(t)
	r := f.remote(t)
	tests := []struct {
		name string
		edit func(map[string]string)
		want string
	}{
		{"chain ID", func(l map[string]string) { l[snapshots.LabelSnapshotRef] = identity.ChainID(f.im.DiffIDs[:1]).String() }, "chain ID"},
		{"layer not in the manifest", func(l map[string]string) { l[LabelLayerDigest] = f.im.ConfigDesc.Digest.String() }, "not in the manifest"},
		{"layers above", func(l map[string]string) { l[LabelImageLayers] = f.im.LayerDescs[0].Digest.String() }, "does not match"},
		{"diff-id", func(l map[string]string) { l[LabelDiffID] = f.im.DiffIDs[0].String() }, "DiffID"},
		{"manifest unknown", func(l map[string]string) { l[LabelManifestDigest] = f.im.ConfigDesc.Digest.String() }, "resolve"},
		{"no labels", func(l map[string]string) { delete(l, LabelImageRef) }, "cri.* labels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := f.labels(1)
			tt.edit(l)
			_, err := r.Prepare(t.Context(), "5", l)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Prepare = %v, want an error about %q", err, tt.want)
			}
			if got := f.lfs.Names(); len(got) != 0 {
				t.Errorf("LayerFS serves %v after a refusal", got)
			}
		})
	}
	t.Run("registry gone", func(t *testing.T) {
		// With nothing cached: a pinned image in the cache loads without
		// the registry (TestRemoteRegistryDown).
		f.cache = t.TempDir()
		r := f.remote(t)
		f.faults.Add(&fstest.Rule{Fault: fstest.Fault{Kind: fstest.Status, Status: 503}})
		defer f.faults.Clear()
		if _, err := r.Prepare(t.Context(), "6", f.labels(0)); err == nil {
			t.Errorf("Prepare with the registry answering 503 succeeded")
		}
	})
}

// TestRemoteFallsBack drives the snapshotter's Prepare over the real
// Remote: a refused layer is ordinary mounts (containerd applies it), the
// fallback is counted and logged with the layer and the reason; a served
// one is AlreadyExists, committed with the labels that pin it.
func TestRemoteFallsBack(t *testing.T) {
	f := newRemoteFixture(t)
	r := f.remote(t)
	var logBuf bytes.Buffer
	sn, err := Open(t.Context(), Options{Root: t.TempDir(), Layers: r, Logger: slog.New(slog.NewTextHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	ctx := t.Context()
	l0 := f.labels(0)
	if _, err := sn.Prepare(ctx, "extract-0", "", snapshots.WithLabels(l0)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a servable layer = %v, want AlreadyExists", err)
	}
	info, err := sn.Stat(ctx, l0[snapshots.LabelSnapshotRef])
	if err != nil {
		t.Fatal(err)
	}
	if want := f.ref + "@" + f.im.ManifestDesc.Digest.String(); info.Labels[LabelRemote] != want {
		t.Errorf("%s = %q, want %q", LabelRemote, info.Labels[LabelRemote], want)
	}
	l1 := f.labels(1)
	l1[snapshots.LabelSnapshotRef] = "sha256:" + strings.Repeat("0", 64)
	m, err := sn.Prepare(ctx, "extract-1", l0[snapshots.LabelSnapshotRef], snapshots.WithLabels(l1))
	if err != nil || len(m) == 0 {
		t.Fatalf("Prepare of a refused layer = %v, %v; want mounts to apply into", m, err)
	}
	if got := sn.Stats(); got != (Stats{Remote: 1, Fallback: 1}) {
		t.Errorf("Stats() = %+v, want 1 remote, 1 fallback", got)
	}
	if s := logBuf.String(); !strings.Contains(s, "layer not served lazily") || !strings.Contains(s, f.im.LayerDescs[1].Digest.String()) || !strings.Contains(s, "chain ID") {
		t.Errorf("fallback log lacks the layer or the reason:\n%s", s)
	}
	// The mounts of a snapshot over the remote layer name it, through
	// the snapshot's fs/ link into the LayerFS.
	if _, err := os.Stat(filepath.Join(sn.upperPath(mustID(t, sn, l0[snapshots.LabelSnapshotRef])), "etc/passwd")); err != nil {
		t.Errorf("the remote snapshot's fs/ does not lead to its layer: %v", err)
	}
}

func mustID(t *testing.T, sn *Snapshotter, key string) string {
	t.Helper()
	id, _, err := sn.idOf(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRemoteDirAfterRestart: a new Remote (a restarted daemon) serves a
// committed snapshot again from its pinned labels alone.
func TestRemoteDirAfterRestart(t *testing.T) {
	f := newRemoteFixture(t)
	r1 := f.remote(t)
	labels := f.labels(2)
	if _, err := r1.Prepare(t.Context(), "3", labels); err != nil {
		t.Fatal(err)
	}
	pinned, err := remoteLabels(labels)
	if err != nil {
		t.Fatal(err)
	}
	committed := map[string]string{}
	for k, v := range labels {
		committed[k] = v
	}
	for k, v := range pinned {
		committed[k] = v
	}
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := f.remote(t)
	dir, err := r2.Dir(t.Context(), "3", map[string]string{LabelRemote: committed[LabelRemote], LabelLayer: committed[LabelLayer], snapshots.LabelSnapshotRef: committed[snapshots.LabelSnapshotRef]})
	if err != nil {
		t.Fatalf("Dir after restart: %v", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		t.Errorf("layer 2's directory after restart: %d entries, %v", len(ents), err)
	}
	if _, err := r2.Dir(t.Context(), "4", map[string]string{LabelLayer: committed[LabelLayer]}); err == nil {
		t.Errorf("Dir without %s succeeded", LabelRemote)
	}
}
