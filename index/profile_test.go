package index

import (
	"bytes"
	"errors"
	"reflect"
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
	}
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
		t.Run(name, func(t *testing.T) {
			p, err := UnmarshalProfile(b)
			if err == nil {
				t.Fatalf("UnmarshalProfile = %+v, want an error", p)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %q does not wrap ErrFormat", err)
			}
		})
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
