package index

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// ErrFormat is wrapped by every error that bad layer or index bytes cause:
// a corrupt gzip or zstd stream, a malformed tar header, a sparse file, a cap
// exceeded, a damaged index. Callers branch on it with errors.Is to tell a
// hostile or broken image from a failure of their own. It is a shared kind
// (see "Errors shared with fetch and fs" in the package doc): errors.Is
// matches it with fetch's and fs's ErrFormat, both ways.
var ErrFormat error = kind("invalid input")

// ErrDigest is wrapped by every digest mismatch this package and index/toc
// report (index/toc's DigestError); like ErrFormat it is a shared kind, so it
// matches fetch's and fs's ErrDigest, both ways.
var ErrDigest error = kind("digest mismatch")

// kind is the type of the sentinels that index, fetch and fs share without
// importing each other. Two kinds match, whatever package declared them, when
// their ErrorKind strings are equal; Is lets errors.Is see that.
type kind string

func (k kind) Error() string { return string(k) }

// ErrorKind names the kind; any error with an equal ErrorKind is the same
// kind to [errors.Is].
func (k kind) ErrorKind() string { return string(k) }

// Is reports whether target is a sentinel of the same kind, from any package.
func (k kind) Is(target error) bool {
	t, ok := target.(interface{ ErrorKind() string })
	return ok && t.ErrorKind() == string(k)
}

// ErrUnsupported is wrapped by the error [Decompress] and
// [MediaTypeCompression] return for a layer media type they do not know.
var ErrUnsupported = errors.New("unsupported layer media type")

// formatErrorf returns an error wrapping [ErrFormat] whose message reads
// "invalid input: " followed by the formatted text, so that bytes from outside
// never look like a bug of ours.
func formatErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFormat}, args...)...)
}

// maxQuotedName is how much of a hostile name an error message repeats.
const maxQuotedName = 256

// entryErrorf returns an [ErrFormat] error about the tar entry called name:
// `invalid input: tar entry "NAME": ...`. Names longer than maxQuotedName are
// cut short so a megabyte-long name cannot flood a log.
func entryErrorf(name, format string, args ...any) error {
	return fmt.Errorf("%w: tar entry %q: "+format, append([]any{ErrFormat, shortName(name)}, args...)...)
}

// shortName cuts a name from a layer to maxQuotedName bytes for a message.
func shortName(name string) string {
	if len(name) > maxQuotedName {
		return name[:maxQuotedName] + "..."
	}
	return name
}

// The compressions a layer may use, as [MediaTypeCompression] names them.
const (
	compressionNone = "none"
	compressionGzip = "gzip"
	compressionZstd = "zstd"
)

// layerMediaTypes maps each layer media type ocifs reads to its compression.
// The OCI types are from the image-spec (layer.md), the Docker ones from the
// image manifest v2 schema 2 specification.
var layerMediaTypes = map[string]string{
	"application/vnd.oci.image.layer.v1.tar":                       compressionNone,
	"application/vnd.oci.image.layer.v1.tar+gzip":                  compressionGzip,
	"application/vnd.oci.image.layer.v1.tar+zstd":                  compressionZstd,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      compressionNone,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": compressionGzip,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": compressionZstd,
	"application/vnd.docker.image.rootfs.diff.tar":                 compressionNone,
	"application/vnd.docker.image.rootfs.diff.tar.gzip":            compressionGzip,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    compressionGzip,
}

// Caps on what a zstd frame header may make the decoder allocate. Frames
// written by `zstd --long=27` (128 MiB windows) still decode; larger windows
// are refused rather than allowed to claim gigabytes of memory.
const (
	zstdMaxWindow = 128 << 20
	zstdMaxMemory = 1 << 30
)

// The magic numbers that open a gzip member (RFC 1952: ID1, ID2, CM=deflate)
// and a zstd frame (RFC 8878).
var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// MediaTypeCompression returns the compression a layer media type implies:
// "gzip", "zstd" or "none" (a plain tar). An unknown media type gives an error
// wrapping [ErrUnsupported] that lists the supported ones.
func MediaTypeCompression(mediaType string) (string, error) {
	c, ok := layerMediaTypes[mediaType]
	if !ok {
		return "", fmt.Errorf("%w %q; supported: %s", ErrUnsupported, mediaType, supportedMediaTypes())
	}
	return c, nil
}

// supportedMediaTypes lists the known layer media types, sorted, for error
// messages.
func supportedMediaTypes() string {
	names := make([]string, 0, len(layerMediaTypes))
	for mt := range layerMediaTypes {
		names = append(names, mt)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Decompress returns the uncompressed tar stream of a layer blob r whose
// media type is mediaType.
//
// The decoder is chosen by the media type, and the first bytes must agree with
// it: a "+gzip" layer that does not start with the gzip magic is an
// [ErrFormat] error, not something to guess about, and so is an uncompressed
// layer that starts with a gzip or zstd magic. Gzip input may hold several
// concatenated members (as pigz and some registries write); each member's
// CRC-32 and length are checked when its end is read, so a caller must read
// the stream to io.EOF for the check to happen ([Build] does). Zstd frames
// declaring a window above 128 MiB are refused to bound memory.
//
// Errors from reading r are returned unchanged (wrapped with context); errors
// caused by the compressed bytes wrap [ErrFormat]. The caller must Close the
// result to release the decoder.
func Decompress(mediaType string, r io.Reader) (io.ReadCloser, error) {
	kind, err := MediaTypeCompression(mediaType)
	if err != nil {
		return nil, err
	}
	src := &sourceReader{r: r}
	head := make([]byte, len(zstdMagic))
	n, err := io.ReadFull(src, head)
	head = head[:n]
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("reading layer header: %w", err)
	}
	body := io.MultiReader(bytes.NewReader(head), src)

	switch kind {
	case compressionNone:
		switch {
		case bytes.HasPrefix(head, gzipMagic):
			return nil, formatErrorf("layer is gzip-compressed but media type %s says uncompressed tar", mediaType)
		case bytes.HasPrefix(head, zstdMagic):
			return nil, formatErrorf("layer is zstd-compressed but media type %s says uncompressed tar", mediaType)
		}
		return io.NopCloser(body), nil

	case compressionGzip:
		if !bytes.HasPrefix(head, gzipMagic) {
			return nil, formatErrorf("layer is not gzip (starts with %s)", describeHead(head))
		}
		zr, err := gzip.NewReader(body)
		if err != nil {
			return nil, src.wrap(compressionGzip, err)
		}
		zr.Multistream(true)
		return &layerReader{kind: compressionGzip, r: zr, src: src, close: zr.Close}, nil

	case compressionZstd:
		if !bytes.HasPrefix(head, zstdMagic) {
			return nil, formatErrorf("layer is not zstd (starts with %s)", describeHead(head))
		}
		zr, err := zstd.NewReader(body,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(zstdMaxWindow),
			zstd.WithDecoderMaxMemory(zstdMaxMemory),
		)
		if err != nil {
			return nil, fmt.Errorf("creating zstd decoder: %w", err)
		}
		closeZstd := func() error { zr.Close(); return nil }
		return &layerReader{kind: compressionZstd, r: zr, src: src, close: closeZstd}, nil
	}
	return nil, fmt.Errorf("%w %q: compression %q has no decoder", ErrUnsupported, mediaType, kind)
}

// describeHead renders the first bytes of a layer for an error message.
func describeHead(head []byte) string {
	if len(head) == 0 {
		return "nothing: the layer is empty"
	}
	return fmt.Sprintf("% x", head)
}

// sourceReader remembers the first error other than io.EOF that the blob
// reader returned, so decoder errors caused by the transport are not
// mistaken for bad bytes.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// wrap turns an error from a decoder reading s into the error Decompress
// returns: the source's own error if it failed, a truncation or corruption
// error wrapping ErrFormat otherwise.
func (s *sourceReader) wrap(kind string, err error) error {
	switch {
	case s.err != nil:
		return fmt.Errorf("reading %s layer: %w", kind, s.err)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return formatErrorf("%s stream truncated", kind)
	case errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return fmt.Errorf("%w: zstd stream: window larger than the %d MiB cap: %w", ErrFormat, zstdMaxWindow>>20, err)
	}
	return fmt.Errorf("%w: %s stream: %w", ErrFormat, kind, err)
}

// layerReader is the io.ReadCloser Decompress returns: a gzip or zstd reader
// whose errors are classified by the source that fed it.
type layerReader struct {
	kind  string
	r     io.Reader
	src   *sourceReader
	close func() error
	err   error // sticky: the first error returned
}

func (d *layerReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.r.Read(p)
	if err != nil {
		if err != io.EOF {
			err = d.src.wrap(d.kind, err)
		}
		d.err = err
	}
	return n, err
}

func (d *layerReader) Close() error {
	if d.close == nil {
		return nil
	}
	err := d.close()
	d.close = nil
	return err
}
