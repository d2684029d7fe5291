package fs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/index"
	"github.com/ocifs/ocifs/index/toc"
)

// TestErrorKindsAcrossPackages checks the vocabulary in errors.go: an error
// of the shared kinds ErrFormat and ErrDigest, made by any of fetch, index,
// index/toc and fs (by their real code paths where one is cheap), matches
// every package's sentinel of that kind with errors.Is, and nothing else.
func TestErrorKindsAcrossPackages(t *testing.T) {
	_, fetchFormat := fetch.ParseIndex([]byte("{not json"))
	_, indexFormat := index.Build(strings.NewReader(strings.Repeat("not a tar ", 100)), index.Options{})
	_, fsFormat := Merge(layers([]index.Entry{reg("f", 1)}, []index.Entry{hard("l", "g")}))
	tocDigest := tocChunkMismatch(t)
	fetchDigest := error(&fetch.DigestError{What: "blob", Want: digest.FromString("a"), Got: digest.FromString("b")})
	fsDigest := error(&DigestError{What: "span", Want: digest.FromString("a"), Got: digest.FromString("b")})

	formats := map[string]error{"fetch": fetch.ErrFormat, "index": index.ErrFormat, "fs": ErrFormat}
	digests := map[string]error{"fetch": fetch.ErrDigest, "index": index.ErrDigest, "toc": toc.ErrDigest, "fs": ErrDigest}
	for _, tc := range []struct {
		name           string
		err            error
		format, digest bool
	}{
		{"fetch ErrFormat (ParseIndex)", fetchFormat, true, false},
		{"index ErrFormat (Build)", indexFormat, true, false},
		{"fs ErrFormat (Merge)", fsFormat, true, false},
		{"fetch DigestError", fetchDigest, true, true},
		{"toc DigestError (DecodeChunk)", tocDigest, true, true},
		{"fs DigestError", fsDigest, true, true},
		{"wrapped fs DigestError", fmt.Errorf("layer x: %w", fsDigest), true, true},
		{"fetch ErrNotFound", fmt.Errorf("blob: %w", fetch.ErrNotFound), false, false},
		{"index ErrUnsupported", index.ErrUnsupported, false, false},
		{"io.ErrUnexpectedEOF", io.ErrUnexpectedEOF, false, false},
		{"same text, no kind", errors.New("invalid input"), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("the code path gave no error; the case is wrong")
			}
			for pkg, target := range formats {
				if got := errors.Is(tc.err, target); got != tc.format {
					t.Errorf("errors.Is(%v, %s.ErrFormat) = %v, want %v", tc.err, pkg, got, tc.format)
				}
			}
			for pkg, target := range digests {
				if got := errors.Is(tc.err, target); got != tc.digest {
					t.Errorf("errors.Is(%v, %s.ErrDigest) = %v, want %v", tc.err, pkg, got, tc.digest)
				}
			}
		})
	}

	// The kinds differ from each other, and each package keeps its types.
	if errors.Is(ErrFormat, fetch.ErrDigest) || errors.Is(index.ErrDigest, ErrFormat) {
		t.Error("ErrFormat and ErrDigest match each other; want two kinds")
	}
	var fd *fetch.DigestError
	var td *toc.DigestError
	var sd *DigestError
	if !errors.As(fetchDigest, &fd) || !errors.As(tocDigest, &td) || !errors.As(fsDigest, &sd) {
		t.Error("errors.As does not find each package's own DigestError")
	}
	if errors.As(fsDigest, &fd) || errors.As(fetchDigest, &sd) {
		t.Error("errors.As finds one package's DigestError as another's")
	}
}

// tocChunkMismatch returns the error toc.DecodeChunk gives for a gzip chunk
// whose bytes decode fine but do not match the digest its TOC names.
func tocChunkMismatch(t *testing.T) error {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	c := toc.Chunk{C: 0, CEnd: int64(b.Len()), Size: 5, Digest: digest.FromString("not hello")}
	data, err := toc.DecodeChunk(toc.FormatEstargz, c, b.Bytes())
	if err == nil || data != nil {
		t.Fatalf("DecodeChunk(wrong digest) = %q, %v; want no data and an error", data, err)
	}
	return err
}
