package snapshotter

import (
	"archive/tar"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// containerdBinary is one containerd to test against.
type containerdBinary struct {
	name string // subtest name: "containerd-1.6", "containerd-2"
	path string // empty: not asked for
}

// containerdBinaries are Debian's containerd and, when
// critest.Containerd2DirEnv is set (make test-containerd2), the 2.x build.
func containerdBinaries() []containerdBinary {
	bs := []containerdBinary{{"containerd-1.6", critest.DebianContainerd}, {"containerd-2", ""}}
	if d := os.Getenv("OCIFS_CONTAINERD2_DIR"); d != "" {
		bs[1].path = filepath.Join(d, "containerd")
	}
	return bs
}

// requireCRI skips (fails with CI=true) unless containerd b can run here;
// a 2.x binary that was not asked for is a plain skip.
func requireCRI(t *testing.T, b containerdBinary) {
	t.Helper()
	if b.path == "" {
		t.Skip("OCIFS_CONTAINERD2_DIR not set: `make test-containerd2` runs the containerd 2.x tests")
	}
	fstest.RequireRoot(t)
	for _, p := range []string{b.path, filepath.Join(filepath.Dir(b.path), critest.ShimBinary), critest.DebianRunc, critest.BusyboxBinary, fstest.RegistryBinary} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("needs %s (make deps; make containerd2 for 2.x): %v", p, err)
			}
			t.Skipf("needs %s: %v", p, err)
		}
	}
}

// runtimeAdded are the paths the runtime adds to a container's root (mount
// points of /proc, /sys, /dev and the pod's /etc files): left out of
// every comparison.
var runtimeAdded = []string{"proc", "sys", "dev", "etc/resolv.conf", "etc/hostname", "etc/hosts"}

// unpackMtimes are the directories whose mtime is the time of unpack in
// any containerd unpack, ours or overlayfs's, so two unpacks differ there:
// implied parents (implied/a/b/c.txt has no directory entries), and
// directories a later layer writes into without an entry for them, which
// the applier creates in its upper directory (busybox into bin/,
// whiteouts into gnu/ and hl/, an opaque marker into private/,
// opaque/new1 before opaque's marker, sameanc/z, sameopq/y and
// sameopq/sub/new). The root and etc/ hold the runtime's mount points.
var unpackMtimes = []string{".", "etc", "bin", "gnu", "hl", "opaque", "private",
	"implied", "implied/a", "implied/a/b", "sameanc", "sameopq", "sameopq/sub"}

// criImages are the images the CRI tests run: A is fs/fstest's corner
// image with busybox on top, without what containerd's applier cannot
// apply (see applicable) and with its hardlink headers carrying their
// file's mode (containerd applies a link header's mode to the shared
// inode); B is A with another first layer, so that
// none of its chain IDs is A's while layers 1 to 4 are A's blobs.
func criImages(t *testing.T) (a, b *fstest.Image) {
	t.Helper()
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	layers := append(fstest.Corners(), bb)
	for i := range layers {
		layers[i].Files = applicable(layers[i].Files)
	}
	if a, err = fstest.Build(layers, fstest.Options{}); err != nil {
		t.Fatal(err)
	}
	first := layers[0]
	first.Files = append(slices.Clone(first.Files), fstest.File{
		Header: tar.Header{Typeflag: tar.TypeReg, Name: "./image-b.txt", Mode: 0o644, ModTime: fstest.CornerTime, Format: tar.FormatPAX},
		Data:   []byte("image B\n"),
	})
	if b, err = fstest.Build(append([]fstest.Layer{first}, layers[1:]...), fstest.Options{}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// applicable drops what containerd's applier cannot apply into an empty
// upper directory: hardlinks whose target is not an earlier entry of the
// same layer (link(2) fails with ENOENT) and whiteouts of a path the same
// layer wrote before (the whiteout's device node fails with EEXIST). It
// gives the hardlinks left their target's mode.
func applicable(files []fstest.File) []fstest.File {
	clean := func(p string) string { return path.Clean("/" + p) }
	modes := map[string]int64{}
	written := func(p string) bool {
		for w := range modes {
			if w == p || strings.HasPrefix(w, p+"/") {
				return true
			}
		}
		return false
	}
	var kept []fstest.File
	for _, f := range files {
		name := clean(f.Header.Name)
		dir, base := path.Split(name)
		if target, ok := strings.CutPrefix(base, ".wh."); ok && target != ".wh..opq" && written(path.Join(dir, target)) {
			continue
		}
		if f.Header.Typeflag == tar.TypeLink {
			m, ok := modes[clean(f.Header.Linkname)]
			if !ok {
				continue
			}
			f.Header.Mode = m
		}
		modes[name] = f.Header.Mode
		kept = append(kept, f)
	}
	return kept
}

// criFixture is a registry with the pause image and the test images, and
// a counting front through which containerd pulls the test images.
type criFixture struct {
	host, front string // registry and front host:port
	faults      *fstest.Faults
	pause       string
	a, b        *fstest.Image
	refA, refB  string // through the front
}

func newCRIFixture(t *testing.T) *criFixture {
	t.Helper()
	f := &criFixture{host: fstest.StartRegistry(t)}
	var err error
	if f.pause, err = critest.PushPauseImage(t.Context(), f.host, "critest/pause", "1"); err != nil {
		t.Fatal(err)
	}
	f.a, f.b = criImages(t)
	for _, p := range []struct {
		im   *fstest.Image
		repo string
	}{{f.a, "snap/a"}, {f.b, "snap/b"}} {
		if err := p.im.Push(t.Context(), f.host, p.repo, "1"); err != nil {
			t.Fatal(err)
		}
	}
	if f.faults, err = fstest.NewFaults(f.host); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.faults)
	t.Cleanup(srv.Close)
	f.front = srv.Listener.Addr().String()
	f.refA, f.refB = f.front+"/snap/a:1", f.front+"/snap/b:1"
	return f
}

// blobGETs counts the GETs of blob d through the front so far.
func (f *criFixture) blobGETs(d digest.Digest) int {
	n := 0
	for _, r := range f.faults.Requests() {
		if r.Method == "GET" && strings.HasSuffix(r.Path, "/blobs/"+d.String()) {
			n++
		}
	}
	return n
}

// tmpDir is a directory short enough for unix socket paths, removed in
// t.Cleanup.
func tmpDir(t *testing.T, pattern string) string {
	t.Helper()
	d, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("remove %s: %v", d, err)
		}
	})
	return d
}

// startCRI starts containerd b (with a proxy snapshotter when proxy is
// set) and stops it in t.Cleanup, which must run before the proxy's.
func startCRI(t *testing.T, b containerdBinary, f *criFixture, pull critest.PullMode, proxy *critest.ProxySnapshotter) *critest.Containerd {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := critest.Start(ctx, critest.Options{
		Binary: b.path, Dir: tmpDir(t, "snapcri-"), Registries: []string{f.host, f.front},
		SandboxImage: f.pause, Proxy: proxy, Pull: pull,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd %s pull=%s snapshotter=%s", c.Version.Raw, c.Pull, c.Snapshotter)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.LogTail(40))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	return c
}

// runRoot starts a container of image that sleeps and returns the
// manifest of its root as the snapshotter mounted it.
func runRoot(t *testing.T, ctx context.Context, cl *critest.Client, pod *critest.Pod, name, image string) map[string]fstest.EntryInfo {
	t.Helper()
	id, err := cl.CreateContainer(ctx, pod, critest.ContainerSpec{Name: name, Image: image, Command: []string{critest.BusyboxPath, "sleep", "3600"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	root, err := cl.ContainerRoot(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	m, err := fstest.Manifest(root)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// compareRoots fails the test for every difference between a container
// root on ocifs's snapshotter and one on containerd's overlayfs.
func compareRoots(t *testing.T, what string, got, want map[string]fstest.EntryInfo) {
	t.Helper()
	diffs := fstest.CompareManifests(got, want, fstest.CompareOptions{IgnorePaths: runtimeAdded, IgnoreMtimePaths: unpackMtimes})
	for _, d := range diffs {
		t.Errorf("%s vs containerd's overlayfs: %s", what, d)
	}
	if len(got) < 50 {
		t.Errorf("%s has %d entries: not the corner image", what, len(got))
	}
}

// referenceRoots runs images A and B on containerd b's own overlayfs
// snapshotter and returns their container roots.
func referenceRoots(t *testing.T, b containerdBinary, f *criFixture) (a, bm map[string]fstest.EntryInfo) {
	t.Helper()
	c := startCRI(t, b, f, critest.PullDefault, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cl, err := c.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pod, err := cl.RunPod(ctx, "reference")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{f.refA, f.refB} {
		if _, err := cl.PullImage(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	a = runRoot(t, ctx, cl, pod, "a", f.refA)
	bm = runRoot(t, ctx, cl, pod, "b", f.refB)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	return a, bm
}

// daemon is our snapshotter served on a socket, as `ocifs snapshotter`
// will run it.
type daemon struct {
	root, sock string
	sn         *Snapshotter
	rec        *recorder
	srv        *Server
}

// startDaemon opens the snapshotter on root with layers and serves it on
// sock; t.Cleanup stops it (register it before containerd's).
func startDaemon(t *testing.T, root, sock string, layers Layers) *daemon {
	t.Helper()
	sn, err := Open(t.Context(), Options{Root: root, Layers: layers, Logger: slog.New(slog.NewTextHandler(tlogWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{root: root, sock: sock, sn: sn, rec: &recorder{Snapshotter: sn}}
	if d.srv, err = Serve(sock, d.rec); err != nil {
		sn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

// stop stops serving and closes the snapshotter; a second stop does
// nothing.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.srv == nil {
		return
	}
	if t.Failed() || testing.Verbose() {
		for i, call := range d.rec.Calls() {
			t.Logf("%s rpc %d: %s", d.sock, i, call)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.srv.Stop(ctx); err != nil {
		t.Errorf("stop snapshotter server: %v", err)
	}
	if err := d.sn.Close(); err != nil {
		t.Errorf("close snapshotter: %v", err)
	}
	d.srv = nil
}

// tlogWriter sends the snapshotter's log lines to the test log.
type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// recorder wraps a Snapshotter and records each call containerd made:
// what the report says containerd sends.
type recorder struct {
	*Snapshotter
	mu    sync.Mutex
	calls []string
}

func (r *recorder) note(method, key, parent string, opts []snapshots.Opt, err error) {
	var info snapshots.Info
	for _, o := range opts {
		o(&info)
	}
	s := method + " " + key
	if parent != "" {
		s += " <- " + parent
	}
	if len(info.Labels) > 0 {
		var ls []string
		for _, k := range slices.Sorted(maps.Keys(info.Labels)) {
			v := info.Labels[k]
			if len(v) > 24 {
				v = v[:24] + "..."
			}
			ls = append(ls, k+"="+v)
		}
		s += " {" + strings.Join(ls, ", ") + "}"
	}
	if err != nil {
		s += " -> " + err.Error()
	}
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
}

// Calls returns the calls so far.
func (r *recorder) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := r.Snapshotter.Prepare(ctx, key, parent, opts...)
	r.note("Prepare", key, parent, opts, err)
	return m, err
}

func (r *recorder) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := r.Snapshotter.View(ctx, key, parent, opts...)
	r.note("View", key, parent, opts, err)
	return m, err
}

func (r *recorder) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	m, err := r.Snapshotter.Mounts(ctx, key)
	r.note("Mounts", key, "", nil, err)
	return m, err
}

func (r *recorder) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	err := r.Snapshotter.Commit(ctx, name, key, opts...)
	r.note("Commit", key+" as "+name, "", opts, err)
	return err
}

func (r *recorder) Remove(ctx context.Context, key string) error {
	err := r.Snapshotter.Remove(ctx, key)
	r.note("Remove", key, "", nil, err)
	return err
}

func (r *recorder) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	info, err := r.Snapshotter.Stat(ctx, key)
	r.note("Stat", key, "", nil, err)
	return info, err
}

func (r *recorder) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	out, err := r.Snapshotter.Update(ctx, info, fieldpaths...)
	r.note("Update", info.Name+" "+strings.Join(fieldpaths, ","), "", []snapshots.Opt{snapshots.WithLabels(info.Labels)}, err)
	return out, err
}

func (r *recorder) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	u, err := r.Snapshotter.Usage(ctx, key)
	r.note("Usage", key, "", nil, err)
	return u, err
}

func (r *recorder) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	err := r.Snapshotter.Walk(ctx, fn, filters...)
	r.note("Walk", strings.Join(filters, " "), "", nil, err)
	return err
}

func (r *recorder) Cleanup(ctx context.Context) error {
	err := r.Snapshotter.Cleanup(ctx)
	r.note("Cleanup", "", "", nil, err)
	return err
}

// containerdSnapshots lists the snapshots containerd's own snapshot
// service shows for snapshotter in CRI's namespace.
func containerdSnapshots(t *testing.T, ctx context.Context, c *critest.Containerd, snapshotter string) []string {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "containerd-namespace", critest.Namespace)
	stream, err := snapshotsapi.NewSnapshotsClient(conn).List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: snapshotter})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for {
		resp, err := stream.Recv()
		if err != nil {
			if !strings.Contains(err.Error(), "EOF") {
				t.Fatalf("list snapshots through containerd: %v", err)
			}
			break
		}
		for _, i := range resp.Info {
			names = append(names, i.Name)
		}
	}
	return names
}

// pullModes are the pull paths of containerd b that pass labels: the
// client-side pull, and on 2.1+ the transfer service too.
func pullModes(t *testing.T, b containerdBinary) []critest.PullMode {
	t.Helper()
	v, err := critest.BinaryVersion(t.Context(), b.path)
	if err != nil {
		t.Fatal(err)
	}
	if v.AtLeast(2, 1) {
		return []critest.PullMode{critest.PullLocal, critest.PullTransfer}
	}
	return []critest.PullMode{critest.PullLocal}
}

// TestCRI runs images through CRI on ocifs's snapshotter, served on a
// socket as containerd's proxy snapshotter, and compares each container's
// root with the same image's on containerd's own overlayfs:
//
//   - fallback: a Layers that refuses everything; containerd downloads
//     and applies every layer through our snapshotter.
//   - lazy: a Layers that serves the layers itself (applyLayers);
//     containerd downloads none of image A's layers, and of image B only
//     the one layer the Layers refuses (B's layer 2: applied by
//     containerd over remote parents, under remote children). Then the
//     snapshotter restarts between two container starts of A, and CRI's
//     RemoveImage removes the snapshots.
func TestCRI(t *testing.T) {
	for _, b := range containerdBinaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			f := newCRIFixture(t)
			wantA, wantB := referenceRoots(t, b, f)
			for _, mode := range pullModes(t, b) {
				t.Run(mode.String()+"-pull", func(t *testing.T) {
					t.Run("fallback", func(t *testing.T) { testFallback(t, b, f, mode, wantA) })
					t.Run("lazy", func(t *testing.T) { testLazy(t, b, f, mode, wantA, wantB) })
				})
			}
		})
	}
}

// start serves a snapshotter with layers and starts containerd b on it.
func start(t *testing.T, b containerdBinary, f *criFixture, mode critest.PullMode, layers func(root string) Layers) (*daemon, *critest.Containerd) {
	t.Helper()
	dir := tmpDir(t, "snapd-")
	root := filepath.Join(dir, "root")
	d := startDaemon(t, root, filepath.Join(dir, "snapshotter.sock"), layers(root))
	c := startCRI(t, b, f, mode, &critest.ProxySnapshotter{Name: "ocifs", Address: d.sock})
	return d, c
}

type refuseAll struct{}

func (refuseAll) Prepare(context.Context, string, map[string]string) (Layer, error) {
	return Layer{}, fmt.Errorf("refused by the test")
}
func (refuseAll) Dir(context.Context, string, map[string]string) (string, error) {
	return "", fmt.Errorf("no remote layers in this test")
}
func (refuseAll) Release(context.Context, string) error { return nil }

func testFallback(t *testing.T, b containerdBinary, f *criFixture, mode critest.PullMode, want map[string]fstest.EntryInfo) {
	d, c := start(t, b, f, mode, func(string) Layers { return refuseAll{} })
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cl, err := c.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	before := map[digest.Digest]int{}
	for _, l := range f.a.LayerDescs {
		before[l.Digest] = f.blobGETs(l.Digest)
	}
	pod, err := cl.RunPod(ctx, "fallback")
	if err != nil {
		t.Fatal(err)
	}
	res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "print", Image: f.refA, Command: []string{critest.BusyboxPath, "cat", "/etc/passwd", "/top.txt"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "root:x:0:0:root:/root:/bin/bash\ntop layer\n"; res.ExitCode != 0 || string(res.Output.Stdout) != want {
		t.Errorf("run: exit %d, stdout %q; want 0, %q", res.ExitCode, res.Output.Stdout, want)
	}
	compareRoots(t, "container root (every layer applied by containerd)", runRoot(t, ctx, cl, pod, "sleep", f.refA), want)
	for _, l := range f.a.LayerDescs {
		if f.blobGETs(l.Digest) == before[l.Digest] {
			t.Errorf("layer %s: containerd did not download it, yet the snapshotter refused it", l.Digest)
		}
	}
	// Image A's five layers and the pause image's one.
	if got := d.sn.Stats(); got != (Stats{Fallback: int64(len(f.a.LayerDescs)) + 1}) {
		t.Errorf("Stats() = %+v, want %d fallbacks, nothing remote", got, len(f.a.LayerDescs)+1)
	}
}

func testLazy(t *testing.T, b containerdBinary, f *criFixture, mode critest.PullMode, wantA, wantB map[string]fstest.EntryInfo) {
	layersDir := tmpDir(t, "snapl-")
	var layers *applyLayers
	newLayers := func(root string) Layers {
		upper := func(id string) string { return filepath.Join(root, "snapshots", id, "fs") }
		layers = newApplyLayers(layersDir, upper, f.a, f.b)
		layers.refuse[f.b.ManifestDesc.Digest] = []int{2}
		return layers
	}
	d, c := start(t, b, f, mode, newLayers)
	sn := d.sn
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cl, err := c.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	gets := func(im *fstest.Image) []int {
		var n []int
		for _, l := range im.LayerDescs {
			n = append(n, f.blobGETs(l.Digest))
		}
		return n
	}
	before := gets(f.a)

	pod, err := cl.RunPod(ctx, "lazy")
	if err != nil {
		t.Fatal(err)
	}
	res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "print", Image: f.refA, Command: []string{critest.BusyboxPath, "cat", "/etc/passwd", "/top.txt"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "root:x:0:0:root:/root:/bin/bash\ntop layer\n"; res.ExitCode != 0 || string(res.Output.Stdout) != want {
		t.Errorf("run: exit %d, stdout %q; want 0, %q", res.ExitCode, res.Output.Stdout, want)
	}
	compareRoots(t, "image A's container root (every layer remote)", runRoot(t, ctx, cl, pod, "sleep-a", f.refA), wantA)
	if got := gets(f.a); !slices.Equal(got, before) {
		t.Errorf("blob GETs of image A's layers: %v before the pull, %v after; want none", before, got)
	}
	if got := sn.Stats(); got != (Stats{Remote: int64(len(f.a.LayerDescs)), Fallback: 1}) {
		t.Errorf("Stats() after A = %+v, want %d remote and the pause image's layer a fallback", got, len(f.a.LayerDescs))
	}

	// Image B: layer 2 refused, so containerd applies it over remote
	// layers 0 and 1, and layers 3 and 4 are remote over it.
	before = gets(f.b)
	if _, err := cl.PullImage(ctx, f.refB, nil); err != nil {
		t.Fatal(err)
	}
	compareRoots(t, "image B's container root (layer 2 applied by containerd)", runRoot(t, ctx, cl, pod, "sleep-b", f.refB), wantB)
	// Once containerd must apply a layer, it downloads every layer above
	// it too (1.6 and 2.4 alike), though it applies none of the remote
	// ones: B's layers 3 and 4 are fetched, not unpacked.
	after := gets(f.b)
	for i := range f.b.LayerDescs {
		if downloaded := after[i] > before[i]; downloaded != (i >= 2) {
			t.Errorf("image B layer %d: downloaded = %v (%d GETs), want %v", i, downloaded, after[i]-before[i], i >= 2)
		}
	}

	// Restart the snapshotter between two starts of image A: the second
	// finds its remote layers through the new daemon's Layers.Dir.
	first := layers
	root, sock := d.root, d.sock
	d.stop(t)
	d2 := startDaemon(t, root, sock, newLayers(root))
	restarted := layers
	id, err := cl.CreateContainer(ctx, pod, critest.ContainerSpec{Name: "after-restart", Image: f.refA, Command: []string{critest.BusyboxPath, "cat", "/top.txt"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, err := cl.WaitContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := critest.ContainerLog(st)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 || string(out.Stdout) != "top layer\n" {
		t.Errorf("run after restart: exit %d, stdout %q; want 0, %q", st.ExitCode, out.Stdout, "top layer\n")
	}
	if len(restarted.dirCalls) == 0 {
		t.Errorf("after the restart, no Layers.Dir call: the container's lower layers were not asked for")
	}
	for _, l := range restarted.dirCalls {
		if l[LabelRemote] != strings.TrimSuffix(f.refA, ":1")+":1@"+f.a.ManifestDesc.Digest.String() {
			t.Errorf("Layers.Dir after restart got %s=%q, want image A pinned to its manifest", LabelRemote, l[LabelRemote])
		}
	}

	// Removing the pod and both images removes every snapshot of theirs;
	// the pause image's stays.
	if err := cl.RemovePod(ctx, pod.ID); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{f.refA, f.refB} {
		if err := cl.RemoveImage(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	left := containerdSnapshots(t, ctx, c, "ocifs")
	pauseChain := 1 // the pause image has one layer
	if len(left) != pauseChain {
		t.Errorf("containerd lists %v after RemoveImage, want only the pause image's layer", left)
	}
	var ours []string
	if err := d2.sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		ours = append(ours, i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(ours) != pauseChain {
		t.Errorf("the snapshotter holds %v after RemoveImage, want only the pause image's layer", ours)
	}
	for _, id := range first.served {
		if !slices.Contains(restarted.released, id) {
			t.Errorf("remote snapshot %s removed without Layers.Release (released: %v)", id, restarted.released)
		}
		if _, err := os.Stat(filepath.Join(layersDir, id)); !os.IsNotExist(err) {
			t.Errorf("layer directory of snapshot %s after removal: %v, want gone", id, err)
		}
	}
	if n := len(first.served); n != len(f.a.LayerDescs)+len(f.b.LayerDescs)-1 {
		t.Errorf("Layers served %d layers, want %d (A's and B's but B's layer 2)", n, len(f.a.LayerDescs)+len(f.b.LayerDescs)-1)
	}
}

// TestCRILongChain runs an image of 121 layers, every other one remote,
// so that the container's overlay has 121 lower directories: over a page
// of mount options, which the shim of containerd 1.6 and 2.4 mounts only
// because every lower directory is snapshots/<id>/fs under our root (see
// Snapshotter.Mounts), although the remote layers' trees are elsewhere.
func TestCRILongChain(t *testing.T) {
	for _, b := range containerdBinaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			f := newCRIFixture(t)
			bb, err := critest.BusyboxLayer(fstest.Gzip)
			if err != nil {
				t.Fatal(err)
			}
			const n = 121
			layers := []fstest.Layer{bb}
			for i := 1; i < n; i++ {
				layers = append(layers, fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{{
					Header: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("l%d.txt", i), Mode: 0o644, ModTime: fstest.CornerTime},
					Data:   []byte(fmt.Sprintf("layer %d\n", i)),
				}}})
			}
			im, err := fstest.Build(layers, fstest.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := im.Push(t.Context(), f.host, "snap/long", "1"); err != nil {
				t.Fatal(err)
			}
			var al *applyLayers
			d, c := start(t, b, f, critest.PullDefault, func(root string) Layers {
				// In another tree than the snapshotter's root, as
				// a FUSE mount may be.
				ld, err := os.MkdirTemp("/run", "ocifs-layers-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(ld) })
				al = newApplyLayers(ld, func(id string) string { return filepath.Join(root, "snapshots", id, "fs") }, im)
				for i := 1; i < n; i += 2 {
					al.refuse[im.ManifestDesc.Digest] = append(al.refuse[im.ManifestDesc.Digest], i)
				}
				return al
			})
			ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
			defer cancel()
			cl, err := c.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			pod, err := cl.RunPod(ctx, "long")
			if err != nil {
				t.Fatal(err)
			}
			res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "cat", Image: f.front + "/snap/long:1",
				Command: []string{critest.BusyboxPath, "cat", "/l1.txt", "/l2.txt", fmt.Sprintf("/l%d.txt", n-1)}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("layer 1\nlayer 2\nlayer %d\n", n-1); res.ExitCode != 0 || string(res.Output.Stdout) != want {
				t.Errorf("run: exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Output.Stdout, res.Output.Stderr, want)
			}
			if got, want := d.sn.Stats().Remote, int64(n/2+1); got != want {
				t.Errorf("%d remote layers, want %d", got, want)
			}
			m, err := d.sn.Mounts(ctx, lastActive(t, d.sn))
			if err != nil {
				t.Fatal(err)
			}
			size := 0
			for _, o := range m[0].Options {
				size += len(o) + 1
			}
			t.Logf("the container's overlay: %d lower directories, %d bytes of options", len(lowerdirs(t, m)), size)
			if size <= os.Getpagesize() {
				t.Errorf("options of %d bytes: the test needs more than a page", size)
			}
		})
	}
}

// lastActive returns the key of the active snapshot created last.
func lastActive(t *testing.T, sn *Snapshotter) string {
	t.Helper()
	var key string
	var created time.Time
	if err := sn.Walk(t.Context(), func(_ context.Context, i snapshots.Info) error {
		if i.Created.After(created) {
			key, created = i.Name, i.Created
		}
		return nil
	}, "kind==active"); err != nil {
		t.Fatal(err)
	}
	return key
}
