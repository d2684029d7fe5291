package fs

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/ocifs/ocifs/index"
)

// This file handles a layer whose table in use (its TOC, or an ocifs index
// from a registry) turns out, once the layer's verified bytes are in hand,
// to disagree with them. The verified bytes are the truth: what they answer
// is served from them, and only what they contradict is refused.
//
// The tree is merged once and stays immutable, so "what they contradict"
// is found by merging the layers again with that layer's verified table in
// place of the one in use, and comparing the two trees path by path: a
// node of the served tree that the verified tree does not have at the same
// path, with the same attributes, content location and hard-link group, is
// refused (EIO); so is the listing of a directory whose names differ, and
// a lookup there of a name the served tree lacks. Everything else of the
// layer is served, its bytes from the verified blob: through the TOC's
// chunks (each checked against its digest), or through the spans built
// from the verified blob when the index's spans or windows were wrong.

// refusal is what verified bytes contradict in the served tree: nodes, and
// directories whose listing is wrong. It is immutable once published.
type refusal struct {
	nodes map[*Node]*layer // node → the layer whose verified table contradicts it
	lists map[*Node]*layer // directory → the layer whose verified table lists other names
}

// disagreement is what one layer's check found: what of the tree its
// verified entries contradict.
type disagreement struct {
	what    string // "zstd-chunked TOC", "index", ..., for messages
	refused refusal
}

// refusedNode returns an error when verified bytes contradict n, else nil.
func (im *Image) refusedNode(n *Node) error {
	r := im.refusal.Load()
	if r == nil {
		return nil
	}
	if l, ok := r.nodes[n]; ok {
		return l.refusedError("this node")
	}
	return nil
}

// refusedList returns an error when verified bytes list other names in the
// directory n than the served tree does, else nil.
func (im *Image) refusedList(n *Node) error {
	r := im.refusal.Load()
	if r == nil {
		return nil
	}
	if l, ok := r.lists[n]; ok {
		return l.refusedError("the names in this directory")
	}
	return nil
}

// refusedError says what l's table in use got wrong. It wraps
// index.ErrFormat: the reader gets EIO, logged as a verification failure.
func (l *layer) refusedError(about string) error {
	d := l.disagreed.Load()
	return fmt.Errorf("%w: layer %s: the %s in use disagrees with the verified layer about %s", index.ErrFormat, l.desc.Digest, d.what, about)
}

// refusedCount returns how many nodes of the tree l's verified table
// contradicts.
func (l *layer) refusedCount() int {
	if d := l.disagreed.Load(); d != nil {
		return len(d.refused.nodes)
	}
	return 0
}

// disagree acts on a table in use that disagrees with the layer's verified
// bytes: differ entries differ (verified are the verified entries, in the
// terms of the table in use: virtual offsets for a TOC), and spans tells
// whether the index's spans or windows were wrong. It finds and publishes
// what the verified entries contradict, says so in one Error line, and
// returns nil: the layer is then served. It returns an error (the caller
// quarantines the layer, as nothing else is safe) only when the
// contradicted nodes cannot be found.
func (l *layer) disagree(ctx context.Context, what string, verified []index.Entry, differ int, first string, spans bool) error {
	d := &disagreement{what: what}
	if differ > 0 {
		r, err := l.im.contradicted(ctx, l, verified)
		if err != nil {
			return fmt.Errorf("%w: the %s in use disagrees with the verified layer in %d entries (%s), and what it got wrong cannot be told apart: %v",
				index.ErrFormat, what, differ, first, err)
		}
		d.refused = r
	}
	l.im.verifyFailures.Add(1)
	l.im.fellBack(fbDisagree)
	l.disagreed.Store(d)
	l.im.publishRefusals()
	l.im.log.Error("the "+what+" in use disagrees with the verified layer: the nodes it got wrong are refused, the rest is served from the verified bytes",
		"layer", l.desc.Digest, "entries", differ, "refused", len(d.refused.nodes), "listings_refused", len(d.refused.lists),
		"spans_replaced", spans, "first", first)
	return nil
}

// contradicted merges the layers again with l's verified entries in place
// of its table in use and returns what of the served tree that merge
// contradicts. The other layers' tables are the ones in use, read again
// from their index files if they were released.
func (im *Image) contradicted(ctx context.Context, l *layer, verified []index.Entry) (refusal, error) {
	served, err := im.WaitTree(ctx)
	if err != nil {
		return refusal{}, err
	}
	tables := make([]*index.Table, len(im.layers))
	for i, o := range im.layers {
		ents := verified
		if o != l {
			var err error
			if c := o.chunks(); c != nil {
				ents = c.toc.Entries
			} else if ents, err = o.entries(); err != nil {
				return refusal{}, fmt.Errorf("layer %d: %w", i, err)
			}
		}
		tables[i] = &index.Table{Digest: o.desc.Digest, Entries: ents}
	}
	truth, err := Merge(tables)
	if err != nil {
		return refusal{}, fmt.Errorf("merging the verified entries: %w", err)
	}
	r := refusal{nodes: map[*Node]*layer{}, lists: map[*Node]*layer{}}
	paired := map[*Node]*Node{} // served node → the verified node at the first path it was met
	var walk func(s, v *Node)
	walk = func(s, v *Node) {
		if v == nil || !sameNode(s, v) {
			r.nodes[s] = l
		}
		if p, ok := paired[s]; ok {
			if p != v { // a hard-link group the verified tree does not have
				r.nodes[s] = l
			}
			return // met already, children and all
		}
		paired[s] = v
		if !s.IsDir() {
			return
		}
		if v == nil || !v.IsDir() || !slices.Equal(s.Names(), v.Names()) {
			r.lists[s] = l
		}
		for i, name := range s.Names() {
			var vc *Node
			if v != nil && v.IsDir() {
				vc = v.Child(name)
			}
			walk(s.dir.nodes[i], vc)
		}
	}
	walk(served.Root, truth.Root)
	return r, nil
}

// sameNode reports whether the served node s is what the verified tree
// has at its path: the same type, attributes, link count, link target,
// device and, for a regular file, the same bytes of the same layer.
func sameNode(s, v *Node) bool {
	if s.Type != v.Type || s.Mode != v.Mode || s.UID != v.UID || s.GID != v.GID || !s.ModTime.Equal(v.ModTime) ||
		s.Size != v.Size || s.Nlink != v.Nlink || s.Linkname != v.Linkname || s.Devmajor != v.Devmajor ||
		s.Devminor != v.Devminor || !maps.Equal(s.Xattrs, v.Xattrs) {
		return false
	}
	return s.Type != index.TypeReg || (s.Layer == v.Layer && s.Offset == v.Offset)
}

// publishRefusals makes the union of every layer's refusal the one the
// mount consults.
func (im *Image) publishRefusals() {
	im.rmu.Lock()
	defer im.rmu.Unlock()
	all := refusal{nodes: map[*Node]*layer{}, lists: map[*Node]*layer{}}
	for _, l := range im.layers {
		d := l.disagreed.Load()
		if d == nil {
			continue
		}
		maps.Copy(all.nodes, d.refused.nodes)
		maps.Copy(all.lists, d.refused.lists)
	}
	if len(all.nodes) == 0 && len(all.lists) == 0 {
		return
	}
	im.refusal.Store(&all)
}
