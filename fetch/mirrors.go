package fetch

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Registry mirrors. An image's content may be fetched from several hosts:
// the mirrors a configuration names for its registry (containerd's
// hosts.toml, containers' registries.conf), then the registry itself. A
// chainSource asks them in order for each manifest and blob, and a host
// that fails (cannot be reached, answers 5xx, 404, a 401 the keychain
// cannot satisfy, or bytes that do not match their digest) hands the
// request to the next host. Mirrors need no trust for content: every byte
// is still checked against the digest the caller supplied. They are
// trusted for one thing only, turning a tag into a manifest, and only
// where the configuration allows it (hosts.toml's "resolve" capability;
// registries.conf's pull-from-mirror).
//
// Credentials come from the keychain for each host by its own name, so a
// registry's credentials never reach its mirror; a mirror that needs some
// has its own entry in the auth files, or a header in hosts.toml.

// maxDistrusted caps the (host, digest) pairs a chain remembers as having
// served bad bytes.
const maxDistrusted = 4096

// attemptsKey carries, in a request's context, a lower bound on attempts
// than the client's for the retry transport: a mirror gets one attempt
// before the next host is asked, as containerd does.
type attemptsKey struct{}

// withAttempts limits requests made with ctx to n attempts each.
func withAttempts(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, attemptsKey{}, n)
}

// endpoint is one host of an image's chain, for the repository there.
type endpoint struct {
	// reg is the host as go-containerregistry names it; its insecure flag
	// lets the handshake try plain HTTP.
	reg name.Registry
	// repo is the repository path at this host (registries.conf may
	// rewrite it).
	repo string
	// ns is the registry this host mirrors, sent as ?ns= (hosts.toml);
	// "" for the registry itself.
	ns   string
	caps capability
	// spec is the configuration of the host; nil for the registry itself
	// as the reference names it, reached exactly as without mirrors.
	spec *endpointSpec
	// httpsOK and httpOK are the schemes the host may be reached with
	// (spec hosts only).
	httpsOK, httpOK bool

	// sem holds the dialled source; a one-slot channel rather than a
	// mutex, so a waiter can give up with its context.
	sem chan *registrySource
}

func newEndpoint(reg name.Registry, repo string, caps capability, spec *endpointSpec) *endpoint {
	e := &endpoint{reg: reg, repo: repo, caps: caps, spec: spec, sem: make(chan *registrySource, 1)}
	e.sem <- nil
	return e
}

// String names the host and repository: "mirror.example:5000/library/alpine".
func (e *endpoint) String() string { return e.reg.RegistryStr() + "/" + e.repo }

// servedBody is a blob body with the host that sent it, so bytes that fail
// their digest can be blamed on it.
type servedBody struct {
	io.ReadCloser
	ep *endpoint
}

// chainSource is a registry repository reached through mirrors: the hosts
// to ask, in order. With no configuration it holds the registry alone.
type chainSource struct {
	c *Client
	// name is the repository as the reference names it, "HOST/REPO".
	name string
	eps  []*endpoint
	// push is where PushReferrer goes; nil when the configuration gives
	// no host the push capability (noPush says which file).
	push   *endpoint
	noPush string

	// mu guards warned and distrusted.
	mu sync.Mutex
	// warned records the hosts whose failure has been logged at Warn, so
	// a mirror that is down costs one Warn line per image, not one per
	// blob.
	warned map[*endpoint]bool
	// distrusted records (host, digest) pairs whose bytes did not match:
	// that host is not asked for that digest again while another is left.
	distrusted map[distrustKey]bool
}

type distrustKey struct {
	ep *endpoint
	d  digest.Digest
}

var _ source = (*chainSource)(nil)

func (s *chainSource) String() string { return s.name }

// candidates lists the hosts that have capability want, without those that
// served bad bytes for d; the last host with want always stays, so every
// request has somewhere to go.
func (s *chainSource) candidates(want capability) []*endpoint {
	var out []*endpoint
	for _, e := range s.eps {
		if e.caps&want != 0 {
			out = append(out, e)
		}
	}
	return out
}

func (s *chainSource) candidatesFor(want capability, d digest.Digest) []*endpoint {
	all := s.candidates(want)
	if d == "" || len(all) == 0 {
		return all
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := all[:0:0]
	for i, e := range all {
		if i == len(all)-1 || !s.distrusted[distrustKey{e, d}] {
			out = append(out, e)
		}
	}
	return out
}

// try runs do against each candidate host in turn until one succeeds. A
// failure falls through to the next host; the last host's failure, or any
// once ctx is done, is returned, naming the mirrors that failed before.
func (s *chainSource) try(ctx context.Context, want capability, d digest.Digest, what string,
	do func(ctx context.Context, e *endpoint, rs *registrySource, final bool) error) error {
	if isOffline(ctx) {
		return fmt.Errorf("%s %s: %w", what, s.name, ErrOffline)
	}
	eps := s.candidatesFor(want, d)
	if len(eps) == 0 {
		return fmt.Errorf("%s %s: no host in the mirror configuration has the %q capability: %w", what, s.name, want.String(), ErrNotFound)
	}
	var tried []string
	for i, e := range eps {
		final := i == len(eps)-1
		actx := ctx
		if !final {
			actx = withAttempts(ctx, 1)
		}
		rs, err := s.dial(actx, e)
		if err == nil {
			err = do(actx, e, rs, final)
		}
		if err == nil {
			return nil
		}
		if final || ctx.Err() != nil {
			if len(tried) > 0 {
				return fmt.Errorf("%w (mirrors tried first: %s)", err, strings.Join(tried, "; "))
			}
			return err
		}
		s.fellThrough(ctx, e, err)
		tried = append(tried, err.Error())
	}
	panic("unreachable")
}

// dial returns e's authenticated source, running the handshake on first
// use. A failed handshake is not remembered: the next request tries again.
func (s *chainSource) dial(ctx context.Context, e *endpoint) (*registrySource, error) {
	var rs *registrySource
	select {
	case rs = <-e.sem:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", e, ctx.Err())
	}
	defer func() { e.sem <- rs }()
	if rs != nil {
		return rs, nil
	}
	var err error
	rs, err = s.c.dialEndpoint(ctx, e, transport.PullScope)
	return rs, err
}

// errNoReferrers is how a host that lists no referrers hands the question
// to the next one (quietly: it is no failure).
var errNoReferrers = errors.New("no referrers")

// fellThrough logs a host's failure once at Warn (then at Debug).
func (s *chainSource) fellThrough(ctx context.Context, e *endpoint, err error) {
	level := slog.LevelDebug
	if !errors.Is(err, errNoReferrers) {
		s.mu.Lock()
		if !s.warned[e] {
			s.warned[e] = true
			level = slog.LevelWarn
		}
		s.mu.Unlock()
	}
	s.c.log.Log(ctx, level, "registry mirror failed; asking the next host", "image", s.name, "host", e.String(), "err", err)
}

// distrust records that the hosts in from sent bytes of blob d that did
// not match their digest. It reports whether the next attempt will go to
// other hosts: false when the last host took part, whose bytes are the
// last word.
func (s *chainSource) distrust(ctx context.Context, from []*endpoint, d digest.Digest, err error) bool {
	all := s.candidates(capPull)
	if len(from) == 0 || len(all) == 0 {
		return false
	}
	last := all[len(all)-1]
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range from {
		if e == last {
			return false
		}
	}
	for _, e := range from {
		k := distrustKey{e, d}
		if s.distrusted[k] {
			continue
		}
		if len(s.distrusted) >= maxDistrusted {
			return false
		}
		s.distrusted[k] = true
		s.c.log.Log(ctx, slog.LevelWarn, "registry mirror sent bytes that do not match their digest; asking the next host",
			"image", s.name, "host", e.String(), "digest", d, "err", err)
	}
	return true
}

// isFinal reports whether e is the last host for want.
func (s *chainSource) isFinal(e *endpoint, want capability) bool {
	all := s.candidates(want)
	return len(all) > 0 && all[len(all)-1] == e
}

func (s *chainSource) manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	want, pinned := capResolve, digest.Digest("")
	if d, err := digest.Parse(ref); err == nil {
		want, pinned = capPull, d
	}
	var (
		b       []byte
		mt      string
		claimed digest.Digest
	)
	err := s.try(ctx, want, pinned, "manifest "+ref+" of", func(ctx context.Context, e *endpoint, rs *registrySource, final bool) error {
		got, gotType, gotClaim, err := rs.manifest(ctx, ref)
		if err != nil {
			return err
		}
		// The caller checks the bytes; a mirror's are checked here too,
		// so that bad ones fall through to the next host.
		if check := cmp.Or(pinned, gotClaim); check != "" && !final {
			if err := verifyBytes(fmt.Sprintf("manifest %s from %s", ref, rs), check, got); err != nil {
				if pinned != "" {
					s.distrust(ctx, []*endpoint{e}, pinned, err)
				}
				return err
			}
		}
		b, mt, claimed = got, gotType, gotClaim
		return nil
	})
	return b, mt, claimed, err
}

func (s *chainSource) blob(ctx context.Context, desc ocispec.Descriptor, off, n int64) (io.ReadCloser, int64, error) {
	var (
		rc    io.ReadCloser
		start int64
	)
	err := s.try(ctx, capPull, desc.Digest, "blob "+desc.Digest.String()+" of", func(ctx context.Context, e *endpoint, rs *registrySource, _ bool) error {
		body, st, err := rs.blob(ctx, desc, off, n)
		if err != nil {
			return err
		}
		rc, start = &servedBody{ReadCloser: body, ep: e}, st
		return nil
	})
	return rc, start, err
}

// servedBy appends the host that sent body (when it came from a chain) to
// from.
func servedBy(from *[]*endpoint, body io.ReadCloser) {
	if sb, ok := body.(*servedBody); ok && from != nil {
		*from = append(*from, sb.ep)
	}
}

// elsewhere reports, after bytes of blob d from the hosts in from failed
// their digest or size with err (wrapping ErrFormat), whether asking again
// goes to other hosts (see chainSource.distrust).
func (im *Image) elsewhere(ctx context.Context, d digest.Digest, from []*endpoint, err error) bool {
	s, ok := im.src.(*chainSource)
	if !ok || !errors.Is(err, ErrFormat) {
		return false
	}
	var de *DigestError
	if errors.As(err, &de) {
		nameHosts(de, from, s.name)
	}
	return s.distrust(ctx, from, d, err)
}

// nameHosts adds to a digest error the hosts that sent the bytes, when
// they are not the registry the message names.
func nameHosts(de *DigestError, from []*endpoint, logical string) {
	var hosts []string
	for _, e := range from {
		if h := e.String(); h != logical && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) > 0 && !strings.Contains(de.What, " (sent by ") {
		de.What += " (sent by " + strings.Join(hosts, ", ") + ")"
	}
}

// chainFor returns the hosts to read ref's content from, as the client's
// mirror configuration says: a registries.conf [[registry]] matching its
// name first, else the hosts directory's entry for its registry, else the
// registry alone.
func (c *Client) chainFor(ref Reference) (*chainSource, error) {
	s := &chainSource{c: c, name: ref.repoName(), warned: map[*endpoint]bool{}, distrusted: map[distrustKey]bool{}}
	upstream := newEndpoint(ref.repo.Registry, ref.Repository, capAll, nil)
	s.push = upstream
	if c.regconf != nil {
		n := hostNamespace(ref.Registry) + "/" + ref.Repository
		if r, cover := c.regconf.match(n); r != nil {
			if r.Blocked {
				return nil, fmt.Errorf("%s: pulling is blocked by %s ([[registry]] prefix %q)", ref, r.origin, r.Prefix)
			}
			caps := capPull | capResolve | capReferrers
			for _, m := range r.mirrorsFor(ref.Digest != "") {
				e, err := c.regEndpoint(rewrite(n, cover, m.Location), m.Insecure, caps, r.origin)
				if err != nil {
					return nil, err
				}
				s.eps = append(s.eps, e)
			}
			if primary := rewrite(n, cover, r.Location); primary == n && !r.Insecure {
				s.eps = append(s.eps, upstream)
			} else {
				e, err := c.regEndpoint(primary, r.Insecure, caps, r.origin)
				if err != nil {
					return nil, err
				}
				s.eps = append(s.eps, e)
			}
			// Mirrors and locations are for pulls (containers-registries.conf(5)):
			// a push goes to the registry as named.
			return s, nil
		}
	}
	if c.hosts != nil {
		if cfg, ns, ok := c.hosts.lookup(ref.Registry); ok {
			s.push, s.noPush = nil, cfg.file
			for _, spec := range cfg.hosts {
				e, err := hostsEndpoint(ref, ns, spec)
				if err != nil {
					return nil, err
				}
				s.eps = append(s.eps, e)
				if s.push == nil && e.caps&capPush != 0 {
					s.push = e
				}
			}
			return s, nil
		}
	}
	s.eps = []*endpoint{upstream}
	return s, nil
}

// regEndpoint is the host of a registries.conf location or mirror
// ("mirror.example/path/app").
func (c *Client) regEndpoint(location string, insecure bool, caps capability, origin string) (*endpoint, error) {
	var opts []name.Option
	if insecure || c.insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(location, opts...)
	if err != nil {
		return nil, formatError("%s: location %q: %v", origin, location, err)
	}
	spec := &endpointSpec{origin: origin, root: "/v2", caps: caps, insecure: insecure}
	if insecure {
		spec.rt = c.insecureBase
	}
	e := newEndpoint(repo.Registry, repo.RepositoryStr(), caps, spec)
	e.httpsOK = true
	e.httpOK = insecure || c.insecure || isLoopback(repo.RegistryStr())
	return e, nil
}

// hostsEndpoint is the host a hosts.toml table names for ref, whose
// registry is ns in the hosts directory.
func hostsEndpoint(ref Reference, ns string, spec *endpointSpec) (*endpoint, error) {
	if spec.host == "" {
		// The registry itself, with the file's top-level settings.
		if !spec.hasTransportSettings() && len(spec.header) == 0 && spec.root == "/v2" {
			return newEndpoint(ref.repo.Registry, ref.Repository, spec.caps, nil), nil
		}
		e := newEndpoint(ref.repo.Registry, ref.Repository, spec.caps, spec)
		e.httpsOK = true
		e.httpOK = ref.repo.Registry.Scheme() == "http"
		return e, nil
	}
	var opts []name.Option
	if spec.scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(spec.host, opts...)
	if err != nil {
		return nil, formatError("%s: host %q: %v", spec.origin, spec.host, err)
	}
	e := newEndpoint(reg, ref.Repository, spec.caps, spec)
	e.httpOK = spec.scheme == "http"
	e.httpsOK = spec.scheme == "https"
	if spec.scheme == "http" && spec.tlsConfigured() {
		// containerd: an http host given TLS settings is tried with HTTPS
		// first, unless its port says plain HTTP.
		if _, port, _ := net.SplitHostPort(spec.host); port != "80" {
			e.httpsOK = true
		}
	}
	if !isNamespaceHost(ns, reg.RegistryStr()) {
		e.ns = ns
	}
	return e, nil
}

// dialEndpoint resolves e's credentials from the keychain (for e's own
// host), runs the authentication handshake for action and returns a source
// for e's repository.
func (c *Client) dialEndpoint(ctx context.Context, e *endpoint, action string) (*registrySource, error) {
	repo := e.reg.Repo(e.repo)
	auth, err := authn.Resolve(ctx, c.keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", e.reg.RegistryStr(), err)
	}
	var rt http.RoundTripper = c.rt
	scheme, root := e.reg.Scheme(), "/v2"
	if e.spec != nil {
		if e.spec.rt != nil {
			r := *c.rt
			r.base = e.spec.rt
			rt = &r
		}
		rt = &endpointTransport{
			host: e.reg.RegistryStr(), root: e.spec.root, origin: e.spec.origin,
			httpsOK: e.httpsOK, httpOK: e.httpOK, header: e.spec.header, next: rt,
		}
		root = e.spec.root
		scheme = "https"
		if !e.httpsOK {
			scheme = "http"
		}
	}
	art, err := transport.NewWithContext(ctx, e.reg, auth, rt, []string{repo.Scope(action)})
	if err != nil {
		return nil, registryError(err, "authenticate to "+e.String(), e.reg.RegistryStr(), e.String(), false)
	}
	return &registrySource{
		host: e.reg.RegistryStr(),
		base: scheme + "://" + e.reg.RegistryStr() + root,
		repo: e.repo,
		ns:   e.ns,
		http: &http.Client{Transport: art, CheckRedirect: checkRedirect},
	}, nil
}

// endpointTransport adapts requests to one configured host: it sends the
// handshake's ping ("/v2/") to the host's API root, refuses a scheme the
// configuration does not allow (go-containerregistry would try plain HTTP
// for a private address), and adds the configured headers. Requests to
// other hosts (token servers, blob storage a request was redirected to)
// pass unchanged, without the headers.
type endpointTransport struct {
	host, root, origin string
	httpsOK, httpOK    bool
	header             http.Header
	next               http.RoundTripper
}

func (t *endpointTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.host {
		return t.next.RoundTrip(req)
	}
	if (req.URL.Scheme == "https" && !t.httpsOK) || (req.URL.Scheme == "http" && !t.httpOK) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s: %s is not allowed for %s by %s", redactURL(req), req.URL.Scheme, t.host, t.origin)
	}
	ping := req.URL.Path == "/v2/" && t.root != "/v2"
	if !ping && len(t.header) == 0 {
		return t.next.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	if ping {
		r.URL.Path, r.URL.RawPath = t.root+"/", ""
	}
	for k, vs := range t.header {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	resp, err := t.next.RoundTrip(r)
	if err == nil && ping && resp.StatusCode == http.StatusNotFound {
		// A host with a path prefix need not answer at its API root;
		// containerd never asks. Take it as needing no authentication:
		// a challenge on a real request still fails clearly.
		resp.Body.Close()
		resp = &http.Response{
			Status: "200 OK", StatusCode: http.StatusOK, Proto: resp.Proto, ProtoMajor: resp.ProtoMajor, ProtoMinor: resp.ProtoMinor,
			Header: http.Header{}, Body: http.NoBody, Request: req,
		}
	}
	return resp, err
}

// checkRedirect follows up to maxRedirects redirects and never sends the
// registry's credentials to another host.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("%s: stopped after %d redirects", redactURL(req), maxRedirects)
	}
	// Credentials are for the registry only: never send them to the
	// storage host a blob is redirected to.
	if req.URL.Host != via[0].URL.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

// specTransport builds the transport for a configured host's TLS and dial
// settings from base. A base that is not an *http.Transport (one a test
// injected) is used as it is.
func specTransport(base http.RoundTripper, s *endpointSpec) (http.RoundTripper, error) {
	t, ok := base.(*http.Transport)
	if !ok {
		return base, nil
	}
	t = t.Clone()
	cfg := t.TLSClientConfig
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if s.skipVerify != nil {
		cfg.InsecureSkipVerify = *s.skipVerify
	}
	if s.insecure {
		cfg.InsecureSkipVerify = true
	}
	if len(s.caFiles) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if cfg.RootCAs != nil {
			pool = cfg.RootCAs.Clone()
		}
		for _, f := range s.caFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("%s: key ca: %w", s.origin, err)
			}
			if !pool.AppendCertsFromPEM(b) {
				return nil, formatError("%s: key ca: %s holds no PEM certificate", s.origin, f)
			}
		}
		cfg.RootCAs = pool
	}
	for _, p := range s.clientPairs {
		key := cmp.Or(p[1], p[0])
		cert, err := tls.LoadX509KeyPair(p[0], key)
		if err != nil {
			return nil, fmt.Errorf("%s: key client: %s, %s: %w", s.origin, p[0], key, err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	t.TLSClientConfig = cfg
	if s.dialTimeout > 0 {
		t.DialContext = (&net.Dialer{Timeout: s.dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	return t, nil
}
