package fs

import "sync"

// podmanViews are the podman views of a loaded image, computed once
// (Image.podmanViews).
type podmanViews struct {
	once  sync.Once
	trees []*Tree
	sizes []int64 // each layer's uncompressed tar size
	err   error
	// sparse maps a view's sparse file to the merged tree's node of the
	// same bytes, as imageViews.sparse does for containerd's views.
	sparse map[*Node]*Node
}

// PodmanLayerViews returns the view of every layer of the loaded image as
// podman's overlay driver writes it (see the function [PodmanLayerViews]),
// computed once from the entry tables, and the size of each layer's
// uncompressed tar. Call it after [Image.Load] and before
// [Image.ReleaseEntries]. A view's sparse file reads through the merged
// tree's node of the same bytes, which keeps its sparse map (as in
// [Image.LayerViews]); one a later layer replaces is not served (EIO).
func (im *Image) PodmanLayerViews() (trees []*Tree, tarSizes []int64, err error) {
	v := &im.podmanViews
	v.once.Do(func() {
		tables, err := im.viewTables("podman layer views")
		if err != nil {
			v.err = err
			return
		}
		for _, t := range tables {
			v.sizes = append(v.sizes, t.TarSize)
		}
		v.trees, v.err = PodmanLayerViews(tables)
		if v.err == nil {
			v.sparse = viewSparse(tables, im.Tree(), v.trees)
		}
	})
	return v.trees, v.sizes, v.err
}
