package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/ocifs/ocifs/fs/fstest"
)

// fakeLayers serves each layer from dir/<id>, holding one file named after
// the layer digest; it refuses what refuse says no to.
type fakeLayers struct {
	dir    string
	refuse func(labels map[string]string) error // nil serves everything; called unlocked

	mu       sync.Mutex // guards what follows
	prepared []string
	dirCalls []map[string]string
	released []string
}

func (f *fakeLayers) Prepare(_ context.Context, id string, labels map[string]string) (Layer, error) {
	f.mu.Lock()
	f.prepared = append(f.prepared, id)
	f.mu.Unlock()
	if f.refuse != nil {
		if err := f.refuse(labels); err != nil {
			return Layer{}, err
		}
	}
	d := filepath.Join(f.dir, id)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return Layer{}, err
	}
	name := strings.ReplaceAll(labels[LabelLayerDigest], ":", "-")
	if err := os.WriteFile(filepath.Join(d, name), []byte(id), 0o644); err != nil {
		return Layer{}, err
	}
	return Layer{Dir: d, Usage: snapshots.Usage{Size: 4096, Inodes: 2}}, nil
}

func (f *fakeLayers) Dir(_ context.Context, id string, labels map[string]string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dirCalls = append(f.dirCalls, maps.Clone(labels))
	d := filepath.Join(f.dir, id)
	if _, err := os.Stat(d); err != nil {
		return "", err
	}
	return d, nil
}

func (f *fakeLayers) Release(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, id)
	return nil
}

// imageLabels are the labels containerd's CRI unpack puts on the Prepare of
// layer i of a made-up image.
func imageLabels(i int) map[string]string {
	return map[string]string{
		snapshots.LabelSnapshotRef: chainID(i),
		LabelImageRef:              "registry.test/app:1",
		LabelManifestDigest:        "sha256:" + strings.Repeat("m", 64),
		LabelLayerDigest:           layerDigest(i),
		LabelImageLayers:           layerDigest(i),
	}
}

func chainID(i int) string     { return fmt.Sprintf("sha256:%064d", 100+i) }
func layerDigest(i int) string { return fmt.Sprintf("sha256:%064d", 200+i) }

type fixture struct {
	root   string
	layers *fakeLayers
	sn     *Snapshotter
	logs   *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// newFixture opens a snapshotter over a fakeLayers, closed in t.Cleanup.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{root: filepath.Join(t.TempDir(), "root"), layers: &fakeLayers{dir: t.TempDir()}, logs: &syncBuffer{}}
	f.open(t)
	return f
}

// open (re)opens the snapshotter on f.root with f.layers.
func (f *fixture) open(t *testing.T) {
	t.Helper()
	sn, err := Open(t.Context(), Options{Root: f.root, Layers: f.layers, Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	f.sn = sn
	t.Cleanup(func() { sn.Close() })
}

// pullRemote prepares layers 0..n-1 the way containerd's unpack does,
// expecting each to be served remotely, and returns their chain IDs.
func (f *fixture) pullRemote(t *testing.T, n int) []string {
	t.Helper()
	var chain []string
	parent := ""
	for i := range n {
		key := fmt.Sprintf("k8s.io/%d/extract-%d %s", i, i, chainID(i))
		_, err := f.sn.Prepare(t.Context(), key, parent, snapshots.WithLabels(imageLabels(i)))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare(%q) with layer labels: err = %v, want AlreadyExists", key, err)
		}
		parent = chainID(i)
		chain = append(chain, parent)
	}
	return chain
}

func TestPrepareRemote(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	chain := f.pullRemote(t, 2)

	for i, name := range chain {
		info, err := f.sn.Stat(ctx, name)
		if err != nil {
			t.Fatalf("Stat(%s): %v", name, err)
		}
		if info.Kind != snapshots.KindCommitted {
			t.Errorf("Stat(%s).Kind = %v, want committed", name, info.Kind)
		}
		wantParent := ""
		if i > 0 {
			wantParent = chain[i-1]
		}
		if info.Parent != wantParent {
			t.Errorf("Stat(%s).Parent = %q, want %q", name, info.Parent, wantParent)
		}
		want := imageLabels(i)
		want[LabelRemote] = "registry.test/app:1@" + imageLabels(i)[LabelManifestDigest]
		want[LabelLayer] = layerDigest(i)
		if !maps.Equal(info.Labels, want) {
			t.Errorf("Stat(%s).Labels = %v, want %v", name, info.Labels, want)
		}
		u, err := f.sn.Usage(ctx, name)
		if err != nil || u != (snapshots.Usage{Size: 4096, Inodes: 2}) {
			t.Errorf("Usage(%s) = %+v, %v; want Layers' {Size:4096 Inodes:2}", name, u, err)
		}
	}
	// The active snapshots were committed away.
	if _, err := f.sn.Stat(ctx, "k8s.io/0/extract-0 "+chainID(0)); !errdefs.IsNotFound(err) {
		t.Errorf("Stat of the extraction key after a remote commit: err = %v, want NotFound", err)
	}
	// containerd's metadata store finds the snapshot with this filter
	// (core/metadata/snapshot.go) after AlreadyExists.
	filter := fmt.Sprintf(`labels.%q==%s,parent==%q`, snapshots.LabelSnapshotRef, chain[1], chain[0])
	var found []string
	if err := f.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		found = append(found, info.Name)
		return nil
	}, filter); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(found, chain[1:]) {
		t.Errorf("Walk(%s) = %v, want %v", filter, found, chain[1:])
	}
	if got := f.sn.Stats(); got != (Stats{Remote: 2}) {
		t.Errorf("Stats() = %+v, want 2 remote, no fallback", got)
	}

	// A second Prepare of the same layer over the same parent (a pull in
	// another namespace) finds it without asking Layers.
	_, err := f.sn.Prepare(ctx, "other/1/extract "+chainID(1), chain[0], snapshots.WithLabels(imageLabels(1)))
	if !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Prepare of layer 1: err = %v, want AlreadyExists", err)
	}
	if len(f.layers.prepared) != 2 {
		t.Errorf("Layers.Prepare called for %v, want once per layer", f.layers.prepared)
	}

	// The container's snapshot over the remote layers reads both.
	m, err := f.sn.Prepare(ctx, "k8s.io/9/container", chain[1])
	if err != nil {
		t.Fatal(err)
	}
	lowers := lowerdirs(t, m)
	if len(lowers) != 2 {
		t.Fatalf("container mounts %v: want 2 lower directories", m)
	}
	for i, l := range lowers {
		// nearest parent first
		name := strings.ReplaceAll(layerDigest(1-i), ":", "-")
		if _, err := os.Stat(filepath.Join(l, name)); err != nil {
			t.Errorf("lower %d (%s) does not hold layer %d's file: %v", i, l, 1-i, err)
		}
	}
}

// lowerdirs returns the lower directories of an overlay mount.
func lowerdirs(t *testing.T, m []mount.Mount) []string {
	t.Helper()
	if len(m) != 1 || m[0].Type != "overlay" {
		t.Fatalf("mounts = %+v, want one overlay", m)
	}
	for _, o := range m[0].Options {
		if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(l, ":")
		}
	}
	t.Fatalf("overlay %v has no lowerdir", m[0].Options)
	return nil
}

func TestPrepareFallback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		layers bool
		reason string
	}{
		{"Layers refuses", imageLabels(0), true, "no index for this layer"},
		{"no cri labels", map[string]string{snapshots.LabelSnapshotRef: chainID(0)}, true, "containerd passed no cri.* labels"},
		{"no Layers", imageLabels(0), false, "no lazy layer source is configured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.layers.refuse = func(map[string]string) error { return errors.New("no index for this layer") }
			if !tc.layers {
				f.sn.layers = nil
			}
			ctx := t.Context()
			key := "k8s.io/1/extract-1 " + chainID(0)
			m, err := f.sn.Prepare(ctx, key, "", snapshots.WithLabels(tc.labels))
			if err != nil {
				t.Fatalf("Prepare with labels Layers cannot serve: %v, want ordinary mounts", err)
			}
			if len(m) != 1 || m[0].Type != "bind" {
				t.Fatalf("Prepare mounts = %+v, want the bind mount of an empty upper", m)
			}
			if got := f.sn.Stats(); got != (Stats{Fallback: 1}) {
				t.Errorf("Stats() = %+v, want one fallback", got)
			}
			var warns []string
			for _, l := range strings.Split(f.logs.String(), "\n") {
				if strings.Contains(l, "level=WARN") {
					warns = append(warns, l)
				}
			}
			if len(warns) != 1 || !strings.Contains(warns[0], tc.reason) || !strings.Contains(warns[0], "layer="+tc.labels[LabelLayerDigest]) {
				t.Errorf("Warn lines = %q, want one with layer=%s and %q", warns, tc.labels[LabelLayerDigest], tc.reason)
			}
			if tc.name == "no cri labels" && len(f.layers.prepared) != 0 {
				t.Errorf("Layers.Prepare asked without the labels it needs (ids %v)", f.layers.prepared)
			}

			// containerd applies the layer and commits it.
			upper := m[0].Source
			if err := os.WriteFile(filepath.Join(upper, "applied"), bytes.Repeat([]byte("x"), 10000), 0o644); err != nil {
				t.Fatal(err)
			}
			info, err := f.sn.Stat(ctx, key)
			if err != nil || info.Kind != snapshots.KindActive {
				t.Fatalf("Stat(%s) = %+v, %v; want the active snapshot", key, info, err)
			}
			name := "k8s.io/2/" + chainID(0)
			if err := f.sn.Commit(ctx, name, key, snapshots.WithLabels(tc.labels)); err != nil {
				t.Fatal(err)
			}
			info, err = f.sn.Stat(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if isRemote(info.Labels) {
				t.Errorf("a layer containerd applied is labelled remote: %v", info.Labels)
			}
			u, err := f.sn.Usage(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			// The upper directory and the file (10000 bytes, 12 KiB of
			// blocks on any file system here).
			if u.Inodes != 2 || u.Size < 10000 {
				t.Errorf("Usage(%s) = %+v, want 2 inodes and at least 10000 bytes", name, u)
			}
		})
	}
}

func TestMountsOptions(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	remote := f.pullRemote(t, 1)[0]
	// A local layer over the remote one, as containerd's fallback.
	f.layers.refuse = func(map[string]string) error { return errors.New("refused") }
	m, err := f.sn.Prepare(ctx, "extract-local", remote, snapshots.WithLabels(imageLabels(1)))
	if err != nil {
		t.Fatal(err)
	}
	if lowers := lowerdirs(t, m); len(lowers) != 1 || lowers[0] != f.sn.upperPath(idOf(t, f.sn, remote)) {
		t.Errorf("fallback over a remote parent: lowerdir %v, want [%s]", lowers, f.sn.upperPath(idOf(t, f.sn, remote)))
	}
	local := "local"
	if err := f.sn.Commit(ctx, local, "extract-local"); err != nil {
		t.Fatal(err)
	}
	// A local layer of its own, with no parent.
	if _, err := f.sn.Prepare(ctx, "extract-base", ""); err != nil {
		t.Fatal(err)
	}
	if err := f.sn.Commit(ctx, "base", "extract-base"); err != nil {
		t.Fatal(err)
	}
	remoteDir := filepath.Join(f.layers.dir, idOf(t, f.sn, remote))
	rid, lid := idOf(t, f.sn, remote), idOf(t, f.sn, local)
	up := f.sn.upperPath
	opts := f.sn.options // index=off where the kernel has it

	type call func(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error)
	for _, tc := range []struct {
		name   string
		create call
		parent string
		want   func(id string) mount.Mount
	}{
		{"active, no parent", f.sn.Prepare, "", func(id string) mount.Mount {
			return mount.Mount{Type: "bind", Source: up(id), Options: []string{"rw", "rbind"}}
		}},
		{"view, no parent", f.sn.View, "", func(id string) mount.Mount {
			return mount.Mount{Type: "bind", Source: up(id), Options: []string{"ro", "rbind"}}
		}},
		{"view of a remote layer", f.sn.View, remote, func(string) mount.Mount {
			return mount.Mount{Type: "bind", Source: remoteDir, Options: []string{"ro", "rbind"}}
		}},
		{"view of a local layer", f.sn.View, "base", func(string) mount.Mount {
			return mount.Mount{Type: "bind", Source: up(idOf(t, f.sn, "base")), Options: []string{"ro", "rbind"}}
		}},
		{"active over a remote layer", f.sn.Prepare, remote, func(id string) mount.Mount {
			return mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{
				"workdir=" + f.sn.workPath(id), "upperdir=" + up(id), "lowerdir=" + up(rid)}, opts...)}
		}},
		{"active over local over remote", f.sn.Prepare, local, func(id string) mount.Mount {
			return mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{
				"workdir=" + f.sn.workPath(id), "upperdir=" + up(id), "lowerdir=" + up(lid) + ":" + up(rid)}, opts...)}
		}},
		{"view of two layers", f.sn.View, local, func(string) mount.Mount {
			return mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{"lowerdir=" + up(lid) + ":" + up(rid)}, opts...)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "key " + tc.name
			m, err := tc.create(ctx, key, tc.parent)
			if err != nil {
				t.Fatal(err)
			}
			want := []mount.Mount{tc.want(idOf(t, f.sn, key))}
			if !mountsEqual(m, want) {
				t.Errorf("create: mounts = %+v, want %+v", m, want)
			}
			if m, err = f.sn.Mounts(ctx, key); err != nil || !mountsEqual(m, want) {
				t.Errorf("Mounts = %+v, %v; want %+v", m, err, want)
			}
		})
	}
	// The remote layer's fs/ is its directory, for overlayfs to follow.
	if got, err := os.Readlink(up(rid)); err != nil || got != remoteDir {
		t.Errorf("readlink %s = %q, %v; want %s", up(rid), got, err, remoteDir)
	}
	if _, err := f.sn.Mounts(ctx, remote); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Mounts of a committed snapshot: err = %v, want FailedPrecondition", err)
	}
}

func mountsEqual(a, b []mount.Mount) bool {
	return slices.EqualFunc(a, b, func(x, y mount.Mount) bool {
		return x.Type == y.Type && x.Source == y.Source && slices.Equal(x.Options, y.Options)
	})
}

// idOf returns the storage id of key.
func idOf(t *testing.T, sn *Snapshotter, key string) string {
	t.Helper()
	id, _, err := sn.idOf(t.Context(), key)
	if err != nil {
		t.Fatalf("id of %s: %v", key, err)
	}
	return id
}

func TestRemoveCleanup(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	chain := f.pullRemote(t, 2)
	ids := []string{idOf(t, f.sn, chain[0]), idOf(t, f.sn, chain[1])}
	if _, err := f.sn.Prepare(ctx, "container", chain[1]); err != nil {
		t.Fatal(err)
	}
	cid := idOf(t, f.sn, "container")

	if err := f.sn.Remove(ctx, chain[1]); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Remove of a parent with a child: err = %v, want FailedPrecondition", err)
	}
	for _, key := range []string{"container", chain[1], chain[0]} {
		if err := f.sn.Remove(ctx, key); err != nil {
			t.Fatalf("Remove(%s): %v", key, err)
		}
		if _, err := f.sn.Stat(ctx, key); !errdefs.IsNotFound(err) {
			t.Errorf("Stat(%s) after Remove: err = %v, want NotFound", key, err)
		}
	}
	for _, id := range append([]string{cid}, ids...) {
		if _, err := os.Lstat(f.sn.snapshotDir(id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("snapshot directory %s after Remove: %v, want gone", id, err)
		}
	}
	if want := []string{cid, ids[1], ids[0]}; !slices.Equal(f.layers.released, want) {
		t.Errorf("released %v, want %v", f.layers.released, want)
	}
	// The remote layers' own directories are Layers' to remove.
	for _, id := range ids {
		if _, err := os.Stat(filepath.Join(f.layers.dir, id)); err != nil {
			t.Errorf("the snapshotter removed Layers' directory of %s: %v", id, err)
		}
	}

	// What a crash leaves: a snapshot directory without metadata and an
	// unfinished create.
	f.layers.released = nil
	for _, d := range []string{"77", "new-123"} {
		if err := os.MkdirAll(filepath.Join(f.sn.snapshotDir(d), "fs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kept := f.pullRemote(t, 1)[0]
	if err := f.sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(f.root, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{idOf(t, f.sn, kept)}; !slices.Equal(names, want) {
		t.Errorf("snapshots/ after Cleanup = %v, want %v", names, want)
	}
	if !slices.Equal(f.layers.released, []string{"77"}) {
		t.Errorf("Cleanup released %v, want [77]", f.layers.released)
	}
}

func TestRestart(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	chain := f.pullRemote(t, 2)
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}
	// A new daemon: a Layers that knows nothing yet and serves from
	// another place.
	old := f.layers
	f.layers = &fakeLayers{dir: t.TempDir()}
	for _, id := range old.prepared {
		if err := os.Rename(filepath.Join(old.dir, id), filepath.Join(f.layers.dir, id)); err != nil {
			t.Fatal(err)
		}
	}
	f.open(t)

	for i, name := range chain {
		info, err := f.sn.Stat(ctx, name)
		if err != nil || !isRemote(info.Labels) || info.Labels[LabelLayer] != layerDigest(i) {
			t.Errorf("Stat(%s) after restart = %+v, %v; want the remote snapshot", name, info, err)
		}
	}
	m, err := f.sn.Prepare(ctx, "container", chain[1])
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range lowerdirs(t, m) {
		name := strings.ReplaceAll(layerDigest(1-i), ":", "-")
		if _, err := os.Stat(filepath.Join(l, name)); err != nil {
			t.Errorf("after restart, lower %d (%s) does not lead to layer %d's new directory: %v", i, l, 1-i, err)
		}
	}
	if len(f.layers.dirCalls) != 2 {
		t.Fatalf("Layers.Dir called %d times, want once per remote parent", len(f.layers.dirCalls))
	}
	for _, labels := range f.layers.dirCalls {
		if labels[LabelRemote] == "" || labels[LabelLayer] == "" || labels[LabelLayerDigest] == "" {
			t.Errorf("Layers.Dir got labels %v, want ours and containerd's", labels)
		}
	}
}

func TestUpdateKeepsOwnLabels(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	name := f.pullRemote(t, 1)[0]
	before, err := f.sn.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		paths  []string
	}{
		// containerd's metadata store sends only the labels it passes on.
		{"no field paths", map[string]string{"containerd.io/snapshot/x": "1"}, nil},
		{"labels", map[string]string{"containerd.io/snapshot/x": "1", LabelRemote: "evil"}, []string{"labels"}},
		{"one of ours", map[string]string{}, []string{"labels." + LabelRemote}},
		{"one of ours and another", map[string]string{"containerd.io/snapshot/x": "1"}, []string{"labels." + LabelLayer, "labels.containerd.io/snapshot/x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := f.sn.Update(ctx, snapshots.Info{Name: name, Labels: tc.labels}, tc.paths...)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{LabelRemote, LabelLayer} {
				if info.Labels[k] != before.Labels[k] {
					t.Errorf("after Update: %s = %q, want %q", k, info.Labels[k], before.Labels[k])
				}
			}
			if tc.name != "one of ours" && info.Labels["containerd.io/snapshot/x"] != "1" {
				t.Errorf("after Update: labels %v, want containerd.io/snapshot/x=1", info.Labels)
			}
			if st, err := f.sn.Stat(ctx, name); err != nil || !maps.Equal(st.Labels, info.Labels) {
				t.Errorf("Stat after Update = %v, %v; want %v", st.Labels, err, info.Labels)
			}
		})
	}
}

func TestOpenTwice(t *testing.T) {
	f := newFixture(t)
	_, err := Open(t.Context(), Options{Root: f.root})
	if err == nil || !strings.Contains(err.Error(), "another snapshotter") {
		t.Errorf("second Open of %s: err = %v, want one naming another snapshotter", f.root, err)
	}
}

// TestMountLongChain mounts, with containerd's own mount code (what the
// shim runs), an active snapshot over 120 layers, remote and local in
// turn, whose lowerdir option is far over a page: containerd shortens it
// only when every lower directory sits under one directory, which the
// remote layers' symlinks under snapshots/ make true although their trees
// live elsewhere (here in another directory of /tmp, as in a FUSE mount).
func TestMountLongChain(t *testing.T) {
	fstest.RequireRoot(t)
	f := newFixture(t)
	ld, err := os.MkdirTemp("", "layers-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ld) })
	f.layers.dir = ld
	ctx := t.Context()
	const n = 120
	parent := ""
	for i := range n {
		key := fmt.Sprintf("extract-%d", i)
		if i%2 == 0 {
			_, err := f.sn.Prepare(ctx, key, parent, snapshots.WithLabels(imageLabels(i)))
			if !errdefs.IsAlreadyExists(err) {
				t.Fatalf("Prepare layer %d: %v, want AlreadyExists", i, err)
			}
			parent = chainID(i)
			continue
		}
		m, err := f.sn.Prepare(ctx, key, parent)
		if err != nil {
			t.Fatal(err)
		}
		upper := m[0].Source
		if m[0].Type == "overlay" {
			for _, o := range m[0].Options {
				if u, ok := strings.CutPrefix(o, "upperdir="); ok {
					upper = u
				}
			}
		}
		if err := os.WriteFile(filepath.Join(upper, fmt.Sprintf("local-%d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		parent = fmt.Sprintf("local-%d", i)
		if err := f.sn.Commit(ctx, parent, key); err != nil {
			t.Fatal(err)
		}
	}
	m, err := f.sn.Prepare(ctx, "container", parent)
	if err != nil {
		t.Fatal(err)
	}
	size := 0
	for _, o := range m[0].Options {
		size += len(o) + 1
	}
	if size < os.Getpagesize() {
		t.Fatalf("options are %d bytes: the test needs more than a page", size)
	}
	target := t.TempDir()
	if err := mount.All(m, target); err != nil {
		t.Fatalf("mount %d bytes of options: %v", size, err)
	}
	t.Cleanup(func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	for i := range n {
		name := fmt.Sprintf("local-%d", i)
		if i%2 == 0 {
			name = strings.ReplaceAll(layerDigest(i), ":", "-")
		}
		if _, err := os.Stat(filepath.Join(target, name)); err != nil {
			t.Errorf("layer %d: %v", i, err)
		}
	}
	if err := os.WriteFile(filepath.Join(target, "written"), []byte("x"), 0o644); err != nil {
		t.Errorf("write through the overlay: %v", err)
	}
}

// TestLayerGone: when Layers cannot give a remote parent's directory, the
// Prepare over it fails with Layers' reason and leaves no snapshot.
func TestLayerGone(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	name := f.pullRemote(t, 1)[0]
	id := idOf(t, f.sn, name)
	if err := os.RemoveAll(filepath.Join(f.layers.dir, id)); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadDir(filepath.Join(f.root, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.sn.Prepare(ctx, "container", name)
	if err == nil || !strings.Contains(err.Error(), "no such file") || !strings.Contains(err.Error(), layerDigest(0)) {
		t.Errorf("Prepare over a layer Layers lost: err = %v, want the layer and Layers' reason", err)
	}
	if _, err := f.sn.Stat(ctx, "container"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat of the failed Prepare's key: err = %v, want NotFound", err)
	}
	after, err := os.ReadDir(filepath.Join(f.root, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("snapshots/ holds %d entries after the failed Prepare, %d before", len(after), len(before))
	}
}

// TestPrepareRace: two Prepares of one layer at once (pulls in two
// namespaces) both answer AlreadyExists; the one that commits second
// removes its snapshot and releases its layer.
func TestPrepareRace(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	first, release := make(chan struct{}), make(chan struct{})
	var calls int
	var mu sync.Mutex
	f.layers.refuse = func(map[string]string) error {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			close(first)
			<-release // until the other Prepare has committed
		}
		return nil
	}
	errs := make(chan error, 1)
	go func() {
		_, err := f.sn.Prepare(ctx, "ns1/extract", "", snapshots.WithLabels(imageLabels(0)))
		errs <- err
	}()
	<-first
	_, err := f.sn.Prepare(ctx, "ns2/extract", "", snapshots.WithLabels(imageLabels(0)))
	close(release)
	if !errdefs.IsAlreadyExists(err) {
		t.Errorf("Prepare that commits first: err = %v, want AlreadyExists", err)
	}
	if err := <-errs; !errdefs.IsAlreadyExists(err) {
		t.Errorf("Prepare that commits second: err = %v, want AlreadyExists", err)
	}
	var names []string
	if err := f.sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		names = append(names, i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{chainID(0)}) {
		t.Errorf("snapshots after the race: %v, want only %s", names, chainID(0))
	}
	if len(f.layers.prepared) != 2 || !slices.Equal(f.layers.released, f.layers.prepared[:1]) {
		t.Errorf("prepared %v, released %v; want the first prepared released", f.layers.prepared, f.layers.released)
	}
	if got := f.sn.Stats(); got != (Stats{Remote: 1}) {
		t.Errorf("Stats() = %+v, want one remote", got)
	}
}
