package criauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// logBuffer is a slog logger at Debug writing into a buffer safe for
// concurrent use, for tests that grep the log for secrets.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// resolve asks kc for the repository ref names and returns what it answers.
func resolve(t *testing.T, kc authn.Keychain, repo string) authn.AuthConfig {
	t.Helper()
	r, err := name.NewRepository(repo)
	if err != nil {
		t.Fatal(err)
	}
	a, err := authn.Resolve(t.Context(), kc, r)
	if err != nil {
		t.Fatalf("resolve %s: %v", repo, err)
	}
	cfg, err := authn.Authorization(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	return *cfg
}

// mapKeychain answers per registry host, anonymously for any other.
type mapKeychain map[string]authn.AuthConfig

func (m mapKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if c, ok := m[r.RegistryStr()]; ok {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}

func basic(user, pass string) *runtimeapi.AuthConfig {
	return &runtimeapi.AuthConfig{Username: user, Password: pass}
}

// pull records auth for image and finishes the pull with ok.
func pull(t *testing.T, s *Store, image string, auth *runtimeapi.AuthConfig, ok bool) {
	t.Helper()
	finish, _, _ := s.Begin(image, auth)
	finish(ok)
}

func TestStoreRepositoryThenFallbackThenRegistry(t *testing.T) {
	log, logs := newLog()
	s := NewStore(log)
	fallback := mapKeychain{"files.example": {Username: "file-user", Password: "file-secret"},
		"reg.example": {Username: "reg-file-user", Password: "reg-file-secret"}}
	kc := s.Keychain(fallback)

	finish, recorded, why := s.Begin("reg.example/team/app:1", basic("alice", "alice-secret"))
	if !recorded || !strings.Contains(why, "reg.example/team/app") {
		t.Fatalf("Begin: recorded %v (%s), want recorded for reg.example/team/app", recorded, why)
	}
	finish(true)
	pull(t, s, "other.example/x/y@sha256:"+strings.Repeat("a", 64), basic("bob", "bob-secret"), true)

	for _, c := range []struct {
		repo string
		want authn.AuthConfig
	}{
		// The repository's own, before the registry's auth file.
		{"reg.example/team/app", authn.AuthConfig{Username: "alice", Password: "alice-secret"}},
		// Another repository of that registry: the auth file first.
		{"reg.example/team/other", authn.AuthConfig{Username: "reg-file-user", Password: "reg-file-secret"}},
		// No auth file for other.example: the latest pull from it.
		{"other.example/x/z", authn.AuthConfig{Username: "bob", Password: "bob-secret"}},
		{"other.example/x/y", authn.AuthConfig{Username: "bob", Password: "bob-secret"}},
		{"files.example/a", authn.AuthConfig{Username: "file-user", Password: "file-secret"}},
		// Nothing anywhere: anonymous.
		{"nowhere.example/a", authn.AuthConfig{}},
	} {
		if got := resolve(t, kc, c.repo); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.repo, got, c.want)
		}
	}
	// The same without a fallback keychain.
	kc = s.Keychain(nil)
	if got := resolve(t, kc, "reg.example/team/other"); got.Username != "alice" {
		t.Errorf("reg.example/team/other without fallback: got %+v, want alice's", got)
	}
	if !strings.Contains(logs.String(), "nowhere.example/a") || !strings.Contains(logs.String(), "pull the image again") {
		t.Errorf("no log line telling what to do for nowhere.example/a:\n%s", logs)
	}
	for _, secret := range []string{"alice-secret", "bob-secret", "file-secret"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("log holds %q:\n%s", secret, logs)
		}
	}
}

func TestStoreFailedPullIsForgotten(t *testing.T) {
	s := NewStore(nil)
	kc := s.Keychain(nil)
	const repo = "reg.example/app"
	pull(t, s, repo+":1", basic("good", "good-secret"), true)

	// While a pull with other credentials is in flight, they answer (the
	// snapshotter fetches that pull's layers with them)...
	finish, _, _ := s.Begin(repo+":2", basic("bad", "bad-secret"))
	if got := resolve(t, kc, repo); got.Username != "bad" {
		t.Errorf("during the pull: got %+v, want the pull's own credentials", got)
	}
	// ...and once it failed, the earlier ones answer again.
	finish(false)
	finish(true) // a second call changes nothing
	if got := resolve(t, kc, repo); got.Username != "good" {
		t.Errorf("after the failed pull: got %+v, want the earlier good credentials", got)
	}
	// A failed first pull leaves nothing.
	pull(t, s, "reg.example/never:1", basic("bad", "bad-secret"), false)
	if got := resolve(t, kc, "reg.example/never"); got.Username != "good" {
		t.Errorf("repository whose only pull failed: got %+v, want the registry's latest good ones", got)
	}
	if _, ok := s.repos[key{"reg.example", "never"}]; ok {
		t.Error("a failed pull's entry is still stored")
	}
}

func TestStoreLatestPullWins(t *testing.T) {
	s := NewStore(nil)
	kc := s.Keychain(nil)
	const repo = "reg.example/app"
	pull(t, s, repo+":1", basic("first", "1"), true)
	pull(t, s, repo+":2", basic("second", "2"), true)
	if got := resolve(t, kc, repo); got.Username != "second" {
		t.Errorf("got %+v, want the latest pull's", got)
	}
	// Two in flight: the newer one answers; when the newer finishes first
	// and the older after it, the newer stays.
	f3, _, _ := s.Begin(repo+":3", basic("third", "3"))
	f4, _, _ := s.Begin(repo+":4", basic("fourth", "4"))
	if got := resolve(t, kc, repo); got.Username != "fourth" {
		t.Errorf("two in flight: got %+v, want the newer", got)
	}
	f4(true)
	if got := resolve(t, kc, repo); got.Username != "third" {
		t.Errorf("older still in flight: got %+v, want it (in flight answers first)", got)
	}
	f3(true)
	if got := resolve(t, kc, repo); got.Username != "fourth" {
		t.Errorf("both done: got %+v, want the newer pull's", got)
	}
	if n := len(s.repos[key{"reg.example", "app"}]); n != 1 {
		t.Errorf("%d entries kept for one repository, want 1", n)
	}
	// A pull without credentials keeps the recorded ones (containerd
	// pulled with its own configuration or anonymously).
	finish, recorded, why := s.Begin(repo+":5", nil)
	finish(true)
	if recorded || why != "no credentials" {
		t.Errorf("pull without auth: recorded %v (%s)", recorded, why)
	}
	if got := resolve(t, kc, repo); got.Username != "fourth" {
		t.Errorf("after a pull without auth: got %+v, want the recorded ones kept", got)
	}
}

func TestStoreAuthForms(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, c := range []struct {
		name     string
		image    string
		auth     *runtimeapi.AuthConfig
		repo     string // where the credentials must answer; "" if not recorded
		want     authn.AuthConfig
		reasonIn string
	}{
		{"auth field", "reg.example/a", &runtimeapi.AuthConfig{Auth: b64("u:p:with:colons")},
			"reg.example/a", authn.AuthConfig{Username: "u", Password: "p:with:colons"}, ""},
		{"username before auth", "reg.example/a", &runtimeapi.AuthConfig{Username: "u", Password: "p", Auth: b64("x:y")},
			"reg.example/a", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"identity token", "reg.example/a", &runtimeapi.AuthConfig{IdentityToken: "tok"},
			"reg.example/a", authn.AuthConfig{IdentityToken: "tok"}, ""},
		{"auth not base64", "reg.example/a", &runtimeapi.AuthConfig{Auth: "!!!"}, "", authn.AuthConfig{}, "not base64"},
		{"auth without colon", "reg.example/a", &runtimeapi.AuthConfig{Auth: b64("nocolon")}, "", authn.AuthConfig{}, "user:password"},
		{"registry token only", "reg.example/a", &runtimeapi.AuthConfig{RegistryToken: "rt"}, "", authn.AuthConfig{}, "no credentials"},
		{"password without user", "reg.example/a", &runtimeapi.AuthConfig{Password: "p"}, "", authn.AuthConfig{}, "no credentials"},
		{"bad reference", "Not A Reference", basic("u", "p"), "", authn.AuthConfig{}, "image reference"},
		{"server address is a mirror", "reg.example/a", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://mirror.example:5000"},
			"mirror.example:5000/a", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"server address without scheme", "reg.example/a", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "reg.example"},
			"", authn.AuthConfig{}, "names no host"},
		{"docker hub", "alpine", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://registry-1.docker.io"},
			"docker.io/library/alpine", authn.AuthConfig{Username: "u", Password: "p"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewStore(nil)
			finish, recorded, why := s.Begin(c.image, c.auth)
			finish(true)
			if recorded != (c.repo != "") {
				t.Fatalf("recorded %v (%s), want %v", recorded, why, c.repo != "")
			}
			if !strings.Contains(why, c.reasonIn) {
				t.Errorf("reason %q does not say %q", why, c.reasonIn)
			}
			if c.repo == "" {
				if len(s.repos) != 0 {
					t.Errorf("stored %v", s.repos)
				}
				return
			}
			if got := resolve(t, s.Keychain(nil), c.repo); got != c.want {
				t.Errorf("%s: got %+v, want %+v", c.repo, got, c.want)
			}
			if len(s.repos) != 1 {
				t.Errorf("stored under %d keys, want 1: %v", len(s.repos), s.repos)
			}
		})
	}
}

// A keychain resolving the registry itself (no repository) gets the
// registry's latest credentials.
func TestStoreRegistryResource(t *testing.T) {
	s := NewStore(nil)
	pull(t, s, "reg.example:5000/a/b", basic("u", "p"), true)
	reg, err := name.NewRegistry("reg.example:5000")
	if err != nil {
		t.Fatal(err)
	}
	a, err := authn.Resolve(context.Background(), s.Keychain(nil), reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := a.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Username != "u" {
		t.Errorf("registry resource: got %+v, want u", cfg)
	}
}

func TestStoreConcurrent(t *testing.T) {
	s := NewStore(nil)
	kc := s.Keychain(nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				finish, _, _ := s.Begin("reg.example/app:1", basic("u", "p"))
				if _, err := kc.Resolve(name.MustParseReference("reg.example/app").Context()); err != nil {
					t.Error(err)
					return
				}
				finish((i+j)%3 != 0)
			}
		})
	}
	wg.Wait()
	if es := s.repos[key{"reg.example", "app"}]; len(es) != 1 || !es[0].done {
		t.Errorf("after all pulls finished: %d entries (want 1 succeeded)", len(es))
	}
}
