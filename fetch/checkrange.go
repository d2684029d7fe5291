package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CheckRange reads blob bytes [off, off+n) with one Range request (resumed
// after a connection error, as FetchRange does), or from the cached blob,
// and hands them to check, whose error it returns.
//
// It is for bytes whose digest the caller cannot know in advance but can
// verify from their content: an eStargz TOC checked against the digest of
// its decompressed JSON, a run of eStargz or zstd:chunked chunks each
// checked against the digest of its decompressed bytes. check must verify
// before it trusts or keeps anything derived from b; b is only valid during
// the call. When check rejects bytes a mirror sent with a *DigestError,
// they are read again from the next host and check runs again. This keeps the package's promise that every byte leaving it was
// checked against a digest the caller supplied: here the caller checks.
func (im *Image) CheckRange(ctx context.Context, desc ocispec.Descriptor, off, n int64, check func(b []byte) error) error {
	what := fmt.Sprintf("%s range %d+%d", im.blobWhat(desc.Digest), off, n)
	if err := checkDescriptor("blob", desc); err != nil {
		return err
	}
	if off < 0 || n < 0 || n > maxRangeSize || off > desc.Size-n {
		return fmt.Errorf("%s: outside the blob's %d bytes (or over %d)", what, desc.Size, maxRangeSize)
	}
	buf := make([]byte, n)
	for {
		var from []*endpoint
		_, cached, err := im.readRange(ctx, desc, off, buf, what, &from)
		if err != nil {
			return err
		}
		err = check(buf)
		// Bytes from a mirror that check rejects as not matching their
		// digest: ask the next host, and check again.
		if err == nil || cached || !im.elsewhere(ctx, desc.Digest, from, err) {
			return err
		}
	}
}

// maxKeptRange caps the bytes CheckRangeKept keeps for one range.
const maxKeptRange = 64 << 20

// CheckRangeKept is [Image.CheckRange] for bytes every load of the blob
// needs before it can serve (an eStargz or zstd:chunked TOC, its
// tar-split, the footer that locates them): once check has accepted them
// they are kept in the cache (kind [KindRange], behind a checksum header,
// keyed by the blob digest and the range), and the next call reads them
// from there and runs check on them again, so a load needs no registry
// for them. A kept copy that check rejects, or that is damaged, is
// removed and the bytes are fetched again.
func (im *Image) CheckRangeKept(ctx context.Context, desc ocispec.Descriptor, off, n int64, check func(b []byte) error) error {
	if err := checkDescriptor("blob", desc); err != nil {
		return err
	}
	key := rangeKey(desc.Digest, off, n)
	if b, ok := im.c.cache.readRange(key, n); ok {
		err := check(b)
		if err == nil {
			return nil
		}
		im.c.log.Warn("kept blob range rejected; removed, fetching it again", "digest", desc.Digest, "off", off, "len", n, "err", err)
		im.c.cache.Remove(KindRange, key)
	}
	var kept []byte
	err := im.CheckRange(ctx, desc, off, n, func(b []byte) error {
		if err := check(b); err != nil {
			return err
		}
		if n <= maxKeptRange {
			kept = bytes.Clone(b)
		}
		return nil
	})
	if err == nil && kept != nil && !im.c.cache.Has(desc.Digest) { // else read from the cached blob next time too
		if err := im.c.cache.writeChecked(KindRange, rangesDir, key, kept); err != nil {
			im.c.log.Warn("keeping a blob range in the cache", "digest", desc.Digest, "off", off, "len", n, "err", err)
		}
	}
	return err
}

// rangeKey is the cache key of bytes [off, off+n) of blob d.
func rangeKey(d digest.Digest, off, n int64) digest.Digest {
	h := sha256.New()
	fmt.Fprintf(h, "ocifs range v1\x00%s\x00%d\x00%d", d, off, n)
	return digest.NewDigest(digest.SHA256, h)
}

// readRange returns the kept range under key if it is there, intact and n
// bytes long; a damaged one is removed by openChecked.
func (c *Cache) readRange(key digest.Digest, n int64) ([]byte, bool) {
	f, r, err := c.openChecked(KindRange, rangesDir, key)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	if r.Size() != n {
		c.Remove(KindRange, key)
		return nil, false
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, false
	}
	return b, true
}
