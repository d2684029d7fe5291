package toc

import (
	"math"
	"path"
	"sort"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/index"
)

// Landmark is what an eStargz layer's builder said about prefetching.
type Landmark uint8

const (
	// LandmarkNone: the layer has no landmark file.
	LandmarkNone Landmark = iota
	// LandmarkPrefetch: ".prefetch.landmark" follows the files the builder
	// prioritised; prefetch blob bytes [0, Layer.PrefetchEnd) first.
	LandmarkPrefetch
	// LandmarkNoPrefetch: ".no.prefetch.landmark" says nothing was
	// prioritised.
	LandmarkNoPrefetch
)

// String names the landmark for logs.
func (l Landmark) String() string {
	switch l {
	case LandmarkPrefetch:
		return "prefetch"
	case LandmarkNoPrefetch:
		return "no-prefetch"
	}
	return "none"
}

// Layer is the parsed TOC of one lazy layer. It is immutable once returned,
// so readers share it without locks.
//
// File content is addressed by a virtual offset: the position in the
// concatenation of all regular files' contents in TOC order (the files of
// Entries with TypeReg, each at its Entry.Offset). Chunks tile the virtual
// stream [0, ContentSize) without gaps.
type Layer struct {
	Format string // FormatEstargz or FormatZstdChunked
	Layout Layout

	// Entries are the tree entries in TOC order, under the rules of
	// [index.Entry]: names cleaned, whiteouts and opaque markers as their
	// own types, hardlink targets cleaned, symlink targets byte for byte.
	// A TypeReg entry's Offset is its virtual offset. The TOC's own entry,
	// landmark files and aufs metadata are not entries.
	Entries []index.Entry
	// Chunks are sorted by U, and by C (equal C only for chunks sharing an
	// eStargz gzip member, with increasing InnerOffset).
	Chunks []Chunk
	// ContentSize is the sum of the regular files' sizes.
	ContentSize int64

	// Landmark, PrefetchEnd and PrefetchU say what to prefetch first:
	// with LandmarkPrefetch, blob bytes [0, PrefetchEnd), which hold the
	// chunks with U < PrefetchU; zero otherwise.
	Landmark    Landmark
	PrefetchEnd int64
	PrefetchU   int64

	// TOCDigest is the sha256 of the TOC JSON as read.
	TOCDigest digest.Digest
	// TarSplitDigest is the digest of the layer's compressed tar-split
	// data, when the TOC names one (containers/storage's tarSplitDigest):
	// it binds the tar-split to the TOC, as the TOC is bound to the
	// manifest. See [ApplyTarSplit].
	TarSplitDigest digest.Digest
}

// Chunk is a piece of file content that can be fetched and decoded alone:
// the virtual bytes [U, U+Size) are bytes [InnerOffset, InnerOffset+Size)
// of what blob bytes [C, CEnd) decompress to. Digest is the sha256 of those
// Size bytes, from the TOC, which the layer annotations bind to the
// manifest; [DecodeChunk] checks it.
type Chunk struct {
	U           int64 // virtual offset of the chunk's first byte
	Size        int64 // uncompressed bytes, > 0
	C           int64 // blob offset of the gzip member or zstd frame
	CEnd        int64 // blob offset just past what the chunk needs
	InnerOffset int64 // bytes to skip after decompressing from C
	Digest      digest.Digest
}

// ChunkFor returns the index of the chunk holding virtual offset off, or
// -1 when off is outside [0, ContentSize).
func (l *Layer) ChunkFor(off int64) int {
	if off < 0 || off >= l.ContentSize {
		return -1
	}
	i := sort.Search(len(l.Chunks), func(i int) bool { return l.Chunks[i].U > off }) - 1
	if i < 0 || off >= l.Chunks[i].U+l.Chunks[i].Size {
		return -1
	}
	return i
}

// parser builds a Layer from TOC entries as they are decoded.
type parser struct {
	loc   Location
	opts  Options
	count int // TOC entries seen

	entries []index.Entry
	pending []pendingChunk // every data chunk, kept or not, in TOC order
	cur     *fileRec       // the regular file chunk entries extend
	u       int64          // virtual offset of the next kept file

	landmark    Landmark
	prefetchEnd int64
	prefetchU   int64

	tarSplitDigest digest.Digest
}

// fileRec is a regular file with content whose chunk entries are being
// collected.
type fileRec struct {
	name      string // as in the TOC, for messages
	clean     string
	entry     int // index in entries, -1 when the content is not served
	size      int64
	digest    digest.Digest
	endOffset int64
	chunks    []jsonEntry
}

// pendingChunk is a chunk before its compressed end is known.
type pendingChunk struct {
	Chunk
	keep      bool
	endOffset int64 // containers/storage endOffset of the file's last frame, or 0
}

// add takes one TOC entry.
func (p *parser) add(je *jsonEntry) error {
	if je.Type == "chunk" {
		if p.cur == nil {
			return entryErrorf(je.Name, "chunk entry follows no regular file with content")
		}
		if je.Name != "" && je.Name != p.cur.name && path.Clean("/"+je.Name) != "/"+p.cur.clean {
			return entryErrorf(je.Name, "chunk entry of another file than %q", shortName(p.cur.name))
		}
		p.cur.chunks = append(p.cur.chunks, jsonEntry{
			Offset: je.Offset, InnerOffset: je.InnerOffset,
			ChunkOffset: je.ChunkOffset, ChunkSize: je.ChunkSize, ChunkDigest: je.ChunkDigest,
		})
		return nil
	}
	if err := p.closeFile(); err != nil {
		return err
	}
	e, keep, err := p.entry(je)
	if err != nil {
		return err
	}
	isReg := je.Type == "reg"
	if isReg && (je.Size < 0 || je.Size > math.MaxInt64/2) {
		return entryErrorf(je.Name, "size %d", je.Size)
	}
	serve := keep && e.Type == index.TypeReg
	if keep && p.loc.Layout.estargz() && isReg {
		switch e.Name {
		case prefetchLandmark, noPrefetchLandmark:
			if je.Offset < 0 || je.Offset > p.loc.PayloadEnd {
				return entryErrorf(je.Name, "landmark offset %d outside the %d-byte payload", je.Offset, p.loc.PayloadEnd)
			}
			if e.Name == noPrefetchLandmark {
				p.landmark, p.prefetchEnd, p.prefetchU = LandmarkNoPrefetch, 0, 0
			} else if p.landmark == LandmarkNone {
				p.landmark, p.prefetchEnd, p.prefetchU = LandmarkPrefetch, je.Offset, p.u
			}
			keep, serve = false, false
		case tocTarName:
			keep, serve = false, false
		}
	}
	idx := -1
	if keep {
		if serve {
			// Empty files sit where the next content would start, so every
			// file lies inside [0, ContentSize).
			e.Offset = p.u
			idx = len(p.entries)
		}
		p.entries = append(p.entries, e)
	}
	if isReg && je.Size > 0 {
		d, err := chunkDigest(je.Name, je.Digest)
		if err != nil {
			return err
		}
		p.cur = &fileRec{
			name: je.Name, clean: path.Clean("/" + je.Name)[1:], entry: idx,
			size: je.Size, digest: d, endOffset: je.EndOffset,
			chunks: []jsonEntry{{
				Offset: je.Offset, InnerOffset: je.InnerOffset,
				ChunkOffset: je.ChunkOffset, ChunkSize: je.ChunkSize, ChunkDigest: je.ChunkDigest,
			}},
		}
	}
	return nil
}

// closeFile checks that the current file's chunks tile its content and
// queues them.
func (p *parser) closeFile() error {
	f := p.cur
	if f == nil {
		return nil
	}
	p.cur = nil
	var next int64 // content offset the next chunk must start at
	for i, c := range f.chunks {
		if c.ChunkOffset != next {
			return entryErrorf(f.name, "chunk %d starts at %d, want %d", i, c.ChunkOffset, next)
		}
		size := c.ChunkSize
		if size == 0 {
			size = f.size - c.ChunkOffset // zero means "to the end of the file"
		}
		if size <= 0 || size > f.size-c.ChunkOffset {
			return entryErrorf(f.name, "chunk %d: %d+%d outside the %d-byte file", i, c.ChunkOffset, c.ChunkSize, f.size)
		}
		if size > p.opts.MaxChunkSize || c.InnerOffset < 0 || c.InnerOffset > p.opts.MaxChunkSize-size {
			return entryErrorf(f.name, "chunk %d: %d bytes at inner offset %d, more than %d; set Options.MaxChunkSize to raise the cap",
				i, size, c.InnerOffset, p.opts.MaxChunkSize)
		}
		if c.Offset < 0 || c.Offset >= p.loc.PayloadEnd {
			return entryErrorf(f.name, "chunk %d: blob offset %d outside the %d-byte payload", i, c.Offset, p.loc.PayloadEnd)
		}
		d, err := chunkDigest(f.name, c.ChunkDigest)
		if err != nil {
			return err
		}
		if d == "" {
			if len(f.chunks) != 1 || f.digest == "" {
				return entryErrorf(f.name, "chunk %d has no digest", i)
			}
			d = f.digest // a single chunk is the whole file
		}
		if n := len(p.pending); n > 0 {
			prev := &p.pending[n-1]
			if c.Offset < prev.C || (c.Offset == prev.C && c.InnerOffset < prev.InnerOffset+prev.Size) {
				return entryErrorf(f.name, "chunk %d at blob offset %d+%d overlaps or precedes the chunk at %d+%d",
					i, c.Offset, c.InnerOffset, prev.C, prev.InnerOffset)
			}
		}
		pc := pendingChunk{
			Chunk: Chunk{U: p.u + c.ChunkOffset, Size: size, C: c.Offset, InnerOffset: c.InnerOffset, Digest: d},
			keep:  f.entry >= 0,
		}
		if i == len(f.chunks)-1 {
			pc.endOffset = f.endOffset
		}
		p.pending = append(p.pending, pc)
		next += size
	}
	if next != f.size {
		return entryErrorf(f.name, "chunks cover %d of %d bytes", next, f.size)
	}
	if f.entry >= 0 {
		p.entries[f.entry].Offset = p.u
		p.u += f.size
	}
	return nil
}

// finish closes the last file, works out where each chunk ends in the blob
// and returns the layer.
func (p *parser) finish() (*Layer, error) {
	if err := p.closeFile(); err != nil {
		return nil, err
	}
	// A chunk's member or frame ends where the next one at a greater offset
	// begins, or where the payload ends.
	ends := make([]int64, len(p.pending))
	next := p.loc.PayloadEnd
	for i := len(p.pending) - 1; i >= 0; i-- {
		if i+1 < len(p.pending) && p.pending[i+1].C > p.pending[i].C {
			next = p.pending[i+1].C
		}
		ends[i] = next
	}
	l := &Layer{
		Format:      p.loc.Layout.Format(),
		Layout:      p.loc.Layout,
		Entries:     p.entries,
		ContentSize: p.u,
		Landmark:    p.landmark,
		PrefetchEnd: p.prefetchEnd,
		PrefetchU:   p.prefetchU,

		TarSplitDigest: p.tarSplitDigest,
	}
	for i, pc := range p.pending {
		end := ends[i]
		if pc.endOffset != 0 {
			// containers/storage records where the file's last frame ends;
			// the following frames hold tar headers, not content.
			if pc.endOffset <= pc.C || pc.endOffset > end {
				return nil, formatErrorf("chunk at blob offset %d: end offset %d outside (%d, %d]", pc.C, pc.endOffset, pc.C, end)
			}
			end = pc.endOffset
		}
		if end-pc.C > p.opts.MaxChunkSize {
			return nil, formatErrorf("chunk at blob offset %d spans %d compressed bytes, more than %d; set Options.MaxChunkSize to raise the cap",
				pc.C, end-pc.C, p.opts.MaxChunkSize)
		}
		if !pc.keep {
			continue
		}
		c := pc.Chunk
		c.CEnd = end
		l.Chunks = append(l.Chunks, c)
	}
	return l, nil
}

func newParser(loc Location, opts Options) *parser {
	return &parser{loc: loc, opts: opts}
}
