package fs

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/ocifs/ocifs/index"
)

// reader is how a layer reaches its uncompressed bytes: chosen once, when
// the layer is planned (chunks) or loaded (spans, whole), and replaced only
// when a progressive stream ends (its final table's reader) or when the
// layer's verified bytes show its index's spans or windows wrong
// (verifiedReader). One implementation per way:
//
//   - spanReader (spans.go): an ocifs index's spans, with read-ahead; the
//     background fetch streams the gaps between the spans readers fetched.
//   - chunkReader (chunked.go): an eStargz or zstd:chunked TOC's chunks.
//   - wholeReader (here): the whole layer in the cache first (a small one,
//     or zstd without random access).
//   - streamReader (progressive.go): what a progressive stream has passed.
//   - verifiedReader (here): the spans built from the verified blob.
//
// The piece-by-piece ones share the read loop, the piece cache and the
// fetching of pieces (pieces.go).
type reader interface {
	// readAt reads tar bytes (a TOC's virtual ones for chunks) at off, for
	// a file whose content ends at fileEnd.
	readAt(ctx context.Context, p []byte, off, fileEnd int64) (int, error)
	// fill gets the layer's complete verified bytes and checks the table
	// in use against them, for the background (layer.start).
	fill(ctx context.Context) (*os.File, error)
}

// wholeReader serves a layer that is fetched whole before anything of it is
// served: then through its spans (from the cached blob, or, when the disk
// had no room for it, span by span as a layer never fetched whole), or,
// without spans, from its cached uncompressed tar.
type wholeReader struct {
	l     *layer
	spans *spanReader // nil without spans
}

func (r *wholeReader) readAt(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	l := r.l
	f, ok := l.fetched()
	waited := !ok
	if waited {
		l.im.miss(kindWhole)
		l.setUrgent()
		end := l.im.fg.begin() // the other layers' background fetches wait meanwhile
		err := l.ensure(ctx)
		end()
		if err != nil {
			return 0, err
		}
		if f, ok = l.fetched(); !ok {
			return 0, fmt.Errorf("layer %s: not fetched", l.desc.Digest)
		}
	}
	if r.spans != nil {
		return r.spans.readAt(ctx, p, off, fileEnd)
	}
	if f == nil {
		// fetchWhole fails a layer without spans that it cannot cache.
		return 0, fmt.Errorf("layer %s: uncompressed tar not cached", l.desc.Digest)
	}
	if !waited {
		l.im.hit(kindWhole)
	}
	return f.ReadAt(p, off)
}

func (r *wholeReader) fill(ctx context.Context) (*os.File, error) { return r.l.fillWhole(ctx) }

// verifiedReader serves a layer whose index's spans or windows disagreed
// with its verified bytes, through the table built from them: each span
// read from the cached blob or, when the disk had no room for it, from the
// disk cache or the registry by span, and checked against its digest
// (again, for the disk may have changed) before it is decoded. Without
// spans (zstd), the verified file is the uncompressed tar itself.
type verifiedReader struct {
	l     *layer
	t     *index.Table // built from the verified bytes, without its entries
	parts partsFetcher
}

func (r *verifiedReader) readAt(ctx context.Context, p []byte, off, _ int64) (int, error) {
	l, t := r.l, r.t
	blob := l.complete()
	if len(t.Spans) == 0 {
		end := min(off+int64(len(p)), t.TarSize)
		if off >= end {
			return 0, io.EOF
		}
		if blob == nil {
			return 0, fmt.Errorf("layer %s: verified tar not cached", l.desc.Digest)
		}
		return blob.ReadAt(p[:end-off], off)
	}
	return l.readPieces(ctx, spanSet{l: l, t: t, verified: true, blob: readerOf(blob), parts: r.parts}, p, off)
}

func (r *verifiedReader) fill(ctx context.Context) (*os.File, error) { return r.l.fillWhole(ctx) }
