package fs

// Writable mounts: the kernel's overlayfs over the read-only FUSE view, the
// copy-on-write half of the union.
//
// The daemon mounts the image read-only at a private lower directory, then
// mounts overlay at the user's mountpoint with that as lowerdir, and detaches
// the lower from the file tree: the overlay keeps its own reference to the
// FUSE super block, so the FUSE mount lives exactly as long as the overlay.
// Whoever unmounts the overlay (ocifs unmount, umount, umount -l) thereby
// ends the FUSE mount too, and the daemon, seeing its FUSE server end,
// cleans up and exits. Nothing but the overlay is left in the mount table.
//
// The order, as cmd/ocifs drives it: [WritableDirs] names the directories,
// [UpperDirs.Check] checks a kept upper before the daemon starts,
// [ClaimUpper] locks it against other mounts and images, [Image.Mount]
// serves the image at UpperDirs.Lower, [Upper.Mount] puts the overlay over
// it, and [UnmountOverlay] then [Upper.Release] end it; [CleanWritable]
// removes what a daemon that died left.
//
// Errors that a user can act on carry a hint (what to do next, in the
// terms of the ocifs command line) behind a Hint() string method, which
// cmd/ocifs prints after the error.

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

	"github.com/ocifs/ocifs/fs/mountinfo"
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

// UpperDirs are the directories of a writable mount.
type UpperDirs struct {
	Lower string // where the read-only FUSE view is mounted until the overlay holds it
	Upper string // overlay upperdir: every change
	Work  string // overlay workdir: same file system as upper, not inside it
	// Ephemeral is the default upper: created fresh for the mount and
	// removed when it ends.
	Ephemeral bool
}

// WritableDirs names the directories of a writable mount at dir (absolute):
// the lower is mountsDir/name.lower. Without an upper (the empty string)
// the upper and work directories are mountsDir/name.upper and .work, and
// ephemeral; with upper DIR the work directory is DIR.work beside it.
// name must be unique to dir (cmd/ocifs hashes the path).
func WritableDirs(mountsDir, name, dir, upper string) (UpperDirs, error) {
	d := UpperDirs{Lower: filepath.Join(mountsDir, name+".lower")}
	if upper == "" {
		d.Upper, d.Work, d.Ephemeral = filepath.Join(mountsDir, name+".upper"), filepath.Join(mountsDir, name+".work"), true
		return d, nil
	}
	abs, err := filepath.Abs(upper)
	if err != nil {
		return UpperDirs{}, fmt.Errorf("upper %s: %w", upper, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if abs == "/" {
		return UpperDirs{}, fmt.Errorf("upper %s: the root directory cannot be an upper directory", upper)
	}
	if within(abs, dir) || within(dir, abs) {
		return UpperDirs{}, fmt.Errorf("upper %s and mountpoint %s overlap: put the upper directory outside the mountpoint", abs, dir)
	}
	d.Upper, d.Work = abs, abs+".work"
	return d, nil
}

// within reports whether p is dir or below it (both clean and absolute).
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// Check checks a kept upper (--upper DIR) before the daemon starts: it is a
// directory, or does not exist yet in a directory that does.
func (d UpperDirs) Check() error {
	if d.Ephemeral {
		return nil
	}
	for _, p := range []string{d.Upper, d.Work} {
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

// Claim says who claims an upper: the mount of Image (resolved to
// ManifestDigest) at Mountpoint.
type Claim struct {
	Image          string        // the reference, for messages and the upper record
	ManifestDigest digest.Digest // the image the changes are made over
	Mountpoint     string        // where the overlay goes (absolute)
	// Force lays the upper over this image even if it records changes made
	// over another one (--force-upper).
	Force bool
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger
}

// Upper is an upper directory claimed by this daemon. Release gives it back.
type Upper struct {
	d     UpperDirs
	claim Claim
	log   *slog.Logger
	lock  *os.File // flock'ed, nil for an ephemeral upper
}

// Dirs returns the directories of the upper.
func (ul *Upper) Dirs() UpperDirs { return ul.d }

// ClaimUpper prepares the upper and work directories of a writable mount:
// it refuses an upper that another mount uses, or one made over a different
// image unless c.Force, and starts an ephemeral upper afresh. The upper
// itself is created by [Upper.Mount], once the image's root directory can
// be copied.
func ClaimUpper(d UpperDirs, c Claim) (*Upper, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	image, dgst := c.Image, c.ManifestDigest
	if d.Ephemeral {
		// Left by a daemon that died: the changes of an ephemeral mount
		// die with it.
		for _, p := range []string{d.Upper, d.Work} {
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("remove old upper %s: %w", p, err)
			}
		}
		if err := os.Mkdir(d.Work, 0o700); err != nil {
			return nil, fmt.Errorf("upper work directory: %w", err)
		}
		return &Upper{d: d, claim: c, log: log}, nil
	}
	if err := d.Check(); err != nil {
		return nil, err
	}
	if err := os.Mkdir(d.Work, 0o700); err != nil && !errors.Is(err, iofs.ErrExist) {
		return nil, fmt.Errorf("upper work directory %s: %w", d.Work, err)
	}
	f, err := os.OpenFile(filepath.Join(d.Work, upperLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("upper lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		rec, _ := readUpperRecord(d.Work)
		if errors.Is(err, unix.EWOULDBLOCK) && rec != nil {
			return nil, withHint(fmt.Errorf("upper %s is in use by the ocifs mount at %s (pid %d)", d.Upper, rec.Mountpoint, rec.PID),
				"unmount it first: ocifs unmount "+rec.Mountpoint)
		}
		return nil, fmt.Errorf("upper %s: lock %s: %w", d.Upper, f.Name(), err)
	}
	ul := &Upper{d: d, claim: c, log: log, lock: f}
	if err := checkOverlayUsers(d); err != nil {
		ul.Release()
		return nil, err
	}
	rec, err := readUpperRecord(d.Work)
	switch {
	case err != nil:
		ul.Release()
		return nil, err
	case rec != nil && rec.ManifestDigest != dgst && !c.Force:
		ul.Release()
		return nil, withHint(
			fmt.Errorf("upper %s holds changes made over %s (%s); this mount is of %s (%s)", d.Upper, rec.Image, rec.ManifestDigest, image, dgst),
			fmt.Sprintf("mount the image it was made over (%s@%s), or pass --force-upper to lay these changes over %s", imageName(rec.Image), rec.ManifestDigest, image))
	case rec != nil && rec.ManifestDigest != dgst:
		log.Warn("reusing an upper made over another image (--force-upper)", "path", d.Upper, "was", rec.ManifestDigest, "digest", dgst)
	case rec == nil:
		if ents, err := os.ReadDir(d.Upper); err == nil && len(ents) > 0 {
			log.Warn("upper is not empty and records no image; using it as it is", "path", d.Upper)
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
		return nil, withHint(fmt.Errorf("upper record %s: %w: %w", p, ErrFormat, err), "remove it to use the upper with any image")
	}
	return &rec, nil
}

// checkOverlayUsers refuses an upper or work directory that an overlay
// mounted now uses: overlayfs itself only warns about that.
func checkOverlayUsers(d UpperDirs) error {
	ms, err := mountinfo.Read(mountinfo.Self)
	if err != nil {
		return err
	}
	for _, om := range overlays(ms) {
		if om.upper == d.Upper || om.work == d.Work || om.upper == d.Work || om.work == d.Upper {
			return withHint(fmt.Errorf("upper %s is in use by the overlay mounted at %s", d.Upper, om.mountpoint),
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

// overlays picks the overlay mounts of a mount table; the kernel escapes ','
// and white space in option values as octal.
func overlays(ms []mountinfo.Mount) []overlayMount {
	var out []overlayMount
	for _, mi := range ms {
		if mi.FSType != "overlay" || mi.SuperOpts == nil {
			continue
		}
		om := overlayMount{mountpoint: mi.Mountpoint, source: mi.Source}
		for _, opt := range mi.SuperOpts {
			k, v, _ := strings.Cut(opt, "=")
			switch k {
			case "upperdir":
				om.upper = mountinfo.Unescape(v)
			case "workdir":
				om.work = mountinfo.Unescape(v)
			}
		}
		out = append(out, om)
	}
	return out
}

// IsOverlay reports whether mi is the overlay of a writable ocifs mount.
func IsOverlay(mi mountinfo.Mount) bool {
	return mi.FSType == "overlay" && mi.Source == overlaySource
}

// OverlayOptions are the mount flags of an overlay. The zero value is
// nosuid and nodev.
type OverlayOptions struct {
	Suid bool // honour set-user-ID and set-group-ID bits (else MOUNT_ATTR_NOSUID)
	Dev  bool // allow device files (else MOUNT_ATTR_NODEV)
}

// Mount mounts the overlay at the claim's mountpoint over the FUSE view
// mounted at Dirs().Lower, then detaches the lower: from then on the overlay
// holds the only reference to it. It creates a missing upper with the mode
// and owner of the image's root, which the overlay's root shows, and
// records in the work directory which image a kept upper was made over.
func (ul *Upper) Mount(o OverlayOptions) error {
	d, log, dir := ul.d, ul.log, ul.claim.Mountpoint
	if err := makeUpper(d); err != nil {
		return err
	}
	if err := MountOverlay(dir, d, o); err != nil {
		return err
	}
	log.Info("overlay mounted", "path", dir, "upper", d.Upper, "work", d.Work, "ephemeral", d.Ephemeral)
	if err := unix.Unmount(d.Lower, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the read-only view at %s from under the overlay: %w", d.Lower, err)
	}
	if err := os.Remove(d.Lower); err != nil {
		log.Warn("remove the lower mountpoint", "path", d.Lower, "err", err)
	}
	if d.Ephemeral {
		return nil
	}
	b, err := json.MarshalIndent(upperRecord{Image: ul.claim.Image, ManifestDigest: ul.claim.ManifestDigest, Mountpoint: dir, PID: os.Getpid()}, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.Work, upperRecordName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write upper record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.Work, upperRecordName)); err != nil {
		return fmt.Errorf("write upper record: %w", err)
	}
	return nil
}

// makeUpper creates a missing upper directory with the image root's mode,
// owner and times: the overlay's root directory is the upper's.
func makeUpper(d UpperDirs) error {
	if _, err := os.Stat(d.Upper); err == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(d.Lower, &st); err != nil {
		return fmt.Errorf("image root: %w", err)
	}
	if err := os.Mkdir(d.Upper, 0o700); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	if err := os.Lchown(d.Upper, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	if err := unix.Chmod(d.Upper, st.Mode&0o7777); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNano(d.Upper, ts); err != nil {
		return fmt.Errorf("create upper: %w", err)
	}
	return nil
}

// MountOverlay mounts overlayfs at dir over d.Lower, with d.Upper and d.Work
// and the options every writable mount pins (redirect_dir=on, index=off,
// metacopy=off), through the new mount API, which reports the kernel's
// reason for a refusal; mount(2) where that API is missing. It is the
// mount step of [Upper.Mount], without the upper's creation or record.
func MountOverlay(dir string, d UpperDirs, o OverlayOptions) error {
	suid, dev := o.Suid, o.Dev
	opts := [][2]string{
		{"source", overlaySource},
		{"lowerdir", escapeOverlayPath(d.Lower)},
		{"upperdir", escapeOverlayPath(d.Upper)},
		{"workdir", escapeOverlayPath(d.Work)},
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
func overlayError(dir string, d UpperDirs, err error, msgs []string) error {
	text := fmt.Sprintf("mount overlay at %s (upper %s): %v", dir, d.Upper, err)
	if len(msgs) > 0 {
		text += " (kernel: " + strings.Join(msgs, "; ") + ")"
	}
	hint := "the upper directory and DIR.work beside it must be on one local file system that overlayfs accepts as upper (ext4, xfs, btrfs, tmpfs): choose another --upper"
	if d.Ephemeral {
		hint = "the default upper lives in the cache directory, which must be on a file system that overlayfs accepts as upper (ext4, xfs, btrfs, tmpfs): choose another --cache-dir or pass --upper"
	}
	return withHint(errors.New(text), hint)
}

// UnmountOverlay unmounts the overlay at dir; when files are still open it
// detaches lazily, and the overlay (and the FUSE view under it) ends when
// the last of them closes.
func UnmountOverlay(log *slog.Logger, dir string) {
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		log.Warn("unmount busy; detaching lazily: open files are served until they close", "path", dir)
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: already unmounted
		log.Error("unmount overlay", "path", dir, "err", err)
	}
}

// Release gives the upper back once the overlay is gone: it drops the lock
// of a kept upper, and removes an ephemeral one.
func (ul *Upper) Release() {
	if ul.lock != nil {
		ul.lock.Close()
		ul.lock = nil
	}
	if ul.d.Ephemeral {
		removeEphemeral(ul.log, ul.d)
	}
}

func removeEphemeral(log *slog.Logger, d UpperDirs) {
	for _, p := range []string{d.Upper, d.Work} {
		if err := os.RemoveAll(p); err != nil {
			log.Error("remove the mount's upper directory", "path", p, "err", err)
		}
	}
}

// CleanWritable removes what a writable mount left when its daemon died:
// the read-only view at d.Lower, if the overlay never took it over, and an
// ephemeral upper. A kept upper stays, with its changes.
func CleanWritable(log *slog.Logger, d UpperDirs) {
	if _, ok, _ := mountinfo.At(d.Lower); ok {
		if err := unix.Unmount(d.Lower, unix.MNT_DETACH); err != nil {
			log.Warn("detach a stale read-only view", "path", d.Lower, "err", err)
		}
	}
	if err := os.Remove(d.Lower); err != nil && !errors.Is(err, iofs.ErrNotExist) && !errors.Is(err, syscall.EBUSY) {
		log.Warn("remove the lower mountpoint", "path", d.Lower, "err", err)
	}
	removeEphemeral(log, d)
}

// hintError is an error with what to do next, in the terms of the ocifs
// command line; cmd/ocifs finds it by its Hint method and prints it.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }

// Hint says what to do next about the error.
func (e *hintError) Hint() string { return e.hint }

func withHint(err error, hint string) error { return &hintError{err: err, hint: hint} }
