package snapshotter

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// bigSize is the size of the random file of the remote test image's big
// layer: 32 spans of 1 MiB (index.DefaultSpanSize), so that reading the
// small file beside it fetches a fraction of the layer.
const bigSize = 32 << 20

// remoteImage builds the image TestCRIRemote runs: fs/fstest's corners
// with busybox (what containerd can apply, as criImages), then a layer
// holding small.txt before big.bin, 32 MiB of random bytes.
func remoteTestImage(t *testing.T) *fstest.Image {
	t.Helper()
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, bigSize)
	rand.Read(big)
	hdr := func(name string, size int) tar.Header {
		return tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(size), ModTime: fstest.CornerTime, Format: tar.FormatPAX}
	}
	layers := append(fstest.Corners(), bb, fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: hdr("small.txt", 6), Data: []byte("small\n")},
		{Header: hdr("big.bin", bigSize), Data: big},
	}})
	for i := range layers {
		layers[i].Files = applicable(layers[i].Files)
	}
	im, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// streamTestImage is busybox and a layer of 8 MiB of random bytes beside
// small.txt, pushed without any ocifs index: stream mode.
func streamTestImage(t *testing.T) *fstest.Image {
	t.Helper()
	bb, err := critest.BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 8<<20)
	rand.Read(big)
	im, err := fstest.Build([]fstest.Layer{bb, {Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "small.txt", Mode: 0o644, Size: 7, ModTime: fstest.CornerTime}, Data: []byte("stream\n")},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "big.bin", Mode: 0o644, Size: int64(len(big)), ModTime: fstest.CornerTime}, Data: big},
	}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// pushIndex indexes every layer of ref on a throwaway cache and pushes
// the indexes to the registry, as `ocifs index` publishes them.
func pushIndex(t *testing.T, ref string) {
	t.Helper()
	c, err := fetch.New(fetch.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	im, err := fs.Resolve(t.Context(), c, ref, fs.Options{NoRemoteIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := im.PushIndex(t.Context()); err != nil {
		t.Fatalf("PushIndex: %v", err)
	}
}

// ocifsDaemon is `ocifs snapshotter` in-process: the LayerFS at
// root/layers, the Remote layers with a fetch client on cache, and the
// snapshotter served on sock.
type ocifsDaemon struct {
	*daemon
	lfs    *fs.LayerFS
	remote *Remote
	client *fetch.Client
}

// startOcifs starts an ocifsDaemon; t.Cleanup stops it (register it
// before containerd's).
func startOcifs(t *testing.T, root, sock, cache string) *ocifsDaemon {
	t.Helper()
	log := slog.New(slog.NewTextHandler(tlogWriter{t}, nil))
	c, err := fetch.New(fetch.Options{CacheDir: cache, MaxAttempts: 2, AttemptTimeout: 5 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	lfs, err := fs.MountLayerFS(filepath.Join(root, "layers"), fs.LayerFSOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	od := &ocifsDaemon{lfs: lfs, client: c}
	t.Cleanup(func() { od.stop(t) })
	// Pins as the daemon takes them (cmd/ocifs loadedImages): while an
	// image is served, from its load to its OnClose.
	var pinMu sync.Mutex
	pins := map[*fs.Image]*fetch.Pin{}
	onLoad := func(im *fs.Image, _ time.Duration) {
		p, err := c.Cache().Pin(fmt.Sprintf("test-%p", im), im.CacheEntries())
		if err != nil {
			t.Errorf("pin %s: %v", im.Ref(), err)
			return
		}
		pinMu.Lock()
		pins[im] = p
		pinMu.Unlock()
	}
	onClose := func(im *fs.Image) {
		pinMu.Lock()
		defer pinMu.Unlock()
		if p := pins[im]; p != nil {
			p.Release()
			delete(pins, im)
		}
	}
	if od.remote, err = NewRemote(t.Context(), RemoteOptions{Client: c, FS: lfs, Logger: log, OnLoad: onLoad, OnClose: onClose}); err != nil {
		t.Fatal(err)
	}
	od.daemon = startDaemon(t, root, sock, od.remote)
	return od
}

// stop stops serving, releases the layers and unmounts the LayerFS (a
// detach while containers still use it); a second stop does nothing.
func (od *ocifsDaemon) stop(t *testing.T) {
	t.Helper()
	if od.lfs == nil {
		return
	}
	if od.daemon != nil {
		od.daemon.stop(t)
	}
	if od.remote != nil {
		if err := od.remote.Close(); err != nil {
			t.Errorf("close remote layers: %v", err)
		}
	}
	if err := od.lfs.Unmount(); err != nil {
		t.Errorf("unmount layers: %v", err)
	}
	od.lfs = nil
}

// rangeBytes sums the bytes the GETs of blob d through the front asked
// for (a GET without Range asks for all size bytes).
func rangeBytes(f *criFixture, d digest.Digest, size int64) int64 {
	var n int64
	for _, r := range f.faults.Requests() {
		if r.Method != "GET" || !strings.HasSuffix(r.Path, "/blobs/"+d.String()) || r.Fault != "" {
			continue
		}
		var first, last int64
		if _, err := fmt.Sscanf(r.Range, "bytes=%d-%d", &first, &last); err == nil {
			n += min(last, size-1) - first + 1
		} else {
			n += size
		}
	}
	return n
}

// runOut runs a container of image with cmd to its exit and returns its
// exit code and output.
func runOut(t *testing.T, ctx context.Context, cl *critest.Client, pod *critest.Pod, name, image string, cmd ...string) (int32, critest.Output) {
	t.Helper()
	var id string
	var err error
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		id, err = cl.CreateContainer(ctx, pod, critest.ContainerSpec{Name: name, Image: image, Command: cmd})
		// After a restart of the snapshotter, containerd's gRPC client
		// to it is in reconnect backoff for a while and fails calls at
		// once (code Unavailable); kubelet retries, so does this.
		if err == nil || status.Code(err) != codes.Unavailable || time.Since(start) > 30*time.Second {
			break
		}
		t.Logf("create container %s: %v; trying again", name, err)
	}
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
	return st.ExitCode, out
}

// TestCRIRemote runs an image from the loopback registry through CRI on
// `ocifs snapshotter`'s parts in-process (LayerFS, Remote, the
// snapshotter on its socket), with the image's ocifs index published in
// the registry, and checks, in order:
//
//   - the first container prints the small file of the big layer and a
//     file of the corners layers; every layer (and the pause image's) was
//     served remotely, none fell back;
//   - lazy: of the 32 MiB layer, the front saw GETs for well under a
//     quarter of its bytes (one span, the index head and a window);
//   - restart: with the snapshotter (and its LayerFS) stopped and started
//     again on the same root, a second container of the image starts and
//     prints the same;
//   - fault: with every registry request failing, a container reading
//     big.bin (never fetched) gets EIO, while another one reading the
//     small file, and the snapshotter, carry on;
//   - an image with no ocifs index anywhere runs too, every layer remote
//     (stream mode: fetched once, in order, not unpacked);
//   - the container root (read whole, registry back) equals the one
//     containerd's own overlayfs snapshotter gives for the same image,
//     with zero differences;
//   - RemovePod and RemoveImage release every layer of the image.
//
// It logs the first container start (PullImage to output) on ocifs and on
// containerd's overlayfs.
func TestCRIRemote(t *testing.T) {
	for _, b := range containerdBinaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			fstest.RequireFUSE(t)
			f := newCRIFixture(t)
			im := remoteTestImage(t)
			if err := im.Push(t.Context(), f.host, "snap/r", "1"); err != nil {
				t.Fatal(err)
			}
			pushIndex(t, f.host+"/snap/r:1")
			ref := f.front + "/snap/r:1"
			bigDesc := im.LayerDescs[len(im.LayerDescs)-1]
			for _, mode := range pullModes(t, b) {
				t.Run(mode.String()+"-pull", func(t *testing.T) {
					printCmd := []string{critest.BusyboxPath, "cat", "/small.txt", "/etc/passwd"}
					const printed = "small\nroot:x:0:0:root:/root:/bin/bash\n"

					// containerd's own overlayfs: the reference root and start time.
					// An image with no ocifs index anywhere, for stream mode.
					st := streamTestImage(t)
					if err := st.Push(t.Context(), f.host, "snap/s", "1"); err != nil {
						t.Fatal(err)
					}
					sref := f.front + "/snap/s:1"
					streamCmd := []string{critest.BusyboxPath, "cat", "/small.txt"}
					var overlayStream time.Duration
					var want map[string]fstest.EntryInfo
					var overlayStart time.Duration
					{
						c := startCRI(t, b, f, mode, nil)
						ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
						cl, err := c.Dial(ctx)
						if err != nil {
							t.Fatal(err)
						}
						pod, err := cl.RunPod(ctx, "reference")
						if err != nil {
							t.Fatal(err)
						}
						res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "print", Image: ref, Command: printCmd}, nil)
						if err != nil {
							t.Fatal(err)
						}
						if res.ExitCode != 0 || string(res.Output.Stdout) != printed {
							t.Fatalf("overlayfs run: exit %d, stdout %q; want 0, %q", res.ExitCode, res.Output.Stdout, printed)
						}
						overlayStart = res.Timings.Total()
						sres, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "stream", Image: sref, Command: streamCmd}, nil)
						if err != nil {
							t.Fatal(err)
						}
						overlayStream = sres.Timings.Total()
						want = runRoot(t, ctx, cl, pod, "sleep", ref)
						cl.Close()
						cancel()
						if err := c.Stop(); err != nil {
							t.Fatal(err)
						}
					}

					dir := tmpDir(t, "snapr-")
					root, sock, cache := filepath.Join(dir, "root"), filepath.Join(dir, "snapshotter.sock"), filepath.Join(dir, "cache")
					od := startOcifs(t, root, sock, cache)
					c := startCRI(t, b, f, mode, &critest.ProxySnapshotter{Name: "ocifs", Address: sock})
					ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
					defer cancel()
					cl, err := c.Dial(ctx)
					if err != nil {
						t.Fatal(err)
					}
					defer cl.Close()
					bigBefore := rangeBytes(f, bigDesc.Digest, bigDesc.Size)
					pod, err := cl.RunPod(ctx, "remote")
					if err != nil {
						t.Fatal(err)
					}
					res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "print", Image: ref, Command: printCmd}, nil)
					if err != nil {
						t.Fatal(err)
					}
					if res.ExitCode != 0 || string(res.Output.Stdout) != printed {
						t.Errorf("run: exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Output.Stdout, res.Output.Stderr, printed)
					}
					t.Logf("first container start (PullImage to output): ocifs %v (pull %v), containerd's overlayfs %v",
						res.Timings.Total().Round(time.Millisecond), res.Timings.Pull().Round(time.Millisecond), overlayStart.Round(time.Millisecond))
					if got, want := od.sn.Stats(), (Stats{Remote: int64(len(im.LayerDescs)) + 1}); got != want {
						t.Errorf("Stats() = %+v, want %+v (every layer and the pause image's remote)", got, want)
					}
					fetched := rangeBytes(f, bigDesc.Digest, bigDesc.Size) - bigBefore
					received := od.client.Stats().Blobs[bigDesc.Digest]
					t.Logf("big layer %s: %d bytes, %d asked for through the front, %d received by the snapshotter", bigDesc.Digest, bigDesc.Size, fetched, received)
					if fetched == 0 || fetched > bigDesc.Size/4 || received > bigDesc.Size/4 {
						t.Errorf("big layer: %d bytes asked for, %d received, of %d: want some, and under a quarter", fetched, received, bigDesc.Size)
					}

					// Restart between two container starts of the image.
					od.stop(t)
					od = startOcifs(t, root, sock, cache)
					if code, out := runOut(t, ctx, cl, pod, "after-restart", ref, printCmd...); code != 0 || string(out.Stdout) != printed {
						t.Errorf("run after restart: exit %d, stdout %q, stderr %q; want 0, %q", code, out.Stdout, out.Stderr, printed)
					}
					// On demand: the image's layers, not the running pod's pause
					// layer, which nothing asked for again.
					if n := len(od.lfs.Names()); n != len(im.LayerDescs) {
						t.Errorf("after the restart the LayerFS serves %v, want the image's %d layers", od.lfs.Names(), len(im.LayerDescs))
					}

					// Fault: the registry goes away.
					f.faults.Add(&fstest.Rule{Fault: fstest.Fault{Kind: fstest.Status, Status: 503}})
					code, out := runOut(t, ctx, cl, pod, "read-big", ref, critest.BusyboxPath, "sh", "-c", "cat /big.bin >/dev/null")
					if code == 0 || !strings.Contains(string(out.Stderr), "Input/output error") {
						t.Errorf("reading big.bin with the registry gone: exit %d, stderr %q; want a failure with EIO", code, out.Stderr)
					}
					if code, out := runOut(t, ctx, cl, pod, "unaffected", ref, printCmd...); code != 0 || string(out.Stdout) != printed {
						t.Errorf("another container with the registry gone: exit %d, stdout %q, stderr %q; want 0, %q", code, out.Stdout, out.Stderr, printed)
					}
					select {
					case <-od.srv.Done():
						t.Errorf("the snapshotter stopped serving after the fault")
					default:
					}
					f.faults.Clear()

					// An image with no index anywhere: stream mode, each layer
					// fetched once, in order, without unpacking.
					remoteBefore := od.sn.Stats().Remote
					sBig := st.LayerDescs[1]
					sBefore := rangeBytes(f, sBig.Digest, sBig.Size)
					sres, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "stream", Image: sref, Command: streamCmd}, nil)
					if err != nil {
						t.Fatal(err)
					}
					if sres.ExitCode != 0 || string(sres.Output.Stdout) != "stream\n" {
						t.Errorf("run of the unindexed image: exit %d, stdout %q, stderr %q; want 0, %q", sres.ExitCode, sres.Output.Stdout, sres.Output.Stderr, "stream\n")
					}
					sFetched := rangeBytes(f, sBig.Digest, sBig.Size) - sBefore
					t.Logf("unindexed image: first container start on ocifs %v (pull %v), on containerd's overlayfs %v; of its %d-byte layer ocifs asked for %d bytes",
						sres.Timings.Total().Round(time.Millisecond), sres.Timings.Pull().Round(time.Millisecond), overlayStream.Round(time.Millisecond), sBig.Size, sFetched)
					if sFetched < sBig.Size || sFetched > sBig.Size+64<<10 {
						t.Errorf("unindexed layer of %d bytes: %d asked for, want it fetched once", sBig.Size, sFetched)
					}
					if got := od.sn.Stats(); got.Remote-remoteBefore != int64(len(st.LayerDescs)) || got.Fallback != 0 {
						t.Errorf("Stats() after the unindexed image = %+v (%d remote before), want its %d layers remote, no fallback", got, remoteBefore, len(st.LayerDescs))
					}

					// The root, read whole, equals containerd's overlayfs's.
					compareRoots(t, "container root on ocifs", runRoot(t, ctx, cl, pod, "sleep", ref), want)

					// While the images are served, what they cannot do without
					// is pinned: a trim leaves it.
					dc := od.client.Cache()
					if res, err := dc.Trim(fetch.TrimOptions{MaxBytes: 1 << 62}); err != nil {
						t.Fatal(err)
					} else if res.Pinned == 0 || res.Removed != 0 {
						t.Errorf("trim while the images are served: %+v, want entries pinned and nothing removed", res)
					}
					if err := cl.RemovePod(ctx, pod.ID); err != nil {
						t.Fatal(err)
					}
					for _, r := range []string{ref, sref} {
						if err := cl.RemoveImage(ctx, r); err != nil {
							t.Fatal(err)
						}
					}
					if names := od.lfs.Names(); len(names) != 0 {
						t.Errorf("after RemoveImage the LayerFS serves %v, want nothing (the pause layer was not asked for since the restart)", names)
					}
					// crictl rmi removed the snapshots, and with them the pins:
					// `ocifs cache prune --max-size` (a trim) frees every byte.
					tr, err := dc.Trim(fetch.TrimOptions{MaxBytes: 1})
					if err != nil {
						t.Fatal(err)
					}
					t.Logf("trim after RemoveImage: %+v", tr)
					if tr.Pinned != 0 || tr.Freed == 0 || tr.Left != 0 {
						t.Errorf("trim after RemoveImage: %+v, want nothing pinned, bytes freed, nothing left", tr)
					}
				})
			}
		})
	}
}
