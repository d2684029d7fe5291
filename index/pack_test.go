package index

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// packFrameSizes are the frame lengths the round trip covers: the
// smallest, around zstd's 1 KiB minimum window, odd sizes and the cap.
var packFrameSizes = []int{1, 2, 100, 1023, 1024, 1025, 4096, 65537, 300_000, MaxPackFrame - 1, MaxPackFrame}

// minRoundTrip is the shortest frame the fuzzer round-trips.
const minRoundTrip = 1

func TestPackFrameRoundTrip(t *testing.T) {
	for _, n := range packFrameSizes {
		for kind, data := range map[string][]byte{
			"random":       randomBytes(n, uint64(n)),
			"compressible": mixedData(n, uint64(n)),
			"zeros":        make([]byte, n),
		} {
			t.Run(fmt.Sprintf("%s-%d", kind, n), func(t *testing.T) {
				stored, err := EncodePackFrame(data)
				if err != nil {
					t.Fatalf("EncodePackFrame(%d bytes): %v", n, err)
				}
				if int64(len(stored)) > MaxPackStored(int64(n)) {
					t.Errorf("EncodePackFrame(%d bytes) = %d bytes, more than MaxPackStored %d", n, len(stored), MaxPackStored(int64(n)))
				}
				got, err := DecodePackFrame(stored, int64(n))
				if err != nil {
					t.Fatalf("DecodePackFrame(%d stored bytes, %d): %v", len(stored), n, err)
				}
				if !bytes.Equal(got, data) {
					t.Errorf("DecodePackFrame of EncodePackFrame(%d bytes) differs from the input", n)
				}
			})
		}
	}
}

func TestEncodePackFrameRefuses(t *testing.T) {
	for _, n := range []int{0, MaxPackFrame + 1} {
		if b, err := EncodePackFrame(make([]byte, n)); err == nil {
			t.Errorf("EncodePackFrame(%d bytes) = %d bytes, want an error", n, len(b))
		}
	}
}

// zstdFrame is a hand-made zstd frame: no content size, no checksum, a
// window of 2^windowLog bytes, and one last raw block holding content.
func zstdFrame(windowLog int, content []byte) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3}
	hdr := uint32(1) | uint32(len(content))<<3 // last block, raw
	b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16))
	return append(b, content...)
}

// zstdStream compresses data as a stream, so its frame declares no
// content size.
func zstdStream(tb testing.TB, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodePackFrameRefuses(t *testing.T) {
	const n = 5000
	data := mixedData(n, 7)
	good, err := EncodePackFrame(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{3, 1024} {
		if _, err := DecodePackFrame(zstdFrame(10, make([]byte, n)), int64(n)); err != nil {
			t.Fatalf("the hand-made frame of %d bytes does not decode: %v", n, err)
		}
	}
	for name, c := range map[string]struct {
		stored []byte
		n      int64
	}{
		"n larger than the content":       {good, n + 1},
		"n smaller than the content":      {good, n - 1},
		"n zero":                          {good, 0},
		"n negative":                      {good, -1},
		"n past MaxPackFrame":             {good, MaxPackFrame + 1},
		"truncated":                       {good[:len(good)-1], n},
		"only the header":                 {good[:6], n},
		"empty":                           {nil, n},
		"garbage":                         {randomBytes(200, 1), n},
		"a frame of twice n":              {zstdBytes(t, mixedData(2*n, 8)), n},
		"a stream of twice n":             {zstdStream(t, mixedData(2*n, 8)), n},
		"a frame of n+1":                  {zstdBytes(t, mixedData(n+1, 8)), n},
		"a window of 2^31":                {zstdFrame(31, make([]byte, 1024)), 1024},
		"a window past MaxPackFrame":      {zstdFrame(21, make([]byte, 1024)), 1024},
		"trailing garbage after a frame":  {append(bytes.Clone(good), 1, 2, 3, 4, 5, 6, 7, 8), n},
		"a flipped byte in the last byte": {append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]^0xff), n},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := DecodePackFrame(c.stored, c.n)
			if err == nil {
				t.Fatalf("DecodePackFrame(%d bytes, %d) = %d bytes, want an error", len(c.stored), c.n, len(got))
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %q does not wrap ErrFormat", err)
			}
			if got != nil {
				t.Errorf("DecodePackFrame returned %d bytes with its error", len(got))
			}
		})
	}
}

func TestProfilePackOffsets(t *testing.T) {
	var blob []byte
	var frames []PackFrame
	var stored [][]byte
	for i, n := range []int{1, 3000, 70_000, 20} {
		s, err := EncodePackFrame(mixedData(n, uint64(i)))
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, PackFrame{Layer: i % 2, Off: int64(i) << 20, Len: int64(n), Stored: int64(len(s)), Digest: digest.FromBytes(s)})
		stored = append(stored, s)
		blob = append(blob, s...)
	}
	pk := &ProfilePack{Digest: digest.FromBytes(blob), Size: int64(len(blob)), Frames: frames}
	offs := pk.Offsets()
	if len(offs) != len(frames) {
		t.Fatalf("Offsets = %d offsets, want %d", len(offs), len(frames))
	}
	for i, f := range frames {
		if offs[i] < 0 || offs[i]+f.Stored > int64(len(blob)) {
			t.Fatalf("frame %d: offset %d+%d outside the %d-byte blob", i, offs[i], f.Stored, len(blob))
		}
		if got := blob[offs[i] : offs[i]+f.Stored]; !bytes.Equal(got, stored[i]) || digest.FromBytes(got) != f.Digest {
			t.Errorf("frame %d: blob[%d:+%d] is not the frame's stored bytes", i, offs[i], f.Stored)
		}
	}
	if got := (&ProfilePack{}).Offsets(); len(got) != 0 {
		t.Errorf("Offsets of an empty pack = %v, want none", got)
	}
}

// FuzzDecodePackFrame: a frame's stored bytes come from a registry, and
// are decoded after their digest checks out; the digest is the author's,
// so the bytes may still be hostile. DecodePackFrame must never panic,
// must wrap ErrFormat, must give exactly n bytes when it succeeds, and
// must agree with a plain zstd decoder. Frames EncodePackFrame made of
// data must decode to data.
func FuzzDecodePackFrame(f *testing.F) {
	for i, n := range []int{1, 100, 1024, 1025, 5000, 70_000} {
		data := mixedData(n, uint64(i))
		stored, err := EncodePackFrame(data)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, stored, int64(n))
		f.Add(data[:n/2], stored[:len(stored)/2], int64(n))
		f.Add([]byte(nil), zstdBytes(f, mixedData(2*n, 9)), int64(n))
	}
	f.Add([]byte("x"), zstdFrame(31, make([]byte, 1024)), int64(1024))
	f.Add([]byte(nil), zstdFrame(10, make([]byte, 1024)), int64(1024))
	f.Add([]byte(nil), randomBytes(300, 3), int64(300))
	plain, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(4*MaxPackFrame))
	if err != nil {
		f.Fatal(err)
	}
	defer plain.Close()
	f.Fuzz(func(t *testing.T, data, stored []byte, n int64) {
		if len(data) >= minRoundTrip && len(data) <= MaxPackFrame {
			enc, err := EncodePackFrame(data)
			if err != nil {
				t.Fatalf("EncodePackFrame(%d bytes): %v", len(data), err)
			}
			got, err := DecodePackFrame(enc, int64(len(data)))
			if err != nil {
				t.Fatalf("DecodePackFrame of EncodePackFrame(%d bytes): %v", len(data), err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("DecodePackFrame of EncodePackFrame(%x) = %x", data, got)
			}
		}
		got, err := DecodePackFrame(stored, n)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %q does not wrap ErrFormat", err)
			}
			if got != nil {
				t.Fatalf("DecodePackFrame returned %d bytes with its error", len(got))
			}
			return
		}
		if int64(len(got)) != n {
			t.Fatalf("DecodePackFrame(%d bytes, %d) = %d bytes", len(stored), n, len(got))
		}
		want, err := plain.DecodeAll(stored, nil)
		if err != nil {
			t.Fatalf("DecodePackFrame accepted what a plain zstd decoder refuses: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("DecodePackFrame(%x, %d) = %x, a plain zstd decoder gives %x", stored, n, got, want)
		}
	})
}
