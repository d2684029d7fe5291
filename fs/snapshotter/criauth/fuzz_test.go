package criauth

import (
	"encoding/base64"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// FuzzBegin feeds PullImage's outside strings (the image reference and
// every AuthConfig field) to Store.Begin: it must never panic, and what it
// records must be what the keychain then answers for that repository, and
// be gone once the pull failed.
func FuzzBegin(f *testing.F) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	f.Add("reg.example/app:1", "", "user", "pass", "", "")
	f.Add("alpine", "https://registry-1.docker.io", "", "", b64("u:p\x00\x00"), "")
	f.Add("127.0.0.1:5000/a/b@sha256:"+"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "https://mirror:5000/v2/", "", "", "", "tok")
	f.Add("reg.example/app", "reg.example", "u", "p", "", "")
	f.Add("UPPER/case", "http://[::1]:5000", "", "", "!!", "")
	f.Add("", "%zz", "", "", b64("nocolon"), "")
	f.Fuzz(func(t *testing.T, image, server, user, pass, auth, identity string) {
		s := NewStore(nil)
		req := &runtimeapi.AuthConfig{Username: user, Password: pass, Auth: auth, IdentityToken: identity, ServerAddress: server}
		finish, recorded, why := s.Begin(image, req)
		if why == "" {
			t.Fatal("Begin gave no reason")
		}
		if !recorded {
			finish(true)
			if len(s.repos) != 0 {
				t.Fatalf("not recorded (%s) but stored %v", why, s.repos)
			}
			return
		}
		k, err := keyFor(image, server)
		if err != nil {
			t.Fatalf("recorded, but keyFor fails: %v", err)
		}
		want, ok, err := authConfig(req)
		if err != nil || !ok {
			t.Fatalf("recorded, but authConfig says %v, %v", ok, err)
		}
		if repo, err := name.NewRepository(k.String()); err == nil && resourceKey(repo) == k {
			a, err := s.Keychain(nil).Resolve(repo)
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Authorization()
			if err != nil {
				t.Fatal(err)
			}
			if *got != want {
				t.Fatalf("keychain answers %+v for %s, recorded %+v", *got, k, want)
			}
		}
		finish(false)
		if len(s.repos) != 0 {
			t.Fatalf("failed pull left %v", s.repos)
		}
		if _, ok := s.lookupRepo(k); ok {
			t.Fatal("failed pull's credentials still answer")
		}
	})
}
