package fs

import (
	"context"
	"fmt"
	"os"
	"path"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ocifs/ocifs/index"
)

// A progressive load (Options.Progressive) mounts before the layers that
// have no index anywhere (mode stream) have been fetched: each streams in
// the background, and what its stream has passed is served at once, before
// the layer's digest has been checked. This is the trust trade-off the
// option documents; when the stream ends, the blob digest and DiffID are
// checked as in any stream, and a mismatch quarantines the layer (reads
// EIO), though bytes served before that cannot be taken back.
//
// The tree grows while the streams run. A path is answered as soon as the
// answer can no longer change: it exists in a snapshot of the partial
// tables and no layer above the one that wrote it is still streaming. A
// path not seen yet, and a directory listing, wait for every stream to end.
// One thing is provisional: a later entry of the same path in the same
// layer replaces what was served (a tar that names a path twice; build tools
// do not write such layers). Inode numbers stay stable for the load, and
// so for its mounts: they are given by path, the first time each path is
// seen, the final tree's included. That order is not a function of the
// image, so the file handles of these numbers carry a generation of the
// load's own (identity.go).
type progress struct {
	// mu guards everything below but ids, paths and next.
	mu      sync.Mutex
	tables  []*index.Table // per layer: its table, or the latest snapshot while it streams
	running []bool         // layers still streaming
	err     error          // the first stream that failed
	changed chan struct{}  // closed and replaced on every update, and when a merge ends
	snap    *Tree          // merged from tables; rebuilt when stale
	snapTop int            // the highest layer streaming when snap's tables were taken
	snapOK  bool           // snap is of the latest tables that merged
	stale   bool
	merging bool  // a lookup is merging the tables, outside mu
	final   *Tree // the finished tree, once no layer streams
	// sparse holds the sparse maps of every tree merged so far: an inode
	// made early keeps its snapshot's node until the final tree exists.
	sparse    map[*Node]*index.SparseMap
	anySparse atomic.Bool // sparse is not empty: reads of other files skip mu

	// idMu guards the inode numbers: a merge numbers its tree outside mu.
	idMu  sync.Mutex
	ids   map[string]uint64 // inode numbers by path
	paths []string          // paths[id-1]: the path id was first given to
	next  uint64
}

func newProgress(n int) *progress {
	return &progress{tables: make([]*index.Table, n), running: make([]bool, n),
		changed: make(chan struct{}), stale: true, ids: map[string]uint64{}, next: 1}
}

// wake wakes everyone waiting for a change; mu held.
func (p *progress) wake() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// notify wakes everyone waiting for an update; mu held.
func (p *progress) notify() {
	p.stale = true
	p.wake()
}

// update publishes a new snapshot of layer li's table.
func (p *progress) update(li int, t *index.Table) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tables[li] = t
	p.notify()
}

// finish records the end of layer li's stream: its final table, or why it
// failed. When it was the last, the final tree is merged and returned.
func (p *progress) finish(li int, t *index.Table, err error) (*Tree, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running[li] = false
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("layer %d: %w", li, err)
	}
	if err == nil {
		p.tables[li] = t
	}
	defer p.notify()
	for _, r := range p.running {
		if r {
			return nil, nil
		}
	}
	if p.err != nil {
		return nil, p.err
	}
	tree, merr := Merge(p.tables)
	if merr != nil {
		p.err = merr
		return nil, merr
	}
	p.number(tree)
	p.keepSparse(tree)
	p.final = tree
	return tree, nil
}

// keepSparse adds the sparse maps of t to those of the trees before; mu
// held. Sparse files are rare, so keeping the maps of every snapshot costs
// little.
func (p *progress) keepSparse(t *Tree) {
	if len(t.sparse) == 0 {
		return
	}
	if p.sparse == nil {
		p.sparse = map[*Node]*index.SparseMap{}
	}
	for n, sp := range t.sparse {
		p.sparse[n] = sp
	}
	p.anySparse.Store(true)
}

// sparseMap returns the sparse map of n, a node of one of the trees merged
// so far, or nil.
func (p *progress) sparseMap(n *Node) *index.SparseMap {
	if !p.anySparse.Load() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sparse[n]
}

// The streams share the link, and a lookup needs them top-down: a name in
// layer k is answered only once every layer above k has streamed to its
// end (settled), and a read of a file waits for the stream of its own
// layer, which is then the highest still streaming. So the layers stream
// one at a time, from the top: a layer's stream sends its request only
// once no layer above it still streams (turn). A request cannot be paused
// once sent (whatever it asked for crosses the link, and a proxy on the
// way takes it as fast as it comes whether we read or not), so the layers
// below wait before theirs. Before, every layer's stream was one GET of
// its blob, all at once, sharing the link: a file in the second of
// python's three layers came only once the whole image had streamed, and
// its top layer, the one every lookup waits for, ended last.

// turn returns once no layer above li still streams, or ctx is done.
func (p *progress) turn(ctx context.Context, li int) error {
	for {
		p.mu.Lock()
		top := p.topRunning() <= li
		ch := p.changed
		p.mu.Unlock()
		if top {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// topRunning returns the highest layer still streaming, or -1; mu held.
func (p *progress) topRunning() int {
	for li := len(p.running) - 1; li >= 0; li-- {
		if p.running[li] {
			return li
		}
	}
	return -1
}

// lookup returns the node at path p once the answer is settled, waiting for
// the streams as long as it is not. A path that does not exist gives an
// error wrapping errNoEntry, after every stream has ended.
func (p *progress) lookup(ctx context.Context, name string) (*Node, error) {
	for {
		p.mu.Lock()
		if p.final != nil {
			t := p.final
			p.mu.Unlock()
			return t.Lookup(name)
		}
		if p.err != nil {
			err := p.err
			p.mu.Unlock()
			return nil, err
		}
		n := p.settled(name)
		if n == nil && p.stale && !p.merging {
			// The streams may have ended meanwhile: look again.
			p.remerge()
			p.mu.Unlock()
			continue
		}
		ch := p.changed
		p.mu.Unlock()
		if n != nil {
			return n, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// remerge merges the latest tables into snap, outside mu: a merge of a
// big image takes a while (tens of ms for go's 15,000 files), and the
// stream publishing its next span must not wait for it (nor would a
// lookup of a name already settled). One lookup merges at a time; the
// others wait for it. mu held, and held again on return.
func (p *progress) remerge() {
	tables, top := slices.Clone(p.tables), p.topRunning()
	p.merging, p.stale = true, false
	p.mu.Unlock()
	t, err := merge(tables, true)
	if err == nil {
		p.number(t)
	}
	p.mu.Lock()
	p.merging = false
	// A partial table that does not merge yet: wait for the end.
	p.snapOK = err == nil
	if err == nil {
		p.snap, p.snapTop = t, top
		p.keepSparse(t)
	}
	p.wake()
}

// settled returns the node at name in the latest snapshot if no layer
// above the ones that wrote its path was still streaming when the
// snapshot's tables were taken; mu held.
func (p *progress) settled(name string) *Node {
	if !p.snapOK {
		return nil
	}
	top := p.snapTop
	n := p.snap.Root
	for _, c := range splitPath(name) {
		if !n.IsDir() {
			return nil
		}
		if n.writer(c) < top || n.Child(c) == nil {
			return nil
		}
		n = n.Child(c)
	}
	return n
}

// tree returns the final tree, or nil while a layer streams.
func (p *progress) tree() *Tree {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.final
}

// wait returns the final tree once every stream has ended.
func (p *progress) wait(ctx context.Context) (*Tree, error) {
	for {
		p.mu.Lock()
		t, err, ch := p.final, p.err, p.changed
		p.mu.Unlock()
		if t != nil || err != nil {
			return t, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// waitChange returns when the next update is published or ctx ends.
func (p *progress) waitChange(ctx context.Context) error {
	p.mu.Lock()
	ch := p.changed
	p.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// number gives t's nodes the inode numbers their paths had in earlier
// trees, and new paths the next free numbers. The names of one
// hardlinked node share the number of the first of them that had one.
func (p *progress) number(t *Tree) {
	p.idMu.Lock()
	defer p.idMu.Unlock()
	paths := map[*Node][]string{}
	var order []*Node
	t.Walk(func(name string, n *Node) error {
		if _, ok := paths[n]; !ok {
			order = append(order, n)
		}
		paths[n] = append(paths[n], name)
		return nil
	})
	used := make(map[uint64]bool, len(order))
	for _, n := range order {
		var id uint64
		for _, name := range paths[n] {
			if old, ok := p.ids[name]; ok && !used[old] {
				id = old
				break
			}
		}
		if id == 0 {
			id = p.next
			p.next++
			p.paths = append(p.paths, paths[n][0])
		}
		used[id] = true
		n.ID = id
		for _, name := range paths[n] {
			if _, ok := p.ids[name]; !ok {
				p.ids[name] = id
			}
		}
	}
	t.Nodes = len(order)
}

// pathOf returns the path inode number id was first given to, for a file
// handle the kernel decodes; false for a number this load never gave.
func (p *progress) pathOf(id uint64) (string, bool) {
	p.idMu.Lock()
	defer p.idMu.Unlock()
	if id == 0 || id > uint64(len(p.paths)) {
		return "", false
	}
	return p.paths[id-1], true
}

// streamReader serves a layer that a progressive load is streaming, from
// the spans its stream has indexed so far: their compressed bytes are read
// back from the blob's temp file and checked against the span digests the
// stream computed (which guards against the disk, not the registry: the
// blob digest is checked only when the stream ends). When the stream ends,
// the layer's reader becomes the one for its final table.
type streamReader struct {
	l     *layer
	prog  *progress
	parts partsFetcher

	snap atomic.Pointer[index.Table] // the latest snapshot of the streaming table
	file atomic.Pointer[os.File]     // the blob temp file the stream writes
	sink atomic.Pointer[blobSink]    // what of it the stream has written
}

// loadProgressive starts streaming l in the background, publishing a
// snapshot of its table as each span is indexed; prog learns when it ends.
func (l *layer) loadProgressive(prog *progress) {
	a := &attempt{done: make(chan struct{})}
	s := &streamReader{l: l, prog: prog, parts: l.im.img}
	l.mu.Lock()
	l.cur, l.rd = a, s
	l.mu.Unlock()
	l.im.bg.Go(func() error {
		prog.turn(l.im.ctx, l.idx) // canceled: fetchWhole fails at once
		t, f, err := l.fetchWhole(l.im.ctx, nil, s)
		l.mu.Lock()
		if err == nil {
			l.table, l.built, l.rd = t, true, l.tableReader(t)
		} else if l.bad == nil {
			// Served bytes may already have come from this stream: whatever
			// the cause, the layer is not served again in this mount.
			l.bad = err
			l.im.fellBack(fbQuarantine)
		}
		l.mu.Unlock()
		// A read of the temp file still under way fails and, seeing the
		// reader changed or the layer quarantined, goes on from there.
		if f := s.file.Swap(nil); f != nil {
			f.Close()
		}
		l.finish(a, f, err)
		tree, terr := prog.finish(l.idx, t, err)
		if tree != nil {
			l.im.tree.Store(tree)
			l.im.log.Info("progressive load finished", "inodes", tree.Nodes)
			if blobs := l.im.builtIndexBlobs(); blobs != nil {
				l.im.pushBuilt(l.im.ctx, blobs)
			}
		} else if terr != nil && err == nil {
			l.im.log.Error("progressive load failed", "err", terr)
		}
		return nil
	})
}

// publish makes t, a snapshot of the streaming table, the one reads see.
func (s *streamReader) publish(t *index.Table) {
	s.snap.Store(t)
	s.prog.update(s.l.idx, t)
}

// readAt serves tar bytes of the streaming layer once its stream has
// indexed them, waiting for that.
func (s *streamReader) readAt(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	l := s.l
	var t *index.Table
	for {
		r, bad := l.current()
		if r != s {
			return l.readAt(ctx, p, off, fileEnd)
		}
		if bad != nil {
			return 0, fmt.Errorf("layer %s is quarantined: %w", l.desc.Digest, bad)
		}
		t = s.snap.Load()
		if t != nil && off+int64(len(p)) <= t.TarSize {
			break
		}
		if err := l.im.prog.waitChange(ctx); err != nil {
			return 0, err
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := l.readPieces(ctx, s.set(t), p, off)
	if err != nil && l.reader() != s {
		return l.readAt(ctx, p, off, fileEnd) // the stream ended meanwhile
	}
	return n, err
}

func (s *streamReader) fill(ctx context.Context) (*os.File, error) { return s.l.fillWhole(ctx) }

// set returns the spans of snapshot t. A span's compressed bytes are read
// back from the blob's temp file or, when the cache stopped taking the
// stream before them (a full disk), fetched again by range; either way
// they are checked against the digest the stream computed for them, so
// they are the bytes the stream passed.
func (s *streamReader) set(t *index.Table) spanSet {
	set := spanSet{l: s.l, t: t, blob: readerOf(s.file.Load()), parts: s.parts}
	if sink := s.sink.Load(); sink != nil {
		set.held = sink.holds
	}
	return set
}

// started is called by the stream once its sink exists: it opens a reader
// of the temp file the sink writes (name; "" for none).
func (s *streamReader) started(sink *blobSink, name string) {
	if name != "" {
		f, err := os.Open(name)
		if err != nil {
			s.l.im.log.Warn("opening the layer's temp file for progressive reads", "layer", s.l.desc.Digest, "err", err)
		} else if old := s.file.Swap(f); old != nil {
			old.Close()
		}
	}
	s.sink.Store(sink)
}

// joinPath joins a directory path of the tree and a child name.
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return path.Join(dir, name)
}
