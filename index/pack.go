package index

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// A profile's pack: the bytes a recorded start-up read, compressed again
// apart from their layers, so that a mount fetches what the program will
// read and nothing around it. A layer's own compressed stream can only be
// entered at a deflate block end with a 32 KiB window, and is verified a
// span at a time; reads scattered over a layer therefore fetch whole spans,
// about twice the compressed bytes they need. The pack holds the ranges
// themselves, in frames: each frame is one zstd frame of one range of one
// layer's bytes (the offsets its reader serves), at most MaxPackFrame of
// them, and the frames lie back to back in the pack blob in the order the
// start-up first needed them.
//
// The pack is a blob of the profile's artifact. The profile names it by
// digest and size, and each frame by its stored length and the sha256 of
// its stored bytes, so that every frame is checked before it is decoded.
// Its bytes are trusted as the profile's author saw the layer, as an index
// from a registry is: a mount re-checks every frame it used against the
// layer's verified bytes once the layer is complete.
//
// Encoding: a profile with a pack has version 2: version 1's body, then
//
//	pack digest          32 bytes (sha256)
//	pack size            the blob's length: the sum of the frames' stored lengths
//	frames               count, then per frame: layer (index into layers),
//	                     off, len (0 < len <= MaxPackFrame), stored length
//	                     (0 < stored <= MaxPackStored(len)), sha256 (32 bytes)
//
// Frames of one layer do not overlap; their lengths sum to at most
// MaxPackBytes.
const (
	profileVersionPack = 2

	// MaxPackFrame caps the uncompressed bytes of one frame: a read
	// waits for its whole frame.
	MaxPackFrame = 1 << 20
	// MaxPackFrames caps the frames of one pack.
	MaxPackFrames = 1 << 16
	// MaxPackBytes caps the uncompressed bytes of all the frames.
	MaxPackBytes = 1 << 30
	// minFrameLen is the fewest bytes a frame's record takes.
	minFrameLen = 4 + sha256.Size
)

// isSHA256 reports whether d is a well-formed sha256 digest (hexDigest
// needs one: go-digest panics on a digest without an algorithm).
func isSHA256(d digest.Digest) bool {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return false
	}
	_, ok := hexDigest(d)
	return ok
}

// MaxPackStored caps the stored length of a frame of n bytes: zstd's
// worst case for incompressible input, with room to spare.
func MaxPackStored(n int64) int64 { return n + n>>7 + 1024 }

// ProfilePack is the pack of a profile.
type ProfilePack struct {
	Digest digest.Digest // sha256 of the pack blob
	Size   int64         // its length
	Frames []PackFrame   // in the blob's order
}

// PackFrame is one frame of a pack: bytes [Off, Off+Len) of a layer,
// stored as Stored bytes whose sha256 is Digest.
type PackFrame struct {
	Layer  int // index into Profile.Layers
	Off    int64
	Len    int64
	Stored int64
	Digest digest.Digest
}

// Offsets returns where each frame's stored bytes start in the pack blob.
func (pk *ProfilePack) Offsets() []int64 {
	offs := make([]int64, len(pk.Frames))
	var at int64
	for i, f := range pk.Frames {
		offs[i] = at
		at += f.Stored
	}
	return offs
}

// check reports the first way pk breaks the invariants the encoding
// keeps, for a profile of layers layers.
func (pk *ProfilePack) check(layers int) error {
	if !isSHA256(pk.Digest) {
		return fmt.Errorf("pack digest %.100q is not a sha256 digest", pk.Digest)
	}
	if len(pk.Frames) > MaxPackFrames {
		return fmt.Errorf("%d pack frames, at most %d", len(pk.Frames), MaxPackFrames)
	}
	var stored, total int64
	for i, f := range pk.Frames {
		switch {
		case f.Layer < 0 || f.Layer >= layers:
			return fmt.Errorf("pack frame %d: layer %d of %d", i, f.Layer, layers)
		case f.Off < 0 || f.Len <= 0 || f.Len > MaxPackFrame || f.Off > MaxProfileOffset-f.Len:
			return fmt.Errorf("pack frame %d: %d+%d is not a frame below 2^50 of at most %d bytes", i, f.Off, f.Len, MaxPackFrame)
		case f.Stored <= 0 || f.Stored > MaxPackStored(f.Len):
			return fmt.Errorf("pack frame %d: %d bytes stored for %d", i, f.Stored, f.Len)
		}
		if !isSHA256(f.Digest) {
			return fmt.Errorf("pack frame %d: digest %.100q is not a sha256 digest", i, f.Digest)
		}
		stored += f.Stored
		total += f.Len
		if total > MaxPackBytes {
			return fmt.Errorf("pack frames hold more than %d bytes", MaxPackBytes)
		}
	}
	if stored != pk.Size {
		return fmt.Errorf("pack frames take %d bytes, the pack has %d", stored, pk.Size)
	}
	byPlace := make([]int, len(pk.Frames))
	for i := range byPlace {
		byPlace[i] = i
	}
	sort.Slice(byPlace, func(a, b int) bool {
		fa, fb := pk.Frames[byPlace[a]], pk.Frames[byPlace[b]]
		return fa.Layer < fb.Layer || fa.Layer == fb.Layer && fa.Off < fb.Off
	})
	for k := 1; k < len(byPlace); k++ {
		prev, f := pk.Frames[byPlace[k-1]], pk.Frames[byPlace[k]]
		if prev.Layer == f.Layer && prev.Off+prev.Len > f.Off {
			return fmt.Errorf("pack frames %d and %d overlap in layer %d", byPlace[k-1], byPlace[k], f.Layer)
		}
	}
	return nil
}

func (pk *ProfilePack) append(buf []byte) []byte {
	sum, _ := hexDigest(pk.Digest)
	buf = append(buf, sum[:]...)
	buf = binary.AppendUvarint(buf, uint64(pk.Size))
	buf = binary.AppendUvarint(buf, uint64(len(pk.Frames)))
	for _, f := range pk.Frames {
		buf = binary.AppendUvarint(buf, uint64(f.Layer))
		buf = binary.AppendUvarint(buf, uint64(f.Off))
		buf = binary.AppendUvarint(buf, uint64(f.Len))
		buf = binary.AppendUvarint(buf, uint64(f.Stored))
		sum, _ := hexDigest(f.Digest)
		buf = append(buf, sum[:]...)
	}
	return buf
}

// decodePack reads a pack section for a profile of layers layers.
func decodePack(d *profileDecoder, layers int) (*ProfilePack, error) {
	pk := &ProfilePack{}
	sum := d.bytes(sha256.Size)
	pk.Digest = digest.NewDigestFromBytes(digest.SHA256, []byte(sum))
	size := d.uvarint()
	n := d.count("pack frames", MaxPackFrames, minFrameLen)
	if d.err != nil {
		return nil, d.err
	}
	if size > MaxPackBytes*2 {
		return nil, formatErrorf("profile: a pack of %d bytes", size)
	}
	pk.Size = int64(size)
	pk.Frames = make([]PackFrame, 0, n)
	for i := 0; i < n; i++ {
		l, off, ln, stored := d.uvarint(), d.uvarint(), d.uvarint(), d.uvarint()
		fs := d.bytes(sha256.Size)
		if d.err != nil {
			return nil, d.err
		}
		if l >= uint64(layers) || off > MaxProfileOffset || ln > MaxPackFrame || stored > 2*MaxPackFrame {
			return nil, formatErrorf("profile: pack frame %d: layer %d, %d+%d, %d stored", i, l, off, ln, stored)
		}
		pk.Frames = append(pk.Frames, PackFrame{Layer: int(l), Off: int64(off), Len: int64(ln), Stored: int64(stored),
			Digest: digest.NewDigestFromBytes(digest.SHA256, []byte(fs))})
	}
	if err := pk.check(layers); err != nil {
		return nil, formatErrorf("profile: %v", err)
	}
	return pk, nil
}

// EncodePackFrame compresses one frame's bytes as a pack stores them.
func EncodePackFrame(b []byte) ([]byte, error) {
	if len(b) == 0 || len(b) > MaxPackFrame {
		return nil, fmt.Errorf("pack frame of %d bytes: 1 to %d", len(b), MaxPackFrame)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(packWindow(len(b))))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	out := enc.EncodeAll(b, nil)
	if int64(len(out)) > MaxPackStored(int64(len(b))) {
		return nil, fmt.Errorf("pack frame of %d bytes compressed to %d", len(b), len(out))
	}
	return out, nil
}

// packWindow is the zstd window for a frame of n bytes: the smallest
// power of two that holds it (zstd's minimum is 1 KiB).
func packWindow(n int) int {
	w := zstd.MinWindowSize
	for w < n {
		w <<= 1
	}
	return w
}

// DecodePackFrame decompresses a frame's stored bytes (already checked
// against its digest), which must give exactly n bytes. Errors wrap
// [ErrFormat].
func DecodePackFrame(stored []byte, n int64) ([]byte, error) {
	if n <= 0 || n > MaxPackFrame {
		return nil, formatErrorf("pack frame of %d bytes", n)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(max(n, zstd.MinWindowSize))),
		zstd.WithDecoderMaxWindow(MaxPackFrame), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	out, err := dec.DecodeAll(stored, make([]byte, 0, n))
	if err != nil {
		return nil, formatErrorf("pack frame: %v", err)
	}
	if int64(len(out)) != n {
		return nil, formatErrorf("pack frame decodes to %d bytes, not %d", len(out), n)
	}
	return out, nil
}
