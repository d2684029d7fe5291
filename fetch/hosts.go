package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/pelletier/go-toml/v2"
	tomlu "github.com/pelletier/go-toml/v2/unstable"
)

// containerd's registry host configuration (docs/hosts.md in containerd):
// a directory, given to `ctr --hosts-dir` or as CRI's config_path and
// usually /etc/containerd/certs.d, holding one directory per registry host.
// The directory of a registry is named by its host, a port written
// "host_port_" (or "host:port", tried second), Docker Hub as "docker.io";
// "_default" serves every registry without a directory of its own. In it,
// hosts.toml lists the hosts to pull from in order ([host."URL"] tables)
// and the server to fall back to last (server = "URL"; without it, the
// registry itself). A directory without hosts.toml holds Docker-style
// certificate files instead: *.crt are CA certificates, *.cert client
// certificates with their *.key beside them.
//
// ocifs reads the same files with the same meaning, and is stricter in one
// way: a key it does not know, or a value of the wrong type, is an error
// naming the file and the key, where containerd ignores the key (or, for a
// bad value, the whole file). A typo in a mirror's configuration should
// stop the daemon at start, not send every pull to the upstream unnoticed.

// DefaultHostsDir is where containerd's CRI plugin is usually pointed
// (config_path) for hosts.toml files.
const DefaultHostsDir = "/etc/containerd/certs.d"

// maxConfigSize caps a hosts.toml or registries.conf file.
const maxConfigSize = 1 << 20

// defaultHostDir is the hosts directory that serves every registry
// without one of its own.
const defaultHostDir = "_default"

// capability is what a registry host may be asked to do, as containerd's
// hosts.toml names it.
type capability uint8

const (
	// capPull: fetch manifests and blobs by digest.
	capPull capability = 1 << iota
	// capResolve: turn a tag into a manifest. A host that can resolve is
	// trusted to say which image a tag names.
	capResolve
	// capPush: receive pushed blobs and manifests.
	capPush
	// capReferrers: list the referrers of a manifest.
	capReferrers

	capAll = capPull | capResolve | capPush | capReferrers
)

// capabilityNames are the hosts.toml spellings, in bit order.
var capabilityNames = []string{"pull", "resolve", "push", "referrers"}

func (c capability) String() string {
	var names []string
	for i, n := range capabilityNames {
		if c&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}

// endpointSpec is one host that a configuration file names for a registry:
// a mirror, or the server to fall back to.
type endpointSpec struct {
	// origin names the file (and table) that describes it, for messages.
	origin string
	// scheme is "https" or "http"; host is host[:port]. host is "" for the
	// registry itself (a hosts.toml without server).
	scheme, host string
	// root is the API root path requests go under: "/v2" for a compliant
	// registry, "/mirror/v2" for one with a path prefix, or, with
	// override_path, exactly the path given.
	root string
	caps capability
	// caFiles and clientPairs are absolute paths of PEM files; a pair's
	// key is "" when the certificate file holds the key too.
	caFiles     []string
	clientPairs [][2]string
	// skipVerify is hosts.toml's skip_verify; nil when not given.
	skipVerify *bool
	// header is sent with every request to host.
	header      http.Header
	dialTimeout time.Duration
	// insecure (registries.conf) allows plain HTTP and unverified TLS.
	insecure bool

	// rt is the base transport for the TLS and dial settings above; nil
	// means the client's. It is built when the Client is.
	rt http.RoundTripper
}

// hasTransportSettings reports whether the spec needs a transport of its
// own.
func (s *endpointSpec) hasTransportSettings() bool {
	return len(s.caFiles) > 0 || len(s.clientPairs) > 0 || s.skipVerify != nil || s.dialTimeout > 0 || s.insecure
}

// tlsConfigured reports whether hosts.toml gave TLS settings for the host.
func (s *endpointSpec) tlsConfigured() bool {
	return len(s.caFiles) > 0 || len(s.clientPairs) > 0 || s.skipVerify != nil
}

// hostsConfig is one registry's directory in a hosts directory.
type hostsConfig struct {
	// file is its hosts.toml, or the directory for certificate files.
	file string
	// hosts are the hosts to try in order; the last is the server.
	hosts []*endpointSpec
}

// hostsDir is a loaded hosts directory: its registries' configurations by
// directory name.
type hostsDir struct {
	dir     string
	configs map[string]*hostsConfig
}

// loadHostsDir reads every registry directory under dir and checks its
// hosts.toml (or certificate files). A bad file is an error naming it.
func loadHostsDir(dir string) (*hostsDir, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("hosts directory: %w", err)
	}
	h := &hostsDir{dir: dir, configs: map[string]*hostsConfig{}}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p) // follows a symlinked directory
		if err != nil || !fi.IsDir() {
			continue
		}
		cfg, err := loadHostDir(p)
		if err != nil {
			return nil, err
		}
		h.configs[e.Name()] = cfg
	}
	return h, nil
}

// loadHostDir reads one registry's directory.
func loadHostDir(dir string) (*hostsConfig, error) {
	file := filepath.Join(dir, "hosts.toml")
	b, err := readConfigFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return loadCertDir(dir)
	}
	if err != nil {
		return nil, err
	}
	return parseHostsTOML(file, b)
}

// readConfigFile reads a configuration file of at most maxConfigSize.
func readConfigFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if len(b) > maxConfigSize {
		return nil, formatError("%s: larger than %d bytes", file, maxConfigSize)
	}
	return b, nil
}

// loadCertDir reads Docker's certificate layout: the registry itself, with
// *.crt CA certificates and *.cert/*.key client pairs.
func loadCertDir(dir string) (*hostsConfig, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("hosts directory: %w", err)
	}
	s := &endpointSpec{origin: dir, root: "/v2", caps: capAll}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		switch {
		case strings.HasSuffix(e.Name(), ".crt"):
			s.caFiles = append(s.caFiles, p)
		case strings.HasSuffix(e.Name(), ".cert"):
			key := strings.TrimSuffix(p, ".cert") + ".key"
			if _, err := os.Stat(key); err != nil {
				key = "" // the .cert may hold the key
			}
			s.clientPairs = append(s.clientPairs, [2]string{p, key})
		}
	}
	return &hostsConfig{file: dir, hosts: []*endpointSpec{s}}, nil
}

// lookup returns the configuration for a registry host ("index.docker.io",
// "localhost:5000"): its own directory, else _default, as containerd
// looks them up.
func (h *hostsDir) lookup(registry string) (*hostsConfig, string, bool) {
	ns := hostNamespace(registry)
	for _, d := range hostDirNames(ns) {
		if cfg, ok := h.configs[d]; ok {
			return cfg, ns, true
		}
	}
	return nil, ns, false
}

// hostNamespace is the name containerd gives a registry host: Docker Hub
// is "docker.io" (go-containerregistry says "index.docker.io").
func hostNamespace(registry string) string {
	if registry == name.DefaultRegistry || registry == "registry-1.docker.io" {
		return "docker.io"
	}
	return registry
}

// hostDirNames lists the directory names tried for a registry host, in
// order: "host_port_" for "host:port", then "host:port", then _default.
func hostDirNames(ns string) []string {
	var out []string
	if i := strings.LastIndex(ns, ":"); i > 0 {
		out = append(out, ns[:i]+"_"+ns[i+1:]+"_")
	}
	return append(out, ns, defaultHostDir)
}

// isNamespaceHost reports whether host is the registry ns itself rather
// than a mirror of it (containerd's isProxy, reversed): requests to a
// mirror carry ?ns=<registry>.
func isNamespaceHost(ns, host string) bool {
	if ns == host {
		return true
	}
	return ns == "docker.io" && (host == name.DefaultRegistry || host == "registry-1.docker.io" || host == "docker.io")
}

// hostsFields are the keys of a host table, and of the file's top level
// for its server.
type hostsFields struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

// hostsFile is a whole hosts.toml.
type hostsFile struct {
	Server string `toml:"server"`
	hostsFields
	Host map[string]hostsFields `toml:"host"`
}

// parseHostsTOML parses hosts.toml bytes; file names it in errors and
// relative paths are taken from its directory. It reads no other file.
func parseHostsTOML(file string, b []byte) (*hostsConfig, error) {
	if len(b) > maxConfigSize {
		return nil, formatError("%s: larger than %d bytes", file, maxConfigSize)
	}
	var f hostsFile
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, tomlError(file, err)
	}
	order, err := hostOrder(b)
	if err != nil {
		return nil, tomlError(file, err)
	}
	// Every host table has been seen by hostOrder; this only guards
	// against a TOML form it does not walk.
	for h := range f.Host {
		if !slices.Contains(order, h) {
			return nil, formatError("%s: host %q: write it as a [host.%q] table", file, h, h)
		}
	}
	base := filepath.Dir(file)
	cfg := &hostsConfig{file: file}
	for _, h := range order {
		where := fmt.Sprintf("%s: host.%s", file, strconv.Quote(h))
		s, err := hostSpec(where, h, f.Host[h], base)
		if err != nil {
			return nil, err
		}
		if s.host == "" {
			return nil, formatError("%s: no host in the table name", where)
		}
		cfg.hosts = append(cfg.hosts, s)
	}
	s, err := hostSpec(file, f.Server, f.hostsFields, base)
	if err != nil {
		return nil, err
	}
	cfg.hosts = append(cfg.hosts, s)
	return cfg, nil
}

// tomlError turns a go-toml error into one naming the file, the line and
// the key.
func tomlError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		msg := tomlMessage(strings.TrimPrefix(de.Error(), "toml: "))
		if k := de.Key(); len(k) > 0 {
			return formatError("%s:%d:%d: key %s: %s", file, row, col, tomlKey(k), msg)
		}
		return formatError("%s:%d:%d: %s", file, row, col, msg)
	}
	var pe *tomlu.ParserError
	if errors.As(err, &pe) {
		return formatError("%s: %s", file, pe.Message)
	}
	return formatError("%s: %v", file, err)
}

// tomlMessage rewords go-toml's messages for someone editing the file
// rather than reading our Go types.
func tomlMessage(msg string) string {
	switch msg {
	case "unknown field":
		return "unknown key"
	case "missing table":
		return "unknown table"
	}
	if rest, ok := strings.CutPrefix(msg, "cannot decode TOML "); ok {
		got, _, _ := strings.Cut(rest, " ")
		if _, want, ok := strings.Cut(rest, " of type "); ok {
			switch {
			case strings.HasPrefix(want, "[]"):
				want = "a list"
			case strings.HasPrefix(want, "map["):
				want = "a table"
			case strings.HasPrefix(want, "*"):
				want = want[1:]
			}
			return fmt.Sprintf("wrong type: a TOML %s where %s is wanted", got, want)
		}
	}
	return msg
}

// tomlKey writes a key path as TOML would: host."https://m".ca.
func tomlKey(parts []string) string {
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = p
		if p == "" || strings.ContainsFunc(p, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) {
			out[i] = strconv.Quote(p)
		}
	}
	return strings.Join(out, ".")
}

// hostOrder returns the names of the host tables in the order the file
// gives them, which is the order they are tried in. A TOML table is a map,
// so the order comes from walking the document: [host."URL"] headers,
// dotted keys host."URL".k = v at the top level or under [host], and the
// keys of an inline host = { "URL" = {...} }.
func hostOrder(b []byte) ([]string, error) {
	var (
		p       tomlu.Parser
		order   []string
		current []string // the table the following key/values belong to
	)
	add := func(h string) {
		if !slices.Contains(order, h) {
			order = append(order, h)
		}
	}
	keyOf := func(n *tomlu.Node) []string {
		var parts []string
		for it := n.Key(); it.Next(); {
			parts = append(parts, string(it.Node().Data))
		}
		return parts
	}
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case tomlu.Table, tomlu.ArrayTable:
			current = keyOf(e)
			if len(current) >= 2 && current[0] == "host" {
				add(current[1])
			}
		case tomlu.KeyValue:
			full := append(slices.Clone(current), keyOf(e)...)
			switch {
			case len(full) >= 2 && full[0] == "host":
				add(full[1])
			case len(full) == 1 && full[0] == "host" && e.Value().Kind == tomlu.InlineTable:
				for it := e.Value().Children(); it.Next(); {
					if kv := it.Node(); kv.Kind == tomlu.KeyValue {
						if k := keyOf(kv); len(k) > 0 {
							add(k[0])
						}
					}
				}
			}
		}
	}
	return order, p.Error()
}

// hostSpec checks one host table (server is its URL; "" for the registry
// itself) and resolves its paths against base.
func hostSpec(where, server string, f hostsFields, base string) (*endpointSpec, error) {
	s := &endpointSpec{origin: where, root: "/v2"}
	if server != "" {
		if err := parseServer(s, server, f.OverridePath); err != nil {
			return nil, formatError("%s: %v", where, err)
		}
	}
	if len(f.Capabilities) == 0 {
		s.caps = capAll
	}
	for _, c := range f.Capabilities {
		i := slices.Index(capabilityNames, strings.ToLower(c))
		if i < 0 {
			return nil, formatError("%s: key capabilities: unknown capability %q (want %s)", where, c, strings.Join(capabilityNames, ", "))
		}
		s.caps |= 1 << i
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	switch ca := f.CA.(type) {
	case nil:
	case string:
		s.caFiles = []string{abs(ca)}
	case []any:
		for _, v := range ca {
			p, ok := v.(string)
			if !ok {
				return nil, formatError("%s: key ca: want a file name or a list of them, got %v", where, v)
			}
			s.caFiles = append(s.caFiles, abs(p))
		}
	default:
		return nil, formatError("%s: key ca: want a file name or a list of them, got %v", where, ca)
	}
	switch cl := f.Client.(type) {
	case nil:
	case string:
		s.clientPairs = [][2]string{{abs(cl), ""}}
	case []any:
		for _, v := range cl {
			switch v := v.(type) {
			case string:
				s.clientPairs = append(s.clientPairs, [2]string{abs(v), ""})
			case []any:
				cert, ok1 := index(v, 0).(string)
				key, ok2 := index(v, 1).(string)
				if len(v) != 2 || !ok1 || !ok2 || cert == "" {
					return nil, formatError("%s: key client: want [certificate, key] file pairs, got %v", where, v)
				}
				if key != "" {
					key = abs(key)
				}
				s.clientPairs = append(s.clientPairs, [2]string{abs(cert), key})
			default:
				return nil, formatError("%s: key client: want a file name, a list of them or of [certificate, key] pairs, got %v", where, v)
			}
		}
	default:
		return nil, formatError("%s: key client: want a file name, a list of them or of [certificate, key] pairs, got %v", where, cl)
	}
	s.skipVerify = f.SkipVerify
	if f.Header != nil {
		s.header = http.Header{}
		for k, v := range f.Header {
			if !validHeaderName(k) {
				return nil, formatError("%s: key header.%s: not a valid HTTP header name", where, strconv.Quote(k))
			}
			var vals []string
			switch v := v.(type) {
			case string:
				vals = []string{v}
			case []any:
				for _, e := range v {
					str, ok := e.(string)
					if !ok {
						return nil, formatError("%s: key header.%s: want a string or a list of them, got %v", where, strconv.Quote(k), e)
					}
					vals = append(vals, str)
				}
			default:
				return nil, formatError("%s: key header.%s: want a string or a list of them, got %v", where, strconv.Quote(k), v)
			}
			for _, val := range vals {
				if strings.ContainsAny(val, "\r\n\x00") {
					return nil, formatError("%s: key header.%s: value has a line break or NUL", where, strconv.Quote(k))
				}
				s.header.Add(k, val)
			}
		}
	}
	if f.DialTimeout != "" {
		d, err := time.ParseDuration(f.DialTimeout)
		if err != nil || d <= 0 {
			return nil, formatError("%s: key dial_timeout: %q is not a positive duration (\"1s\", \"500ms\")", where, f.DialTimeout)
		}
		s.dialTimeout = d
	}
	return s, nil
}

// index returns v[i], or nil past its end.
func index(v []any, i int) any {
	if i < len(v) {
		return v[i]
	}
	return nil
}

// parseServer sets s's scheme, host and API root from a server URL, the
// way containerd reads it: no scheme means https; the path gets "/v2"
// appended unless it ends so already or override says the path is the
// API root itself.
func parseServer(s *endpointSpec, server string, override bool) error {
	raw := server
	if !strings.HasPrefix(raw, "http://") && !strings.HasPrefix(raw, "https://") {
		if strings.Contains(raw, "://") {
			return fmt.Errorf("%q: want an http:// or https:// URL", server)
		}
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %v", server, err)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return fmt.Errorf("%q: want scheme://host[:port][/path], no user, query or fragment", server)
	}
	if _, err := name.NewRegistry(u.Host); err != nil {
		return fmt.Errorf("%q: host: %v", server, err)
	}
	if h, port, err := net.SplitHostPort(u.Host); err == nil && (h == "" || port == "") {
		return fmt.Errorf("%q: empty host or port", server)
	}
	p := u.Path
	if p != "" {
		p = path.Clean(p)
	}
	if p == "/" {
		p = ""
	}
	if !override && !strings.HasSuffix(p, "/v2") {
		p += "/v2"
	}
	s.scheme, s.host, s.root = u.Scheme, u.Host, p
	return nil
}

// validHeaderName reports whether k is an HTTP token.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if r > 0x7e || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}
