package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter"
)

// TestSnapshotterHelp: the help gives the containerd configuration of 1.6
// and 2.x to paste, and the check.
func TestSnapshotterHelp(t *testing.T) {
	r := mustRun(t, "snapshotter", "--help")
	for _, want := range []string{
		"usage: ocifs snapshotter [flags]", "--address", "--root", "--hosts-dir", "--cri-image-service", "--image-service-endpoint",
		`[proxy_plugins.ocifs]`, `type = "snapshot"`, `address = "/run/ocifs/snapshotter.sock"`,
		`[plugins."io.containerd.grpc.v1.cri".containerd]`, `snapshotter = "ocifs"`, "disable_snapshot_annotations = false",
		`[plugins."io.containerd.cri.v1.images"]`, `enable_remote_snapshot_annotations = "true"`,
		`[[plugins."io.containerd.transfer.v1.local".unpack_config]]`, "crictl pull", "layer served lazily", "--takeover", "ocifs upgrade",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("snapshotter --help lacks %q", want)
		}
	}
	if r := mustRun(t, "--help"); !strings.Contains(r.stdout, "snapshotter") {
		t.Errorf("ocifs --help does not list the snapshotter command")
	}
}

// TestSnapshotterCommand runs `ocifs snapshotter` in-process: it serves
// containerd's snapshots API on --address, with its layer mount at
// --root/layers, and on the end of its context (SIGTERM in main) stops
// serving, removes the sockets (its own and --cri-image-service's),
// unmounts the layers and exits 0. A second
// daemon on the same root is refused while the first runs.
func TestSnapshotterCommand(t *testing.T) {
	requireRoot(t)
	fstest.RequireFUSE(t)
	cache := isolate(t)
	dir, err := os.MkdirTemp("", "ocifs-snap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root, sock, criSock := filepath.Join(dir, "root"), filepath.Join(dir, "snap.sock"), filepath.Join(dir, "cri-image.sock")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	args := []string{"--cache-dir", cache, "snapshotter", "--address", sock, "--root", root, "--hosts-dir", "",
		"--cri-image-service", criSock, "--containerd-address", filepath.Join(dir, "no-containerd.sock"),
		"--metrics-address", metricsAddr, "--cache-max", "1G"}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, &bytes.Buffer{}, &stderr) }()

	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("snapshotter exited early: %v; stderr:\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s after 20s; stderr:\n%s", sock, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := snapshotsapi.NewSnapshotsClient(conn).List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: "ocifs"})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err == nil && len(resp.Info) > 0 {
		t.Errorf("List on a new root = %v, want nothing", resp.Info)
	}
	if !mounted(t, filepath.Join(root, "layers")) {
		t.Errorf("%s/layers is not mounted while the snapshotter runs", root)
	}
	// A layer ocifs cannot serve (its registry answers nothing) falls
	// back to containerd's download, and the metrics count it.
	before := scrape(t, metricsAddr)
	if v, ok := metricValue(before, "ocifs_fallbacks_total", "reason", "runtime_download"); !ok || v != 0 {
		t.Errorf("ocifs_fallbacks_total{reason=runtime_download} = %v (present %v) before any Prepare, want 0", v, ok)
	}
	layer := "sha256:" + strings.Repeat("1", 64)
	_, err = snapshotsapi.NewSnapshotsClient(conn).Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "ocifs",
		Key: "extract-1 " + layer, Labels: map[string]string{
			"containerd.io/snapshot.ref":    layer,
			snapshotter.LabelImageRef:       "127.0.0.1:1/nothing/here:v1",
			snapshotter.LabelManifestDigest: "sha256:" + strings.Repeat("2", 64),
			snapshotter.LabelLayerDigest:    layer,
			snapshotter.LabelImageLayers:    layer,
		}})
	if err != nil {
		t.Errorf("Prepare of a layer ocifs cannot serve: %v, want ordinary mounts for containerd to apply into", err)
	}
	if v, _ := metricValue(scrape(t, metricsAddr), "ocifs_fallbacks_total", "reason", "runtime_download"); v != 1 {
		t.Errorf("ocifs_fallbacks_total{reason=runtime_download} = %v after one layer fell back, want 1", v)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("--metrics-address: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ocifs_cache_entries") {
		t.Errorf("GET /metrics of the snapshotter: %s, %d bytes, want ocifs_cache_entries in it:\n%.500s", resp.Status, len(body), body)
	}
	if fi, err := os.Stat(criSock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("--cri-image-service socket: %v, want a socket", err)
	}
	r := runCLI(t, "--cache-dir", cache, "snapshotter", "--address", filepath.Join(dir, "other.sock"), "--root", root, "--hosts-dir", "")
	if r.code == 0 || !strings.Contains(r.stderr, "another snapshotter") {
		t.Errorf("a second snapshotter on the same root: exit %d, stderr %q; want a failure naming the other", r.code, r.stderr)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("snapshotter after its context ended: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("snapshotter still running 30s after its context ended")
	}
	if mounted(t, filepath.Join(root, "layers")) {
		t.Errorf("%s/layers still mounted after the snapshotter stopped", root)
	}
	for _, p := range []string{sock, criSock} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("socket %s after stop: %v, want gone", p, err)
		}
	}
	for _, want := range []string{"snapshotter serving", "snapshotter stopped", "layers unmounted"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
}

// mounted reports whether dir is a mountpoint in this mount namespace.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}
