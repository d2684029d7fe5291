package fetch

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

// layoutPrefix marks a reference to an OCI image layout on disk.
const layoutPrefix = "oci:"

// Reference is a parsed image reference: a repository in a registry, or an
// OCI image layout directory, with an optional tag and an optional pinned
// digest.
type Reference struct {
	// Layout is the OCI image layout directory of an "oci:" reference
	// (made absolute); "" for a registry reference.
	Layout string
	// Registry is the registry host ("index.docker.io", "localhost:5000");
	// "" for a layout.
	Registry string
	// Repository is the repository path in the registry ("library/alpine");
	// "" for a layout.
	Repository string
	// Tag is the tag asked for, "" if none. A registry reference without tag
	// or digest gets "latest". A layout reference without tag or digest
	// keeps "" (the only manifest, or "latest").
	Tag string
	// Digest is the pinned manifest digest, "" if none.
	Digest digest.Digest

	repo name.Repository // registry references only
}

// String returns the reference fully qualified: "index.docker.io/library/alpine:3.20",
// "localhost:5000/app@sha256:…", "oci:/abs/dir:tag".
func (r Reference) String() string {
	var b strings.Builder
	if r.Layout != "" {
		b.WriteString(layoutPrefix)
		b.WriteString(r.Layout)
	} else {
		b.WriteString(r.Registry)
		b.WriteByte('/')
		b.WriteString(r.Repository)
	}
	if r.Tag != "" {
		b.WriteByte(':')
		b.WriteString(r.Tag)
	}
	if r.Digest != "" {
		b.WriteByte('@')
		b.WriteString(r.Digest.String())
	}
	return b.String()
}

// repoName is "HOST/REPO" for messages.
func (r Reference) repoName() string {
	if r.Layout != "" {
		return layoutPrefix + r.Layout
	}
	return r.Registry + "/" + r.Repository
}

// ParseReference parses `[registry/]repository[:tag][@sha256:…]` with
// Docker's defaults (docker.io, library/, latest), or an OCI image layout
// reference `oci:PATH[:tag]` / `oci:PATH@sha256:…`. In a layout reference
// the last ':' after the last '/' separates the tag, so PATH may contain ':'
// only in its directory part. Registries on loopback addresses are marked
// for plain HTTP; insecure marks every registry so (see [Options.Insecure]).
func ParseReference(s string) (Reference, error) {
	return parseReference(s, false)
}

func parseReference(s string, insecure bool) (Reference, error) {
	if strings.HasPrefix(s, layoutPrefix) {
		return parseLayoutReference(s)
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return Reference{}, fmt.Errorf("parse image reference %q: %w", s, err)
	}
	if insecure || isLoopback(ref.Context().RegistryStr()) {
		ref, err = name.ParseReference(s, name.Insecure)
		if err != nil {
			return Reference{}, fmt.Errorf("parse image reference %q: %w", s, err)
		}
	}
	repo := ref.Context()
	r := Reference{Registry: repo.RegistryStr(), Repository: repo.RepositoryStr(), repo: repo}
	switch ref := ref.(type) {
	case name.Tag:
		r.Tag = ref.TagStr()
	case name.Digest:
		d, err := digest.Parse(ref.DigestStr())
		if err != nil {
			return Reference{}, fmt.Errorf("parse image reference %q: %w", s, err)
		}
		r.Digest = d
		// name.Digest drops a tag given beside the digest; keep it for display.
		base, _, _ := strings.Cut(s, "@")
		if t, err := name.NewTag(base); err == nil && strings.Contains(base[strings.LastIndex(base, "/")+1:], ":") {
			r.Tag = t.TagStr()
		}
	}
	return r, nil
}

// isLoopback reports whether host[:port] names a loopback address:
// localhost, 127.0.0.0/8 or ::1.
func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseLayoutReference parses "oci:PATH[:tag]" and "oci:PATH@sha256:…".
func parseLayoutReference(s string) (Reference, error) {
	rest := strings.TrimPrefix(s, layoutPrefix)
	var r Reference
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		d, err := digest.Parse(rest[at+1:])
		if err != nil {
			return Reference{}, fmt.Errorf("parse image reference %q: digest: %w", s, err)
		}
		r.Digest = d
		rest = rest[:at]
	} else {
		slash := strings.LastIndex(rest, "/")
		if colon := strings.LastIndex(rest, ":"); colon > slash {
			r.Tag = rest[colon+1:]
			rest = rest[:colon]
			if r.Tag == "" {
				return Reference{}, fmt.Errorf("parse image reference %q: empty tag after ':'", s)
			}
		}
	}
	if rest == "" {
		return Reference{}, fmt.Errorf("parse image reference %q: no layout directory after %q", s, layoutPrefix)
	}
	if strings.ContainsRune(rest, 0) || strings.ContainsRune(r.Tag, 0) {
		return Reference{}, fmt.Errorf("parse image reference %q: NUL byte", s)
	}
	dir, err := filepath.Abs(rest)
	if err != nil {
		return Reference{}, fmt.Errorf("parse image reference %q: %w", s, err)
	}
	r.Layout = dir
	return r, nil
}
