package fs

import (
	"fmt"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/index"
)

// imageViews are the per-layer views of a loaded image, computed once
// (Image.views).
type imageViews struct {
	once  sync.Once
	trees []*Tree
	err   error
	// sparse maps a view's sparse file to the node of the merged tree
	// that holds the same bytes (same layer and tar offset): reads of it
	// go through that node, whose sparse map the merged tree keeps.
	sparse map[*Node]*Node
}

// LayerViews returns the view of every layer of the loaded image (see
// [LayerViews]): layer i's tree as containerd's applier writes it for its
// overlayfs snapshotter. They are computed once, from the entry tables, so
// call it after [Image.Load] and before [Image.ReleaseEntries]. A
// progressive load has no tables to compute them from until its streams
// end: it is an error.
func (im *Image) LayerViews() ([]*Tree, error) {
	v := &im.views
	v.once.Do(func() {
		tables, err := im.viewTables("layer views")
		if err != nil {
			v.err = err
			return
		}
		v.trees, v.err = LayerViews(tables)
		if v.err == nil {
			v.sparse = viewSparse(tables, im.Tree(), v.trees)
		}
	})
	return v.trees, v.err
}

// LayerView returns the view of layer i of the loaded image (see
// [Image.LayerViews]).
func (im *Image) LayerView(i int) (*Tree, error) {
	views, err := im.LayerViews()
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= len(views) {
		return nil, fmt.Errorf("layer view %d of an image of %d layers", i, len(views))
	}
	return views[i], nil
}

// LayerDigests returns the (compressed) digest and DiffID of each layer,
// bottom first.
func (im *Image) LayerDigests() (digests, diffIDs []digest.Digest) {
	for _, l := range im.layers {
		digests = append(digests, l.desc.Digest)
		diffIDs = append(diffIDs, l.diffID)
	}
	return digests, diffIDs
}

// viewTables returns the entry table of every layer of the loaded image,
// for what (the views) to be computed from: an error for a progressive load
// (no tables until its streams end), an image not loaded, or tables whose
// entries ReleaseEntries dropped.
func (im *Image) viewTables(what string) ([]*index.Table, error) {
	if im.prog != nil {
		return nil, fmt.Errorf("%s of a progressive load: load the image without Options.Progressive", what)
	}
	if im.Tree() == nil {
		return nil, fmt.Errorf("%s of an image not loaded", what)
	}
	tables := make([]*index.Table, len(im.layers))
	for i, l := range im.layers {
		t := l.tbl()
		// A tar with an entry is longer than its two closing zero
		// blocks: no entries then means ReleaseEntries dropped them.
		released := t != nil && t.Entries == nil && t.TarSize > 1024
		if t == nil || released {
			return nil, fmt.Errorf("%s: layer %d (%s) has no entry table (compute views before ReleaseEntries)", what, i, l.desc.Digest)
		}
		tables[i] = t
	}
	return tables, nil
}

// viewSparse maps each sparse file of the views to the merged tree's node
// of the same bytes (same layer, same tar offset), or to nil when the
// merged tree no longer holds it (a later layer replaced it).
func viewSparse(tables []*index.Table, merged *Tree, views []*Tree) map[*Node]*Node {
	type at struct {
		layer  int32
		offset int64
	}
	isSparse := map[at]bool{}
	for li, t := range tables {
		for i := range t.Entries {
			if e := &t.Entries[i]; e.Sparse != nil {
				isSparse[at{int32(li), e.Offset}] = true
			}
		}
	}
	if len(isSparse) == 0 {
		return nil
	}
	byAt := map[at]*Node{}
	for n := range merged.sparse {
		byAt[at{n.Layer, n.Offset}] = n
	}
	out := map[*Node]*Node{}
	for _, t := range views {
		t.Walk(func(_ string, n *Node) error {
			if k := (at{n.Layer, n.Offset}); n.Type == index.TypeReg && isSparse[k] {
				out[n] = byAt[k]
			}
			return nil
		})
	}
	return out
}

// viewNode returns the node a read of view node n reads through: n
// itself, or for a sparse file the merged tree's node of the same bytes,
// which carries its sparse map. A sparse file the merged tree does not
// hold cannot be read through its map: an error, never its packed bytes.
func (im *Image) viewNode(n *Node) (*Node, error) {
	m, ok := im.views.sparse[n]
	if !ok {
		m, ok = im.podmanViews.sparse[n] // a node is in one kind of view only
	}
	switch {
	case !ok:
		return n, nil
	case m == nil:
		return nil, fmt.Errorf("%w: layer %s: a sparse file that a later layer replaces is not served in its layer's view", index.ErrFormat, im.layers[n.Layer].desc.Digest)
	}
	return m, nil
}

// refusedView returns an error when node n of layer li's view must not be
// served: the
// merged tree refuses it, or its layer's table in use was found to
// disagree with the layer's verified bytes. The refusals of disagree.go
// name nodes of the merged tree, so a view refuses every node of such a
// layer rather than serve what the table got wrong.
func (im *Image) refusedView(n *Node, li int) error {
	if err := im.refusedNode(n); err != nil {
		return err
	}
	if n.ID == 1 {
		return nil // the view's root: the snapshotter's, not the layer's
	}
	if l := im.layers[li]; l.disagreed.Load() != nil {
		return l.refusedError("the layer's view")
	}
	return nil
}
