package criauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// errInvalidAuth is the cause of every error about a PullImage's auth.
var errInvalidAuth = errors.New("invalid input")

// key names the credentials of one repository (repo "" for a whole
// registry, as a Resource of a registry asks).
type key struct {
	host, repo string
}

func (k key) String() string {
	if k.repo == "" {
		return k.host
	}
	return k.host + "/" + k.repo
}

// entry is the credentials one PullImage carried.
type entry struct {
	seq  uint64
	auth authn.AuthConfig
	// done is set once the pull succeeded; until then the entry is in
	// flight (used, so that the pull's own layers can be fetched, but
	// dropped if the pull fails).
	done bool
}

// Store holds the credentials of CRI pulls in memory. Its zero value is not
// usable; see [NewStore]. It is safe for concurrent use.
type Store struct {
	log *slog.Logger

	// mu guards everything below.
	mu  sync.Mutex
	seq uint64
	// repos holds, per repository, at most one succeeded entry followed by
	// the entries of pulls still in flight, oldest first.
	repos map[key][]*entry
	// noted are the repositories whose fall-through was logged once.
	noted map[key]bool
}

// NewStore returns an empty Store logging to log (nil discards).
func NewStore(log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{log: log, repos: map[key][]*entry{}, noted: map[key]bool{}}
}

// Begin records auth (which may be nil) as the credentials of the pull of
// image that is about to be sent, and returns the function to call with
// the pull's outcome: a failed pull's credentials are forgotten (the ones
// recorded before, if any, answer again), a successful one's replace any
// older succeeded ones for the repository. recorded is false, with a reason
// for the log that never contains a secret, when nothing was recorded:
// no credentials, credentials containerd would not use for image's
// registry, or an image reference that does not parse (containerd will
// refuse that pull itself).
func (s *Store) Begin(image string, auth *runtimeapi.AuthConfig) (finish func(ok bool), recorded bool, reason string) {
	noop := func(bool) {}
	cfg, ok, err := authConfig(auth)
	if err != nil {
		return noop, false, err.Error()
	}
	if !ok {
		return noop, false, "no credentials"
	}
	k, err := keyFor(image, auth.GetServerAddress())
	if err != nil {
		return noop, false, err.Error()
	}
	s.mu.Lock()
	s.seq++
	e := &entry{seq: s.seq, auth: cfg}
	s.repos[k] = append(s.repos[k], e)
	s.mu.Unlock()
	var once sync.Once
	return func(ok bool) { once.Do(func() { s.finish(k, e, ok) }) }, true, "recorded for " + k.String()
}

func (s *Store) finish(k key, e *entry, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Keep the newest succeeded entry, then the pulls in flight in order.
	var newest *entry
	var inFlight []*entry
	for _, o := range s.repos[k] {
		if o == e {
			if !ok {
				continue
			}
			o.done = true
		}
		if !o.done {
			inFlight = append(inFlight, o)
		} else if newest == nil || o.seq > newest.seq {
			newest = o
		}
	}
	var out []*entry
	if newest != nil {
		out = append(out, newest)
	}
	out = append(out, inFlight...)
	if len(out) == 0 {
		delete(s.repos, k)
		return
	}
	s.repos[k] = out
	if ok {
		delete(s.noted, k)
	}
}

// lookupRepo returns the newest credentials recorded for k: those of the
// latest pull still in flight, else those of the latest that succeeded.
func (s *Store) lookupRepo(k key) (authn.AuthConfig, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	es := s.repos[k]
	if len(es) == 0 {
		return authn.AuthConfig{}, false
	}
	return es[len(es)-1].auth, true
}

// lookupHost returns the credentials of the latest succeeded pull of any
// repository on host.
func (s *Store) lookupHost(host string) (authn.AuthConfig, key, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *entry
	var bestKey key
	for k, es := range s.repos {
		if k.host != host {
			continue
		}
		for _, e := range es {
			if e.done && (best == nil || e.seq > best.seq) {
				best, bestKey = e, k
			}
		}
	}
	if best == nil {
		return authn.AuthConfig{}, key{}, false
	}
	return best.auth, bestKey, true
}

// note reports whether k's fall-through is to be logged (the first time
// since its credentials were last recorded).
func (s *Store) note(k key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.noted[k] {
		return false
	}
	s.noted[k] = true
	return true
}

// Keychain returns a keychain answering with the recorded credentials; see
// the package documentation for the order. fallback (nil: none) is asked
// when nothing was recorded for the repository.
func (s *Store) Keychain(fallback authn.Keychain) authn.Keychain {
	return &keychain{s: s, fallback: fallback}
}

type keychain struct {
	s        *Store
	fallback authn.Keychain
}

var _ authn.ContextKeychain = (*keychain)(nil)

func (kc *keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return kc.ResolveContext(context.Background(), r)
}

func (kc *keychain) ResolveContext(ctx context.Context, r authn.Resource) (authn.Authenticator, error) {
	k := resourceKey(r)
	if cfg, ok := kc.s.lookupRepo(k); ok {
		return authn.FromConfig(cfg), nil
	}
	if kc.fallback != nil {
		a, err := authn.Resolve(ctx, kc.fallback, r)
		if err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", k, err)
		}
		if a != authn.Anonymous {
			if kc.s.note(k) {
				kc.s.log.Debug("criauth: no CRI credentials for the repository; using the auth files or credential helpers", "repository", k.String())
			}
			return a, nil
		}
	}
	if cfg, from, ok := kc.s.lookupHost(k.host); ok {
		if kc.s.note(k) {
			kc.s.log.Info("criauth: no CRI credentials for the repository; using those of the latest pull from its registry", "repository", k.String(), "from", from.String())
		}
		return authn.FromConfig(cfg), nil
	}
	if kc.s.note(k) {
		kc.s.log.Info("criauth: no credentials for the repository, reading it anonymously; "+
			"if it is private, pull the image again through the CRI image service (credentials are held in memory only, so a restart forgets them) "+
			"or give root a docker/podman auth file or credential helper for the registry",
			"repository", k.String())
	}
	return authn.Anonymous, nil
}

// dockerHub is go-containerregistry's name for Docker Hub, which fetch
// asks credentials for; containerd's names for it are aliases.
const dockerHub = name.DefaultRegistry

// normHost folds Docker Hub's names into one.
func normHost(h string) string {
	switch h {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		return dockerHub
	}
	return h
}

// resourceKey is the key a keychain request is for: its registry and,
// when it names one, its repository.
func resourceKey(r authn.Resource) key {
	reg := r.RegistryStr()
	repo := ""
	if s := r.String(); strings.HasPrefix(s, reg+"/") {
		repo = s[len(reg)+1:]
	}
	return key{host: normHost(reg), repo: repo}
}

// keyFor is the key a pull of image records its credentials under: the
// image's repository, on the host of serverAddress when that is set (CRI's
// AuthConfig.server_address: containerd uses such credentials only for
// the host it names, which may be a mirror) or else the image's registry.
func keyFor(image, serverAddress string) (key, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return key{}, fmt.Errorf("%w: image reference %q: %v", errInvalidAuth, image, err)
	}
	k := key{host: normHost(ref.Context().RegistryStr()), repo: ref.Context().RepositoryStr()}
	if serverAddress != "" {
		// containerd compares url.Parse(server_address).Host with the host
		// it contacts; a bare host:port parses as a path, matches nothing,
		// and the credentials are never used.
		u, err := url.Parse(serverAddress)
		if err != nil || u.Host == "" {
			return key{}, fmt.Errorf("%w: server address %q names no host (containerd uses such credentials for no registry; write it as https://host)", errInvalidAuth, serverAddress)
		}
		k.host = normHost(u.Host)
	}
	return k, nil
}

// authConfig is the credentials containerd's CRI takes from auth, in its
// order: username and password; else the identity token; else auth
// (base64 of user:password). The registry token is not used by containerd
// (1.6 or 2.x), so a pull that succeeded did so without it, and it is not
// recorded. ok is false when there is nothing to record.
func authConfig(auth *runtimeapi.AuthConfig) (cfg authn.AuthConfig, ok bool, err error) {
	switch {
	case auth == nil:
		return cfg, false, nil
	case auth.Username != "":
		return authn.AuthConfig{Username: auth.Username, Password: auth.Password}, true, nil
	case auth.IdentityToken != "":
		return authn.AuthConfig{IdentityToken: auth.IdentityToken}, true, nil
	case auth.Auth != "":
		b, err := base64.StdEncoding.DecodeString(auth.Auth)
		if err != nil {
			return cfg, false, fmt.Errorf("%w: auth is not base64 (containerd refuses the pull too)", errInvalidAuth)
		}
		user, pass, found := strings.Cut(string(b), ":")
		if !found {
			return cfg, false, fmt.Errorf("%w: auth is not base64 of user:password (containerd refuses the pull too)", errInvalidAuth)
		}
		return authn.AuthConfig{Username: user, Password: strings.Trim(pass, "\x00")}, true, nil
	}
	return cfg, false, nil
}
