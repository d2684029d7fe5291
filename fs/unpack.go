package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/ocifs/ocifs/fetch"
)

// A gzip layer whose whole blob is cached and verified is still served span
// by span: each read decodes its span from a checkpoint, and a reader that
// walks many files in name order (ocifs pull, a compare, a backup) outgrows
// the span LRU and decodes the same spans again and again. So once the blob
// is complete, the layer is decompressed once, in the background, into the
// cache as its uncompressed tar, admitted only if its sha256 equals the
// config's DiffID (the key it is cached under, as zstd layers are); reads
// are then plain reads of that file. Without disk space for it, or until it
// is there, reads go on through the spans.

// startUnpack decompresses the layer's verified blob into its tar in the
// background, once; a no-op for layers that are not gzip with spans.
func (l *layer) startUnpack() {
	if l.compression != "gzip" || l.chunked != nil || l.table == nil || l.table.Spans == nil {
		return
	}
	l.im.bg.Go(func() error {
		l.unpack(l.im.ctx)
		return nil
	})
}

// unpack makes the layer's uncompressed tar available to readAt, at most
// once; later calls wait for the first.
func (l *layer) unpack(ctx context.Context) {
	l.unpackOnce.Do(func() {
		f, err := l.makeTar(ctx)
		if err != nil {
			if ctx.Err() == nil {
				l.im.log.Warn("keeping the layer's uncompressed tar; reads decode its spans instead", "layer", l.desc.Digest, "err", err)
			}
			return
		}
		l.tar.Store(f)
	})
}

// makeTar returns the cached uncompressed tar of the layer, checked against
// its DiffID, making it from the verified blob if it is not cached.
func (l *layer) makeTar(ctx context.Context) (*os.File, error) {
	cache := l.im.client.Cache()
	if f, err := cache.Open(l.diffID); err == nil {
		if err := cache.Verify(f, l.diffID); err == nil {
			return f, nil
		}
		f.Close()
		l.im.log.Error("cached uncompressed layer damaged on disk; making it again", "layer", l.desc.Digest, "diff_id", l.diffID)
		if err := cache.Remove(fetch.KindBlob, l.diffID); err != nil {
			return nil, err
		}
	}
	blob := l.blobFile()
	if blob == nil {
		return nil, errors.New("layer blob not complete")
	}
	start := time.Now()
	p, err := cache.Create(l.diffID)
	if err != nil {
		return nil, err
	}
	defer p.Abort()
	src := ctxReader{ctx, &prefetchReader{ctx: ctx, r: io.NewSectionReader(blob, 0, l.desc.Size), l: l, start: start}}
	zr, err := gzip.NewReader(src)
	if err != nil {
		return nil, fmt.Errorf("decompressing the verified blob: %w", err)
	}
	if _, err := io.Copy(p, zr); err != nil {
		return nil, fmt.Errorf("decompressing the verified blob: %w", err)
	}
	// Commit admits the file only if its sha256 is the DiffID.
	if err := p.Commit(); err != nil {
		return nil, err
	}
	l.im.log.Info("layer decompressed into the cache", "layer", l.desc.Digest, "tar_bytes", l.table.TarSize,
		"duration", time.Since(start).Round(time.Millisecond))
	return cache.Open(l.diffID)
}

// ctxReader stops reading once ctx is done: unmounting ends an unpack.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
