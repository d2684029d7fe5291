package toc

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// pooledMaxWindow is the largest zstd window a pooled decoder accepts. Real
// writers use windows of at most 8 MiB (or a frame's content size); a chunk
// needing more gets a decoder of its own, capped at what it needs.
const pooledMaxWindow = 64 << 20

var (
	gzipReaders  sync.Pool // *gzip.Reader
	zstdDecoders sync.Pool // *zstd.Decoder with pooledMaxWindow
)

// DecodeChunk decompresses one chunk from compressed, the blob bytes
// [c.C, c.CEnd), and returns exactly its c.Size bytes once their sha256 is
// c.Digest. format is the [Layer]'s Format. On a mismatch it returns a
// [*DigestError] and no bytes: DecodeChunk never returns unverified data.
// Malformed compressed bytes give an [index.ErrFormat] error. It is safe for
// concurrent use.
func DecodeChunk(format string, c Chunk, compressed []byte) ([]byte, error) {
	if int64(len(compressed)) != c.CEnd-c.C {
		return nil, fmt.Errorf("decoding chunk %d-%d: given %d bytes", c.C, c.CEnd, len(compressed))
	}
	if c.Size <= 0 || c.InnerOffset < 0 {
		return nil, fmt.Errorf("decoding chunk %d-%d: size %d, inner offset %d", c.C, c.CEnd, c.Size, c.InnerOffset)
	}
	alg := c.Digest.Algorithm()
	if err := c.Digest.Validate(); err != nil || !alg.Available() {
		return nil, fmt.Errorf("decoding chunk %d-%d: digest %q: %v", c.C, c.CEnd, c.Digest, err)
	}
	out := make([]byte, c.Size)
	var err error
	switch format {
	case FormatEstargz:
		err = gunzipChunk(out, c, compressed)
	case FormatZstdChunked:
		err = unzstdChunk(out, c, compressed)
	default:
		return nil, fmt.Errorf("decoding chunk %d-%d: unknown format %q", c.C, c.CEnd, format)
	}
	if err != nil {
		return nil, formatErrorf("chunk at blob offset %d: %v", c.C, err)
	}
	if got := alg.FromBytes(out); got != c.Digest {
		return nil, &DigestError{What: "chunk", Off: c.C, Want: c.Digest, Got: got}
	}
	return out, nil
}

// gunzipChunk fills out from the gzip member at the start of compressed.
func gunzipChunk(out []byte, c Chunk, compressed []byte) error {
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(bytes.NewReader(compressed))
	} else {
		err = zr.Reset(bytes.NewReader(compressed))
	}
	if err != nil {
		return err
	}
	defer gzipReaders.Put(zr)
	zr.Multistream(false)
	return readChunk(zr, out, c.InnerOffset)
}

// unzstdChunk fills out from the zstd frame at the start of compressed.
func unzstdChunk(out []byte, c Chunk, compressed []byte) error {
	need := c.InnerOffset + c.Size
	if need > pooledMaxWindow {
		dec, err := zstd.NewReader(bytes.NewReader(compressed),
			zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(uint64(need)))
		if err != nil {
			return err
		}
		defer dec.Close()
		return readChunk(dec, out, c.InnerOffset)
	}
	dec, _ := zstdDecoders.Get().(*zstd.Decoder)
	var err error
	if dec == nil {
		dec, err = zstd.NewReader(bytes.NewReader(compressed),
			zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(pooledMaxWindow))
	} else {
		err = dec.Reset(bytes.NewReader(compressed))
	}
	if err != nil {
		if dec != nil {
			dec.Close()
		}
		return err
	}
	err = readChunk(dec, out, c.InnerOffset)
	// Drop the reference to compressed before pooling.
	if rerr := dec.Reset(nil); rerr != nil {
		dec.Close()
		return err
	}
	zstdDecoders.Put(dec)
	return err
}

// readChunk skips inner bytes of r, then fills out.
func readChunk(r io.Reader, out []byte, inner int64) error {
	if n, err := io.CopyN(io.Discard, r, inner); err != nil {
		return fmt.Errorf("skipping %d inner bytes: got %d: %w", inner, n, noEOF(err))
	}
	if n, err := io.ReadFull(r, out); err != nil {
		return fmt.Errorf("reading %d bytes: got %d: %w", len(out), n, noEOF(err))
	}
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
