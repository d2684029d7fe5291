package criauth

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// containerd2DirEnv is critest's variable naming a containerd 2.x build
// (`make test-containerd2` sets it).
const containerd2DirEnv = "OCIFS_CONTAINERD2_DIR"

// The private registry's one account. The password is long and unusual so
// that a grep of the logs for it cannot hit anything else.
const (
	privateUser     = "kubelet"
	privatePassword = "pw-Zq7xK2vRw9sLm4TbN8cY"
)

func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true, so this is a failure)", reason)
	}
	t.Skip(reason)
}

// privateRegistry is docker-registry with htpasswd auth over storage that
// holds one pushed image.
type privateRegistry struct {
	host    string
	ref     string // the private image
	image   *fstest.Image
	logPath string
}

// startPrivateRegistry pushes a small image through an open registry on
// dir's storage, stops it, and serves the same storage with htpasswd auth
// (bcrypt, the only hash docker-registry takes) until the test ends.
func startPrivateRegistry(t *testing.T, dir string) *privateRegistry {
	t.Helper()
	ctx := t.Context()
	im, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{Header: tar.Header{Name: "etc/private", Typeflag: tar.TypeReg, Mode: 0o644}, Data: []byte("only with credentials\n")},
	}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	openHost, stop, err := fstest.RunRegistry(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Push(ctx, openHost, "private/app", "1"); err != nil {
		stop()
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	hash, err := bcrypt.GenerateFromPassword([]byte(privatePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(privateUser+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The open registry's port is free again; reuse it (the image
	// reference names the host, not the storage).
	host := openHost
	cfg := fstest.RegistryConfig(filepath.Join(dir, "storage"), host) +
		"auth:\n  htpasswd:\n    realm: ocifs-test\n    path: " + htpasswd + "\n"
	cfgPath := filepath.Join(dir, "private.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "private.log")
	logOut, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logOut.Close()
	cmd := exec.Command(fstest.RegistryBinary, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logOut, logOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s:\n%s", logPath, b)
		}
	})
	// Ready when /v2/ asks for basic auth.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized && strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
				break
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("private registry on %s not ready: %v\n%s", host, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &privateRegistry{host: host, ref: host + "/private/app:1", image: im, logPath: logPath}
}

// anonymous is a fallback keychain with nothing in it (the machine's own
// auth files stay out of the test).
type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

// TestCRIPrivateRegistry pulls a private image through the proxy into a
// real containerd (its overlayfs snapshotter): with the credentials in
// PullImage's auth it succeeds and the keychain then answers them (a
// fetch.Client built with it reads the manifest), without them or with a
// wrong password it fails with containerd's 401, and the password is in
// no log (the proxy's, containerd's, the registry's).
func TestCRIPrivateRegistry(t *testing.T) {
	for _, b := range []struct{ name, path string }{
		{"containerd-1.6", critest.DebianContainerd},
		{"containerd-2", containerd2Binary()},
	} {
		t.Run(b.name, func(t *testing.T) { testPrivateRegistry(t, b.path) })
	}
}

func containerd2Binary() string {
	if d := os.Getenv(containerd2DirEnv); d != "" {
		return filepath.Join(d, "containerd")
	}
	return ""
}

// requireContainerd skips (fails with CI=true) unless the test can run
// the containerd binary: root, its shim, runc and the registry. An unset
// 2.x binary is a plain skip even in CI: `make test-containerd2` sets it.
func requireContainerd(t *testing.T, binary string) {
	t.Helper()
	if binary == "" {
		t.Skipf("%s not set: `make test-containerd2` runs the containerd 2.x tests", containerd2DirEnv)
	}
	fstest.RequireRoot(t)
	for _, p := range []string{binary, filepath.Join(filepath.Dir(binary), critest.ShimBinary), critest.DebianRunc, fstest.RegistryBinary} {
		if _, err := exec.LookPath(p); err != nil {
			skipOrFail(t, "needs "+p+" (make deps; make containerd2 for 2.x): "+err.Error())
		}
	}
}

func testPrivateRegistry(t *testing.T, binary string) {
	requireContainerd(t, binary)
	dir := socketDir(t)
	reg := startPrivateRegistry(t, filepath.Join(dir, "registry"))

	startCtx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cdDir := filepath.Join(dir, "cd")
	if err := os.Mkdir(cdDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cd, err := critest.Start(startCtx, critest.Options{Binary: binary, Dir: cdDir, Registries: []string{reg.host}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd %s pull=%s snapshotter=%s", cd.Version.Raw, cd.Pull, cd.Snapshotter)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(cd.LogTail(60))
		}
		if err := cd.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})

	log, logs := newLog()
	srv, err := Serve(filepath.Join(dir, "cri-image.sock"), cd.Address, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stop proxy: %v", err)
		}
	})
	cl := dial(t, srv.Address())
	kc := srv.Keychain(anonymous{})
	ctx := t.Context()
	spec := &runtimeapi.ImageSpec{Image: reg.ref}
	pullWith := func(auth *runtimeapi.AuthConfig) error {
		_, err := cl.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec, Auth: auth})
		return err
	}
	// deniedFor checks a pull failed with containerd's 401 passed through.
	deniedFor := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("pull %s succeeded", what)
		}
		// 1.6 says "... failed with status code [manifests 1]: 401
		// Unauthorized"; 2.4 without credentials "pull access denied, ...
		// authorization failed: no basic auth credentials", with wrong
		// ones "...: 401 Unauthorized".
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, "401 Unauthorized") && !strings.Contains(msg, "authorization failed") {
			t.Errorf("pull %s: %v, want containerd's refusal (401 Unauthorized, authorization failed)", what, err)
		}
		if strings.Contains(msg, privatePassword) {
			t.Errorf("pull %s: the error carries the password", what)
		}
		t.Logf("pull %s: %v", what, err)
	}

	// Without credentials: containerd's refusal, exactly as containerd
	// gives it without the proxy, and nothing recorded.
	err = pullWith(nil)
	deniedFor("without auth", err)
	direct, err2 := cd.Dial(ctx)
	if err2 != nil {
		t.Fatal(err2)
	}
	defer direct.Close()
	_, err2 = direct.Image.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec})
	if s1, s2 := status.Convert(err), status.Convert(err2); s1.Code() != s2.Code() || s1.Message() != s2.Message() {
		t.Errorf("through the proxy: %v\ndirect to containerd: %v", err, err2)
	}
	if got := resolve(t, kc, reg.host+"/private/app"); got != (authn.AuthConfig{}) {
		t.Errorf("after the unauthenticated pull the keychain answers %+v, want anonymous", got)
	}
	// A fetch.Client without the credentials cannot read it either.
	if _, err := newFetch(t, anonymous{}).Resolve(ctx, reg.ref); err == nil {
		t.Error("fetch without credentials resolved the private image")
	}

	// With the wrong password: refused, and not recorded.
	deniedFor("with a wrong password", pullWith(basic(privateUser, "not-"+privatePassword)))
	if got := resolve(t, kc, reg.host+"/private/app"); got != (authn.AuthConfig{}) {
		t.Errorf("after the refused pull the keychain answers %+v, want anonymous", got)
	}

	// With the credentials: pulled, and the keychain answers them.
	start := time.Now()
	resp, err := cl.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec, Auth: basic(privateUser, privatePassword)})
	if err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	t.Logf("pulled %s as %s through the proxy in %v", reg.ref, resp.ImageRef, time.Since(start).Round(time.Millisecond))
	if resp.ImageRef != reg.image.ConfigDesc.Digest.String() {
		t.Errorf("pulled image ID %s, want the config digest %s", resp.ImageRef, reg.image.ConfigDesc.Digest)
	}
	if got := resolve(t, kc, reg.host+"/private/app"); got != (authn.AuthConfig{Username: privateUser, Password: privatePassword}) {
		t.Errorf("after the pull the keychain answers %+v, want the pull's credentials", got)
	}
	im, err := newFetch(t, kc).Resolve(ctx, reg.ref)
	if err != nil {
		t.Fatalf("fetch with the proxy's keychain: %v", err)
	}
	if im.ManifestDigest != reg.image.ManifestDesc.Digest || string(im.ManifestBytes()) != string(reg.image.Manifest) {
		t.Errorf("fetch read manifest %s, want %s", im.ManifestDigest, reg.image.ManifestDesc.Digest)
	}
	rc, err := im.OpenBlob(ctx, im.Layers()[0])
	if err != nil {
		t.Fatalf("fetch a layer with the proxy's keychain: %v", err)
	}
	rc.Close()

	// The other image service calls reach containerd through the proxy.
	st, err := cl.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec})
	if err != nil || st.GetImage().GetId() != resp.ImageRef {
		t.Errorf("ImageStatus through the proxy: %v, %v; want image %s", st, err, resp.ImageRef)
	}
	list, err := cl.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, i := range list.Images {
		found = found || i.Id == resp.ImageRef
	}
	if !found {
		t.Errorf("ListImages through the proxy: %d images, none is %s", len(list.Images), resp.ImageRef)
	}
	fsInfo, err := cl.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil || len(fsInfo.GetImageFilesystems()) == 0 {
		t.Errorf("ImageFsInfo through the proxy: %v, %v", fsInfo, err)
	}
	// containerd 2.4 streams images; 1.6 does not know the call.
	stream, err := cl.StreamImages(ctx, &runtimeapi.StreamImagesRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	t.Logf("StreamImages through the proxy: %v", err)
	if err != nil && status.Code(err) != codes.Unimplemented {
		t.Errorf("StreamImages through the proxy: %v", err)
	}
	if _, err := cl.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: spec}); err != nil {
		t.Fatalf("RemoveImage through the proxy: %v", err)
	}
	if st, err := cl.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec}); err != nil || st.Image != nil {
		t.Errorf("ImageStatus after RemoveImage: %v, %v; want no image", st, err)
	}

	// The pull after the removal, without credentials, fails again; the
	// recorded ones still answer the keychain.
	deniedFor("without auth after removal", pullWith(nil))
	if got := resolve(t, kc, reg.host+"/private/app"); got.Password != privatePassword {
		t.Errorf("recorded credentials lost after an unauthenticated pull: %+v", got)
	}

	// No log holds the password.
	cdLog, err := os.ReadFile(cd.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	regLog, err := os.ReadFile(reg.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]string{"proxy": logs.String(), "containerd": string(cdLog), "registry": string(regLog)} {
		if strings.Contains(l, privatePassword) {
			t.Errorf("the %s log holds the password", name)
		}
	}
	if !strings.Contains(logs.String(), "criauth: pulled") || !strings.Contains(logs.String(), "recorded for "+reg.host+"/private/app") {
		t.Errorf("the proxy log does not show the pull:\n%s", logs)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(srv.Address()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Stop: %v", err)
	}
}

func newFetch(t *testing.T, kc authn.Keychain) *fetch.Client {
	t.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), Keychain: kc, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// After a restart (a new Server, so a new Store) the credentials of pulls
// before it are gone: a read of the private image with the file-less
// fallback fails with fetch's ErrUnauthorized and the keychain logs what to
// do; with root's docker auth file as the fallback (authn.DefaultKeychain)
// the read works again.
func TestRestartForgetsCredentials(t *testing.T) {
	if _, err := os.Stat(fstest.RegistryBinary); err != nil {
		skipOrFail(t, "docker-registry not installed (apt-get install docker-registry)")
	}
	reg := startPrivateRegistry(t, socketDir(t))
	ctx := t.Context()
	const repo = "/private/app"

	before := NewStore(nil)
	finish, recorded, why := before.Begin(reg.ref, basic(privateUser, privatePassword))
	if !recorded {
		t.Fatalf("not recorded: %s", why)
	}
	finish(true)
	if _, err := newFetch(t, before.Keychain(anonymous{})).Resolve(ctx, reg.ref); err != nil {
		t.Fatalf("before the restart: %v", err)
	}

	log, logs := newLog()
	after := NewStore(log)
	_, err := newFetch(t, after.Keychain(anonymous{})).Resolve(ctx, reg.ref)
	if !errors.Is(err, fetch.ErrUnauthorized) {
		t.Fatalf("after the restart, without an auth file: %v, want fetch.ErrUnauthorized", err)
	}
	t.Logf("after the restart: %v", err)
	if l := logs.String(); !strings.Contains(l, reg.host+repo) || !strings.Contains(l, "pull the image again") || !strings.Contains(l, "auth file") {
		t.Errorf("no log line saying what to do for %s:\n%s", reg.host+repo, l)
	}

	// Root's docker auth file, as a node would configure it.
	dockerDir := t.TempDir()
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.host,
		base64.StdEncoding.EncodeToString([]byte(privateUser+":"+privatePassword)))
	if err := os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dockerDir)
	im, err := newFetch(t, after.Keychain(authn.DefaultKeychain)).Resolve(ctx, reg.ref)
	if err != nil {
		t.Fatalf("after the restart, with an auth file: %v", err)
	}
	if im.ManifestDigest != reg.image.ManifestDesc.Digest {
		t.Errorf("manifest %s, want %s", im.ManifestDigest, reg.image.ManifestDesc.Digest)
	}
	if strings.Contains(logs.String(), privatePassword) {
		t.Error("the log holds the password")
	}
}
