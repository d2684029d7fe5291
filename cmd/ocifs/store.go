package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/sdnotify"
	"github.com/ocifs/ocifs/fs/store"
	"github.com/ocifs/ocifs/fs/takeover"
)

// storeOpts are the flags of `ocifs store`.
type storeOpts struct {
	foreground   bool
	debugFUSE    bool
	readyFD      int
	pushIndex    repoName  // --push-index-to: push the indexes of layers streamed here there
	metricsAddr  string    // --metrics-address: serve Prometheus metrics there
	cacheMax     sizeValue // --cache-max: keep the cache under this many bytes
	trimEvery    time.Duration
	takeover     bool   // --takeover: the FUSE connection lives in a holder process
	holderSocket string // set for the daemons the holder starts
}

func storeFlags(set *pflag.FlagSet) runFunc {
	o := &storeOpts{}
	set.BoolVar(&o.foreground, "foreground", false, "stay attached: log to stderr, unmount on Ctrl-C or SIGTERM")
	set.BoolVar(&o.debugFUSE, "debug-fuse", false, "log every FUSE request (at debug level; implies --log-level debug)")
	set.Var(&o.pushIndex, "push-index-to", pushIndexUsage)
	set.StringVar(&o.metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics (e.g. 127.0.0.1:9464; default: none)")
	set.Var(&o.cacheMax, "cache-max", "keep the cache under `SIZE` (500M, 10G): least recently used entries first, never\nthe manifests, configs and indexes of images loaded since the store started (default: no bound)")
	set.DurationVar(&o.trimEvery, "cache-trim-interval", defaultTrimEvery, "with --cache-max, how often to trim")
	set.IntVar(&o.readyFD, "ready-fd", 0, "file descriptor on which the daemon reports readiness")
	_ = set.MarkHidden("ready-fd")
	set.BoolVar(&o.takeover, "takeover", false, "keep the store's FUSE connection in a small holder process, so the daemon can crash or be\nupgraded (ocifs upgrade MOUNTPOINT) while running containers keep reading their layers (Linux 6.9+\nfor reads in flight). Reads all go through the daemon (no passthrough)")
	set.StringVar(&o.holderSocket, "holder-socket", "", "the holder's socket (set for the daemons a holder starts)")
	_ = set.MarkHidden("holder-socket")
	return func(ctx context.Context, e *env, args []string) error {
		return runStore(ctx, e, args[0], o)
	}
}

func runStore(ctx context.Context, e *env, dir string, o *storeOpts) error {
	if os.Geteuid() != 0 {
		return errors.New("the layer store needs root (a FUSE mount every user's podman reads): run it as root, e.g. from the systemd unit")
	}
	if err := checkFUSE(); err != nil {
		return err
	}
	if o.debugFUSE && e.g.logLevel == "" {
		e.log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("store %s: %w", dir, err)
	}
	switch {
	case o.holderSocket != "" && !o.takeover:
		return &usageError{msg: "--holder-socket needs --takeover"}
	case o.holderSocket != "":
		// A daemon a holder started: a later one takes over a mount that
		// is there and waits for it; looking at it would wait for this
		// very daemon.
		return serveStore(ctx, e, abs, o)
	case o.takeover && o.foreground:
		// This process stays in the foreground as the holder (a systemd
		// unit's main process) and runs the daemon as its child.
		p, err := pathsFor(e.g.cacheDir, abs)
		if err != nil {
			return err
		}
		return holdHere(ctx, e, "store", holderSocketPath(p))
	}
	if mi, ok, err := findMount(abs); err != nil {
		return err
	} else if ok && !deadFUSE(abs) {
		return withHint(fmt.Errorf("%s is already a mount point (%s)", abs, mi.FSType), "stop the daemon serving it (SIGTERM), or umount "+abs+" if it died")
	}
	if o.foreground {
		return serveStore(ctx, e, abs, o)
	}
	args := append(globalArgs(e.g), "store", "--foreground", "--ready-fd=3")
	if o.debugFUSE {
		args = append(args, "--debug-fuse")
	}
	if o.pushIndex != "" {
		args = append(args, "--push-index-to="+string(o.pushIndex))
	}
	if o.metricsAddr != "" {
		args = append(args, "--metrics-address="+o.metricsAddr)
	}
	if o.cacheMax > 0 {
		args = append(args, "--cache-max="+strconv.FormatInt(int64(o.cacheMax), 10), "--cache-trim-interval="+o.trimEvery.String())
	}
	if o.takeover {
		p, err := pathsFor(e.g.cacheDir, abs)
		if err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("store: find this binary: %w", err)
		}
		sock := holderSocketPath(p)
		args = append(args, "--takeover", "--holder-socket="+sock, "--", abs)
		holder := append(globalArgs(e.g), "holder", "--socket="+sock, "--exe="+exe, "--ready-fd=3", "--")
		return startDaemon(ctx, e, abs, "store "+abs, append(holder, args...), func(pid int, log string) string {
			return fmt.Sprintf("layer store at %s (holder pid %d, log %s; the daemon may be restarted or upgraded without unmounting)\n", abs, pid, log)
		})
	}
	return startDaemon(ctx, e, abs, "store "+abs, append(args, "--", abs), func(pid int, log string) string {
		return fmt.Sprintf("layer store at %s (pid %d, log %s)\n", abs, pid, log)
	})
}

// storeStateDir is where a --takeover store at dir keeps the ids of its
// nodes (store.AssignmentsFile).
func storeStateDir(p mountPaths) string { return strings.TrimSuffix(p.state, ".json") + ".store" }

// serveStore is the store daemon (or --foreground): mount, say ok, serve
// until a signal or until the mount goes away, unmount.
func serveStore(ctx context.Context, e *env, dir string, o *storeOpts) (err error) {
	var ready *os.File
	if o.readyFD > 0 {
		ready = os.NewFile(uintptr(o.readyFD), "ready-pipe")
		defer func() {
			if ready != nil {
				if err != nil {
					fmt.Fprintf(ready, "error: %s\n", errorText(err))
				}
				ready.Close()
			}
		}()
	}
	client, err := newClient(e)
	if err != nil {
		return err
	}
	// With a holder, the connection is taken first: for an upgrade that
	// stops the daemon serving it, whose metrics port and ids file this one
	// needs. Its requests wait until StartRaw below.
	var tk *takeover.Server
	var cl *takeover.Client
	var s *store.Store
	var loads *loadedImages
	storeOpts := store.Options{Client: client, Logger: e.log, Debug: o.debugFUSE,
		Image:     fs.Options{InsecureLazy: e.g.insecureLazy, IndexRepos: e.g.indexRepos, PushIndexTo: string(o.pushIndex)},
		OnResolve: func(im *fs.Image) { loads.resolved(im) }, OnLoad: func(im *fs.Image, took time.Duration) { loads.loaded(im, took) }}
	if o.holderSocket != "" {
		if cl, err = takeover.Dial(o.holderSocket); err != nil {
			return err
		}
		ref := "store:" + dir
		if in := cl.Init(); in != nil && in.Ref != ref {
			return fmt.Errorf("the holder at %s keeps the connection of %q, not of the store at %s", o.holderSocket, in.Ref, dir)
		}
		if s, err = store.NewRaw(context.WithoutCancel(ctx), dir, storeOpts); err != nil {
			return err
		}
		if !cl.Have() {
			if err := s.PrepareRawMount(); err != nil {
				return err
			}
		}
		tk, err = takeover.Serve(cl, s.Raw(), takeover.Options{Dir: dir, AllowOther: true, Writable: true, Source: "ocifs-store",
			Logger: e.log, Debug: o.debugFUSE, Generation: store.Generation(), Ref: ref})
		if err != nil {
			return withHint(err, needFUSE)
		}
		s.SetServer(tk)
	}
	mx, err := startMetrics(e, o.metricsAddr)
	if err != nil {
		return err
	}
	defer mx.close()
	stopBound, err := holdCacheBound(e.log, client.Cache(), int64(o.cacheMax), o.trimEvery)
	if err != nil {
		return err
	}
	defer stopBound()
	// Each image loaded is counted by the metrics and pinned in the cache
	// until the store stops, as the snapshotter does.
	mx.addClient(client)
	loads = &loadedImages{e: e, mx: mx, client: client, what: "store"}
	defer loads.release()
	if s == nil {
		// The loads outlive the signal that ends ctx until Unmount cancels them.
		if s, err = store.Mount(context.WithoutCancel(ctx), dir, storeOpts); err != nil {
			return withHint(err, needFUSE)
		}
	} else {
		p, err := pathsFor(e.g.cacheDir, dir)
		if err != nil {
			return err
		}
		if err := s.StartRaw(storeStateDir(p), !tk.Took); err != nil {
			return err
		}
		stats, err := serveDaemonStats(e, dir, "store "+dir, o.holderSocket, func() int { return len(s.Images()) })
		if err != nil {
			return err
		}
		defer stats.close()
		if err := cl.Serving(); err != nil {
			e.log.Warn("tell the holder this daemon serves", "err", err)
		}
		if tk.Took {
			e.log.Info("took over the layer store's FUSE connection", "path", dir, "pid", os.Getpid())
		}
	}
	e.log.Info("layer store serving", "path", dir, "cache", e.g.cacheDir, "pid", os.Getpid(), "metrics", mx.address())
	if ready != nil {
		// A daemon 'ocifs store' started logs to a file of its own, as a
		// mount's daemon does: keep it rotated (under systemd, stderr is
		// the journal's).
		p, err := pathsFor(e.g.cacheDir, dir)
		if err != nil {
			return err
		}
		bg, stopBg := context.WithCancel(context.Background())
		var logWait sync.WaitGroup
		defer func() {
			stopBg()
			logWait.Wait()
		}()
		logWait.Go(func() { keepLogRotated(bg, e.log, p.log) })
	}
	if ready != nil {
		fmt.Fprint(ready, "ok\n")
		ready.Close()
		ready = nil
	}
	notify(e.log, func() (bool, error) { return sdnotify.Ready("serving the layer store at " + dir) })
	var stopReq <-chan struct{}
	if cl != nil {
		stopReq = cl.StopRequested()
	}
	select {
	case <-ctx.Done():
		e.log.Info("layer store stopping")
	case <-watchUnmounted(ctx, dir):
		e.log.Info("layer store unmounted from outside")
	case <-stopReq:
		// An upgrade: the new daemon waits for the connection, which
		// outlives this process in the holder.
		e.log.Info("handing the layer store over to a new daemon", "path", dir)
		tk.Stop()
		return nil
	}
	if tk != nil {
		p, _ := pathsFor(e.g.cacheDir, dir)
		removeState(p)
	}
	notify(e.log, sdnotify.Stopping)
	if err := s.Unmount(); err != nil {
		return err
	}
	e.log.Info("layer store stopped", "images", len(s.Images()), "bytes_fetched", client.Stats().BytesFetched)
	return nil
}

const storeHelp = `Serve podman, buildah and CRI-O as a containers/storage additional layer store:
one FUSE mount at MOUNTPOINT for any number of images. containers/storage looks
each layer up there before it pulls it; an image appears on the first lookup
of one of its layers (resolved with the same credentials 'ocifs mount' uses:
docker and podman auth files, credential helpers) and is loaded once. Each
layer's diff/ is the layer as podman's own overlay driver would have unpacked
it, served lazily from ocifs's verified reader, so 'podman run IMAGE' needs no
prior step and starts without downloading the image.

Layers with an ocifs index ('ocifs index build --push', or in an index
repository given with --index-repo), eStargz and zstd:chunked layers fetch only
what containers read (--push-index-to REGISTRY/REPO pushes the index built from
a layer streamed here, for other machines). Gzip layers without an
index are served too, fetched once, in order, without unpacking (stream mode):
podman's first lookup waits for the download, and nothing is unpacked to
disk: measured faster than letting podman pull them (time to a container's
first output, an image of 150 MB of files on loopback: 3.7 s served, 8.3 s
podman's own pull; BenchmarkPodmanRunStore in fs/store). Layers of a media type ocifs cannot
read, or of an image it cannot resolve, are answered ENOENT and podman pulls
them itself: one Warn line says which and why.

/etc/containers/storage.conf (overlay driver only; MOUNTPOINT must exist
whenever podman starts, or every podman command fails):

  [storage]
  driver = "overlay"

  [storage.options]
  additionallayerstores = ["/var/lib/ocifs/store:ref"]

Start the store before podman (cmd/ocifs/systemd/ocifs-store.service), then:

  podman run --rm registry.example.com/app:1.4 true
  grep -E 'image loaded|layer served lazily' the store's log   # bytes_fetched
  podman image inspect --format '{{.RootFS.Layers}}' registry.example.com/app:1.4

The store is read-write only for podman's use and release notifications
(create of <layer>/use, rmdir of <layer>), which it counts and answers ENOENT;
every other write is refused. A SIGKILLed podman leaves it serving.

With --takeover the store's FUSE connection is kept by a small holder process,
so its daemon can crash, be killed or be upgraded ('ocifs upgrade MOUNTPOINT',
or SIGHUP to the holder) while containers keep reading their layers: a new
daemon takes the connection over, and the node ids the kernel holds are kept
in a file beside the mount's state. 'ocifs stats --json MOUNTPOINT' gives the
pid of the daemon serving now. Every read goes through the daemon (no
passthrough); use counts restart from zero with each daemon. With
--foreground this process is the holder and the daemon its child (for a
systemd unit: add NotifyAccess=all, the daemon says when it is ready).

With --metrics-address the store serves Prometheus metrics (the names are in
README's Operations section); with --cache-max it keeps the cache under a size,
least recently used entries first, never the manifests, configs and indexes of
the images it serves. Both may be set in /etc/ocifs/config.toml under [store].

Examples:
  ocifs store /var/lib/ocifs/store
  ocifs store --foreground --cache-dir /var/cache/ocifs /var/lib/ocifs/store
  ocifs store --metrics-address 127.0.0.1:9464 --cache-max 20G /var/lib/ocifs/store
  ocifs store --takeover /var/lib/ocifs/store; ocifs upgrade /var/lib/ocifs/store
`
