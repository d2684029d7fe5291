package index

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

const (
	mtTar      = "application/vnd.oci.image.layer.v1.tar"
	mtGzip     = "application/vnd.oci.image.layer.v1.tar+gzip"
	mtZstd     = "application/vnd.oci.image.layer.v1.tar+zstd"
	mtDocker   = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtDockerFg = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

func gzipBytes(tb testing.TB, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func zstdBytes(tb testing.TB, data []byte) []byte {
	tb.Helper()
	zw, err := zstd.NewWriter(nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer zw.Close()
	return zw.EncodeAll(data, nil)
}

// decompressAll runs Decompress and reads the result to EOF.
func decompressAll(mediaType string, r io.Reader) ([]byte, error) {
	rc, err := Decompress(mediaType, r)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestMediaTypeCompression(t *testing.T) {
	tests := []struct {
		mediaType, want string
	}{
		{mtTar, "none"},
		{mtGzip, "gzip"},
		{mtZstd, "zstd"},
		{"application/vnd.oci.image.layer.nondistributable.v1.tar", "none"},
		{"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"},
		{"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"},
		{"application/vnd.docker.image.rootfs.diff.tar", "none"},
		{mtDocker, "gzip"},
		{mtDockerFg, "gzip"},
	}
	for _, tt := range tests {
		got, err := MediaTypeCompression(tt.mediaType)
		if err != nil || got != tt.want {
			t.Errorf("MediaTypeCompression(%q) = %q, %v; want %q", tt.mediaType, got, err, tt.want)
		}
	}
	for _, mt := range []string{"", "application/vnd.oci.image.layer.v1.tar+bzip2", "application/vnd.oci.image.config.v1+json", mtGzip + " "} {
		_, err := MediaTypeCompression(mt)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "unsupported layer media type "+`"`+mt+`"`) || !strings.Contains(err.Error(), mtZstd) {
			t.Errorf("MediaTypeCompression(%q) error = %v, want ErrUnsupported naming it and listing the supported types", mt, err)
		}
		if _, err := Decompress(mt, bytes.NewReader(nil)); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Decompress(%q) error = %v, want ErrUnsupported", mt, err)
		}
	}
}

func TestDecompress(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	half := len(raw) / 3
	multi := append(gzipBytes(t, raw[:half]), gzipBytes(t, raw[half:])...)
	multiZstd := append(zstdBytes(t, raw[:half]), zstdBytes(t, raw[half:])...)
	tests := []struct {
		name, mediaType string
		blob            []byte
	}{
		{"plain", mtTar, raw},
		{"docker plain", "application/vnd.docker.image.rootfs.diff.tar", raw},
		{"gzip", mtGzip, gzipBytes(t, raw)},
		{"docker gzip", mtDocker, gzipBytes(t, raw)},
		{"foreign gzip", mtDockerFg, gzipBytes(t, raw)},
		{"gzip two members", mtGzip, multi},
		{"gzip empty member first", mtGzip, append(gzipBytes(t, nil), gzipBytes(t, raw)...)},
		{"zstd", mtZstd, zstdBytes(t, raw)},
		{"zstd two frames", mtZstd, multiZstd},
		{"plain empty", mtTar, nil},
	}
	want, err := Build(bytes.NewReader(raw), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decompressAll(tt.mediaType, bytes.NewReader(tt.blob))
			if err != nil {
				t.Fatalf("Decompress: %v", err)
			}
			wantBytes := raw
			if len(tt.blob) == 0 {
				wantBytes = nil
			}
			if !bytes.Equal(got, wantBytes) {
				t.Fatalf("Decompress gave %d bytes, want the %d of the tar", len(got), len(wantBytes))
			}
			if len(wantBytes) == 0 {
				return
			}
			// One byte at a time, through Build.
			rc, err := Decompress(tt.mediaType, oneByteReader{bytes.NewReader(tt.blob)})
			if err != nil {
				t.Fatalf("Decompress: %v", err)
			}
			defer rc.Close()
			tab, err := Build(rc, Options{})
			if err != nil {
				t.Fatalf("Build(Decompress): %v", err)
			}
			if !reflect.DeepEqual(tab, want) {
				t.Errorf("Build(Decompress) differs from Build of the plain tar")
			}
		})
	}
}

// oneByteReader reads one byte at a time, to shake out buffering bugs.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

func TestDecompressRejects(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	gz := gzipBytes(t, raw)
	flip := func(b []byte, i int) []byte {
		b = append([]byte(nil), b...)
		b[(i+len(b))%len(b)] ^= 0x55
		return b
	}
	// A zstd frame declaring a 1 GiB window: magic, frame header
	// descriptor 0, window descriptor exponent 20 (windowLog 30), then an
	// empty last raw block.
	bigWindow := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x01, 0x00, 0x00}
	tests := []struct {
		name, mediaType string
		blob            []byte
		wantErr         string
	}{
		{"gzip says plain", mtGzip, raw, "invalid input: layer is not gzip (starts with 2e 2f 00 00)"},
		{"gzip says zstd", mtGzip, zstdBytes(t, raw), "invalid input: layer is not gzip (starts with 28 b5 2f fd)"},
		{"zstd says gzip", mtZstd, gz, "invalid input: layer is not zstd (starts with 1f 8b 08"},
		{"plain says gzip", mtTar, gz, "invalid input: layer is gzip-compressed but media type " + mtTar + " says uncompressed tar"},
		{"plain says zstd", mtTar, zstdBytes(t, raw), "layer is zstd-compressed"},
		{"gzip empty", mtGzip, nil, "invalid input: layer is not gzip (starts with nothing: the layer is empty)"},
		{"gzip short", mtGzip, gz[:2], "layer is not gzip (starts with 1f 8b)"},
		{"gzip bad crc", mtGzip, flip(gz, -8), "invalid input: gzip stream: gzip: invalid checksum"},
		{"gzip bad size", mtGzip, flip(gz, -1), "invalid input: gzip stream: gzip: invalid checksum"},
		{"gzip corrupt deflate", mtGzip, flip(gz, 40), "invalid input: gzip stream"},
		{"gzip truncated", mtGzip, gz[:len(gz)-4], "invalid input: gzip stream truncated"},
		{"gzip truncated header", mtGzip, gz[:5], "invalid input: gzip stream truncated"},
		{"gzip trailing garbage", mtGzip, append(append([]byte(nil), gz...), "garbage"...), "invalid input: gzip stream"},
		{"zstd truncated", mtZstd, zstdBytes(t, raw)[:100], "invalid input: zstd stream truncated"},
		{"zstd corrupt", mtZstd, flip(zstdBytes(t, raw), 30), "invalid input: zstd stream"},
		{"zstd trailing garbage", mtZstd, append(zstdBytes(t, raw), "garbage"...), "invalid input: zstd stream"},
		{"zstd window too large", mtZstd, bigWindow, "invalid input: zstd stream: window larger than the 128 MiB cap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decompressAll(tt.mediaType, bytes.NewReader(tt.blob))
			if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Decompress = %v, want an ErrFormat error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDecompressGzipChecksumThroughBuild(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	gz := gzipBytes(t, raw)
	gz[len(gz)-6] ^= 1 // CRC-32, read only after the tar's end marker
	rc, err := Decompress(mtGzip, bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := Build(rc, Options{}); !errors.Is(err, ErrFormat) || !errors.Is(err, gzip.ErrChecksum) {
		t.Fatalf("Build = %v, want the gzip checksum error", err)
	}
}

func TestDecompressSourceError(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	errNetwork := errors.New("connection reset")
	for name, blob := range map[string][]byte{
		"gzip": gzipBytes(t, raw),
		"zstd": zstdBytes(t, raw),
		"none": raw,
	} {
		mt := map[string]string{"gzip": mtGzip, "zstd": mtZstd, "none": mtTar}[name]
		for _, cut := range []int{0, 2, 20, len(blob) / 2} {
			_, err := decompressAll(mt, &errReader{data: blob[:cut], err: errNetwork})
			if !errors.Is(err, errNetwork) || errors.Is(err, ErrFormat) {
				t.Errorf("%s cut at %d: Decompress = %v, want the reader's error, not ErrFormat", name, cut, err)
			}
		}
	}
}

func TestDecompressClose(t *testing.T) {
	raw, _, _ := fixtureTar(t)
	for mt, blob := range map[string][]byte{mtGzip: gzipBytes(t, raw), mtZstd: zstdBytes(t, raw), mtTar: raw} {
		rc, err := Decompress(mt, bytes.NewReader(blob))
		if err != nil {
			t.Fatalf("Decompress(%s): %v", mt, err)
		}
		if err := rc.Close(); err != nil {
			t.Errorf("Close(%s) = %v", mt, err)
		}
		if err := rc.Close(); err != nil {
			t.Errorf("second Close(%s) = %v", mt, err)
		}
	}
}
