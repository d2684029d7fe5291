package fs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// A start-up profile may carry a pack (index/pack.go): the bytes its ranges
// cover, compressed again in frames apart from their layers. A gzip
// layer's spans can only be entered at deflate block ends, each with a
// window, and are verified whole; a start-up's reads, scattered over the
// layer, fetch about twice the compressed bytes they need. A pack's frames
// hold just those bytes: a read that lies in a frame is served from it
// (each frame checked against its sha256 in the profile before it is
// decoded), every other read from the layer's spans as before.
//
// A pack is trusted as an index from a registry is, as its author saw the
// layer: once the layer's verified bytes are in hand (fill), every frame
// that was fetched is compared with them, reads go to the verified bytes
// from then on, and the files a frame got wrong are refused (disagree.go).
// A frame that cannot be fetched or fails its digest is not fatal: its
// bytes come from the layer's spans instead, with one warning.

// Pack building: ranges of a layer less than packGap apart go into one
// frame run (the bytes between cost less than a frame's overhead), cut into
// frames of at most packFrame bytes; a pack holds at most maxPackBuild
// bytes, the rest of the profile is left to the spans.
const (
	packGap      = 64 << 10
	packFrame    = 256 << 10
	maxPackBuild = 256 << 20
	// packRun caps the stored bytes of one request of a replay: small
	// enough that the first frames arrive early, large enough that a
	// round trip per run costs little.
	packRun = 512 << 10
)

// profilePack is the pack of the profile in use, shared by the image's
// layers.
type profilePack struct {
	desc   ocispec.Descriptor // the pack blob
	frames []index.PackFrame
	offs   []int64 // where each frame's stored bytes start in the blob
}

// layerPack is one layer's frames of a pack: frame numbers (into
// pack.frames) sorted by offset.
type layerPack struct {
	pack *profilePack
	idx  []int
}

// frameAt returns the frame holding offset off, or -1 and where the next
// frame after off starts (math.MaxInt64 for none).
func (lp *layerPack) frameAt(off int64) (int, int64) {
	k := sort.Search(len(lp.idx), func(k int) bool {
		f := lp.pack.frames[lp.idx[k]]
		return f.Off+f.Len > off
	})
	if k == len(lp.idx) {
		return -1, math.MaxInt64
	}
	f := lp.pack.frames[lp.idx[k]]
	if f.Off <= off {
		return lp.idx[k], 0
	}
	return -1, f.Off
}

// covers reports whether frames hold all of [off, end).
func (lp *layerPack) covers(off, end int64) bool {
	for off < end {
		i, _ := lp.frameAt(off)
		if i < 0 {
			return false
		}
		f := lp.pack.frames[i]
		off = f.Off + f.Len
	}
	return true
}

// usePack makes the layers serve the frames of p's pack, if it has one:
// the frames of layers of the image served by spans, inside their tars.
// It returns the frames taken.
func (im *Image) usePack(p *index.Profile) int {
	pk := p.Pack
	if pk == nil || im.opts.NoProfilePack {
		return 0
	}
	shared := &profilePack{
		desc:   ocispec.Descriptor{MediaType: fetch.MediaTypeProfilePack, Digest: pk.Digest, Size: pk.Size},
		frames: pk.Frames,
		offs:   pk.Offsets(),
	}
	byDigest := im.layersByDigest()
	idx := map[*layer][]int{}
	for i, f := range pk.Frames {
		l := byDigest[p.Layers[f.Layer]]
		if l == nil || l.complete() != nil {
			continue
		}
		if _, ok := l.reader().(*spanReader); !ok || f.Off+f.Len > l.contentSize() {
			continue
		}
		idx[l] = append(idx[l], i)
	}
	taken := 0
	for l, ids := range idx {
		sort.Slice(ids, func(a, b int) bool { return pk.Frames[ids[a]].Off < pk.Frames[ids[b]].Off })
		l.pack.Store(&layerPack{pack: shared, idx: ids})
		taken += len(ids)
	}
	return taken
}

// readPacked serves a read of a layer with frames: the parts that lie in
// frames from them, the rest through r.
func (l *layer) readPacked(ctx context.Context, lp *layerPack, r reader, p []byte, off, fileEnd int64) (int, error) {
	end := off + int64(len(p))
	n := 0
	for at := off; at < end; at = off + int64(n) {
		i, next := lp.frameAt(at)
		if i >= 0 {
			f := lp.pack.frames[i]
			cut := min(end, f.Off+f.Len)
			data, err := l.piece(ctx, packSet{l: l, lp: lp}, i, len(lp.pack.frames)-1)
			if err == nil {
				n += copy(p[n:], data[at-f.Off:cut-f.Off])
				continue
			}
			if ctx.Err() != nil {
				return n, err
			}
			if l.packWarned.CompareAndSwap(false, true) {
				l.im.log.Warn("start-up profile's pack unusable here; reading the layer's own bytes", "layer", l.desc.Digest, "err", err)
			}
			next = cut
		}
		stop := min(end, next)
		if !isReplay(ctx) {
			l.im.log.Debug("read outside the start-up profile's pack", "layer", l.desc.Digest, "off", at, "len", stop-at)
		}
		m, err := r.readAt(ctx, p[n:n+int(stop-at)], at, fileEnd)
		n += m
		if err != nil || m < int(stop-at) {
			return n, err
		}
	}
	return n, nil
}

// packSet is a layer's frames as pieces (pieces.go): piece i is frame i of
// the pack, keyed by the pack's digest.
type packSet struct {
	l  *layer
	lp *layerPack
}

func (s packSet) size() int64 { return s.l.contentSize() }

func (s packSet) pieceFor(off int64) int {
	i, _ := s.lp.frameAt(off)
	return i
}

func (s packSet) bounds(i int) (int64, int64) {
	f := s.lp.pack.frames[i]
	return f.Off, f.Off + f.Len
}

func (s packSet) key() pieceKey { return pieceKey{blob: s.lp.pack.desc.Digest} }

// join admits the frames after i that follow it in the blob and belong to
// the same layer, up to packRun stored bytes.
func (s packSet) join(i, j, _ int) bool {
	fr := s.lp.pack.frames
	return j < len(fr) && fr[j].Layer == fr[i].Layer && s.lp.pack.offs[j]+fr[j].Stored-s.lp.pack.offs[i] <= packRun
}

func (s packSet) file(int) io.ReaderAt { return nil }

func (s packSet) fromFile(io.ReaderAt, int) ([]byte, error) {
	return nil, fmt.Errorf("a pack frame has no file")
}

func (s packSet) disk(i int) (digest.Digest, int64, string) {
	f := s.lp.pack.frames[i]
	return f.Digest, f.Stored, "pack frame"
}

func (s packSet) fetch(ctx context.Context, run, missing []int, out []pieceBytes, _ bool) {
	l := s.l
	ctx = l.im.countFetched(ctx, forReader)
	parts := make([]fetch.Part, len(missing))
	for k, n := range missing {
		i := run[n]
		f := s.lp.pack.frames[i]
		parts[k] = fetch.Part{Off: s.lp.pack.offs[i], N: f.Stored, Digest: f.Digest}
	}
	if err := l.im.fetchSem.Acquire(ctx); err != nil {
		for _, n := range missing {
			out[n].err = err
		}
		return
	}
	data, errs := s.l.im.img.FetchParts(ctx, s.lp.pack.desc, parts)
	l.im.fetchSem.Release()
	for k, n := range missing {
		l.im.miss(kindSpan)
		out[n] = pieceBytes{raw: data[k], err: errs[k], fetched: errs[k] == nil}
	}
}

func (s packSet) decode(i int, raw []byte) ([]byte, error) {
	return index.DecodePackFrame(raw, s.lp.pack.frames[i].Len)
}

func (s packSet) failure(i int, err error) error {
	f := s.lp.pack.frames[i]
	return fmt.Errorf("start-up profile's pack %s, frame %d (layer bytes %d-%d): %w", s.lp.pack.desc.Digest, i, f.Off, f.Off+f.Len, err)
}

func (s packSet) keep(run []int, out []pieceBytes) {
	var fetched []keptSpan
	for n, i := range run {
		if r := out[n]; r.fetched && r.err == nil {
			fetched = append(fetched, keptSpan{s.lp.pack.frames[i].Digest, r.raw})
		}
	}
	s.l.keepVerified(fetched, "pack frame")
}

// fetchFrames fetches the frames of ids (one layer's, consecutive in the
// blob) that nobody holds or fetches, in one request, and waits for all.
func (l *layer) fetchFrames(ctx context.Context, lp *layerPack, ids []int) error {
	s := packSet{l: l, lp: lp}
	base := s.key()
	c := l.im.spans
	// skip runs under c.mu: it looks at the decoded pieces directly.
	run := c.claimEach(base, ids, func(j int) bool { return c.byKey[base.at(j)] != nil })
	if len(run) > 0 {
		l.fetchRun(s, run, true)
	}
	for _, i := range ids {
		if _, err := l.piece(ctx, s, i, i); err != nil {
			return err
		}
	}
	return nil
}

// packPlan turns the frames in use into a replay's reads: runs of frames
// of one layer, consecutive in the blob, up to packRun stored bytes, in
// the blob's order (the order the start-up first needed them).
func (im *Image) packPlan() (plan []replayPlan) {
	type owner struct {
		l  *layer
		lp *layerPack
	}
	of := map[int]owner{}
	var pk *profilePack
	for _, l := range im.layers {
		lp := l.pack.Load()
		if lp == nil {
			continue
		}
		pk = lp.pack
		for _, i := range lp.idx {
			of[i] = owner{l, lp}
		}
	}
	if pk == nil {
		return nil
	}
	for i := 0; i < len(pk.frames); i++ {
		o, ok := of[i]
		if !ok {
			continue
		}
		rp := replayPlan{l: o.l, pack: o.lp, frames: []int{i}, n: pk.frames[i].Len}
		for i+1 < len(pk.frames) && of[i+1] == o && (packSet{o.l, o.lp}).join(rp.frames[0], i+1, 0) {
			i++
			rp.frames = append(rp.frames, i)
			rp.n += pk.frames[i].Len
		}
		plan = append(plan, rp)
	}
	return plan
}

// checkPack compares the frames of the layer that were fetched (in the
// piece cache or the disk cache: only those can have been served) with the
// layer's verified bytes in f, read through the verified table t (nil: the
// table in use was built here), and stops serving the pack: reads go to the
// verified bytes from now on. The files a wrong frame holds bytes of are
// refused.
func (l *layer) checkPack(ctx context.Context, f *os.File, t *index.Table) error {
	lp := l.pack.Load()
	if lp == nil {
		return nil
	}
	defer l.pack.Store(nil)
	if f == nil {
		l.im.log.Warn("start-up profile's pack cannot be checked: the cache had no room for the layer", "layer", l.desc.Digest)
		return nil
	}
	set := spanSet{l: l, t: withoutEntries(l.tbl()), blob: f, parts: l.im.img}
	if t != nil && t != l.tbl() {
		set.t, set.verified = withoutEntries(t), true
	}
	s := packSet{l: l, lp: lp}
	var bad [][2]int64
	for _, i := range lp.idx {
		fr := lp.pack.frames[i]
		data := l.im.spans.get(s.key().at(i))
		if data == nil {
			raw := l.cachedPiece(s.disk(i))
			if raw == nil {
				continue // never fetched: never served
			}
			var err error
			if data, err = s.decode(i, raw); err != nil {
				continue // never served either: its decode fails
			}
		}
		want := make([]byte, fr.Len)
		n, err := l.readPieces(ctx, set, want, fr.Off)
		if err != nil {
			return fmt.Errorf("reading the verified layer to check the start-up profile's pack: %w", err)
		}
		if int64(n) != fr.Len || !bytes.Equal(data, want) {
			bad = append(bad, [2]int64{fr.Off, fr.Off + fr.Len})
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return l.packDisagrees(ctx, lp.pack.desc.Digest, bad)
}

// packDisagrees refuses the regular files of the layer whose bytes overlap
// the ranges bad, where the pack's frames were not the layer's bytes.
func (l *layer) packDisagrees(ctx context.Context, pack digest.Digest, bad [][2]int64) error {
	served, err := l.im.WaitTree(ctx)
	if err != nil {
		return err
	}
	r := refusal{nodes: map[*Node]*layer{}, lists: map[*Node]*layer{}}
	what := "start-up profile's pack"
	if old := l.disagreed.Load(); old != nil {
		maps.Copy(r.nodes, old.refused.nodes)
		maps.Copy(r.lists, old.refused.lists)
		what = old.what + " and the " + what
	}
	served.Walk(func(_ string, n *Node) error {
		if n.Type == index.TypeReg && int(n.Layer) == l.idx {
			for _, b := range bad {
				if n.Offset < b[1] && b[0] < n.Offset+n.Size {
					r.nodes[n] = l
					break
				}
			}
		}
		return nil
	})
	l.im.verifyFailures.Add(1)
	l.im.fellBack(fbDisagree)
	l.disagreed.Store(&disagreement{what: what, refused: r})
	l.im.publishRefusals()
	l.im.log.Error("the start-up profile's pack disagrees with the verified layer: the files it got wrong are refused, the rest is served from the verified bytes",
		"layer", l.desc.Digest, "pack", pack, "frames_wrong", len(bad), "refused", len(r.nodes))
	return nil
}
