package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// sources returns the fixture image behind each kind of reference.
func sources(t *testing.T) map[string]string {
	img := fixtureImage(t)
	return map[string]string{
		"layout":   layoutRef(t, img),
		"registry": registryRef(t, img, nil),
	}
}

func TestInspect(t *testing.T) {
	img := fixtureImage(t)
	for name, ref := range sources(t) {
		t.Run(name, func(t *testing.T) {
			cache := isolate(t)
			r := mustRun(t, "--cache-dir", cache, "inspect", "--json", ref)
			var got inspectOutput
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("inspect --json output does not parse: %v\n%s", err, r.stdout)
			}
			if got.ManifestDigest != img.ManifestDesc.Digest {
				t.Errorf("manifest_digest = %s, want %s", got.ManifestDigest, img.ManifestDesc.Digest)
			}
			if got.ConfigDigest != img.ConfigDesc.Digest {
				t.Errorf("config_digest = %s, want %s", got.ConfigDigest, img.ConfigDesc.Digest)
			}
			if want := img.Platform.OS + "/" + img.Platform.Architecture; got.Platform != want {
				t.Errorf("platform = %q, want %q", got.Platform, want)
			}
			if len(got.Layers) != len(img.LayerDescs) {
				t.Fatalf("%d layers, want %d", len(got.Layers), len(img.LayerDescs))
			}
			wantModes := []string{"stream", "whole"} // a big gzip layer, a small zstd one
			for i, l := range got.Layers {
				if l.Index != i || l.Digest != img.LayerDescs[i].Digest || l.DiffID != img.DiffIDs[i] ||
					l.Size != img.LayerDescs[i].Size || l.MediaType != img.LayerDescs[i].MediaType {
					t.Errorf("layer %d = %+v, want digest %s diff_id %s size %d", i, l, img.LayerDescs[i].Digest, img.DiffIDs[i], img.LayerDescs[i].Size)
				}
				if l.Mode != wantModes[i] || l.Why == "" {
					t.Errorf("layer %d mode = %q (why %q), want %q with a reason", i, l.Mode, l.Why, wantModes[i])
				}
			}
			// inspect reads no layer bytes: nothing but manifest and config
			// may be in the cache.
			r = mustRun(t, "--cache-dir", cache, "cache", "ls")
			for _, d := range img.LayerDescs {
				if strings.Contains(r.stdout, d.Digest.String()) {
					t.Errorf("inspect cached layer %s", d.Digest)
				}
			}

			r = mustRun(t, "--cache-dir", cache, "inspect", ref)
			for _, w := range []string{"manifest", img.ManifestDesc.Digest.String(), "layer 1", "mode", "stream", "whole", "diff_id"} {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("inspect output lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

func TestLs(t *testing.T) {
	for name, ref := range sources(t) {
		t.Run(name, func(t *testing.T) {
			cache := isolate(t)
			tests := []struct {
				args []string
				want string
			}{
				{[]string{"ls", ref}, "abs\nbig.bin\nbin\netc\nloop1\nloop2\ntmp\nup\nusr\n"},
				{[]string{"ls", ref, "/etc"}, "motd\nos-release\nrelease\n"},
				{[]string{"ls", ref, "bin"}, "tool\n"},                        // a symlink named is followed
				{[]string{"ls", ref, "/etc/os-release"}, "/etc/os-release\n"}, // a file prints itself
			}
			for _, tt := range tests {
				r := mustRun(t, append([]string{"--cache-dir", cache}, tt.args...)...)
				if r.stdout != tt.want {
					t.Errorf("ocifs %q = %q, want %q", tt.args, r.stdout, tt.want)
				}
			}
			r := mustRun(t, "--cache-dir", cache, "ls", "-l", ref, "/")
			for _, w := range []string{
				"lrwxrwxrwx 1 0 0       7 2024-03-04 05:06 bin -> usr/bin",
				"drwxrwxrwt",
				"-rw------- 1 0 0 " + strconv.Itoa(len(fixtureBig)) + " 2024-03-04 05:06 big.bin",
			} {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("ls -l lacks %q:\n%s", w, r.stdout)
				}
			}
			r = mustRun(t, "--cache-dir", cache, "ls", "-l", ref, "/usr/bin/tool")
			if !strings.HasPrefix(r.stdout, "-rwsr-xr-x ") || !strings.HasSuffix(r.stdout, " /usr/bin/tool\n") {
				t.Errorf("ls -l /usr/bin/tool = %q", r.stdout)
			}
			r = runCLI(t, "--cache-dir", cache, "ls", ref, "/gone.txt")
			if want := "/gone.txt: no such file or directory in "; r.code != 1 || !strings.Contains(r.stderr, want) {
				t.Errorf("ls of a whited-out file: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
			}
		})
	}
}

func TestCat(t *testing.T) {
	for name, ref := range sources(t) {
		t.Run(name, func(t *testing.T) {
			cache := isolate(t)
			tests := []struct {
				path string
				want string
			}{
				{"/etc/os-release", fixtureRelease},
				{"etc/os-release", fixtureRelease},
				{"/etc/release", fixtureRelease},  // relative symlink
				{"/abs", fixtureRelease},          // absolute symlink, resolved inside the image
				{"/up", fixtureRelease},           // ".." stops at the image root
				{"/bin/tool", fixtureTool},        // symlink in a parent
				{"/etc/motd", fixtureMotd},        // from the top layer
				{"/big.bin", string(fixtureBig)},  // over the whole-layer threshold
				{"/usr/../etc/motd", fixtureMotd}, // ".." in the path
			}
			for _, tt := range tests {
				r := mustRun(t, "--cache-dir", cache, "cat", ref, tt.path)
				if r.stdout != tt.want {
					t.Errorf("cat %s: got %d bytes, want %d (%.40q vs %.40q)", tt.path, len(r.stdout), len(tt.want), r.stdout, tt.want)
				}
			}
			fails := []struct {
				path, want string
			}{
				{"/gone.txt", "/gone.txt: no such file or directory in "},
				{"/nope/x", "/nope/x: no such file or directory in "},
				{"/etc", "/etc: is a directory"},
				{"/loop1", "/loop1: too many levels of symbolic links"},
				{"/etc/os-release/x", "not a directory"},
			}
			for _, f := range fails {
				r := runCLI(t, "--cache-dir", cache, "cat", ref, f.path)
				if r.code != exitFailure || !strings.Contains(r.stderr, f.want) || r.stdout != "" {
					t.Errorf("cat %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", f.path, r.code, r.stdout, r.stderr, f.want)
				}
			}
		})
	}
}

func TestPull(t *testing.T) {
	requireRoot(t) // pull sets owners
	ref := layoutRef(t, fixtureImage(t))
	dir := filepath.Join(t.TempDir(), "rootfs")
	r := mustRun(t, "--cache-dir", isolate(t), "pull", ref, dir)
	if !strings.Contains(r.stderr, "pulled "+ref) || !strings.Contains(r.stderr, "files") {
		t.Errorf("pull summary = %q", r.stderr)
	}
	for p, want := range map[string]string{"etc/os-release": fixtureRelease, "etc/motd": fixtureMotd, "big.bin": string(fixtureBig)} {
		got, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || !bytes.Equal(got, []byte(want)) {
			t.Errorf("pulled %s: %d bytes, err %v; want %d bytes", p, len(got), err, len(want))
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "gone.txt")); !os.IsNotExist(err) {
		t.Errorf("whited-out gone.txt: Lstat err = %v, want not exist", err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin")); err != nil || target != "usr/bin" {
		t.Errorf("bin -> %q, %v; want usr/bin", target, err)
	}
	r = runCLI(t, "--cache-dir", isolate(t), "pull", ref, dir)
	if r.code != exitFailure || !strings.Contains(r.stderr, "not empty") {
		t.Errorf("pull into a non-empty dir: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestUnauthorized serves a registry that demands credentials nobody has.
func TestUnauthorized(t *testing.T) {
	ref := registryRef(t, fixtureImage(t), func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "" {
				w.Header().Set("WWW-Authenticate", `Basic realm="ocifs-test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	for _, cmd := range [][]string{{"inspect", ref}, {"cat", ref, "/etc/os-release"}} {
		r := runCLI(t, append([]string{"--cache-dir", isolate(t)}, cmd...)...)
		if r.code != exitFailure {
			t.Fatalf("ocifs %q: exit %d, want 1; stderr %s", cmd, r.code, r.stderr)
		}
		for _, w := range []string{"401", "docker login", "ocifs: "} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("ocifs %q: stderr lacks %q:\n%s", cmd, w, r.stderr)
			}
		}
	}
}
