package fetch

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"
)

// RangeRead is one read of a blob's byte range (FetchRange, CheckRange,
// the parts of FetchRanges), as [Options.ObserveRange] sees it.
type RangeRead struct {
	Digest digest.Digest
	// Bytes is the length of the range asked for.
	Bytes int64
	// Cached: answered from the cached blob; no request was sent.
	Cached bool
	// Duration runs from the first request to the last byte received,
	// resumptions after a connection error included; 0 when Cached.
	Duration time.Duration
	// Err is why the range could not be read (nil when it was; a digest
	// check after the read is not part of it).
	Err error
}

// observeRange reports r to the client's observer, if it has one.
func (c *Client) observeRange(r RangeRead) {
	if c.onRange != nil {
		c.onRange(r)
	}
}

// countKey is the context key of CountBytes.
type countKey struct{}

// CountBytes returns a context under which the blob body bytes a fetch
// receives from a registry or a layout (not from the cache) are also
// reported to count, as they arrive, whatever the reader of the blob does
// with them: a caller tells apart what it fetched for whom (fs counts layer
// bytes fetched for a reader, ahead of one, or in the background). Contexts
// derived from one inherit its count; a nested CountBytes replaces it.
func CountBytes(ctx context.Context, count func(n int64)) context.Context {
	return context.WithValue(ctx, countKey{}, count)
}

// countBytes reports n bytes received under ctx to its CountBytes, if any.
func countBytes(ctx context.Context, n int64) {
	if n <= 0 {
		return
	}
	if count, ok := ctx.Value(countKey{}).(func(int64)); ok {
		count(n)
	}
}
