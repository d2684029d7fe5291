package fetch

import (
	"context"
	"fmt"

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
