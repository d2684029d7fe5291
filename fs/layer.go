package fs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// layer is one layer of an image: its plan, and the verified uncompressed tar
// that reads are served from once it is in the cache.
type layer struct {
	im     *Image
	idx    int
	desc   ocispec.Descriptor
	diffID digest.Digest
	mode   string
	why    string

	// ready is closed once data or err is set; both are then immutable.
	ready chan struct{}

	// mu guards started, data and err until ready is closed.
	mu      sync.Mutex
	started bool
	data    *os.File // the uncompressed tar, verified against diffID
	err     error    // why the layer cannot be served (quarantined)
}

// load returns the layer's entry table: from the index cache when a valid one
// is there, else by streaming the layer, which also leaves its bytes ready.
func (l *layer) load(ctx context.Context) (*index.Table, error) {
	cache := l.im.client.Cache()
	if b, err := cache.ReadIndex(l.desc.Digest); err == nil {
		t, err := index.Unmarshal(b)
		switch {
		case err != nil:
			l.im.log.Warn("cached index unreadable; rebuilding it", "layer", l.desc.Digest, "err", err)
		case t.Digest != l.desc.Digest || t.DiffID != l.diffID:
			l.im.log.Warn("cached index is for other bytes; rebuilding it", "layer", l.desc.Digest, "diff_id", t.DiffID)
		default:
			return t, nil
		}
	} else if !errors.Is(err, fetch.ErrNotFound) {
		l.im.log.Warn("cached index unreadable; rebuilding it", "layer", l.desc.Digest, "err", err)
	}
	l.mu.Lock()
	l.started = true
	l.mu.Unlock()
	t, err := l.stream(ctx)
	if err != nil {
		l.finish(nil, err)
		return nil, err
	}
	f, err := cache.Open(l.diffID)
	l.finish(f, err)
	return t, err
}

// stream fetches the whole blob in order, decompresses it, builds its entry
// table and stores the uncompressed tar in the cache, admitted only once the
// blob digest and the config's DiffID have both checked out.
func (l *layer) stream(ctx context.Context) (*index.Table, error) {
	start := time.Now()
	cache := l.im.client.Cache()
	rc, err := l.im.img.OpenBlob(ctx, l.desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	dr, err := index.Decompress(l.desc.MediaType, rc)
	if err != nil {
		return nil, l.failed(rootCause(rc, err))
	}
	defer dr.Close()
	p, err := cache.Create(l.diffID)
	if err != nil {
		return nil, err
	}
	defer p.Abort()
	t, err := index.Build(io.TeeReader(dr, p), l.im.opts.Index)
	if err != nil {
		return nil, l.failed(rootCause(rc, err))
	}
	// The blob's digest is checked when its reader reaches the end; bytes
	// after the compressed stream must be read to get there.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return nil, l.failed(err)
	}
	if t.DiffID != l.diffID {
		return nil, l.failed(&fetch.DigestError{What: fmt.Sprintf("uncompressed layer %s", l.desc.Digest), Want: l.diffID, Got: t.DiffID})
	}
	if err := p.Commit(); err != nil {
		return nil, l.failed(err)
	}
	t.Digest, t.Size = l.desc.Digest, l.desc.Size
	if b, err := t.MarshalBinary(); err != nil {
		l.im.log.Warn("encoding layer index", "layer", l.desc.Digest, "err", err)
	} else if err := cache.WriteIndex(l.desc.Digest, b); err != nil {
		l.im.log.Warn("caching layer index", "layer", l.desc.Digest, "err", err)
	}
	l.im.log.Info("layer indexed", "layer", l.desc.Digest, "entries", len(t.Entries),
		"bytes", t.TarSize, "duration", time.Since(start).Round(time.Millisecond))
	return t, nil
}

// rootCause explains a failure to decode a blob: when the blob's own bytes
// do not match its digest, that is the cause to report (the registry sent
// wrong bytes), not the decoder's complaint about them. Finding out means
// reading the rest of the blob, which the stream was going to read anyway.
func rootCause(blob io.Reader, err error) error {
	var de *fetch.DigestError
	if errors.As(err, &de) || !errors.Is(err, index.ErrFormat) {
		return err
	}
	if _, derr := io.Copy(io.Discard, blob); errors.As(derr, &de) {
		return derr
	}
	return err
}

// failed counts and logs a verification failure; other errors pass through.
func (l *layer) failed(err error) error {
	var de *fetch.DigestError
	if errors.As(err, &de) || errors.Is(err, fetch.ErrFormat) || errors.Is(err, index.ErrFormat) {
		l.im.verifyFailures.Add(1)
		l.im.log.Error("layer failed verification; it will not be served", "layer", l.desc.Digest, "err", err)
	}
	return err
}

// start fetches the layer's bytes in the background unless that has begun.
func (l *layer) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return
	}
	l.started = true
	l.im.bg.Go(func() error {
		l.finish(l.fill(l.im.ctx))
		return nil
	})
}

// ensure fetches the layer's bytes and waits for them.
func (l *layer) ensure(ctx context.Context) error {
	l.start()
	select {
	case <-l.ready:
		return l.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fill opens the layer's uncompressed tar from the cache, re-checking its
// digest, or streams the layer again when it is missing or damaged.
func (l *layer) fill(ctx context.Context) (*os.File, error) {
	cache := l.im.client.Cache()
	f, err := cache.Open(l.diffID)
	if err == nil {
		err = verifyFile(f, l.diffID)
		if err == nil {
			return f, nil
		}
		f.Close()
		l.im.log.Error("cached layer damaged on disk; fetching it again", "layer", l.desc.Digest, "err", err)
		if err := cache.Remove("blob", l.diffID); err != nil {
			l.im.log.Warn("removing damaged cache entry", "digest", l.diffID, "err", err)
		}
	}
	if _, err := l.stream(ctx); err != nil {
		return nil, err
	}
	return cache.Open(l.diffID)
}

func verifyFile(f *os.File, want digest.Digest) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return err
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != want {
		return &fetch.DigestError{What: "cached " + f.Name(), Want: want, Got: got}
	}
	return nil
}

// finish publishes the outcome of fetching the layer's bytes.
func (l *layer) finish(f *os.File, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.ready:
		if f != nil {
			f.Close()
		}
		return
	default:
	}
	l.data, l.err = f, err
	close(l.ready)
}

// readAt serves bytes of the uncompressed tar, waiting for the layer.
func (l *layer) readAt(ctx context.Context, p []byte, off int64) (int, error) {
	select {
	case <-l.ready:
		l.im.cacheHits.Add(1)
	default:
		l.im.cacheMisses.Add(1)
		if err := l.ensure(ctx); err != nil {
			return 0, err
		}
	}
	if l.err != nil {
		return 0, fmt.Errorf("layer %s: %w", l.desc.Digest, l.err)
	}
	return l.data.ReadAt(p, off)
}

// state reports whether the layer's bytes are all here and verified. Both are
// the same today: bytes are admitted only whole and verified.
func (l *layer) state() (complete, verified bool) {
	select {
	case <-l.ready:
		ok := l.err == nil
		return ok, ok
	default:
		return false, false
	}
}

func (l *layer) close() error {
	select {
	case <-l.ready:
		if l.data != nil {
			return l.data.Close()
		}
	default:
	}
	return nil
}
