package critest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		out     string
		want    Version
		wantErr bool
	}{
		{out: "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n", want: Version{1, 6, 20, "1.6.20~ds1"}},
		{out: "containerd github.com/containerd/containerd/v2 2.4.2+unknown \n", want: Version{2, 4, 2, "2.4.2+unknown"}},
		{out: "containerd github.com/containerd/containerd v1.7.16 83031836b2cf55637d7abf847b17134c51b38e53\n", want: Version{1, 7, 16, "v1.7.16"}},
		{out: "containerd github.com/containerd/containerd/v2 v2.1.0-rc.1 abc\n", want: Version{2, 1, 0, "v2.1.0-rc.1"}},
		{out: "runc version 1.1.5", wantErr: true},
		{out: "containerd github.com/containerd/containerd dev", wantErr: true},
		{out: "", wantErr: true},
	} {
		got, err := ParseVersion(tc.out)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseVersion(%q) = %+v, %v; want %+v, error %v", tc.out, got, err, tc.want, tc.wantErr)
		}
	}
}

// configCase is one configuration the harness writes.
type configCase struct {
	name  string
	proxy *ProxySnapshotter
	pull  PullMode
}

func configCases(v Version) []configCase {
	cases := []configCase{
		{name: "overlayfs", pull: PullLocal},
		{name: "proxy-local", proxy: &ProxySnapshotter{Name: "fake", Address: "/run/fake.sock"}, pull: PullLocal},
		{name: "proxy-local-nolabels", proxy: &ProxySnapshotter{Name: "fake", Address: "/run/fake.sock", WithoutLabels: true}, pull: PullLocal},
	}
	if v.AtLeast(2, 1) {
		cases = append(cases,
			configCase{name: "overlayfs-transfer", pull: PullTransfer},
			configCase{name: "proxy-transfer", proxy: &ProxySnapshotter{Name: "fake", Address: "/run/fake.sock"}, pull: PullTransfer},
			configCase{name: "proxy-transfer-nolabels", proxy: &ProxySnapshotter{Name: "fake", Address: "/run/fake.sock", WithoutLabels: true}, pull: PullTransfer})
	}
	return cases
}

// testInput is a configuration input with awkward paths: a space, a quote
// and a backslash must survive the TOML quoting.
func testInput(v Version, cc configCase) configInput {
	odd := `/tmp/odd dir/"q"\b`
	return configInput{
		version: v, root: odd + "/root", state: odd + "/state", address: odd + "/c.sock",
		hostsDir: odd + "/certs.d", optDir: odd + "/opt", cniDir: odd + "/cni",
		shim: "/usr/bin/containerd-shim-runc-v2", runc: DebianRunc, runcRoot: odd + "/state/runc",
		sandboxImage: "127.0.0.1:5000/critest/pause:1", proxy: cc.proxy, pull: cc.pull,
	}
}

// lookup follows keys through nested TOML tables.
func lookup(m map[string]any, keys ...string) (any, bool) {
	var v any = m
	for _, k := range keys {
		t, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = t[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

// TestConfigContent decodes each configuration the harness writes and
// checks the settings the harness exists for, per config version.
func TestConfigContent(t *testing.T) {
	for _, v := range []Version{{Major: 1, Minor: 6, Patch: 20}, {Major: 2, Minor: 0, Patch: 0}, {Major: 2, Minor: 4, Patch: 2}} {
		for _, cc := range configCases(v) {
			t.Run(v.String()+"/"+cc.name, func(t *testing.T) {
				in := testInput(v, cc)
				var m map[string]any
				if err := toml.Unmarshal([]byte(config(in)), &m); err != nil {
					t.Fatalf("config does not parse: %v\n%s", err, config(in))
				}
				want := map[string]any{"root": in.root, "state": in.state}
				labels := cc.proxy != nil && !cc.proxy.WithoutLabels
				snap := "overlayfs"
				if cc.proxy != nil {
					snap = cc.proxy.Name
				}
				var paths map[string][]string
				if v.Major < 2 {
					cri := []string{"plugins", "io.containerd.grpc.v1.cri"}
					paths = map[string][]string{
						"restrict":    append(cri, "restrict_oom_score_adj"),
						"sandbox":     append(cri, "sandbox_image"),
						"snapshotter": append(cri, "containerd", "snapshotter"),
						"annotations": append(cri, "containerd", "disable_snapshot_annotations"),
						"config_path": append(cri, "registry", "config_path"),
						"runc":        append(cri, "containerd", "runtimes", "runc", "options", "BinaryName"),
					}
				} else {
					img := []string{"plugins", "io.containerd.cri.v1.images"}
					rt := []string{"plugins", "io.containerd.cri.v1.runtime"}
					paths = map[string][]string{
						"restrict":    append(rt, "restrict_oom_score_adj"),
						"sandbox":     append(img, "pinned_images", "sandbox"),
						"snapshotter": append(img, "snapshotter"),
						"annotations": append(img, "disable_snapshot_annotations"),
						"config_path": append(img, "registry", "config_path"),
						"runc":        append(rt, "containerd", "runtimes", "runc", "options", "BinaryName"),
						"local":       append(img, "use_local_image_pull"),
					}
				}
				// On the transfer path disable_snapshot_annotations must
				// stay true (false would switch CRI to the local pull);
				// the export carries the labels.
				want["annotations"] = !labels || cc.pull == PullTransfer
				want["restrict"], want["sandbox"], want["snapshotter"] = true, in.sandboxImage, snap
				want["config_path"], want["runc"] = in.hostsDir, in.runc
				if v.AtLeast(2, 1) {
					want["local"] = cc.pull == PullLocal
				}
				for name, w := range want {
					keys := []string{name}
					if p, ok := paths[name]; ok {
						keys = p
					}
					got, ok := lookup(m, keys...)
					if !ok || got != w {
						t.Errorf("%s = %v (set: %v), want %v", strings.Join(keys, "."), got, ok, w)
					}
				}
				exp, hasExp := lookup(m, "proxy_plugins", "fake", "exports", "enable_remote_snapshot_annotations")
				if wantExp := labels && v.Major >= 2; hasExp != wantExp || hasExp && exp != "true" {
					t.Errorf("proxy exports enable_remote_snapshot_annotations = %v (set: %v), want set: %v", exp, hasExp, wantExp)
				}
				uc, hasUC := lookup(m, "plugins", "io.containerd.transfer.v1.local", "unpack_config")
				if wantUC := v.Major >= 2 && cc.proxy != nil; hasUC != wantUC {
					t.Errorf("transfer unpack_config = %v (set: %v), want set: %v", uc, hasUC, wantUC)
				}
			})
		}
	}
}

// TestConfigKeysKnown has containerd itself check the keys: `containerd
// config dump` prints the configuration as containerd decoded it, so a
// key it does not know (a wrong name, or one in the wrong table for the
// version) is missing there. Every value the harness writes must come out
// the same; containerd 2.x must also not warn about an unknown key.
func TestConfigKeysKnown(t *testing.T) {
	for _, b := range binaries() {
		t.Run(b.name, func(t *testing.T) {
			if b.path == "" {
				t.Skipf("%s not set: `make test-containerd2` runs the containerd 2.x tests", Containerd2DirEnv)
			}
			if _, err := os.Stat(b.path); err != nil {
				skipOrFail(t, "needs "+b.path+": "+err.Error())
			}
			v, err := BinaryVersion(t.Context(), b.path)
			if err != nil {
				t.Fatal(err)
			}
			for _, cc := range configCases(v) {
				t.Run(cc.name, func(t *testing.T) {
					in := testInput(v, cc)
					p := filepath.Join(t.TempDir(), "config.toml")
					if err := os.WriteFile(p, []byte(config(in)), 0o644); err != nil {
						t.Fatal(err)
					}
					cmd := exec.CommandContext(t.Context(), b.path, "--config", p, "config", "dump")
					var stderr strings.Builder
					cmd.Stderr = &stderr
					out, err := cmd.Output()
					if err != nil {
						t.Fatalf("%s config dump: %v\n%s", b.path, err, stderr.String())
					}
					if strings.Contains(stderr.String(), "nknown key") {
						t.Errorf("containerd warns about keys it does not know:\n%s", stderr.String())
					}
					var ours, dumped map[string]any
					if err := toml.Unmarshal([]byte(config(in)), &ours); err != nil {
						t.Fatal(err)
					}
					if err := toml.Unmarshal(out, &dumped); err != nil {
						t.Fatalf("decode dump: %v\n%s", err, out)
					}
					// 2.4 migrates version 3 to 4 on load, which moves
					// [grpc] into the plugin io.containerd.server.v1.grpc.
					delete(ours, "version")
					if v, _ := dumped["version"].(int64); v >= 4 {
						if g, ok := ours["grpc"]; ok {
							ours["plugins"].(map[string]any)["io.containerd.server.v1.grpc"] = g
							delete(ours, "grpc")
						}
					}
					for _, d := range subset("", ours, dumped) {
						t.Error(d)
					}
				})
			}
		})
	}
}

// subset returns a line for every value in ours that dumped lacks or
// holds differently; tables and arrays of tables are compared member by
// member, so dumped may hold more.
func subset(path string, ours, dumped any) []string {
	switch o := ours.(type) {
	case map[string]any:
		d, ok := dumped.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: a table in ours, %T in the dump", path, dumped)}
		}
		keys := make([]string, 0, len(o))
		for k := range o {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			dv, ok := d[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s = %v: containerd dropped it (unknown key)", path, k, o[k]))
				continue
			}
			out = append(out, subset(path+"."+k, o[k], dv)...)
		}
		return out
	case []any:
		d, ok := dumped.([]any)
		if !ok || len(d) != len(o) {
			return []string{fmt.Sprintf("%s = %v, dump has %v", path, ours, dumped)}
		}
		var out []string
		for i := range o {
			out = append(out, subset(fmt.Sprintf("%s[%d]", path, i), o[i], d[i])...)
		}
		return out
	}
	if !reflect.DeepEqual(ours, dumped) {
		return []string{fmt.Sprintf("%s = %v, dump has %v", path, ours, dumped)}
	}
	return nil
}
