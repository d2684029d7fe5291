package fetch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// addMirrorSeeds adds the testdata files whose names start with prefix.
func addMirrorSeeds(f *testing.F, prefix string) {
	f.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "mirrors", prefix+"*"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seeds %s*: %v", prefix, err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseHostsTOML(f *testing.F) {
	addMirrorSeeds(f, "hosts-")
	for _, s := range []string{
		"", "server = \"https://r.example/v2\"\noverride_path = true\n",
		"[host.\"http://[::1]:5000\"]\ncapabilities = []\nclient = [\"a\", [\"b\", \"\"]]\n",
		"[host.\"https://m\"]\n[host.\"https://m\".header]\nx = [\"1\", \"2\"]\n",
		"host = { \"https://a\" = {}, \"https://b\" = { skip_verify = true } }\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := parseHostsTOML("/d/r.example/hosts.toml", b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			if !strings.Contains(err.Error(), "/d/r.example/hosts.toml") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(cfg.hosts) == 0 {
			t.Fatalf("no server entry")
		}
		for i, s := range cfg.hosts {
			last := i == len(cfg.hosts)-1
			if s.host == "" && !last {
				t.Fatalf("host %d has no host", i)
			}
			if s.host != "" && s.scheme != "http" && s.scheme != "https" {
				t.Fatalf("host %d scheme %q", i, s.scheme)
			}
			if s.caps == 0 || s.caps&^capAll != 0 {
				t.Fatalf("host %d capabilities %b", i, s.caps)
			}
			if s.root != "" && !strings.HasPrefix(s.root, "/") {
				t.Fatalf("host %d root %q", i, s.root)
			}
			for _, p := range append(s.caFiles, pairFiles(s.clientPairs)...) {
				if !filepath.IsAbs(p) {
					t.Fatalf("host %d: relative path %q", i, p)
				}
			}
			for k := range s.header {
				if !validHeaderName(k) {
					t.Fatalf("host %d: header %q", i, k)
				}
			}
		}
	})
}

// pairFiles lists the non-empty files of client pairs.
func pairFiles(pairs [][2]string) []string {
	var out []string
	for _, p := range pairs {
		for _, f := range p {
			if f != "" {
				out = append(out, f)
			}
		}
	}
	return out
}

func FuzzParseRegistriesConf(f *testing.F) {
	addMirrorSeeds(f, "registries-")
	for _, s := range []string{
		"", "[[registry]]\nprefix = \"*.example.com\"\n",
		"[[registry]]\nlocation = \"localhost:5000/a\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"127.0.0.1:5001/b\"\npull-from-mirror = \"digest-only\"\n",
		"[registries.search]\nregistries = []\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		regs, err := parseRegistriesConf("/etc/containers/registries.conf", b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			if !strings.Contains(err.Error(), "/etc/containers/registries.conf") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		rc := &registriesConf{registries: regs}
		seen := map[string]bool{}
		for _, r := range regs {
			if r.Prefix == "" || seen[r.Prefix] {
				t.Fatalf("prefix %q empty or twice", r.Prefix)
			}
			seen[r.Prefix] = true
			if r.Location == "" && !strings.HasPrefix(r.Prefix, "*.") {
				t.Fatalf("registry %q has no location", r.Prefix)
			}
			for _, m := range r.Mirrors {
				if m.Location == "" {
					t.Fatalf("registry %q has a mirror without location", r.Prefix)
				}
			}
			// Every accepted prefix matches itself (a wildcard, a host
			// under it), and its rewrite is its location.
			n := r.Prefix
			if strings.HasPrefix(n, "*.") {
				n = "x" + n[1:]
			}
			got, cover := rc.match(n + "/app")
			if got == nil {
				t.Fatalf("prefix %q does not match %q", r.Prefix, n+"/app")
			}
			_ = rewrite(n+"/app", cover, got.Location)
			_ = got.mirrorsFor(true)
			_ = got.mirrorsFor(false)
		}
	})
}
