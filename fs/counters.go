package fs

import (
	"context"
	"sync/atomic"

	"github.com/ocifs/ocifs/fetch"
)

// The counters behind [Stats] that say how a mount is doing rather than
// what it did in total: cache hits and misses by kind of piece, layer bytes
// fetched by whom they were fetched for, fallbacks by reason, and the
// background work under way. They are plain atomics, bumped on the read
// path and read by Stats (and so by fs/metrics at scrape time). Every set
// of labels is a fixed, small list: nothing names a file or an image.

// Cache kinds of [Stats.Cache]: what a read found, or had to fetch.
const (
	CacheSpan  = "span"  // a span of an ocifs index (gzip or plain tar layers)
	CacheChunk = "chunk" // a chunk of an eStargz or zstd:chunked TOC
	CacheFile  = "file"  // a file extracted from a verified layer (hits only)
	CacheWhole = "whole" // a layer served whole: a miss is a read that waits for the whole layer
)

// cacheKind indexes imageCounts.hits and misses.
type cacheKind int

const (
	kindSpan cacheKind = iota
	kindChunk
	kindFile
	kindWhole
	numCacheKinds
)

var cacheKindNames = [numCacheKinds]string{CacheSpan, CacheChunk, CacheFile, CacheWhole}

// pieceKind is the cache kind of the pieces of s.
func pieceKind(s pieceSet) cacheKind {
	if _, ok := s.(chunkSet); ok {
		return kindChunk
	}
	return kindSpan
}

// Purposes of [Stats.FetchedFor]: why layer bytes were fetched.
const (
	// FetchReader: bytes something waits on: a read's spans or chunks, a
	// whole layer a read waits for, the stream of a layer the mount
	// waits for (no index anywhere).
	FetchReader = "reader"
	// FetchReadAhead: spans fetched ahead of a sequential reader.
	FetchReadAhead = "read_ahead"
	// FetchBackground: prefetch: the rest of a layer fetched in the
	// background (paced, yielding to readers), a TOC's landmark chunks.
	FetchBackground = "background"
)

type purpose int

const (
	forReader purpose = iota
	forReadAhead
	forBackground
	numPurposes
)

var purposeNames = [numPurposes]string{FetchReader, FetchReadAhead, FetchBackground}

// Fallback reasons of [Stats.Fallbacks]: a layer served in a way other
// than its plan promised, or not served at all. Each is one Warn or Error
// line in the log too, which names the layer.
const (
	// FallbackRemoteIndex: the registry's index artifact was unusable;
	// the layer was streamed and indexed instead.
	FallbackRemoteIndex = "remote_index_unusable"
	// FallbackCachedIndex: the local index cache's index was unusable;
	// the layer was planned again (streamed and indexed).
	FallbackCachedIndex = "cached_index_unusable"
	// FallbackTOCUnusable: a layer claims eStargz or zstd:chunked but its
	// TOC cannot be located or read; streamed or fetched whole instead.
	FallbackTOCUnusable = "toc_unusable"
	// FallbackTOCUnverified: a TOC no digest annotation binds to the
	// manifest was refused (no --insecure-lazy); streamed or fetched whole.
	FallbackTOCUnverified = "toc_unverified"
	// FallbackTOCNames: a TOC that cannot give the layer's names exactly
	// was not used; streamed or fetched whole.
	FallbackTOCNames = "toc_inexact_names"
	// FallbackDisagree: a TOC or a registry's index disagreed with the
	// layer's verified bytes; what it got wrong is refused, the rest is
	// served from the verified bytes.
	FallbackDisagree = "table_disagrees"
	// FallbackQuarantine: the layer's bytes failed verification; every
	// read of it is EIO.
	FallbackQuarantine = "quarantine"
	// FallbackNotCached: a layer fetched and verified whole did not fit in
	// the cache; its reads fetch and verify spans instead.
	FallbackNotCached = "not_cached"
	// FallbackNotExtracted: a verified layer's files could not be
	// extracted into the cache; reads decode its spans (no passthrough).
	FallbackNotExtracted = "not_extracted"
)

type fallback int

const (
	fbRemoteIndex fallback = iota
	fbCachedIndex
	fbTOCUnusable
	fbTOCUnverified
	fbTOCNames
	fbDisagree
	fbQuarantine
	fbNotCached
	fbNotExtracted
	numFallbacks
)

var fallbackNames = [numFallbacks]string{FallbackRemoteIndex, FallbackCachedIndex, FallbackTOCUnusable,
	FallbackTOCUnverified, FallbackTOCNames, FallbackDisagree, FallbackQuarantine, FallbackNotCached, FallbackNotExtracted}

// FallbackReasons lists every reason [Stats.Fallbacks] may count.
func FallbackReasons() []string { return append([]string(nil), fallbackNames[:]...) }

// imageCounts are an image's counters by kind, purpose and reason.
type imageCounts struct {
	hits, misses [numCacheKinds]atomic.Int64
	fetched      [numPurposes]atomic.Int64
	fallbacks    [numFallbacks]atomic.Int64
	streams      atomic.Int64 // whole-layer fetches in flight (fill)
}

func (im *Image) hit(k cacheKind)               { im.counts.hits[k].Add(1) }
func (im *Image) miss(k cacheKind)              { im.counts.misses[k].Add(1) }
func (im *Image) fellBack(r fallback)           { im.counts.fallbacks[r].Add(1) }
func (im *Image) fetchedFor(p purpose, n int64) { im.counts.fetched[p].Add(n) }

// countFetched returns ctx with the layer bytes received under it counted
// for p (fetch.CountBytes).
func (im *Image) countFetched(ctx context.Context, p purpose) context.Context {
	return fetch.CountBytes(ctx, func(n int64) { im.fetchedFor(p, n) })
}

// countStream returns ctx with the layer bytes received under it counted
// for a reader while l is urgent (a reader waits for the whole layer) and
// for the background otherwise, or, unpaced (nobody asked the stream to
// yield: a load the mount waits for), for a reader.
func (l *layer) countStream(ctx context.Context, paced bool) context.Context {
	return fetch.CountBytes(ctx, func(n int64) {
		p := forReader
		if paced && !l.urgent.Load() {
			p = forBackground
		}
		l.im.fetchedFor(p, n)
	})
}

// CacheCount is the hits and misses of one kind of piece.
type CacheCount struct {
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
}

// BackgroundStats is the background work of an image under way now.
type BackgroundStats struct {
	// Streams: whole-layer fetches running (prefetch, or a read waiting
	// for a whole layer); each yields to readers unless one waits for it.
	Streams int64 `json:"streams"`
	// ReadAhead: read-ahead runs being fetched.
	ReadAhead int64 `json:"read_ahead"`
	// CacheWrites: runs of fetched spans being written to the disk
	// cache, or waiting to be.
	CacheWrites int64 `json:"cache_writes"`
}

// fillStats sets the counters of s.
func (im *Image) fillStats(s *Stats) {
	c := &im.counts
	s.Cache = map[string]CacheCount{}
	for k := range numCacheKinds {
		h, m := c.hits[k].Load(), c.misses[k].Load()
		s.CacheHits += h
		s.CacheMisses += m
		s.Cache[cacheKindNames[k]] = CacheCount{Hits: h, Misses: m}
	}
	s.FetchedFor = map[string]int64{}
	for p := range numPurposes {
		s.FetchedFor[purposeNames[p]] = c.fetched[p].Load()
	}
	s.Fallbacks = map[string]int64{}
	for r := range numFallbacks {
		if n := c.fallbacks[r].Load(); n > 0 {
			s.Fallbacks[fallbackNames[r]] = n
		}
	}
	im.ahead.mu.Lock()
	ra := im.ahead.inflight
	im.ahead.mu.Unlock()
	s.Background = BackgroundStats{Streams: c.streams.Load(), ReadAhead: int64(ra), CacheWrites: int64(len(im.keeping))}
}
