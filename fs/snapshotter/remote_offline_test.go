package snapshotter

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestRemoteRegistryDown: a restarted snapshotter (a new Remote on the same
// cache) serves a committed snapshot again from its pinned labels while the
// registry answers 503 to everything: the manifest, config and layer come
// from the cache (issue 18), and the layer's files read as before.
func TestRemoteRegistryDown(t *testing.T) {
	f := newRemoteFixture(t)
	r1 := f.remote(t)
	labels := f.labels(0)
	l, err := r1.Prepare(t.Context(), "1", labels)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(l.Dir, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := remoteLabels(labels)
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}

	f.faults.Add(&fstest.Rule{Fault: fstest.Fault{Kind: fstest.Status, Status: 503}})
	defer f.faults.Clear()
	r2 := f.remote(t)
	dir, err := r2.Dir(t.Context(), "1", map[string]string{LabelRemote: pinned[LabelRemote], LabelLayer: pinned[LabelLayer],
		snapshots.LabelSnapshotRef: labels[snapshots.LabelSnapshotRef]})
	if err != nil {
		t.Fatalf("Dir after a restart with the registry down: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "etc/passwd")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("etc/passwd after a restart with the registry down: %q, %v; want %q", got, err, want)
	}
}
