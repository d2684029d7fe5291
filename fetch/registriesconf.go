package fetch

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/pelletier/go-toml/v2"
)

// containers-registries.conf(5), version 2, as podman, CRI-O and skopeo
// read it: [[registry]] tables choose, by the longest prefix of an image's
// name, where its content really lives (location), whether it may be
// pulled at all (blocked) or over plain HTTP (insecure), and the mirrors
// ([[registry.mirror]]) to try before it. Drop-in files in the
// registries.conf.d directory beside the file are read after it in name
// order, and a [[registry]] in a drop-in replaces one of the same prefix.
//
// Where ocifs differs from containers/image:
//   - Unknown keys are errors naming the file and key (containers/image
//     ignores them); the keys it reads but does not use (short names,
//     search registries, credential helpers) are accepted.
//   - Version 1 files ([registries.search] and friends, which have no
//     mirrors) are rejected with a message saying so.
//   - A prefix matches an image name only at a '/' (or the end):
//     "example.com" does not match "example.com:5000/app", which
//     containers/image matches but documents as unintended.
//   - Mirrors are tried per request rather than per image: containers/image
//     reads every blob from the first source whose manifest it got, ocifs
//     falls through to the next host for a blob a mirror lacks (safe: each
//     blob is checked against its digest). Which mirrors take part is
//     decided per image, as pull-from-mirror says, from whether the image
//     was named by digest or by tag.

// DefaultRegistriesConf is the system-wide registries.conf of podman and
// CRI-O.
const DefaultRegistriesConf = "/etc/containers/registries.conf"

// pull-from-mirror values.
const (
	mirrorAll        = "all"
	mirrorDigestOnly = "digest-only"
	mirrorTagOnly    = "tag-only"
)

// regFile is one registries.conf or drop-in file.
type regFile struct {
	Registries []regEntry `toml:"registry"`

	// Read by podman, not used by ocifs (which takes Docker's defaults
	// for short names); accepted so a system file loads.
	UnqualifiedSearchRegistries    []string          `toml:"unqualified-search-registries"`
	CredentialHelpers              []string          `toml:"credential-helpers"`
	ShortNameMode                  string            `toml:"short-name-mode"`
	AdditionalLayerStoreAuthHelper string            `toml:"additional-layer-store-auth-helper"`
	Aliases                        map[string]string `toml:"aliases"`

	// V1 is the version 1 format's [registries.*] tables.
	V1 any `toml:"registries"`
}

// regEntry is one [[registry]].
type regEntry struct {
	Prefix             string      `toml:"prefix"`
	Location           string      `toml:"location"`
	Insecure           bool        `toml:"insecure"`
	Blocked            bool        `toml:"blocked"`
	MirrorByDigestOnly bool        `toml:"mirror-by-digest-only"`
	PullFromMirror     string      `toml:"pull-from-mirror"`
	Mirrors            []regMirror `toml:"mirror"`

	origin string // the file it came from
}

// regMirror is one [[registry.mirror]].
type regMirror struct {
	Location       string `toml:"location"`
	Insecure       bool   `toml:"insecure"`
	PullFromMirror string `toml:"pull-from-mirror"`
}

// registriesConf is a loaded registries.conf with its drop-ins: the
// [[registry]] tables, one per prefix.
type registriesConf struct {
	files      []string
	registries []regEntry
}

// loadRegistriesConf reads file (which must exist) and the *.conf files of
// file+".d" (if that directory exists) in name order.
func loadRegistriesConf(file string) (*registriesConf, error) {
	b, err := readConfigFile(file)
	if err != nil {
		return nil, fmt.Errorf("registries.conf: %w", err)
	}
	rc := &registriesConf{}
	if err := rc.add(file, b); err != nil {
		return nil, err
	}
	dir := file + ".d"
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("registries.conf: %w", err)
	}
	for _, e := range entries { // ReadDir sorts by name
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".conf") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := readConfigFile(p)
		if err != nil {
			return nil, fmt.Errorf("registries.conf drop-in: %w", err)
		}
		if err := rc.add(p, b); err != nil {
			return nil, err
		}
	}
	return rc, nil
}

// add parses one file and merges its registries: a prefix already known is
// replaced.
func (rc *registriesConf) add(file string, b []byte) error {
	regs, err := parseRegistriesConf(file, b)
	if err != nil {
		return err
	}
	rc.files = append(rc.files, file)
	for _, r := range regs {
		if i := slices.IndexFunc(rc.registries, func(o regEntry) bool { return o.Prefix == r.Prefix }); i >= 0 {
			rc.registries[i] = r
		} else {
			rc.registries = append(rc.registries, r)
		}
	}
	return nil
}

// parseRegistriesConf parses and checks one registries.conf (or drop-in)
// file's bytes; file names it in errors. Within a file the first
// [[registry]] of a prefix wins, as in containers/image.
func parseRegistriesConf(file string, b []byte) ([]regEntry, error) {
	if len(b) > maxConfigSize {
		return nil, formatError("%s: larger than %d bytes", file, maxConfigSize)
	}
	var f regFile
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, tomlError(file, err)
	}
	if f.V1 != nil {
		return nil, formatError("%s: key registries: this is the version 1 format, which has no mirrors; write [[registry]] tables (containers-registries.conf(5))", file)
	}
	var out []regEntry
	locations := map[string]regEntry{}
	for i, r := range f.Registries {
		where := fmt.Sprintf("%s: registry %d", file, i+1)
		var err error
		if r.Location, err = parseRegLocation(where, "location", r.Location); err != nil {
			return nil, err
		}
		if r.Prefix, err = parseRegLocation(where, "prefix", r.Prefix); err != nil {
			return nil, err
		}
		if r.Prefix == "" {
			if r.Location == "" {
				return nil, formatError("%s: neither prefix nor location is set", where)
			}
			r.Prefix = r.Location
		}
		where = fmt.Sprintf("%s: registry %q", file, r.Prefix)
		if r.Location != "" {
			if err := checkRegName(r.Location); err != nil {
				return nil, formatError("%s: key location: %v", where, err)
			}
		}
		if strings.HasPrefix(r.Prefix, "*.") {
			if strings.ContainsAny(r.Prefix, "/@:") || strings.Contains(r.Prefix[2:], "*") || len(r.Prefix) == 2 {
				return nil, formatError("%s: key prefix: a wildcard prefix must be *.example.com, with no port, path, tag or digest", where)
			}
		} else {
			if strings.Contains(r.Prefix, "*") {
				return nil, formatError("%s: key prefix: a wildcard may only begin the prefix (*.example.com)", where)
			}
			if r.Location == "" {
				return nil, formatError("%s: key location: unset, and the prefix is not a wildcard (*.example.com)", where)
			}
			if err := checkRegName(r.Prefix); err != nil {
				return nil, formatError("%s: key prefix: %v", where, err)
			}
		}
		if r.PullFromMirror != "" {
			return nil, formatError("%s: key pull-from-mirror: only a [[registry.mirror]] may have it", where)
		}
		for j := range r.Mirrors {
			m := &r.Mirrors[j]
			mwhere := fmt.Sprintf("%s: mirror %d", where, j+1)
			if m.Location, err = parseRegLocation(mwhere, "location", m.Location); err != nil {
				return nil, err
			}
			if m.Location == "" {
				return nil, formatError("%s: key location: unset", mwhere)
			}
			if err := checkRegName(m.Location); err != nil {
				return nil, formatError("%s: key location: %v", mwhere, err)
			}
			switch m.PullFromMirror {
			case "", mirrorAll, mirrorDigestOnly, mirrorTagOnly:
			default:
				return nil, formatError("%s: key pull-from-mirror: %q, want %s, %s or %s", mwhere, m.PullFromMirror, mirrorAll, mirrorDigestOnly, mirrorTagOnly)
			}
			if m.PullFromMirror != "" && r.MirrorByDigestOnly {
				return nil, formatError("%s: key pull-from-mirror: not allowed beside the registry's mirror-by-digest-only", mwhere)
			}
		}
		loc := cmp.Or(r.Location, r.Prefix)
		if o, ok := locations[loc]; ok && (o.Insecure != r.Insecure || o.Blocked != r.Blocked) {
			return nil, formatError("%s: location %q is given twice with different insecure or blocked settings", where, loc)
		}
		locations[loc] = r
		if slices.ContainsFunc(out, func(o regEntry) bool { return o.Prefix == r.Prefix }) {
			continue
		}
		r.origin = file
		out = append(out, r)
	}
	return out, nil
}

// parseRegLocation trims a prefix or location the way containers/image
// does and rejects URL schemes.
func parseRegLocation(where, key, v string) (string, error) {
	t := strings.TrimRight(v, "/")
	if strings.HasPrefix(t, "http://") || strings.HasPrefix(t, "https://") {
		return "", formatError("%s: key %s: %q: no URL scheme here (host[:port][/path]; use insecure = true for plain HTTP)", where, key, v)
	}
	return t, nil
}

// checkRegName checks a non-wildcard prefix or location: host[:port] or
// host[:port]/repository-path.
func checkRegName(v string) error {
	host, repo, _ := strings.Cut(v, "/")
	if _, err := name.NewRegistry(host); err != nil {
		return fmt.Errorf("%q: %v", v, err)
	}
	if repo != "" {
		if _, err := name.NewRepository(v); err != nil {
			return fmt.Errorf("%q: %v", v, err)
		}
	}
	return nil
}

// match returns the [[registry]] with the longest prefix matching image
// name n ("docker.io/library/alpine", "localhost:5000/app", no tag or
// digest) and the length of n that the prefix covers.
func (rc *registriesConf) match(n string) (*regEntry, int) {
	var best *regEntry
	bestLen, bestCover := 0, 0
	for i := range rc.registries {
		r := &rc.registries[i]
		cover := prefixCover(n, r.Prefix)
		if cover >= 0 && len(r.Prefix) > bestLen {
			best, bestLen, bestCover = r, len(r.Prefix), cover
		}
	}
	return best, bestCover
}

// prefixCover returns how much of name n a prefix covers, or -1 when it
// does not match: a plain prefix must end at a '/' of n or at its end; a
// wildcard *.example.com matches hosts below example.com (any depth, any
// port) and covers the host.
func prefixCover(n, prefix string) int {
	if rest, ok := strings.CutPrefix(prefix, "*"); ok {
		host, _, _ := strings.Cut(n, "/")
		hostname := host
		if i := strings.LastIndex(host, ":"); i >= 0 && !strings.Contains(host[i:], "]") {
			hostname = host[:i]
		}
		if strings.HasSuffix(hostname, rest) && len(hostname) > len(rest) {
			return len(hostname)
		}
		return -1
	}
	if n == prefix {
		return len(n)
	}
	if strings.HasPrefix(n, prefix) && n[len(prefix)] == '/' {
		return len(prefix)
	}
	return -1
}

// rewrite replaces the covered part of n with location ("" keeps n as
// it is, for a wildcard prefix without location).
func rewrite(n string, cover int, location string) string {
	if location == "" {
		return n
	}
	return location + n[cover:]
}

// mirrorsFor returns the mirrors of r that take part in a pull of an image
// named by digest (digested) or by tag.
func (r *regEntry) mirrorsFor(digested bool) []regMirror {
	if r.MirrorByDigestOnly {
		if digested {
			return r.Mirrors
		}
		return nil
	}
	var out []regMirror
	for _, m := range r.Mirrors {
		switch {
		case m.PullFromMirror == mirrorDigestOnly && !digested,
			m.PullFromMirror == mirrorTagOnly && digested:
			continue
		}
		out = append(out, m)
	}
	return out
}
