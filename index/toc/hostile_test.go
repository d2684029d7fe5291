package toc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/index"
)

// A byte flipped inside the stored (uncompressed) deflate data of a chunk
// still decompresses, so only the chunk digest can catch it.
func TestDecodeChunkDigestMismatch(t *testing.T) {
	plain := makeTar(t, fixtureFiles(false))
	tl := buildEstargz(t, plain, false, false, estargz.WithChunkSize(50000), estargz.WithCompressionLevel(gzip.NoCompression))
	l, _ := decodeLayer(t, tl, true)
	const gzipHeader, storedHeader = 10, 5
	tested := 0
	for i, c := range l.Chunks {
		if c.InnerOffset != 0 || c.Size < 2 {
			continue
		}
		tested++
		bad := bytes.Clone(tl.blob[c.C:c.CEnd])
		bad[gzipHeader+storedHeader+c.Size/2] ^= 0x40
		data, err := DecodeChunk(l.Format, c, bad)
		var de *DigestError
		if !errors.As(err, &de) || !errors.Is(err, ErrDigest) {
			t.Fatalf("chunk %d: DecodeChunk(flipped) = %d bytes, %v; want a *DigestError", i, len(data), err)
		}
		if data != nil || de.Want != c.Digest || de.Got == c.Digest || de.Off != c.C || de.What != "chunk" {
			t.Errorf("chunk %d: got data %d bytes, error %+v; want no data, want %s, got another, off %d", i, len(data), de, c.Digest, c.C)
		}
	}
	if tested < 10 {
		t.Fatalf("only %d chunks tested", tested)
	}
}

// Whatever byte of a chunk's range is flipped, DecodeChunk returns no data.
func TestDecodeChunkTamperAnyByte(t *testing.T) {
	plain := makeTar(t, fixtureFiles(false))
	layers := map[string]testLayer{
		"estargz":      buildEstargz(t, plain, false, false, estargz.WithChunkSize(30000)),
		"estargz-zstd": buildEstargz(t, plain, true, true, estargz.WithChunkSize(30000)),
		"zstd-chunked": buildZstdChunked(t, plain, 30000),
	}
	for name, tl := range layers {
		t.Run(name, func(t *testing.T) {
			l, _ := decodeLayer(t, tl, true)
			for i, c := range l.Chunks {
				n := c.CEnd - c.C
				for _, pos := range []int64{0, 3, n / 3, n / 2, n - 1} {
					bad := bytes.Clone(tl.blob[c.C:c.CEnd])
					bad[pos] ^= 0x01
					data, err := DecodeChunk(l.Format, c, bad)
					if err == nil {
						// The flip may hit bytes past what the chunk needs
						// (tar headers of later entries): then the data is
						// right and verified.
						if want := tl.blob[c.C:c.CEnd]; !bytes.Equal(data, mustDecode(t, l, c, want)) {
							t.Fatalf("chunk %d, flip at %d: DecodeChunk returned wrong data without error", i, pos)
						}
						continue
					}
					if data != nil || !(errors.Is(err, ErrDigest) || errors.Is(err, index.ErrFormat)) {
						t.Fatalf("chunk %d, flip at %d: DecodeChunk = %d bytes, %v; want no data and ErrDigest or ErrFormat", i, pos, len(data), err)
					}
				}
			}
		})
	}
}

func mustDecode(t *testing.T, l *Layer, c Chunk, b []byte) []byte {
	t.Helper()
	data, err := DecodeChunk(l.Format, c, b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeTOCDigestMismatch(t *testing.T) {
	plain := makeTar(t, fixtureFiles(false))
	other := digest.FromString("another TOC")
	cases := []struct {
		name   string
		tl     testLayer
		tamper func(tl *testLayer, loc Location)
		what   string
	}{
		{"estargz annotation", buildEstargz(t, plain, false, false),
			func(tl *testLayer, _ Location) { tl.desc.Annotations[AnnotationTOCDigest] = other.String() }, "TOC JSON"},
		{"estargz-zstd annotation", buildEstargz(t, plain, true, false),
			func(tl *testLayer, _ Location) { tl.desc.Annotations[AnnotationTOCDigest] = other.String() }, "TOC JSON"},
		{"zstd:chunked checksum", buildZstdChunked(t, plain, 9000),
			func(tl *testLayer, _ Location) { tl.desc.Annotations[AnnotationManifestChecksum] = other.String() }, "TOC"},
		{"zstd:chunked flipped manifest byte", buildZstdChunked(t, plain, 9000),
			func(tl *testLayer, loc Location) { tl.blob[loc.Offset+loc.Size/2] ^= 1 }, "TOC"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tl := tc.tl
			tl.blob = bytes.Clone(tl.blob)
			loc, err := Locate(tl.desc, tail(tl.blob), Options{})
			if err != nil {
				t.Fatal(err)
			}
			tc.tamper(&tl, loc)
			if loc, err = Locate(tl.desc, tail(tl.blob), Options{}); err != nil {
				t.Fatal(err)
			}
			l, err := Decode(loc, tl.blob[loc.Offset:loc.Offset+loc.Size], Options{})
			var de *DigestError
			if !errors.As(err, &de) || de.What != tc.what || de.Want != other && tc.name != "zstd:chunked flipped manifest byte" {
				t.Fatalf("Decode = %v, %v; want a %q *DigestError wanting %s", l, err, tc.what, other)
			}
		})
	}
}

// hostile builds a zstd:chunked layer around a hand-written manifest; its
// payload is 1000 bytes, so chunks may lie in [0, 1000).
func hostile(tb testing.TB, manifest string) testLayer {
	tb.Helper()
	return finishZstdChunked(tb, bytes.Repeat([]byte{0xaa}, 1000), []byte(manifest), nil, 0)
}

func TestDecodeHostileTOC(t *testing.T) {
	d := digest.FromString("x").String()
	reg := func(fields string) string {
		return `{"version":1,"entries":[` + fields + `]}`
	}
	cases := []struct {
		name     string
		manifest string
		opts     Options
		want     string
	}{
		{"chunk offset past the payload", reg(`{"type":"reg","name":"a","size":10,"offset":5000,"digest":"` + d + `"}`), Options{}, "outside the 1000-byte payload"},
		{"negative chunk offset", reg(`{"type":"reg","name":"a","size":10,"offset":-1,"digest":"` + d + `"}`), Options{}, "outside the 1000-byte payload"},
		{"overlapping chunks", reg(`{"type":"reg","name":"a","size":10,"offset":100,"digest":"` + d + `"},{"type":"reg","name":"b","size":10,"offset":100,"digest":"` + d + `"}`), Options{}, "overlaps"},
		{"decreasing offsets", reg(`{"type":"reg","name":"a","size":10,"offset":200,"digest":"` + d + `"},{"type":"reg","name":"b","size":10,"offset":100,"digest":"` + d + `"}`), Options{}, "overlaps or precedes"},
		{"end offset past the next frame", reg(`{"type":"reg","name":"a","size":10,"offset":100,"endOffset":300,"digest":"` + d + `"},{"type":"reg","name":"b","size":10,"offset":200,"digest":"` + d + `"}`), Options{}, "end offset 300"},
		{"huge chunk", reg(`{"type":"reg","name":"a","size":1099511627776,"offset":100,"digest":"` + d + `"}`), Options{}, "MaxChunkSize"},
		{"huge compressed range", reg(`{"type":"reg","name":"a","size":10,"offset":100,"digest":"` + d + `"}`), Options{MaxChunkSize: 500}, "compressed bytes"},
		{"size overflows", reg(`{"type":"reg","name":"a","size":9223372036854775807,"offset":100,"digest":"` + d + `"}`), Options{}, "size 9223372036854775807"},
		{"negative size", reg(`{"type":"reg","name":"a","size":-5,"offset":100}`), Options{}, "size -5"},
		{"size beyond int64", reg(`{"type":"reg","name":"a","size":99999999999999999999}`), Options{}, "TOC JSON"},
		{"too many entries", reg(`{"type":"dir","name":"a"},{"type":"dir","name":"b"},{"type":"dir","name":"c"},{"type":"dir","name":"d"}`), Options{MaxEntries: 3}, "more than 3 entries"},
		{"chunks short of the size", reg(`{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":4,"chunkDigest":"` + d + `"}`), Options{}, "cover 4 of 10"},
		{"chunk gap", reg(`{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":4,"chunkDigest":"` + d + `"},{"type":"chunk","name":"a","offset":200,"chunkOffset":5,"chunkDigest":"` + d + `"}`), Options{}, "starts at 5, want 4"},
		{"chunk past the end", reg(`{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":11,"chunkDigest":"` + d + `"}`), Options{}, "outside the 10-byte file"},
		{"negative chunk size", reg(`{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":-3,"chunkDigest":"` + d + `"}`), Options{}, "outside the 10-byte file"},
		{"negative inner offset", reg(`{"type":"reg","name":"a","size":10,"offset":100,"innerOffset":-1,"digest":"` + d + `"}`), Options{}, "inner offset -1"},
		{"chunk without digest", reg(`{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":5,"digest":"` + d + `"},{"type":"chunk","name":"a","offset":200,"chunkOffset":5,"chunkDigest":"` + d + `"}`), Options{}, "no digest"},
		{"file without digest", reg(`{"type":"reg","name":"a","size":10,"offset":100}`), Options{}, "no digest"},
		{"chunk before any file", reg(`{"type":"chunk","name":"a","offset":100,"chunkSize":5}`), Options{}, "follows no regular file"},
		{"chunk after an empty file", reg(`{"type":"reg","name":"a"},{"type":"chunk","name":"a","offset":100,"chunkSize":5}`), Options{}, "follows no regular file"},
		{"chunk of another file", reg(`{"type":"reg","name":"a","size":10,"offset":100,"chunkSize":5,"chunkDigest":"` + d + `"},{"type":"chunk","name":"b","offset":200,"chunkOffset":5,"chunkDigest":"` + d + `"}`), Options{}, "another file"},
		{"md5 digest", reg(`{"type":"reg","name":"a","size":10,"offset":100,"digest":"md5:00000000000000000000000000000000"}`), Options{}, "digest"},
		{"sha512 digest", reg(`{"type":"reg","name":"a","size":10,"offset":100,"digest":"sha512:` + strings.Repeat("0", 128) + `"}`), Options{}, "want sha256"},
		{"malformed digest", reg(`{"type":"reg","name":"a","size":10,"offset":100,"digest":"sha256:zz"}`), Options{}, "digest"},
		{"unknown type", reg(`{"type":"socket","name":"a"}`), Options{}, `unknown type "socket"`},
		{"name too long", reg(`{"type":"dir","name":"` + strings.Repeat("a", 11) + `"}`), Options{MaxNameLen: 10}, "MaxNameLen"},
		{"symlink target too long", reg(`{"type":"symlink","name":"l","linkName":"` + strings.Repeat("a", 11) + `"}`), Options{MaxNameLen: 10}, "MaxNameLen"},
		{"NUL in a name", reg(`{"type":"dir","name":"a\u0000b"}`), Options{}, "NUL"},
		{"file as the root", reg(`{"type":"reg","name":"./"}`), Options{}, "layer root"},
		{"hard link to the root", reg(`{"type":"hardlink","name":"h","linkName":"/"}`), Options{}, "no target"},
		{"whiteout of nothing", reg(`{"type":"reg","name":"d/.wh."}`), Options{}, "whiteout names no file"},
		{"bad modtime", reg(`{"type":"dir","name":"a","modtime":"yesterday"}`), Options{}, "RFC 3339"},
		{"uid out of range", reg(`{"type":"dir","name":"a","uid":8589934592}`), Options{}, "uid 8589934592"},
		{"negative gid", reg(`{"type":"dir","name":"a","gid":-1}`), Options{}, "gid -1"},
		{"negative device", reg(`{"type":"char","name":"c","devMajor":-1}`), Options{}, "device major -1"},
		{"negative mode", reg(`{"type":"dir","name":"a","mode":-1}`), Options{}, "mode -1"},
		{"xattrs too big", reg(`{"type":"dir","name":"a","xattrs":{"user.a":"aGVsbG8="}}`), Options{MaxXattrBytes: 8}, "MaxXattrBytes"},
		{"xattr not base64", reg(`{"type":"dir","name":"a","xattrs":{"user.a":"!!"}}`), Options{}, "TOC JSON"},
		{"empty xattr name", reg(`{"type":"dir","name":"a","xattrs":{"":"aGVsbG8="}}`), Options{}, "xattr name"},
		{"version 2", `{"version":2,"entries":[]}`, Options{}, "version 2"},
		{"no version", `{"entries":[]}`, Options{}, "no version"},
		{"entries not a list", `{"version":1,"entries":{}}`, Options{}, "not a list"},
		{"two entry lists", `{"version":1,"entries":[],"entries":[]}`, Options{}, "two entry lists"},
		{"data after the object", `{"version":1,"entries":[]} {}`, Options{}, "after the object"},
		{"truncated", `{"version":1,"entries":[{"type":"dir"`, Options{}, "TOC JSON"},
		{"not an object", `[1,2]`, Options{}, "want"},
		{"landmark offset past the payload is a file here", reg(`{"type":"reg","name":".prefetch.landmark","size":1,"offset":5000,"digest":"` + d + `"}`), Options{}, "outside the 1000-byte payload"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tl := hostile(t, tc.manifest)
			loc, err := Locate(tl.desc, nil, tc.opts)
			if err != nil {
				t.Fatalf("Locate: %v", err)
			}
			l, err := Decode(loc, tl.blob[loc.Offset:loc.Offset+loc.Size], tc.opts)
			if err == nil || !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), tc.want) ||
				!strings.HasPrefix(err.Error(), "invalid input: ") {
				t.Fatalf("Decode = %v, %v; want an invalid input error containing %q", l, err, tc.want)
			}
		})
	}
}

func TestDecodeCaps(t *testing.T) {
	plain := makeTar(t, fixtureFiles(false))
	big := `{"version":1,"entries":[]` + strings.Repeat(" ", 2<<20) + `}`
	t.Run("estargz JSON over MaxTOCJSONSize", func(t *testing.T) {
		tl := buildEstargz(t, plain, false, false)
		loc, err := Locate(tl.desc, tail(tl.blob), Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = Decode(loc, tl.blob[loc.Offset:loc.Offset+loc.Size], Options{MaxTOCJSONSize: 1000})
		if !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), "MaxTOCJSONSize") {
			t.Fatalf("Decode = %v, want an error naming MaxTOCJSONSize", err)
		}
	})
	t.Run("compressed TOC over MaxTOCSize", func(t *testing.T) {
		tl := buildZstdChunked(t, plain, 9000)
		_, err := Locate(tl.desc, nil, Options{MaxTOCSize: 100})
		if !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), "MaxTOCSize") {
			t.Fatalf("Locate = %v, want an error naming MaxTOCSize", err)
		}
	})
	t.Run("stated JSON size over MaxTOCJSONSize", func(t *testing.T) {
		tl := hostile(t, big)
		_, err := Locate(tl.desc, nil, Options{MaxTOCJSONSize: 1 << 20})
		if !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), "MaxTOCJSONSize") {
			t.Fatalf("Locate = %v, want an error naming MaxTOCJSONSize", err)
		}
	})
	t.Run("zstd bomb with a lying size", func(t *testing.T) {
		tl := hostile(t, big)
		loc, err := Locate(tl.desc, nil, Options{})
		if err != nil {
			t.Fatal(err)
		}
		loc.JSONSize = 100
		_, err = Decode(loc, tl.blob[loc.Offset:loc.Offset+loc.Size], Options{MaxTOCJSONSize: 1 << 20})
		if !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), "MaxTOCJSONSize") {
			t.Fatalf("Decode = %v, want an error naming MaxTOCJSONSize", err)
		}
	})
	t.Run("JSON size differs from the stated one", func(t *testing.T) {
		tl := hostile(t, `{"version":1,"entries":[]}`)
		loc, err := Locate(tl.desc, nil, Options{})
		if err != nil {
			t.Fatal(err)
		}
		loc.JSONSize++
		_, err = Decode(loc, tl.blob[loc.Offset:loc.Offset+loc.Size], Options{})
		if !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), "the layer says") {
			t.Fatalf("Decode = %v, want a size mismatch", err)
		}
	})
}

func TestLocateHostile(t *testing.T) {
	gz := func(extra string) []byte {
		f := []byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, 'S', 'G', 22, 0}
		f = append(f, extra...)
		return append(f, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	zfooter := func(magic string, vals ...uint64) []byte {
		p := make([]byte, 64)
		for i, v := range vals {
			binary.LittleEndian.PutUint64(p[8*i:], v)
		}
		copy(p[56:], magic)
		return skippable(p)
	}
	pad := func(b []byte, n int) []byte { return append(make([]byte, n), b...) }
	ok := fmt.Sprintf("%016xSTARGZ", 100)
	cases := []struct {
		name string
		blob []byte
		ann  map[string]string
		want error
	}{
		{"valid eStargz footer", pad(gz(ok), 200), nil, nil},
		{"TOC offset past the footer", pad(gz(fmt.Sprintf("%016xSTARGZ", 5000)), 200), nil, index.ErrFormat},
		{"upper-case hex", pad(gz("00000000000000AASTARGZ"), 200), nil, index.ErrFormat},
		{"not hex", pad(gz("zzzzzzzzzzzzzzzzSTARGZ"), 200), nil, index.ErrFormat},
		{"other magic", pad(gz(fmt.Sprintf("%016xSTARGX", 100)), 200), nil, ErrNotLazy},
		{"broken flate block", func() []byte { b := pad(gz(ok), 200); b[len(b)-10] = 0; return b }(), nil, index.ErrFormat},
		{"zstd:chunked footer", pad(zfooter("GNUlInUx", 108, 50, 80, 1), 400), nil, nil},
		{"zstd:chunked footer, type 2", pad(zfooter("GNUlInUx", 108, 50, 80, 2), 400), nil, index.ErrFormat},
		{"zstd:chunked footer, TOC past the footer", pad(zfooter("GNUlInUx", 108, 5000, 80, 1), 400), nil, index.ErrFormat},
		{"zstd:chunked footer, TOC offset wraps", pad(zfooter("GNUlInUx", 1<<63, 1<<63, 80, 1), 400), nil, index.ErrFormat},
		{"zstd:chunked footer, tar-split outside", pad(zfooter("GNUlInUx", 108, 50, 80, 1, 1<<40, 10), 400), nil, index.ErrFormat},
		{"position annotation: 3 fields", make([]byte, 400), map[string]string{AnnotationManifestPosition: "10:20:30"}, index.ErrFormat},
		{"position annotation: not numbers", make([]byte, 400), map[string]string{AnnotationManifestPosition: "a:b:c:1"}, index.ErrFormat},
		{"position annotation: negative", make([]byte, 400), map[string]string{AnnotationManifestPosition: "-10:20:30:1"}, index.ErrFormat},
		{"position annotation: type 2", make([]byte, 400), map[string]string{AnnotationManifestPosition: "10:20:30:2"}, index.ErrFormat},
		{"position annotation: past the blob", make([]byte, 400), map[string]string{AnnotationManifestPosition: "300:200:30:1"}, index.ErrFormat},
		{"position annotation: no frame header", make([]byte, 400), map[string]string{AnnotationManifestPosition: "4:20:30:1"}, index.ErrFormat},
		{"position annotation: empty TOC", make([]byte, 400), map[string]string{AnnotationManifestPosition: "10:0:30:1"}, index.ErrFormat},
		{"position annotation: legacy key", make([]byte, 400), map[string]string{"io.containers.zstd-chunked.manifest-position": "10:20:30:1"}, nil},
		{"tar-split annotation past the blob", make([]byte, 400), map[string]string{AnnotationManifestPosition: "10:20:30:1", AnnotationTarSplitPosition: "390:20:5"}, index.ErrFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			desc := ocispec.Descriptor{Size: int64(len(tc.blob)), Annotations: tc.ann}
			loc, err := Locate(desc, tail(tc.blob), Options{})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Locate = %v, want success", err)
				}
				if loc.Offset < 0 || loc.Offset+loc.Size > desc.Size || loc.PayloadEnd > loc.Offset {
					t.Errorf("Locate = %+v: range outside the blob", loc)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Locate = %+v, %v; want %v", loc, err, tc.want)
			}
		})
	}
	t.Run("tail longer than the blob", func(t *testing.T) {
		_, err := Locate(ocispec.Descriptor{Size: 10}, make([]byte, 20), Options{})
		if !errors.Is(err, index.ErrFormat) {
			t.Fatalf("Locate = %v, want ErrFormat", err)
		}
	})
	t.Run("no size", func(t *testing.T) {
		_, err := Locate(ocispec.Descriptor{}, nil, Options{})
		if !errors.Is(err, index.ErrFormat) {
			t.Fatalf("Locate = %v, want ErrFormat", err)
		}
	})
}
