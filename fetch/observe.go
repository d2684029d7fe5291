package fetch

import (
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
