package fs

import (
	"fmt"
	"sync"
)

// podmanViews are the podman views of a loaded image, computed once
// (Image.podmanViews).
type podmanViews struct {
	once  sync.Once
	trees []*Tree
	sizes []int64 // each layer's uncompressed tar size
	err   error
}

// PodmanLayerViews returns the view of every layer of the loaded image as
// podman's overlay driver writes it (see the function [PodmanLayerViews]),
// computed once from the entry tables, and the size of each layer's
// uncompressed tar. Call it after [Image.Load] and before
// [Image.ReleaseEntries]. A layer with a sparse file is an error: a view's
// sparse file reads through the merged tree's map, which only the
// containerd views keep ([Image.LayerViews]).
func (im *Image) PodmanLayerViews() (trees []*Tree, tarSizes []int64, err error) {
	v := &im.podmanViews
	v.once.Do(func() {
		tables, err := im.viewTables("podman layer views")
		if err != nil {
			v.err = err
			return
		}
		for i, t := range tables {
			for j := range t.Entries {
				if t.Entries[j].Sparse != nil {
					v.err = fmt.Errorf("podman layer views: layer %d (%s) has a sparse file (%s), which an additional layer store does not serve", i, im.layers[i].desc.Digest, t.Entries[j].Name)
					return
				}
			}
			v.sizes = append(v.sizes, t.TarSize)
		}
		v.trees, v.err = PodmanLayerViews(tables)
	})
	return v.trees, v.sizes, v.err
}
