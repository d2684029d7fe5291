package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/sdnotify"
	"github.com/ocifs/ocifs/fs/takeover"
)

// servedMount is what serveMount needs of a mount: go-fuse's (fs.Mount) or
// the raw protocol server of a --takeover mount (takeover.Server).
type servedMount interface {
	Unmount() error
	Wait()
	WaitEnd() error
}

// holderSocketPath is where the holder of the mount at dir listens.
func holderSocketPath(p mountPaths) string {
	return strings.TrimSuffix(p.sock, ".sock") + ".holder.sock"
}

// setHolderSocket sets the socket the holder of the mount at dir listens
// at in o, and returns the binary daemons are started from.
func setHolderSocket(e *env, dir string, o *mountOpts) (exe string, err error) {
	p, err := pathsFor(e.g.cacheDir, dir)
	if err != nil {
		return "", err
	}
	if exe, err = os.Executable(); err != nil {
		return "", fmt.Errorf("mount: find this binary: %w", err)
	}
	o.holderSocket = holderSocketPath(p)
	return exe, nil
}

// spawnHolder starts `ocifs holder` in its own session, which starts the
// mount daemon and keeps the mount's FUSE connection across its restarts,
// and waits until the daemon reports that the mount answers.
func spawnHolder(ctx context.Context, e *env, image, dir string, o *mountOpts) error {
	exe, err := setHolderSocket(e, dir, o)
	if err != nil {
		return err
	}
	args := append(globalArgs(e.g), "holder", "--socket="+o.holderSocket, "--exe="+exe, "--ready-fd=3", "--")
	args = append(args, daemonArgs(e.g, image, dir, o)...)
	return startDaemon(ctx, e, dir, "mount "+image, args, func(pid int, log string) string {
		return fmt.Sprintf("mounted %s at %s (holder pid %d, log %s; the daemon may be restarted or upgraded without unmounting)\n", image, dir, pid, log)
	})
}

// holdForeground is `ocifs mount --takeover --foreground`: this process is
// the holder (a systemd unit's main process, which a daemon's crash or an
// upgrade leaves running) and starts the daemons itself. It speaks for the
// unit: READY=1 once the first daemon says the mount answers, STOPPING=1 on
// SIGTERM or SIGINT (passed on to the serving daemon, which unmounts); the
// daemons get no NOTIFY_SOCKET. Their logs go to this process's stderr.
func holdForeground(ctx context.Context, e *env, image, dir string, o *mountOpts) error {
	exe, err := setHolderSocket(e, dir, o)
	if err != nil {
		return err
	}
	// Keep no directory busy (every path below is absolute).
	if err := os.Chdir("/"); err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("mount: ready pipe: %w", err)
	}
	notifySocket := os.Getenv(sdnotify.Env)
	sdnotify.Unset()

	// The first daemon's word on its ready pipe: "ok", or why it gave up.
	said := make(chan string, 1)
	go func() {
		defer r.Close()
		lp := newLoadProgress(e, "mount "+image)
		msg := string(lp.read(r))
		lp.stop(msg == "ok\n")
		if msg == "ok\n" {
			fmt.Fprintf(e.stdout, "mounted %s at %s (holder pid %d; the daemon may be restarted or upgraded without unmounting)\n", image, dir, os.Getpid())
			notify(e.log, func() (bool, error) {
				return sdnotify.NotifyAt(notifySocket, "READY=1\nSTATUS=serving "+image+" at "+dir)
			})
		}
		said <- msg
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	held := make(chan struct{})
	var stopping sync.WaitGroup
	stopping.Go(func() {
		select {
		case <-sigs:
			notify(e.log, func() (bool, error) { return sdnotify.NotifyAt(notifySocket, "STOPPING=1") })
		case <-held:
		}
	})
	err = takeover.Hold(ctx, takeover.HolderOptions{
		Socket: o.holderSocket, Exe: exe, Name: daemonName, Args: daemonArgs(e.g, image, dir, o),
		Output: os.Stderr, Ready: w, Logger: e.log,
	})
	w.Close() // Hold closes it once a daemon has it; not if it failed before
	close(held)
	stopping.Wait()
	if msg := <-said; msg != "ok\n" {
		if text := strings.TrimSpace(strings.TrimPrefix(msg, "error: ")); text != "" {
			return errors.New(text)
		}
	}
	return err
}

// holdHere makes this process the holder of a daemon's FUSE connection,
// staying in the foreground (a systemd unit's main process): it runs the
// daemon as its child with this process's own command line plus
// --holder-socket=sock, and starts another whenever one dies. what names
// the daemon in errors and the log.
func holdHere(ctx context.Context, e *env, what, sock string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("%s: find this binary: %w", what, err)
	}
	// Keep no directory busy.
	if err := os.Chdir("/"); err != nil {
		return err
	}
	e.log.Info(what+" holder started", "pid", os.Getpid(), "socket", sock, "exe", exe)
	return takeover.Hold(ctx, takeover.HolderOptions{
		Socket: sock, Exe: exe, Name: daemonName, Args: append(slices.Clone(os.Args[1:]), "--holder-socket="+sock),
		Output: os.Stderr, Logger: e.log,
	})
}

// holderOpts are the flags of the internal `ocifs holder`.
type holderOpts struct {
	socket  string
	exe     string
	readyFD int
}

func holderFlags(set *pflag.FlagSet) runFunc {
	o := &holderOpts{}
	set.StringVar(&o.socket, "socket", "", "unix socket the daemons reach the holder at")
	set.StringVar(&o.exe, "exe", "", "the ocifs binary to start daemons of")
	set.IntVar(&o.readyFD, "ready-fd", 0, "file descriptor handed to the first daemon as its fd 3")
	return func(ctx context.Context, e *env, args []string) error {
		if o.socket == "" || o.exe == "" {
			return &usageError{msg: "holder needs --socket and --exe"}
		}
		// Keep no directory busy.
		if err := os.Chdir("/"); err != nil {
			return err
		}
		var ready *os.File
		if o.readyFD > 0 {
			ready = os.NewFile(uintptr(o.readyFD), "ready-pipe")
		}
		return takeover.Hold(ctx, takeover.HolderOptions{
			Socket: o.socket, Exe: o.exe, Name: daemonName, Args: args,
			Output: os.Stderr, Ready: ready, Logger: e.log,
		})
	}
}

const holderHelp = `
Internal: keeps the FUSE connection of a 'ocifs mount --takeover' across
restarts of its daemon (ARGS is the daemon's command line). Not for use by
hand.
`

func upgradeFlags(set *pflag.FlagSet) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		return runUpgrade(e, args[0])
	}
}

const upgradeHelp = `
Hand the mount at MOUNTPOINT over to a new daemon, started from the ocifs
binary at the path the mount was made with (so: install the new binary there
first, then run this). The new daemon loads the image while the old one
serves; then the old one stops reading, answers what it was answering, and
exits, and the new one takes the FUSE connection over. Readers see a pause,
not an error. Only a mount made with --takeover can be handed over.

Sending SIGHUP to the mount's holder process does the same.

The layer mount of 'ocifs snapshotter --takeover' is handed over the same
way: ocifs upgrade ROOT/layers (the snapshotter's --root, default
/var/lib/ocifs/snapshotter), with the --cache-dir the snapshotter runs with;
so is the mountpoint of 'ocifs store --takeover'.

Examples:
  install -m 755 ./ocifs /usr/local/bin/ocifs
  ocifs upgrade /mnt/app
  ocifs upgrade /var/lib/ocifs/snapshotter/layers
`

// runUpgrade asks the holder of the mount at dir to hand over to a new
// daemon.
func runUpgrade(e *env, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	p, st, err := locateMount(e, abs)
	if err != nil {
		return err
	}
	if st == nil {
		return withHint(fmt.Errorf("upgrade %s: no ocifs mount there (no record in %s)", abs, filepath.Dir(p.state)),
			"mount with: ocifs mount --takeover IMAGE "+abs)
	}
	if st.Holder == "" && strings.HasPrefix(st.Image, "snapshotter ") {
		return withHint(fmt.Errorf("upgrade %s: the snapshotter runs without --takeover: its daemon holds the FUSE connection and cannot hand it over", abs),
			"run it with --takeover (ocifs snapshotter --help); a restart without it ends the reads of running containers")
	}
	if st.Holder == "" {
		return withHint(fmt.Errorf("upgrade %s: the mount was made without --takeover: its daemon holds the FUSE connection and cannot hand it over", abs),
			"unmount it and mount again with --takeover: ocifs unmount "+abs+"; ocifs mount --takeover "+st.Image+" "+abs)
	}
	old := st.PID
	pid, err := takeover.Upgrade(st.Holder)
	if err != nil {
		return fmt.Errorf("upgrade %s: %w", abs, err)
	}
	fmt.Fprintf(e.stdout, "upgraded %s: pid %d serves it now (was %d)\n", abs, pid, old)
	return nil
}

// pinnedRef names im's image by its manifest digest, so the daemon that
// takes over serves the same image even if the tag moved meanwhile.
func pinnedRef(im *fs.Image) string {
	ref := im.Ref()
	if strings.Contains(ref, "@") {
		return ref
	}
	prefix, rest := "", ref
	if strings.HasPrefix(ref, "oci:") {
		prefix, rest = "oci:", ref[len("oci:"):]
	}
	if i := strings.LastIndex(rest, ":"); i > strings.LastIndex(rest, "/") {
		rest = rest[:i]
	}
	return prefix + rest + "@" + im.Fetched().ManifestDigest.String()
}

// serveTakeover serves the loaded image on the connection o.holder has, or
// mounts it at dir and gives the connection to the holder.
func serveTakeover(log *slog.Logger, im *fs.Image, dir string, o *mountOpts) (*takeover.Server, error) {
	raw, err := im.RawFS(0)
	if err != nil {
		return nil, err
	}
	srv, err := takeover.Serve(o.holder, raw, takeover.Options{
		Dir: dir, AllowOther: o.allowOther, Suid: o.suid, Dev: o.dev, Debug: o.debugFUSE, Logger: log,
		Generation: raw.Generation(), Ref: pinnedRef(im),
	})
	if err != nil {
		return nil, withHint(err, needFUSE)
	}
	return srv, nil
}
