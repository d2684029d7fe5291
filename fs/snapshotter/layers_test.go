package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/continuity/fs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/fstest"
)

// applyLayers is a test-only Layers that serves the layers of the images
// it knows from directories it fills itself, applying each layer's tar
// from the image's own bytes (never the registry) with containerd's
// applier, exactly as containerd would apply it into an empty upper
// directory: overlay whiteouts, and the parents below for the attributes
// of implied directories. The parents of a layer it refused are the
// snapshotter's upper directory of that snapshot, which containerd filled.
type applyLayers struct {
	dir    string                          // holds <id>/ per layer served
	upper  func(id string) string          // the snapshotter's snapshots/<id>/fs
	images map[digest.Digest]*fstest.Image // by manifest digest
	// refuse lists the layers (by manifest digest and index) to refuse.
	refuse map[digest.Digest][]int

	mu       sync.Mutex          // guards what follows
	trees    map[string]string   // "<manifest>/<index>" -> the layer's tree
	served   []string            // ids served
	refused  []string            // ids refused
	dirCalls []map[string]string // labels of each Dir
	released []string            // ids released
}

func newApplyLayers(dir string, upper func(string) string, images ...*fstest.Image) *applyLayers {
	l := &applyLayers{dir: dir, upper: upper, images: map[digest.Digest]*fstest.Image{}, refuse: map[digest.Digest][]int{}, trees: map[string]string{}}
	for _, im := range images {
		l.images[im.ManifestDesc.Digest] = im
	}
	return l
}

func (l *applyLayers) Prepare(ctx context.Context, id string, labels map[string]string) (Layer, error) {
	im := l.images[digest.Digest(labels[LabelManifestDigest])]
	if im == nil {
		l.note(&l.refused, id)
		return Layer{}, fmt.Errorf("manifest %s is no image of this test", labels[LabelManifestDigest])
	}
	i := slices.IndexFunc(im.LayerDescs, func(d ocispec.Descriptor) bool { return d.Digest.String() == labels[LabelLayerDigest] })
	if i < 0 || chainIDs(im.DiffIDs)[i].String() != labels[snapshots.LabelSnapshotRef] {
		return Layer{}, fmt.Errorf("layer %s is not at chain %s of manifest %s", labels[LabelLayerDigest], labels[snapshots.LabelSnapshotRef], im.ManifestDesc.Digest)
	}
	key := fmt.Sprintf("%s/%d", im.ManifestDesc.Digest, i)
	if slices.Contains(l.refuse[im.ManifestDesc.Digest], i) {
		l.mu.Lock()
		l.trees[key] = l.upper(id)
		l.refused = append(l.refused, id)
		l.mu.Unlock()
		return Layer{}, fmt.Errorf("layer %d refused by the test", i)
	}
	var parents []string
	l.mu.Lock()
	for j := i - 1; j >= 0; j-- {
		p, ok := l.trees[fmt.Sprintf("%s/%d", im.ManifestDesc.Digest, j)]
		if !ok {
			l.mu.Unlock()
			return Layer{}, fmt.Errorf("layer %d: layer %d below was never prepared", i, j)
		}
		parents = append(parents, p)
	}
	l.mu.Unlock()

	d := filepath.Join(l.dir, id)
	if err := os.Mkdir(d, 0o755); err != nil {
		return Layer{}, err
	}
	rc, _, err := im.Open(im.LayerDescs[i].Digest)
	if err != nil {
		return Layer{}, err
	}
	defer rc.Close()
	r, err := compression.DecompressStream(rc)
	if err != nil {
		return Layer{}, err
	}
	defer r.Close()
	opts := []archive.ApplyOpt{archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)}
	if len(parents) > 0 {
		opts = append(opts, archive.WithParents(parents))
	}
	if _, err := archive.Apply(ctx, d, r, opts...); err != nil {
		return Layer{}, fmt.Errorf("apply layer %d: %w", i, err)
	}
	du, err := fs.DiskUsage(ctx, d)
	if err != nil {
		return Layer{}, err
	}
	l.mu.Lock()
	l.trees[key] = d
	l.served = append(l.served, id)
	l.mu.Unlock()
	return Layer{Dir: d, Usage: snapshots.Usage(du)}, nil
}

func (l *applyLayers) note(list *[]string, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*list = append(*list, id)
}

func (l *applyLayers) Dir(_ context.Context, id string, labels map[string]string) (string, error) {
	l.mu.Lock()
	l.dirCalls = append(l.dirCalls, maps.Clone(labels))
	l.mu.Unlock()
	d := filepath.Join(l.dir, id)
	if _, err := os.Stat(d); err != nil {
		return "", err
	}
	return d, nil
}

func (l *applyLayers) Release(_ context.Context, id string) error {
	l.note(&l.released, id)
	err := os.RemoveAll(filepath.Join(l.dir, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// chainIDs are the chain IDs of a layer stack (image-spec config.md).
func chainIDs(diffIDs []digest.Digest) []digest.Digest {
	var out []digest.Digest
	for i, d := range diffIDs {
		if i == 0 {
			out = append(out, d)
			continue
		}
		out = append(out, digest.FromString(out[i-1].String()+" "+d.String()))
	}
	return out
}
