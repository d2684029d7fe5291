package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// referrerAnnotation is set, on our copy of an index blob's descriptor, to
// the digest of the artifact manifest that listed it, for logs and inspect.
const referrerAnnotation = "io.ocifs.referrer"

// remoteIndexes finds the ocifs index artifacts that refer to this image's
// manifest, in the image's own repository and then in each index
// repository (Options.IndexRepos), and returns, per layer digest, the
// descriptor of its index blob and where it is. A layer indexed in an
// earlier repository is not looked for in a later one; within one, where
// several artifacts index one layer, the newest (by its created annotation)
// wins. A repository that cannot be asked is logged and skipped: the error
// is only the context's.
func (im *Image) remoteIndexes(ctx context.Context) (map[digest.Digest]remoteIndex, error) {
	out := map[digest.Digest]remoteIndex{}
	for _, src := range im.indexSources() {
		if im.allIndexed(out) {
			break
		}
		found, err := im.remoteIndexesIn(ctx, src)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !errors.Is(err, fetch.ErrOffline) { // nothing saved to look at: no news
				im.log.Warn("looking for index artifacts", "source", src.Source(), "err", err)
			}
			continue
		}
		for ld, d := range found {
			if _, seen := out[ld]; !seen {
				out[ld] = remoteIndex{desc: d, from: src}
			}
		}
	}
	return out, nil
}

// remoteIndexesIn is remoteIndexes for one repository, src.
func (im *Image) remoteIndexesIn(ctx context.Context, src *fetch.Image) (map[digest.Digest]ocispec.Descriptor, error) {
	refs, err := src.Referrers(ctx, fetch.ArtifactTypeIndex)
	if err != nil {
		return nil, err
	}
	manifests, errs := fetchReferrers(ctx, src, refs)
	out := map[digest.Digest]ocispec.Descriptor{}
	created := map[digest.Digest]string{}
	for n, r := range refs {
		m, err := manifests[n], errs[n]
		if errors.Is(err, fetch.ErrOffline) {
			continue // not in the cache, and the registry is not asked
		}
		if err != nil {
			im.log.Warn("index artifact unusable; ignored", "source", src.Source(), "digest", r.Digest, "err", err)
			continue
		}
		when := m.Annotations[ocispec.AnnotationCreated]
		for _, d := range m.Layers {
			if d.MediaType != fetch.MediaTypeIndexLayer {
				continue
			}
			ld := digest.Digest(d.Annotations[fetch.AnnotationLayerDigest])
			if !im.hasLayer(ld) {
				im.log.Warn("index artifact indexes a layer the image does not have; that index ignored",
					"source", src.Source(), "digest", r.Digest, "layer", ld)
				continue
			}
			if _, seen := out[ld]; seen && when <= created[ld] {
				continue
			}
			d.Annotations = maps.Clone(d.Annotations)
			d.Annotations[referrerAnnotation] = r.Digest.String()
			out[ld], created[ld] = d, when
		}
	}
	return out, nil
}

// PushIndex stores the index of every layer that has one (gzip and plain
// tar layers) in the registry, as an artifact whose subject is the image's
// manifest, so that a mount anywhere finds it and reads lazily from the
// first read. The image must be loaded.
func (im *Image) PushIndex(ctx context.Context) (ocispec.Descriptor, error) {
	return im.pushIndex(ctx, im.img)
}

// pushIndex stores the indexes as an artifact in dst's repository.
func (im *Image) pushIndex(ctx context.Context, dst *fetch.Image) (ocispec.Descriptor, error) {
	blobs, err := im.indexBlobs(im.layers)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return pushIndexBlobs(ctx, dst, blobs)
}

// indexBlobs encodes the index of each of layers that has one (gzip and
// plain tar layers) as an index blob.
func (im *Image) indexBlobs(layers []*layer) ([]fetch.Blob, error) {
	var blobs []fetch.Blob
	for _, l := range layers {
		if l.whole() {
			continue
		}
		b, err := l.tbl().MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("layer %s: encoding index: %w", l.desc.Digest, err)
		}
		annotations := map[string]string{fetch.AnnotationLayerDigest: l.desc.Digest.String()}
		// The head's digest lets a mount fetch the entry table alone and
		// each window with its span (lazyIndex).
		if n, err := index.HeadLen(b); err == nil && n < int64(len(b)) {
			annotations[fetch.AnnotationIndexHeadDigest] = digest.FromBytes(b[:n]).String()
			annotations[fetch.AnnotationIndexHeadSize] = strconv.FormatInt(n, 10)
		}
		blobs = append(blobs, fetch.Blob{Data: b, Desc: ocispec.Descriptor{
			MediaType:   fetch.MediaTypeIndexLayer,
			Digest:      digest.FromBytes(b),
			Size:        int64(len(b)),
			Annotations: annotations,
		}})
	}
	if len(blobs) == 0 {
		return nil, fmt.Errorf("%s: no gzip or plain tar layer to index", im.img.Ref)
	}
	return blobs, nil
}

// pushIndexBlobs pushes blobs as an index artifact referring to dst's
// manifest, in dst's repository.
func pushIndexBlobs(ctx context.Context, dst *fetch.Image, blobs []fetch.Blob) (ocispec.Descriptor, error) {
	annotations := map[string]string{ocispec.AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano)}
	return dst.PushReferrer(ctx, fetch.ArtifactTypeIndex, annotations, blobs)
}

// IndexSizes returns, per layer with an index, the encoded index size and
// the layer's uncompressed size, for `ocifs index build` to report.
func (im *Image) IndexSizes() (indexBytes, tarBytes map[digest.Digest]int64, err error) {
	indexBytes, tarBytes = map[digest.Digest]int64{}, map[digest.Digest]int64{}
	for _, l := range im.layers {
		if l.whole() {
			continue
		}
		t := l.tbl()
		b, err := t.MarshalBinary()
		if err != nil {
			return nil, nil, err
		}
		indexBytes[l.desc.Digest], tarBytes[l.desc.Digest] = int64(len(b)), t.TarSize
	}
	return indexBytes, tarBytes, nil
}

// maxHeldWindows bounds the windows a lazyIndex keeps in memory (each at
// most about 33 KiB stored); the others are in the disk cache or fetched
// again.
const maxHeldWindows = 256

// lazyIndex is a registry index read piece by piece: its head (entries,
// spans and the sha256 of every window) fetched alone with one Range GET
// and checked against the digest the artifact manifest gives for it
// (fetch.AnnotationIndexHeadDigest), then kept in the disk cache under that
// digest; and each window fetched from the index blob when its span is
// read, beside the span, checked against the head's sha256 for it (and
// again by index.Table.Window before it is used). So a first read costs
// the table and what it reads, not every window of the layer.
//
// It is the io.ReaderAt index.Open reads the table through. Once the whole
// blob has been fetched and checked against its digest (complete, for the
// background's comparison with the verified layer), it is read from the
// disk cache.
type lazyIndex struct {
	l        *layer
	desc     ocispec.Descriptor // the index blob
	head     io.ReaderAt        // the blob's first headSize bytes: headFile, or in memory when the disk is full
	headFile *os.File           // the cached head, or nil
	headSize int64

	// t is the table opened through the index, for its window locations,
	// and windowOffs the offsets of its stored windows in the blob, in
	// order, windowSpans their spans; all set once index.Open returned,
	// before the table is used.
	t           *index.Table
	windowOffs  []int64
	windowSpans []int

	// mu guards held, inflight and whole.
	mu sync.Mutex
	// held are verified stored windows by span; inflight those being
	// fetched, closed when done (held has the window then, unless the
	// fetch failed).
	held     map[int][]byte
	inflight map[int]chan struct{}
	// whole is the complete index blob, once complete has fetched and
	// checked it: wholeFile, from the disk cache, or in memory when the
	// disk is full.
	whole     io.ReaderAt
	wholeFile *os.File
}

// openLazyIndex opens the registry's index for l, desc, through its head of
// headSize bytes with digest headDigest: from the disk cache, or fetched
// with one Range GET and checked.
func (l *layer) openLazyIndex(ctx context.Context, desc ocispec.Descriptor, headSize int64, headDigest digest.Digest) (*index.Table, *lazyIndex, error) {
	li := &lazyIndex{l: l, desc: desc, headSize: headSize, held: map[int][]byte{}, inflight: map[int]chan struct{}{}}
	cache := l.im.client.Cache()
	f, err := cache.Open(headDigest)
	cached := err == nil
	if cached {
		if fi, err := f.Stat(); err != nil || fi.Size() != headSize {
			l.im.log.Warn("cached index head of another size; fetching it again", "layer", l.desc.Digest, "digest", headDigest)
			f.Close()
			cache.Remove(fetch.KindBlob, headDigest)
			cached = false
		} else {
			li.head, li.headFile = f, f
		}
	}
	if !cached {
		var b []byte
		if b, err = l.indexImage().FetchRange(indexBytes(ctx), desc, 0, headSize, headDigest); err != nil {
			return nil, nil, fmt.Errorf("index head: %w", err)
		}
		li.head = bytes.NewReader(b)
		if err := cache.Put(headDigest, bytes.NewReader(b)); err != nil {
			// Kept in memory: a full disk costs memory, not the index.
			l.im.log.Warn("caching the index head", "layer", l.desc.Digest, "err", err)
		} else if f, err := cache.Open(headDigest); err == nil {
			li.head, li.headFile = f, f
		}
	}
	t, err := index.Open(li, desc.Size)
	if err != nil {
		li.close()
		if cached && errors.Is(err, index.ErrFormat) {
			// The disk changed under the cached head: fetch it again.
			l.im.log.Warn("cached index head unusable; fetching it again", "layer", l.desc.Digest, "err", err)
			cache.Remove(fetch.KindBlob, headDigest)
			if !cache.Has(headDigest) {
				return l.openLazyIndex(ctx, desc, headSize, headDigest)
			}
		}
		return nil, nil, err
	}
	li.t = t
	for i := range t.Spans {
		if off, n, _ := t.WindowLocation(i); n > 0 {
			li.windowOffs = append(li.windowOffs, off)
			li.windowSpans = append(li.windowSpans, i)
		}
	}
	return t, li, nil
}

// ReadAt reads the head from the cached head, and a window (exactly the
// bytes of one, as index.Table.Window asks) from memory, the disk cache or
// the registry, on the image's context: Window has none, and the fetch is
// shared by every reader of the span.
func (li *lazyIndex) ReadAt(p []byte, off int64) (int, error) {
	if off >= 0 && off+int64(len(p)) <= li.headSize {
		return li.head.ReadAt(p, off)
	}
	if li.t != nil {
		if i := li.windowAt(off, len(p)); i >= 0 {
			b, err := li.window(li.l.im.ctx, i)
			if err != nil {
				return 0, err
			}
			return copy(p, b), nil
		}
	}
	return 0, fmt.Errorf("%w: index read at %d+%d is neither in its %d-byte head nor one window", index.ErrFormat, off, len(p), li.headSize)
}

// window returns the verified stored window of span i, waiting for a fetch
// in flight or making one.
func (li *lazyIndex) window(ctx context.Context, i int) ([]byte, error) {
	for tries := 0; ; {
		li.mu.Lock()
		b, held := li.held[i]
		ch, busy := li.inflight[i]
		whole := li.whole
		li.mu.Unlock()
		switch {
		case held:
			return b, nil
		case whole != nil:
			off, n, _ := li.t.WindowLocation(i)
			b := make([]byte, n)
			if _, err := whole.ReadAt(b, off); err != nil {
				return nil, fmt.Errorf("index window %d: cached index blob: %w", i, err)
			}
			return b, nil
		case busy:
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case tries == 3:
			return nil, fmt.Errorf("index window %d: fetched %d times and still not held", i, tries)
		}
		tries++
		if err := li.fetch(ctx, []int{i}); err != nil {
			return nil, err
		}
	}
}

// windowAt returns the span whose stored window lies at off and is n bytes
// long, or -1.
func (li *lazyIndex) windowAt(off int64, n int) int {
	k, found := slices.BinarySearch(li.windowOffs, off)
	if !found {
		return -1
	}
	i := li.windowSpans[k]
	if _, wn, _ := li.t.WindowLocation(i); wn != int64(n) {
		return -1
	}
	return i
}

// prefetch fetches the windows the spans need that are neither held nor
// being fetched, in one Range GET (a run's windows lie back to back), for
// a run of spans being fetched: their windows arrive with them.
func (li *lazyIndex) prefetch(ctx context.Context, spans []int) {
	if err := li.fetch(ctx, spans); err != nil && ctx.Err() == nil {
		li.l.im.log.Debug("prefetching index windows", "layer", li.l.desc.Digest, "err", err)
	}
}

// fetch gets the stored windows of spans (sorted) that are neither held
// nor in flight: from the disk cache, else with one FetchParts call, each
// checked against its sha256. Windows fetched are written to the disk
// cache in the background.
func (li *lazyIndex) fetch(ctx context.Context, spans []int) error {
	l := li.l
	t := li.t
	li.mu.Lock()
	if t == nil || li.whole != nil {
		li.mu.Unlock()
		return nil
	}
	var claimed []int
	for _, i := range spans {
		if _, n, _ := t.WindowLocation(i); n == 0 {
			continue
		}
		if _, ok := li.held[i]; ok {
			continue
		}
		if _, ok := li.inflight[i]; ok {
			continue
		}
		li.inflight[i] = make(chan struct{})
		claimed = append(claimed, i)
	}
	li.mu.Unlock()
	if len(claimed) == 0 {
		return nil
	}
	got := make(map[int][]byte, len(claimed))
	var parts []fetch.Part
	var want []int
	cache := l.im.client.Cache()
	for _, i := range claimed {
		off, n, sum := t.WindowLocation(i)
		if b, err := readCached(cache, sum, n); err == nil {
			got[i] = b
			continue
		}
		parts = append(parts, fetch.Part{Off: off, N: n, Digest: sum})
		want = append(want, i)
	}
	var errs []error
	var fetched []keptSpan
	if len(parts) > 0 {
		data, perrs := l.indexImage().FetchParts(indexBytes(ctx), li.desc, parts)
		for k, i := range want {
			if perrs[k] != nil {
				errs = append(errs, fmt.Errorf("index window %d: %w", i, perrs[k]))
				continue
			}
			b := bytes.Clone(data[k]) // not the run's shared buffer
			got[i] = b
			fetched = append(fetched, keptSpan{parts[k].Digest, b})
		}
	}
	li.mu.Lock()
	for i, b := range got {
		if len(li.held) >= maxHeldWindows {
			for j := range li.held {
				delete(li.held, j)
				break
			}
		}
		li.held[i] = b
	}
	for _, i := range claimed {
		close(li.inflight[i])
		delete(li.inflight, i)
	}
	li.mu.Unlock()
	li.keep(fetched)
	return errors.Join(errs...)
}

// keep writes fetched windows to the disk cache in the background, as
// spanSet.keep does spans.
func (li *lazyIndex) keep(ws []keptSpan) {
	if len(ws) == 0 {
		return
	}
	l := li.l
	select {
	case l.im.keeping <- struct{}{}:
	default:
		return
	}
	l.im.bg.Go(func() error {
		defer func() { <-l.im.keeping }()
		cache := l.im.client.Cache()
		for _, w := range ws {
			if err := cache.Put(w.digest, bytes.NewReader(w.b)); err != nil {
				l.im.log.Warn("caching index window", "layer", l.desc.Digest, "digest", w.digest, "err", err)
			}
		}
		return nil
	})
}

// complete fetches the rest of the index blob after its head, checks the
// whole blob against its digest, admits it to the disk cache (the next
// mount reads it from there, whole) and reads every window from it from
// now on: for the background's comparison of every window with the
// verified layer's, which would otherwise fetch them one by one.
func (li *lazyIndex) complete(ctx context.Context) error {
	li.mu.Lock()
	done := li.whole != nil
	li.mu.Unlock()
	if done {
		return nil
	}
	l := li.l
	cache := l.im.client.Cache()
	if !cache.Has(li.desc.Digest) {
		b := make([]byte, li.headSize, li.desc.Size)
		if _, err := li.head.ReadAt(b, 0); err != nil {
			return fmt.Errorf("reading the cached index head: %w", err)
		}
		if li.desc.Size > li.headSize {
			rest, err := l.indexImage().FetchUnchecked(indexBytes(ctx), li.desc, li.headSize, li.desc.Size-li.headSize)
			if err != nil {
				return fmt.Errorf("index windows: %w", err)
			}
			b = append(b, rest...)
		}
		if got := digest.FromBytes(b); got != li.desc.Digest {
			return &fetch.DigestError{What: "index blob", Want: li.desc.Digest, Got: got}
		}
		if err := cache.Put(li.desc.Digest, bytes.NewReader(b)); err != nil {
			l.im.log.Warn("caching the index blob", "layer", l.desc.Digest, "err", err)
			li.mu.Lock()
			li.whole, li.held = bytes.NewReader(b), map[int][]byte{}
			li.mu.Unlock()
			return nil
		}
	}
	f, err := cache.Open(li.desc.Digest)
	if err != nil {
		return fmt.Errorf("opening the cached index blob: %w", err)
	}
	li.mu.Lock()
	li.whole, li.wholeFile, li.held = f, f, map[int][]byte{}
	li.mu.Unlock()
	return nil
}

// close closes the files the index reads from.
func (li *lazyIndex) close() error {
	li.mu.Lock()
	defer li.mu.Unlock()
	var errs []error
	for _, f := range []*os.File{li.headFile, li.wholeFile} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}

// indexBytes is ctx for a fetch of an index blob's bytes: they are not the
// layer's, so the reader, read-ahead or background purpose ctx counts
// layer bytes for (Stats.FetchedFor) does not count them.
func indexBytes(ctx context.Context) context.Context {
	return fetch.CountBytes(ctx, func(int64) {})
}
