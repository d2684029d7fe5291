package main

// Bad input through the real binary: each case exits 1 with a message that
// says what happened and what to do, crashes nothing and caches nothing bad.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/fstest"
)

// wantFailure checks that a run of the binary exited 1 and that its stderr
// holds every one of want.
func wantFailure(t *testing.T, what string, stdout, stderr string, code int, want ...string) {
	t.Helper()
	if code != exitFailure {
		t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, code, exitFailure, stdout, stderr)
		return
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("%s: stderr lacks %q:\n%s", what, w, stderr)
		}
	}
	if strings.Contains(stderr, "panic:") || strings.Contains(stderr, "goroutine ") {
		t.Errorf("%s: crashed:\n%s", what, stderr)
	}
}

// mountFails runs `ocifs mount REF DIR` on a fresh directory, expecting it to
// fail, and checks that nothing was left mounted. It returns the output and
// the daemon's log path.
func mountFails(t *testing.T, bin, cache, ref string, flags ...string) (stdout, stderr string, code int, logPath string) {
	t.Helper()
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	args := append([]string{"--cache-dir", cache, "mount"}, flags...)
	stdout, stderr, code = execOcifs(t, bin, append(args, ref, dir)...)
	if _, ok, _ := findMount(dir); ok {
		t.Errorf("mount of %s failed (exit %d) but left %s mounted", ref, code, dir)
	}
	p, err := pathsFor(cache, dir)
	if err != nil {
		t.Fatal(err)
	}
	return stdout, stderr, code, p.log
}

// putManifest uploads manifest bytes under ref (a tag or digest) to a
// plain-HTTP registry, returning the status the registry answered.
func putManifest(t *testing.T, host, repo, ref, mediaType string, b []byte) (status int, body string) {
	t.Helper()
	u := "http://" + host + "/v2/" + repo + "/manifests/" + url.PathEscape(ref)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, u, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", u, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return resp.StatusCode, string(rb)
}

// patchManifest returns img's manifest with edit applied to its JSON object.
func patchManifest(t *testing.T, img *fstest.Image, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeManifestLayout writes img's config and layers into an OCI layout,
// with manifest (in place of img's own) tagged v1, and returns its reference.
func writeManifestLayout(t *testing.T, img *fstest.Image, mediaType string, manifest []byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if err := img.WriteLayout(dir, "good"); err != nil {
		t.Fatalf("write layout: %v", err)
	}
	d := digest.FromBytes(manifest)
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Encoded()), manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{{
		MediaType: mediaType, Digest: d, Size: int64(len(manifest)),
		Annotations: map[string]string{ocispec.AnnotationRefName: "v1"},
	}}}
	idx.SchemaVersion = 2
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":v1"
}

// pushPatched pushes img's blobs (under tag "good") and then manifest under
// tag v1 to the registry at host, and returns the reference of v1.
func pushPatched(t *testing.T, host, repo string, img *fstest.Image, manifest []byte) string {
	t.Helper()
	if err := img.Push(t.Context(), host, repo, "good"); err != nil {
		t.Fatalf("push: %v", err)
	}
	if status, body := putManifest(t, host, repo, "v1", img.ManifestDesc.MediaType, manifest); status != http.StatusCreated {
		t.Fatalf("PUT patched manifest: %d %s", status, body)
	}
	return host + "/" + repo + ":v1"
}

const unknownLayerType = "application/vnd.example.layer.v1+foo"

// TestBadInputUnknownLayerMediaType: a layer whose media type ocifs cannot
// decode is named in the error, with the list of those it can.
func TestBadInputUnknownLayerMediaType(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	manifest := patchManifest(t, img, func(m map[string]any) {
		m["layers"].([]any)[0].(map[string]any)["mediaType"] = unknownLayerType
	})
	refs := map[string]string{
		"registry": pushPatched(t, host, "e2e/foo-layer", img, manifest),
		"layout":   writeManifestLayout(t, img, img.ManifestDesc.MediaType, manifest),
	}
	for name, ref := range refs {
		t.Run(name, func(t *testing.T) {
			cache := isolate(t)
			want := []string{"ocifs: ", "layer 0", img.LayerDescs[0].Digest.String(), "unsupported layer media type",
				strconv.Quote(unknownLayerType), "supported: ", img.LayerDescs[0].MediaType}
			out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "inspect", ref)
			wantFailure(t, "inspect", out, errs, code, want...)
			out, errs, code, _ = mountFails(t, bin, cache, ref)
			wantFailure(t, "mount", out, errs, code, want...)
			cached := cacheEntries(t, bin, cache)
			for _, d := range img.LayerDescs {
				if cached[d.Digest] != "" {
					t.Errorf("a refused image left layer %s in the cache (%s)", d.Digest, cached[d.Digest])
				}
			}
		})
	}
}

// TestBadInputManifestOver4MiB: a manifest over 4 MiB is refused before it
// is parsed, whether its size is announced (Content-Length, layout
// descriptor) or only found while reading (a chunked answer).
func TestBadInputManifestOver4MiB(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	huge := patchManifest(t, img, func(m map[string]any) {
		m["annotations"] = map[string]string{"org.example.padding": strings.Repeat("x", 4<<20)}
	})
	if len(huge) <= 4<<20 {
		t.Fatalf("padded manifest is %d bytes, want over 4 MiB", len(huge))
	}

	refs := map[string]string{"layout": writeManifestLayout(t, img, img.ManifestDesc.MediaType, huge)}
	if err := img.Push(t.Context(), host, "e2e/huge", "good"); err != nil {
		t.Fatalf("push: %v", err)
	}
	if status, body := putManifest(t, host, "e2e/huge", "v1", img.ManifestDesc.MediaType, huge); status == http.StatusCreated {
		refs["registry"] = host + "/e2e/huge:v1"
	} else {
		t.Logf("docker-registry refused a %d-byte manifest (%d %s)", len(huge), status, strings.TrimSpace(body))
	}
	// docker-registry 2.8 refuses such a manifest on upload, so serve it
	// from a handler too: with its Content-Length ("sized") and streamed
	// without one ("chunked"), so the size is found only while reading.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tag, ok := strings.CutPrefix(r.URL.Path, "/v2/e2e/huge/manifests/")
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case ok && (tag == "sized" || tag == "chunked"):
			w.Header().Set("Content-Type", img.ManifestDesc.MediaType)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(huge).String())
			if tag == "sized" {
				w.Header().Set("Content-Length", strconv.Itoa(len(huge)))
			}
			w.WriteHeader(http.StatusOK)
			if r.Method != http.MethodGet {
				return
			}
			for b := huge; len(b) > 0; {
				n := min(len(b), 64<<10)
				if _, err := w.Write(b[:n]); err != nil {
					return // the client stopped reading, as it should
				}
				if tag == "chunked" {
					w.(http.Flusher).Flush()
				}
				b = b[n:]
			}
		default:
			http.Error(w, `{"errors":[{"code":"NAME_UNKNOWN"}]}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	served := strings.TrimPrefix(srv.URL, "http://")
	refs["sized"] = served + "/e2e/huge:sized"
	refs["chunked"] = served + "/e2e/huge:chunked"

	for name, ref := range refs {
		t.Run(name, func(t *testing.T) {
			cache := isolate(t)
			want := []string{"ocifs: ", "invalid input", "manifest is larger than 4 MiB"}
			out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "inspect", ref)
			wantFailure(t, "inspect", out, errs, code, want...)
			out, errs, code, _ = mountFails(t, bin, cache, ref)
			wantFailure(t, "mount", out, errs, code, want...)
		})
	}
}

// basicAuth wraps next so that it answers 401 with a Basic challenge unless
// the request carries user:pass.
func basicAuth(user, pass string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="ocifs-e2e"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// writeDockerConfig writes a docker config.json with credentials for host
// into $DOCKER_CONFIG (isolate points it at a fresh directory).
func writeDockerConfig(t *testing.T, host, user, pass string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	b := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)
	if err := os.WriteFile(filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"), []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBadInputUnauthorized: a registry demanding basic auth answers 401;
// the message says how to log in, and after that login the same commands
// work (so the 401 is what the test provoked, nothing else).
func TestBadInputUnauthorized(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	direct := httptest.NewServer(reg)
	t.Cleanup(direct.Close)
	if err := fixtureImage(t).Push(t.Context(), strings.TrimPrefix(direct.URL, "http://"), "e2e/private", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	srv := httptest.NewServer(basicAuth("alice", "s3cret", reg))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/e2e/private:v1"
	want := []string{"ocifs: ", "401", "e2e/private", "log in with `docker login " + host + "`"}

	for _, creds := range []struct{ name, user, pass string }{{"no credentials", "", ""}, {"wrong password", "alice", "guess"}} {
		t.Run(creds.name, func(t *testing.T) {
			cache := isolate(t)
			if creds.user != "" {
				writeDockerConfig(t, host, creds.user, creds.pass)
			}
			out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "inspect", ref)
			wantFailure(t, "inspect", out, errs, code, want...)
			out, errs, code, _ = mountFails(t, bin, cache, ref)
			wantFailure(t, "mount", out, errs, code, want...)
			if strings.Contains(errs, "s3cret") || strings.Contains(errs, "guess") {
				t.Errorf("a password reached stderr:\n%s", errs)
			}
		})
	}
	t.Run("after login", func(t *testing.T) {
		cache := isolate(t)
		writeDockerConfig(t, host, "alice", "s3cret")
		if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "inspect", ref); code != 0 {
			t.Fatalf("inspect with the right credentials: exit %d\n%s\n%s", code, out, errs)
		}
		dir, _ := e2eMount(t, bin, cache, ref)
		checkContent(t, dir)
		e2eUnmount(t, bin, cache, dir)
	})
}

// TestBadInputNotFound: an unknown tag, or repository, on the real
// registry says the manifest was not found and how to list the tags.
func TestBadInputNotFound(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	if err := fixtureImage(t).Push(t.Context(), host, "e2e/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	for _, ref := range []string{host + "/e2e/app:nope", host + "/e2e/nothing-here:v1"} {
		t.Run(ref[len(host)+1:], func(t *testing.T) {
			cache := isolate(t)
			want := []string{"ocifs: ", ref, "manifest not found", "skopeo list-tags"}
			out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "inspect", ref)
			wantFailure(t, "inspect", out, errs, code, want...)
			out, errs, code, _ = mountFails(t, bin, cache, ref)
			wantFailure(t, "mount", out, errs, code, want...)
		})
	}
}

// TestBadInputMissingMountpoint: the hint names the mkdir to run.
func TestBadInputMissingMountpoint(t *testing.T) {
	bin := ocifsBinary(t)
	missing := filepath.Join(t.TempDir(), "not", "there")
	out, errs, code := execOcifs(t, bin, "--cache-dir", isolate(t), "mount", layoutRef(t, fixtureImage(t)), missing)
	wantFailure(t, "mount", out, errs, code, "mountpoint "+missing+" does not exist", "mkdir -p "+missing)
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount created the missing mountpoint (stat err %v)", err)
	}
}

// sharedTempDir makes a directory under the system temp dir with mode perm
// (t.TempDir's parents are 0700, closed to other users), removed at cleanup.
func sharedTempDir(t *testing.T, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ocifs-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBadInputNotRoot runs the binary as nobody (65534): commands that need
// no mount work, and mount says it needs root and /dev/fuse.
func TestBadInputNotRoot(t *testing.T) {
	fstest.RequireRoot(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	if err := fixtureImage(t).Push(t.Context(), host, "e2e/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	ref := host + "/e2e/app:v1"

	binDir := sharedTempDir(t, 0o755)
	nobodyBin := filepath.Join(binDir, "ocifs")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nobodyBin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	home := sharedTempDir(t, 0o777)
	cache := filepath.Join(sharedTempDir(t, 0o777), "cache")
	mnt := sharedTempDir(t, 0o755)

	asNobody := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(t.Context(), nobodyBin, append([]string{"--cache-dir", cache}, args...)...)
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + home, "DOCKER_CONFIG=" + home,
			"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "XDG_RUNTIME_DIR=" + home, "XDG_CACHE_HOME=" + home}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return out.String(), errb.String(), 0
		case errors.As(err, &ee):
			return out.String(), errb.String(), ee.ExitCode()
		}
		t.Fatalf("run %s as nobody: %v", nobodyBin, err)
		return "", "", 0
	}

	// The binary runs as nobody: inspect needs no privilege.
	if out, errs, code := asNobody("inspect", ref); code != 0 || !strings.Contains(out, "manifest") {
		t.Fatalf("inspect as nobody: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	out, errs, code := asNobody("mount", ref, mnt)
	wantFailure(t, "mount as nobody", out, errs, code, "not running as root", "mounting needs root and /dev/fuse")
	if _, ok, _ := findMount(mnt); ok {
		t.Errorf("%s mounted by nobody", mnt)
	}
}

// flipReader flips one byte, at offset at of the blob, in a blob body that
// starts at offset off.
type flipReader struct {
	io.ReadCloser
	off, at int64
}

func (r *flipReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if i := r.at - r.off; i >= 0 && i < int64(n) {
		p[i] ^= 0x5a
	}
	r.off += int64(n)
	return n, err
}

// tamperProxy serves the registry at upstream through a reverse proxy that
// flips one byte, in the middle, of every GET of blob. It returns the
// proxy's host:port and a count of the answers it tampered with.
func tamperProxy(t *testing.T, upstream string, blob ocispec.Descriptor) (string, *atomic.Int64) {
	t.Helper()
	var tampered atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	rp.ErrorLog = log.New(io.Discard, "", 0)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodGet || !strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+blob.Digest.String()) {
			return nil
		}
		var start int64
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusPartialContent:
			if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil {
				return fmt.Errorf("tamper proxy: Content-Range %q: %w", resp.Header.Get("Content-Range"), err)
			}
		default:
			return nil
		}
		tampered.Add(1)
		resp.Body = &flipReader{ReadCloser: resp.Body, off: start, at: blob.Size / 2}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &tampered
}

// cacheEntries lists the cache with `ocifs cache ls`: digest to kind(s).
func cacheEntries(t *testing.T, bin, cache string) map[digest.Digest]string {
	t.Helper()
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "cache", "ls")
	if code != 0 {
		t.Fatalf("ocifs cache ls: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "KIND") {
		t.Fatalf("ocifs cache ls printed no header:\n%s", out)
	}
	m := map[digest.Digest]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Fatalf("ocifs cache ls line %q", l)
		}
		d := digest.Digest(f[1])
		m[d] = strings.TrimPrefix(m[d]+","+f[0], ",")
	}
	return m
}

// errorLines returns the lines of the log at path at level ERROR that
// mention s.
func errorLines(t *testing.T, path, s string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("daemon log: %v", err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// TestBadInputTamperedBlob: a registry that serves a layer whose bytes do not
// match its digest. The first mount streams every layer before answering,
// so it fails with a digest mismatch, logs one error line naming the layer,
// and caches nothing of that layer.
func TestBadInputTamperedBlob(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	if err := img.Push(t.Context(), host, "e2e/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	bad := img.LayerDescs[0]
	proxy, tampered := tamperProxy(t, host, bad)
	ref := proxy + "/e2e/app:v1"
	cache := isolate(t)

	out, errs, code, logPath := mountFails(t, bin, cache, ref)
	wantFailure(t, "mount", out, errs, code, "ocifs: ", bad.Digest.String(), "digest mismatch",
		"the source served bytes that do not match their digest")
	if tampered.Load() == 0 {
		t.Fatalf("the proxy tampered with no answer: the test proves nothing")
	}
	if lines := errorLines(t, logPath, bad.Digest.String()); len(lines) != 1 {
		t.Errorf("daemon log has %d error lines naming layer %s, want 1:\n%s", len(lines), bad.Digest, strings.Join(lines, "\n"))
	}
	cached := cacheEntries(t, bin, cache)
	for _, d := range []digest.Digest{bad.Digest, img.DiffIDs[0]} {
		if k := cached[d]; k != "" {
			t.Errorf("cache holds %s %s of the tampered layer after the failure", k, d)
		}
	}
}

// TestBadInputTamperedBlobWhileMounted: the layers' tables are cached (a
// good mount came first) but their bytes are not, so the mount answers and
// the tampered layer is fetched only when read: that read fails with EIO, a
// file of a good layer still reads right, stats counts the failure and the
// daemon logs it.
func TestBadInputTamperedBlobWhileMounted(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := ocifsBinary(t)
	host := fstest.StartRegistry(t)
	img := fixtureImage(t)
	if err := img.Push(t.Context(), host, "e2e/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	cache := isolate(t)
	dir, _ := e2eMount(t, bin, cache, host+"/e2e/app:v1")
	e2eUnmount(t, bin, cache, dir)
	removeLayerBytes(t, cache, img)

	bad := img.LayerDescs[0] // holds etc/os-release; etc/motd is in layer 1
	proxy, tampered := tamperProxy(t, host, bad)
	dir, logPath := e2eMount(t, bin, cache, proxy+"/e2e/app:v1", "--prefetch=none")

	_, err := os.ReadFile(filepath.Join(dir, "etc/os-release"))
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a file in the tampered layer: err %v, want EIO", err)
	}
	if tampered.Load() == 0 {
		t.Fatalf("the proxy tampered with no answer: the test proves nothing")
	}
	if got, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(got) != fixtureMotd {
		t.Errorf("read of a file in a good layer = %q, %v; want %q", got, err, fixtureMotd)
	}
	s, _ := statsOf(t, bin, cache, dir)
	if s.VerifyFailures < 1 {
		t.Errorf("stats verify_failures = %d after a tampered layer, want >= 1", s.VerifyFailures)
	}
	if l := s.Layers[0]; l.Complete || l.Verified {
		t.Errorf("stats of the tampered layer: complete %v verified %v, want both false", l.Complete, l.Verified)
	}
	if l := s.Layers[1]; !l.Complete || !l.Verified {
		t.Errorf("stats of the good layer after a read: complete %v verified %v, want both true", l.Complete, l.Verified)
	}
	if lines := errorLines(t, logPath, bad.Digest.String()); len(lines) == 0 {
		t.Errorf("daemon log %s has no error line naming layer %s", logPath, bad.Digest)
	}
	cached := cacheEntries(t, bin, cache)
	for _, d := range []digest.Digest{bad.Digest, img.DiffIDs[0]} {
		if strings.Contains(cached[d], "blob") {
			t.Errorf("cache holds %s %s of the tampered layer", cached[d], d)
		}
	}
	if !strings.Contains(cached[img.DiffIDs[1]]+cached[img.LayerDescs[1].Digest], "blob") {
		t.Errorf("cache holds no bytes of the good layer read through the mount: %v", cached)
	}
	e2eUnmount(t, bin, cache, dir)
}
