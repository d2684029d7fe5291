package bench

import (
	"archive/tar"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// The peer checks (`make peers-check`): each peer built by `make peers`
// started against containerd 2.x (CRI) or podman, one container run from
// an eStargz image of a loopback registry, reached through the bench's
// counting proxy. They run only when OCIFS_PEERS_DIR names the peers'
// directory (a plain skip otherwise, in CI too: .ci/run does not build the
// peers), and then fail when something they need is missing.
const peersDirEnv = "OCIFS_PEERS_DIR"

// containerd2DirEnv names containerd 2.x's directory, as for
// fs/snapshotter/critest's tests.
const containerd2DirEnv = "OCIFS_CONTAINERD2_DIR"

// peerBigSize is an incompressible file in the check image that the
// program never reads: a lazy peer fetches far less than it by the time
// the program has exited.
const peerBigSize = 16 << 20

func requirePeer(t *testing.T, bins ...string) string {
	t.Helper()
	dir := os.Getenv(peersDirEnv)
	if dir == "" {
		t.Skipf("%s not set: `make peers-check` builds the peers and runs these", peersDirEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the peer checks need root")
	}
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("%v (make peers)", err)
		}
	}
	return dir
}

// peerImage pushes an eStargz image (busybox, a small file the program
// prints, a big one it never reads) to host and returns its reference
// through ref host and the size of its layer.
func peerImage(t *testing.T, pushHost, refHost string) (string, int64) {
	t.Helper()
	c := &cacheDir{root: t.TempDir()}
	for _, d := range []string{"blobs", "images"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := peerLayer(t, fstest.None)
	if err != nil {
		t.Fatal(err)
	}
	im, err := fstest.Build([]fstest.Layer{l}, fstest.Options{BlobDir: c.path("blobs")})
	if err != nil {
		t.Fatal(err)
	}
	desc, diffID, err := compressLayer(c, im.LayerDescs[0], fmtEstargz)
	if err != nil {
		t.Fatal(err)
	}
	b := &builtImage{Name: "peer-check", Format: fmtEstargz, Layers: []ocispec.Descriptor{desc}}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config:   ocispec.ImageConfig{Env: []string{"PATH=/bin"}, Cmd: []string{"/bin/busybox", "cat", "/etc/peer-check"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	}
	if b.Config, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	mf := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Layers: b.Layers,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(b.Config), Size: int64(len(b.Config))}}
	mf.SchemaVersion = 2
	if b.Manifest, err = json.Marshal(mf); err != nil {
		t.Fatal(err)
	}
	if err := push(t.Context(), c, pushHost, b); err != nil {
		t.Fatal(err)
	}
	return b.ref(refHost), desc.Size
}

// peerLayer is the check image's one layer: busybox, the file the
// program prints and the big one it never reads.
func peerLayer(t *testing.T, c fstest.Compression) (fstest.Layer, error) {
	l, err := critest.BusyboxLayer(c)
	if err != nil {
		return l, err
	}
	big := filepath.Join(t.TempDir(), "big")
	if err := writeRandom(big, 7, peerBigSize); err != nil {
		return l, err
	}
	mt := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Files = append([]fstest.File{{Header: tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: mt}},
		{Header: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: mt}}}, l.Files...)
	l.Files = append(l.Files,
		fstest.File{Header: tar.Header{Typeflag: tar.TypeReg, Name: "etc/peer-check", Mode: 0o644, ModTime: mt}, Data: []byte("peer check 7\n")},
		fstest.File{Header: tar.Header{Typeflag: tar.TypeReg, Name: "big.bin", Mode: 0o644, ModTime: mt}, Path: big})
	return l, nil
}

// peerNet is a loopback registry behind the bench's counting proxy.
func peerNet(t *testing.T) (registry string, p *proxy) {
	t.Helper()
	registry = fstest.StartRegistry(t)
	p, err := startProxy(registry)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return registry, p
}

func shortDir(t *testing.T) string {
	t.Helper()
	// not under /var or /run: podmantest lays overlays over those
	d, err := os.MkdirTemp("/tmp", "obp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountUnder(d); os.RemoveAll(d) })
	return d
}

func startPeer(t *testing.T, argv []string, logPath string) *daemon {
	t.Helper()
	d, err := startDaemon(argv, logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop(syscall.SIGINT)
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(argv[0]), d.tail(30))
		}
	})
	return d
}

// TestPeerStargzSnapshotter runs a container through CRI on containerd
// 2.x with stargz-snapshotter as its proxy snapshotter, from an eStargz
// image: see criPeerCheck.
func TestPeerStargzSnapshotter(t *testing.T) {
	peers := requirePeer(t, "containerd-stargz-grpc")
	registry, p := peerNet(t)
	ref, layerSize := peerImage(t, registry, p.addr())
	criPeerCheck(t, registry, p, "stargz", filepath.Join(peers, "containerd-stargz-grpc"), ref, layerSize)
}

// TestPeerSoci runs a container through CRI on containerd 2.x with the
// SOCI snapshotter, from a plain gzip image converted by soci-convert
// (SOCI index v2, pushed to the registry): see criPeerCheck.
func TestPeerSoci(t *testing.T) {
	peers := requirePeer(t, "soci-snapshotter-grpc", "soci-convert")
	registry, p := peerNet(t)
	l, err := peerLayer(t, fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	im, err := fstest.Build([]fstest.Layer{l}, fstest.Options{BlobDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := critest.SetConfig(im, func(c *ocispec.ImageConfig) {
		c.Env, c.Cmd = []string{"PATH=/bin"}, []string{"/bin/busybox", "cat", "/etc/peer-check"}
	}); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := im.WriteLayout(layout, "1"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), filepath.Join(peers, "soci-convert"), layout, registry+"/peers/soci:1").CombinedOutput()
	if err != nil {
		t.Fatalf("soci-convert: %v: %s", err, out)
	}
	criPeerCheck(t, registry, p, "soci", filepath.Join(peers, "soci-snapshotter-grpc"), p.addr()+"/peers/soci:1", im.LayerDescs[0].Size)
}

// criPeerCheck starts snapshotter bin and containerd 2.x with it as the
// CRI snapshotter, runs ref's command through CRI and checks: the output
// is right, the layer was a FUSE mount under the snapshotter's root (not
// unpacked by containerd), and far less than the layer was fetched by
// the program's exit.
func criPeerCheck(t *testing.T, registry string, p *proxy, name, bin, ref string, layerSize int64) {
	t.Helper()
	c2 := os.Getenv(containerd2DirEnv)
	if c2 == "" {
		t.Fatalf("%s not set (make peers-check sets it)", containerd2DirEnv)
	}
	pause, err := critest.PushPauseImage(t.Context(), registry, "peers/pause", "1")
	if err != nil {
		t.Fatal(err)
	}
	dir := shortDir(t)
	sock, root := filepath.Join(dir, "sn.sock"), filepath.Join(dir, "sn-root")
	sn := startPeer(t, []string{bin, "--address", sock, "--root", root}, filepath.Join(dir, "sn.log"))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := sn.waitFor(ctx, "socket", time.Minute, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "ctrd"), 0o755)
	c, err := critest.Start(ctx, critest.Options{
		Binary: filepath.Join(c2, "containerd"), Dir: filepath.Join(dir, "ctrd"),
		Registries:   []string{registry, p.addr()},
		SandboxImage: pause,
		Proxy:        &critest.ProxySnapshotter{Name: name, Address: sock},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("containerd log:\n%s", c.LogTail(30))
		}
	})
	cl, err := c.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pod, err := cl.RunPod(ctx, "peer")
	if err != nil {
		t.Fatal(err)
	}
	c0 := p.counters()
	res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "peer", Image: ref}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := p.counters().sub(c0)
	if res.ExitCode != 0 || string(res.Output.Stdout) != "peer check 7\n" {
		t.Fatalf("container exited %d with stdout %q stderr %q, want 0 and %q", res.ExitCode, res.Output.Stdout, res.Output.Stderr, "peer check 7\n")
	}
	if n := fuseMountsUnder(root); n == 0 {
		t.Errorf("no FUSE mount under the snapshotter's root %s: containerd did not use a remote snapshot", root)
	}
	if got.BytesDown >= layerSize/2 {
		t.Errorf("fetched %d bytes by the program's exit, the layer is %d: not lazy", got.BytesDown, layerSize)
	}
	t.Logf("%s: %.2f s from PullImage to exit, %d bytes fetched of a %d-byte layer", name, res.Timings.Total().Seconds(), got.BytesDown, layerSize)
}

// TestPeerStargzStore runs podman 4.3.1 with stargz-store as its
// additional layer store: the output is right, podman's layer is the
// store's (its diff is a link into the store), and far less than the
// layer was fetched.
func TestPeerStargzStore(t *testing.T) {
	peers := requirePeer(t, "stargz-store")
	registry, p := peerNet(t)
	ref, layerSize := peerImage(t, registry, p.addr())
	dir := shortDir(t)
	mnt := filepath.Join(dir, "store")
	st := startPeer(t, []string{filepath.Join(peers, "stargz-store"), "--root", filepath.Join(dir, "store-root"), mnt}, filepath.Join(dir, "store.log"))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := st.waitFor(ctx, "mount", time.Minute, func() bool { return isFUSEMount(mnt) }); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "p"), 0o755)
	pm, err := podmantest.Start(ctx, podmantest.Options{Dir: filepath.Join(dir, "p"), Registries: []string{p.addr()}, AdditionalLayerStore: mnt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pm.Stop(); err != nil {
			t.Error(err)
		}
	})
	c0 := p.counters()
	res, err := pm.Run(ctx, podmantest.RunSpec{Image: ref})
	if err != nil {
		t.Fatal(err)
	}
	got := p.counters().sub(c0)
	if res.ExitCode != 0 || string(res.Stdout) != "peer check 7\n" {
		t.Fatalf("podman run exited %d with stdout %q stderr %q, want 0 and %q", res.ExitCode, res.Stdout, res.Stderr, "peer check 7\n")
	}
	layers, err := pm.StoredLayers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("podman stored %d layers, want 1: %+v", len(layers), layers)
	}
	link, err := os.Readlink(filepath.Join(pm.Root, "overlay", layers[0].ID, "diff"))
	if err != nil || !strings.HasPrefix(link, mnt+"/") {
		t.Errorf("podman's layer diff is %q (%v), want a link into the store %s", link, err, mnt)
	}
	if got.BytesDown >= layerSize/2 {
		t.Errorf("fetched %d bytes by the program's exit, the layer is %d: not lazy", got.BytesDown, layerSize)
	}
	t.Logf("stargz-store: %.2f s to first output, %d bytes fetched of a %d-byte layer", res.Timings.ToFirstOutput().Seconds(), got.BytesDown, layerSize)
}

func fuseMountsUnder(dir string) int {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			if _, after, ok := strings.Cut(l, " - "); ok && strings.HasPrefix(after, "fuse") {
				n++
			}
		}
	}
	return n
}
