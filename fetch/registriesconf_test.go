package fetch

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// pullSources is what a registries.conf gives for image name n: the
// locations to try in order ("" when no [[registry]] matches), or
// "blocked".
func pullSources(t *testing.T, rc *registriesConf, n string, digested bool) []string {
	t.Helper()
	r, cover := rc.match(n)
	if r == nil {
		return nil
	}
	if r.Blocked {
		return []string{"blocked"}
	}
	var out []string
	for _, m := range r.mirrorsFor(digested) {
		out = append(out, rewrite(n, cover, m.Location))
	}
	return append(out, rewrite(n, cover, r.Location))
}

func TestParseRegistriesConf(t *testing.T) {
	rc := &registriesConf{}
	if err := rc.add("/etc/containers/registries.conf", readTestdata(t, "registries-man.conf")); err != nil {
		t.Fatal(err)
	}
	if err := rc.add("/etc/containers/registries.conf.d/pull-from.conf", readTestdata(t, "registries-pull-from.conf")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		digested bool
		want     []string
	}{
		// The man page's example: mirrors, then the location.
		{"example.com/foo/image", false, []string{
			"example-mirror-0.local/mirror-for-foo/image",
			"example-mirror-1.local/mirrors/foo/image",
			"internal-registry-for-example.com/bar/image",
		}},
		{"example.com/foo", false, []string{"example-mirror-0.local/mirror-for-foo", "example-mirror-1.local/mirrors/foo", "internal-registry-for-example.com/bar"}},
		{"example.com/foobar/image", false, nil}, // a prefix ends at '/'
		{"example.com/other", false, nil},
		{"registry.com/image", false, []string{"mirror.registry.com/image", "registry.com/image"}},
		{"registry.com:5000/image", false, nil}, // not the same registry
		// pull-from-mirror: a tag pull skips digest-only mirrors, a digest
		// pull tag-only ones.
		{"docker.io/library/alpine", false, []string{"tag-mirror.local/hub/alpine", "all-mirror.local/hub/alpine", "docker.io/library/alpine"}},
		{"docker.io/library/alpine", true, []string{"digest-mirror.local/hub/alpine", "all-mirror.local/hub/alpine", "docker.io/library/alpine"}},
		{"docker.io/someone/alpine", false, nil},
		// mirror-by-digest-only on the registry.
		{"quay.io/app", false, []string{"quay.io/app"}},
		{"quay.io/app", true, []string{"quay-mirror.local/app", "quay.io/app"}},
		// A wildcard matches hosts below the domain, at any depth and port.
		{"a.example.org/x", false, []string{"blocked"}},
		{"a.b.example.org:5000/x", false, []string{"blocked"}},
		{"example.org/x", false, nil},
		{"a.example.org.evil/x", false, nil},
	} {
		if got := pullSources(t, rc, tc.name, tc.digested); !slices.Equal(got, tc.want) {
			t.Errorf("pull sources of %s (digested %v) = %q, want %q", tc.name, tc.digested, got, tc.want)
		}
	}
}

// TestRegistriesConfDropIns reads a file and its drop-in directory: a
// drop-in's [[registry]] replaces one of the same prefix, others are kept,
// files are read in name order and only *.conf ones.
func TestRegistriesConfDropIns(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "registries.conf")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(main, "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\nlocation = \"m0.example\"\n\n[[registry]]\nlocation = \"b.example\"\n")
	write(filepath.Join(dir, "registries.conf.d/10-a.conf"), "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\nlocation = \"m1.example\"\n")
	write(filepath.Join(dir, "registries.conf.d/20-a.conf"), "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\nlocation = \"m2.example\"\n")
	write(filepath.Join(dir, "registries.conf.d/30-c.conf"), "[[registry]]\nlocation = \"c.example\"\nblocked = true\n")
	write(filepath.Join(dir, "registries.conf.d/40-bad.ignore"), "not toml at all [")
	rc, err := loadRegistriesConf(main)
	if err != nil {
		t.Fatal(err)
	}
	for n, want := range map[string][]string{
		"a.example/app": {"m2.example/app", "a.example/app"},
		"b.example/app": {"b.example/app"},
		"c.example/app": {"blocked"},
	} {
		if got := pullSources(t, rc, n, false); !slices.Equal(got, want) {
			t.Errorf("pull sources of %s = %q, want %q", n, got, want)
		}
	}
	write(filepath.Join(dir, "registries.conf.d/50-bad.conf"), "[[registry]]\nlocation = \"d.example\"\nmirrors = []\n")
	_, err = loadRegistriesConf(main)
	if err == nil || !strings.Contains(err.Error(), "50-bad.conf") || !strings.Contains(err.Error(), "mirrors") {
		t.Errorf("a bad drop-in: %v, want an error naming the file and key", err)
	}
	if _, err := loadRegistriesConf(filepath.Join(dir, "missing.conf")); err == nil {
		t.Errorf("loading a missing file succeeded")
	}
}

func TestParseRegistriesConfErrors(t *testing.T) {
	const file = "/etc/containers/registries.conf"
	for _, tc := range []struct {
		name, conf string
		want       []string
	}{
		{"unknown key", "[[registry]]\nlocation = \"a\"\ninsecur = true\n", []string{file, "registry.insecur", "unknown key"}},
		{"unknown mirror key", "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from = \"all\"\n", []string{file, "registry.mirror.pull-from"}},
		{"version 1", "[registries.search]\nregistries = [\"a\"]\n", []string{file, "key registries", "version 1"}},
		{"insecure not a bool", "[[registry]]\nlocation = \"a\"\ninsecure = \"yes\"\n", []string{file, "registry.insecure", "wrong type"}},
		{"pull-from-mirror value", "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"tags\"\n", []string{file, `registry "a": mirror 1`, "pull-from-mirror", `"tags"`}},
		{"pull-from-mirror on the registry", "[[registry]]\nlocation = \"a\"\npull-from-mirror = \"all\"\n", []string{file, "pull-from-mirror"}},
		{"pull-from-mirror beside mirror-by-digest-only", "[[registry]]\nlocation = \"a\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"all\"\n", []string{file, "mirror-by-digest-only"}},
		{"no prefix nor location", "[[registry]]\ninsecure = true\n", []string{file, "registry 1", "neither prefix nor location"}},
		{"no location", "[[registry]]\nprefix = \"a.example/x\"\n", []string{file, "key location"}},
		{"scheme in location", "[[registry]]\nlocation = \"https://a.example\"\n", []string{file, "key location", "no URL scheme"}},
		{"mirror without location", "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\ninsecure = true\n", []string{file, "mirror 1", "key location"}},
		{"bad location", "[[registry]]\nlocation = \"a b\"\n", []string{file, "key location"}},
		{"bad wildcard", "[[registry]]\nprefix = \"*.example.com/x\"\n", []string{file, "key prefix", "wildcard"}},
		{"wildcard inside", "[[registry]]\nprefix = \"a.*.com\"\nlocation = \"b\"\n", []string{file, "key prefix"}},
		{"conflicting insecure", "[[registry]]\nprefix = \"x/a\"\nlocation = \"b\"\n[[registry]]\nprefix = \"x/c\"\nlocation = \"b\"\ninsecure = true\n", []string{file, `location "b"`}},
		{"not TOML", "[[registry]\n", []string{file}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseRegistriesConf(file, []byte(tc.conf))
			if err == nil {
				t.Fatalf("parseRegistriesConf(%q) succeeded", tc.conf)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %v does not wrap ErrFormat", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestPrefixCover(t *testing.T) {
	for _, tc := range []struct {
		name, prefix string
		want         int
	}{
		{"a.example/x/y", "a.example", 9},
		{"a.example/x/y", "a.example/x", 11},
		{"a.example/x/y", "a.example/x/y", 13},
		{"a.example/xy", "a.example/x", -1},
		{"a.example:5000/x", "a.example", -1},
		{"b.a.example:5000/x", "*.a.example", 11},
		{"a.example/x", "*.a.example", -1},
		{"[::1]:5000/x", "[::1]:5000", 10},
	} {
		if got := prefixCover(tc.name, tc.prefix); got != tc.want {
			t.Errorf("prefixCover(%q, %q) = %d, want %d", tc.name, tc.prefix, got, tc.want)
		}
	}
}
