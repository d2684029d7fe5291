package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
)

// Start-up profiles: what a workload read of the image in its first
// seconds ([index.Profile]), recorded by a mount ([Image.StartRecording])
// and replayed by later ones ([Image.Replay]): each recorded range is read
// through its layer's normal read path, in the recorded order, by a few
// goroutines, and the result dropped. So a profile orders and prefetches
// and nothing else: every byte still comes through the verified read path
// into the piece and disk caches, and what is served is what it would be
// without the profile. A profile that lies (another image's ranges, ranges
// past a layer's end, millions of them) can only waste bandwidth, within
// bounds: ranges of layers the image lacks or past their ends are dropped,
// and the bytes replayed are capped by the image's own uncompressed size
// and by MaxReplayBytes.
//
// A profile is stored in the local cache (keyed by the manifest digest,
// fetch.KindProfile) and in the registry as a referrer of the image's
// manifest (artifactType fetch.ArtifactTypeProfile), beside the index
// artifact; a mount looks in that order.

// MaxReplayBytes caps the bytes one replay reads, whatever the profile
// says (it is also capped by the image's uncompressed size).
const MaxReplayBytes = 2 << 30

// replayPiece is the most one replay read asks of a layer at once.
const replayPiece = 4 << 20

// replayGap is the most uncompressed bytes between two ranges of a layer
// that a replay reads as one: about what a 100 Mbit/s link carries in a
// 10 ms round trip once compressed, so reading them costs less than asking
// again.
const replayGap = 128 << 10

// recorder collects the ranges read while recording is on.
type recorder struct {
	// mu guards everything below. Leaf.
	mu     sync.Mutex
	ranges []index.ProfileRange // Layer: the image's layer index
	// seen is, per layer, the disjoint sorted ranges recorded so far, so
	// a range read again is not recorded twice.
	seen map[int][]index.ProfileRange
	full bool // MaxProfileRanges reached: later reads are not recorded
}

// add records a read of layer's bytes [off, off+n).
func (r *recorder) add(layer int, off, n int64) {
	if n <= 0 || off < 0 || off+n > index.MaxProfileOffset {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.full {
		return
	}
	seen := r.seen[layer]
	i := sort.Search(len(seen), func(i int) bool { return seen[i].Off+seen[i].Len >= off })
	if i < len(seen) && seen[i].Off <= off && seen[i].Off+seen[i].Len >= off+n {
		return // all of it recorded already
	}
	// Merge into the covered set: every range touching [off, off+n).
	lo, hi := off, off+n
	j := i
	for j < len(seen) && seen[j].Off <= hi {
		lo, hi = min(lo, seen[j].Off), max(hi, seen[j].Off+seen[j].Len)
		j++
	}
	r.seen[layer] = append(seen[:i], append([]index.ProfileRange{{Layer: layer, Off: lo, Len: hi - lo}}, seen[j:]...)...)
	// A read continuing the last recorded range (a file read in order)
	// extends it; anything else is a new range.
	if k := len(r.ranges) - 1; k >= 0 {
		if last := &r.ranges[k]; last.Layer == layer && off >= last.Off && off <= last.Off+last.Len {
			last.Len = max(last.Len, off+n-last.Off)
			return
		}
	}
	if len(r.ranges) == index.MaxProfileRanges {
		r.full = true
		return
	}
	r.ranges = append(r.ranges, index.ProfileRange{Layer: layer, Off: off, Len: n})
}

// StartRecording starts recording the reads of the image's files (through
// [Image.ReadAt]) for a profile; [Image.StopRecording] returns it. Reads a
// kernel serves itself (passthrough, its page cache) are not seen: mount
// with MountOptions.NoPassthrough while recording.
func (im *Image) StartRecording() {
	im.rec.CompareAndSwap(nil, &recorder{seen: map[int][]index.ProfileRange{}})
}

// StopRecording ends recording and returns what was recorded: the layers
// read and their ranges in first-access order. It returns nil when
// recording was not on.
func (im *Image) StopRecording() *index.Profile {
	r := im.rec.Swap(nil)
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p := &index.Profile{Layers: []digest.Digest{}, Ranges: make([]index.ProfileRange, 0, len(r.ranges))}
	at := map[int]int{} // image layer -> profile layer
	for _, rg := range r.ranges {
		j, ok := at[rg.Layer]
		if !ok {
			j = len(p.Layers)
			at[rg.Layer] = j
			p.Layers = append(p.Layers, im.layers[rg.Layer].desc.Digest)
		}
		p.Ranges = append(p.Ranges, index.ProfileRange{Layer: j, Off: rg.Off, Len: rg.Len})
	}
	return p
}

// record notes a read of file n's bytes [off, off+got) while recording is
// on, as a range of its layer.
func (im *Image) record(n *Node, off int64, got int) {
	r := im.rec.Load()
	if r == nil || got <= 0 {
		return
	}
	start, end := n.Offset+off, n.Offset+off+int64(got)
	if sp := im.sparseMap(n); sp != nil {
		// The data of a sparse file is packed from n.Offset: record the
		// packed bytes the read may touch (a profile only prefetches).
		ds := sp.DataSize()
		start, end = n.Offset+min(off, ds), n.Offset+min(off+int64(got), ds)
	}
	r.add(int(n.Layer), start, end-start)
}

// SaveProfile stores p in the local cache as the image's profile, for
// every later mount of the image on this machine.
func (im *Image) SaveProfile(p *index.Profile) error {
	b, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	return im.client.Cache().WriteProfile(im.img.ManifestDigest, b)
}

// PushProfile stores p in the registry (or OCI layout) as an artifact
// whose subject is the image's manifest, beside its index artifact, so a
// mount anywhere replays it.
//
// Unless Options.NoProfilePack is set, the artifact also carries the
// profile's pack (pack.go): the bytes its ranges cover, read through the
// mount's verified read path (call it after Load), so that a mount
// elsewhere fetches those bytes and not the spans around them. The pushed
// profile, pack and all, also replaces the one in the local cache, and
// the pack's frames go into the disk cache.
func (im *Image) PushProfile(ctx context.Context, p *index.Profile) (ocispec.Descriptor, error) {
	withPack := *p
	var pack []byte
	if !im.opts.NoProfilePack {
		var err error
		if withPack.Pack, pack, err = im.buildPack(ctx, p); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("packing the profile's bytes (--no-pack pushes it without): %w", err)
		}
	}
	b, err := withPack.MarshalBinary()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	annotations := map[string]string{
		ocispec.AnnotationCreated:    time.Now().UTC().Format(time.RFC3339Nano),
		fetch.AnnotationProfileBytes: fmt.Sprint(p.Bytes()),
	}
	blobs := []fetch.Blob{{Data: b, Desc: ocispec.Descriptor{
		MediaType: fetch.MediaTypeProfile,
		Digest:    digest.FromBytes(b),
		Size:      int64(len(b)),
	}}}
	if pk := withPack.Pack; pk != nil {
		blobs = append(blobs, fetch.Blob{Data: pack, Desc: ocispec.Descriptor{
			MediaType: fetch.MediaTypeProfilePack, Digest: pk.Digest, Size: pk.Size}})
	}
	d, err := im.img.PushReferrer(ctx, fetch.ArtifactTypeProfile, annotations, blobs)
	if err != nil {
		return d, err
	}
	if pk := withPack.Pack; pk != nil {
		cache := im.client.Cache()
		for i, off := range pk.Offsets() {
			f := pk.Frames[i]
			if err := cache.Put(f.Digest, bytes.NewReader(pack[off:off+f.Stored])); err != nil {
				im.log.Warn("caching the profile's pack", "err", err)
				break
			}
		}
	}
	if err := im.SaveProfile(&withPack); err != nil {
		im.log.Warn("keeping the pushed start-up profile in the cache", "err", err)
	}
	return d, nil
}

// buildPack packs the bytes of p's ranges (pack.go) of the image's layers
// served by spans, read through their verified read paths: ranges less
// than packGap apart are packed as one, in frames of at most packFrame
// bytes, in the order the profile first read them, up to maxPackBuild
// bytes. It returns no pack when no range is of such a layer.
func (im *Image) buildPack(ctx context.Context, p *index.Profile) (*index.ProfilePack, []byte, error) {
	merged, _ := im.profileSegments(p, packGap, func(l *layer) bool {
		_, spans := l.reader().(*spanReader)
		return spans
	})
	pk := &index.ProfilePack{}
	var blob []byte
	var total int64
	buf := make([]byte, packFrame)
	for _, sg := range merged {
		for off := sg.off; off < sg.end && total < maxPackBuild; {
			n := min(packFrame, sg.end-off)
			got, err := sg.l.readAt(ctx, buf[:n], off, off+n)
			if err == nil && int64(got) < n {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return nil, nil, fmt.Errorf("layer %s, bytes %d-%d: %w", sg.l.desc.Digest, off, off+n, err)
			}
			stored, err := index.EncodePackFrame(buf[:n])
			if err != nil {
				return nil, nil, err
			}
			pk.Frames = append(pk.Frames, index.PackFrame{Layer: sg.layer, Off: off, Len: n, Stored: int64(len(stored)), Digest: digest.FromBytes(stored)})
			blob = append(blob, stored...)
			off += n
			total += n
		}
	}
	if len(pk.Frames) == 0 {
		return nil, nil, nil
	}
	pk.Digest, pk.Size = digest.FromBytes(blob), int64(len(blob))
	return pk, blob, nil
}

// Profile sources, as ProfileStats.Source says.
const (
	ProfileLocal    = "cache"
	ProfileRegistry = "registry"
)

// FindProfile returns the image's profile and where it came from: the
// local cache, else the newest profile artifact among the referrers of
// the image's manifest (then kept in the local cache). It returns a nil
// profile and no error when there is none; a damaged local one is
// dropped, a bad remote one ignored, each with a warning.
func (im *Image) FindProfile(ctx context.Context) (*index.Profile, string, error) {
	cache := im.client.Cache()
	b, err := cache.ReadProfile(im.img.ManifestDigest)
	if err == nil {
		p, err := index.UnmarshalProfile(b)
		if err == nil {
			return p, ProfileLocal, nil
		}
		im.log.Warn("cached start-up profile unusable; removed", "digest", im.img.ManifestDigest, "err", err)
		cache.Remove(fetch.KindProfile, im.img.ManifestDigest)
	} else if !errors.Is(err, fetch.ErrNotFound) {
		im.log.Warn("cached start-up profile unreadable", "digest", im.img.ManifestDigest, "err", err)
	}
	if im.opts.NoRemoteIndex {
		return nil, "", nil
	}
	refs, err := im.img.Referrers(ctx, fetch.ArtifactTypeProfile)
	if err != nil {
		return nil, "", err
	}
	// Newest first, by what the list says (a registry copies the
	// artifact's annotations into it); the manifest fetched is the truth.
	sort.SliceStable(refs, func(a, b int) bool {
		return refs[a].Annotations[ocispec.AnnotationCreated] > refs[b].Annotations[ocispec.AnnotationCreated]
	})
	if len(refs) > maxProfileArtifacts {
		im.log.Warn("more profile artifacts than are looked at; the rest ignored", "artifacts", len(refs), "looked_at", maxProfileArtifacts)
		refs = refs[:maxProfileArtifacts]
	}
	// Their manifests together: a replay waits for this lookup.
	manifests, errs := fetchReferrers(ctx, im.img, refs)
	if err := ctx.Err(); err != nil {
		return nil, "", err // the image closed or its Resolve failed: no artifact is to blame
	}
	var best *index.Profile
	var bestWhen string
	for n, r := range refs {
		m, err := manifests[n], errs[n]
		if err != nil {
			im.log.Warn("profile artifact unusable; ignored", "digest", r.Digest, "err", err)
			continue
		}
		when := m.Annotations[ocispec.AnnotationCreated]
		if best != nil && when <= bestWhen {
			continue
		}
		if p, b := im.profileBlob(ctx, r.Digest, m.Layers); p != nil {
			best, bestWhen = p, when
			if err := cache.WriteProfile(im.img.ManifestDigest, b); err != nil {
				im.log.Warn("keeping the start-up profile in the cache", "err", err)
			}
		}
	}
	if best == nil {
		return nil, "", nil
	}
	return best, ProfileRegistry, nil
}

// maxProfileArtifacts caps the profile artifacts one lookup reads, newest
// first, so a registry listing thousands costs a few fetches.
const maxProfileArtifacts = 4

// profileBlob returns the first profile blob of an artifact's blobs that
// decodes, and its bytes; nil when none does (each failure a warning).
func (im *Image) profileBlob(ctx context.Context, artifact digest.Digest, blobs []ocispec.Descriptor) (*index.Profile, []byte) {
	for _, d := range blobs {
		if d.MediaType != fetch.MediaTypeProfile {
			continue
		}
		if d.Size > index.MaxProfileSize {
			im.log.Warn("profile artifact too large; ignored", "digest", artifact, "len", d.Size)
			continue
		}
		b, err := im.img.FetchBlob(ctx, d)
		if err == nil {
			var p *index.Profile
			if p, err = index.UnmarshalProfile(b); err == nil {
				return p, b
			}
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		im.log.Warn("profile artifact unusable; ignored", "digest", artifact, "err", err)
	}
	return nil, nil
}

// ProfileStats says what the replay of a start-up profile did, for `ocifs
// stats` and tests.
type ProfileStats struct {
	Source  string `json:"source"`  // ProfileLocal, ProfileRegistry, or "" for none
	Ranges  int    `json:"ranges"`  // ranges replayed
	Dropped int    `json:"dropped"` // ranges dropped: their layer is not the image's, or past its end, or past the caps
	Bytes   int64  `json:"bytes"`   // uncompressed bytes the replay read
	Failed  int    `json:"failed"`  // replay reads that failed (the program's own read will say why)
	// PackFrames is how many frames of the profile's pack the layers
	// serve (pack.go): the ranges they cover are fetched from the pack.
	PackFrames int    `json:"pack_frames,omitempty"`
	Done       bool   `json:"done"`               // the replay has ended
	Duration   string `json:"duration,omitempty"` // from Replay to its end
	Err        string `json:"error,omitempty"`    // why no profile could be looked for
}

// replayState is one replay: started by Replay, ended when done closes.
type replayState struct {
	done chan struct{}
	// mu guards stats. Leaf.
	mu    sync.Mutex
	stats ProfileStats
}

// replayPlan is one read of a replay.
type replayPlan struct {
	l       *layer
	off, n  int64
	ranges  int  // the profile's ranges this read starts (counted in ProfileStats.Ranges)
	kickOff bool // a layer served whole: fetch it instead of reading
	// pack and frames, when set: fetch these frames of the layer's pack
	// (pack.go), n bytes of the layer in all, instead of reading.
	pack   *layerPack
	frames []int
}

// Replay looks for the image's start-up profile and, in the background,
// reads every range it lists through the layers' read paths, in order, a
// few at a time, so that the program it was recorded from finds its bytes
// fetched and verified when it asks. Call it after Load; it returns at
// once, and does nothing with Options.NoProfile or when called again.
// [Image.WaitReplay] waits for the end; Close cancels it.
func (im *Image) Replay() {
	st := &replayState{done: make(chan struct{})}
	if !im.replay.CompareAndSwap(nil, st) {
		return
	}
	if im.opts.NoProfile {
		st.stats.Done = true
		close(st.done)
		return
	}
	start := time.Now()
	im.bg.Go(func() error {
		defer func() {
			st.mu.Lock()
			st.stats.Done, st.stats.Duration = true, time.Since(start).Round(time.Millisecond).String()
			s := st.stats
			st.mu.Unlock()
			close(st.done)
			if s.Source != "" {
				im.log.Info("start-up profile replayed", "source", s.Source, "ranges", s.Ranges, "dropped", s.Dropped,
					"bytes", s.Bytes, "failed", s.Failed, "duration", s.Duration)
			}
		}()
		pl := im.profileLookup()
		select {
		case <-pl.done:
		case <-im.ctx.Done():
			return nil
		}
		p, src, err := pl.p, pl.src, pl.err
		if err != nil {
			if im.ctx.Err() == nil {
				im.log.Warn("looking for a start-up profile in the registry", "err", err)
			}
			st.mu.Lock()
			st.stats.Err = err.Error()
			st.mu.Unlock()
			return nil
		}
		if p == nil {
			return nil
		}
		frames := im.usePack(p)
		plan := im.packPlan()
		left := im.unpacked(p)
		if len(plan) > 0 {
			plan[0].ranges = len(p.Ranges) - len(left.Ranges) // the ranges the frames cover
		}
		rest, dropped := im.replayPlan(left)
		plan = append(plan, rest...)
		st.mu.Lock()
		st.stats.Source, st.stats.Dropped, st.stats.PackFrames = src, dropped, frames
		st.mu.Unlock()
		im.runReplay(plan, st)
		return nil
	})
}

// LookupProfile starts looking for the image's start-up profile (the
// cache, then the registry's referrers) in the background, so that
// [Image.Replay], called after Load, finds it at hand: the lookup's round
// trips overlap the load's instead of following them. Call it right after
// Resolve, or set Options.StartProfileLookup to have Resolve start it
// earlier, before it plans the layers. It does nothing with
// Options.NoProfile; Replay looks by itself when no one called it.
func (im *Image) LookupProfile() {
	if !im.opts.NoProfile {
		im.profileLookup()
	}
}

// profileLookup is the one search for the image's start-up profile.
type profileLookup struct {
	once sync.Once
	done chan struct{} // closed when p, src and err are set
	p    *index.Profile
	src  string
	err  error
}

// profileLookup starts the search the first time and returns it.
func (im *Image) profileLookup() *profileLookup {
	pl := &im.lookup
	pl.once.Do(func() {
		pl.done = make(chan struct{})
		im.bg.Go(func() error {
			defer close(pl.done)
			pl.p, pl.src, pl.err = im.FindProfile(im.ctx)
			return nil
		})
	})
	return pl
}

// unpacked returns p without the ranges that frames in use cover whole:
// the replay fetches those frames instead (packPlan).
func (im *Image) unpacked(p *index.Profile) *index.Profile {
	packs := map[digest.Digest]*layerPack{}
	for _, l := range im.layers {
		if lp := l.pack.Load(); lp != nil {
			packs[l.desc.Digest] = lp
		}
	}
	if len(packs) == 0 {
		return p
	}
	rest := &index.Profile{Layers: p.Layers}
	for _, r := range p.Ranges {
		if r.Layer >= 0 && r.Layer < len(p.Layers) {
			if lp := packs[p.Layers[r.Layer]]; lp != nil && lp.covers(r.Off, r.Off+r.Len) {
				continue
			}
		}
		rest.Ranges = append(rest.Ranges, r)
	}
	return rest
}

// replayPlan turns p into the reads of its replay. Ranges of layers the
// image lacks or past a layer's end are dropped (counted). The others are
// gathered into segments: ranges of one layer less than replayGap apart
// are read as one, since reading the bytes between costs less than a round
// trip, and a program's start-up reads many small files that lie side by
// side (a directory's files in tar order). Each segment is due when its
// first range is in the profile's order, and is cut into reads of at most
// replayPiece bytes; the segments past the byte cap (the image's own size,
// at most MaxReplayBytes) are dropped.
func (im *Image) replayPlan(p *index.Profile) (plan []replayPlan, dropped int) {
	var imageSize int64
	for _, l := range im.layers {
		imageSize += l.contentSize()
	}
	merged, dropped := im.profileSegments(p, replayGap, nil)
	budget := min(imageSize, MaxReplayBytes)
	for _, sg := range merged {
		if budget <= 0 {
			dropped += sg.all
			continue
		}
		end := min(sg.end, sg.off+budget)
		budget -= end - sg.off
		if _, whole := sg.l.reader().(*wholeReader); whole {
			// Its bytes come all at once: fetch them (once, the
			// attempt is shared), read nothing.
			plan = append(plan, replayPlan{l: sg.l, off: sg.off, n: end - sg.off, ranges: sg.all, kickOff: true})
			continue
		}
		for off, first := sg.off, true; off < end; off, first = off+replayPiece, false {
			rp := replayPlan{l: sg.l, off: off, n: min(replayPiece, end-off)}
			if first {
				rp.ranges = sg.all
			}
			plan = append(plan, rp)
		}
	}
	return plan, dropped
}

// profileSegment is ranges of a profile in one layer of the image,
// gathered (profileSegments).
type profileSegment struct {
	l         *layer
	layer     int // an index of l's digest in the profile's layers
	off, end  int64
	rank, all int // the profile's first range in it; how many it holds
}

// profileSegments gathers p's ranges into segments: ranges of one layer
// less than gap apart are one, each range cut at its layer's content end,
// and the segments are in the order of their first range. Ranges of layers
// the image lacks, or that keep (when set) rejects, or past a layer's end
// are dropped (counted).
func (im *Image) profileSegments(p *index.Profile, gap int64, keep func(*layer) bool) (merged []profileSegment, dropped int) {
	byDigest := im.layersByDigest()
	var segs []profileSegment
	for i, r := range p.Ranges {
		var l *layer
		if r.Layer >= 0 && r.Layer < len(p.Layers) {
			l = byDigest[p.Layers[r.Layer]]
		}
		if l == nil || keep != nil && !keep(l) {
			dropped++
			continue
		}
		end := min(r.Off+r.Len, l.contentSize())
		if r.Off >= end {
			dropped++
			continue
		}
		segs = append(segs, profileSegment{l: l, layer: r.Layer, off: r.Off, end: end, rank: i, all: 1})
	}
	// Gather: by layer and offset, then back in the profile's order.
	sort.Slice(segs, func(a, b int) bool {
		if segs[a].l.idx != segs[b].l.idx {
			return segs[a].l.idx < segs[b].l.idx
		}
		return segs[a].off < segs[b].off
	})
	for _, sg := range segs {
		if n := len(merged); n > 0 && merged[n-1].l == sg.l && sg.off <= merged[n-1].end+gap {
			m := &merged[n-1]
			m.end, m.rank, m.all = max(m.end, sg.end), min(m.rank, sg.rank), m.all+sg.all
			continue
		}
		merged = append(merged, sg)
	}
	sort.Slice(merged, func(a, b int) bool { return merged[a].rank < merged[b].rank })
	return merged, dropped
}

// layersByDigest returns the image's layers by digest.
func (im *Image) layersByDigest() map[digest.Digest]*layer {
	m := make(map[digest.Digest]*layer, len(im.layers))
	for _, l := range im.layers {
		m[l.desc.Digest] = l
	}
	return m
}

// contentSize is the size of the bytes the layer's reader serves: its tar,
// or its TOC's content for a chunked layer; 0 before load.
func (l *layer) contentSize() int64 {
	if c := l.chunks(); c != nil && c.toc != nil {
		return c.toc.ContentSize
	}
	if t := l.tbl(); t != nil {
		return t.TarSize
	}
	return 0
}

// replayParallel is how many replay reads run at once: half the Range
// requests the image may have in flight, so reads a program waits on
// always find some free.
func (im *Image) replayParallel() int { return max(1, im.opts.FetchParallel/2) }

// replayKey marks the context of a replay's reads (isReplay).
type replayKey struct{}

// isReplay reports whether ctx is that of a replay's read: it reads what
// the profile lists, and nothing ahead of it.
func isReplay(ctx context.Context) bool { return ctx.Value(replayKey{}) != nil }

// runReplay reads plan, replayParallel reads at a time, in order.
func (im *Image) runReplay(plan []replayPlan, st *replayState) {
	ctx := context.WithValue(im.ctx, replayKey{}, true)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range im.replayParallel() {
		wg.Go(func() {
			var buf []byte
			for {
				i := next.Add(1) - 1
				if i >= int64(len(plan)) || im.ctx.Err() != nil {
					return
				}
				r := plan[i]
				var err error
				var got int
				if r.frames != nil {
					if err = r.l.fetchFrames(ctx, r.pack, r.frames); err == nil {
						got = int(r.n)
					}
				} else if r.kickOff {
					r.l.urgent.Store(true)
					if err = r.l.ensure(im.ctx); err == nil {
						got = int(r.n)
					}
				} else {
					if int64(cap(buf)) < r.n {
						buf = make([]byte, replayPiece)
					}
					got, err = r.l.readAt(ctx, buf[:r.n], r.off, r.off+r.n)
				}
				st.mu.Lock()
				st.stats.Ranges += r.ranges
				st.stats.Bytes += int64(got)
				if err != nil && im.ctx.Err() == nil {
					st.stats.Failed++
					im.log.Debug("replaying the start-up profile: a read failed", "layer", r.l.desc.Digest, "off", r.off, "len", r.n, "err", err)
				}
				st.mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// WaitReplay waits for the replay Replay started to end, and returns what
// it did; without a Replay it returns at once with zero stats.
func (im *Image) WaitReplay(ctx context.Context) (ProfileStats, error) {
	st := im.replay.Load()
	if st == nil {
		return ProfileStats{}, nil
	}
	select {
	case <-st.done:
	case <-ctx.Done():
		return ProfileStats{}, ctx.Err()
	}
	return im.ProfileStats(), nil
}

// ProfileStats returns what the replay has done so far; nil without a
// Replay.
func (im *Image) ProfileStats() ProfileStats {
	st := im.replay.Load()
	if st == nil {
		return ProfileStats{}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.stats
}
