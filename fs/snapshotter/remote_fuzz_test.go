package snapshotter

import (
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
)

// FuzzCheckLayer feeds checkLayer containerd's labels as they may come
// (cut short, reordered, garbage): it never panics, and whatever it
// accepts is the layer named, at an index whose chain ID and layers above
// agree with every label given.
func FuzzCheckLayer(f *testing.F) {
	digests := []digest.Digest{digest.FromString("l0"), digest.FromString("l1"), digest.FromString("l2")}
	diffIDs := []digest.Digest{digest.FromString("d0"), digest.FromString("d1"), digest.FromString("d2")}
	for i := range digests {
		var above []string
		for _, d := range digests[i:] {
			above = append(above, d.String())
		}
		f.Add(digests[i].String(), identity.ChainID(diffIDs[:i+1]).String(), strings.Join(above, ","), diffIDs[i].String())
	}
	f.Add(digests[1].String(), "", digests[1].String(), "")
	f.Add(digests[0].String(), "sha256:", ",,", "x")
	f.Fuzz(func(t *testing.T, layer, ref, above, diffID string) {
		labels := map[string]string{snapshots.LabelSnapshotRef: ref, LabelImageLayers: above, LabelDiffID: diffID}
		i, err := checkLayer(digests, diffIDs, digest.Digest(layer), labels)
		if err != nil {
			return
		}
		if digests[i].String() != layer {
			t.Fatalf("accepted layer %q as index %d (%s)", layer, i, digests[i])
		}
		if ref != "" && identity.ChainID(diffIDs[:i+1]).String() != ref {
			t.Fatalf("accepted snapshot.ref %q for index %d", ref, i)
		}
		if diffID != "" && diffIDs[i].String() != diffID {
			t.Fatalf("accepted diff-id %q for index %d", diffID, i)
		}
		if above != "" && !strings.HasPrefix(strings.Join(func() []string {
			var s []string
			for _, d := range digests[i:] {
				s = append(s, d.String())
			}
			return s
		}(), ","), above) {
			t.Fatalf("accepted layers above %q for index %d", above, i)
		}
	})
}
