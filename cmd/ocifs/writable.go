package main

// Writable mounts: the kernel's overlayfs over the read-only FUSE view.
//
// The daemon mounts the image read-only at <cache>/mounts/<name>.lower, then
// mounts overlay at the user's mountpoint with that as lowerdir, and detaches
// the lower from the file tree: the overlay keeps its own reference to the
// FUSE super block, so the FUSE mount lives exactly as long as the overlay.
// Whoever unmounts the overlay (ocifs unmount, umount, umount -l) thereby
// ends the FUSE mount too, and the daemon, seeing its FUSE server end,
// cleans up and exits. Nothing but the overlay is left in the mount table.

import (
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs"
)

// overlaySource is the source of every overlay ocifs mounts: it tells ours
// from other overlays in the mount table.
const overlaySource = "ocifs"

// Files ocifs keeps in the work directory, beside overlayfs's own work/ and
// index/ (which it never touches): the upper itself stays a clean upperdir.
const (
	upperRecordName = "ocifs-upper.json" // which image the upper was made over
	upperLockName   = "ocifs-upper.lock" // flock held while a mount uses the upper
)

// overlayOptions are the overlayfs options every writable mount pins, so the
// upper's format does not depend on the kernel's defaults: renaming a lower
// directory works (redirect_dir=on, leaving a trusted.overlay.redirect
// xattr), and every copy-up copies data (no metacopy-only uppers).
var overlayOptions = [][2]string{{"redirect_dir", "on"}, {"index", "off"}, {"metacopy", "off"}}

// upperDirs are the directories of a writable mount.
type upperDirs struct {
	lower string // where the read-only FUSE view is mounted until the overlay holds it
	upper string // overlay upperdir: every change
	work  string // overlay workdir: same file system as upper, not inside it
	// ephemeral is the default upper: created fresh for the mount and
	// removed when it ends.
	ephemeral bool
}

// writableDirs names the directories of a writable mount at dir (absolute).
// Without --upper they live under <cache>/mounts; with --upper DIR the work
// directory is DIR.work beside it.
func writableDirs(cacheDir, dir, upper string) (upperDirs, error) {
	mdir := filepath.Join(cacheDir, "mounts")
	name := mountName(dir)
	d := upperDirs{lower: filepath.Join(mdir, name+".lower")}
	if upper == "" {
		d.upper, d.work, d.ephemeral = filepath.Join(mdir, name+".upper"), filepath.Join(mdir, name+".work"), true
		return d, nil
	}
	abs, err := filepath.Abs(upper)
	if err != nil {
		return upperDirs{}, fmt.Errorf("upper %s: %w", upper, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if abs == "/" {
		return upperDirs{}, fmt.Errorf("upper %s: the root directory cannot be an upper directory", upper)
	}
	if within(abs, dir) || within(dir, abs) {
		return upperDirs{}, fmt.Errorf("upper %s and mountpoint %s overlap: put the upper directory outside the mountpoint", abs, dir)
	}
	d.upper, d.work = abs, abs+".work"
	return d, nil
}

// within reports whether p is dir or below it (both clean and absolute).
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// checkUpper checks an --upper DIR before the daemon starts: it is a
// directory, or does not exist yet in a directory that does.
func checkUpper(d upperDirs) error {
	if d.ephemeral {
		return nil
	}
	for _, p := range []string{d.upper, d.work} {
		st, err := os.Stat(p)
		switch {
		case errors.Is(err, iofs.ErrNotExist):
			parent := filepath.Dir(p)
			if pst, err := os.Stat(parent); err != nil || !pst.IsDir() {
				return withHint(fmt.Errorf("upper %s: parent directory %s does not exist", p, parent), "create it with mkdir -p "+parent)
			}
		case err != nil:
			return fmt.Errorf("upper %s: %w", p, err)
		case !st.IsDir():
			return fmt.Errorf("upper %s is not a directory", p)
		}
	}
	return nil
}

// upperRecord is what ocifs writes in the work directory about the upper.
type upperRecord struct {
	Image          string        `json:"image"`
	ManifestDigest digest.Digest `json:"manifest_digest"`
	Mountpoint     string        `json:"mountpoint"`
	PID            int           `json:"pid"`
}

// upperLock is an upper directory claimed by this daemon.
type upperLock struct {
	d    upperDirs
	lock *os.File // flock'ed, nil for an ephemeral upper
}

// claimUpper prepares the upper and work directories of a writable mount of
// image (manifest dgst) at dir: it refuses an upper that another mount uses,
// or one made over a different image unless force, and starts an ephemeral
// upper afresh. The upper itself is created by mountOverlay, once the
// image's root directory can be copied.
func claimUpper(log *slog.Logger, d upperDirs, dir, image string, dgst digest.Digest, force bool) (*upperLock, error) {
	if d.ephemeral {
		// Left by a daemon that died: the changes of an ephemeral mount
		// die with it.
		for _, p := range []string{d.upper, d.work} {
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("remove old upper %s: %w", p, err)
			}
		}
		if err := os.Mkdir(d.work, 0o700); err != nil {
			return nil, fmt.Errorf("upper work directory: %w", err)
		}
		return &upperLock{d: d}, nil
	}
	if err := checkUpper(d); err != nil {
		return nil, err
	}
	if err := os.Mkdir(d.work, 0o700); err != nil && !errors.Is(err, iofs.ErrExist) {
		return nil, fmt.Errorf("upper work directory %s: %w", d.work, err)
	}
	f, err := os.OpenFile(filepath.Join(d.work, upperLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("upper lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		rec, _ := readUpperRecord(d.work)
		if errors.Is(err, unix.EWOULDBLOCK) && rec != nil {
			return nil, withHint(fmt.Errorf("upper %s is in use by the ocifs mount at %s (pid %d)", d.upper, rec.Mountpoint, rec.PID),
				"unmount it first: ocifs unmount "+rec.Mountpoint)
		}
		return nil, fmt.Errorf("upper %s: lock %s: %w", d.upper, f.Name(), err)
	}
	ul := &upperLock{d: d, lock: f}
	if err := checkOverlayUsers(d); err != nil {
		ul.release(log)
		return nil, err
	}
	rec, err := readUpperRecord(d.work)
	switch {
	case err != nil:
		ul.release(log)
		return nil, err
	case rec != nil && rec.ManifestDigest != dgst && !force:
		ul.release(log)
		return nil, withHint(
			fmt.Errorf("upper %s holds changes made over %s (%s); this mount is of %s (%s)", d.upper, rec.Image, rec.ManifestDigest, image, dgst),
			fmt.Sprintf("mount the image it was made over (%s@%s), or pass --force-upper to lay these changes over %s", imageName(rec.Image), rec.ManifestDigest, image))
	case rec != nil && rec.ManifestDigest != dgst:
		log.Warn("reusing an upper made over another image (--force-upper)", "path", d.upper, "was", rec.ManifestDigest, "digest", dgst)
	case rec == nil:
		if ents, err := os.ReadDir(d.upper); err == nil && len(ents) > 0 {
			log.Warn("upper is not empty and records no image; using it as it is", "path", d.upper)
		}
	}
	return ul, nil
}

// imageName strips the tag and digest from a reference, for a hint that
// pins a digest.
func imageName(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}

func readUpperRecord(work string) (*upperRecord, error) {
	p := filepath.Join(work, upperRecordName)
	b, err := os.ReadFile(p)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("upper record: %w", err)
	}
	var rec upperRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, withHint(fmt.Errorf("upper record %s: invalid input: %w", p, err), "remove it to use the upper with any image")
	}
	return &rec, nil
}

// checkOverlayUsers refuses an upper or work directory that an overlay
// mounted now uses: overlayfs itself only warns about that.
func checkOverlayUsers(d upperDirs) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mount table: %w", err)
	}
	for _, om := range parseOverlays(b) {
		if om.upper == d.upper || om.work == d.work || om.upper == d.work || om.work == d.upper {
			return withHint(fmt.Errorf("upper %s is in use by the overlay mounted at %s", d.upper, om.mountpoint),
				"unmount it first: umount "+om.mountpoint+" (or ocifs unmount for an ocifs mount)")
		}
	}
	return nil
}

// overlayMount is an overlay in the mount table, the fields ocifs needs.
type overlayMount struct {
	mountpoint, source string
	upper, work        string
}

// parseOverlays reads the overlay mounts of a proc(5) mountinfo table; the
// kernel escapes ',' and white space in option values as octal.
func parseOverlays(b []byte) []overlayMount {
	var out []overlayMount
	for _, mi := range parseMountinfo(b) {
		if mi.fsType != "overlay" || mi.superOpts == nil {
			continue
		}
		om := overlayMount{mountpoint: mi.mountpoint, source: mi.source}
		for _, opt := range mi.superOpts {
			k, v, _ := strings.Cut(opt, "=")
			switch k {
			case "upperdir":
				om.upper = unescapeMountinfo(v)
			case "workdir":
				om.work = unescapeMountinfo(v)
			}
		}
		out = append(out, om)
	}
	return out
}

// isOcifsOverlay reports whether mi is a writable ocifs mount.
func isOcifsOverlay(mi mountInfo) bool {
	return mi.fsType == "overlay" && mi.source == overlaySource
}

// mountOverlay mounts the overlay at dir over the FUSE view mounted at
// ul.d.lower, then detaches the lower: from then on the overlay holds the
// only reference to it. It creates a missing upper with the mode and owner
// of the image's root, which the overlay's root shows.
func (ul *upperLock) mountOverlay(log *slog.Logger, dir, image string, dgst digest.Digest, o *mountOpts) error {
	d := ul.d
	if err := makeUpper(d); err != nil {
		return err
	}
	if err := mountOverlay(dir, d, o.suid, o.dev); err != nil {
		return err
	}
	log.Info("overlay mounted", "path", dir, "upper", d.upper, "work", d.work, "ephemeral", d.ephemeral)
	if err := unix.Unmount(d.lower, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the read-only view at %s from under the overlay: %w", d.lower, err)
	}
	if err := os.Remove(d.lower); err != nil {
		log.Warn("remove the lower mountpoint", "path", d.lower, "err", err)
	}
	if d.ephemeral {
		return nil
	}
	b, err := json.MarshalIndent(upperRecord{Image: image, ManifestDigest: dgst, Mountpoint: dir, PID: os.Getpid()}, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.work, upperRecordName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write upper record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.work, upperRecordName)); err != nil {
		return fmt.Errorf("write upper record: %w", err)
	}
	return nil
}

// makeUpper creates a missing upper directory with the image root's mode,
// owner and times: the overlay's root directory is the upper's.
func makeUpper(d upperDirs) error {
	if _, err := os.Stat(d.upper); err == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(d.lower, &st); err != nil {
		return fmt.Errorf("image root: %w", err)
	}
	if err := os.Mkdir(d.upper, 0o700); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	if err := os.Lchown(d.upper, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	if err := unix.Chmod(d.upper, st.Mode&0o7777); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNano(d.upper, ts); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	return nil
}

// mountOverlay mounts overlayfs at dir with the new mount API, which reports
// the kernel's reason for a refusal; mount(2) where that API is missing.
func mountOverlay(dir string, d upperDirs, suid, dev bool) error {
	opts := [][2]string{
		{"source", overlaySource},
		{"lowerdir", escapeOverlayPath(d.lower)},
		{"upperdir", escapeOverlayPath(d.upper)},
		{"workdir", escapeOverlayPath(d.work)},
	}
	opts = append(opts, overlayOptions...)
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return mountOverlayLegacy(dir, opts, suid, dev)
	} else if err != nil {
		return fmt.Errorf("mount overlay at %s: %w", dir, err)
	}
	defer unix.Close(fd)
	for _, kv := range opts {
		if err := unix.FsconfigSetString(fd, kv[0], kv[1]); err != nil {
			return overlayError(dir, d, fmt.Errorf("option %s=%s: %w", kv[0], kv[1], err), kernelMessages(fd))
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return overlayError(dir, d, err, kernelMessages(fd))
	}
	attr := 0
	if !suid {
		attr |= unix.MOUNT_ATTR_NOSUID
	}
	if !dev {
		attr |= unix.MOUNT_ATTR_NODEV
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return overlayError(dir, d, err, kernelMessages(fd))
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", dir, err)
	}
	return nil
}

func mountOverlayLegacy(dir string, opts [][2]string, suid, dev bool) error {
	var data []string
	for _, kv := range opts[1:] { // the source is mount(2)'s own argument
		data = append(data, kv[0]+"="+kv[1])
	}
	flags := uintptr(0)
	if !suid {
		flags |= unix.MS_NOSUID
	}
	if !dev {
		flags |= unix.MS_NODEV
	}
	if err := unix.Mount(overlaySource, dir, "overlay", flags, strings.Join(data, ",")); err != nil {
		return withHint(fmt.Errorf("mount overlay at %s: %w", dir, err), "the kernel's reason is in dmesg")
	}
	return nil
}

// escapeOverlayPath escapes what overlayfs's option parser splits on: ','
// between options, ':' between lower layers, and '\' itself.
func escapeOverlayPath(p string) string {
	var b strings.Builder
	for _, c := range []byte(p) {
		if c == ',' || c == ':' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// kernelMessages drains the messages the kernel left on a file system
// context ("e overlayfs: ..."), without their level prefix.
func kernelMessages(fd int) []string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 16 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msg := string(buf[:n])
		if len(msg) > 2 && msg[1] == ' ' {
			msg = msg[2:]
		}
		msgs = append(msgs, strings.TrimSpace(msg))
	}
	return msgs
}

// overlayError says why the kernel refused the overlay, with what to do.
func overlayError(dir string, d upperDirs, err error, msgs []string) error {
	text := fmt.Sprintf("mount overlay at %s (upper %s): %v", dir, d.upper, err)
	if len(msgs) > 0 {
		text += " (kernel: " + strings.Join(msgs, "; ") + ")"
	}
	hint := "the upper directory and DIR.work beside it must be on one local file system that overlayfs accepts as upper (ext4, xfs, btrfs, tmpfs): choose another --upper"
	if d.ephemeral {
		hint = "the default upper lives in the cache directory, which must be on a file system that overlayfs accepts as upper (ext4, xfs, btrfs, tmpfs): choose another --cache-dir or pass --upper"
	}
	return withHint(errors.New(text), hint)
}

// undo takes down a writable mount that cannot be served: the overlay if it
// is up, then the FUSE view m, however far mountOverlay got.
func (ul *upperLock) undo(log *slog.Logger, m *fs.Mount, dir string) {
	if mi, ok, _ := findMount(dir); ok && isOcifsOverlay(mi) {
		unmountOverlay(log, dir)
	}
	if _, ok, _ := findMount(ul.d.lower); ok {
		unmountServed(log, m, ul.d.lower)
		return
	}
	m.Wait() // the overlay held the only reference
}

// unmountOverlay unmounts the overlay at dir; when files are still open it
// detaches lazily, and the overlay (and the FUSE view under it) ends when
// the last of them closes.
func unmountOverlay(log *slog.Logger, dir string) {
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		log.Warn("unmount busy; detaching lazily: open files are served until they close", "path", dir)
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: already unmounted
		log.Error("unmount overlay", "path", dir, "err", err)
	}
}

// release gives the upper back once the overlay is gone: it drops the lock
// of a kept upper, and removes an ephemeral one.
func (ul *upperLock) release(log *slog.Logger) {
	if ul.lock != nil {
		ul.lock.Close()
		ul.lock = nil
	}
	if ul.d.ephemeral {
		removeEphemeral(log, ul.d)
	}
}

func removeEphemeral(log *slog.Logger, d upperDirs) {
	for _, p := range []string{d.upper, d.work} {
		if err := os.RemoveAll(p); err != nil {
			log.Error("remove the mount's upper directory", "path", p, "err", err)
		}
	}
}

// cleanWritable removes what a writable mount at dir left when its daemon
// died: the read-only view, if the overlay never took it over, and the
// default upper. A kept --upper stays, with its changes.
func cleanWritable(log *slog.Logger, cacheDir, dir string) {
	d, err := writableDirs(cacheDir, dir, "")
	if err != nil {
		return
	}
	if _, ok, _ := findMount(d.lower); ok {
		if err := unix.Unmount(d.lower, unix.MNT_DETACH); err != nil {
			log.Warn("detach a stale read-only view", "path", d.lower, "err", err)
		}
	}
	if err := os.Remove(d.lower); err != nil && !errors.Is(err, iofs.ErrNotExist) && !errors.Is(err, syscall.EBUSY) {
		log.Warn("remove the lower mountpoint", "path", d.lower, "err", err)
	}
	removeEphemeral(log, d)
}

// upperSummary is how the mount command names the upper of a mount.
func upperSummary(d upperDirs) string {
	if d.ephemeral {
		return "writable, changes in " + d.upper + " until unmount"
	}
	return "writable, changes kept in " + d.upper
}
