package fs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// newClient returns a fetch client on a fresh cache under t.TempDir().
func newClient(t *testing.T, cache string, transport http.RoundTripper) *fetch.Client {
	t.Helper()
	if cache == "" {
		cache = t.TempDir()
	}
	c, err := fetch.New(fetch.Options{CacheDir: cache, Transport: transport, MaxAttempts: 2})
	if err != nil {
		t.Fatalf("fetch.New: %v", err)
	}
	return c
}

// loadImage resolves and loads ref, closing it at cleanup.
func loadImage(t *testing.T, c *fetch.Client, ref string) *Image {
	t.Helper()
	im, err := Resolve(t.Context(), c, ref, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Resolve(%s): %v", ref, err)
	}
	t.Cleanup(func() { im.Close() })
	if err := im.Load(t.Context()); err != nil {
		t.Fatalf("Load(%s): %v", ref, err)
	}
	return im
}

// mountImage mounts a loaded image under t.TempDir() with DirectMount and
// unmounts it at cleanup. It needs root and /dev/fuse.
func mountImage(t *testing.T, im *Image) string {
	t.Helper()
	fstest.RequireFUSE(t)
	dir := t.TempDir()
	m, err := im.Mount(context.WithoutCancel(t.Context()), dir, MountOptions{})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	unmountAtCleanup(t, m, dir)
	return dir
}

// reference returns the umoci unpack of layers, built as OCI gzip (umoci
// reads neither zstd nor Docker media types).
func reference(t *testing.T, layers []fstest.Layer) string {
	t.Helper()
	for i := range layers {
		layers[i].Compression = fstest.Gzip
	}
	im, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layout := t.TempDir()
	if err := im.WriteLayout(layout, "ref"); err != nil {
		t.Fatal(err)
	}
	return fstest.UmociUnpack(t, layout, "ref")
}

func compare(t *testing.T, what, got, want string) {
	t.Helper()
	diffs := fstest.CompareTrees(got, want, fstest.CompareOptions{IgnoreMtimePaths: fstest.CornerUnstableMtimes})
	for _, d := range diffs {
		t.Errorf("%s: %s", what, d)
	}
}

// TestMountEqualsUmoci is the foundation: the corner-case image, in every
// layer encoding, mounted from the real registry and pulled, equals umoci's
// unpack of the same layers entry by entry.
func TestMountEqualsUmoci(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	want := reference(t, fstest.Corners())
	variants := []struct {
		name   string
		layers []fstest.Layer
		opts   fstest.Options
	}{
		{"gzip", fstest.CornersWith(fstest.Gzip), fstest.Options{}},
		{"zstd", fstest.CornersWith(fstest.Zstd), fstest.Options{}},
		{"plain tar", fstest.CornersWith(fstest.None), fstest.Options{}},
		{"mixed", fstest.MixedCorners(), fstest.Options{}},
		{"docker schema 2", fstest.CornersWith(fstest.Gzip), fstest.Options{Docker: true}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			img, err := fstest.Build(v.layers, v.opts)
			if err != nil {
				t.Fatal(err)
			}
			repo := "corners/" + strings.ReplaceAll(v.name, " ", "-")
			if err := img.Push(t.Context(), host, repo, "v1"); err != nil {
				t.Fatal(err)
			}
			im := loadImage(t, newClient(t, "", nil), host+"/"+repo+":v1")
			compare(t, "mount", mountImage(t, im), want)
			pulled := filepath.Join(t.TempDir(), "rootfs")
			if err := im.Pull(t.Context(), pulled); err != nil {
				t.Fatalf("Pull: %v", err)
			}
			compare(t, "pull", pulled, want)
		})
	}
}

// TestMountRandomImages compares seeded random images, which mix whiteouts
// of existing paths with new entries, against umoci.
func TestMountRandomImages(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, seed := range []int64{1, 2, 3} {
		t.Run("seed="+string(rune('0'+seed)), func(t *testing.T) {
			layers := fstest.Random(seed, 300)
			want := reference(t, fstest.Random(seed, 300))
			im := loadImage(t, newClient(t, "", nil), layoutRef(t, layers))
			diffs := fstest.CompareTrees(mountImage(t, im), want, fstest.CompareOptions{IgnoreDirMtime: true})
			for _, d := range diffs {
				t.Errorf("mount: %s", d)
			}
		})
	}
}

// TestMountBehaviour checks what a reader of the mount sees beyond the tree:
// EROFS, xattrs through getfattr, stable inode numbers, file bytes.
func TestMountBehaviour(t *testing.T) {
	fstest.RequireFUSE(t)
	cache := t.TempDir()
	ref := layoutRef(t, fstest.Corners())
	first := mountImage(t, loadImage(t, newClient(t, cache, nil), ref))
	second := mountImage(t, loadImage(t, newClient(t, cache, nil), ref))

	t.Run("writes fail with EROFS", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(first, "new-file"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("create: %v, want EROFS", err)
		}
		if err := os.Mkdir(filepath.Join(first, "new-dir"), 0o755); !errors.Is(err, syscall.EROFS) {
			t.Errorf("mkdir: %v, want EROFS", err)
		}
		if err := os.Remove(filepath.Join(first, "big.bin")); !errors.Is(err, syscall.EROFS) {
			t.Errorf("unlink: %v, want EROFS", err)
		}
	})
	t.Run("inode numbers are the same on every mount", func(t *testing.T) {
		n := 0
		err := filepath.Walk(first, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(first, p)
			var a, b unix.Stat_t
			if err := unix.Lstat(p, &a); err != nil {
				return err
			}
			if err := unix.Lstat(filepath.Join(second, rel), &b); err != nil {
				return err
			}
			if a.Ino != b.Ino {
				t.Errorf("%s: inode %d on one mount, %d on the other", rel, a.Ino, b.Ino)
			}
			n++
			return nil
		})
		if err != nil || n < 20 {
			t.Fatalf("walked %d entries: %v", n, err)
		}
	})
	t.Run("getfattr lists the xattrs", func(t *testing.T) {
		if _, err := exec.LookPath("getfattr"); err != nil {
			t.Skip("getfattr not installed (apt-get install attr)")
		}
		out, err := exec.Command("getfattr", "-R", "-h", "-d", "-m", "-", "--absolute-names", first).CombinedOutput()
		if err != nil {
			t.Fatalf("getfattr: %v\n%s", err, out)
		}
		if !bytes.Contains(out, []byte("user.")) {
			t.Errorf("getfattr -R -d shows no user.* xattr:\n%s", out)
		}
	})
}

// blockingTransport holds every request for a blob digest until released,
// and can flip a byte of another blob's body.
type blockingTransport struct {
	base    http.RoundTripper
	block   digest.Digest
	tamper  digest.Digest
	release chan struct{}
}

func (bt *blockingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if bt.block != "" && strings.HasSuffix(req.URL.Path, "/blobs/"+bt.block.String()) {
		select {
		case <-bt.release:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	resp, err := bt.base.RoundTrip(req)
	if err != nil || bt.tamper == "" || !strings.HasSuffix(req.URL.Path, "/blobs/"+bt.tamper.String()) {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if len(body) > 100 {
		body[len(body)/2] ^= 0x40
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// indexedImage pushes a three-layer image to an in-process registry, loads
// it once so its entry tables are in the index cache, then drops the cached
// layer bytes: the next mount has every table but no bytes.
func indexedImage(t *testing.T, c fstest.Compression) (ref, cache string, img *fstest.Image) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(nopLogger())))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := fstest.Build(fstest.CornersWith(c), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "lazy/corners", "v1"); err != nil {
		t.Fatal(err)
	}
	ref, cache = host+"/lazy/corners:v1", t.TempDir()
	client := newClient(t, cache, nil)
	im := loadImage(t, client, ref)
	im.Close()
	// The cache keeps a gzip or plain layer's blob, a zstd layer's tar.
	for i, d := range img.DiffIDs {
		for _, key := range []digest.Digest{d, img.LayerDescs[i].Digest} {
			if err := client.Cache().Remove(fetch.KindBlob, key); err != nil && !errors.Is(err, fetch.ErrNotFound) {
				t.Fatal(err)
			}
		}
	}
	return ref, cache, img
}

// TestReadWaitsOnlyForItsLayer: with the tables cached and one layer's blob
// stalled at the registry, files of the other layers read at once.
func TestReadWaitsOnlyForItsLayer(t *testing.T) {
	fstest.RequireFUSE(t)
	ref, cache, img := indexedImage(t, fstest.Gzip)
	bt := &blockingTransport{base: http.DefaultTransport, block: img.LayerDescs[0].Digest, release: make(chan struct{})}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(bt.release) }) })
	im := loadImage(t, newClient(t, cache, bt), ref)
	mnt := mountImage(t, im)

	// Find a file held by a layer other than the stalled one, and one held by it.
	var other, stalled string
	im.Tree().Walk(func(p string, n *Node) error {
		if n.Type == index.TypeReg && n.Size > 0 {
			if n.Layer != 0 && other == "" {
				other = p
			}
			if n.Layer == 0 && stalled == "" {
				stalled = p
			}
		}
		return nil
	})
	if other == "" || stalled == "" {
		t.Fatalf("fixture has no file outside layer 0 (%q) or in it (%q)", other, stalled)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, other)); err != nil {
		t.Fatalf("read %s while layer 0 is stalled: %v", other, err)
	}
	if st := im.Stats(); st.Layers[0].Complete {
		t.Fatalf("layer 0 complete while its blob is stalled")
	}
	once.Do(func() { close(bt.release) })
	if _, err := os.ReadFile(filepath.Join(mnt, stalled)); err != nil {
		t.Fatalf("read %s after release: %v", stalled, err)
	}
}

// TestTamperedLayer: a layer whose blob bytes do not match its digest gives
// EIO for its files, one error line, verify_failures, and nothing cached,
// while the other layers' files still read. The plain-tar case has no gzip
// CRC to fall back on: only the digest check stands between the flipped byte
// and the reader, so this test fails if that check is removed.
func TestTamperedLayer(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, c := range []fstest.Compression{fstest.Gzip, fstest.None} {
		t.Run(c.String(), func(t *testing.T) {
			ref, cache, img := indexedImage(t, c)
			bad := img.LayerDescs[0]
			bt := &blockingTransport{base: http.DefaultTransport, tamper: bad.Digest}
			im := loadImage(t, newClient(t, cache, bt), ref)
			mnt := mountImage(t, im)
			var good, tampered []string
			im.Tree().Walk(func(p string, n *Node) error {
				if n.Type == index.TypeReg && n.Size > 0 {
					if n.Layer == 0 {
						tampered = append(tampered, p)
					} else {
						good = append(good, p)
					}
				}
				return nil
			})
			if len(tampered) == 0 || len(good) == 0 {
				t.Fatalf("fixture: files in layer 0 %v, elsewhere %v", tampered, good)
			}
			for _, p := range tampered {
				if b, err := os.ReadFile(filepath.Join(mnt, p)); !errors.Is(err, syscall.EIO) {
					t.Errorf("read %s from the tampered layer: %d bytes, err %v; want EIO", p, len(b), err)
				}
			}
			for _, p := range good {
				if _, err := os.ReadFile(filepath.Join(mnt, p)); err != nil {
					t.Errorf("read %s from a good layer: %v", p, err)
				}
			}
			if st := im.Stats(); st.VerifyFailures < 1 {
				t.Errorf("verify_failures = %d, want at least 1", st.VerifyFailures)
			}
			client := newClient(t, cache, nil)
			if client.Cache().Has(img.DiffIDs[0]) || client.Cache().Has(bad.Digest) {
				t.Errorf("the tampered layer's bytes were cached")
			}
		})
	}
}

// TestTamperedLayerOnLoad: with no cached index, a tampered blob fails Load
// with a digest error and leaves nothing in the cache.
func TestTamperedLayerOnLoad(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(nopLogger())))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := fstest.Build(fstest.Corners(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "tamper/corners", "v1"); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	bt := &blockingTransport{base: http.DefaultTransport, tamper: img.LayerDescs[1].Digest}
	im, err := Resolve(t.Context(), newClient(t, cache, bt), host+"/tamper/corners:v1", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	err = im.Load(t.Context())
	var de *fetch.DigestError
	if !errors.As(err, &de) {
		t.Fatalf("Load of a tampered layer: %v, want a *fetch.DigestError", err)
	}
	if st := im.Stats(); st.VerifyFailures != 1 {
		t.Errorf("verify_failures = %d, want 1", st.VerifyFailures)
	}
	c := newClient(t, cache, nil)
	if c.Cache().Has(img.DiffIDs[1]) {
		t.Errorf("the tampered layer's uncompressed bytes were cached")
	}
	if _, err := c.Cache().ReadIndex(img.LayerDescs[1].Digest); !errors.Is(err, fetch.ErrNotFound) {
		t.Errorf("index of the tampered layer: %v, want ErrNotFound", err)
	}
}
