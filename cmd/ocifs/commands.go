package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
)

// runFunc runs a command with its positional arguments, after flags parsed.
type runFunc func(ctx context.Context, e *env, args []string) error

// command is one ocifs command (or subcommand, named "cache prune").
type command struct {
	name     string
	argNames string // positional arguments as the synopsis shows them
	short    string // one line for the command list
	help     string // description, examples and notes for --help
	minArgs  int
	maxArgs  int  // -1: no limit
	daemon   bool // logs at info by default: its log is how it talks
	hidden   bool // internal: not in the command list

	// flags defines the command's flags on fs and returns the function that
	// runs it. Nil for a command that is not built yet (notYet).
	flags  func(fs *pflag.FlagSet) runFunc
	notYet error
}

func (c *command) synopsis() string {
	s := "ocifs " + c.name
	if c.flags != nil {
		s += " [flags]"
	}
	if c.argNames != "" {
		s += " " + c.argNames
	}
	return s
}

// group is a top-level command, with its subcommands if it has any.
type group struct {
	cmd  *command
	subs []*command
}

func (g group) sub(name string) (*command, bool) {
	for _, c := range g.subs {
		if c.name == g.cmd.name+" "+name {
			return c, true
		}
	}
	return nil, false
}

func (g group) subNames() []string {
	var names []string
	for _, c := range g.subs {
		names = append(names, strings.TrimPrefix(c.name, g.cmd.name+" "))
	}
	return names
}

// commands is the command table, in the order --help lists it.
var commands = []group{
	{cmd: &command{
		name: "mount", argNames: "IMAGE MOUNTPOINT", minArgs: 2, maxArgs: 2, daemon: true,
		short: "mount an image lazily at MOUNTPOINT; returns once the mount answers",
		help:  mountHelp, flags: mountFlags,
	}},
	{cmd: &command{
		name: "store", argNames: "MOUNTPOINT", minArgs: 1, maxArgs: 1, daemon: true,
		short: "serve podman / CRI-O as an additional layer store: containers start lazily",
		help:  storeHelp, flags: storeFlags,
	}},
	{cmd: &command{
		name: "unmount", argNames: "MOUNTPOINT", minArgs: 1, maxArgs: 1,
		short: "unmount and stop its daemon; the cache stays",
		help:  unmountHelp, flags: unmountFlags,
	}},
	{cmd: &command{
		name: "upgrade", argNames: "MOUNTPOINT", minArgs: 1, maxArgs: 1,
		short: "hand a --takeover mount over to a new daemon of the installed binary",
		help:  upgradeHelp, flags: upgradeFlags,
	}},
	{cmd: &command{
		name: "holder", argNames: "-- ARGS...", minArgs: 1, maxArgs: -1, daemon: true, hidden: true,
		short: "internal: keeps a --takeover mount's FUSE connection", help: holderHelp, flags: holderFlags,
	}},
	{cmd: &command{
		name: "stats", argNames: "MOUNTPOINT", minArgs: 1, maxArgs: 1,
		short: "what a mount fetched, served and verified",
		help:  statsHelp, flags: statsFlags,
	}},
	{cmd: &command{
		name: "snapshotter", minArgs: 0, maxArgs: 0, daemon: true,
		short: "serve containerd (CRI) as a remote snapshotter: containers start lazily",
		help:  snapshotterHelp, flags: snapshotterFlags,
	}},
	{cmd: &command{
		name: "inspect", argNames: "IMAGE", minArgs: 1, maxArgs: 1,
		short: "manifest, config, layers, and the lazy mode of each layer and why",
		help:  inspectHelp, flags: inspectFlags,
	}},
	{cmd: &command{
		name: "ls", argNames: "IMAGE [PATH]", minArgs: 1, maxArgs: 2,
		short: "list a directory of the image without mounting or pulling",
		help:  lsHelp, flags: lsFlags,
	}},
	{cmd: &command{
		name: "cat", argNames: "IMAGE PATH", minArgs: 2, maxArgs: 2,
		short: "write one file of the image to stdout",
		help:  catHelp, flags: catFlags,
	}},
	{cmd: &command{
		name: "pull", argNames: "IMAGE DIR", minArgs: 2, maxArgs: 2,
		short: "full pull and unpack of the merged root file system into DIR",
		help:  pullHelp, flags: pullFlags,
	}},
	{
		cmd: &command{name: "index", argNames: "build", short: "build layer indexes for lazy reads", help: indexHelp},
		subs: []*command{{
			name: "index build", argNames: "IMAGE...", minArgs: 1, maxArgs: -1,
			short: "index every gzip/tar layer; --push stores it as a referrer",
			help:  indexHelp, flags: indexBuildFlags,
		}},
	},
	{
		cmd: &command{name: "profile", argNames: "record|show|push", short: "record a start-up profile; every later mount prefetches it", help: profileHelp},
		subs: []*command{
			{name: "profile record", argNames: "IMAGE -- CMD [ARG...]", minArgs: 2, maxArgs: -1,
				short: "run CMD in the image and record what it reads; --push stores it beside the image", help: profileHelp, flags: profileRecordFlags},
			{name: "profile show", argNames: "IMAGE", minArgs: 1, maxArgs: 1,
				short: "print the image's profile (from the cache, else the registry)", help: profileHelp, flags: profileShowFlags},
			{name: "profile push", argNames: "IMAGE", minArgs: 1, maxArgs: 1,
				short: "store the profile in the cache (from mount --record-profile) in the registry", help: profileHelp, flags: profilePushFlags},
		},
	},
	{cmd: &command{
		name: "bench", minArgs: 0, maxArgs: 0,
		short: "lazy mount vs full pull + unpack vs overlayfs vs containerd",
		help:  benchHelp, flags: benchFlags,
	}},
	{
		cmd: &command{name: "cache", argNames: "ls|du|prune|verify", short: "the digest-addressed cache", help: cacheHelp},
		subs: []*command{
			{name: "cache ls", minArgs: 0, maxArgs: 0, short: "list cached entries", help: cacheHelp, flags: cacheLsFlags},
			{name: "cache du", minArgs: 0, maxArgs: 0, short: "total size per kind", help: cacheHelp, flags: cacheDuFlags},
			{name: "cache prune", minArgs: 0, maxArgs: 0, short: "remove old entries", help: cacheHelp, flags: cachePruneFlags},
			{name: "cache verify", minArgs: 0, maxArgs: 0, short: "hash every blob again, drop damaged ones", help: cacheHelp, flags: cacheVerifyFlags},
		},
	},
}

func lookupGroup(name string) (group, bool) {
	for _, g := range commands {
		if g.cmd.name == name {
			return g, true
		}
	}
	return group{}, false
}

// helpCommand serves `ocifs help [COMMAND [SUBCOMMAND]]`.
func helpCommand(e *env, args []string) error {
	if len(args) == 0 {
		return printMainHelp(e.stdout)
	}
	g, ok := lookupGroup(args[0])
	if !ok {
		return &usageError{msg: fmt.Sprintf("help: unknown command %q", args[0])}
	}
	if len(args) > 1 {
		if c, ok := g.sub(args[1]); ok {
			return printCommandHelp(e.stdout, c)
		}
	}
	return printCommandHelp(e.stdout, g.cmd)
}

const mainHelp = `ocifs mounts an OCI container image as a directory without pulling it first.

Lazy means: a mount answers as soon as the image's file tables are known, and
a read fetches only what it needs with Range requests: the spans of a gzip or
plain tar layer that has an ocifs index (in the cache, or in the registry
beside the image after 'ocifs index build --push'), or the chunks of an
eStargz or zstd:chunked layer, whose TOC needs no index. Every byte is checked
before it is served (a span or chunk against its digest, a whole layer against
the manifest and config) and kept in the cache, so nothing is fetched twice.
A layer with no index anywhere is streamed once on the first mount, verified,
and indexed into the cache; later mounts of any image sharing it are lazy.
After mounting, the rest of each layer is fetched in the background, slowing
down while reads wait (--prefetch=none stops it). An image with a recorded
start-up profile ('ocifs profile record') has what its program reads first
fetched right at mount, in parallel, before the program asks.

Usage:
  ocifs [global flags] COMMAND [flags] [args]

Commands:
%s
Examples:
  ocifs mount registry.example.com/app:1.4 /mnt/app
  ls /mnt/app/etc && cat /mnt/app/etc/os-release
  ocifs stats --json /mnt/app | jq .bytes_fetched
  ocifs unmount /mnt/app
  ocifs inspect docker.io/library/alpine:3.20
  ocifs cat oci:./layout:v1 /etc/os-release
  ocifs ls -l localhost:5000/app@sha256:4f6e... /usr/bin

IMAGE is [registry/]repository[:tag][@sha256:...] with Docker's defaults
(docker.io, library/, :latest), or an OCI image layout on disk:
oci:PATH[:tag] or oci:PATH@sha256:... Registries on localhost or 127.0.0.1
may use plain HTTP. Credentials come from docker/podman login.

Global flags (before or after the command):
%s
Every flag can be set in /etc/ocifs/config.toml (--config FILE): global
flags at the top, a command's under [mount], [cache.prune] and so on, spelled
as on the command line without dashes; the command line wins:

  cache-dir = "/var/cache/ocifs"
  [mount]
  cache-max = "20G"

Logs go to stderr. A mount's daemon writes its log to
<cache-dir>/mounts/<name>.log; 'ocifs mount' prints the path.

To unmount: 'ocifs unmount MOUNTPOINT' (or umount MOUNTPOINT; the daemon then
exits by itself). The cache stays; 'ocifs cache prune' trims it.

The cache (default %s) holds blobs, uncompressed layers and
indexes by digest; mounts of other images that share a layer reuse it.

Exit status: 0 success, 1 failure, 2 usage error.
Run 'ocifs COMMAND --help' for a command's flags and examples.
`

func printMainHelp(w io.Writer) error {
	var list strings.Builder
	for _, g := range commands {
		if g.cmd.hidden {
			continue
		}
		name := g.cmd.name
		if g.cmd.argNames != "" && len(g.subs) > 0 {
			name += " " + g.cmd.argNames
		}
		fmt.Fprintf(&list, "  %-18s %s\n", name, g.cmd.short)
	}
	_, err := fmt.Fprintf(w, mainHelp, list.String(), globalFlagUsages(), defaultCacheDirText())
	return err
}

func globalFlagUsages() string {
	fs := newFlagSet("ocifs")
	(&globals{}).register(fs)
	return flagUsages(fs)
}

// flagUsages lists fs's visible flags, one per line: "  -l, --long  usage".
// (pflag's own listing spells every bool flag "--name[=true|false]".)
func flagUsages(fs *pflag.FlagSet) string {
	type line struct{ left, usage string }
	var lines []line
	width := 0
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		left := "      --" + f.Name
		if f.Shorthand != "" {
			left = "  -" + f.Shorthand + ", --" + f.Name
		}
		varname, usage := pflag.UnquoteUsage(f)
		if varname != "" && f.Value.Type() != "bool" {
			left += " " + varname
		}
		if d := f.DefValue; d != "" && d != "false" && d != "0" && f.Value.Type() != "bool" {
			usage += fmt.Sprintf(" (default %q)", d)
		}
		lines = append(lines, line{left, usage})
		width = max(width, len(left))
	})
	var b strings.Builder
	for _, l := range lines {
		pad := strings.Repeat(" ", width-len(l.left)+3)
		usage := strings.ReplaceAll(l.usage, "\n", "\n"+strings.Repeat(" ", width+3))
		fmt.Fprintf(&b, "%s%s%s\n", l.left, pad, usage)
	}
	return b.String()
}

func printCommandHelp(w io.Writer, c *command) error {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: %s\n\n%s\n", c.synopsis(), strings.TrimSpace(c.help))
	if g, ok := lookupGroup(c.name); ok && len(g.subs) > 0 {
		b.WriteString("\nSubcommands:\n")
		for _, s := range g.subs {
			fmt.Fprintf(&b, "  %-18s %s\n", s.synopsis(), s.short)
		}
	}
	if c.flags != nil {
		fs := newFlagSet("ocifs " + c.name)
		c.flags(fs)
		if u := flagUsages(fs); u != "" {
			fmt.Fprintf(&b, "\nFlags:\n%s", u)
		}
	}
	fmt.Fprintf(&b, "\nGlobal flags:\n%s\nExit status: 0 success, 1 failure, 2 usage error.\n", globalFlagUsages())
	_, err := io.WriteString(w, b.String())
	return err
}

const mountHelp = `
Mount IMAGE at MOUNTPOINT (an existing directory), read-only and lazily, and
return once the mount answers. A daemon keeps serving it in the background;
its log is <cache-dir>/mounts/<name>.log. With --foreground the command stays
attached, logs to stderr, and unmounts on Ctrl-C or SIGTERM.

Only the manifest, config and file tables are needed before the mount
answers; a layer with no index anywhere is streamed once (verified, then
indexed into the cache), so the first mount of such an image takes as long
as fetching it, and every later one is immediate. After mounting, layers not
yet cached are fetched in the background (--prefetch=none stops that),
one small request at a time (about 50 ms of the link at the rate measured),
only while no read waits, and in the first seconds only after 200 ms
without one, so a program's reads never queue behind more than one piece
(--prefetch-rate caps it further). When a layer is whole,
its digest and DiffID are checked and the index in use is compared with it.
A start-up profile of the image (in the cache, else in the registry beside
the image: see 'ocifs profile --help') is replayed as soon as the file tables
are known: what the recorded program read first is fetched, in parallel,
before anything asks (--profile=none stops that). --record-profile records
one from this mount's reads (for 30s, or =DURATION; files are then served
through the daemon, not passthrough) and keeps it in the cache at the end;
'ocifs profile push IMAGE' stores it in the registry.
With --prefetch=none an index taken from the registry is trusted for its
span digests alone until a layer is fetched whole: every span served is
still checked against its digest, but the index itself is not re-checked.

Indexes are looked for in the local cache, then in the image's repository
(a referrer of its manifest), then in each --index-repo REGISTRY/REPO in
order: an index repository holds indexes of images one cannot push to
(docker.io/library/python), by the image's manifest digest. What comes from
one is checked as from the image's own repository (the artifact must name
this image's manifest, every blob its digest); one that does not check out
is logged and the layer streams. Its registry's credentials and mirrors come
from the same places as the image's (docker and podman auth files,
--hosts-dir, --registries-conf). In the config file: index-repo = ["..."].
With --push-index-to REGISTRY/REPO (off by default), a layer this mount had
to stream has the index built from its verified bytes pushed there in the
background, so other machines given --index-repo REGISTRY/REPO read it lazily.

While the daemon streams layers before the mount can answer, 'ocifs mount'
shows how far they are (--progress). Mounting needs root and /dev/fuse. A stale mount left by a daemon that died
is cleaned up first. The mount is nosuid and nodev unless --suid / --dev.

Writable mounts: --writable mounts the kernel's overlayfs at MOUNTPOINT, with
the read-only image view as its lower layer; every change lands in the upper
directory, in overlayfs's own format (whiteouts are 0/0 character devices,
opaque directories carry trusted.overlay.opaque), so the kernel's overlay of
an unpacked copy of the image (ocifs pull) with that upper shows the same
tree. Copy-up fetches only the file it copies; as in overlayfs with index=off,
copying up one name of a hardlinked image file separates it from its other
names, which keep the image's content. Without --upper the upper is a
fresh directory in the cache, removed at unmount. --upper DIR keeps it (DIR is
created if missing; overlayfs's work directory is DIR.work beside it, on the
same file system, where ocifs also records which image DIR was made over): a
later mount of the same image with --upper DIR shows the changes again; one
of another image is refused unless --force-upper. An upper that another mount
uses is refused. What differs from a plain overlay: it is mounted with
redirect_dir=on (a renamed image directory leaves a trusted.overlay.redirect
xattr in the upper; mount the upper later with redirect_dir=on, or the
kernel's default redirect_always_follow), index=off and metacopy=off; like any
overlay it is visible to every user, subject to file permissions (--allow-other
changes nothing). If the daemon is killed the overlay stays, and files not
yet changed fail (ENOTCONN); ocifs unmount, or mounting again, cleans up.

Surviving the daemon: --takeover keeps the mount's FUSE connection in a small
holder process (ocifs holder). If the daemon dies, the holder starts another,
which takes the connection over: open files stay open, and reads in flight
are answered by the new daemon (Linux 6.9+), after a pause. 'ocifs upgrade
MOUNTPOINT' hands over to the binary installed at the path the mount was made
with. 'ocifs stats --json' gives the pid of the daemon serving now. Such a
mount serves every read itself (no passthrough), and takes neither
--writable nor --progressive. With --foreground this command is the holder
(as a systemd unit runs it: the main process, which says READY=1), and the
daemons it starts log to its stderr.

Examples:
  mkdir -p /mnt/app
  ocifs mount registry.example.com/app:1.4 /mnt/app
  ocifs mount --prefetch=none oci:./layout:v1 /mnt/app
  ocifs mount --record-profile=1m registry.example.com/app:1.4 /mnt/app
  ocifs mount --foreground --log-level debug alpine:3.20 /mnt/alpine
  ocifs mount --writable alpine:3.20 /mnt/scratch
  ocifs mount --takeover registry.example.com/app:1.4 /mnt/app
  ocifs mount --writable --upper /var/lib/app/upper registry.example.com/app:1.4 /mnt/app
  ocifs mount --index-repo registry.example.com/ocifs-indexes python:3.13 /mnt/python
  chroot /mnt/app /bin/sh

To unmount: ocifs unmount /mnt/app
`

const unmountHelp = `
Unmount MOUNTPOINT and wait (up to 30s) for its daemon to exit. The cache
stays, so the next mount of the same image is immediate. If files are still
open under MOUNTPOINT the kernel answers "busy": close them and leave the
directory, or use --lazy to detach now (the daemon exits when the last file
closes). A mount whose daemon died is unmounted too.

The mount is found from MOUNTPOINT alone: its daemon records itself in
/run/ocifs/mounts (for root; $XDG_RUNTIME_DIR/ocifs otherwise), naming the
--cache-dir it uses, so --cache-dir need not be repeated (it is still
accepted, and looked in first).

Examples:
  ocifs unmount /mnt/app
  ocifs unmount --lazy /mnt/app
`

const statsHelp = `
Show what the mount at MOUNTPOINT fetched (blob, TOC and index bytes, HTTP
requests), served (bytes read through the mount), how the cache answered and
whether any verification failed, then one row per layer: its lazy mode, size,
bytes fetched, and whether its blob is complete and verified. The mount is
found from MOUNTPOINT alone, whatever --cache-dir it was made with (see
'ocifs unmount --help').

Examples:
  ocifs stats /mnt/app
  ocifs stats --json /mnt/app | jq .bytes_fetched
  ocifs stats --json /mnt/app | jq '.layers[] | {digest, mode, complete}'
`

const inspectHelp = `
Resolve IMAGE and print its manifest, config and layers without fetching any
layer bytes: reference, manifest digest and media type, the index it was
picked from (--platform chooses), platform, config digest, creation time,
entrypoint and cmd, and for each layer its digest, media type, compressed
size, diff_id, and the lazy mode ocifs will use for it and why.

Examples:
  ocifs inspect docker.io/library/alpine:3.20
  ocifs inspect --platform linux/arm64 registry.example.com/app:1.4
  ocifs inspect --json oci:./layout:v1 | jq '.layers[].mode'
`

const lsHelp = `
List PATH (default /) of the image's merged tree, one name per line, without
mounting or pulling. A non-directory PATH prints that one entry. Symlinks in
PATH are followed inside the image, never on this machine. Layers with no
cached index are fetched once to read their file tables.

Examples:
  ocifs ls alpine:3.20
  ocifs ls -l alpine:3.20 /etc
  ocifs ls oci:./layout:v1 /usr/bin
`

const catHelp = `
Write the file at PATH in the image to stdout. Symlinks are followed inside
the image (at most 40). Only what that file needs is fetched once the
image's file tables are known; every byte is verified before it is written.

Examples:
  ocifs cat alpine:3.20 /etc/os-release
  ocifs cat oci:./layout:v1 /etc/os-release
  ocifs cat registry.example.com/app:1.4 /app/config.json | jq .
`

const pullHelp = `
Fetch every layer and unpack the merged root file system into DIR (which must
be empty or absent): the same tree a full pull and unpack gives, with owners,
modes, xattrs, devices and hardlinks. Needs root to set owners and create
devices. Shows its progress on stderr (bars on a terminal, a line every 5s
otherwise, nothing with --progress=none), then prints a one-line summary.

Examples:
  ocifs pull alpine:3.20 /srv/rootfs
  ocifs pull oci:./layout:v1 ./rootfs
`

const indexHelp = `
Build an ocifs index (file table, random-access checkpoints every span of
uncompressed bytes, and the sha256 of each span's compressed bytes) for every
gzip or plain tar layer of IMAGE. The layer is fetched once, verified against
its digest and DiffID, and the index kept in the local cache: later mounts on
this machine read lazily from the first read. --push stores the indexes in
the registry as an artifact whose subject is the image manifest (the OCI
referrers API, or the sha256-<hex> tag where the registry lacks it), so a
mount on any machine finds them.

Images one cannot push to (docker.io/library/python): with --index-repo
REGISTRY/REPO, --push stores the indexes in that repository instead (the
first one, if several are given), still as an artifact whose subject is the
image's manifest, with the index blobs beside it. Mounts, the snapshotter
and the store given the same --index-repo (or index-repo in the config
file) find them there by the image's manifest digest, after the image's own
repository, and verify them exactly as an index from the image's
repository. Pushing needs write access to REPO only; credentials and mirrors
for its registry come from the docker/podman auth files and --hosts-dir, as
for images.

A mount trusts an index from the registry for the span digests it checks
reads against, and re-checks the whole layer against it when the background
fetch completes: what the index got wrong is refused (EIO, one error line),
the rest is served from the verified layer.

Examples:
  ocifs index build registry.example.com/app:1.4
  ocifs index build --push registry.example.com/app:1.4
  ocifs index build --push --index-repo registry.example.com/ocifs-indexes docker.io/library/python:3.13
  ocifs index build --span-size 1048576 oci:./layout:v1
`

const benchHelp = `
Compare a lazy mount with a full pull and unpack and with an overlayfs
unpack, from a cold cache, and report the numbers as JSON and a table.

Builds images on this machine (a Debian python3 root file system from apt,
the Go toolchain, a 1 GiB model image; as gzip, gzip with a pushed ocifs
index, eStargz, zstd:chunked), serves them from docker-registry in a network
namespace of its own (lan: unshaped veth; cloud: 1 Gbit/s, 20 ms RTT) and
measures ocifs lazy (cold cache), ocifs on a warm cache, ocifs pull +
overlayfs and containerd (ctr image pull + its snapshot) on four workloads:
first-file, start-up, walk, read-all. Writes DIR/<date>.json, .md and .svg.
Needs root, docker-registry, containerd, iproute2 and busybox-static; run it
from the source tree (or give --out and --bench-cache). See issue 6.

Examples:
  ocifs bench
  ocifs bench --quick --profile cloud
  ocifs bench --images python --methods ocifs-lazy,containerd --reps 5
`

const cacheHelp = `
The cache holds, by digest: blobs (compressed layers, manifests, configs),
uncompressed layers, layer indexes, start-up profiles (by manifest digest:
'ocifs profile --help'), what a registry last answered (kind answer: an
image's referrers list, the digest a tag named), the TOCs of eStargz and
zstd:chunked layers (kind range; with these a mount by digest loads from
the cache when the registry is down), and trees: the files of complete gzip
layers, extracted so that the kernel can read them itself (FUSE
passthrough). It is shared by every mount and command using the same
--cache-dir. Removing an entry a mount still has open is safe: the mount
keeps its open file.

Every blob's digest is checked before it enters the cache. A mount hashes a
cached blob again only if its file changed since that check (inode, size,
mtime or ctime differ); 'cache verify' hashes every blob again whatever
changed, to find damage below the file system, and removes the damaged ones
so that the next mount fetches them again; it drops the trees, which have
no digests of their own (the next mount extracts them again). A tree file
changed after its extraction is refused when opened; the mount then reads
through the layer's verified blob and extracts the tree again next time.

  ocifs cache ls                       kind, digest, size and mtime of each entry
  ocifs cache du                       total size and count per kind
  ocifs cache prune                    remove entries not used for 30 days
  ocifs cache prune --older-than 7d    remove entries not used for 7 days
  ocifs cache prune --max-size 10G     remove the least recently used until 10 GiB are left
  ocifs cache prune --all              remove every entry
  ocifs cache verify                   hash every blob; exit status 1 if any was damaged

Pruning by age or size never removes what a live mount uses (its manifest,
config, layer indexes, and the layers it serves whole: each daemon pins them
for as long as it lives), nor an entry still being written; what a mount can
fetch again and check (spans, chunks, blobs of layers read by span, extracted
trees) may go, and is fetched again when read. An entry's age counts from its
last use. A daemon started with --cache-max SIZE (mount, snapshotter, store)
holds the bound as it writes: each entry it admits first removes the least
recently used unpinned ones until it fits; it also trims every 10 seconds.
Pruning also removes the logs of daemons that are gone (not written for
--older-than; all of them with --all), never one a live daemon writes; a
live daemon's log is rotated to <name>.log.1 past 8 MiB.

Examples:
  ocifs cache du
  ocifs cache prune --max-size 20G --older-than 14d
  ocifs --cache-dir /tmp/ocifs cache prune --all
`
