package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string // substrings of stdout
	}{
		{[]string{"--help"}, []string{"ocifs mount registry.example.com/app:1.4 /mnt/app", "ocifs cat oci:./layout:v1 /etc/os-release",
			"ocifs stats --json /mnt/app | jq .bytes_fetched", "--cache-dir", "Exit status", "Lazy means", "unmount"}},
		{[]string{"-h"}, []string{"Commands:"}},
		{[]string{"help"}, []string{"Commands:"}},
		{[]string{"help", "mount"}, []string{"usage: ocifs mount [flags] IMAGE MOUNTPOINT"}},
		{[]string{"help", "cache", "prune"}, []string{"usage: ocifs cache prune"}},
		{[]string{"--help", "mount"}, []string{"usage: ocifs mount"}},
		{[]string{"mount", "--help"}, []string{"--foreground", "--prefetch", "--allow-other", "--suid", "--dev", "--debug-fuse", "Examples:", "ocifs unmount /mnt/app",
			"--index-repo REGISTRY/REPO", "index repository holds indexes of images one cannot push to", "ocifs mount --index-repo"}},
		{[]string{"mount", "-h", "extra", "args", "ignored"}, []string{"usage: ocifs mount"}},
		{[]string{"unmount", "--help"}, []string{"--lazy", "Examples:"}},
		{[]string{"stats", "--help"}, []string{"--json", "Examples:"}},
		{[]string{"inspect", "--help"}, []string{"--json", "Examples:"}},
		{[]string{"ls", "--help"}, []string{"-l, --long", "Examples:"}},
		{[]string{"cat", "--help"}, []string{"Examples:"}},
		{[]string{"pull", "--help"}, []string{"Examples:"}},
		{[]string{"index", "--help"}, []string{"Examples:", "index build"}},
		{[]string{"index", "build", "--help"}, []string{"Examples:", "--push", "--span-size", "referrer",
			"Images one cannot push to", "index build --push --index-repo"}},
		{[]string{"bench", "--help"}, []string{"Examples:", "issue 6", "--quick"}},
		{[]string{"cache", "--help"}, []string{"Examples:", "Subcommands:", "ocifs cache prune"}},
		{[]string{"cache", "ls", "--help"}, []string{"Examples:"}},
		{[]string{"cache", "du", "--help"}, []string{"Examples:"}},
		{[]string{"cache", "prune", "--help"}, []string{"--all", "--older-than", "Examples:"}},
		{[]string{"--cache-dir", "/nonexistent", "cache", "--help"}, []string{"Subcommands:"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := runCLI(t, tt.args...)
			if r.code != 0 {
				t.Fatalf("exit %d, want 0; stderr:\n%s", r.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help output lacks %q:\n%s", w, r.stdout)
				}
			}
			if r.stderr != "" {
				t.Errorf("stderr = %q, want nothing", r.stderr)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string // substring of stderr
	}{
		{"no command", nil, "no command given"},
		{"unknown command", []string{"frob"}, `unknown command "frob"`},
		{"unknown global flag", []string{"--frob", "ls", "x"}, "unknown flag: --frob"},
		{"unknown command flag", []string{"mount", "--nope", "img", dir}, "unknown flag: --nope"},
		{"mount one arg", []string{"mount", "img"}, "mount needs IMAGE MOUNTPOINT, got 1"},
		{"mount three args", []string{"mount", "img", dir, "more"}, "mount takes IMAGE MOUNTPOINT, got 3"},
		{"cat one arg", []string{"cat", "img"}, "cat needs IMAGE PATH"},
		{"ls no args", []string{"ls"}, "ls needs IMAGE [PATH]"},
		{"unmount no args", []string{"unmount"}, "unmount needs MOUNTPOINT"},
		{"stats two args", []string{"stats", "a", "b"}, "stats takes MOUNTPOINT, got 2"},
		{"bad platform", []string{"--platform", "linux", "inspect", "img"}, "--platform"},
		{"bad platform after command", []string{"inspect", "img", "--platform=a/b/c/d"}, "--platform"},
		{"bad log level", []string{"--log-level", "loud", "ls", "img"}, `--log-level: "loud"`},
		{"bad prefetch", []string{"mount", "--prefetch=some", "img", dir}, `--prefetch: "some"`},
		{"cache without subcommand", []string{"cache"}, "cache needs a subcommand: ls, du, prune"},
		{"cache unknown subcommand", []string{"cache", "frob"}, `unknown cache subcommand "frob"`},
		{"cache ls args", []string{"cache", "ls", "x"}, "cache ls takes no arguments"},
		{"bad older-than", []string{"cache", "prune", "--older-than", "soon"}, `age "soon"`},
		{"help unknown", []string{"help", "frob"}, `unknown command "frob"`},
		{"index repo with a tag", []string{"--index-repo", "registry.example/idx:v1", "inspect", "img"}, "without tag or digest"},
		{"index repo a layout", []string{"inspect", "img", "--index-repo=oci:/x"}, "an OCI layout; want REGISTRY/REPO"},
		{"push-index-to with a digest", []string{"mount", "--push-index-to", "r.example/p@sha256:00", "img", dir}, "a digest; want REGISTRY/REPO"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, tt.args...)
			if r.code != exitUsage {
				t.Fatalf("ocifs %q: exit %d, want %d; stderr:\n%s", tt.args, r.code, exitUsage, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "ocifs: ") || !strings.Contains(r.stderr, "usage: ") {
				t.Errorf("stderr is not `ocifs: <error>` then the usage:\n%s", r.stderr)
			}
		})
	}
}

func TestFailures(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	cache := isolate(t)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"mount on a missing mountpoint", []string{"--cache-dir", cache, "mount", "oci:/nowhere:v1", missing},
			[]string{"mountpoint " + missing + " does not exist", "create it with mkdir -p " + missing}},
		{"mount on a file", []string{"--cache-dir", cache, "mount", "oci:/nowhere:v1", "cli_test.go"}, []string{"is not a directory"}},
		{"mount writable over the mountpoint", []string{"--cache-dir", cache, "mount", "--writable", "--upper", dir + "/up", "img", dir}, []string{"overlap"}},
		{"mount writable, upper a file", []string{"--cache-dir", cache, "mount", "--writable", "--upper", "cli_test.go", "img", dir}, []string{"is not a directory"}},
		{"index build of a missing layout", []string{"--cache-dir", cache, "index", "build", "oci:" + missing + ":v1"}, []string{missing}},
		{"bench with an unknown image", []string{"bench", "--images", "nope"}, []string{`unknown image "nope"`}},
		{"unmount not mounted", []string{"--cache-dir", cache, "unmount", dir}, []string{"unmount " + dir + ": not mounted"}},
		{"stats not mounted", []string{"--cache-dir", cache, "stats", dir}, []string{"no ocifs mount there"}},
		{"inspect missing layout", []string{"--cache-dir", cache, "inspect", "oci:" + missing + ":v1"}, []string{missing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, tt.args...)
			if r.code != exitFailure {
				t.Fatalf("exit %d, want %d; stderr:\n%s", r.code, exitFailure, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "usage:") {
				t.Errorf("a failure printed the usage:\n%s", r.stderr)
			}
		})
	}
}

func TestMountNeedsRoot(t *testing.T) {
	if err := checkFUSE(); err == nil {
		t.Skip("running as root with /dev/fuse: the hint cannot show")
	}
	r := runCLI(t, "--cache-dir", isolate(t), "mount", "oci:/nowhere:v1", t.TempDir())
	if r.code != exitFailure || !strings.Contains(r.stderr, needFUSE) {
		t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and %q", r.code, r.stderr, needFUSE)
	}
}

func TestDaemonArgs(t *testing.T) {
	g := &globals{cacheDir: "/c", platform: "linux/arm64", insecure: true, logLevel: "debug", indexRepos: []string{"r.example/a", "r.example/b"}}
	o := &mountOpts{prefetch: "none", allowOther: true, dev: true, noPassthru: true, pushIndex: "r.example/p"}
	got := strings.Join(daemonArgs(g, "-img", "/mnt/x", o), " ")
	want := "--cache-dir=/c --platform=linux/arm64 --insecure --log-level=debug --index-repo=r.example/a --index-repo=r.example/b mount --foreground --ready-fd=3 --prefetch=none --push-index-to=r.example/p --allow-other --dev --no-passthrough -- -img /mnt/x"
	if got != want {
		t.Errorf("daemonArgs = %q, want %q", got, want)
	}
}

func TestMountName(t *testing.T) {
	tests := []struct {
		dir, suffix string
	}{
		{"/mnt/app", "-app"},
		{"/mnt/a b/c d", "-c_d"},
		{"/", "-_"},
		{"/mnt/.hidden", "-hidden"},
		{"/mnt/" + strings.Repeat("x", 100), "-" + strings.Repeat("x", 24)},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		got := mountName(tt.dir)
		if !strings.HasSuffix(got, tt.suffix) || len(got) != 17+len(tt.suffix)-1 {
			t.Errorf("mountName(%q) = %q, want 16 hex digits then %q", tt.dir, got, tt.suffix)
		}
		if seen[got] {
			t.Errorf("mountName(%q) = %q collides", tt.dir, got)
		}
		seen[got] = true
	}
}
