package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs"
)

// rootEnv names, for a command run by `ocifs profile record --no-chroot`,
// the directory the image is mounted at.
const rootEnv = "OCIFS_ROOT"

// defaultRecordFor is how long `ocifs mount --record-profile` records when
// no duration is given.
const defaultRecordFor = 30 * time.Second

const profileHelp = `
A start-up profile is what a program reads of an image in its first
seconds: which ranges of which layers, in the order it first read them.
Recorded once, it is kept in the cache and, with --push, in the registry
beside the image (an artifact whose subject is the image manifest, type
application/vnd.ocifs.profile.v1; the sha256-<hex> tag where the registry
lacks the referrers API), and every later mount, snapshot (ocifs
snapshotter) and layer store (ocifs store) of the image, on any machine,
replays it: right after the file tables are known, the profile's pieces are
fetched in parallel, before the program asks for them.

A pushed profile also carries a pack: the bytes it lists, read through the
verified read path when it is pushed and compressed again apart from the
layers (zstd frames of at most 256 KiB, each named by its sha256 in the
profile). A gzip layer can only be entered at a deflate block end and is
verified a span (1 MiB) at a time, so a start-up's scattered reads fetch
about twice the compressed bytes they use; from the pack, a replay fetches
those bytes alone. The pack is trusted as an index from the registry is,
as bytes its author read from the verified layer: each frame is checked
against its digest before it is decoded, a frame that fails is read from
the layer's spans instead, and once a layer's own bytes are complete and
verified every frame used is compared with them; the files a wrong frame
held bytes of then fail with EIO and one error line says so. 'ocifs mount
--profile=spans' (or profile = "spans" in the config file) replays from
the layers' spans alone and trusts no pack; --no-pack pushes none.

Without its pack a profile only orders and prefetches: every byte is
fetched and checked through the normal read path. A profile that lies
(another image's, ranges past a layer's end, huge counts) is cut to the
image's own layers and size (at most 2 GiB) and can only waste that much
bandwidth. 'ocifs mount --profile=none' (or profile = "none" under [mount]
in the config file) turns the replay off.

'profile record' mounts IMAGE read-only at a temporary directory, runs CMD
chrooted there with chroot(8), which finds CMD on the image's PATH (as root,
with the image config's Env, but no /proc, /dev or network mounted inside: fine for 'python3 --version', not for a server),
records what it reads until it exits (or --duration passes: then it is
killed), and saves the profile in the cache; --push also stores it in the
registry. A CMD that fails saves nothing. With --no-chroot, CMD runs on this
machine instead, with $OCIFS_ROOT naming the mountpoint (for a CMD that sets
up its own container, or reads the files itself). 'ocifs mount
--record-profile[=DURATION]' records a live mount the same way.

Examples:
  ocifs profile record --push registry.example.com/app:1.4 -- python3 -c 'import app'
  ocifs profile record --runs 3 --push registry.example.com/app:1.4 -- /app/server --check
  ocifs profile record --duration 10s alpine:3.20 -- /bin/sh -c 'ls -R /usr'
  ocifs profile record --no-chroot app:1.4 -- sh -c 'cat $OCIFS_ROOT/etc/os-release'
  ocifs profile show registry.example.com/app:1.4
  ocifs profile push registry.example.com/app:1.4
`

// profileRecordFlags is `ocifs profile record [flags] IMAGE -- CMD [ARG...]`.
func profileRecordFlags(set *pflag.FlagSet) runFunc {
	push := set.Bool("push", false, "also store the profile in the registry, as a referrer of the image manifest")
	dur := set.Duration("duration", 0, "stop recording (and kill CMD) after `DURATION`; 0 records until CMD exits")
	noChroot := set.Bool("no-chroot", false, "run CMD on this machine, not chrooted into the image; $"+rootEnv+" names the mountpoint")
	noPack := set.Bool("no-pack", false, "with --push, push the profile without its pack (the bytes it read, packed apart from the layers)")
	runs := set.Int("runs", 1, "run CMD `N` times, each on a fresh mount, and record what any run read: a program whose reads vary\nfrom run to run (threads, the kernel's read-ahead) then finds more of them in the profile")
	return func(ctx context.Context, e *env, args []string) error {
		if set.ArgsLenAtDash() != 1 || len(args) < 2 {
			return &usageError{msg: "profile record needs IMAGE -- CMD [ARG...] (the command after a --)"}
		}
		if *dur < 0 {
			return &usageError{msg: "--duration: negative"}
		}
		if *runs < 1 || *runs > 10 {
			return &usageError{msg: "--runs: from 1 to 10"}
		}
		return profileRecord(ctx, e, args[0], args[1:], recordOpts{push: *push, noChroot: *noChroot, noPack: *noPack, dur: *dur, runs: *runs})
	}
}

// recordOpts are the flags of `ocifs profile record`.
type recordOpts struct {
	push, noChroot, noPack bool
	dur                    time.Duration
	runs                   int
}

func profileRecord(ctx context.Context, e *env, ref string, argv []string, o recordOpts) error {
	if err := checkFUSE(); err != nil {
		return err
	}
	// The profile is of what the program reads, not of an older one.
	im, err := resolveImageWith(ctx, e, ref, func(opts *fs.Options) { opts.NoProfile, opts.NoProfilePack = true, o.noPack })
	if err != nil {
		return err
	}
	defer im.Close()
	if err := im.Load(ctx); err != nil {
		return fmt.Errorf("load %s: %w", im.Ref(), err)
	}
	dir, err := os.MkdirTemp("", "ocifs-profile-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	start := time.Now()
	im.StartRecording()
	// Each run on a mount of its own, so that its page cache starts cold
	// and the kernel asks for every page again: the profile is the union
	// of what the runs read, in first-access order.
	for run := 1; run <= o.runs; run++ {
		if err := recordRun(ctx, e, im, dir, argv, o); err != nil {
			im.StopRecording()
			return err
		}
	}
	p := im.StopRecording()
	if len(p.Ranges) == 0 {
		return withHint(fmt.Errorf("profile record: %s read nothing of the image; nothing saved", argv[0]),
			"with --no-chroot, CMD must read the files under $"+rootEnv)
	}
	if err := im.SaveProfile(p); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "recorded %d ranges (%s) of %d layers in %s; saved in the cache\n",
		len(p.Ranges), humanBytes(p.Bytes()), len(p.Layers), time.Since(start).Round(time.Millisecond))
	if o.push {
		d, err := im.PushProfile(ctx, p)
		if err != nil {
			return fmt.Errorf("push profile of %s: %w", im.Ref(), err)
		}
		fmt.Fprintf(e.stdout, "pushed profile artifact %s as a referrer of %s\n", d.Digest, im.Fetched().ManifestDigest)
	}
	return nil
}

// recordRun mounts im at dir, runs argv there while im records, and
// unmounts.
func recordRun(ctx context.Context, e *env, im *fs.Image, dir string, argv []string, o recordOpts) error {
	// Passthrough would hand whole files to the kernel, which would read
	// them without a word to the recorder.
	m, err := im.Mount(ctx, dir, fs.MountOptions{NoPassthrough: true})
	if err != nil {
		return withHint(err, needFUSE)
	}
	defer func() {
		if err := m.Unmount(); err != nil && !errors.Is(err, fs.ErrMountLingers) {
			e.log.Warn("unmount busy; detaching", "path", dir, "err", err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	}()
	cmd, err := recordedCommand(im, dir, argv, o.noChroot)
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("profile record: start %s: %w", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var timeout <-chan time.Time
	if o.dur > 0 {
		t := time.NewTimer(o.dur)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case err = <-exited:
		if err != nil {
			return fmt.Errorf("profile record: %s: %w; nothing saved (a failed start-up is not worth replaying)", argv[0], err)
		}
	case <-timeout:
		_ = cmd.Process.Kill()
		<-exited
		e.log.Info("recording stopped after --duration; the command was killed", "duration", o.dur)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("profile record: interrupted; nothing saved: %w", ctx.Err())
	}
	return nil
}

// recordedCommand is argv run chrooted at root (the image's mountpoint),
// with the image config's environment; or, noChroot, run here with
// $OCIFS_ROOT set to root.
//
// It goes through chroot(8), not SysProcAttr.Chroot: Go starts a child
// with vfork, which holds the starting thread until the child's execve
// returns, and an execve of a program on this very mount needs this
// process to serve it. chroot(8) is exec'd from this machine, then finds
// and execs the program inside the image, on the image's PATH.
func recordedCommand(im *fs.Image, root string, argv []string, noChroot bool) (*exec.Cmd, error) {
	if noChroot {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), rootEnv+"="+root)
		return cmd, nil
	}
	chroot, err := exec.LookPath("chroot")
	if err != nil {
		if chroot, err = exec.LookPath("/usr/sbin/chroot"); err != nil {
			return nil, withHint(fmt.Errorf("profile record: chroot(8) not found: %w", err), "install coreutils, or use --no-chroot")
		}
	}
	env := slices.Clone(im.Fetched().Config.Config.Env)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	cmd := exec.Command(chroot, append([]string{root}, argv...)...)
	cmd.Env, cmd.Dir = env, "/"
	return cmd, nil
}

// profileShowOutput is `ocifs profile show --json`.
type profileShowOutput struct {
	Image          string         `json:"image"`
	ManifestDigest digest.Digest  `json:"manifest_digest"`
	Source         string         `json:"source"`
	Bytes          int64          `json:"bytes"`
	Layers         []showLayer    `json:"layers"`
	Ranges         []profileRange `json:"ranges"`
	Pack           *showPack      `json:"pack,omitempty"`
}

// showPack is the profile's pack: its blob, frames, and the bytes they
// hold and take.
type showPack struct {
	Digest digest.Digest `json:"digest"`
	Frames int           `json:"frames"`
	Bytes  int64         `json:"bytes"`  // uncompressed
	Stored int64         `json:"stored"` // the blob's size
}

type showLayer struct {
	Digest digest.Digest `json:"digest"`
	Ranges int           `json:"ranges"`
	Bytes  int64         `json:"bytes"`
}

type profileRange struct {
	Layer int   `json:"layer"`
	Off   int64 `json:"off"`
	Len   int64 `json:"len"`
}

// profileShowFlags is `ocifs profile show [--json] IMAGE`.
func profileShowFlags(set *pflag.FlagSet) runFunc {
	asJSON := set.Bool("json", false, "print one JSON object, with every range")
	return func(ctx context.Context, e *env, args []string) error {
		im, err := resolveImageWith(ctx, e, args[0], nil)
		if err != nil {
			return err
		}
		defer im.Close()
		p, src, err := im.FindProfile(ctx)
		if err != nil {
			return err
		}
		if p == nil {
			return withHint(fmt.Errorf("%s has no start-up profile, neither in the cache nor in the registry", im.Ref()),
				"record one: ocifs profile record --push "+args[0]+" -- CMD...")
		}
		out := profileShowOutput{Image: im.Ref(), ManifestDigest: im.Fetched().ManifestDigest, Source: src, Bytes: p.Bytes(),
			Layers: make([]showLayer, len(p.Layers)), Ranges: make([]profileRange, len(p.Ranges))}
		for i, d := range p.Layers {
			out.Layers[i].Digest = d
		}
		for i, r := range p.Ranges {
			out.Layers[r.Layer].Ranges++
			out.Layers[r.Layer].Bytes += r.Len
			out.Ranges[i] = profileRange{r.Layer, r.Off, r.Len}
		}
		if pk := p.Pack; pk != nil {
			out.Pack = &showPack{Digest: pk.Digest, Frames: len(pk.Frames), Stored: pk.Size}
			for _, f := range pk.Frames {
				out.Pack.Bytes += f.Len
			}
		}
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		}
		fmt.Fprintf(e.stdout, "image     %s\nmanifest  %s\nsource    %s\nranges    %d (%s)\n", out.Image, out.ManifestDigest,
			src, len(p.Ranges), humanBytes(p.Bytes()))
		if pk := out.Pack; pk != nil {
			fmt.Fprintf(e.stdout, "pack      %s: %d frames, %s in %s\n", pk.Digest, pk.Frames, humanBytes(pk.Bytes), humanBytes(pk.Stored))
		} else {
			fmt.Fprintf(e.stdout, "pack      none (every byte from the layers' spans)\n")
		}
		fmt.Fprintln(e.stdout)
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "LAYER\tDIGEST\tRANGES\tBYTES")
		for i, l := range out.Layers {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", i, l.Digest, l.Ranges, humanBytes(l.Bytes))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		const first = 20
		fmt.Fprintf(e.stdout, "\nfirst ranges read (layer, offset, length):\n")
		for i, r := range p.Ranges {
			if i == first {
				fmt.Fprintf(e.stdout, "  ... %d more (--json lists them all)\n", len(p.Ranges)-first)
				break
			}
			fmt.Fprintf(e.stdout, "  %d  %d  %d\n", r.Layer, r.Off, r.Len)
		}
		return nil
	}
}

// checkProfileMode checks a --profile value.
func checkProfileMode(mode string) error {
	switch mode {
	case "auto", "spans", "none":
		return nil
	}
	return &usageError{msg: fmt.Sprintf("--profile: %q is not auto, spans or none", mode)}
}

// profilePushFlags is `ocifs profile push IMAGE`: the profile in the cache
// (recorded by a mount) to the registry.
func profilePushFlags(set *pflag.FlagSet) runFunc {
	noPack := set.Bool("no-pack", false, "push the profile without its pack (the bytes it read, packed apart from the layers)")
	return func(ctx context.Context, e *env, args []string) error {
		im, err := resolveImageWith(ctx, e, args[0], func(o *fs.Options) { o.NoRemoteIndex, o.NoProfilePack = true, *noPack })
		if err != nil {
			return err
		}
		defer im.Close()
		// NoRemoteIndex: FindProfile looks in the cache alone.
		p, _, err := im.FindProfile(ctx)
		if err != nil {
			return err
		}
		if p == nil {
			return withHint(fmt.Errorf("%s: no start-up profile in the cache %s", im.Ref(), e.g.cacheDir),
				"record one: ocifs profile record IMAGE -- CMD..., or ocifs mount --record-profile")
		}
		if !*noPack {
			// The pack is read through the layers' read paths.
			if err := im.Load(ctx); err != nil {
				return withHint(fmt.Errorf("load %s: %w", im.Ref(), err), "or push the profile alone: ocifs profile push --no-pack IMAGE")
			}
		}
		d, err := im.PushProfile(ctx, p)
		if err != nil {
			return fmt.Errorf("push profile of %s: %w", im.Ref(), err)
		}
		fmt.Fprintf(e.stdout, "pushed profile artifact %s (%d ranges, %s) as a referrer of %s\n", d.Digest, len(p.Ranges),
			humanBytes(p.Bytes()), im.Fetched().ManifestDigest)
		return nil
	}
}

// recordMount records the reads of a mount's files for d (or until ctx
// ends: the mount went away), then saves the profile in the cache.
func recordMount(ctx context.Context, log *slog.Logger, im *fs.Image, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	p := im.StopRecording()
	if p == nil || len(p.Ranges) == 0 {
		log.Info("start-up profile: nothing was read while recording; nothing saved")
		return
	}
	if err := im.SaveProfile(p); err != nil {
		log.Error("saving the start-up profile", "err", err)
		return
	}
	log.Info("start-up profile recorded and saved in the cache (ocifs profile push IMAGE stores it in the registry)",
		"ranges", len(p.Ranges), "bytes", p.Bytes(), "layers", len(p.Layers))
}
