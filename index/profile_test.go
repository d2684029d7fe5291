package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func profileFixtures() []*Profile {
	a, b := digest.FromString("layer a"), digest.FromString("layer b")
	return []*Profile{
		{Layers: []digest.Digest{}, Ranges: []ProfileRange{}},
		{Layers: []digest.Digest{a}, Ranges: []ProfileRange{{0, 0, 1}}},
		{Layers: []digest.Digest{a, b}, Ranges: []ProfileRange{{1, 512, 4096}, {0, 1 << 40, 1 << 20}, {1, 0, 100}}},
		{Layers: []digest.Digest{a}, Ranges: []ProfileRange{{0, MaxProfileOffset - 1, 1}}},
		// Version 2: with packs.
		{Layers: []digest.Digest{a}, Ranges: []ProfileRange{{0, 0, 1}},
			Pack: &ProfilePack{Digest: digest.FromString("pack 1"), Size: 9, Frames: []PackFrame{{0, 0, 1, 9, digest.FromString("frame 1")}}}},
		{Layers: []digest.Digest{a, b}, Ranges: []ProfileRange{{1, 512, 4096}, {0, 1 << 40, 1 << 20}},
			Pack: &ProfilePack{Digest: digest.FromString("pack 2"), Size: 300 + 1 + MaxPackStored(MaxPackFrame) + 7, Frames: []PackFrame{
				{1, 4096, 4096, 300, digest.FromString("frame 1")},
				{1, 0, 4096, 1, digest.FromString("frame 2")}, // touches the one above: no overlap
				{0, MaxProfileOffset - MaxPackFrame, MaxPackFrame, MaxPackStored(MaxPackFrame), digest.FromString("frame 3")},
				{0, 0, 4096, 7, digest.FromString("frame 4")}, // the place of frame 2, in another layer
			}}},
		{Layers: []digest.Digest{a}, Ranges: []ProfileRange{},
			Pack: &ProfilePack{Digest: digest.FromString(""), Size: 0, Frames: []PackFrame{}}},
	}
}

// packProfile is a valid profile with a pack, for cases that break it.
func packProfile() *Profile {
	return profileFixtures()[5]
}

func TestProfileRoundTrip(t *testing.T) {
	for i, p := range profileFixtures() {
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("profile %d: MarshalBinary: %v", i, err)
		}
		got, err := UnmarshalProfile(b)
		if err != nil {
			t.Fatalf("profile %d: UnmarshalProfile: %v", i, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("profile %d: round trip = %+v, want %+v", i, got, p)
		}
		again, err := got.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Errorf("profile %d: encoding is not canonical (err %v)", i, err)
		}
	}
}

func TestProfileMarshalRefuses(t *testing.T) {
	a := digest.FromString("a")
	for name, p := range map[string]*Profile{
		"range names a missing layer": {Layers: []digest.Digest{a}, Ranges: []ProfileRange{{1, 0, 1}}},
		"empty range":                 {Layers: []digest.Digest{a}, Ranges: []ProfileRange{{0, 0, 0}}},
		"negative offset":             {Layers: []digest.Digest{a}, Ranges: []ProfileRange{{0, -1, 1}}},
		"past the offset cap":         {Layers: []digest.Digest{a}, Ranges: []ProfileRange{{0, MaxProfileOffset, 1}}},
		"bad digest":                  {Layers: []digest.Digest{"sha256:zz"}},
		"too many ranges":             {Layers: []digest.Digest{a}, Ranges: make([]ProfileRange, MaxProfileRanges+1)},
	} {
		t.Run(name, func(t *testing.T) {
			if b, err := p.MarshalBinary(); err == nil {
				t.Fatalf("MarshalBinary = %d bytes, want an error", len(b))
			}
		})
	}
}

func TestProfileMarshalRefusesPack(t *testing.T) {
	for name, edit := range map[string]func(p *Profile){
		"frame layer past the list": func(p *Profile) { p.Pack.Frames[0].Layer = 2 },
		"negative frame layer":      func(p *Profile) { p.Pack.Frames[0].Layer = -1 },
		"zero frame length":         func(p *Profile) { p.Pack.Frames[0].Len = 0 },
		"negative frame length":     func(p *Profile) { p.Pack.Frames[0].Len = -1 },
		"frame over MaxPackFrame": func(p *Profile) {
			p.Pack.Frames[2].Len = MaxPackFrame + 1
			p.Pack.Frames[2].Off--
		},
		"negative frame offset":     func(p *Profile) { p.Pack.Frames[3].Off = -1 },
		"frame past the offset cap": func(p *Profile) { p.Pack.Frames[2].Off++ },
		"nothing stored":            func(p *Profile) { p.Pack.Size -= p.Pack.Frames[0].Stored; p.Pack.Frames[0].Stored = 0 },
		"stored past MaxPackStored": func(p *Profile) { p.Pack.Frames[2].Stored++; p.Pack.Size++ },
		"size above the stored sum": func(p *Profile) { p.Pack.Size++ },
		"size below the stored sum": func(p *Profile) { p.Pack.Size-- },
		"frames overlap":            func(p *Profile) { p.Pack.Frames[1].Len++ },
		"a frame inside another": func(p *Profile) {
			p.Pack.Frames = append(p.Pack.Frames, PackFrame{1, 5000, 10, 3, digest.FromString("inside")})
			p.Pack.Size += 3
		},
		"the same frame twice": func(p *Profile) {
			p.Pack.Frames = append(p.Pack.Frames, p.Pack.Frames[0])
			p.Pack.Size += p.Pack.Frames[0].Stored
		},
		"bad pack digest":        func(p *Profile) { p.Pack.Digest = "sha256:zz" },
		"upper-case pack digest": func(p *Profile) { p.Pack.Digest = digest.Digest(strings.ToUpper(p.Pack.Digest.String())) },
		"sha512 pack digest":     func(p *Profile) { p.Pack.Digest = digest.SHA512.FromString("pack") },
		"bad frame digest":       func(p *Profile) { p.Pack.Frames[1].Digest = digest.Digest("sha256:" + strings.Repeat("g", 64)) },
		"sha512 frame digest":    func(p *Profile) { p.Pack.Frames[3].Digest = digest.SHA512.FromString("frame") },
		"too many frames": func(p *Profile) {
			p.Pack.Frames, p.Pack.Size = make([]PackFrame, MaxPackFrames+1), MaxPackFrames+1
			for i := range p.Pack.Frames {
				p.Pack.Frames[i] = PackFrame{0, int64(i), 1, 1, digest.FromString("f")}
			}
		},
		"more than MaxPackBytes": func(p *Profile) {
			n := MaxPackBytes/MaxPackFrame + 1
			p.Pack.Frames, p.Pack.Size = make([]PackFrame, n), int64(n)
			for i := range p.Pack.Frames {
				p.Pack.Frames[i] = PackFrame{0, int64(i) * MaxPackFrame, MaxPackFrame, 1, digest.FromString("f")}
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := packProfile()
			if _, err := p.MarshalBinary(); err != nil {
				t.Fatalf("the profile before the edit: %v", err)
			}
			edit(p)
			if b, err := p.MarshalBinary(); err == nil {
				t.Fatalf("MarshalBinary = %d bytes, want an error", len(b))
			}
		})
	}
}

func TestUnmarshalProfileRefuses(t *testing.T) {
	good, err := profileFixtures()[2].MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	hdr := []byte(profileMagic + "\x00\x01")
	for name, b := range map[string][]byte{
		"empty":             nil,
		"bad magic":         append([]byte("OCIFSIDX"), good[8:]...),
		"newer version":     append([]byte(profileMagic+"\x00\x03"), good[10:]...),
		"truncated":         good[:len(good)-1],
		"trailing bytes":    append(bytes.Clone(good), 0),
		"huge layer count":  append(bytes.Clone(hdr), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"huge range count":  append(append(bytes.Clone(hdr), 0), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"count past bytes":  append(append(bytes.Clone(hdr), 0), 100, 0, 0, 1),
		"layer out of list": append(append(bytes.Clone(hdr), 0), 1, 0, 0, 1),
		"zero length":       append(append(append(bytes.Clone(hdr), 1), appendString(nil, digest.FromString("x").String())...), 1, 0, 0, 0),
		"overlong varint":   append(bytes.Clone(hdr), 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01),
		"too large":         make([]byte, MaxProfileSize+1),
	} {
		t.Run(name, func(t *testing.T) { unmarshalProfileRefuses(t, b) })
	}
}

// unmarshalProfileRefuses checks that UnmarshalProfile refuses b with an
// error that wraps ErrFormat.
func unmarshalProfileRefuses(t *testing.T, b []byte) {
	t.Helper()
	p, err := UnmarshalProfile(b)
	if err == nil {
		t.Fatalf("UnmarshalProfile = %+v, want an error", p)
	}
	if !errors.Is(err, ErrFormat) {
		t.Errorf("error %q does not wrap ErrFormat", err)
	}
}

// v2Profile encodes a profile of two layers and one range with the pack
// section pack, unchecked, so that tests can write what MarshalBinary
// refuses.
func v2Profile(t *testing.T, pack []byte) []byte {
	t.Helper()
	p := &Profile{Layers: []digest.Digest{digest.FromString("a"), digest.FromString("b")}, Ranges: []ProfileRange{{1, 0, 10}}}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(b[len(profileMagic):], profileVersionPack)
	return append(b, pack...)
}

// rawPack encodes a pack section: a digest, a size, a frame count, then
// each frame's layer, off, len and stored length and a digest.
func rawPack(size, count uint64, frames ...[4]uint64) []byte {
	sum := sha256.Sum256([]byte("pack"))
	b := binary.AppendUvarint(sum[:], size)
	b = binary.AppendUvarint(b, count)
	for i, f := range frames {
		for _, v := range f {
			b = binary.AppendUvarint(b, v)
		}
		fs := sha256.Sum256([]byte{byte(i)})
		b = append(b, fs[:]...)
	}
	return b
}

func TestUnmarshalProfileRefusesPack(t *testing.T) {
	// The good pack, then edits of it: two frames of layer 1, 10 and 20
	// bytes stored.
	one, two := [4]uint64{1, 0, 100, 10}, [4]uint64{1, 100, 100, 20}
	if p, err := UnmarshalProfile(v2Profile(t, rawPack(30, 2, one, two))); err != nil || p.Pack == nil || len(p.Pack.Frames) != 2 {
		t.Fatalf("the good pack: %+v, %v", p, err)
	}
	good, err := packProfile().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	v1, err := profileFixtures()[2].MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"trailing bytes":             append(bytes.Clone(good), 0),
		"version 2 without a pack":   v2Profile(t, nil),
		"version 1 with a pack":      append(bytes.Clone(v1), rawPack(30, 2, one, two)...),
		"frame count past the bytes": v2Profile(t, rawPack(30, 3, one, two)),
		"frame count past the cap":   v2Profile(t, rawPack(30, MaxPackFrames+1, one, two)),
		"huge frame count":           v2Profile(t, rawPack(30, 1<<62, one, two)),
		"size above the frames":      v2Profile(t, rawPack(31, 2, one, two)),
		"size below the frames":      v2Profile(t, rawPack(29, 2, one, two)),
		"huge size":                  v2Profile(t, rawPack(1<<62, 2, one, two)),
		"frame layer past the list":  v2Profile(t, rawPack(30, 2, one, [4]uint64{2, 100, 100, 20})),
		"huge frame layer":           v2Profile(t, rawPack(30, 2, one, [4]uint64{1 << 63, 100, 100, 20})),
		"zero frame length":          v2Profile(t, rawPack(30, 2, one, [4]uint64{1, 100, 0, 20})),
		"frame over MaxPackFrame":    v2Profile(t, rawPack(30, 2, one, [4]uint64{1, 100, MaxPackFrame + 1, 20})),
		"frame past the offset cap":  v2Profile(t, rawPack(30, 2, one, [4]uint64{1, MaxProfileOffset - 99, 100, 20})),
		"huge frame offset":          v2Profile(t, rawPack(30, 2, one, [4]uint64{1, 1 << 63, 100, 20})),
		"nothing stored":             v2Profile(t, rawPack(10, 2, one, [4]uint64{1, 100, 100, 0})),
		"stored past MaxPackStored":  v2Profile(t, rawPack(10+uint64(MaxPackStored(100))+1, 2, one, [4]uint64{1, 100, 100, uint64(MaxPackStored(100)) + 1})),
		"huge stored":                v2Profile(t, rawPack(10+1<<62, 2, one, [4]uint64{1, 100, 100, 1 << 62})),
		"frames overlap":             v2Profile(t, rawPack(30, 2, one, [4]uint64{1, 99, 100, 20})),
		"overlong varint":            v2Profile(t, append(rawPack(30, 2, one, two)[:32], 0x9e, 0x00, 0x02)),
	}
	// Every cut of the pack section (and of what comes before it).
	for n := len(good) - 1; n >= 0; n-- {
		cases[fmt.Sprintf("cut at %d of %d", n, len(good))] = good[:n]
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) { unmarshalProfileRefuses(t, b) })
	}
}

// FuzzUnmarshalProfile: a profile comes from a registry, so its decoder
// sees hostile bytes. It must never panic, must wrap ErrFormat, and what it
// accepts must keep the invariants and encode back to the same bytes.
func FuzzUnmarshalProfile(f *testing.F) {
	for _, p := range profileFixtures() {
		b, err := p.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(profileMagic + "\x00\x01\x00\x00"))
	f.Add([]byte(profileMagic + "\x00\x02\x00\x00"))
	v2, err := packProfile().MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(v2[:len(v2)-20])                     // cut in the last frame's digest
	f.Add(append(bytes.Clone(v2), v2[50:]...)) // trailing bytes
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := UnmarshalProfile(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %q does not wrap ErrFormat", err)
			}
			return
		}
		if err := p.check(); err != nil {
			t.Fatalf("accepted a profile that breaks an invariant: %v", err)
		}
		again, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of an accepted profile: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, encodes back as %x", b, again)
		}
	})
}

// A digest without an algorithm is refused, not a panic: go-digest's
// Encoded panics on a digest with no ':'.
func TestProfileMarshalRefusesPackDigestWithoutAlgorithm(t *testing.T) {
	for name, edit := range map[string]func(p *Profile){
		"empty pack digest":         func(p *Profile) { p.Pack.Digest = "" },
		"pack digest of hex alone":  func(p *Profile) { p.Pack.Digest = digest.Digest(p.Pack.Digest.Encoded()) },
		"empty frame digest":        func(p *Profile) { p.Pack.Frames[0].Digest = "" },
		"frame digest of hex alone": func(p *Profile) { p.Pack.Frames[1].Digest = digest.Digest(p.Pack.Frames[1].Digest.Encoded()) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("MarshalBinary panicked: %v", r)
				}
			}()
			p := packProfile()
			edit(p)
			if b, err := p.MarshalBinary(); err == nil {
				t.Fatalf("MarshalBinary = %d bytes, want an error", len(b))
			}
		})
	}
}
