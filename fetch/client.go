package fetch

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Defaults for zero Options fields.
const (
	defaultMaxAttempts    = 5
	defaultAttemptTimeout = 30 * time.Second
)

// Options configures a Client. The zero value works: the default cache
// directory, this machine's platform, the docker and podman credentials.
type Options struct {
	// CacheDir is the cache root; "" means DefaultCacheDir().
	CacheDir string
	// Platform is "os/arch[/variant]", used to narrow an image index;
	// "" means this machine (runtime.GOOS/GOARCH, GOARM's variant on arm).
	Platform string
	// Insecure allows plain HTTP and unverified TLS to registries that are
	// not on a loopback address. Loopback registries may always use plain
	// HTTP.
	Insecure bool
	// Logger receives retries (Warn) and per-request detail (Debug); nil
	// discards.
	Logger *slog.Logger
	// Keychain supplies registry credentials; nil means
	// authn.DefaultKeychain (docker and podman auth files, credential
	// helpers).
	Keychain authn.Keychain
	// Transport is the base HTTP transport; nil means a clone of
	// http.DefaultTransport. Tests inject faults here. The TLS and dial
	// settings of a mirror configuration apply only when it is an
	// *http.Transport.
	Transport http.RoundTripper
	// MaxAttempts bounds the attempts per request, and the opens per blob
	// read; 0 means 5.
	MaxAttempts int
	// AttemptTimeout limits the wait for response headers and any stall
	// inside a body read; 0 means 30s.
	AttemptTimeout time.Duration

	// HostsDir is a containerd hosts directory (`ctr --hosts-dir`, CRI's
	// config_path; usually [DefaultHostsDir]): per registry host, a
	// directory with a hosts.toml naming mirrors and their TLS settings.
	// "" reads none. It is read once, by New: a file it cannot parse, an
	// unknown key or a bad value fails New with an error naming the file
	// and key.
	HostsDir string
	// RegistriesConf is a containers-registries.conf(5) file (podman's
	// [DefaultRegistriesConf]); its drop-in directory PATH.d
	// (registries.conf.d) is read too when it exists. "" reads none: the
	// system file is not read unless named, because a node's
	// registries.conf is written for podman and may redirect or block
	// pulls ocifs is asked for on containerd's behalf. A registry matched
	// by one of its [[registry]] prefixes uses it; others use HostsDir.
	// Read once, by New, and checked like HostsDir.
	RegistriesConf string

	// ObserveRange, when set, is called once per blob range read, after
	// the read (for metrics: a latency histogram, cache answers). It must
	// not block; it may be called from many goroutines at once.
	ObserveRange func(RangeRead)
}

// DefaultCacheDir is /var/cache/ocifs for root, else $XDG_CACHE_HOME/ocifs
// or ~/.cache/ocifs.
func DefaultCacheDir() string {
	if os.Geteuid() == 0 {
		return "/var/cache/ocifs"
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "ocifs")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "ocifs")
	}
	return filepath.Join(os.TempDir(), "ocifs-cache")
}

// Client resolves images and reads their blobs. It is safe for concurrent
// use; one Client (and its cache) serves any number of images.
type Client struct {
	cache       *Cache
	platform    Platform
	insecure    bool
	log         *slog.Logger
	keychain    authn.Keychain
	rt          *retryTransport
	maxAttempts int
	// hosts and regconf are the mirror configuration (nil: none);
	// insecureBase is the base transport for registries.conf's insecure
	// hosts.
	hosts        *hostsDir
	regconf      *registriesConf
	insecureBase http.RoundTripper
	stats        *counters
	onRange      func(RangeRead) // Options.ObserveRange
	// sleep waits between attempts; tests replace it before first use.
	sleep func(ctx context.Context, d time.Duration) error
	// apis remembers which registries have the referrers API
	// (referrers.go).
	apis referrersAPIs
}

// New returns a Client for opts, creating the cache directory.
func New(opts Options) (*Client, error) {
	dir := opts.CacheDir
	if dir == "" {
		dir = DefaultCacheDir()
	}
	cache, err := OpenCache(dir)
	if err != nil {
		return nil, err
	}
	platform, err := ParsePlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	c := &Client{
		cache:       cache,
		platform:    platform,
		insecure:    opts.Insecure,
		log:         opts.Logger,
		keychain:    opts.Keychain,
		maxAttempts: opts.MaxAttempts,
		stats:       &counters{},
		onRange:     opts.ObserveRange,
		sleep:       sleepCtx,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.keychain == nil {
		c.keychain = authn.DefaultKeychain
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = defaultMaxAttempts
	}
	timeout := opts.AttemptTimeout
	if timeout <= 0 {
		timeout = defaultAttemptTimeout
	}
	base := opts.Transport
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	if opts.Insecure {
		if t, ok := base.(*http.Transport); ok {
			t = t.Clone()
			if t.TLSClientConfig == nil {
				t.TLSClientConfig = &tls.Config{}
			}
			t.TLSClientConfig.InsecureSkipVerify = true
			base = t
		}
	}
	if err := c.loadMirrors(opts, base); err != nil {
		return nil, err
	}
	c.rt = &retryTransport{
		base:           base,
		maxAttempts:    c.maxAttempts,
		attemptTimeout: timeout,
		log:            c.log,
		stats:          c.stats,
		sleep:          func(ctx context.Context, d time.Duration) error { return c.sleep(ctx, d) },
	}
	return c, nil
}

// loadMirrors reads opts' mirror configuration and builds the transports
// its hosts need.
func (c *Client) loadMirrors(opts Options, base http.RoundTripper) error {
	if opts.HostsDir != "" {
		h, err := loadHostsDir(opts.HostsDir)
		if err != nil {
			return err
		}
		for _, cfg := range h.configs {
			for _, s := range cfg.hosts {
				if s.hasTransportSettings() {
					if s.rt, err = specTransport(base, s); err != nil {
						return err
					}
				}
			}
		}
		c.hosts = h
	}
	if opts.RegistriesConf != "" {
		rc, err := loadRegistriesConf(opts.RegistriesConf)
		if err != nil {
			return err
		}
		c.regconf = rc
		c.insecureBase, err = specTransport(base, &endpointSpec{insecure: true})
		if err != nil {
			return err
		}
	}
	return nil
}

// Cache returns the client's digest-addressed cache.
func (c *Client) Cache() *Cache { return c.cache }

// Stats counts what the client fetched since New.
type Stats struct {
	Requests     int64                   // HTTP requests sent (each attempt counts)
	BytesFetched int64                   // body bytes received for manifests, configs, blobs and referrers lists (layout files included)
	Blobs        map[digest.Digest]int64 // body bytes received per blob digest (and per manifest digest for FetchManifest)
	BlobRequests map[digest.Digest]int64 // HTTP requests sent per blob digest (each attempt counts)
}

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() Stats {
	c.stats.mu.Lock()
	defer c.stats.mu.Unlock()
	return Stats{
		Requests:     c.stats.requests.Load(),
		BytesFetched: c.stats.bytes.Load(),
		Blobs:        maps.Clone(c.stats.blobs),
		BlobRequests: maps.Clone(c.stats.blobRequests),
	}
}

// Resolve turns a reference into an Image: it fetches the manifest
// (narrowing an image index to Options.Platform) and the config, verifying
// each against its digest, and validates that they agree.
func (c *Client) Resolve(ctx context.Context, refStr string) (*Image, error) {
	ref, err := parseReference(refStr, c.insecure)
	if err != nil {
		return nil, err
	}
	var (
		src  source
		raw  []byte
		mt   string
		dgst digest.Digest
	)
	if ref.Layout != "" {
		ls := &layoutSource{dir: ref.Layout}
		desc, err := ls.root(ref.Tag, ref.Digest)
		if err != nil {
			return nil, err
		}
		raw, _, _, err = ls.manifest(ctx, desc.Digest.String())
		if err != nil {
			return nil, err
		}
		if err := verifyDescriptor("manifest "+desc.Digest.String()+" from "+ls.String(), desc, raw); err != nil {
			return nil, err
		}
		src, mt, dgst = ls, desc.MediaType, desc.Digest
	} else {
		rs, err := c.chainFor(ref)
		if err != nil {
			return nil, err
		}
		src = rs
		if ref.Digest != "" {
			// A pinned manifest is content: the cache's verified copy
			// serves as well as the registry's (offline.go).
			raw, _ = c.cachedManifest(ref.Digest)
			dgst = ref.Digest
		}
		if raw == nil {
			if raw, mt, dgst, err = c.fetchTop(ctx, rs, ref); err != nil {
				return nil, err
			}
		}
	}
	im, err := c.finish(ctx, src, raw, mt, dgst)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	im.Ref = ref.String()
	return im, nil
}

// fetchTop fetches the manifest ref names from the registry, verifies it
// against the pinned digest or the registry's Docker-Content-Digest, and
// keeps it in the cache under its digest.
func (c *Client) fetchTop(ctx context.Context, rs *chainSource, ref Reference) (raw []byte, mt string, dgst digest.Digest, err error) {
	ident := ref.Tag
	if ref.Digest != "" {
		ident = ref.Digest.String()
	}
	var claimed digest.Digest
	raw, mt, claimed, err = rs.manifest(ctx, ident)
	if err != nil {
		if ref.Digest == "" && ctx.Err() == nil {
			err = c.tagError(ref, err)
		}
		return nil, "", "", err
	}
	c.stats.bytes.Add(int64(len(raw)))
	what := "manifest " + ref.String()
	switch {
	case ref.Digest != "":
		err = verifyBytes(what, ref.Digest, raw)
		dgst = ref.Digest
	case claimed != "":
		err = verifyBytes(what+" (Docker-Content-Digest)", claimed, raw)
		dgst = claimed
	}
	if err != nil {
		return nil, "", "", err
	}
	if dgst == "" || dgst.Algorithm() != digest.SHA256 {
		dgst = digest.FromBytes(raw)
	}
	c.keepManifest(dgst, raw)
	if ref.Digest == "" {
		c.saveTag(ref, dgst)
	}
	return raw, mt, dgst, nil
}

// childManifest reads the manifest an index entry names: from the cache
// when it is there (checked again), else from src, verified against the
// descriptor and then kept in the cache. A copy from the cache has no
// Content-Type ("").
func (c *Client) childManifest(ctx context.Context, src source, child ocispec.Descriptor) ([]byte, string, error) {
	if _, ok := src.(*chainSource); ok {
		if b, ok := c.cachedManifest(child.Digest); ok {
			if verifyDescriptor("cache: manifest "+child.Digest.String(), child, b) == nil {
				return b, "", nil
			}
		}
	}
	b, ctype, _, err := src.manifest(ctx, child.Digest.String())
	if err != nil {
		return nil, "", err
	}
	c.stats.bytes.Add(int64(len(b)))
	if err := verifyDescriptor(fmt.Sprintf("manifest %s from %s", child.Digest, src), child, b); err != nil {
		return nil, "", err
	}
	if _, ok := src.(*chainSource); ok {
		c.keepManifest(child.Digest, b)
	}
	return b, ctype, nil
}

// verifyDescriptor checks b's size and digest against desc.
func verifyDescriptor(what string, desc ocispec.Descriptor, b []byte) error {
	if desc.Size != int64(len(b)) {
		if err := verifyBytes(what, desc.Digest, b); err != nil {
			return err
		}
		return sizeError(what, desc.Size, int64(len(b)), false)
	}
	return verifyBytes(what, desc.Digest, b)
}

// finish narrows an index to the client's platform, parses the manifest,
// and fetches and checks the config. raw has been verified against dgst.
func (c *Client) finish(ctx context.Context, src source, raw []byte, mt string, dgst digest.Digest) (*Image, error) {
	im := &Image{src: src, c: c}
	for depth := 0; ; depth++ {
		var err error
		mt, err = DetectMediaType(mt, raw)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", dgst, err)
		}
		if isManifestType(mt) {
			break
		}
		if !isIndexType(mt) {
			return nil, fmt.Errorf("manifest %s: %w", dgst, unsupportedType(mt))
		}
		if depth >= maxIndexDepth {
			return nil, formatError("image index %s: nested more than %d deep", dgst, maxIndexDepth)
		}
		ix, err := ParseIndex(raw)
		if err != nil {
			return nil, fmt.Errorf("image index %s: %w", dgst, err)
		}
		if im.IndexDigest == "" {
			im.IndexDigest = dgst
		}
		child, ok, available := selectPlatform(ix, c.platform)
		if !ok {
			list := "none"
			if len(available) > 0 {
				list = strings.Join(available, ", ")
			}
			return nil, fmt.Errorf("image index %s has no manifest for platform %s; available: %s (choose one with --platform): %w",
				dgst, c.platform, list, ErrNotFound)
		}
		if child.Size > maxManifestSize {
			return nil, formatError("manifest %s is larger than 4 MiB (%d bytes)", child.Digest, child.Size)
		}
		b, ctype, err := c.childManifest(ctx, src, child)
		if err != nil {
			return nil, err
		}
		raw, dgst, mt = b, child.Digest, ctype
		if isGenericType(mt) {
			mt = child.MediaType
		}
	}
	m, err := ParseManifest(mt, raw)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", dgst, err)
	}
	im.Manifest, im.ManifestDigest, im.ManifestMediaType, im.manifestBytes = m, dgst, mt, raw

	if m.Config.Size > maxManifestSize {
		return nil, formatError("config %s is larger than 4 MiB (%d bytes)", m.Config.Digest, m.Config.Size)
	}
	var cfgBytes []byte
	for {
		rc, err := im.OpenBlob(ctx, m.Config)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		cfgBytes, err = io.ReadAll(rc)
		rc.Close()
		if err == nil {
			break
		}
		// Bytes from a mirror that do not match: read it from the next host.
		if br, ok := rc.(*blobReader); !ok || !br.elsewhere {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	cfg, err := ParseConfig(cfgBytes)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	if err := checkLayers(m, cfg); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", dgst, err)
	}
	if !c.cache.Has(m.Config.Digest) {
		if err := c.cache.Put(m.Config.Digest, bytes.NewReader(cfgBytes)); err != nil && !errors.Is(err, ErrFormat) {
			c.log.Warn("caching config", "digest", m.Config.Digest, "err", err)
		}
	}
	im.Config, im.ConfigDigest, im.configBytes = cfg, m.Config.Digest, cfgBytes
	return im, nil
}
