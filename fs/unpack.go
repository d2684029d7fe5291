package fs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// A gzip layer whose whole blob is cached and verified is still served span
// by span: each read decodes its span from a checkpoint, and a reader that
// walks many files in name order (ocifs pull, a compare, a backup) outgrows
// the span LRU and decodes the same spans again and again. So once the blob
// is complete, the layer is decompressed once, in the background, and its
// regular files are extracted into the cache as a tree, one file each
// (fetch.Tree), admitted only if the stream they came from has the config's
// DiffID. Reads are then plain reads of those files, and an open file is
// handed to the kernel with FUSE passthrough: its offsets are the file's
// own, which a tar's are not. Without disk space for it, or until it is
// there, reads go on through the spans.

// startUnpack extracts the layer's verified blob into its tree in the
// background, once; it reports false, doing nothing, for layers that are
// not gzip with spans.
func (l *layer) startUnpack() bool {
	if t := l.tbl(); l.compression != "gzip" || l.chunks() != nil || t == nil || t.Spans == nil {
		return false
	}
	l.im.bg.Go(func() error {
		l.unpack(l.im.ctx)
		return nil
	})
	return true
}

// unpack makes the layer's tree available, at most once; later calls wait
// for the first.
func (l *layer) unpack(ctx context.Context) {
	l.unpackOnce.Do(func() {
		t, err := l.makeTree(ctx)
		if err != nil {
			if ctx.Err() == nil {
				l.im.log.Warn("not extracting the layer's files; reads decode its spans instead", "layer", l.desc.Digest, "err", err)
				l.im.fellBack(fbNotExtracted)
			}
		} else {
			l.tree.Store(t)
		}
		if ctx.Err() == nil {
			l.settled.Store(true)
		}
	})
}

// makeTree returns the cached tree of the layer, extracting it from the
// verified blob if it is not cached.
func (l *layer) makeTree(ctx context.Context) (*fetch.Tree, error) {
	cache := l.im.client.Cache()
	if t, err := cache.OpenTree(l.diffID, treeFileMin); err == nil {
		return t, nil
	} else if errors.Is(err, fetch.ErrTreeChanged) {
		if err := l.removeTree(err, "extracting them again"); err != nil {
			return nil, err
		}
	}
	blob := l.blobFile()
	if blob == nil {
		return nil, errors.New("layer blob not complete")
	}
	ents, err := l.entries()
	if err != nil {
		return nil, err
	}
	tarSize := l.tbl().TarSize
	if len(ents) == 0 && tarSize > 1024 { // more than an empty tar's end blocks
		return nil, fmt.Errorf("%w: no entries for a %d-byte tar", index.ErrFormat, tarSize)
	}
	start := time.Now()
	p, err := cache.CreateTree(l.diffID, treeFileMin)
	if err != nil {
		return nil, err
	}
	defer p.Abort()
	src := ctxReader{ctx, &prefetchReader{ctx: ctx, r: io.NewSectionReader(blob, 0, l.desc.Size), l: l, start: start}}
	zr, err := gzip.NewReader(src)
	if err != nil {
		return nil, fmt.Errorf("decompressing the verified blob: %w", err)
	}
	files, err := extract(zr, ents, l.diffID, tarSize, p)
	if err != nil {
		return nil, err
	}
	if err := p.Commit(); err != nil {
		return nil, err
	}
	l.im.log.Info("layer extracted into the cache", "layer", l.desc.Digest, "files", files, "tar_bytes", tarSize,
		"duration", time.Since(start).Round(time.Millisecond))
	return cache.OpenTree(l.diffID, treeFileMin)
}

// entries returns the layer's entry table, reading it again from the index
// file (the one in use, or the one kept in the cache for a table built
// here) if it was released to save memory.
func (l *layer) entries() ([]index.Entry, error) {
	held := l.tbl()
	if held.Entries != nil {
		return held.Entries, nil
	}
	src := l.indexSrc
	if src == nil {
		f, r, err := l.im.client.Cache().OpenIndex(l.desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading the layer's index again: %w", err)
		}
		defer f.Close()
		src = r
	}
	t, err := index.Open(src, src.Size())
	if err != nil {
		return nil, fmt.Errorf("reading the layer's index again: %w", err)
	}
	if t.DiffID != l.diffID || t.TarSize != held.TarSize {
		return nil, fmt.Errorf("%w: the layer's index read again is of another tar (DiffID %s, %d bytes)", index.ErrFormat, t.DiffID, t.TarSize)
	}
	return t.Entries, nil
}

// treeFileMin is the size from which a file is extracted into a file of its
// own, which the kernel can read with passthrough; smaller ones stay in the
// tree's pack, read by the daemon (fetch.Tree says why).
const treeFileMin = 512 << 10

// hasTreeFile reports whether a regular file of size bytes has a file of
// its own in its layer's tree, rather than its bytes at its tar offsets in
// the pack: a large file, and a sparse one of any size but 0. A sparse
// file's bytes in the tar are its data segments packed together, which the
// pack cannot serve at the file's own offsets; expanded into a file of its
// own, written with its holes (seeking past them), it reads like any
// other, takes no more disk than its data, and goes to the kernel with
// passthrough, which suits what sparse files usually are (disk images,
// databases, lastlog: large).
func hasTreeFile(size int64, sparse bool) bool {
	return size >= treeFileMin || sparse && size > 0
}

// extract copies the content of every non-empty regular entry of tar stream
// r into p: a file of its own for a large or sparse one (hasTreeFile), the
// pack at its tar offset for a small one. It reads the stream to its end and returns an error
// unless the whole stream's sha256 is diffID. Entries are in tar order, so
// their content offsets only grow.
func extract(r io.Reader, ents []index.Entry, diffID digest.Digest, tarSize int64, p *fetch.PendingTree) (files int, err error) {
	pack, err := p.CreatePack()
	if err != nil {
		return 0, err
	}
	defer pack.Close()
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(r, h)}
	for _, e := range ents {
		if e.Type != index.TypeReg || e.Size == 0 {
			continue
		}
		if e.Offset < cr.n {
			return files, fmt.Errorf("%w: entry %q content at %d overlaps the one before", index.ErrFormat, e.Name, e.Offset)
		}
		if _, err := io.CopyN(io.Discard, cr, e.Offset-cr.n); err != nil {
			return files, fmt.Errorf("extracting %q: %w", e.Name, err)
		}
		if !hasTreeFile(e.Size, e.Sparse != nil) {
			if _, err := io.CopyN(io.NewOffsetWriter(pack, e.Offset), cr, e.Size); err != nil {
				return files, fmt.Errorf("extracting %q: %w", e.Name, err)
			}
			continue
		}
		f, err := p.Create(e.Offset)
		if err != nil {
			return files, err
		}
		if e.Sparse != nil {
			err = writeSparse(f, cr, e)
		} else {
			_, err = io.CopyN(f, cr, e.Size)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return files, fmt.Errorf("extracting %q: %w", e.Name, err)
		}
		files++
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return files, fmt.Errorf("decompressing the verified blob: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return files, &fetch.DigestError{What: "uncompressed layer", Want: diffID, Got: got}
	}
	if cr.n != tarSize {
		return files, fmt.Errorf("%w: the tar stream has %d bytes, its index says %d", index.ErrFormat, cr.n, tarSize)
	}
	if err := pack.Truncate(tarSize); err != nil {
		return files, err
	}
	return files, pack.Close()
}

// writeSparse writes the data segments of sparse entry e, read from r, at
// their offsets in f, and sets f's size: the holes stay holes.
func writeSparse(f *os.File, r io.Reader, e index.Entry) error {
	for _, s := range e.Sparse.Segments {
		if _, err := io.CopyN(io.NewOffsetWriter(f, s.Off), r, s.Len); err != nil {
			return err
		}
	}
	return f.Truncate(e.Size)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// openFile opens the tree file holding n's bytes, or returns nil when the
// layer has no tree or n has no file of its own (packed). A tree file that is not as
// extracted drops the tree for the rest of the mount and from the cache
// (the next mount extracts it again); reads then decode spans.
func (im *Image) openFile(n *Node) *os.File {
	l := im.layers[n.Layer]
	t := l.tree.Load()
	if t == nil || !hasTreeFile(n.Size, im.sparseMap(n) != nil) {
		return nil
	}
	f, err := t.Open(n.Offset, n.Size)
	if err == nil {
		return f
	}
	if !errors.Is(err, fetch.ErrTreeChanged) {
		// Out of descriptors, say: this read goes through the spans.
		im.log.Warn("opening an extracted layer file; reading through the layer's spans", "layer", l.desc.Digest, "err", err)
		return nil
	}
	if l.tree.CompareAndSwap(t, nil) {
		if err := l.removeTree(err, "reading through the layer's spans"); err != nil {
			im.log.Warn("removing damaged cache entry", "tree", l.diffID, "err", err)
		}
	}
	return nil
}

// removeTree logs that the layer's tree is damaged (why), saying what
// happens next, and removes it from the cache.
func (l *layer) removeTree(why error, next string) error {
	l.im.log.Error("extracted layer files damaged on disk; "+next, "layer", l.desc.Digest, "err", why)
	if err := l.im.client.Cache().Remove(fetch.KindTree, l.diffID); err != nil && !errors.Is(err, fetch.ErrNotFound) {
		return err
	}
	return nil
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
