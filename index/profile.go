package index

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/opencontainers/go-digest"
)

// A start-up profile: what a workload read of an image in its first
// seconds, as ranges of its layers' uncompressed bytes in first-access
// order. A mount replays it by reading those ranges before the program
// asks. A profile without a pack only orders and prefetches: it never
// changes what is served, and a hostile one can only make a mount read
// (verified) bytes it did not need, within the caps below. One with a pack
// (pack.go) also carries those bytes, trusted as an index from a registry
// is, until the layer's own verified bytes are in hand.
//
// Encoding (all integers unsigned varints unless said otherwise):
//
//	"OCIFSPRF"           magic, 8 bytes
//	version              2 bytes big endian: 1, or 2 with a pack (pack.go)
//	layers               count, then per layer its digest string (length, bytes)
//	ranges               count, then per range: layer (index into layers),
//	                     off, len (len > 0, off+len <= MaxProfileOffset)
//
// Nothing may follow the last range (or the pack section). The encoding is canonical: equal
// profiles encode to equal bytes.
const (
	profileMagic   = "OCIFSPRF"
	profileVersion = 1

	// MaxProfileLayers caps the layers a profile may name (an image has
	// at most 127 on overlayfs; 1024 leaves room).
	MaxProfileLayers = 1024
	// MaxProfileRanges caps the ranges of one profile. A start-up that
	// reads more distinct places than this is recorded up to the cap.
	MaxProfileRanges = 1 << 16
	// MaxProfileOffset caps the end of a range: no layer is near 2^50
	// bytes (1 PiB), and sums of many ranges cannot overflow.
	MaxProfileOffset = 1 << 50
	// MaxProfileSize caps an encoded profile: MaxProfileRanges ranges of
	// at most 3*8 varint bytes and the layers' digests fit in it.
	MaxProfileSize = 4 << 20
)

// Profile is a recorded start-up: the layers it read (by digest) and the
// ranges it read of them, in the order they were first read.
type Profile struct {
	Layers []digest.Digest
	Ranges []ProfileRange
	Pack   *ProfilePack // the ranges' bytes, in the pack blob beside the profile (pack.go); nil for none
}

// ProfileRange is one range of a layer's uncompressed bytes (the offsets
// its reader serves: the tar of a gzip or plain layer, the content of an
// eStargz or zstd:chunked one).
type ProfileRange struct {
	Layer int   // index into Profile.Layers
	Off   int64 // first byte
	Len   int64 // bytes, > 0
}

// Bytes returns the sum of the ranges' lengths.
func (p *Profile) Bytes() int64 {
	var n int64
	for _, r := range p.Ranges {
		n += r.Len
	}
	return n
}

// check reports the first way p breaks the invariants the encoding keeps.
func (p *Profile) check() error {
	if len(p.Layers) > MaxProfileLayers {
		return fmt.Errorf("%d layers, at most %d", len(p.Layers), MaxProfileLayers)
	}
	for i, d := range p.Layers {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("layer %d: digest %.100q: %v", i, d, err)
		}
	}
	if len(p.Ranges) > MaxProfileRanges {
		return fmt.Errorf("%d ranges, at most %d", len(p.Ranges), MaxProfileRanges)
	}
	for i, r := range p.Ranges {
		if r.Layer < 0 || r.Layer >= len(p.Layers) {
			return fmt.Errorf("range %d: layer %d of %d", i, r.Layer, len(p.Layers))
		}
		if r.Off < 0 || r.Len <= 0 || r.Off > MaxProfileOffset || r.Len > MaxProfileOffset-r.Off {
			return fmt.Errorf("range %d: %d+%d is not a range below 2^50", i, r.Off, r.Len)
		}
	}
	if p.Pack != nil {
		return p.Pack.check(len(p.Layers))
	}
	return nil
}

// MarshalBinary encodes p; a profile that breaks the caps or names a layer
// it does not list is refused.
func (p *Profile) MarshalBinary() ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	buf := make([]byte, 0, 16+len(p.Layers)*80+len(p.Ranges)*8)
	buf = append(buf, profileMagic...)
	version := uint16(profileVersion)
	if p.Pack != nil {
		version = profileVersionPack
	}
	buf = binary.BigEndian.AppendUint16(buf, version)
	buf = binary.AppendUvarint(buf, uint64(len(p.Layers)))
	for _, d := range p.Layers {
		buf = appendString(buf, d.String())
	}
	buf = binary.AppendUvarint(buf, uint64(len(p.Ranges)))
	for _, r := range p.Ranges {
		buf = binary.AppendUvarint(buf, uint64(r.Layer))
		buf = binary.AppendUvarint(buf, uint64(r.Off))
		buf = binary.AppendUvarint(buf, uint64(r.Len))
	}
	if p.Pack != nil {
		buf = p.Pack.append(buf)
	}
	if len(buf) > MaxProfileSize {
		return nil, fmt.Errorf("encoding profile: %d bytes, at most %d", len(buf), MaxProfileSize)
	}
	return buf, nil
}

// UnmarshalProfile decodes a profile MarshalBinary made. Every error wraps
// [ErrFormat]; counts and sizes are checked against the caps and the bytes
// left before anything is allocated.
func UnmarshalProfile(b []byte) (*Profile, error) {
	if len(b) > MaxProfileSize {
		return nil, formatErrorf("profile: %d bytes, at most %d", len(b), MaxProfileSize)
	}
	if len(b) < len(profileMagic)+2 || string(b[:len(profileMagic)]) != profileMagic {
		return nil, formatErrorf("profile: not an ocifs profile (bad magic)")
	}
	v := binary.BigEndian.Uint16(b[len(profileMagic):])
	if v != profileVersion && v != profileVersionPack {
		return nil, formatErrorf("profile: version %d, this build reads versions %d and %d (upgrade ocifs, or record the profile again)", v, profileVersion, profileVersionPack)
	}
	d := profileDecoder{b: b[len(profileMagic)+2:]}
	nl := d.count("layers", MaxProfileLayers, 2)
	p := &Profile{Layers: make([]digest.Digest, 0, nl)}
	for i := 0; i < nl && d.err == nil; i++ {
		n := d.count("digest length", maxDigestLen, 1)
		s := d.bytes(n)
		if d.err != nil {
			break
		}
		dg := digest.Digest(s)
		if err := dg.Validate(); err != nil {
			return nil, formatErrorf("profile: layer %d: digest %.100q: %v", i, s, err)
		}
		p.Layers = append(p.Layers, dg)
	}
	nr := d.count("ranges", MaxProfileRanges, 3)
	if d.err == nil {
		p.Ranges = make([]ProfileRange, 0, nr)
	}
	for i := 0; i < nr && d.err == nil; i++ {
		l, off, n := d.uvarint(), d.uvarint(), d.uvarint()
		if d.err != nil {
			break
		}
		if l >= uint64(len(p.Layers)) {
			return nil, formatErrorf("profile: range %d: layer %d of %d", i, l, len(p.Layers))
		}
		if n == 0 || off > MaxProfileOffset || n > MaxProfileOffset-off {
			return nil, formatErrorf("profile: range %d: %d+%d is not a range below 2^50", i, off, n)
		}
		p.Ranges = append(p.Ranges, ProfileRange{Layer: int(l), Off: int64(off), Len: int64(n)})
	}
	if d.err != nil {
		return nil, d.err
	}
	if v == profileVersionPack {
		pk, err := decodePack(&d, len(p.Layers))
		if err != nil {
			return nil, err
		}
		p.Pack = pk
	}
	if len(d.b) != 0 {
		return nil, formatErrorf("profile: %d bytes after its end", len(d.b))
	}
	return p, nil
}

// profileDecoder reads varints and strings; its first error is sticky.
type profileDecoder struct {
	b   []byte
	err error
}

func (d *profileDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n != len(binary.AppendUvarint(nil, v)) { // overlong: not canonical
		d.err = formatErrorf("profile: truncated or overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count of at most limit items, each taking at least minLen
// encoded bytes, so a count the remaining bytes cannot hold is refused
// before it is allocated.
func (d *profileDecoder) count(what string, limit, minLen int) int {
	v := d.uvarint()
	if d.err != nil {
		return 0
	}
	if v > uint64(limit) || v > math.MaxInt32 || int(v)*minLen > len(d.b) {
		d.err = formatErrorf("profile: %d %s, at most %d (and %d bytes left)", v, what, limit, len(d.b))
		return 0
	}
	return int(v)
}

func (d *profileDecoder) bytes(n int) string {
	if d.err != nil {
		return ""
	}
	if n > len(d.b) {
		d.err = formatErrorf("profile: truncated")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
