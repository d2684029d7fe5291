package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/snapshotter"
	"github.com/ocifs/ocifs/fs/takeover"
)

// snapshotterHolderSocket is where the holder of the snapshotter at root
// (absolute) listens.
func snapshotterHolderSocket(root string) string { return filepath.Join(root, "holder.sock") }

// holdSnapshotter is `ocifs snapshotter --takeover`: this process becomes
// the holder of the layer mount's FUSE connection, and runs the daemon as
// its child with the same command line (and --holder-socket), starting
// another whenever one dies.
func holdSnapshotter(ctx context.Context, e *env, o *snapshotterOpts) error {
	if err := checkSnapshotterHost(); err != nil {
		return err
	}
	root, err := filepath.Abs(o.root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	return holdHere(ctx, e, "snapshotter", snapshotterHolderSocket(root))
}

// checkSnapshotterHost checks that the snapshotter can run here: as root,
// with /dev/fuse.
func checkSnapshotterHost() error {
	if os.Geteuid() != 0 {
		return errors.New("the snapshotter needs root (FUSE and overlay mounts): run it as root, e.g. from the systemd unit")
	}
	return checkFUSE()
}

// layerServer is the layer mount of a daemon its holder started: served
// raw on the holder's connection.
type layerServer struct {
	e   *env
	o   *snapshotterOpts
	ref string // Init.Ref: the root
	cl  *takeover.Client
	lfs *fs.LayerFS
	srv *takeover.Server

	sn      *snapshotter.Snapshotter // set before readyCh is closed
	readyCh chan struct{}
}

// dialLayers reaches the holder and checks that the connection it has, if
// any, is this root's layer mount.
func dialLayers(e *env, o *snapshotterOpts, layersDir string) (*layerServer, error) {
	root := filepath.Dir(layersDir)
	cl, err := takeover.Dial(o.holderSocket)
	if err != nil {
		return nil, err
	}
	ref := "layers:" + root
	if in := cl.Init(); in != nil && in.Ref != ref {
		cl.Close()
		return nil, fmt.Errorf("the holder at %s keeps the connection of %q, not of this snapshotter's layers (%s)", o.holderSocket, in.Ref, layersDir)
	}
	lfs, err := fs.NewRawLayerFS(layersDir, fs.LayerFSOptions{Logger: e.log})
	if err != nil {
		cl.Close()
		return nil, err
	}
	return &layerServer{e: e, o: o, ref: ref, cl: cl, lfs: lfs, readyCh: make(chan struct{})}, nil
}

// serve mounts the layers, or takes over the holder's connection (for an
// upgrade, once the daemon serving it has stopped).
func (l *layerServer) serve() error {
	if !l.cl.Have() {
		if err := l.lfs.PrepareRawMount(); err != nil {
			return withHint(err, "the layers are a FUSE mount at --root/layers; check /dev/fuse and that nothing else is mounted there")
		}
	}
	raw := l.lfs.Raw(l.resolve)
	srv, err := takeover.Serve(l.cl, raw, takeover.Options{
		Dir: l.lfs.Dir, AllowOther: true, Source: "ocifs-layers", Logger: l.e.log,
		Generation: fs.LayerGeneration(), Ref: l.ref,
	})
	if err != nil {
		return withHint(err, needFUSE)
	}
	l.srv = srv
	l.lfs.SetServer(srv)
	return nil
}

// ready lets the requests about layers not served yet be answered: sn
// serves them again from its metadata.
func (l *layerServer) ready(sn *snapshotter.Snapshotter) {
	l.sn = sn
	close(l.readyCh)
}

// resolve serves the snapshot the kernel names by its id (a slot) again.
func (l *layerServer) resolve(ctx context.Context, name string) error {
	select {
	case <-l.readyCh:
	case <-ctx.Done():
		return ctx.Err()
	}
	return l.sn.ServeAgain(ctx, name)
}

// daemonStats serves GET /stats for `ocifs stats DIR` of a daemon of many
// images (the snapshotter's layer mount, the layer store), and the
// records that find it (and, with a holder, `ocifs upgrade`).
type daemonStats struct {
	*statsServer
	p mountPaths
}

// serveDaemonStats serves the stats of the daemon serving the mount at dir
// on its socket, recorded as `ocifs mount` records its mounts: what names
// the daemon, holder the socket of its holder ("" without one), served
// how many trees it serves.
func serveDaemonStats(e *env, dir, what, holder string, served func() int) (*daemonStats, error) {
	p, err := pathsFor(e.g.cacheDir, dir)
	if err != nil {
		return nil, err
	}
	srv, err := serveStatsJSON(p.sock, func() any {
		// pid is the process serving now: with --takeover the holder is
		// another, and the daemon changes with every restart.
		return struct {
			Image    string `json:"image"`
			PID      int    `json:"pid"`
			Served   int    `json:"layers_served"`
			Takeover bool   `json:"takeover"`
		}{what, os.Getpid(), served(), holder != ""}
	})
	if err != nil {
		return nil, err
	}
	st := mountState{PID: os.Getpid(), Image: what, Mountpoint: dir, Socket: p.sock, CacheDir: e.g.cacheDir}
	if holder != "" {
		st.Holder, st.HolderPID = holder, os.Getppid()
	}
	if err := publishState(p, st); err != nil {
		srv.close()
		return nil, err
	}
	return &daemonStats{statsServer: srv, p: p}, nil
}

// unpublish removes the records: the snapshotter is ending, not handing over.
func (s *daemonStats) unpublish() { removeState(s.p) }
