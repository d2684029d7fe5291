package criauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/snapshotter"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// errLeftToContainerd is what credLayers' Prepare answers after its
// fetch: containerd then applies the layer itself.
var errLeftToContainerd = errors.New("criauth test: layer left to containerd")

// credLayers is a snapshotter.Layers that, for each layer containerd
// prepares during a pull, reads the image's manifest and the layer's blob
// from the registry with the proxy's keychain, as ocifs's lazy reader
// will, and then declines the layer.
type credLayers struct {
	client *fetch.Client

	// mu guards reads.
	mu    sync.Mutex
	reads []layerRead
}

type layerRead struct {
	image    string
	layer    digest.Digest
	manifest digest.Digest
	n        int64
	err      error
}

func (l *credLayers) Prepare(ctx context.Context, id string, labels map[string]string) (snapshotter.Layer, error) {
	r := layerRead{image: labels[snapshotter.LabelImageRef], layer: digest.Digest(labels[snapshotter.LabelLayerDigest])}
	r.err = func() error {
		im, err := l.client.Resolve(ctx, r.image)
		if err != nil {
			return err
		}
		r.manifest = im.ManifestDigest
		for _, desc := range im.Layers() {
			if desc.Digest != r.layer {
				continue
			}
			rc, err := im.OpenBlob(ctx, desc)
			if err != nil {
				return err
			}
			defer rc.Close()
			r.n, err = io.Copy(io.Discard, rc)
			return err
		}
		return fmt.Errorf("layer %s not in the manifest", r.layer)
	}()
	l.mu.Lock()
	l.reads = append(l.reads, r)
	l.mu.Unlock()
	return snapshotter.Layer{}, errLeftToContainerd
}

func (l *credLayers) Dir(context.Context, string, map[string]string) (string, error) {
	return "", errLeftToContainerd
}

func (l *credLayers) Release(context.Context, string) error { return nil }

func (l *credLayers) Reads() []layerRead {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]layerRead(nil), l.reads...)
}

// TestCRISnapshotterReadsWithPullCredentials: containerd, told to use a
// proxy snapshotter, asks it for the private image's layer in the middle
// of a PullImage sent through the CRI proxy; the snapshotter's reads of
// the registry with the proxy's keychain (and no auth file) succeed with
// that pull's credentials.
func TestCRISnapshotterReadsWithPullCredentials(t *testing.T) {
	for _, b := range []struct{ name, path string }{
		{"containerd-1.6", critest.DebianContainerd},
		{"containerd-2", containerd2Binary()},
	} {
		t.Run(b.name, func(t *testing.T) { testSnapshotterReads(t, b.path) })
	}
}

func testSnapshotterReads(t *testing.T, binary string) {
	requireContainerd(t, binary)
	dir := socketDir(t)
	reg := startPrivateRegistry(t, filepath.Join(dir, "registry"))
	ctx := t.Context()

	// The CRI proxy first: it forwards to containerd's socket, which
	// need not answer yet. Its Stop runs last.
	cdDir := filepath.Join(dir, "cd")
	if err := os.Mkdir(cdDir, 0o755); err != nil {
		t.Fatal(err)
	}
	log, logs := newLog()
	srv, err := Serve(filepath.Join(dir, "cri-image.sock"), filepath.Join(cdDir, "containerd.sock"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stop proxy: %v", err)
		}
	})

	// The snapshotter, reading with the proxy's keychain.
	layers := &credLayers{client: newFetch(t, srv.Keychain(anonymous{}))}
	sn, err := snapshotter.Open(ctx, snapshotter.Options{Root: filepath.Join(dir, "sn"), Layers: layers, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	snSock := filepath.Join(dir, "snapshotter.sock")
	snSrv, err := snapshotter.Serve(snSock, sn)
	if err != nil {
		sn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := snSrv.Stop(stopCtx); err != nil {
			t.Errorf("stop snapshotter: %v", err)
		}
		if err := sn.Close(); err != nil {
			t.Errorf("close snapshotter: %v", err)
		}
	})

	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cd, err := critest.Start(startCtx, critest.Options{Binary: binary, Dir: cdDir, Registries: []string{reg.host},
		Proxy: &critest.ProxySnapshotter{Name: "ocifs", Address: snSock}})
	if err != nil {
		t.Fatal(err)
	}
	if cd.Address != filepath.Join(cdDir, "containerd.sock") {
		t.Fatalf("containerd listens on %s, the proxy forwards to %s", cd.Address, filepath.Join(cdDir, "containerd.sock"))
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

	cl := dial(t, srv.Address())
	spec := &runtimeapi.ImageSpec{Image: reg.ref}
	if _, err := cl.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec}); err == nil {
		t.Fatal("pull without credentials succeeded")
	}
	if reads := layers.Reads(); len(reads) != 0 {
		t.Fatalf("the snapshotter was asked for layers of a pull containerd could not resolve: %+v", reads)
	}
	resp, err := cl.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec, Auth: basic(privateUser, privatePassword)})
	if err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	reads := layers.Reads()
	if len(reads) != 1 {
		t.Fatalf("the snapshotter was asked for %d layers (%+v), the image has 1", len(reads), reads)
	}
	r := reads[0]
	if r.err != nil {
		t.Fatalf("the snapshotter's read of %s during the pull: %v", r.image, r.err)
	}
	if r.manifest != reg.image.ManifestDesc.Digest || r.layer != reg.image.LayerDescs[0].Digest || r.n != reg.image.LayerDescs[0].Size {
		t.Errorf("the snapshotter read manifest %s, layer %s (%d bytes); want %s, %s (%d bytes)",
			r.manifest, r.layer, r.n, reg.image.ManifestDesc.Digest, reg.image.LayerDescs[0].Digest, reg.image.LayerDescs[0].Size)
	}
	t.Logf("pulled %s (%s); during the pull the snapshotter read %s's layer %s, %d bytes, with the pull's credentials",
		reg.ref, resp.ImageRef, r.image, r.layer, r.n)
	if strings.Contains(logs.String(), privatePassword) {
		t.Error("the log holds the password")
	}
	if _, err := newFetch(t, anonymous{}).Resolve(ctx, reg.ref); !errors.Is(err, fetch.ErrUnauthorized) {
		t.Errorf("control: a read without the proxy's keychain: %v, want fetch.ErrUnauthorized", err)
	}
}
