package fetch

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
)

// Sentinel errors that callers branch on with [errors.Is].
var (
	// ErrNotFound reports that a tag, manifest, blob or cache entry is absent
	// (HTTP 404, MANIFEST_UNKNOWN, BLOB_UNKNOWN, no such file).
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized reports that the registry still answered 401 or 403
	// after the credentials from the keychain were tried.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrFormat reports bad bytes from outside: a malformed or oversized
	// manifest, index or config, an unknown manifest media type, a digest or
	// size mismatch. It is one of the shared kinds (see "Errors" in the
	// package doc): errors.Is(err, ErrFormat) also holds for index's and
	// fs's ErrFormat errors, and theirs for ours.
	ErrFormat error = kind("invalid input")
	// ErrDigest is wrapped by every [*DigestError]; like ErrFormat it is a
	// shared kind, so it matches the digest mismatches of index/toc and fs.
	ErrDigest error = kind("digest mismatch")
)

// kind is the type of the sentinels that fetch, index and fs share without
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

// DigestError reports bytes whose digest is not the one the caller supplied.
// It wraps [ErrDigest] and [ErrFormat], so errors.Is(err, ErrDigest) and
// errors.Is(err, ErrFormat) hold (with any package's sentinels of those kinds).
type DigestError struct {
	What   string        // what was checked: "blob sha256:… from registry.example/app"
	Want   digest.Digest // the digest that was expected
	Got    digest.Digest // the digest of the bytes received
	Offset int64         // offset of the checked bytes within the blob (0 for whole blobs)
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("invalid input: %s: digest mismatch: want %s, got %s", e.What, e.Want, e.Got)
}

// Unwrap makes errors.Is(err, ErrDigest) and errors.Is(err, ErrFormat) true.
func (e *DigestError) Unwrap() []error { return []error{ErrDigest, ErrFormat} }

// formatError builds an "invalid input: …" error that wraps ErrFormat.
func formatError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// sizeError reports a blob whose length differs from its descriptor.
func sizeError(what string, want, got int64, more bool) error {
	if more {
		return formatError("%s: more than the %d bytes its descriptor declares", what, want)
	}
	return formatError("%s: %d bytes, want %d", what, got, want)
}

// loginHint is appended to every authorization failure so the user knows
// which files ocifs reads credentials from.
const loginHint = "(ocifs reads $DOCKER_CONFIG/config.json, ~/.docker/config.json and ${XDG_RUNTIME_DIR}/containers/auth.json)"

// unauthorizedError is the error for a 401 or 403 from host for repo
// (repo is "HOST/REPO").
func unauthorizedError(status int, host, repo string) error {
	return fmt.Errorf("registry answered %d %s for %s; log in with `docker login %s` or `podman login %s` %s: %w",
		status, http.StatusText(status), repo, host, host, loginHint, ErrUnauthorized)
}

// registryError turns a non-success response or a transport error from the
// registry into an error that says what was being done and what to do next.
// what names the object ("HOST/REPO:TAG", "blob sha256:… from HOST/REPO");
// host and repo are used for the login hint.
func registryError(err error, what, host, repo string, manifest bool) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %w", what, err)
	}
	status := te.StatusCode
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.BlobUnknownErrorCode, transport.NameUnknownErrorCode:
			status = http.StatusNotFound
		case transport.UnauthorizedErrorCode:
			status = http.StatusUnauthorized
		case transport.DeniedErrorCode:
			if status != http.StatusUnauthorized {
				status = http.StatusForbidden
			}
		}
	}
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return unauthorizedError(status, host, repo)
	case http.StatusNotFound:
		if manifest {
			return fmt.Errorf("%s: manifest not found (check the tag with `skopeo list-tags docker://%s`): %w", what, repo, ErrNotFound)
		}
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}
