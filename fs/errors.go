package fs

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Errors shared with fetch and index.
//
// fetch and index do not import each other, yet both report bad outside
// bytes and digest mismatches, and this package (and cmd) branch on those
// without caring which package found them. So ErrFormat ("invalid input")
// and ErrDigest ("digest mismatch") are kinds, not identities: fetch, index
// (with index/toc) and fs each declare their own, and each sentinel has an
// exported ErrorKind() string method and an Is method matching any error
// that reports the same kind. errors.Is(err, fs.ErrFormat) therefore holds
// for an error wrapping fetch.ErrFormat or index.ErrFormat, and
// errors.Is(err, fetch.ErrFormat) for one wrapping fs.ErrFormat. Each
// package builds only its own error types: the checks fs makes itself (a
// span, a cached file, an uncompressed layer against its DiffID) report an
// fs [*DigestError], never a fetch one.
var (
	// ErrFormat marks errors caused by the image's bytes (a hardlink to a
	// missing file, a path through a file, a layer whose index disagrees
	// with its tar), as opposed to our own failures.
	ErrFormat error = kind("invalid input")
	// ErrDigest is wrapped by every digest mismatch, this package's
	// [*DigestError] and, being a shared kind, fetch's and index/toc's.
	ErrDigest error = kind("digest mismatch")
)

// kind is the type of the sentinels fs shares with fetch and index. Two
// kinds match, whatever package declared them, when their ErrorKind strings
// are equal; Is lets errors.Is see that.
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

// DigestError reports bytes fs checked itself whose digest is not the one
// expected: a span against the index, a cached file or an uncompressed layer
// against the config's DiffID. It wraps [ErrDigest] and [ErrFormat], so both
// (and fetch's and index's sentinels of those kinds) match it with
// errors.Is.
type DigestError struct {
	What   string        // what was checked: "span", "uncompressed layer sha256:…"
	Want   digest.Digest // the digest that was expected
	Got    digest.Digest // the digest of the bytes read
	Offset int64         // offset of the checked bytes (0 for whole files)
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("invalid input: %s: digest mismatch: want %s, got %s", e.What, e.Want, e.Got)
}

// Unwrap makes errors.Is(err, ErrDigest) and errors.Is(err, ErrFormat) true.
func (e *DigestError) Unwrap() []error { return []error{ErrDigest, ErrFormat} }
