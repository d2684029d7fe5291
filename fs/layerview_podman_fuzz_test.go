package fs

import (
	"fmt"
	"testing"
)

// FuzzPodmanLayerViews checks the podman flavour against containerd's views
// of the same layers (FuzzLayerViews checks those against Merge): above
// the bottom layer, the same names, types, files' bytes (layer and offset)
// and attributes, except a directory no entry described, which podman's
// applier makes 0755, root's, with nothing copied from below; every view's
// root is 0555. The bottom layer (overlay format in podman, whiteouts and
// markers applied in containerd) must build without error.
func FuzzPodmanLayerViews(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 0, 0xff, 0, 0, 4, 0, 2})
	f.Add([]byte{1, 0, 0, 0, 3, 0, 0xff, 0, 5, 3, 0, 0, 0, 0xff, 0, 4, 0, 0})
	f.Add([]byte{2, 1, 0, 0, 5, 1, 7, 2, 3, 0, 8, 1})
	f.Add([]byte{1, 0, 5, 0, 3, 1, 0, 4, 2, 0xff, 0, 0, 0, 1, 4, 9, 4, 0, 0, 0, 6, 3})
	f.Add([]byte{0, 6, 0, 0xff, 0, 0, 4, 6, 0, 0, 4, 0, 5, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 3*64 {
			data = data[:3*64]
		}
		tables, _ := agreeable(fuzzLayers(data))
		if tables == nil {
			return
		}
		want, err := LayerViews(tables)
		if err != nil {
			return
		}
		got, err := PodmanLayerViews(tables)
		if err != nil {
			t.Fatalf("PodmanLayerViews fails where LayerViews does not: %v", err)
		}
		for i, v := range got {
			checkTree(t, fmt.Sprintf("podman view %d", i), v)
			if v.Root.Mode != podmanDiffMode {
				t.Errorf("podman view %d: root mode %o, want %o", i, v.Root.Mode, podmanDiffMode)
			}
			if i > 0 {
				comparePodmanView(t, fmt.Sprintf("layer %d", i), v.Root, want[i].Root, true)
			}
		}
	})
}

// comparePodmanView walks a podman view (got) and containerd's (want).
func comparePodmanView(t *testing.T, p string, got, want *Node, root bool) {
	t.Helper()
	if got.Type != want.Type {
		t.Errorf("%s: type %s, containerd's view %s", p, got.Type, want.Type)
		return
	}
	if !got.IsDir() {
		if got.Layer != want.Layer || got.Offset != want.Offset || got.Mode != want.Mode || got.UID != want.UID || got.GID != want.GID {
			t.Errorf("%s: layer %d offset %d mode %o %d:%d, containerd's view %d %d %o %d:%d", p,
				got.Layer, got.Offset, got.Mode, got.UID, got.GID, want.Layer, want.Offset, want.Mode, want.UID, want.GID)
		}
		return
	}
	switch {
	case root:
	case got.Implied != want.Implied:
		t.Errorf("%s: implied %v, containerd's view %v", p, got.Implied, want.Implied)
	case got.Implied:
		if got.Mode != 0o755 || got.UID != 0 || got.GID != 0 {
			t.Errorf("%s: an implied directory %o %d:%d, want 0755 root's", p, got.Mode, got.UID, got.GID)
		}
	case got.Mode != want.Mode || got.UID != want.UID || got.GID != want.GID:
		t.Errorf("%s: mode %o %d:%d, containerd's view %o %d:%d", p, got.Mode, got.UID, got.GID, want.Mode, want.UID, want.GID)
	}
	gn, wn := got.dir.names, want.dir.names
	if fmt.Sprint(gn) != fmt.Sprint(wn) {
		t.Errorf("%s: names %q, containerd's view %q", p, gn, wn)
		return
	}
	for _, n := range gn {
		comparePodmanView(t, p+"/"+n, got.Child(n), want.Child(n), false)
	}
}
