package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// readGuard bounds every read through a mount in these tests: a read that
// hangs fails the test instead of the whole run.
const readGuard = 60 * time.Second

// staticKeys hands the same basic credentials to every registry.
type staticKeys struct{ user, pass string }

func (k staticKeys) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// faultSetup is the lazy image (indexed gzip layer + small whole layer)
// in a real registry, with its index pushed as a referrer.
type faultSetup struct {
	host    string // the registry itself
	ref     string // host/repo:v1
	content map[string][]byte
}

func newFaultSetup(t *testing.T) faultSetup {
	t.Helper()
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(11, 200)
	// Plain tar: a flipped byte still "decompresses", so only the span
	// digest stands between it and the reader.
	layers[0].Compression = fstest.None
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "faults/app", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/faults/app:v1"
	pushIndexOf(t, ref, Options{SpanSize: lazySpan, WholeThreshold: 64 << 10})
	return faultSetup{host: host, ref: ref, content: content}
}

// front starts a fault front before the registry and returns it with the
// image's reference through it.
func (s faultSetup) front(t *testing.T) (*fstest.Faults, string) {
	t.Helper()
	f, err := fstest.NewFaults(s.host)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Cleanup(f.Release) // let stalled answers end before srv.Close waits for them
	return f, strings.TrimPrefix(srv.URL, "http://") + strings.TrimPrefix(s.ref, s.host)
}

// mountThrough resolves ref with a fresh cache and short attempt timeout,
// loads it (the index and small layer are fetched here, before any fault)
// and mounts it.
func mountThrough(t *testing.T, ref string, keys authn.Keychain) (*Image, string) {
	t.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), MaxAttempts: 3, AttemptTimeout: 500 * time.Millisecond, Keychain: keys})
	if err != nil {
		t.Fatal(err)
	}
	im, err := Resolve(t.Context(), c, ref, Options{Logger: testLogger(t), SpanSize: lazySpan, WholeThreshold: 64 << 10})
	if err != nil {
		t.Fatalf("Resolve(%s): %v", ref, err)
	}
	t.Cleanup(func() { im.Close() })
	if err := im.Load(t.Context()); err != nil {
		t.Fatalf("Load(%s): %v", ref, err)
	}
	if got := im.Layers()[0].Mode; got != ModeIndex {
		t.Fatalf("fixture: layer 0 mode %q, want %q (faults must hit Range reads)", got, ModeIndex)
	}
	return im, mountImage(t, im)
}

// TestFaults injects each registry fault into the Range reads of a mounted
// lazy layer. The outcome is written per case: "ok" means the read returns
// exactly the reference bytes (retried past the fault), "eio" means it
// fails with EIO. In every case no wrong byte is served, no read hangs
// (fstest.ReadFileWithin), a file of the other layer still reads, and once the fault
// is gone the same file reads right (nothing bad was cached).
//
// Checked by breaking each protection once: without the span digest check
// in fetch.FetchParts, "flipped byte always" fails at "want EIO" (layer 0
// is plain tar, so nothing else notices the flip); without retries, the
// "once" cases fail at "want the fault retried". "wrong content-range" is
// caught twice: by the Content-Range check and, with that removed, by the
// span digest, so it fails only with both gone.
func TestFaults(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newFaultSetup(t)
	const file, other = "data/f0120.txt", "etc/os-release"
	ranged := func(f fstest.Fault, times int) *fstest.Rule {
		return &fstest.Rule{Method: "GET", Path: "/blobs/", Ranged: fstest.WithRange, Times: times, Fault: f}
	}
	for _, tc := range []struct {
		name string
		rule *fstest.Rule
		want string // "ok" or "eio"
	}{
		{"429 once", ranged(fstest.Fault{Kind: fstest.Status, Status: 429}, 1), "ok"},
		{"500 once", ranged(fstest.Fault{Kind: fstest.Status, Status: 500}, 1), "ok"},
		{"503 once", ranged(fstest.Fault{Kind: fstest.Status, Status: 503}, 1), "ok"},
		{"503 always", ranged(fstest.Fault{Kind: fstest.Status, Status: 503}, 0), "eio"},
		{"reset once", ranged(fstest.Fault{Kind: fstest.Reset, N: 100}, 1), "ok"},
		{"reset always", ranged(fstest.Fault{Kind: fstest.Reset, N: 100}, 0), "eio"},
		{"cut short once", ranged(fstest.Fault{Kind: fstest.Truncate, N: 100}, 1), "ok"},
		{"cut short always", ranged(fstest.Fault{Kind: fstest.Truncate, N: 100}, 0), "eio"},
		{"stall once", ranged(fstest.Fault{Kind: fstest.Stall, N: 100}, 1), "ok"},
		{"stall always", ranged(fstest.Fault{Kind: fstest.Stall, N: 100}, 0), "eio"},
		{"range ignored", ranged(fstest.Fault{Kind: fstest.IgnoreRange}, 0), "ok"},
		{"wrong content-range once", ranged(fstest.Fault{Kind: fstest.WrongRange, N: 7}, 1), "ok"},
		{"wrong content-range always", ranged(fstest.Fault{Kind: fstest.WrongRange, N: 7}, 0), "eio"},
		{"flipped byte always", ranged(fstest.Fault{Kind: fstest.Flip, N: -1}, 0), "eio"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			front, ref := s.front(t)
			_, dir := mountThrough(t, ref, nil)
			front.Add(tc.rule)
			got, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, file))
			if front.Hits(tc.rule) == 0 {
				t.Fatalf("the fault never fired; the test proves nothing")
			}
			switch {
			case err == nil && !bytes.Equal(got, s.content[file]):
				t.Fatalf("served wrong bytes: %d bytes, want the reference %d", len(got), len(s.content[file]))
			case tc.want == "ok" && err != nil:
				t.Fatalf("read %s: %v; want the fault retried and the file served", file, err)
			case tc.want == "eio" && !errors.Is(err, syscall.EIO):
				t.Fatalf("read %s: %d bytes, err %v; want EIO", file, len(got), err)
			}
			if b, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, other)); err != nil || !bytes.Equal(b, s.content[other]) {
				t.Errorf("other layer's %s during the fault: %q, %v", other, b, err)
			}
			front.Clear()
			if b, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, file)); err != nil || !bytes.Equal(b, s.content[file]) {
				t.Errorf("%s once the fault is gone: %d bytes, %v; want the reference", file, len(b), err)
			}
		})
	}
}

// TestFaultRedirectOtherHost: the registry demands credentials and
// redirects blob reads to another host (as registries do to object
// storage). Reads succeed, and the other host never sees the credentials.
// Two guards stand behind this: go-containerregistry's transport adds
// credentials only for the registry's host, and fetch's CheckRedirect
// drops Authorization on a cross-host redirect. Removing the second alone
// still passes (checked); removing both fails "storage host got
// Authorization".
func TestFaultRedirectOtherHost(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newFaultSetup(t)
	storage, err := fstest.NewFaults(s.host)
	if err != nil {
		t.Fatal(err)
	}
	storageSrv := httptest.NewServer(storage)
	t.Cleanup(storageSrv.Close)
	// "localhost" differs from the registry's "127.0.0.1" by name.
	storageURL := strings.Replace(storageSrv.URL, "127.0.0.1", "localhost", 1)

	front, ref := s.front(t)
	front.RequireBasicAuth("puller", "hunter2-secret")
	front.Add(&fstest.Rule{Method: "GET", Path: "/blobs/", Ranged: fstest.WithRange,
		Fault: fstest.Fault{Kind: fstest.Redirect, URL: storageURL}})
	_, dir := mountThrough(t, ref, staticKeys{"puller", "hunter2-secret"})
	const file = "data/f0042.txt"
	if got, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, file)); err != nil || !bytes.Equal(got, s.content[file]) {
		t.Fatalf("read through a redirect: %d bytes, %v", len(got), err)
	}
	sawAuth := false
	for _, r := range front.Requests() {
		sawAuth = sawAuth || r.Auth != ""
	}
	if !sawAuth {
		t.Fatal("the registry never got credentials; the test proves nothing")
	}
	reqs := storage.Requests()
	if len(reqs) == 0 {
		t.Fatal("the storage host got no request; the redirect was not followed")
	}
	for _, r := range reqs {
		if r.Auth != "" {
			t.Errorf("storage host got Authorization %q on %s; credentials must not follow a redirect to another host", r.Auth, r.Path)
		}
	}
}

// TestFaultManifestNotPinned: a registry answering a pinned reference with
// a manifest of another digest is refused with a digest error, and a mount
// already serving keeps serving. Removing the pinned-digest check in fetch
// fails at "Resolve accepted".
func TestFaultManifestNotPinned(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newFaultSetup(t)
	front, ref := s.front(t)
	im, dir := mountThrough(t, ref, nil)
	pinned := strings.TrimSuffix(ref, ":v1") + "@" + im.Fetched().ManifestDigest.String()

	other, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{{
		Header: tar.Header{Name: "evil", Typeflag: tar.TypeReg, Mode: 0o644}, Data: []byte("not the pinned image\n")}}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rule := front.Add(&fstest.Rule{Path: "/manifests/", Fault: fstest.Fault{Kind: fstest.Replace, Body: other.Manifest}})[0]
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir(), MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Resolve(t.Context(), c, pinned, Options{})
	if err == nil {
		got.Close()
		t.Fatalf("Resolve accepted a manifest of another digest for %s", pinned)
	}
	if front.Hits(rule) == 0 {
		t.Fatal("the fault never fired; the test proves nothing")
	}
	if !errors.Is(err, fetch.ErrFormat) || !strings.Contains(err.Error(), "digest mismatch") {
		t.Errorf("Resolve error %q; want a digest mismatch (ErrFormat)", err)
	}
	const file = "data/f0007.txt"
	if b, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, file)); err != nil || !bytes.Equal(b, s.content[file]) {
		t.Errorf("mounted image after the refusal: %d bytes, %v", len(b), err)
	}
}
