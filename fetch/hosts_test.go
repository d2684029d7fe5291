package fetch

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// readTestdata returns testdata/mirrors/name.
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "mirrors", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostSummary is what a test compares of an endpointSpec.
type hostSummary struct {
	scheme, host, root string
	caps               capability
}

func summarize(cfg *hostsConfig) []hostSummary {
	var out []hostSummary
	for _, s := range cfg.hosts {
		out = append(out, hostSummary{s.scheme, s.host, s.root, s.caps})
	}
	return out
}

func TestParseHostsTOML(t *testing.T) {
	const file = "/etc/containerd/certs.d/docker.io/hosts.toml"
	cfg, err := parseHostsTOML(file, readTestdata(t, "hosts-docs.toml"))
	if err != nil {
		t.Fatal(err)
	}
	want := []hostSummary{
		{"https", "mirror.registry", "/v2", capPull},
		{"https", "mirror-bak.registry", "/us/v2", capPull},
		{"http", "mirror.registry", "/v2", capPull},
		{"https", "test-1.registry", "/v2", capPull | capResolve | capPush},
		{"https", "test-2.registry", "/v2", capAll},
		{"https", "test-3.registry", "/v2", capAll},
		{"https", "non-compliant-mirror.registry", "/v2/upstream", capPull},
		{"https", "registry-1.docker.io", "/v2", capAll},
	}
	if got := summarize(cfg); !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts =\n%v\nwant\n%v", got, want)
	}
	h := cfg.hosts
	if got := h[0].header.Values("X-Custom-2"); !slices.Equal(got, []string{"value1", "value2"}) {
		t.Errorf("header x-custom-2 = %q, want value1, value2", got)
	}
	if h[0].skipVerify == nil || *h[0].skipVerify || h[1].skipVerify == nil || !*h[1].skipVerify || h[2].skipVerify != nil {
		t.Errorf("skip_verify = %v %v %v, want false, true, unset", h[0].skipVerify, h[1].skipVerify, h[2].skipVerify)
	}
	if got, want := h[3].caFiles, []string{"/etc/certs/test-1-ca.pem", "/etc/containerd/certs.d/docker.io/special.pem"}; !slices.Equal(got, want) {
		t.Errorf("ca = %q, want %q (relative to the file)", got, want)
	}
	if got, want := h[3].clientPairs, [][2]string{{"/etc/certs/client.cert", "/etc/certs/client.key"}, {"/etc/certs/client.pem", ""}}; !reflect.DeepEqual(got, want) {
		t.Errorf("client pairs = %q, want %q", got, want)
	}
	if got, want := h[4].clientPairs, [][2]string{{"/etc/certs/client.pem", ""}}; !reflect.DeepEqual(got, want) {
		t.Errorf("client string = %q, want %q", got, want)
	}
	if got, want := h[5].clientPairs, [][2]string{{"/etc/certs/client-1.pem", ""}, {"/etc/certs/client-2.pem", ""}}; !reflect.DeepEqual(got, want) {
		t.Errorf("client list = %q, want %q", got, want)
	}
	if h[6].dialTimeout != time.Second {
		t.Errorf("dial_timeout = %v, want 1s", h[6].dialTimeout)
	}
	for _, s := range h {
		if !strings.HasPrefix(s.origin, file) {
			t.Errorf("origin %q does not name the file", s.origin)
		}
	}
}

func TestParseHostsTOMLForms(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []hostSummary
	}{
		{"hosts-default.toml", []hostSummary{
			{"https", "registry.example.com", "/v2", capPull | capResolve},
			{"", "", "/v2", capAll}, // no server: the registry itself
		}},
		{"hosts-dotted.toml", []hostSummary{
			{"https", "b.example", "/v2", capPull},
			{"https", "a.example", "/v2", capPull | capResolve},
			{"", "", "/v2", capAll},
		}},
		{"hosts-table.toml", []hostSummary{
			{"https", "c.example", "/v2", capAll},
			{"https", "a.example", "/v2", capPull | capResolve},
			{"", "", "/v2", capAll},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			cfg, err := parseHostsTOML("/d/"+tc.file, readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if got := summarize(cfg); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("hosts = %v, want %v", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		server   string
		override bool
		want     hostSummary
	}{
		{"registry.example", false, hostSummary{"https", "registry.example", "/v2", capAll}},
		{"http://10.0.0.1:5000", false, hostSummary{"http", "10.0.0.1:5000", "/v2", capAll}},
		{"https://r.example/v2", false, hostSummary{"https", "r.example", "/v2", capAll}},
		{"https://r.example/a/b/", false, hostSummary{"https", "r.example", "/a/b/v2", capAll}},
		{"https://r.example/", false, hostSummary{"https", "r.example", "/v2", capAll}},
		{"https://r.example/api", true, hostSummary{"https", "r.example", "/api", capAll}},
		{"https://r.example", true, hostSummary{"https", "r.example", "", capAll}},
		{"https://[::1]:5000", false, hostSummary{"https", "[::1]:5000", "/v2", capAll}},
	} {
		b := "server = \"" + tc.server + "\"\n"
		if tc.override {
			b += "override_path = true\n"
		}
		cfg, err := parseHostsTOML("/d/hosts.toml", []byte(b))
		if err != nil {
			t.Errorf("server %q: %v", tc.server, err)
			continue
		}
		if got := summarize(cfg); len(got) != 1 || got[0] != tc.want {
			t.Errorf("server %q override %v = %v, want %v", tc.server, tc.override, got, tc.want)
		}
	}
}

func TestParseHostsTOMLErrors(t *testing.T) {
	const file = "/etc/containerd/certs.d/r.example/hosts.toml"
	for _, tc := range []struct {
		name, toml string
		want       []string // substrings of the error
	}{
		{"unknown top-level key", "sever = \"https://r\"\n", []string{file, ":1:", "key sever"}},
		{"unknown host key", "[host.\"https://m\"]\ncapabilites = [\"pull\"]\n", []string{file, `key host."https://m".capabilites`, "unknown"}},
		{"skip_verify not a bool", "[host.\"https://m\"]\nskip_verify = \"yes\"\n", []string{file, `host."https://m".skip_verify`}},
		{"unknown capability", "[host.\"https://m\"]\ncapabilities = [\"pull\", \"mirror\"]\n", []string{file, `host."https://m"`, "capabilities", `"mirror"`}},
		{"ca of the wrong type", "[host.\"https://m\"]\nca = 3\n", []string{file, "key ca"}},
		{"ca list of numbers", "ca = [\"a.pem\", 3]\n", []string{file, "key ca"}},
		{"client pair too long", "client = [[\"a\", \"b\", \"c\"]]\n", []string{file, "key client"}},
		{"client of the wrong type", "client = true\n", []string{file, "key client"}},
		{"header of the wrong type", "[header]\nx-a = 1\n", []string{file, "header.\"x-a\""}},
		{"header name", "[header]\n\"bad name\" = \"v\"\n", []string{file, "not a valid HTTP header name"}},
		{"header value line break", "[header]\nx-a = \"v\\r\\nInjected: 1\"\n", []string{file, "line break"}},
		{"dial_timeout", "dial_timeout = \"soon\"\n", []string{file, "key dial_timeout"}},
		{"dial_timeout negative", "dial_timeout = \"-1s\"\n", []string{file, "key dial_timeout"}},
		{"server scheme", "server = \"ftp://r.example\"\n", []string{file, "ftp://r.example"}},
		{"server with query", "server = \"https://r.example/?x=1\"\n", []string{file, "no user, query or fragment"}},
		{"server without host", "server = \"https:///v2\"\n", []string{file}},
		{"host table without host", "[host.\"https://\"]\n", []string{file, `host."https://"`}},
		{"not TOML", "server = \n", []string{file}},
		{"nested host", "[host.\"https://m\".host.\"https://n\"]\n", []string{file, "host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseHostsTOML(file, []byte(tc.toml))
			if err == nil {
				t.Fatalf("parseHostsTOML(%q) succeeded", tc.toml)
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

func TestHostDirNames(t *testing.T) {
	for _, tc := range []struct {
		registry string
		want     []string
	}{
		{"index.docker.io", []string{"docker.io", "_default"}},
		{"myregistry.io:5000", []string{"myregistry.io_5000_", "myregistry.io:5000", "_default"}},
		{"127.0.0.1:5000", []string{"127.0.0.1_5000_", "127.0.0.1:5000", "_default"}},
		{"quay.io", []string{"quay.io", "_default"}},
	} {
		if got := hostDirNames(hostNamespace(tc.registry)); !slices.Equal(got, tc.want) {
			t.Errorf("hostDirNames(%q) = %q, want %q", tc.registry, got, tc.want)
		}
	}
	if !isNamespaceHost("docker.io", "registry-1.docker.io") || !isNamespaceHost("docker.io", "index.docker.io") || isNamespaceHost("docker.io", "mirror.gcr.io") {
		t.Errorf("isNamespaceHost: Docker Hub's hosts are the registry itself, other hosts mirrors")
	}
}

// TestLoadHostsDir reads a tree the way containerd lays it out: a port
// written host_port_ (preferred) or host:port, Docker-style certificate
// files without hosts.toml, and _default.
func TestLoadHostsDir(t *testing.T) {
	dir := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("r.example_5000_/hosts.toml", "[host.\"https://underscore\"]\n")
	write("r.example:5000/hosts.toml", "[host.\"https://colon\"]\n")
	write("s.example:6000/hosts.toml", "[host.\"https://colon-only\"]\n")
	write("certs.example/ca.crt", "")
	write("certs.example/client.cert", "")
	write("certs.example/client.key", "")
	write("certs.example/other.cert", "")
	write("_default/hosts.toml", "[host.\"https://fallback\"]\n")
	write("not-a-dir", "")
	h, err := loadHostsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ registry, firstHost string }{
		{"r.example:5000", "underscore"},
		{"s.example:6000", "colon-only"},
		{"unknown.example", "fallback"},
		{"index.docker.io", "fallback"},
	} {
		cfg, _, ok := h.lookup(tc.registry)
		if !ok || cfg.hosts[0].host != tc.firstHost {
			t.Errorf("lookup(%q) = %v, %v; want the directory whose first host is %s", tc.registry, cfg, ok, tc.firstHost)
		}
	}
	cfg, _, ok := h.lookup("certs.example")
	if !ok || len(cfg.hosts) != 1 {
		t.Fatalf("lookup(certs.example) = %v, %v; want the certificate directory", cfg, ok)
	}
	s := cfg.hosts[0]
	if s.host != "" || s.caps != capAll {
		t.Errorf("certificate directory host = %q caps %v, want the registry itself with every capability", s.host, s.caps)
	}
	if want := []string{filepath.Join(dir, "certs.example/ca.crt")}; !slices.Equal(s.caFiles, want) {
		t.Errorf("ca files = %q, want %q", s.caFiles, want)
	}
	wantPairs := [][2]string{
		{filepath.Join(dir, "certs.example/client.cert"), filepath.Join(dir, "certs.example/client.key")},
		{filepath.Join(dir, "certs.example/other.cert"), ""},
	}
	if !reflect.DeepEqual(s.clientPairs, wantPairs) {
		t.Errorf("client pairs = %q, want %q", s.clientPairs, wantPairs)
	}

	write("bad.example/hosts.toml", "[host.\"https://m\"]\nskip_verify = 1\n")
	if _, err := loadHostsDir(dir); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "bad.example/hosts.toml")) {
		t.Errorf("loadHostsDir with a bad file = %v, want an error naming it", err)
	}
	if _, err := loadHostsDir(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("loadHostsDir of a missing directory succeeded")
	}
}

func TestValidHeaderName(t *testing.T) {
	for k, want := range map[string]bool{"X-Custom": true, "x_a.b~": true, "": false, "a b": false, "a:b": false, "é": false} {
		if got := validHeaderName(k); got != want {
			t.Errorf("validHeaderName(%q) = %v, want %v", k, got, want)
		}
	}
}
