package fs

import (
	"context"
	"hash"
	"io"
	"sort"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// The background fetch of a layer streams its whole blob in order: its
// digest can only be checked over all of it, and the check of the index
// in use needs it all. A reader that streams a big file gets there first,
// though: its spans are fetched with Range requests (read-ahead included)
// and kept in the disk cache, and a plain GET of the blob would fetch them
// a second time (a lazy read of a 1 GB model image fetched 2.2 GB). So the
// background fetch of a layer whose index has spans is a gapStream: the
// blob assembled from the spans already cached, read back and checked
// against their digests, and Range requests for only the bytes between
// them. The stream hashes what it delivers and ends in a *DigestError
// unless that is the layer digest, as OpenBlob's reader does; nothing it
// delivers is served before that check (the cache admits the blob only
// then).
//
// A layer without spans to skip (an eStargz or zstd:chunked one, a layer
// fetched whole) is a gap stream without a table: all gap. A paced stream
// (the background fetch) sends its Range requests one piece at a time, in
// the image's background turn (foreground.background): each only once no
// reader waits on a fetch, and each a small piece of the link's time, so
// a reader's request never waits long behind it. Unpaced, or once a reader
// needs the whole layer (urgent), the pieces are bgPieceUrgent.

type gapStream struct {
	ctx   context.Context
	l     *layer
	t     *index.Table // the table in use, whose spans readers fetched; nil: no spans
	paced bool         // a background fetch: take turns with readers
	pos   int64        // blob bytes delivered
	buf   []byte
	h     hash.Hash
}

func newGapStream(ctx context.Context, l *layer, t *index.Table, paced bool) *gapStream {
	return &gapStream{ctx: ctx, l: l, t: t, paced: paced, h: l.desc.Digest.Algorithm().Hash()}
}

func (g *gapStream) Read(p []byte) (int, error) {
	size := g.l.desc.Size
	for len(g.buf) == 0 {
		if g.pos >= size {
			if got := digest.NewDigest(g.l.desc.Digest.Algorithm(), g.h); got != g.l.desc.Digest {
				return 0, &fetch.DigestError{What: "layer " + g.l.desc.Digest.String() + " (assembled from spans and ranges)", Want: g.l.desc.Digest, Got: got}
			}
			return 0, io.EOF
		}
		if err := g.ctx.Err(); err != nil {
			return 0, err
		}
		b, err := g.next()
		if err != nil {
			return 0, err
		}
		g.buf = b
	}
	n := copy(p, g.buf)
	g.h.Write(p[:n])
	g.buf = g.buf[n:]
	g.pos += int64(n)
	return n, nil
}

func (g *gapStream) Close() error { return nil }

// next returns the blob's bytes from pos on: the rest of a cached span that
// holds pos, or else a Range GET up to the next cached span (at most one
// piece).
func (g *gapStream) next() ([]byte, error) {
	l := g.l
	var spans []index.Span
	if g.t != nil {
		spans = g.t.Spans
	}
	i := sort.Search(len(spans), func(i int) bool { return spans[i].C > g.pos }) - 1
	if i >= 0 && g.pos < spans[i].CEnd {
		if b := g.cachedSpan(i); b != nil {
			return b[g.pos-spans[i].C:], nil
		}
	}
	if !g.paced || l.urgent.Load() {
		return g.fetch(i, bgPieceUrgent)
	}
	size, done, err := l.im.fg.background(g.ctx, l.im.bgQuiet(), l.urgentDone())
	if err != nil {
		return nil, err
	}
	b, err := g.fetch(i, size)
	done(int64(len(b)))
	return b, err
}

// fetch gets the blob's bytes from pos, at most piece of them, up to the
// first cached span after span i.
func (g *gapStream) fetch(i int, piece int64) ([]byte, error) {
	l := g.l
	var spans []index.Span
	if g.t != nil {
		spans = g.t.Spans
	}
	end := min(g.pos+piece, l.desc.Size)
	cache := l.im.client.Cache()
	for j := i + 1; j < len(spans) && spans[j].C < end; j++ {
		if cache.Has(spans[j].Digest) {
			end = max(spans[j].C, g.pos+1)
			break
		}
	}
	return l.im.img.FetchUnchecked(g.ctx, l.desc, g.pos, end-g.pos)
}

// cachedSpan returns span i's compressed bytes from the disk cache, checked
// against its digest, or nil (layer.cachedPiece).
func (g *gapStream) cachedSpan(i int) []byte {
	sp := g.t.Spans[i]
	return g.l.cachedPiece(sp.Digest, sp.CEnd-sp.C, "span")
}
