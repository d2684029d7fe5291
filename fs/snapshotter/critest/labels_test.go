package critest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ocifs/ocifs/fs/fstest"
)

// fakeSnapshotter is a proxy snapshotter (containerd.services.snapshots.v1
// over gRPC) that works like containerd's overlayfs one, a directory per
// snapshot with overlay mounts over its parents, and records every call
// with its labels: what a remote snapshotter is told, in which order.
// It claims no remote snapshots, so containerd unpacks every layer into
// it.
type fakeSnapshotter struct {
	snapshotsapi.UnimplementedSnapshotsServer
	root string

	// mu guards everything below.
	mu    sync.Mutex
	snaps map[string]*fakeSnap // by key (active, view) or name (committed)
	next  int
	calls []snapCall
}

type fakeSnap struct {
	info *snapshotsapi.Info
	dir  string // holds fs/ and work/
}

// snapCall is one RPC as the fake saw it.
type snapCall struct {
	Method      string
	Key, Parent string // Commit: Key is the active key, Parent the new name
	Labels      map[string]string
}

func (c snapCall) String() string {
	keys := slices.Sorted(maps.Keys(c.Labels))
	var ls []string
	for _, k := range keys {
		v := c.Labels[k]
		if len(v) > 90 {
			v = v[:90] + "..."
		}
		ls = append(ls, k+"="+v)
	}
	s := c.Method + " " + c.Key
	if c.Parent != "" {
		s += " <- " + c.Parent
	}
	if len(ls) > 0 {
		s += " {" + strings.Join(ls, ", ") + "}"
	}
	return s
}

// startFake serves a fakeSnapshotter on a socket under a directory of its
// own; it stops after every later cleanup (register it before
// startContainerd, so containerd goes first).
func startFake(t *testing.T) (*fakeSnapshotter, string) {
	t.Helper()
	dir := shortTempDir(t)
	f := &fakeSnapshotter{root: filepath.Join(dir, "snapshots"), snaps: map[string]*fakeSnap{}}
	if err := os.Mkdir(f.root, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, f)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("fake snapshotter: %v", err)
		}
	})
	return f, sock
}

func (f *fakeSnapshotter) record(method, key, parent string, labels map[string]string) {
	f.calls = append(f.calls, snapCall{Method: method, Key: key, Parent: parent, Labels: maps.Clone(labels)})
}

// Calls returns the calls so far.
func (f *fakeSnapshotter) Calls() []snapCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeSnapshotter) create(kind snapshotsapi.Kind, key, parent string, labels map[string]string) ([]*types.Mount, error) {
	if _, ok := f.snaps[key]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %s already exists", key)
	}
	if parent != "" {
		p, ok := f.snaps[parent]
		if !ok || p.info.Kind != snapshotsapi.Kind_COMMITTED {
			return nil, status.Errorf(codes.NotFound, "parent %s: no committed snapshot", parent)
		}
	}
	f.next++
	dir := filepath.Join(f.root, fmt.Sprint(f.next))
	for _, d := range []string{filepath.Join(dir, "fs"), filepath.Join(dir, "work")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	now := timestamppb.Now()
	s := &fakeSnap{dir: dir, info: &snapshotsapi.Info{Name: key, Parent: parent, Kind: kind, CreatedAt: now, UpdatedAt: now, Labels: maps.Clone(labels)}}
	f.snaps[key] = s
	return f.mounts(s), nil
}

// mounts are the snapshot's mounts, as containerd's overlayfs snapshotter
// makes them: a bind mount with no parent, else an overlay with the
// parents' fs/ as lower directories (nearest first); a view is read-only.
func (f *fakeSnapshotter) mounts(s *fakeSnap) []*types.Mount {
	var lowers []string
	for p := s.info.Parent; p != ""; p = f.snaps[p].info.Parent {
		lowers = append(lowers, filepath.Join(f.snaps[p].dir, "fs"))
	}
	view := s.info.Kind == snapshotsapi.Kind_VIEW
	switch {
	case len(lowers) == 0:
		mode := "rw"
		if view {
			mode = "ro"
		}
		return []*types.Mount{{Type: "bind", Source: filepath.Join(s.dir, "fs"), Options: []string{mode, "rbind"}}}
	case view && len(lowers) == 1:
		return []*types.Mount{{Type: "bind", Source: lowers[0], Options: []string{"ro", "rbind"}}}
	case view:
		return []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Join(lowers, ":")}}}
	}
	return []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"workdir=" + filepath.Join(s.dir, "work"), "upperdir=" + filepath.Join(s.dir, "fs"), "lowerdir=" + strings.Join(lowers, ":")}}}
}

func (f *fakeSnapshotter) Prepare(_ context.Context, r *snapshotsapi.PrepareSnapshotRequest) (*snapshotsapi.PrepareSnapshotResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Prepare", r.Key, r.Parent, r.Labels)
	m, err := f.create(snapshotsapi.Kind_ACTIVE, r.Key, r.Parent, r.Labels)
	if err != nil {
		return nil, err
	}
	return &snapshotsapi.PrepareSnapshotResponse{Mounts: m}, nil
}

func (f *fakeSnapshotter) View(_ context.Context, r *snapshotsapi.ViewSnapshotRequest) (*snapshotsapi.ViewSnapshotResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("View", r.Key, r.Parent, r.Labels)
	m, err := f.create(snapshotsapi.Kind_VIEW, r.Key, r.Parent, r.Labels)
	if err != nil {
		return nil, err
	}
	return &snapshotsapi.ViewSnapshotResponse{Mounts: m}, nil
}

func (f *fakeSnapshotter) Mounts(_ context.Context, r *snapshotsapi.MountsRequest) (*snapshotsapi.MountsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Mounts", r.Key, "", nil)
	s, ok := f.snaps[r.Key]
	if !ok || s.info.Kind == snapshotsapi.Kind_COMMITTED {
		return nil, status.Errorf(codes.NotFound, "no active snapshot %s", r.Key)
	}
	return &snapshotsapi.MountsResponse{Mounts: f.mounts(s)}, nil
}

func (f *fakeSnapshotter) Commit(_ context.Context, r *snapshotsapi.CommitSnapshotRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Commit", r.Key, r.Name, r.Labels)
	s, ok := f.snaps[r.Key]
	if !ok || s.info.Kind != snapshotsapi.Kind_ACTIVE {
		return nil, status.Errorf(codes.NotFound, "no active snapshot %s", r.Key)
	}
	if _, ok := f.snaps[r.Name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %s already exists", r.Name)
	}
	delete(f.snaps, r.Key)
	s.info.Name, s.info.Kind, s.info.UpdatedAt = r.Name, snapshotsapi.Kind_COMMITTED, timestamppb.Now()
	if s.info.Labels == nil {
		s.info.Labels = map[string]string{}
	}
	maps.Copy(s.info.Labels, r.Labels)
	f.snaps[r.Name] = s
	return &emptypb.Empty{}, nil
}

func (f *fakeSnapshotter) Remove(_ context.Context, r *snapshotsapi.RemoveSnapshotRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Remove", r.Key, "", nil)
	s, ok := f.snaps[r.Key]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no snapshot %s", r.Key)
	}
	for _, o := range f.snaps {
		if o.info.Parent == r.Key {
			return nil, status.Errorf(codes.FailedPrecondition, "snapshot %s has children", r.Key)
		}
	}
	delete(f.snaps, r.Key)
	if err := os.RemoveAll(s.dir); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeSnapshotter) Stat(_ context.Context, r *snapshotsapi.StatSnapshotRequest) (*snapshotsapi.StatSnapshotResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Stat", r.Key, "", nil)
	s, ok := f.snaps[r.Key]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no snapshot %s", r.Key)
	}
	return &snapshotsapi.StatSnapshotResponse{Info: s.info}, nil
}

func (f *fakeSnapshotter) Update(_ context.Context, r *snapshotsapi.UpdateSnapshotRequest) (*snapshotsapi.UpdateSnapshotResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Update", r.Info.GetName(), "", r.Info.GetLabels())
	s, ok := f.snaps[r.Info.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no snapshot %s", r.Info.GetName())
	}
	paths := r.UpdateMask.GetPaths()
	if len(paths) == 0 {
		paths = []string{"labels"}
	}
	for _, p := range paths {
		switch {
		case p == "labels":
			s.info.Labels = maps.Clone(r.Info.Labels)
		case strings.HasPrefix(p, "labels."):
			k := strings.TrimPrefix(p, "labels.")
			if v, ok := r.Info.Labels[k]; ok {
				if s.info.Labels == nil {
					s.info.Labels = map[string]string{}
				}
				s.info.Labels[k] = v
			} else {
				delete(s.info.Labels, k)
			}
		default:
			return nil, status.Errorf(codes.InvalidArgument, "cannot update %s", p)
		}
	}
	s.info.UpdatedAt = timestamppb.Now()
	return &snapshotsapi.UpdateSnapshotResponse{Info: s.info}, nil
}

// List sends every snapshot, ignoring filters (containerd filters again).
func (f *fakeSnapshotter) List(r *snapshotsapi.ListSnapshotsRequest, stream snapshotsapi.Snapshots_ListServer) error {
	f.mu.Lock()
	f.record("List", strings.Join(r.Filters, ","), "", nil)
	var infos []*snapshotsapi.Info
	for _, s := range f.snaps {
		infos = append(infos, s.info)
	}
	f.mu.Unlock()
	return stream.Send(&snapshotsapi.ListSnapshotsResponse{Info: infos})
}

func (f *fakeSnapshotter) Usage(_ context.Context, r *snapshotsapi.UsageRequest) (*snapshotsapi.UsageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Usage", r.Key, "", nil)
	if _, ok := f.snaps[r.Key]; !ok {
		return nil, status.Errorf(codes.NotFound, "no snapshot %s", r.Key)
	}
	return &snapshotsapi.UsageResponse{}, nil
}

// chainIDs are the image's layer chain IDs (image-spec config.md): the
// names containerd commits the unpacked layers under.
func chainIDs(diffIDs []digest.Digest) []digest.Digest {
	var out []digest.Digest
	for i, d := range diffIDs {
		if i == 0 {
			out = append(out, d)
			continue
		}
		out = append(out, digest.FromString(out[i-1].String()+" "+d.String()))
	}
	return out
}

// criLabelPrefix starts every label CRI adds for remote snapshotters.
const criLabelPrefix = "containerd.io/snapshot/cri."

// TestCRIProxyLabels runs containerd with the fake proxy snapshotter as
// CRI's snapshotter, pulls the corner image through CRI, runs a program
// from it and checks the labels each layer's Prepare carried: with the
// labels enabled (both pull paths of 2.x, the one of 1.6) every layer's
// Prepare names its image, manifest, layer and the layers above it, and
// its chain ID; with them left at containerd's default (the controls)
// no Prepare carries a cri.* label. Every RPC is logged, in order.
func TestCRIProxyLabels(t *testing.T) {
	for _, b := range binaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			v := Version{Major: 1}
			if b.path != "" {
				var err error
				if v, err = BinaryVersion(t.Context(), b.path); err != nil {
					t.Fatal(err)
				}
			}
			modes := []PullMode{PullLocal}
			if v.AtLeast(2, 1) {
				modes = append(modes, PullTransfer)
			}
			f := newFixture(t)
			im := cornerBusybox(t, true)
			if err := im.Push(t.Context(), f.host, "critest/corners", "1"); err != nil {
				t.Fatal(err)
			}
			ref := f.host + "/critest/corners:1"
			for _, mode := range modes {
				for _, labels := range []bool{true, false} {
					name := mode.String() + "-pull"
					if !labels {
						name += "-without-labels"
					}
					t.Run(name, func(t *testing.T) {
						fake, sock := startFake(t)
						c := startContainerd(t, b, f, Options{Pull: mode, Proxy: &ProxySnapshotter{Name: "fake", Address: sock, WithoutLabels: !labels}})
						if c.Pull != mode {
							t.Fatalf("containerd pulls %s, asked for %s", c.Pull, mode)
						}
						ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
						defer cancel()
						cl, err := c.Dial(ctx)
						if err != nil {
							t.Fatal(err)
						}
						defer cl.Close()
						pod, err := cl.RunPod(ctx, "labels")
						if err != nil {
							t.Fatal(err)
						}
						afterPod := len(fake.Calls())
						res, err := cl.Run(ctx, pod, ContainerSpec{Name: "print", Image: ref, Command: []string{BusyboxPath, "cat", "/top.txt"}}, nil)
						if err != nil {
							t.Fatal(err)
						}
						if res.ExitCode != 0 || string(res.Output.Stdout) != "top layer\n" {
							t.Errorf("run on the fake snapshotter: exit %d, stdout %q; want 0, %q", res.ExitCode, res.Output.Stdout, "top layer\n")
						}
						calls := fake.Calls()
						for i, call := range calls {
							where := "image"
							if i < afterPod {
								where = "pod"
							}
							t.Logf("%s rpc %d: %s", where, i, call)
						}
						checkLabels(t, calls[afterPod:], im, ref, labels)

						// Removing the pod and the image: containerd's
						// garbage collection removes the snapshots, the
						// top layer first.
						if err := cl.RemovePod(ctx, pod.ID); err != nil {
							t.Fatal(err)
						}
						if err := cl.RemoveImage(ctx, ref); err != nil {
							t.Fatal(err)
						}
						after := fake.Calls()[len(calls):]
						for i, call := range after {
							t.Logf("remove rpc %d: %s", len(calls)+i, call)
						}
						checkRemoved(t, after, chainIDs(im.DiffIDs))
					})
				}
			}
		})
	}
}

// checkRemoved checks that every layer's committed snapshot (named
// <namespace>/<n>/<chain ID> by containerd's metadata store) was removed,
// children before parents.
func checkRemoved(t *testing.T, calls []snapCall, chains []digest.Digest) {
	t.Helper()
	at := map[digest.Digest]int{}
	for i, call := range calls {
		if call.Method != "Remove" {
			continue
		}
		if j := strings.LastIndexByte(call.Key, '/'); j >= 0 {
			at[digest.Digest(call.Key[j+1:])] = i + 1
		}
	}
	for i, c := range chains {
		if at[c] == 0 {
			t.Errorf("layer %d's snapshot (chain %s) not removed after RemoveImage", i, c)
		}
		if i > 0 && at[c] != 0 && at[chains[i-1]] != 0 && at[c] > at[chains[i-1]] {
			t.Errorf("layer %d's snapshot removed after its parent's", i)
		}
	}
}

// checkLabels checks the Prepare calls of one image's pull and run.
func checkLabels(t *testing.T, calls []snapCall, im *fstest.Image, ref string, labels bool) {
	t.Helper()
	chains := chainIDs(im.DiffIDs)
	var layers []string
	for _, d := range im.LayerDescs {
		layers = append(layers, d.Digest.String())
	}
	prepared := map[string]bool{}
	for _, call := range calls {
		if call.Method != "Prepare" {
			continue
		}
		for k := range call.Labels {
			if strings.HasPrefix(k, criLabelPrefix) && !labels {
				t.Errorf("label passing off, yet Prepare %s carries %s", call.Key, k)
			}
		}
		d := call.Labels[criLabelPrefix+"layer-digest"]
		if d == "" {
			continue
		}
		i := slices.Index(layers, d)
		if i < 0 {
			t.Errorf("Prepare %s: layer-digest %s is no layer of the image", call.Key, d)
			continue
		}
		prepared[d] = true
		want := map[string]string{
			criLabelPrefix + "image-ref":       ref,
			criLabelPrefix + "manifest-digest": im.ManifestDesc.Digest.String(),
			criLabelPrefix + "image-layers":    strings.Join(layers[i:], ","),
			"containerd.io/snapshot.ref":       chains[i].String(),
		}
		// containerd 2.x also passes the layer's DiffID.
		if d, ok := call.Labels["containerd.io/snapshot/diff-id"]; ok && d != im.DiffIDs[i].String() {
			t.Errorf("Prepare of layer %d: diff-id = %s, want %s", i, d, im.DiffIDs[i])
		}
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if got := call.Labels[k]; got != want[k] {
				t.Errorf("Prepare of layer %d: %s = %q, want %q", i, k, got, want[k])
			}
		}
	}
	if labels {
		var missing []string
		for i, l := range layers {
			if !prepared[l] {
				missing = append(missing, fmt.Sprintf("%d %s", i, l))
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("no Prepare with cri.layer-digest for layers %v: a remote snapshotter would have pulled them in full", missing)
		}
	}
}
