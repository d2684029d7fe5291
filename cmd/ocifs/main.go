package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fetch"
)

func main() {
	nameProcess()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err))
}

// Exit statuses, as the CLI contract fixes them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// exitCode maps run's error to the process exit status.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	}
	return exitFailure
}

// usageError is a command line the program cannot act on: an unknown command
// or flag, a wrong number of arguments, a bad flag value. It exits 2 and
// shows the command's usage.
type usageError struct {
	cmd *command // nil for the top level
	msg string
}

func (e *usageError) Error() string { return e.msg }

// hintError carries what the user can do about err; it prints on its own
// line after the error.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }

func withHint(err error, hint string) error { return &hintError{err: err, hint: hint} }

// globals are the flags every command accepts, before or after its name.
type globals struct {
	cacheDir string
	platform string
	insecure bool
	// insecureLazy serves eStargz/zstd:chunked layers lazily even when no
	// digest annotation binds their TOC to the manifest (fs.Options.InsecureLazy).
	insecureLazy bool
	logLevel     string
	// hostsDir and registriesConf configure registry mirrors
	// (fetch.Options.HostsDir, RegistriesConf); "" reads none.
	hostsDir       string
	registriesConf string
	// indexRepos are --index-repo: repositories where indexes of images
	// are looked for after the image's own (fs.Options.IndexRepos).
	indexRepos []string
	// progress is --progress (auto, plain, none); progressEvery is how
	// often plain progress prints a line.
	progress      string
	progressEvery time.Duration
	// config is --config; configRead the file whose settings were applied
	// ("" for none), which a mount's daemon is told to read too.
	config     string
	configRead string
	help       bool
}

func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.cacheDir, "cache-dir", fetch.DefaultCacheDir(), "the cache `DIR`: blobs and indexes by digest, mount state and logs")
	fs.StringVar(&g.platform, "platform", "", "the `os/arch[/variant]` to pick from a multi-platform image (default: this machine)")
	fs.BoolVar(&g.insecure, "insecure", false, "allow plain HTTP or unverified TLS for a non-loopback registry")
	fs.BoolVar(&g.insecureLazy, "insecure-lazy", false, "serve eStargz and zstd:chunked layers lazily even when no digest annotation\nbinds their TOC to the manifest (by default such layers are fetched and verified whole)")
	fs.StringVar(&g.hostsDir, "hosts-dir", "", "registry mirrors from a containerd hosts `DIR` (one directory per registry with a hosts.toml:\nmirrors in order, server, capabilities, ca, skip_verify, header), usually "+fetch.DefaultHostsDir+";\na mirror that fails hands the request to the next host, and digests make any mirror safe (default: none)")
	fs.StringVar(&g.registriesConf, "registries-conf", "", "registry mirrors, rewrites and blocks from a containers-registries.conf(5) `FILE` and its FILE.d,\nusually "+fetch.DefaultRegistriesConf+" (default: none; names it matches do not use --hosts-dir)")
	fs.Var((*repoList)(&g.indexRepos), "index-repo", "also look for ocifs indexes of an image in the index repository `REGISTRY/REPO`, by the image's manifest\ndigest, after the image's own repository (repeatable, in order); 'index build --push' stores them in the first.\nFor images one cannot push to; what is found there is verified as from the image's repository (default: none)")
	fs.StringVar(&g.progress, "progress", progressAuto, "progress of long work (pull, index build, cache verify, a mount streaming its layers) on stderr:\n`auto` (bars on a terminal, else plain), plain (a line every 5s) or none")
	fs.DurationVar(&g.progressEvery, "progress-interval", defaultProgressEvery, "how often plain progress prints a line")
	_ = fs.MarkHidden("progress-interval")
	fs.StringVar(&g.logLevel, "log-level", "", "log lines on stderr at `LEVEL` and above: debug, info, warn or error\n(default info for mount, warn for the other commands)")
	fs.StringVar(&g.config, "config", "", "read flag settings from the TOML `FILE` (default "+defaultConfig+" if it exists):\nglobal flags at the top, a command's under [COMMAND]; the command line wins")
	fs.BoolVarP(&g.help, "help", "h", false, "show help")
}

// repoList is a repeatable flag of repositories (REGISTRY/REPO), each
// checked as it is set; one value may list several, separated by commas.
type repoList []string

func (l *repoList) String() string { return strings.Join(*l, ",") }

func (l *repoList) Set(v string) error {
	for _, r := range strings.Split(v, ",") {
		if _, err := fetch.ParseRepository(r); err != nil {
			return err
		}
		*l = append(*l, r)
	}
	return nil
}

// Type ends in "Slice": the configuration file may give an array (config.go).
func (l *repoList) Type() string { return "repoSlice" }

// repoName is a flag naming one repository (REGISTRY/REPO), checked as it
// is set.
type repoName string

func (r *repoName) String() string { return string(*r) }

func (r *repoName) Set(v string) error {
	if _, err := fetch.ParseRepository(v); err != nil {
		return err
	}
	*r = repoName(v)
	return nil
}

func (r *repoName) Type() string { return "repository" }

// pushIndexUsage is the help of the daemons' --push-index-to.
const pushIndexUsage = "after streaming a layer that has no index anywhere, push the index built here to the index repository\n" +
	"`REGISTRY/REPO` (needs push access there; also looked in, like --index-repo), so other machines read it lazily (default: off)"

// env is what a command runs with: its streams, the global flags, the logger.
type env struct {
	stdout, stderr io.Writer
	g              *globals
	log            *slog.Logger
	// onRange, when set, observes the fetch clients' range reads (metrics).
	onRange func(fetch.RangeRead)
}

// run executes one ocifs command line (without the program name), printing
// errors to stderr as `ocifs: <error>` with a hint where one is known. Its
// error maps to the exit status with exitCode.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr, g: &globals{}}
	err := dispatch(ctx, e, args)
	if err != nil {
		report(stderr, err)
	}
	return err
}

// report prints err, its hint, and for a usage error the usage to follow.
func report(w io.Writer, err error) {
	var pe *printedError
	if errors.As(err, &pe) {
		return
	}
	fmt.Fprintf(w, "ocifs: %s\n", err)
	if h := hint(err); h != "" {
		fmt.Fprintf(w, "ocifs: %s\n", h)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if ue.cmd != nil {
			fmt.Fprintf(w, "usage: %s\nRun 'ocifs %s --help' for details and examples.\n", ue.cmd.synopsis(), ue.cmd.name)
		} else {
			fmt.Fprintf(w, "usage: ocifs [global flags] COMMAND [flags] [args]\nRun 'ocifs --help' for the commands and examples.\n")
		}
	}
}

// printedError is an error whose text has already reached stderr (a mount
// daemon's failure, relayed by its parent); report stays silent.
type printedError struct{ err error }

func (e *printedError) Error() string { return e.err.Error() }
func (e *printedError) Unwrap() error { return e.err }

// hint says what to do next about err, or "".
func hint(err error) string {
	var he *hintError
	var fh interface{ Hint() string } // fs's errors with a hint (the writable layer's)
	switch {
	case errors.As(err, &he):
		return he.hint
	case errors.As(err, &fh):
		return fh.Hint()
	case errors.Is(err, fetch.ErrDigest): // a shared kind: matches index/toc's and fs's mismatches too
		return "the source served bytes that do not match their digest; nothing bad was cached, retry or report it to the image's publisher"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return ""
}

// errorText is err and its hint as report prints them, on one line, for
// sending over a mount daemon's ready pipe.
func errorText(err error) string {
	s := err.Error()
	if h := hint(err); h != "" {
		s += "\nocifs: " + h
	}
	return s
}

func dispatch(ctx context.Context, e *env, args []string) error {
	g := e.g
	top := newFlagSet("ocifs")
	g.register(top)
	top.SetInterspersed(false)
	if err := top.Parse(args); err != nil {
		return &usageError{msg: err.Error()}
	}
	rest := top.Args()
	if len(rest) == 0 {
		if g.help {
			return printMainHelp(e.stdout)
		}
		return &usageError{msg: "no command given"}
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		return helpCommand(e, rest)
	}
	grp, ok := lookupGroup(name)
	if !ok {
		return &usageError{msg: fmt.Sprintf("unknown command %q", name)}
	}
	cmd := grp.cmd
	if len(grp.subs) > 0 {
		// The subcommand is the next word; global flags may come first.
		sub := newFlagSet("ocifs " + name)
		sub.AddFlagSet(top)
		sub.SetInterspersed(false)
		if err := sub.Parse(rest); err != nil {
			return &usageError{cmd: grp.cmd, msg: err.Error()}
		}
		rest = sub.Args()
		if len(rest) == 0 {
			if g.help {
				return printCommandHelp(e.stdout, grp.cmd)
			}
			return &usageError{cmd: grp.cmd, msg: fmt.Sprintf("%s needs a subcommand: %s", name, strings.Join(grp.subNames(), ", "))}
		}
		c, ok := grp.sub(rest[0])
		if !ok {
			return &usageError{cmd: grp.cmd, msg: fmt.Sprintf("unknown %s subcommand %q", name, rest[0])}
		}
		cmd, rest = c, rest[1:]
	}
	fs := newFlagSet("ocifs " + cmd.name)
	fs.AddFlagSet(top)
	var runner runFunc
	if cmd.flags != nil {
		runner = cmd.flags(fs)
	}
	if err := fs.Parse(rest); err != nil {
		return &usageError{cmd: cmd, msg: err.Error()}
	}
	if g.help {
		return printCommandHelp(e.stdout, cmd)
	}
	if err := loadConfig(g, cmd, fs); err != nil {
		return err
	}
	pos := fs.Args()
	if len(pos) < cmd.minArgs || (cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs) {
		return &usageError{cmd: cmd, msg: argCountMessage(cmd, len(pos))}
	}
	if _, err := fetch.ParsePlatform(g.platform); err != nil {
		return &usageError{cmd: cmd, msg: "--platform: " + err.Error()}
	}
	if err := checkProgress(g.progress); err != nil {
		return &usageError{cmd: cmd, msg: err.Error()}
	}
	level, err := parseLevel(g.logLevel, cmd.daemon)
	if err != nil {
		return &usageError{cmd: cmd, msg: err.Error()}
	}
	if g.cacheDir == "" {
		return &usageError{cmd: cmd, msg: "--cache-dir: empty directory name"}
	}
	for _, p := range []*string{&g.cacheDir, &g.hostsDir, &g.registriesConf} {
		if *p == "" {
			continue
		}
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
	e.log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	if runner == nil {
		// Say exactly this, with no "ocifs: " in front: it names the issue.
		fmt.Fprintln(e.stderr, cmd.notYet)
		return &printedError{cmd.notYet}
	}
	err = runner(ctx, e, pos)
	var ue *usageError
	if errors.As(err, &ue) && ue.cmd == nil {
		ue.cmd = cmd
	}
	return err
}

// defaultCacheDirText names the default cache for help text.
func defaultCacheDirText() string {
	return "/var/cache/ocifs as root, else $XDG_CACHE_HOME/ocifs or ~/.cache/ocifs"
}

func argCountMessage(cmd *command, n int) string {
	switch {
	case cmd.maxArgs == 0:
		return fmt.Sprintf("%s takes no arguments, got %d", cmd.name, n)
	case n < cmd.minArgs:
		return fmt.Sprintf("%s needs %s, got %d argument(s)", cmd.name, cmd.argNames, n)
	}
	return fmt.Sprintf("%s takes %s, got %d arguments", cmd.name, cmd.argNames, n)
}

// newFlagSet returns a flag set that reports errors to its caller and prints
// nothing itself.
func newFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	return fs
}

// parseLevel turns --log-level into a slog level; "" is info for the mount
// daemon, whose log is its only voice, and warn for one-shot commands.
func parseLevel(s string, daemon bool) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "":
		if daemon {
			return slog.LevelInfo, nil
		}
		return slog.LevelWarn, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", s)
}

// newClient opens the cache and returns a fetch client for the global flags.
func newClient(e *env) (*fetch.Client, error) {
	c, err := fetch.New(fetch.Options{
		CacheDir:       e.g.cacheDir,
		Platform:       e.g.platform,
		Insecure:       e.g.insecure,
		Logger:         e.log,
		HostsDir:       e.g.hostsDir,
		RegistriesConf: e.g.registriesConf,
		ObserveRange:   e.onRange,
	})
	if err != nil && (e.g.hostsDir != "" || e.g.registriesConf != "") && !errors.Is(err, fetch.ErrNotFound) {
		return nil, withHint(err, "fix the mirror configuration (--hosts-dir, --registries-conf) or leave it out")
	}
	return c, err
}
