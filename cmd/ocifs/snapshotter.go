package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/sdnotify"
	"github.com/ocifs/ocifs/fs/snapshotter"
	"github.com/ocifs/ocifs/fs/snapshotter/criauth"
)

// DefaultSnapshotterAddress is where `ocifs snapshotter` listens by default.
const DefaultSnapshotterAddress = "/run/ocifs/snapshotter.sock"

// snapshotterOpts are `ocifs snapshotter`'s flags.
type snapshotterOpts struct {
	address         string
	root            string
	criImageService string    // --cri-image-service: the socket kubelet's image service endpoint names
	containerd      string    // --containerd-address: where that service forwards
	metricsAddr     string    // --metrics-address: serve Prometheus metrics there
	cacheMax        sizeValue // --cache-max: keep the cache under this many bytes
	trimEvery       time.Duration
	pushIndex       repoName // --push-index-to: push the indexes of layers streamed here there
	profile         string   // --profile: auto or none
	takeover        bool     // --takeover: the layer mount's FUSE connection lives in a holder
	holderSocket    string   // set for the daemons the holder starts
}

// snapshotterFlags is `ocifs snapshotter [--address SOCK] [--root DIR]`.
func snapshotterFlags(set *pflag.FlagSet) runFunc {
	o := &snapshotterOpts{}
	set.StringVar(&o.address, "address", DefaultSnapshotterAddress, "the unix `SOCKET` containerd's proxy_plugins.ocifs address names")
	set.StringVar(&o.root, "root", snapshotter.DefaultRoot, "the snapshotter's `DIR`: metadata.db, snapshots/ (container uppers) and\nlayers/ (the FUSE mount of the lazy layers)")
	set.StringVar(&o.criImageService, "cri-image-service", "", "also serve CRI's image service on `SOCKET` in front of containerd's\n(kubelet --image-service-endpoint=unix://SOCKET), keeping each pull's\ncredentials in memory for the lazy reads of its layers")
	set.StringVar(&o.containerd, "containerd-address", "/run/containerd/containerd.sock", "containerd's CRI `SOCKET`, where --cri-image-service forwards")
	set.StringVar(&o.metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics (e.g. 127.0.0.1:9464; default: none)")
	set.Var(&o.cacheMax, "cache-max", "keep the cache under `SIZE` (500M, 10G): least recently used entries first, never\nthe manifests, configs and indexes of the images it serves (default: no bound)")
	set.DurationVar(&o.trimEvery, "cache-trim-interval", defaultTrimEvery, "with --cache-max, how often to trim")
	set.Var(&o.pushIndex, "push-index-to", pushIndexUsage)
	set.StringVar(&o.profile, "profile", "auto", "start-up profiles: `auto` fetches what an image's recorded profile lists as soon as it is\nloaded, from the profile's pack when it has one (see 'ocifs profile --help'); spans fetches\nit from the layers' own spans only; none does not look for one")
	set.BoolVar(&o.takeover, "takeover", false, "keep the layer mount's FUSE connection in a small holder process (this one; the daemon\nruns as its child), so the daemon can crash or be upgraded (ocifs upgrade ROOT/layers, or\nSIGHUP) while running containers keep reading their lazy layers (Linux 6.9+ for reads in\nflight). Reads all go through the daemon (no passthrough)")
	set.StringVar(&o.holderSocket, "holder-socket", "", "the holder's socket (set for the daemons a holder starts)")
	_ = set.MarkHidden("holder-socket")
	return func(ctx context.Context, e *env, args []string) error {
		if err := checkProfileMode(o.profile); err != nil {
			return err
		}
		if o.holderSocket != "" && !o.takeover {
			return &usageError{msg: "--holder-socket needs --takeover"}
		}
		if o.takeover && o.holderSocket == "" {
			return holdSnapshotter(ctx, e, o)
		}
		return runSnapshotter(ctx, e, o)
	}
}

// runSnapshotter serves until ctx ends (SIGTERM, SIGINT), then stops
// serving, releases the layers and unmounts the layer mount. A daemon a
// holder started (--takeover) serves the holder's connection instead,
// and when the holder asks it to stop for a hand-over, stops without
// unmounting.
func runSnapshotter(ctx context.Context, e *env, o *snapshotterOpts) (err error) {
	if err := checkSnapshotterHost(); err != nil {
		return err
	}
	root, err := filepath.Abs(o.root)
	if err != nil {
		return err
	}
	layersDir := filepath.Join(root, "layers")
	// With a holder: a daemon taking over the connection takes it first,
	// which for an upgrade stops the daemon serving it, whose metadata
	// lock, sockets and metrics port this one needs; its requests wait
	// until the snapshotter below can serve their layers again.
	var lay *layerServer
	if o.holderSocket != "" {
		lay, err = dialLayers(e, o, layersDir)
		if err != nil {
			return err
		}
		if lay.cl.Have() {
			if err := lay.serve(); err != nil {
				return err
			}
		}
	}
	// Mirrors: the global --hosts-dir, else containerd's own config_path
	// where it exists, so the snapshotter reads the registries as
	// containerd does.
	hostsDir := e.g.hostsDir
	if hostsDir == "" {
		if _, err := os.Stat(fetch.DefaultHostsDir); err == nil {
			hostsDir = fetch.DefaultHostsDir
		}
	}
	// The credentials of the fetch client: those of 'ocifs mount' (docker
	// and podman auth files, credential helpers), and with
	// --cri-image-service first those kubelet passed with each pull.
	var keychain authn.Keychain = authn.DefaultKeychain
	if o.criImageService != "" {
		cri, err := criauth.Serve(o.criImageService, o.containerd, e.log)
		if err != nil {
			return err
		}
		defer func() {
			if serr := cri.Stop(); serr != nil {
				err = errors.Join(err, serr)
			}
		}()
		keychain = cri.Keychain(authn.DefaultKeychain)
	}
	mx, err := startMetrics(e, o.metricsAddr)
	if err != nil {
		return err
	}
	defer mx.close()
	client, err := fetch.New(fetch.Options{
		CacheDir:       e.g.cacheDir,
		Platform:       e.g.platform,
		Insecure:       e.g.insecure,
		Logger:         e.log,
		Keychain:       keychain,
		HostsDir:       hostsDir,
		RegistriesConf: e.g.registriesConf,
		ObserveRange:   e.onRange,
	})
	if err != nil {
		return err
	}
	// Open first: it fails when another snapshotter has the root, before
	// anything is mounted over that one's layers.
	layers := &laterLayers{}
	sn, err := snapshotter.Open(ctx, snapshotter.Options{Root: o.root, Logger: e.log, Layers: layers})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := sn.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	stopBound, err := holdCacheBound(e.log, client.Cache(), int64(o.cacheMax), o.trimEvery)
	if err != nil {
		return err
	}
	defer stopBound()
	// A layer ocifs cannot serve is downloaded by containerd: loudly.
	mx.addFallbacks("runtime_download", func() int64 { return sn.Stats().Fallback })
	var lfs *fs.LayerFS
	switch {
	case lay == nil:
		lfs, err = fs.MountLayerFS(layersDir, fs.LayerFSOptions{Logger: e.log})
		if err != nil {
			return withHint(err, "the layers are a FUSE mount at --root/layers; check /dev/fuse and that nothing else is mounted there")
		}
	case lay.srv == nil:
		if err := lay.serve(); err != nil {
			return err
		}
		fallthrough
	default:
		lfs = lay.lfs
	}
	handedOver := false
	defer func() {
		if handedOver {
			return // the connection lives on in the holder, for the next daemon
		}
		if uerr := lfs.Unmount(); uerr != nil {
			err = errors.Join(err, uerr)
		}
	}()
	// Each image loaded is counted by the metrics, and what it cannot do
	// without (manifest, config, indexes) is pinned in the cache while it
	// is served: once its last snapshot is removed (crictl rmi,
	// containerd's GC) the pin goes and a trim or `ocifs cache prune` may
	// free its bytes.
	mx.addClient(client)
	loads := &loadedImages{e: e, mx: mx, client: client, what: "snapshotter"}
	defer loads.release()
	remote, err := snapshotter.NewRemote(ctx, snapshotter.RemoteOptions{Client: client, FS: lfs, Logger: e.log,
		Image: fs.Options{InsecureLazy: e.g.insecureLazy, IndexRepos: e.g.indexRepos, PushIndexTo: string(o.pushIndex),
			NoProfile: o.profile == "none", NoProfilePack: o.profile == "spans"},
		OnResolve: loads.resolved, OnLoad: loads.loaded, OnClose: loads.closing})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := remote.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	layers.Layers = remote // before Serve: nothing asks for a layer until then
	if lay != nil {
		lay.ready(sn) // the layers the kernel names are served again from here on
	}
	srv, err := snapshotter.Serve(o.address, sn)
	if err != nil {
		return err
	}
	holder := ""
	if lay != nil {
		holder = o.holderSocket
	}
	stats, err := serveDaemonStats(e, lfs.Dir, "snapshotter "+o.address, holder, func() int { return len(lfs.Names()) })
	if err != nil {
		_ = srv.Stop(context.WithoutCancel(ctx))
		return err
	}
	defer func() {
		if !handedOver {
			stats.unpublish() // the next daemon's records replace these
		}
		stats.close()
	}()
	if lay != nil {
		if err := lay.cl.Serving(); err != nil {
			e.log.Warn("tell the holder this daemon serves", "err", err)
		}
		if lay.srv.Took {
			e.log.Info("took over the layer mount's FUSE connection", "path", layersDir, "pid", os.Getpid())
		}
	}
	e.log.Info("snapshotter serving", "address", o.address, "root", o.root, "cache", e.g.cacheDir, "takeover", lay != nil)
	notify(e.log, func() (bool, error) { return sdnotify.Ready("serving snapshots at " + o.address) })
	var stopReq <-chan struct{}
	if lay != nil {
		stopReq = lay.cl.StopRequested()
	}
	stopWait := 10 * time.Second
	select {
	case <-ctx.Done():
		e.log.Info("snapshotter stopping")
	case <-srv.Done():
	case <-stopReq:
		// An upgrade: the new daemon waits for the connection, and for
		// this one's metadata lock and sockets.
		e.log.Info("handing the layer mount over to a new daemon", "path", layersDir)
		lay.srv.Stop()
		handedOver = true
		stopWait = 2 * time.Second
	}
	notify(e.log, sdnotify.Stopping)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopWait)
	defer cancel()
	if err := srv.Stop(stopCtx); err != nil {
		return err
	}
	s := sn.Stats()
	e.log.Info("snapshotter stopped", "remote_layers", s.Remote, "fallbacks", s.Fallback, "bytes_fetched", client.Stats().BytesFetched, "handed_over", handedOver)
	return nil
}

// laterLayers are the snapshotter's Layers, set once the layer mount
// exists (after Open has taken the root's lock) and before Serve.
type laterLayers struct{ snapshotter.Layers }

const snapshotterHelp = `Serve containerd as a remote snapshotter: one long-running daemon for every
image on the node. Each layer containerd unpacks for CRI is served lazily from
ocifs's verified reader: a directory of one FUSE mount (--root/layers) holding
the layer exactly as containerd's applier would have written it, so the
container's root is kernel overlayfs over those directories with an upper on
local disk, equal to what containerd's own overlayfs snapshotter gives. A
layer ocifs cannot serve (unknown media type, a registry it cannot reach with
the credentials it has) falls back to containerd's download: one Warn line
"layer not served lazily" names it and why. Layers with an ocifs index in the
registry ('ocifs index build --push', or in an index repository given with
--index-repo) fetch only what containers read; images without one are fetched
once, in order, without unpacking (stream mode). With --push-index-to
REGISTRY/REPO, the index built from such a stream is pushed there, so the
other nodes (given --index-repo REGISTRY/REPO) read that layer lazily. An
image with a start-up profile ('ocifs profile --help') has what its program
reads first fetched as soon as the image is loaded (--profile=none stops it).

containerd 1.6 and 1.7 (/etc/containerd/config.toml, version = 2):

  [proxy_plugins.ocifs]
    type = "snapshot"
    address = "/run/ocifs/snapshotter.sock"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "ocifs"
    disable_snapshot_annotations = false

containerd 2.x (version = 3):

  [proxy_plugins.ocifs]
    type = "snapshot"
    address = "/run/ocifs/snapshotter.sock"
    [proxy_plugins.ocifs.exports]
      enable_remote_snapshot_annotations = "true"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "ocifs"

  # 2.1 and later pull through the transfer service, which unpacks (and
  # passes the labels) only for the snapshotters listed here:
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "ocifs"

  On 2.0, or to keep CRI's client-side pull on 2.1+, set instead
  disable_snapshot_annotations = false (and on 2.1+ use_local_image_pull =
  true) under [plugins."io.containerd.cri.v1.images"]. Without the labels every
  layer silently falls back to a full download: check the log.

Private registries: with --cri-image-service SOCKET the daemon also serves
CRI's image service there, forwarding to containerd (--containerd-address)
and keeping the credentials of each pull in memory (never on disk or in a
log) for the lazy reads of that image; point kubelet at it with
--image-service-endpoint=unix://SOCKET (the runtime endpoint stays
containerd's). The credentials are gone after a restart: give root an auth
file or credential helper for such registries too (see fs/snapshotter/criauth).

Then restart containerd, start this daemon (cmd/ocifs/systemd/
ocifs-snapshotter.service) and check:

  crictl pull registry.example.com/app:1.4
  crictl info | grep -i snapshotter        # "ocifs"
  journalctl -u ocifs-snapshotter | grep -E 'layer served lazily|not served lazily'

containerd 1.6 before 1.6.32 (Debian 12's 1.6.20) reports the CRI image file
system as /var/lib/containerd/io.containerd.snapshotter.v1.ocifs whatever the
root; kubelet's image GC reads usage through the snapshotter's Usage.

SIGTERM or SIGINT stops serving, releases the layers and unmounts
--root/layers; containers still running keep their mounts, but their reads of
lazy layers fail once the daemon is gone. After a restart the layers are
served again on demand, so new containers of pulled images start.

With --takeover, running containers survive the daemon too: this process
becomes a small holder of the layer mount's FUSE connection and runs the
daemon as its child (same flags). When the daemon dies (a crash, SIGKILL,
the OOM killer) the holder starts another at once, which takes the connection
over: containers see a pause in their reads, not an error (requests in
flight are resent, Linux 6.9+), and each layer they read is served again from
the snapshotter's metadata. To upgrade, install the new binary at the same
path and run 'ocifs upgrade --root/layers' (or send SIGHUP to the holder,
e.g. ExecReload=/bin/kill -HUP $MAINPID): the old daemon stops, the new one
takes over. 'ocifs stats --json ROOT/layers' gives the pid of the daemon
serving now. Every read goes through the daemon (no passthrough); the
credentials of --cri-image-service do not survive a daemon. SIGTERM to the
holder still ends the mount as above. The systemd unit needs
NotifyAccess=all (the daemon, not the holder, says it is ready).

Examples:
  ocifs snapshotter
  ocifs snapshotter --address /run/ocifs/snapshotter.sock --root /var/lib/ocifs/snapshotter --cache-dir /var/cache/ocifs
  ocifs snapshotter --cri-image-service /run/ocifs/cri-image.sock
  ocifs snapshotter --takeover; ocifs upgrade /var/lib/ocifs/snapshotter/layers
`
