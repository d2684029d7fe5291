package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigErrors: a mistake in the configuration file stops the command
// before it runs, with an error naming the file, the line and the key.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"unknown key", "log-level = \"info\"\n\n[mount]\ncache-maxx = \"1G\"\n",
			[]string{":4: unknown key mount.cache-maxx", "known in [mount]: ", "cache-max"}},
		{"unknown global key", "cache_dir = \"/x\"\n", []string{":1: unknown key cache_dir", "known at the top: ", "cache-dir"}},
		{"bad value", "[mount]\nprefetch = \"all\"\ncache-max = \"lots\"\n", []string{":3: key mount.cache-max: ", "not a size"}},
		{"bad duration", "[cache.prune]\nolder-than = \"a week\"\n", []string{":2: key cache.prune.older-than: "}},
		{"unknown table", "[mnt]\nprefetch = \"none\"\n", []string{":2: key mnt.prefetch: no command \"mnt\"", "[mount]"}},
		{"global in a table", "[mount]\ncache-dir = \"/x\"\n", []string{":2: key mount.cache-dir: cache-dir is a global flag"}},
		{"hidden flag", "[mount]\nready-fd = 3\n", []string{":2: unknown key mount.ready-fd"}},
		{"wrong type", "[mount]\nprefetch = [\"all\"]\n", []string{":2: key mount.prefetch: ", "want a string, number or boolean"}},
		{"array of numbers", "index-repo = [1, 2]\n", []string{":1: key index-repo: an array holding a Integer; want an array of strings"}},
		{"array element with a comma", "index-repo = [\"a/b,c/d\"]\n", []string{":1: key index-repo: array element \"a/b,c/d\""}},
		{"empty array", "index-repo = []\n", []string{":1: key index-repo: an empty array"}},
		{"bad index repository", "index-repo = [\"registry.example/ok\", \"registry.example/idx:v1\"]\n", []string{":1: key index-repo: ", "without tag or digest"}},
		{"syntax", "log-level = \"info\"\nprogress = \n", []string{":2: "}},
		{"twice", "progress = \"none\"\nprogress = \"plain\"\n", []string{":2: key progress: set again (first on line 1)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := writeConfig(t, tt.text)
			cache := isolate(t)
			r := runCLI(t, "--config", file, "--cache-dir", cache, "cache", "du")
			if r.code != exitFailure {
				t.Errorf("exit %d, want 1; stderr:\n%s", r.code, r.stderr)
			}
			for _, w := range append(tt.want, "config "+file) {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("the command ran: stdout %q", r.stdout)
			}
			if _, err := os.Stat(cache); !os.IsNotExist(err) {
				t.Errorf("the command touched the cache %s", cache)
			}
		})
	}
	r := runCLI(t, "--config", filepath.Join(t.TempDir(), "none.toml"), "cache", "du")
	if r.code != exitFailure || !strings.Contains(r.stderr, "none.toml") {
		t.Errorf("a missing --config: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestConfigApplies: the file's settings apply, globals at the top and a
// command's in its table; the command line wins.
func TestConfigApplies(t *testing.T) {
	cache := isolate(t)
	other := isolate(t)
	file := writeConfig(t, "cache-dir = \""+cache+"\"\nprogress = \"none\"\n\n[cache.prune]\nolder-than = \"7d\"\n\n[mount]\ncache-max = \"2G\"\n")
	r := mustRun(t, "--config", file, "cache", "du")
	if !strings.Contains(r.stdout, "cache  "+cache) {
		t.Errorf("cache du with cache-dir from the file:\n%s", r.stdout)
	}
	r = mustRun(t, "--config", file, "--cache-dir", other, "cache", "du")
	if !strings.Contains(r.stdout, "cache  "+other) {
		t.Errorf("--cache-dir on the command line does not win:\n%s", r.stdout)
	}
	r = mustRun(t, "--config", file, "cache", "prune")
	if !strings.Contains(r.stdout, "pruned unused for 7d") {
		t.Errorf("[cache.prune] older-than not applied: %q", r.stdout)
	}
	r = mustRun(t, "cache", "prune", "--older-than", "3d", "--config", file)
	if !strings.Contains(r.stdout, "pruned unused for 3d") {
		t.Errorf("--older-than on the command line does not win: %q", r.stdout)
	}
}

// TestConfigDaemon: a mount's daemon reads the same file, so a setting
// only the file holds reaches it (here: where it serves metrics).
func TestConfigDaemon(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	ref := layoutRef(t, fixtureImage(t))
	cache := isolate(t)
	file := writeConfig(t, "cache-dir = \""+cache+"\"\n[mount]\nmetrics-address = \"127.0.0.1:0\"\nprefetch = \"none\"\n")
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--config", file, "mount", ref, dir)
	if code != 0 {
		t.Fatalf("mount with --config: exit %d\n%s%s", code, out, errs)
	}
	st, err := readState(namePaths(cache, dir))
	if err != nil || st.Metrics == "" {
		t.Errorf("the daemon serves no metrics: state %+v, %v", st, err)
	}
	cmdline, _ := os.ReadFile("/proc/" + itoa(st.PID) + "/cmdline")
	if !strings.Contains(string(cmdline), "--config="+file) || !strings.Contains(string(cmdline), "--prefetch=none") {
		t.Errorf("daemon command line %q", strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	if _, errs, code := execOcifs(t, bin, "unmount", dir); code != 0 {
		t.Fatalf("unmount: %d %s", code, errs)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// FuzzParseConfig: no configuration file makes the parser panic, and what
// it accepts names its keys.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"cache-dir = \"/var/cache/ocifs\"\n[mount]\ncache-max = \"20G\"\nallow-other = true\n",
		"[cache.prune]\nolder-than = \"7d\"\nmax-size = 10_000\n",
		"a.b.c = 1.5\n[[x]]\n", "index-repo = [\"r.example/a\", \"r.example/b\"]\n", "k = [\"a\", 1]\n", "k = [[\"a\"]]\n", "k = []\n", "[mount\n", "k = [1, 2]\n", "k = { a = 1 }\n", "k = 0x1F\n", "k = 1979-05-27\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		settings, err := parseConfig("fuzz.toml", b)
		if err != nil {
			return
		}
		for _, s := range settings {
			if s.key == "" || s.line <= 0 {
				t.Errorf("setting %+v: no key or line", s)
			}
			if s.array && (s.value == "" || strings.ContainsAny(s.value, "\"\r\n") || strings.Contains(s.value, ",,")) {
				t.Errorf("array setting %+v: a value a slice flag would split wrongly", s)
			}
		}
	})
}
