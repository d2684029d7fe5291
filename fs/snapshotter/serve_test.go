package snapshotter

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// sockDir is a directory short enough for unix socket paths.
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "snap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// dialProxy returns containerd's own proxy client for the socket.
func dialProxy(t *testing.T, address string) (snapshots.Snapshotter, snapshotsapi.SnapshotsClient) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := snapshotsapi.NewSnapshotsClient(conn)
	return proxy.NewSnapshotter(c, "ocifs"), c
}

func TestServe(t *testing.T) {
	f := newFixture(t)
	address := filepath.Join(sockDir(t), "run", "snapshotter.sock")
	srv, err := Serve(address, f.sn)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			srv.Stop(context.Background())
		}
	})
	fi, err := os.Stat(address)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s mode %v, want a socket with 0600", address, fi.Mode())
	}

	sn, raw := dialProxy(t, address)
	ctx := t.Context()
	// A remote layer: AlreadyExists through gRPC, as containerd sees it.
	_, err = raw.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "extract " + chainID(0), Labels: imageLabels(0)})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("Prepare over gRPC with layer labels: %v, want code AlreadyExists", err)
	}
	info, err := sn.Stat(ctx, chainID(0))
	if err != nil || info.Kind != snapshots.KindCommitted || info.Labels[LabelLayer] != layerDigest(0) {
		t.Errorf("Stat(%s) through the proxy = %+v, %v; want the committed remote layer", chainID(0), info, err)
	}
	m, err := sn.Prepare(ctx, "container", chainID(0))
	if err != nil || len(m) != 1 || m[0].Type != "overlay" {
		t.Errorf("Prepare through the proxy = %+v, %v; want an overlay", m, err)
	}
	var names []string
	if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		names = append(names, i.Name)
		return nil
	}, "kind==active"); err != nil || len(names) != 1 || names[0] != "container" {
		t.Errorf("Walk(kind==active) = %v, %v; want [container]", names, err)
	}
	if err := sn.Remove(ctx, chainID(0)); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Remove of a parent through the proxy: %v, want FailedPrecondition", err)
	}
	if _, err := raw.Cleanup(ctx, &snapshotsapi.CleanupRequest{}); err != nil {
		t.Errorf("Cleanup through gRPC: %v", err)
	}

	// A second server on the same address refuses to start.
	if _, err := Serve(address, f.sn); err == nil || !strings.Contains(err.Error(), "another") {
		t.Errorf("second Serve on %s: err = %v, want a refusal", address, err)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := srv.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if _, err := os.Lstat(address); !os.IsNotExist(err) {
		t.Errorf("socket after Stop: %v, want removed", err)
	}
	// Stopped: another may serve there.
	srv2, err := Serve(address, f.sn)
	if err != nil {
		t.Fatalf("Serve after Stop: %v", err)
	}
	if err := srv2.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
}

func TestServeSocketLeftovers(t *testing.T) {
	f := newFixture(t)
	dir := sockDir(t)
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket nobody answers on, as a killed daemon leaves it

	busy := filepath.Join(dir, "busy.sock")
	lb, err := net.Listen("unix", busy) // another daemon, without our lock
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}

	srv, err := Serve(stale, f.sn)
	if err != nil {
		t.Fatalf("Serve over a stale socket: %v", err)
	}
	if err := srv.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ address, want string }{
		{busy, "another daemon answers"},
		{file, "is no socket"},
	} {
		if srv, err := Serve(tc.address, f.sn); err == nil || !strings.Contains(err.Error(), tc.want) {
			if err == nil {
				srv.Stop(t.Context())
			}
			t.Errorf("Serve(%s): err = %v, want %q", tc.address, err, tc.want)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "not a socket" {
		t.Errorf("Serve touched %s: %q, %v", file, b, err)
	}
}
