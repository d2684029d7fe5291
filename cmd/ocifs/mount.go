package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/sdnotify"
	"github.com/ocifs/ocifs/fs/takeover"
)

// needFUSE is the hint for a mount that cannot reach the kernel.
const needFUSE = "mounting needs root and /dev/fuse (run as root; modprobe fuse)"

// mountOpts are the flags of `ocifs mount`.
type mountOpts struct {
	foreground   bool
	prefetch     string
	profile      string        // --profile: auto (replay a recorded start-up profile) or none
	record       time.Duration // --record-profile: record a profile for this long (0: no)
	rate         string        // --prefetch-rate, e.g. "50M" (bytes per second)
	allowOther   bool
	suid         bool
	dev          bool
	debugFUSE    bool
	writable     bool
	upper        string
	forceUpper   bool // --force-upper: reuse an upper made over another image
	progressive  bool
	noPassthru   bool      // --no-passthrough
	metricsAddr  string    // --metrics-address: serve Prometheus metrics there
	cacheMax     sizeValue // --cache-max: keep the cache under this many bytes
	trimEvery    time.Duration
	readyFD      int      // set by the parent for its daemon: where to say "ok\n"
	pushIndex    repoName // --push-index-to: push the indexes of layers streamed here there
	takeover     bool     // --takeover: the FUSE connection lives in a holder process
	holderSocket string   // set by spawnHolder for the daemons the holder starts
	holder       *takeover.Client
}

func mountFlags(set *pflag.FlagSet) runFunc {
	o := &mountOpts{}
	set.BoolVar(&o.foreground, "foreground", false, "stay attached: log to stderr, unmount on Ctrl-C or SIGTERM")
	set.StringVar(&o.prefetch, "prefetch", "all", "background fetch after mounting: `all` layers not yet cached, or none (only what is read)")
	set.StringVar(&o.profile, "profile", "auto", "start-up profile: `auto` fetches what the image's recorded profile lists at mount,\nbefore it is read, from the profile's pack when it has one (see 'ocifs profile --help');\nspans fetches it from the layers' own spans only; none does not look for one")
	set.DurationVar(&o.record, "record-profile", 0, "record a start-up profile of this mount's reads for `DURATION` (30s without a value),\nsaved in the cache (files are served through the daemon meanwhile, not passthrough)")
	set.Lookup("record-profile").NoOptDefVal = defaultRecordFor.String()
	set.StringVar(&o.rate, "prefetch-rate", "", "cap the background fetch at `RATE` bytes per second (e.g. 20M, 1G; default: no cap)")
	set.BoolVar(&o.allowOther, "allow-other", false, "let users other than root see the mount")
	set.BoolVar(&o.suid, "suid", false, "honour setuid/setgid bits (off: an image is untrusted)")
	set.BoolVar(&o.dev, "dev", false, "honour device nodes (off: an image is untrusted)")
	set.BoolVar(&o.debugFUSE, "debug-fuse", false, "log every FUSE request (at debug level; implies --log-level debug)")
	set.BoolVar(&o.noPassthru, "no-passthrough", false, "serve every read through the daemon; by default files of complete layers are handed to the kernel\n(FUSE passthrough, Linux 6.9+), which then reads them without asking the daemon")
	set.BoolVar(&o.progressive, "progressive", false, "serve files of a layer that has no index as soon as its stream has passed them, before its digest is checked\n(a trust trade-off; a later mismatch makes the layer's reads fail with EIO)")
	set.BoolVar(&o.writable, "writable", false, "copy-on-write: changes go to an upper directory, the image stays read-only under it\n(the kernel's overlayfs over the read-only view; see Writable mounts below)")
	set.StringVar(&o.upper, "upper", "", "with --writable, keep the changes in `DIR` (created if missing) for a later mount of the same image;\noverlayfs's work directory is DIR.work beside it (default: a fresh directory in the cache, removed at unmount)")
	set.BoolVar(&o.forceUpper, "force-upper", false, "reuse an --upper DIR whose changes were made over a different image")
	set.StringVar(&o.metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics (e.g. 127.0.0.1:9464; :0 picks a port,\nwhich 'ocifs stats' prints; default: none)")
	set.Var(&o.cacheMax, "cache-max", "keep the cache under `SIZE` (500M, 10G) while mounted: least recently used entries first,\nnever what a live mount uses nor one being written (default: no bound)")
	set.DurationVar(&o.trimEvery, "cache-trim-interval", defaultTrimEvery, "with --cache-max, how often to trim")
	_ = set.MarkHidden("cache-trim-interval")
	set.Var(&o.pushIndex, "push-index-to", pushIndexUsage)
	set.IntVar(&o.readyFD, "ready-fd", 0, "file descriptor on which the daemon reports readiness")
	_ = set.MarkHidden("ready-fd")
	set.BoolVar(&o.takeover, "takeover", false, "keep the mount's FUSE connection in a small holder process, so the daemon can crash or be upgraded\n(ocifs upgrade) without the mount going away: a new daemon takes over, and requests in flight are answered\n(Linux 6.9+). Reads all go through the daemon (no passthrough); not with --writable or --progressive")
	set.StringVar(&o.holderSocket, "holder-socket", "", "the holder's socket (set for the daemons a holder starts)")
	_ = set.MarkHidden("holder-socket")
	return func(ctx context.Context, e *env, args []string) error {
		return runMount(ctx, e, args[0], args[1], o)
	}
}

func runMount(ctx context.Context, e *env, image, dir string, o *mountOpts) error {
	if o.prefetch != "all" && o.prefetch != "none" {
		return &usageError{msg: fmt.Sprintf("--prefetch: %q is not all or none", o.prefetch)}
	}
	if _, err := parseRate(o.rate); err != nil {
		return &usageError{msg: "--prefetch-rate: " + err.Error()}
	}
	if err := checkProfileMode(o.profile); err != nil {
		return err
	}
	if o.record < 0 {
		return &usageError{msg: "--record-profile: negative duration"}
	}
	if o.upper != "" && !o.writable {
		return &usageError{msg: "--upper needs --writable"}
	}
	if o.forceUpper && o.upper == "" {
		return &usageError{msg: "--force-upper needs --upper"}
	}
	if o.takeover && o.writable {
		return &usageError{msg: "--takeover serves read-only mounts; it does not go with --writable (not built yet)"}
	}
	if o.takeover && o.progressive {
		return &usageError{msg: "--takeover does not go with --progressive: " + fs.ErrNotDerivable.Error()}
	}
	if o.holderSocket != "" && !o.takeover {
		return &usageError{msg: "--holder-socket needs --takeover"}
	}
	if o.debugFUSE && e.g.logLevel == "" {
		e.log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", dir, err)
	}
	if o.holderSocket != "" {
		// A daemon started by a holder. A later one takes over a mount
		// that is there and waits for it: looking at the mountpoint would
		// wait for this very daemon.
		cl, err := takeover.Dial(o.holderSocket)
		if err != nil {
			return err
		}
		o.holder = cl
		if cl.Have() {
			return serveMount(ctx, e, image, abs, false, o)
		}
	}
	stale, err := checkMountpoint(abs)
	if err != nil {
		return err
	}
	if o.writable {
		d, err := writableDirs(e.g.cacheDir, abs, o.upper)
		if err != nil {
			return err
		}
		if err := d.Check(); err != nil {
			return err
		}
		o.upper = ""
		if !d.Ephemeral {
			o.upper = d.Upper // absolute, for the daemon
		}
	}
	if err := checkFUSE(); err != nil {
		return err
	}
	if !stale {
		mi, ok, err := findMount(abs)
		switch {
		case err != nil:
			return err
		case ok && strings.HasPrefix(mi.FSType, "fuse") && deadFUSE(abs):
			stale = true
		case ok && fs.IsOverlay(mi) && !daemonServes(e.g.cacheDir, abs):
			// The overlay outlives a daemon that died; its image files
			// answer ENOTCONN.
			stale = true
		case ok:
			return withHint(fmt.Errorf("mountpoint %s is already a mount point (%s)", abs, mi.FSType),
				"unmount it first: ocifs unmount "+abs)
		}
	}
	if o.foreground {
		if o.takeover && o.holder == nil {
			return holdForeground(ctx, e, image, abs, o)
		}
		return serveMount(ctx, e, image, abs, stale, o)
	}
	if o.takeover {
		return spawnHolder(ctx, e, image, abs, o)
	}
	return spawnDaemon(ctx, e, image, abs, o)
}

// checkMountpoint checks that dir is a directory. A stat that fails with
// ENOTCONN is a FUSE mount whose daemon died: stale, to be cleaned. (A stale
// mount may also answer stat from the kernel's cache; runMount asks deadFUSE.)
func checkMountpoint(dir string) (stale bool, err error) {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return true, nil
	case errors.Is(err, iofs.ErrNotExist):
		return false, withHint(fmt.Errorf("mountpoint %s does not exist", dir), "create it with mkdir -p "+dir)
	case err != nil:
		return false, fmt.Errorf("mountpoint %s: %w", dir, err)
	case !st.IsDir():
		return false, fmt.Errorf("mountpoint %s is not a directory", dir)
	}
	return false, nil
}

// deadFUSE reports whether the FUSE mount at dir has lost its daemon. The
// kernel may answer stat from its attribute cache, but statfs always asks
// the daemon, and gets ENOTCONN once the connection is gone.
func deadFUSE(dir string) bool {
	var st unix.Statfs_t
	return errors.Is(unix.Statfs(dir, &st), unix.ENOTCONN)
}

// checkFUSE checks that this process may mount: ocifs mounts directly, as
// root, without fusermount.
func checkFUSE() error {
	if os.Geteuid() != 0 {
		return withHint(errors.New("mount: not running as root"), needFUSE)
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return withHint(fmt.Errorf("mount: %w", err), needFUSE)
	}
	return f.Close()
}

// spawnDaemon starts `ocifs mount --foreground` in its own session, with its
// output appended to the mount's log, and waits until it reports that the
// mount answers, or fails.
func spawnDaemon(ctx context.Context, e *env, image, dir string, o *mountOpts) error {
	return startDaemon(ctx, e, dir, "mount "+image, daemonArgs(e.g, image, dir, o), func(pid int, log string) string {
		extra := ""
		if o.writable {
			if d, err := writableDirs(e.g.cacheDir, dir, o.upper); err == nil {
				extra = "; " + upperSummary(d)
			}
		}
		return fmt.Sprintf("mounted %s at %s (pid %d, log %s%s)\n", image, dir, pid, log, extra)
	})
}

// startDaemon starts this binary with args (a command's --foreground
// --ready-fd=3 form) in its own session, its output appended to the log of
// mountpoint dir, waits until it reports "ok" on fd 3, and prints
// success(pid, log); what names the work in progress lines ("mount IMAGE").
// `ocifs mount` and `ocifs store` daemonize with it.
func startDaemon(ctx context.Context, e *env, dir, what string, args []string, success func(pid int, log string) string) error {
	p, err := pathsFor(e.g.cacheDir, dir)
	if err != nil {
		return err
	}
	if _, err := rotateLog(p.log, logMax); err != nil {
		e.log.Warn("rotate log", "path", p.log, "err", err)
	}
	logf, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("mount: open log: %w", err)
	}
	defer logf.Close()
	logStart, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("mount: log %s: %w", p.log, err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("mount: ready pipe: %w", err)
	}
	defer r.Close()

	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = daemonName // ps shows argv[0]; main names the process after it
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.ExtraFiles = []*os.File{w} // fd 3 in the child
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The daemon answers to this command, not to a service manager that
	// may have started it: only a unit's main process says READY.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, sdnotify.Env+"=") })
	err = cmd.Start()
	w.Close() // the child holds the only write end now: EOF means it is gone
	if err != nil {
		return fmt.Errorf("mount: start daemon: %w", err)
	}
	e.log.Debug("mount daemon started", "pid", cmd.Process.Pid, "log", p.log)

	lp := newLoadProgress(e, what)
	got := make(chan []byte, 1)
	go func() { got <- lp.read(r) }()
	var msg []byte
	defer lp.stop(false)
	select {
	case <-ctx.Done():
		// The daemon runs in its own session, so the terminal's Ctrl-C did
		// not reach it: stop it, and let it clean up what it started.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		<-got
		return fmt.Errorf("mount %s: interrupted; stopped the mount daemon (pid %d): %w", dir, cmd.Process.Pid, ctx.Err())
	case msg = <-got:
	}
	lp.stop(string(msg) == "ok\n")
	if string(msg) == "ok\n" {
		fmt.Fprint(e.stdout, success(cmd.Process.Pid, p.log))
		return cmd.Process.Release()
	}
	werr := cmd.Wait()
	// The daemon said why it gave up: that is the error, with where to
	// read more (its retries and the like are in the log, not on the
	// terminal). Without a word from it, it died: show the end of its log.
	if text := strings.TrimSpace(strings.TrimPrefix(string(msg), "error: ")); text != "" {
		return withHint(errors.New(text), "the mount daemon's log: "+p.log)
	}
	if tail := logTail(p.log, logStart, 20); len(tail) > 0 {
		fmt.Fprintf(e.stderr, "ocifs: the mount daemon failed; the end of its log %s:\n", p.log)
		for _, l := range tail {
			fmt.Fprintf(e.stderr, "  %s\n", l)
		}
	}
	return fmt.Errorf("mount %s: the daemon exited (%v) before the mount answered; see %s", dir, werr, p.log)
}

// daemonArgs is the command line of the daemon: the parsed flags spelled out
// with absolute paths, so nothing depends on how the user wrote them.
func daemonArgs(g *globals, image, dir string, o *mountOpts) []string {
	args := globalArgs(g)
	args = append(args, "mount", "--foreground", "--ready-fd=3", "--prefetch="+o.prefetch)
	if o.profile != "" && o.profile != "auto" {
		args = append(args, "--profile="+o.profile)
	}
	if o.record > 0 {
		args = append(args, "--record-profile="+o.record.String())
	}
	if o.rate != "" {
		args = append(args, "--prefetch-rate="+o.rate)
	}
	if o.upper != "" {
		args = append(args, "--upper="+o.upper)
	}
	if o.metricsAddr != "" {
		args = append(args, "--metrics-address="+o.metricsAddr)
	}
	if o.pushIndex != "" {
		args = append(args, "--push-index-to="+string(o.pushIndex))
	}
	if o.cacheMax > 0 {
		args = append(args, "--cache-max="+strconv.FormatInt(int64(o.cacheMax), 10), "--cache-trim-interval="+o.trimEvery.String())
	}
	for _, f := range []struct {
		on   bool
		name string
	}{
		{o.allowOther, "--allow-other"}, {o.suid, "--suid"}, {o.dev, "--dev"}, {o.debugFUSE, "--debug-fuse"},
		{o.progressive, "--progressive"}, {o.writable, "--writable"}, {o.forceUpper, "--force-upper"},
		{o.noPassthru, "--no-passthrough"}, {o.takeover, "--takeover"},
	} {
		if f.on {
			args = append(args, f.name)
		}
	}
	if o.holderSocket != "" {
		args = append(args, "--holder-socket="+o.holderSocket)
	}
	return append(args, "--", image, dir)
}

// logTail returns the last n lines written to the log at or after off.
func logTail(path string, off int64, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size()-off > 1<<20 {
		off = st.Size() - 1<<20
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, 1<<20))
	if err != nil && len(b) == 0 {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// serveMount is the mount daemon (or --foreground): resolve, load, mount,
// serve stats, then wait for a signal or for the mount to go away.
func serveMount(ctx context.Context, e *env, image, dir string, stale bool, o *mountOpts) (err error) {
	if os.Getenv("GOGC") == "" {
		// A mount lives long and mostly idles: collect garbage at half the
		// default growth, for a smaller resident set (tables, tree, inodes).
		debug.SetGCPercent(50)
	}
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
	p, err := pathsFor(e.g.cacheDir, dir)
	if err != nil {
		return err
	}
	log := e.log
	if o.holder != nil {
		if in := o.holder.Init(); in != nil && in.Ref != "" {
			image = in.Ref // the image the kernel's node ids are of, whatever its tag says now
		}
	}
	log.Info("mount starting", "image", image, "path", dir, "pid", os.Getpid(), "takeover", o.holder != nil && o.holder.Have())
	if stale {
		log.Info("cleaning a stale mount left by a daemon that died", "path", dir)
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("clean stale mount at %s: %w", dir, err)
		}
		removeState(p)
		cleanWritable(log, e.g.cacheDir, dir)
	}
	start := time.Now()
	mx, err := startMetrics(e, o.metricsAddr)
	if err != nil {
		return err
	}
	defer mx.close()
	client, err := newClient(e)
	if err != nil {
		return err
	}
	if o.cacheMax > 0 {
		if err := setCacheMax(client.Cache(), int64(o.cacheMax)); err != nil {
			return err
		}
	}
	rate, _ := parseRate(o.rate) // checked by runMount
	im, err := fs.Resolve(ctx, client, image, fs.Options{Logger: log, PrefetchRate: rate, Progressive: o.progressive,
		InsecureLazy: e.g.insecureLazy, IndexRepos: e.g.indexRepos, PushIndexTo: string(o.pushIndex), NoProfile: o.profile == "none", NoProfilePack: o.profile == "spans",
		StartProfileLookup: true})
	if err != nil {
		return err
	}
	mx.add(client, im)
	// What this mount uses stays in the cache while it lives, whatever
	// trims it (this daemon's --cache-max, another's, cache prune).
	pin, err := client.Cache().Pin(mountName(dir), im.CacheEntries())
	if err != nil {
		im.Close()
		return err
	}
	defer pin.Release()
	bg, stopBg := context.WithCancel(context.Background())
	var bgWait sync.WaitGroup
	defer func() {
		stopBg()
		bgWait.Wait()
	}()
	if o.cacheMax > 0 {
		bgWait.Go(func() { boundCache(bg, log, client.Cache(), int64(o.cacheMax), o.trimEvery) })
	}
	// A daemon started by `ocifs mount` writes its log file; one whose
	// holder runs attached (mount --takeover --foreground, a systemd unit)
	// writes where the holder does, the journal, and rotates nothing.
	ownLog := ready != nil && writesTo(os.Stderr, p.log)
	if ownLog {
		bgWait.Go(func() { keepLogRotated(bg, log, p.log) })
	}
	// A writable mount serves the image at a private lower directory and
	// the overlay at dir; claim the upper before the layers load.
	fuseDir := dir
	var ul *fs.Upper
	if o.writable {
		d, err := writableDirs(e.g.cacheDir, dir, o.upper)
		if err == nil {
			ul, err = fs.ClaimUpper(d, fs.Claim{Image: im.Ref(), ManifestDigest: im.Fetched().ManifestDigest,
				Mountpoint: dir, Force: o.forceUpper, Logger: log})
		}
		if err == nil {
			err = os.MkdirAll(d.Lower, 0o700)
		}
		if err != nil {
			if ul != nil {
				ul.Release()
			}
			im.Close()
			return err
		}
		fuseDir = d.Lower
	}
	// fail undoes what was started when serving cannot begin.
	fail := func(m servedMount, err error) error {
		if m != nil {
			unmountServed(log, m, fuseDir)
		}
		if ul != nil {
			ul.Release()
		}
		im.Close()
		return err
	}
	if ready != nil {
		// A daemon must not keep the directory it was started from busy;
		// every path it needs is absolute from here on.
		if err := os.Chdir("/"); err != nil {
			return fail(nil, err)
		}
	}
	logPlan(log, im)
	stopLoadProgress := sendLoadProgress(ready, im)
	err = im.Load(ctx)
	stopLoadProgress()
	if err != nil {
		return fail(nil, fmt.Errorf("load %s: %w", im.Ref(), err))
	}
	// The merged tree holds what serving needs: a long-lived mount need not
	// keep the layers' entry tables too.
	im.ReleaseEntries()
	// What the image's start-up profile lists is fetched from now on,
	// while the mount comes up and before the program asks.
	im.Replay()
	if o.record > 0 {
		im.StartRecording()
		bgWait.Go(func() { recordMount(bg, log, im, o.record) })
	}
	var m servedMount
	var fm *fs.Mount // go-fuse's, unless the raw server of a takeover serves
	var stopReq <-chan struct{}
	var tk *takeover.Server
	if o.holder != nil {
		tk, err = serveTakeover(log, im, fuseDir, o)
		if err != nil {
			return fail(nil, err)
		}
		m, stopReq = tk, o.holder.StopRequested()
	} else {
		fm, err = im.Mount(ctx, fuseDir, fs.MountOptions{
			AllowOther: o.allowOther, Suid: o.suid, Dev: o.dev, Debug: o.debugFUSE,
			NoPassthrough: o.noPassthru || o.record > 0, // passthrough reads would not be recorded
		})
		if err != nil {
			return fail(nil, withHint(err, needFUSE))
		}
		m = fm
	}
	if ul != nil {
		if err := ul.Mount(fs.OverlayOptions{Suid: o.suid, Dev: o.dev}); err != nil {
			undo(log, ul, fm, dir)
			return fail(nil, err)
		}
	}
	if o.prefetch == "all" {
		im.Prefetch()
	}
	srv, err := serveStats(p.sock, im)
	if err == nil {
		st := mountState{
			PID: os.Getpid(), Image: im.Ref(), Mountpoint: dir, Socket: p.sock, Log: daemonLog(p, ownLog),
			CacheDir: e.g.cacheDir, Metrics: mx.address(),
		}
		if o.holder != nil {
			st.Holder, st.HolderPID = o.holderSocket, os.Getppid()
		}
		err = publishState(p, st)
		if err != nil {
			srv.close()
		}
	}
	if err != nil {
		if ul != nil {
			undo(log, ul, fm, dir)
			return fail(nil, err)
		}
		return fail(m, err)
	}
	if o.holder != nil {
		if err := o.holder.Serving(); err != nil {
			log.Warn("tell the holder this daemon serves", "err", err)
		}
		if tk.Took {
			log.Info("took over the mount's FUSE connection", "path", dir, "pid", os.Getpid())
		}
	}
	mx.ready(time.Since(start))
	if ready != nil {
		_, _ = io.WriteString(ready, "ok\n")
		ready.Close()
		ready = nil
	}
	fmt.Fprintf(e.stdout, "mounted %s at %s (pid %d)\n", im.Ref(), dir, os.Getpid())
	notify(log, func() (bool, error) { return sdnotify.Ready("serving " + im.Ref() + " at " + dir) })

	gone := make(chan struct{})
	go func() {
		m.Wait()
		close(gone)
	}()
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	outside := watchUnmounted(watchCtx, dir)
	select {
	case <-ctx.Done():
		log.Info("signal received; unmounting", "path", dir)
		notify(log, sdnotify.Stopping)
		if ul != nil {
			// The overlay holds the only reference to the FUSE view:
			// unmounting it ends both, in that order.
			fs.UnmountOverlay(log, dir)
			waitGone(log, m, gone, dir)
		} else if unmountServed(log, m, dir) {
			// Detached lazily: open files are served until they close,
			// from what is cached; nothing more is fetched, so a read
			// stuck on an unreachable registry fails rather than holding
			// the daemon. A second signal ends it at once.
			im.StopFetching()
			again := make(chan os.Signal, 1)
			signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
			select {
			case <-gone:
			case <-again:
				log.Warn("second signal: exiting; files still open on the mount get ENOTCONN", "path", dir)
			}
			signal.Stop(again)
		}
	case <-stopReq:
		// An upgrade: the new daemon is loaded and waits for the
		// connection, which outlives this process in the holder.
		log.Info("handing the mount over to a new daemon", "path", dir)
		tk.Stop()
		srv.close()
		err = im.Close()
		log.Info("handed over; exiting", "path", dir)
		return err
	case <-gone:
		log.Info("unmounted from outside; exiting", "path", dir)
	case <-outside:
		log.Info("unmounted from outside; exiting", "path", dir)
		waitGone(log, m, gone, dir)
	}
	srv.close()
	removeState(p)
	if ul != nil {
		ul.Release()
	}
	err = im.Close()
	log.Info("mount ended", "path", dir)
	return err
}

// daemonLog is the log path the state file records: the daemon's log file,
// or "" for --foreground, which logs to the terminal.
// writesTo reports whether f is the file at path.
func writesTo(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

func daemonLog(p mountPaths, daemon bool) string {
	if daemon {
		return p.log
	}
	return ""
}

// unmountServed unmounts m; when files are still open it detaches lazily,
// and the kernel ends the mount when the last of them closes: it then
// reports true, and the caller serves until then.
func unmountServed(log *slog.Logger, m servedMount, dir string) (lazy bool) {
	err := m.Unmount()
	switch {
	case err == nil:
		return false
	case errors.Is(err, fs.ErrMountLingers):
		logLingers(log, dir)
		return false
	}
	log.Warn("unmount busy; detaching lazily: open files are served until they close", "path", dir, "err", err)
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		log.Error("lazy unmount", "path", dir, "err", err)
		return false
	}
	return true
}

// waitGone waits a little for the kernel to end the FUSE connection once
// the mount is gone from this namespace; a copy of it in another mount
// namespace keeps the connection, and exiting ends that copy too.
// A writable mount's overlay hides which device a copy would list, so the
// wait is also capped: the daemon has been told to stop.
func waitGone(log *slog.Logger, m servedMount, gone <-chan struct{}, dir string) {
	ended := make(chan error, 1)
	go func() { ended <- m.WaitEnd() }()
	select {
	case <-gone:
	case err := <-ended:
		if err != nil {
			logLingers(log, dir)
		}
	case <-time.After(30 * time.Second):
		logLingers(log, dir)
	}
}

func logLingers(log *slog.Logger, dir string) {
	log.Warn("unmounted here, but a copy of the mount lives on in another mount namespace (made while it was mounted); "+
		"exiting ends it there too: its readers get ENOTCONN", "path", dir)
}

// watchUnmounted returns a channel closed once dir is no longer a mount
// point in this mount namespace. The kernel ends the FUSE connection when
// the mount goes, unless another namespace holds a copy of it: this is how
// the daemon learns of an umount from outside then.
func watchUnmounted(ctx context.Context, dir string) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, ok, err := findMount(dir); err == nil && !ok {
					close(ch)
					return
				}
			}
		}
	}()
	return ch
}

// logPlan logs each layer's lazy mode before Load, so the log shows what is
// about to be streamed and why.
func logPlan(log *slog.Logger, im *fs.Image) {
	layers := im.Layers()
	log.Info("image resolved", "image", im.Ref(), "digest", im.Fetched().ManifestDigest, "layers", len(layers))
	for i, l := range layers {
		log.Info("layer plan", "n", strconv.Itoa(i+1)+"/"+strconv.Itoa(len(layers)), "layer", l.Digest,
			"size", l.Size, "mode", l.Mode, "why", l.Why)
	}
}

// statsServer serves GET /stats on the mount's unix socket.
type statsServer struct {
	srv  *http.Server
	done chan struct{}
}

func serveStats(path string, im *fs.Image) (*statsServer, error) {
	return serveStatsJSON(path, func() any {
		// pid is the process serving the mount now: a --takeover mount's
		// holder is another, and its daemon changes with every restart.
		return struct {
			fs.Stats
			PID int `json:"pid"`
		}{im.Stats(), os.Getpid()}
	})
}

// serveStatsJSON serves GET /stats on the unix socket path, the JSON of
// what body returns at each request.
func serveStatsJSON(path string, body func() any) (*statsServer, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return nil, fmt.Errorf("stats socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("stats socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body())
	})
	s := &statsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *statsServer) close() {
	_ = s.srv.Close()
	<-s.done
}

// parseRate reads a byte rate such as "800K", "20M" or "1G" (powers of
// 1024); "" is no cap.
func parseRate(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch s[len(s)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	}
	num := s
	if mult > 1 {
		num = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a byte rate such as 800K, 20M or 1G", s)
	}
	return n * mult, nil
}

// daemonServes reports whether a live daemon recorded a mount at dir.
func daemonServes(cacheDir, dir string) bool {
	p, err := pathsFor(cacheDir, dir)
	if err != nil {
		return false
	}
	st, err := readState(p)
	return err == nil && isDaemon(st.PID)
}

// notify tells the service manager (systemd's NOTIFY_SOCKET, when a unit of
// Type=notify runs this mount in the foreground) how the mount is doing.
func notify(log *slog.Logger, send func() (bool, error)) {
	if _, err := send(); err != nil {
		log.Warn("tell the service manager", "err", err)
	}
}

// globalArgs spells out the global flags for a daemon's command line, with
// absolute paths.
func globalArgs(g *globals) []string {
	args := []string{"--cache-dir=" + g.cacheDir}
	if g.configRead != "" {
		// The daemon reads the same file; what the command line set is
		// spelled out after this and wins, as it did here.
		args = append(args, "--config="+g.configRead)
	}
	if g.platform != "" {
		args = append(args, "--platform="+g.platform)
	}
	if g.insecure {
		args = append(args, "--insecure")
	}
	if g.insecureLazy {
		args = append(args, "--insecure-lazy")
	}
	if g.logLevel != "" {
		args = append(args, "--log-level="+g.logLevel)
	}
	if g.hostsDir != "" {
		args = append(args, "--hosts-dir="+g.hostsDir)
	}
	if g.registriesConf != "" {
		args = append(args, "--registries-conf="+g.registriesConf)
	}
	for _, r := range g.indexRepos {
		args = append(args, "--index-repo="+r)
	}
	return args
}
