package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/mountinfo"
)

// mountPaths are the files of one mount under <cache-dir>/mounts, and its
// record in the run directory.
type mountPaths struct {
	state string // JSON mountState, present while the mount is served
	sock  string // unix socket serving GET /stats
	log   string // the daemon's stdout and stderr
	run   string // the same mountState under runDir(), found from the mountpoint alone
}

// pathsFor names the files of the mount at dir (absolute) and creates their
// directory. The name is a hash of the path, so any path maps to a short
// safe name (sockets have a 108-byte limit), plus its base for people.
func pathsFor(cacheDir, dir string) (mountPaths, error) {
	mdir := filepath.Join(cacheDir, "mounts")
	if err := os.MkdirAll(mdir, 0o700); err != nil {
		return mountPaths{}, fmt.Errorf("mount state directory: %w", err)
	}
	return namePaths(cacheDir, dir), nil
}

// namePaths names the files of the mount at dir, creating nothing.
func namePaths(cacheDir, dir string) mountPaths {
	mdir := filepath.Join(cacheDir, "mounts")
	base := mountName(dir)
	return mountPaths{
		state: filepath.Join(mdir, base+".json"),
		sock:  filepath.Join(mdir, base+".sock"),
		log:   filepath.Join(mdir, base+".log"),
		run:   filepath.Join(runDir(), "mounts", base+".json"),
	}
}

// runDir is where mount daemons record themselves so that a command given
// only a mountpoint finds the mount, whatever --cache-dir it was made with:
// /run/ocifs for root (every mount is root's), else $XDG_RUNTIME_DIR/ocifs.
//
// Why a run directory rather than the mount itself: an xattr or ioctl on the
// mount root cannot be read once the daemon has died (the mount answers
// ENOTCONN), which is exactly when unmount most needs to find its state; the
// mount table's source field is shown by df and findmnt and has no room for
// a path that may hold spaces. /run is a tmpfs, emptied at boot, when every
// FUSE mount is gone too; the record is keyed by the mountpoint's path as
// the cache's mounts directory is, and is checked against the path and
// the daemon's pid before it is believed.
func runDir() string {
	if os.Geteuid() == 0 {
		return "/run/ocifs"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "ocifs")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("ocifs-%d", os.Getuid()))
}

// mountName renders a mountpoint path as a file name: a sha256 prefix of the
// path and its base name with anything unusual replaced.
func mountName(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	base := []byte(filepath.Base(dir))
	for i, c := range base {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			base[i] = '_'
		}
	}
	if len(base) > 24 {
		base = base[:24]
	}
	return hex.EncodeToString(sum[:8]) + "-" + strings.TrimLeft(string(base), ".")
}

// mountState is what a running mount daemon records about itself.
type mountState struct {
	PID        int    `json:"pid"`
	Image      string `json:"image"`
	Mountpoint string `json:"mountpoint"`
	Socket     string `json:"socket"`
	Log        string `json:"log,omitempty"`
	// CacheDir is the mount's --cache-dir, for a command that finds the
	// mount through its run record.
	CacheDir string `json:"cache_dir,omitempty"`
	// Metrics is the address of its Prometheus metrics, if it serves them.
	Metrics string `json:"metrics,omitempty"`
	// Holder is the socket of the holder of a --takeover mount's FUSE
	// connection (`ocifs upgrade` asks it), HolderPID its process.
	Holder    string `json:"holder,omitempty"`
	HolderPID int    `json:"holder_pid,omitempty"`
}

// publishState records st where commands look for it: in the cache's
// mounts directory and in the run directory.
func publishState(p mountPaths, st mountState) error {
	if err := writeState(p.state, st); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.run), 0o755); err != nil {
		os.Remove(p.state)
		return fmt.Errorf("mount record directory: %w", err)
	}
	if err := writeState(p.run, st); err != nil {
		os.Remove(p.state)
		return err
	}
	return nil
}

// locateMount finds the state of the mount at dir (absolute): in the
// mounts directory of --cache-dir, else through the run directory's record,
// which names the cache the mount uses. When the record names another cache,
// e's --cache-dir becomes it, so that cleaning up after the mount touches
// the right one. Nothing is created. The state is nil (with paths in
// --cache-dir) when neither holds one.
func locateMount(e *env, dir string) (mountPaths, *mountState, error) {
	p := namePaths(e.g.cacheDir, dir)
	st, err := readState(p)
	if err == nil || !errors.Is(err, iofs.ErrNotExist) {
		return p, st, err
	}
	rec, err := readStateFile(p.run)
	if errors.Is(err, iofs.ErrNotExist) {
		return p, nil, nil
	}
	if err != nil {
		return p, nil, err
	}
	if rec.Mountpoint != dir || rec.CacheDir == "" || !filepath.IsAbs(rec.CacheDir) {
		return p, nil, nil // not this mount's record, or not one ocifs wrote
	}
	q := namePaths(rec.CacheDir, dir)
	st, err = readState(q)
	if errors.Is(err, iofs.ErrNotExist) {
		// The daemon died after its cache lost the state (pruned): the run
		// record is what is left of the mount.
		st, err = rec, nil
	}
	if err != nil {
		return p, nil, err
	}
	if rec.CacheDir != e.g.cacheDir {
		e.log.Debug("mount found through its run record", "path", dir, "cache", rec.CacheDir)
		e.g.cacheDir = rec.CacheDir
	}
	return q, st, nil
}

func writeState(path string, st mountState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write mount state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write mount state: %w", err)
	}
	return nil
}

// readState reads the state of the mount at dir; iofs.ErrNotExist when no
// daemon recorded one.
func readState(p mountPaths) (*mountState, error) { return readStateFile(p.state) }

func readStateFile(path string) (*mountState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st mountState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("mount state %s: %w", path, err)
	}
	return &st, nil
}

func removeState(p mountPaths) {
	os.Remove(p.sock)
	os.Remove(p.state)
	os.Remove(p.run)
}

// findMount reports the topmost mount at dir (absolute, not resolved through
// a dead FUSE mount), from /proc/self/mountinfo.
func findMount(dir string) (mountinfo.Mount, bool, error) {
	return mountinfo.At(dir)
}

func unmountFlags(set *pflag.FlagSet) runFunc {
	lazy := set.Bool("lazy", false, "detach now even if files are open (MNT_DETACH); the daemon exits when they close")
	return func(ctx context.Context, e *env, args []string) error {
		return runUnmount(ctx, e, args[0], *lazy)
	}
}

// daemonExitWait bounds how long unmount waits for the daemon to exit.
const daemonExitWait = 30 * time.Second

func runUnmount(ctx context.Context, e *env, dir string, lazy bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	p, st, err := locateMount(e, abs)
	if err != nil {
		return err
	}
	if st != nil && !isDaemon(st.PID) {
		st = nil // the daemon died; its mount, if any, is stale
	}
	mi, mounted, err := findMount(abs)
	if err != nil {
		return err
	}
	if !mounted {
		if st != nil {
			// Mounting has not finished, or the kernel's unmount raced us:
			// ask the daemon to stop and clean up itself.
			if err := syscall.Kill(st.PID, syscall.SIGTERM); err == nil {
				return waitDaemon(ctx, e, abs, st.PID)
			}
		}
		removeState(p)
		return fmt.Errorf("unmount %s: not mounted", abs)
	}
	if !strings.HasPrefix(mi.FSType, "fuse") && !fs.IsOverlay(mi) {
		return withHint(fmt.Errorf("unmount %s: it is a %s mount, not an ocifs one", abs, mi.FSType), "use umount "+abs)
	}
	flags := 0
	if lazy {
		flags = unix.MNT_DETACH
	}
	if err := unix.Unmount(abs, flags); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("unmount %s: busy: close files and leave the directory, or use --lazy", abs)
		}
		return fmt.Errorf("unmount %s: %w", abs, err)
	}
	if st == nil {
		removeState(p)
		cleanWritable(e.log, e.g.cacheDir, abs)
		fmt.Fprintf(e.stdout, "unmounted %s\n", abs)
		return nil
	}
	if lazy {
		fmt.Fprintf(e.stdout, "detached %s; its daemon (pid %d) exits when the last open file closes\n", abs, st.PID)
		return nil
	}
	return waitDaemon(ctx, e, abs, st.PID)
}

// waitDaemon waits, bounded, for the mount daemon pid to exit.
func waitDaemon(ctx context.Context, e *env, dir string, pid int) error {
	if err := waitExit(ctx, pid, daemonExitWait); err != nil {
		return fmt.Errorf("unmount %s: the daemon (pid %d) is still running after %s: %w", dir, pid, daemonExitWait, err)
	}
	fmt.Fprintf(e.stdout, "unmounted %s\n", dir)
	return nil
}

// isDaemon reports whether pid is alive and is an ocifs mount daemon, so a
// reused pid is never signalled.
func isDaemon(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	for _, a := range args {
		if a == "--foreground" {
			return true
		}
	}
	return false
}

// waitExit waits until pid exits, at most timeout. A pidfd tells exactly when;
// without pidfd_open (kernels before 5.3) it polls kill(pid, 0).
func waitExit(ctx context.Context, pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err == nil {
		defer unix.Close(fd)
		for {
			left := time.Until(deadline)
			if left <= 0 {
				return errors.New("timed out")
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			// Wake at least every second to notice ctx.
			ms := min(left, time.Second).Milliseconds() + 1
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(ms))
			if err != nil && !errors.Is(err, unix.EINTR) {
				return err
			}
			if n > 0 {
				return nil
			}
		}
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func statsFlags(set *pflag.FlagSet) runFunc {
	asJSON := set.Bool("json", false, "print one JSON object (the keys DESIGN.md lists)")
	return func(ctx context.Context, e *env, args []string) error {
		return runStats(ctx, e, args[0], *asJSON)
	}
}

func runStats(ctx context.Context, e *env, dir string, asJSON bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	p, st, err := locateMount(e, abs)
	if err != nil {
		return err
	}
	if st == nil {
		return withHint(fmt.Errorf("stats %s: no ocifs mount there (no record in %s or %s)", abs, filepath.Dir(p.run), filepath.Dir(p.state)),
			"mount with: ocifs mount IMAGE "+abs)
	}
	body, err := getStats(ctx, st.Socket)
	if err != nil {
		err = fmt.Errorf("stats %s: ask the daemon (pid %d): %w", abs, st.PID, err)
		if !isDaemon(st.PID) {
			return withHint(err, "the mount's daemon is gone; ocifs unmount "+abs+" cleans up")
		}
		return err
	}
	if asJSON {
		_, err := fmt.Fprintf(e.stdout, "%s\n", bytes.TrimSpace(body))
		return err
	}
	var s fs.Stats
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("stats %s: daemon answer: %w", abs, err)
	}
	if err := printStats(e.stdout, &s); err != nil {
		return err
	}
	if st.Metrics != "" {
		_, err = fmt.Fprintf(e.stdout, "\nmetrics: http://%s/metrics\n", st.Metrics)
	}
	return err
}

// getStats asks a mount daemon for its stats over its unix socket.
func getStats(ctx context.Context, sock string) ([]byte, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://ocifs/stats", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

func printStats(w io.Writer, s *fs.Stats) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "image\t%s\n", s.Image)
	fmt.Fprintf(tw, "manifest\t%s\n", s.ManifestDigest)
	fmt.Fprintf(tw, "fetched\t%s (%d bytes) in %d requests\n", humanBytes(s.BytesFetched), s.BytesFetched, s.Requests)
	fmt.Fprintf(tw, "served\t%s (%d bytes)\n", humanBytes(s.BytesServed), s.BytesServed)
	fmt.Fprintf(tw, "cache\t%d hits, %d misses%s\n", s.CacheHits, s.CacheMisses, cacheKinds(s.Cache))
	if len(s.FetchedFor) > 0 {
		fmt.Fprintf(tw, "layer bytes for\treader %s, read-ahead %s, background %s\n", humanBytes(s.FetchedFor[fs.FetchReader]),
			humanBytes(s.FetchedFor[fs.FetchReadAhead]), humanBytes(s.FetchedFor[fs.FetchBackground]))
	}
	fmt.Fprintf(tw, "verify failures\t%d\n", s.VerifyFailures)
	if len(s.Fallbacks) > 0 {
		var fb []string
		for _, r := range fs.FallbackReasons() {
			if n := s.Fallbacks[r]; n > 0 {
				fb = append(fb, fmt.Sprintf("%s %d", r, n))
			}
		}
		fmt.Fprintf(tw, "fallbacks\t%s (the log says which layer and why)\n", strings.Join(fb, ", "))
	}
	if p := s.Profile; p != nil {
		fmt.Fprintf(tw, "start-up profile\t%s\n", profileLine(p))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "LAYER\tMODE\tSIZE\tFETCHED\tCOMPLETE\tVERIFIED\n")
	for _, l := range s.Layers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", shortDigest(l.Digest.String()), l.Mode,
			humanBytes(l.Size), humanBytes(l.BytesFetched), yesNo(l.Complete), yesNo(l.Verified))
	}
	return tw.Flush()
}

// cacheKinds says the hits and misses of each kind that had any:
// " (span 389/6, file 2/0)".
func cacheKinds(c map[string]fs.CacheCount) string {
	var parts []string
	for _, k := range []string{fs.CacheSpan, fs.CacheChunk, fs.CacheFile, fs.CacheWhole} {
		if n := c[k]; n.Hits+n.Misses > 0 {
			parts = append(parts, fmt.Sprintf("%s %d/%d", k, n.Hits, n.Misses))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + " hits/misses)"
}

// profileLine says what a mount's replay of its start-up profile did.
func profileLine(p *fs.ProfileStats) string {
	switch {
	case p.Err != "":
		return "not found: " + p.Err
	case p.Source == "" && p.Done:
		return "none"
	}
	line := fmt.Sprintf("from the %s: %d ranges, %s read", p.Source, p.Ranges, humanBytes(p.Bytes))
	if p.Dropped > 0 {
		line += fmt.Sprintf(", %d dropped", p.Dropped)
	}
	if p.Failed > 0 {
		line += fmt.Sprintf(", %d failed", p.Failed)
	}
	if p.Done {
		return line + ", done in " + p.Duration
	}
	return line + ", replaying"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// shortDigest is "sha256:" and the first 12 hex digits.
func shortDigest(d string) string {
	algo, hexpart, ok := strings.Cut(d, ":")
	if !ok || len(hexpart) <= 12 {
		return d
	}
	return algo + ":" + hexpart[:12]
}

// humanBytes renders n in IEC units: "0 B", "512 B", "1.5 KiB", "3.2 GiB".
func humanBytes(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= 1024
		if f < 1024 && f > -1024 {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	return fmt.Sprintf("%.1f PiB", f/1024)
}
