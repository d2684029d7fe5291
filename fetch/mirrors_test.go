package fetch

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// captured records what a handler saw beyond faultHandler's log: the
// query and chosen headers of every request.
type captured struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (c *captured) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.reqs = append(c.reqs, r.Clone(r.Context()))
		c.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (c *captured) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs = nil
}

// forget drops the requests seen so far (a test's own pushes).
func forget(regs ...*testRegistry) {
	for _, r := range regs {
		r.faults.mu.Lock()
		r.faults.log = nil
		r.faults.mu.Unlock()
	}
}

func (c *captured) all() []*http.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*http.Request(nil), c.reqs...)
}

// gets counts the GETs whose path contains part (a digest, "/manifests/").
func gets(tr *testRegistry, part string) int {
	n := 0
	for _, r := range tr.faults.requests() {
		if r.Method == http.MethodGet && strings.Contains(r.Path, part) {
			n++
		}
	}
	return n
}

// contentGets counts manifest and blob GETs (not pings).
func contentGets(tr *testRegistry) int {
	return gets(tr, "/manifests/") + gets(tr, "/blobs/")
}

// writeHosts writes dir/<name>/hosts.toml and returns dir.
func writeHosts(t *testing.T, dir, name, toml string) string {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hostDir is the directory name containerd looks up first for host.
func hostDir(host string) string { return hostDirNames(hostNamespace(host))[0] }

// mirrorImage is an image of one config and two layers pushed to every
// registry given, as app:v1.
type mirrorImage struct {
	img    v1.Image
	digest digest.Digest
	layers []ocispec.Descriptor
	data   [][]byte
}

func pushMirrorImage(t *testing.T, regs ...*testRegistry) mirrorImage {
	t.Helper()
	data := [][]byte{randomBytes(t, 40000), randomBytes(t, 3000)}
	img := testImage(t, types.OCIManifestSchema1, data...)
	var mi mirrorImage
	for _, r := range regs {
		mi.digest = r.push(t, "app:v1", img)
	}
	forget(regs...)
	mi.img, mi.data = img, data
	mi.layers = []ocispec.Descriptor{layerDesc(t, img, 0), layerDesc(t, img, 1)}
	return mi
}

// readLayers reads every layer of im whole and compares it with want.
func readLayers(t *testing.T, im *Image, mi mirrorImage) {
	t.Helper()
	for i, l := range mi.layers {
		got, err := readAll(t, im, l)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if !bytes.Equal(got, mi.data[i]) {
			t.Fatalf("layer %d: %d bytes differ from the image's", i, len(got))
		}
	}
}

// TestMirrorServes pulls through a hosts.toml mirror that has the image:
// the upstream sees no manifest or blob GET, the mirror's requests carry
// ?ns=<registry>, and its header.
func TestMirrorServes(t *testing.T) {
	up := newTestRegistry(t, nil)
	var seen captured
	mirror := newTestRegistry(t, seen.wrap)
	mi := pushMirrorImage(t, up, mirror)
	seen.reset()
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf(`
[host."http://%s"]
  capabilities = ["pull", "resolve"]
  [host."http://%s".header]
    X-Mirror-Token = "abc"
`, mirror.host, mirror.host))
	c, _ := testClient(t, Options{HostsDir: dir})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if im.ManifestDigest != mi.digest {
		t.Fatalf("Resolve = %s, want %s", im.ManifestDigest, mi.digest)
	}
	readLayers(t, im, mi)
	got, err := im.FetchRange(t.Context(), mi.layers[0], 100, 1000, digest.FromBytes(mi.data[0][100:1100]))
	if err != nil || !bytes.Equal(got, mi.data[0][100:1100]) {
		t.Fatalf("FetchRange = %d bytes, %v; want the layer's bytes 100-1099", len(got), err)
	}
	if n := len(up.faults.requests()); n != 0 {
		t.Errorf("upstream saw %d requests, want none: %v", n, up.faults.requests())
	}
	if n := gets(mirror, "/blobs/"); n != 4 { // config, two layers, one range
		t.Errorf("mirror saw %d blob GETs, want 4", n)
	}
	for _, r := range seen.all() {
		if r.URL.Path == "/v2/" {
			continue
		}
		if ns := r.URL.Query().Get("ns"); ns != up.host {
			t.Errorf("%s %s: ns = %q, want %q", r.Method, r.URL, ns, up.host)
		}
		if h := r.Header.Get("X-Mirror-Token"); h != "abc" {
			t.Errorf("%s %s: X-Mirror-Token = %q, want the configured header", r.Method, r.URL, h)
		}
	}
}

// TestMirrorFallsThrough: a mirror answering 503 and one lacking the
// content both hand every request on, each asked once per request (no
// retries), each logged once at Warn; the upstream serves.
func TestMirrorFallsThrough(t *testing.T) {
	up := newTestRegistry(t, nil)
	down := newTestRegistry(t, nil)
	empty := newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up)
	down.faults.add(&rule{match: func(r *http.Request) bool { return r.URL.Path != "/v2/" }, times: -1, do: status(http.StatusServiceUnavailable)})
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf(`
[host."http://%s"]
[host."http://%s"]
`, down.host, empty.host))
	var lb logBuffer
	c, delays := testClient(t, Options{HostsDir: dir, Logger: lb.logger()})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	readLayers(t, im, mi)
	// Manifest by tag, config, two layers: 4 requests each, one attempt each.
	if n := contentGets(down); n != 4 {
		t.Errorf("the 503 mirror saw %d content GETs, want 4 (one per request, no retries)", n)
	}
	if n := contentGets(empty); n != 4 {
		t.Errorf("the empty mirror saw %d content GETs, want 4", n)
	}
	if n := contentGets(up); n != 4 {
		t.Errorf("upstream saw %d content GETs, want 4", n)
	}
	if d := delays(); len(d) != 0 {
		t.Errorf("waited %v between attempts; a mirror's failure should hand on at once", d)
	}
	log := lb.String()
	for _, host := range []string{down.host, empty.host} {
		if n := strings.Count(log, "level=WARN msg=\"registry mirror failed; asking the next host\" image="+up.host+"/app host="+host); n != 1 {
			t.Errorf("%d Warn lines for mirror %s, want 1:\n%s", n, host, log)
		}
	}
	if !strings.Contains(log, "503") {
		t.Errorf("the log does not say why the mirror failed (503):\n%s", log)
	}
}

// TestMirrorOrder: hosts are asked in the file's order.
func TestMirrorOrder(t *testing.T) {
	up := newTestRegistry(t, nil)
	a, b := newTestRegistry(t, nil), newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up, a, b)
	for _, tc := range []struct {
		first, second *testRegistry
	}{{a, b}, {b, a}} {
		dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"http://%s\"]\n[host.\"http://%s\"]\n", tc.first.host, tc.second.host))
		before := contentGets(tc.second)
		c, _ := testClient(t, Options{HostsDir: dir})
		im, err := c.Resolve(t.Context(), up.host+"/app:v1@"+mi.digest.String())
		if err != nil {
			t.Fatal(err)
		}
		readLayers(t, im, mi)
		if n := contentGets(tc.second) - before; n != 0 {
			t.Errorf("the second host %s saw %d content GETs, want none", tc.second.host, n)
		}
	}
	if contentGets(a) == 0 || contentGets(b) == 0 || contentGets(up) != 0 {
		t.Errorf("content GETs a=%d b=%d upstream=%d; want each mirror used once first, the upstream never", contentGets(a), contentGets(b), contentGets(up))
	}
}

// TestMirrorWrongBytes: a mirror whose bytes do not match their digest is
// never served from. Where fetch still holds the bytes (manifests, the
// config, ranges, parts) it asks the next host at once; a streamed blob
// has handed its bytes out before the digest can be checked, so the read
// fails with a *DigestError and the next open skips that mirror.
func TestMirrorWrongBytes(t *testing.T) {
	up := newTestRegistry(t, nil)
	bad := newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up, bad)
	cfg, err := mi.img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	// Every blob and manifest GET from the mirror has one byte flipped.
	bad.faults.add(&rule{match: func(r *http.Request) bool {
		return r.Method == http.MethodGet && (strings.Contains(r.URL.Path, "/blobs/") || strings.Contains(r.URL.Path, "/manifests/sha256:"))
	}, times: -1, do: flipByte(7)})
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"http://%s\"]\n", bad.host))
	var lb logBuffer
	c, _ := testClient(t, Options{HostsDir: dir, Logger: lb.logger()})
	ctx := t.Context()

	// By digest: the manifest and the config fall through.
	im, err := c.Resolve(ctx, up.host+"/app@"+mi.digest.String())
	if err != nil {
		t.Fatalf("Resolve through a mirror sending bad bytes: %v", err)
	}
	if gets(up, "/manifests/"+mi.digest.String()) != 1 || gets(up, cfg.String()) != 1 {
		t.Errorf("upstream manifest GETs %d, config GETs %d; want the mirror's bad ones redone there", gets(up, "/manifests/"), gets(up, cfg.String()))
	}
	// A range falls through.
	l0 := mi.layers[0]
	want := mi.data[0][5:20005]
	got, err := im.FetchRange(ctx, l0, 5, 20000, digest.FromBytes(want))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("FetchRange = %d bytes, %v; want the upstream's bytes", len(got), err)
	}
	// Parts fall through.
	l1 := mi.layers[1]
	data, errs := im.FetchParts(ctx, l1, partsOf(mi.data[1], [2]int64{0, 100}, [2]int64{100, 3000}))
	for i := range data {
		if errs[i] != nil {
			t.Fatalf("FetchParts part %d: %v", i, errs[i])
		}
	}
	// A stream fails with a digest error (its bytes were handed out), and
	// the next open goes to the upstream: layer 1 was distrusted by
	// FetchParts already, so take a fresh image for the stream.
	im2, err := c.Resolve(ctx, up.host+"/app@"+mi.digest.String())
	if err != nil {
		t.Fatal(err)
	}
	_, err = readAll(t, im2, l1)
	var de *DigestError
	if !errors.As(err, &de) {
		t.Fatalf("streaming a blob a mirror corrupted: %v, want a *DigestError", err)
	}
	if !strings.Contains(err.Error(), "(sent by "+bad.host+"/app)") {
		t.Errorf("digest error %q does not name the mirror that sent the bytes", err)
	}
	b, err := readAll(t, im2, l1)
	if err != nil || !bytes.Equal(b, mi.data[1]) {
		t.Fatalf("second open after a digest error = %d bytes, %v; want the upstream's bytes", len(b), err)
	}
	if n := strings.Count(lb.String(), "registry mirror sent bytes that do not match their digest"); n < 4 {
		t.Errorf("%d Warn lines about bad bytes, want one per blob or manifest (4 or more):\n%s", n, lb.String())
	}
	if !strings.Contains(lb.String(), "host="+bad.host) {
		t.Errorf("the log does not name the mirror %s:\n%s", bad.host, lb.String())
	}
}

// TestMirrorCapabilities: a pull-only mirror is not asked to resolve a tag
// (it could name another image); blobs still come from it. A hosts.toml
// whose server may not resolve has nobody to ask for a tag.
func TestMirrorCapabilities(t *testing.T) {
	up := newTestRegistry(t, nil)
	mirror := newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up, mirror)
	// The mirror's tag points at another image: resolving through it would
	// be wrong.
	other := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	mirror.push(t, "app:v1", other)
	forget(mirror)
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"http://%s\"]\ncapabilities = [\"pull\"]\n", mirror.host))
	c, _ := testClient(t, Options{HostsDir: dir})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if im.ManifestDigest != mi.digest {
		t.Fatalf("Resolve = %s, want the upstream's %s", im.ManifestDigest, mi.digest)
	}
	readLayers(t, im, mi)
	if gets(mirror, "/manifests/v1") != 0 || gets(up, "/manifests/v1") != 1 {
		t.Errorf("tag GETs: mirror %d, upstream %d; want the tag resolved upstream only", gets(mirror, "/manifests/v1"), gets(up, "/manifests/v1"))
	}
	if gets(up, "/blobs/") != 0 {
		t.Errorf("upstream saw %d blob GETs, want none (the mirror has them)", gets(up, "/blobs/"))
	}

	dir = writeHosts(t, "", hostDir(up.host), fmt.Sprintf("server = \"http://%s\"\ncapabilities = [\"pull\"]\n", up.host))
	c, _ = testClient(t, Options{HostsDir: dir})
	_, err = c.Resolve(t.Context(), up.host+"/app:v1")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"resolve" capability`) {
		t.Errorf("Resolve of a tag with no resolving host: %v, want an error saying so", err)
	}
	if _, err := c.Resolve(t.Context(), up.host+"/app@"+mi.digest.String()); err != nil {
		t.Errorf("Resolve by digest with a pull-only server: %v", err)
	}
}

// TestMirrorDefault: _default serves a registry without a directory of
// its own; a directory of its own wins; server replaces the upstream.
func TestMirrorDefault(t *testing.T) {
	up := newTestRegistry(t, nil)
	mirror, own := newTestRegistry(t, nil), newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up, mirror, own)
	dir := writeHosts(t, "", "_default", fmt.Sprintf("server = \"http://%s\"\n", mirror.host))
	c, _ := testClient(t, Options{HostsDir: dir})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	readLayers(t, im, mi)
	if len(up.faults.requests()) != 0 || contentGets(mirror) == 0 {
		t.Errorf("upstream saw %d requests, the _default server %d content GETs; want the server only", len(up.faults.requests()), contentGets(mirror))
	}
	writeHosts(t, dir, hostDir(up.host), fmt.Sprintf("server = \"http://%s\"\n", own.host))
	before := contentGets(mirror)
	c, _ = testClient(t, Options{HostsDir: dir})
	im, err = c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	readLayers(t, im, mi)
	if contentGets(mirror) != before || contentGets(own) == 0 {
		t.Errorf("with its own directory: _default server saw %d more, its own %d; want its own only", contentGets(mirror)-before, contentGets(own))
	}
}

// TestMirrorTLS: an https mirror with a certificate no system root signs
// is refused (and the upstream serves) unless hosts.toml names its CA or
// says skip_verify; a client certificate from the file is presented.
func TestMirrorTLS(t *testing.T) {
	up := newTestRegistry(t, nil)
	reg := registry.New(registry.Logger(nopLogger()))
	var clientCerts sync.Map
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			clientCerts.Store(r.TLS.PeerCertificates[0].Subject.CommonName, true)
		}
		reg.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.Config.ErrorLog = nopLogger() // refused handshakes are the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	mirrorHost := strings.TrimPrefix(srv.URL, "https://")
	mi := pushMirrorImage(t, up)
	pushTo(t, srv.Client(), mirrorHost, mi.img)

	dir := t.TempDir()
	caFile := filepath.Join(dir, "mirror-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeClientCert(t, dir)
	for _, tc := range []struct {
		name, settings string
		viaMirror      bool
	}{
		{"unknown CA", "", false},
		{"skip_verify", "skip_verify = true\n", true},
		{"ca", fmt.Sprintf("ca = %q\nclient = [[%q, %q]]\n", caFile, certFile, keyFile), true},
		{"ca of another", fmt.Sprintf("ca = %q\n", certFile), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hd := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"https://%s\"]\n%s", mirrorHost, tc.settings))
			var lb logBuffer
			c, _ := testClient(t, Options{HostsDir: hd, Logger: lb.logger()})
			before := contentGets(up)
			im, err := c.Resolve(t.Context(), up.host+"/app:v1")
			if err != nil {
				t.Fatal(err)
			}
			readLayers(t, im, mi)
			upstream := contentGets(up) - before
			if tc.viaMirror && upstream != 0 {
				t.Errorf("upstream saw %d content GETs, want none (the mirror serves):\n%s", upstream, lb.String())
			}
			if !tc.viaMirror {
				if upstream == 0 {
					t.Errorf("upstream saw no content GETs; the mirror's certificate should have been refused")
				}
				if !strings.Contains(lb.String(), "certificate") {
					t.Errorf("the log does not say the certificate was refused:\n%s", lb.String())
				}
			}
		})
	}
	if _, ok := clientCerts.Load("ocifs-test-client"); !ok {
		t.Errorf("the mirror never saw the client certificate hosts.toml names")
	}
}

// TestMirrorOverridePath: a mirror whose API root is a path of its own.
func TestMirrorOverridePath(t *testing.T) {
	up := newTestRegistry(t, nil)
	mirror := newTestRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rest, ok := strings.CutPrefix(r.URL.Path, "/custom/root/")
			if !ok {
				// Only the pushes of the test itself use /v2/ here.
				if strings.HasPrefix(r.URL.Path, "/v2/") && r.Header.Get("X-Test-Push") == "1" {
					next.ServeHTTP(w, r)
					return
				}
				http.NotFound(w, r)
				return
			}
			r.URL.Path = "/v2/" + rest
			next.ServeHTTP(w, r)
		})
	})
	mi := pushMirrorImage(t, up)
	pushTo(t, &http.Client{Transport: headerTransport{"X-Test-Push", "1"}}, mirror.host, mi.img)
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"http://%s/custom/root\"]\noverride_path = true\n", mirror.host))
	c, _ := testClient(t, Options{HostsDir: dir})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	readLayers(t, im, mi)
	if contentGets(up) != 0 {
		t.Errorf("upstream saw %d content GETs, want none", contentGets(up))
	}
}

// TestMirrorCredentials: each host gets the keychain's credentials for
// its own name; the upstream's never reach the mirror.
func TestMirrorCredentials(t *testing.T) {
	up := newTestRegistry(t, func(h http.Handler) http.Handler { return basicAuth(h, "up-user", "up-pass") })
	mirror := newTestRegistry(t, func(h http.Handler) http.Handler { return basicAuth(h, "m-user", "m-pass") })
	data := randomBytes(t, 5000)
	img := testImage(t, types.OCIManifestSchema1, data)
	up.push(t, "app:v1", img, remoteAuth("up-user", "up-pass"))
	mirror.push(t, "app:v1", img, remoteAuth("m-user", "m-pass"))
	keys := hostKeychain{up.host: {Username: "up-user", Password: "up-pass"}, mirror.host: {Username: "m-user", Password: "m-pass"}}
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"http://%s\"]\n", mirror.host))
	c, _ := testClient(t, Options{HostsDir: dir, Keychain: keys})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := readAll(t, im, layerDesc(t, img, 0)); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("layer = %d bytes, %v", len(b), err)
	}
	upAuth := (&http.Request{Header: http.Header{}})
	upAuth.SetBasicAuth("up-user", "up-pass")
	for _, r := range mirror.faults.requests() {
		if r.Auth == upAuth.Header.Get("Authorization") {
			t.Fatalf("the mirror received the upstream's credentials: %v", r)
		}
	}
	if contentGets(mirror) == 0 || contentGets(up) != 0 {
		t.Errorf("content GETs: mirror %d, upstream %d; want the mirror only", contentGets(mirror), contentGets(up))
	}
	// Without credentials for the mirror it answers 401, which falls through.
	c, _ = testClient(t, Options{HostsDir: dir, Keychain: hostKeychain{up.host: keys[up.host]}})
	if _, err := c.Resolve(t.Context(), up.host+"/app:v1"); err != nil {
		t.Fatalf("Resolve when the mirror refuses us: %v", err)
	}
	if contentGets(up) == 0 {
		t.Errorf("upstream saw no content GETs after the mirror answered 401")
	}
}

// TestRegistriesConfMirrors: a [[registry]] prefix rewrites the name for
// its mirror; pull-from-mirror = "digest-only" keeps a mirror out of tag
// pulls; blocked refuses.
func TestRegistriesConfMirrors(t *testing.T) {
	up := newTestRegistry(t, nil)
	mirror := newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up)
	mirror.push(t, "mirrored/team/app:v1", mi.img)
	file := filepath.Join(t.TempDir(), "registries.conf")
	conf := fmt.Sprintf(`
[[registry]]
prefix = "%s/team"
location = "%s"

[[registry.mirror]]
location = "%s/mirrored/team"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "%s/blocked"
location = "%s/blocked"
blocked = true
`, up.host, up.host, mirror.host, up.host, up.host)
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	up.push(t, "app:v1", mi.img) // the rewritten location: <up>/team/app -> <up>/app
	forget(up, mirror)
	c, _ := testClient(t, Options{RegistriesConf: file})
	ctx := t.Context()

	im, err := c.Resolve(ctx, up.host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	readLayers(t, im, mi)
	if len(mirror.faults.requests()) != 0 {
		t.Errorf("a tag pull reached the digest-only mirror: %v", mirror.faults.requests())
	}
	if gets(up, "/v2/app/manifests/v1") != 1 {
		t.Errorf("the tag was not resolved at the rewritten location %s/app: %v", up.host, up.faults.requests())
	}
	before := contentGets(up)
	c, _ = testClient(t, Options{RegistriesConf: file})
	im, err = c.Resolve(ctx, up.host+"/team/app@"+mi.digest.String())
	if err != nil {
		t.Fatal(err)
	}
	readLayers(t, im, mi)
	if contentGets(up) != before || gets(mirror, "/v2/mirrored/team/app/blobs/") == 0 {
		t.Errorf("a digest pull: upstream %d more content GETs, mirror %d blob GETs under mirrored/team/app; want the mirror only",
			contentGets(up)-before, gets(mirror, "/v2/mirrored/team/app/blobs/"))
	}
	if _, err := c.Resolve(ctx, up.host+"/blocked/app:v1"); err == nil || !strings.Contains(err.Error(), "blocked by "+file) {
		t.Errorf("Resolve of a blocked name: %v, want an error naming the file", err)
	}
	// A name no prefix matches is pulled as it is.
	if _, err := c.Resolve(ctx, up.host+"/app:v1"); err != nil {
		t.Errorf("Resolve outside every prefix: %v", err)
	}
}

// TestMirrorReferrers: a mirror with no referrers hands the question to
// the next host, which has them.
func TestMirrorReferrers(t *testing.T) {
	up := newTestRegistry(t, nil, registry.WithReferrersSupport(true))
	mirror := newTestRegistry(t, nil, registry.WithReferrersSupport(true))
	mi := pushMirrorImage(t, up, mirror)
	c, _ := testClient(t, Options{})
	direct, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	p := pushReferrer(t, direct, ArtifactTypeIndex, nil, indexBlob(t, mi.layers[0].Digest, 100))
	dir := writeHosts(t, "", hostDir(up.host), fmt.Sprintf("[host.\"http://%s\"]\n", mirror.host))
	c, _ = testClient(t, Options{HostsDir: dir})
	im, err := c.Resolve(t.Context(), up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	descs, err := im.Referrers(t.Context(), ArtifactTypeIndex)
	if err != nil || len(descs) != 1 || descs[0].Digest != p.desc.Digest {
		t.Fatalf("Referrers = %v, %v; want the upstream's %s", descs, err, p.desc.Digest)
	}
	if _, err := im.FetchReferrer(t.Context(), descs[0]); err != nil {
		t.Fatalf("FetchReferrer: %v", err)
	}
}

// TestMirrorConfigErrors: New fails on a bad file, naming it and the key.
func TestMirrorConfigErrors(t *testing.T) {
	dir := writeHosts(t, "", "r.example", "[host.\"https://m\"]\ncapabilities = [\"pull\", \"pul\"]\n")
	_, err := New(Options{CacheDir: t.TempDir(), HostsDir: dir})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "r.example", "hosts.toml")) || !strings.Contains(err.Error(), "capabilities") {
		t.Errorf("New with a bad hosts.toml: %v, want an error naming the file and key", err)
	}
	dir = writeHosts(t, "", "r.example", "[host.\"https://m\"]\nca = \"missing.pem\"\n")
	_, err = New(Options{CacheDir: t.TempDir(), HostsDir: dir})
	if err == nil || !strings.Contains(err.Error(), "key ca") || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("New with a missing CA file: %v, want an error naming the key and file", err)
	}
	file := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(file, []byte("[[registry]]\nlocation = \"a\"\nmirror-by-digest = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = New(Options{CacheDir: t.TempDir(), RegistriesConf: file})
	if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "mirror-by-digest") {
		t.Errorf("New with a bad registries.conf: %v, want an error naming the file and key", err)
	}
	if _, err := New(Options{CacheDir: t.TempDir(), RegistriesConf: file + ".missing"}); err == nil {
		t.Errorf("New with a missing registries.conf succeeded")
	}
}

// hostKeychain returns basic credentials by registry host, anonymous for
// any other.
type hostKeychain map[string]authn.Basic

func (k hostKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if b, ok := k[r.RegistryStr()]; ok {
		return &b, nil
	}
	return authn.Anonymous, nil
}

// headerTransport adds one header to every request.
type headerTransport [2]string

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h[0], h[1])
	return http.DefaultTransport.RoundTrip(r)
}

// pushTo writes img as app:v1 to host through client's transport.
func pushTo(t *testing.T, client *http.Client, host string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(client.Transport)); err != nil {
		t.Fatalf("push to %s: %v", host, err)
	}
}

// writeClientCert writes a self-signed client certificate (CN
// ocifs-test-client) and its key into dir.
func writeClientCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ocifs-test-client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "client.cert"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
