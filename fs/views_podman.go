package fs

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ocifs/ocifs/index"
)

// podmanViews are the podman views of a loaded image, computed once.
type podmanViews struct {
	once  sync.Once
	trees []*Tree
	sizes []int64 // each layer's uncompressed tar size
	err   error
}

var podmanViewsOf sync.Map // *Image -> *podmanViews

// PodmanLayerViews returns the view of every layer of the loaded image as
// podman's overlay driver writes it (see the function [PodmanLayerViews]),
// computed once from the entry tables, and the size of each layer's
// uncompressed tar. Call it after [Image.Load] and before
// [Image.ReleaseEntries]. A layer with a sparse file is an error: a view's
// sparse file reads through the merged tree's map, which only the
// containerd views keep ([Image.LayerViews]).
func (im *Image) PodmanLayerViews() (trees []*Tree, tarSizes []int64, err error) {
	v0, _ := podmanViewsOf.LoadOrStore(im, &podmanViews{})
	v := v0.(*podmanViews)
	v.once.Do(func() {
		if im.prog != nil {
			v.err = errors.New("podman layer views of a progressive load: load the image without Options.Progressive")
			return
		}
		if im.Tree() == nil {
			v.err = errors.New("podman layer views of an image not loaded")
			return
		}
		tables := make([]*index.Table, len(im.layers))
		for i, l := range im.layers {
			t := l.tbl()
			released := t != nil && t.Entries == nil && t.TarSize > 1024
			if t == nil || released {
				v.err = fmt.Errorf("podman layer views: layer %d (%s) has no entry table (compute views before ReleaseEntries)", i, l.desc.Digest)
				return
			}
			for j := range t.Entries {
				if t.Entries[j].Sparse != nil {
					v.err = fmt.Errorf("podman layer views: layer %d (%s) has a sparse file (%s), which an additional layer store does not serve", i, l.desc.Digest, t.Entries[j].Name)
					return
				}
			}
			tables[i] = t
			v.sizes = append(v.sizes, t.TarSize)
		}
		v.trees, v.err = PodmanLayerViews(tables)
	})
	return v.trees, v.sizes, v.err
}

// DropPodmanLayerViews forgets the image's podman views: call it when
// closing an image whose podman views were served.
func (im *Image) DropPodmanLayerViews() { podmanViewsOf.Delete(im) }
