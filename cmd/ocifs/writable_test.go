package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// Contents of the writable fixture.
var (
	wfTime  = time.Date(2023, 1, 2, 3, 4, 5, 0, time.UTC)
	wfBig   = randomBytes(7, 3<<19)
	wfXattr = map[string]string{"SCHILY.xattr.user.color": "blue", "SCHILY.xattr.user.size": "L"}
)

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	var x uint64 = uint64(seed)*0x9e3779b97f4a7c15 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

func wfHeader(typ byte, name string, mode int64) tar.Header {
	return tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: wfTime, Format: tar.FormatPAX}
}

// writableLayers is an image with an entry of every kind to change: files
// with xattrs and odd owners, a hardlink pair, directories full and empty,
// a whiteout and an opaque directory in the top layer.
func writableLayers() []fstest.Layer {
	dir := func(name string, mode int64) fstest.File {
		return fstest.File{Header: wfHeader(tar.TypeDir, name+"/", mode)}
	}
	file := func(name string, mode int64, data string) fstest.File {
		return fstest.File{Header: wfHeader(tar.TypeReg, name, mode), Data: []byte(data)}
	}
	xfile := file("data/x.txt", 0o644, "x marks\n")
	xfile.Header.PAXRecords = wfXattr
	owned := file("owned.txt", 0o640, "owned\n")
	owned.Header.Uid, owned.Header.Gid = 1234, 5678
	hard := fstest.File{Header: wfHeader(tar.TypeLink, "data/hard2", 0o644)}
	hard.Header.Linkname = "data/hard1"
	sym := func(name, target string) fstest.File {
		h := wfHeader(tar.TypeSymlink, name, 0o777)
		h.Linkname = target
		return fstest.File{Header: h}
	}
	fifo := fstest.File{Header: wfHeader(tar.TypeFifo, "data/pipe", 0o600)}
	big := fstest.File{Header: wfHeader(tar.TypeReg, "big.bin", 0o600), Data: wfBig}
	return []fstest.Layer{
		{Compression: fstest.Gzip, Files: []fstest.File{
			dir("etc", 0o755), file("etc/os-release", 0o644, "NAME=w\n"), sym("etc/release", "os-release"),
			dir("etc/conf.d", 0o755), file("etc/conf.d/a.conf", 0o644, "a=1\n"), file("etc/conf.d/b.conf", 0o600, "b=2\n"),
			dir("usr", 0o755), dir("usr/bin", 0o755), file("usr/bin/tool", 0o4755, "#!/bin/sh\n"),
			dir("data", 0o750), xfile, file("data/hard1", 0o644, "linked\n"), hard, fifo,
			dir("empty", 0o700), dir("full", 0o755), file("full/f1", 0o644, "f1\n"),
			dir("full/sub", 0o755), file("full/sub/f2", 0o644, "f2\n"),
			dir("hidden", 0o755), file("hidden/old", 0o644, "old\n"),
			file("gone.txt", 0o644, "gone\n"), owned, big, sym("link", "etc/os-release"), dir("tmp", 0o1777),
		}},
		{Compression: fstest.Zstd, Files: []fstest.File{
			file(".wh.gone.txt", 0o644, ""), file("etc/motd", 0o644, "motd\n"),
			file("hidden/.wh..wh..opq", 0o644, ""), file("hidden/new", 0o644, "new\n"),
		}},
	}
}

// step is one operation of the script, run on a merged tree at root.
type step struct {
	name string
	do   func(root string) error
}

func writeNew(p string, flag int, data string) error {
	f, err := os.OpenFile(p, flag, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(data)
	return errors.Join(werr, f.Close())
}

// writableScript is every operation issue 5 lists, the failing ones too.
func writableScript() []step {
	at := func(root string, p ...string) string { return filepath.Join(append([]string{root}, p...)...) }
	fixed := []unix.Timespec{unix.NsecToTimespec(1e18 + 123), unix.NsecToTimespec(1.5e18 + 456)}
	return []step{
		{"create", func(r string) error { return writeNew(at(r, "new.txt"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, "new\n") }},
		{"create over a lower file with O_EXCL", func(r string) error {
			return writeNew(at(r, "etc/os-release"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, "x")
		}},
		{"write in place", func(r string) error {
			f, err := os.OpenFile(at(r, "etc/os-release"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			_, werr := f.WriteAt([]byte("XY"), 5)
			return errors.Join(werr, f.Close())
		}},
		{"append", func(r string) error { return writeNew(at(r, "etc/motd"), os.O_WRONLY|os.O_APPEND, "more\n") }},
		{"truncate shrink", func(r string) error { return os.Truncate(at(r, "big.bin"), 1000) }},
		{"truncate grow", func(r string) error { return os.Truncate(at(r, "data/x.txt"), 10000) }},
		{"fallocate", func(r string) error {
			f, err := os.OpenFile(at(r, "etc/conf.d/a.conf"), os.O_RDWR, 0)
			if err != nil {
				return err
			}
			return errors.Join(unix.Fallocate(int(f.Fd()), 0, 0, 8192), f.Close())
		}},
		{"unlink lower file", func(r string) error { return os.Remove(at(r, "etc/conf.d/b.conf")) }},
		{"unlink lower symlink", func(r string) error { return unix.Unlink(at(r, "link")) }},
		{"unlink missing", func(r string) error { return unix.Unlink(at(r, "gone.txt")) }},
		{"unlink a directory", func(r string) error { return unix.Unlink(at(r, "full")) }},
		{"mkdir", func(r string) error { return unix.Mkdir(at(r, "newdir"), 0o750) }},
		{"mkdir existing", func(r string) error { return unix.Mkdir(at(r, "etc"), 0o755) }},
		{"rmdir non-empty lower dir", func(r string) error { return unix.Rmdir(at(r, "full")) }},
		{"rmdir empty lower dir", func(r string) error { return unix.Rmdir(at(r, "empty")) }},
		{"rmdir a file", func(r string) error { return unix.Rmdir(at(r, "etc/os-release")) }},
		{"rmdir after emptying", func(r string) error {
			return errors.Join(unix.Unlink(at(r, "full/sub/f2")), unix.Rmdir(at(r, "full/sub")))
		}},
		{"mkdir over a removed dir", func(r string) error {
			return errors.Join(unix.Mkdir(at(r, "full/sub"), 0o711), writeNew(at(r, "full/sub/n"), os.O_WRONLY|os.O_CREATE, "n\n"))
		}},
		{"rename lower file", func(r string) error { return unix.Rename(at(r, "etc/conf.d/a.conf"), at(r, "etc/a.conf")) }},
		{"rename upper file over lower file", func(r string) error { return unix.Rename(at(r, "new.txt"), at(r, "etc/os-release")) }},
		{"rename lower dir", func(r string) error { return unix.Rename(at(r, "usr"), at(r, "usr2")) }},
		{"rename lower dir over an empty upper dir", func(r string) error {
			return errors.Join(unix.Mkdir(at(r, "emptynew"), 0o755), unix.Rename(at(r, "hidden"), at(r, "emptynew")))
		}},
		{"rename onto a non-empty dir", func(r string) error { return unix.Rename(at(r, "newdir"), at(r, "full")) }},
		{"rename a dir onto a file", func(r string) error { return unix.Rename(at(r, "newdir"), at(r, "etc/motd")) }},
		{"rename a file onto a dir", func(r string) error { return unix.Rename(at(r, "etc/motd"), at(r, "newdir")) }},
		{"rename a dir into itself", func(r string) error { return unix.Rename(at(r, "etc"), at(r, "etc/inner")) }},
		{"hardlink a lower file", func(r string) error { return unix.Link(at(r, "data/x.txt"), at(r, "data/x-link")) }},
		{"hardlink into a lower hardlink group", func(r string) error { return unix.Link(at(r, "data/hard1"), at(r, "data/hard3")) }},
		{"hardlink a dir", func(r string) error { return unix.Link(at(r, "full"), at(r, "full-link")) }},
		{"symlink", func(r string) error { return unix.Symlink("../etc/os-release", at(r, "data/sym")) }},
		{"symlink existing", func(r string) error { return unix.Symlink("x", at(r, "data/x.txt")) }},
		{"mknod fifo", func(r string) error { return unix.Mkfifo(at(r, "data/fifo"), 0o640) }},
		{"mknod char device", func(r string) error { return unix.Mknod(at(r, "data/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) }},
		{"chmod a lower file under a renamed dir", func(r string) error { return unix.Chmod(at(r, "usr2/bin/tool"), 0o700) }},
		{"chmod a lower dir", func(r string) error { return unix.Chmod(at(r, "data"), 0o755) }},
		{"chown a lower file", func(r string) error { return unix.Lchown(at(r, "owned.txt"), 42, 43) }},
		{"chown a lower symlink", func(r string) error { return unix.Lchown(at(r, "etc/release"), 7, 8) }},
		{"utimens a lower file", func(r string) error { return unix.UtimesNano(at(r, "data/hard2"), fixed) }},
		{"utimens a lower dir", func(r string) error { return unix.UtimesNano(at(r, "tmp"), fixed) }},
		{"setxattr", func(r string) error { return unix.Lsetxattr(at(r, "etc/a.conf"), "user.k", []byte("v"), 0) }},
		{"removexattr of a lower xattr", func(r string) error { return unix.Lremovexattr(at(r, "data/x.txt"), "user.color") }},
		{"removexattr missing", func(r string) error { return unix.Lremovexattr(at(r, "data/x.txt"), "user.none") }},
		{"fsync", func(r string) error {
			f, err := os.OpenFile(at(r, "data/hard1"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, werr := f.WriteString("synced\n")
			return errors.Join(werr, f.Sync(), f.Close())
		}},
		{"fsync a dir", func(r string) error {
			f, err := os.Open(at(r, "data"))
			if err != nil {
				return err
			}
			return errors.Join(f.Sync(), f.Close())
		}},
		{"recreate a deleted file", func(r string) error {
			return writeNew(at(r, "etc/conf.d/b.conf"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, "b=3\n")
		}},
		{"remove a lower tree", func(r string) error { return os.RemoveAll(at(r, "etc/conf.d")) }},
		{"read a lower file", func(r string) error {
			b, err := os.ReadFile(at(r, "usr2/bin/tool"))
			if err == nil && string(b) != "#!/bin/sh\n" {
				err = fmt.Errorf("read %q", b)
			}
			return err
		}},
	}
}

// errText renders an operation's outcome for comparison: the errno, or ok.
func errText(err error) string {
	var en syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &en):
		return en.Error()
	}
	return err.Error()
}

// compareMerged compares two merged trees; an entry's mtime must match
// unless the script changed it, and then it must have changed in both.
func compareMerged(t *testing.T, got, want string, base map[string]fstest.EntryInfo) (map[string]fstest.EntryInfo, []string) {
	t.Helper()
	gm, err := fstest.Manifest(got)
	if err != nil {
		t.Fatal(err)
	}
	wm, err := fstest.Manifest(want)
	if err != nil {
		t.Fatal(err)
	}
	var changed, diffs []string
	for p, w := range wm {
		b, ok := base[p]
		if ok && b.Mtime.Equal(w.Mtime) {
			continue
		}
		changed = append(changed, p)
		if g, ok := gm[p]; ok && !g.Mtime.Equal(w.Mtime) && ok && base[p].Mtime.Equal(g.Mtime) {
			diffs = append(diffs, fmt.Sprintf("%s: mtime unchanged in ocifs (%s), changed in the reference", p, g.Mtime))
		}
	}
	diffs = append(diffs, fstest.CompareManifests(gm, wm, fstest.CompareOptions{IgnoreMtimePaths: changed})...)
	return gm, diffs
}

// mountKernelOverlay mounts overlayfs at dir over lower with the options
// ocifs uses, as the reference.
func mountKernelOverlay(t *testing.T, lower, upper, dir string) {
	t.Helper()
	if err := errors.Join(os.MkdirAll(upper, 0o755), os.MkdirAll(upper+".work", 0o700)); err != nil {
		t.Fatal(err)
	}
	if err := fs.MountOverlay(dir, fs.UpperDirs{Lower: lower, Upper: upper, Work: upper + ".work"}, fs.OverlayOptions{}); err != nil {
		t.Fatalf("kernel overlay: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

// copyRootAttrs makes dir a fresh upper as ocifs makes one: the lower
// root's mode, owner and times.
func copyRootAttrs(t *testing.T, lower, dir string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(os.Lchown(dir, int(st.Uid), int(st.Gid)), unix.Chmod(dir, st.Mode&0o7777),
		unix.UtimesNano(dir, []unix.Timespec{st.Atim, st.Mtim})); err != nil {
		t.Fatal(err)
	}
}

// TestWritableMatchesOverlay runs the script on an ocifs --writable mount
// and on the kernel's overlayfs over a pulled copy of the same image, and
// compares the two merged trees after every step, and the errors. Then it
// mounts the kernel's overlay over ocifs's upper: the same tree again.
func TestWritableMatchesOverlay(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	img, err := fstest.Build(writableLayers(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := layoutRef(t, img)
	cache := isolate(t)
	tmp := t.TempDir()
	pulled := filepath.Join(tmp, "rootfs")
	mustRun(t, "--cache-dir", cache, "pull", ref, pulled)
	base, err := fstest.Manifest(pulled)
	if err != nil {
		t.Fatal(err)
	}

	want := filepath.Join(tmp, "want")
	if err := os.Mkdir(want, 0o755); err != nil {
		t.Fatal(err)
	}
	copyRootAttrs(t, pulled, filepath.Join(tmp, "want-upper"))
	mountKernelOverlay(t, pulled, filepath.Join(tmp, "want-upper"), want)

	upper := filepath.Join(tmp, "upper")
	got := t.TempDir()
	cleanupMount(t, cache, got)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, "--prefetch=none", ref, got)
	if code != 0 {
		t.Fatalf("mount --writable: exit %d\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(out, "writable, changes kept in "+upper) {
		t.Errorf("mount --writable printed %q", out)
	}
	pid := daemonPID(t, cache, got)
	if _, diffs := compareMerged(t, got, want, base); len(diffs) > 0 {
		t.Fatalf("fresh writable mount differs from the kernel's overlay:\n%s", strings.Join(diffs, "\n"))
	}
	var last map[string]fstest.EntryInfo
	for _, s := range writableScript() {
		gerr, werr := errText(s.do(got)), errText(s.do(want))
		t.Logf("step %q: %s", s.name, gerr)
		if gerr != werr {
			t.Errorf("step %q: ocifs answered %s, the kernel's overlay %s", s.name, gerr, werr)
		}
		var diffs []string
		last, diffs = compareMerged(t, got, want, base)
		if len(diffs) > 0 {
			t.Fatalf("after step %q (%s) the trees differ:\n%s", s.name, gerr, strings.Join(diffs, "\n"))
		}
	}

	// stats answers on the user's mountpoint.
	if r := mustRun(t, "--cache-dir", cache, "stats", got); !strings.Contains(r.stdout, img.ManifestDesc.Digest.String()) {
		t.Errorf("stats of a writable mount:\n%s", r.stdout)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", got); code != 0 {
		t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
	}
	checkGone(t, cache, got, pid)
	d, _ := writableDirs(cache, got, "")
	if _, err := os.Stat(d.Lower); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lower mountpoint %s left behind (%v)", d.Lower, err)
	}

	// The upper is a plain overlayfs upperdir: the kernel's overlay over the
	// pulled tree with it shows what the ocifs mount showed.
	again := t.TempDir()
	mountKernelOverlay(t, pulled, upper, again)
	am, err := fstest.Manifest(again)
	if err != nil {
		t.Fatal(err)
	}
	if diffs := fstest.CompareManifests(am, last, fstest.CompareOptions{}); len(diffs) > 0 {
		t.Errorf("kernel overlay over ocifs's upper differs from the ocifs mount:\n%s", strings.Join(diffs, "\n"))
	}
}

// TestWritableUpperChecks covers the refusals: an upper that is a file,
// one on a file system overlayfs refuses, one in use, one made over another
// image (and --force-upper), and paths that need escaping.
func TestWritableUpperChecks(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	img := fixtureImage(t)
	ref := layoutRef(t, img)
	tmp := t.TempDir()

	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "--cache-dir", cache, "mount", "--writable", "--upper", file, ref, t.TempDir())
	if r.code != exitFailure || !strings.Contains(r.stderr, "upper "+file+" is not a directory") {
		t.Errorf("upper is a file: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "--cache-dir", cache, "mount", "--upper", file, ref, t.TempDir())
	if r.code != exitUsage || !strings.Contains(r.stderr, "--upper needs --writable") {
		t.Errorf("--upper alone: exit %d, stderr %q", r.code, r.stderr)
	}

	// overlayfs refuses another overlay as upper.
	ovl := t.TempDir()
	mountKernelOverlay(t, t.TempDir(), filepath.Join(t.TempDir(), "u"), ovl)
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", filepath.Join(ovl, "up"), ref, dir)
	if code != exitFailure || !strings.Contains(errs, "not supported as upperdir") || !strings.Contains(errs, "overlayfs accepts as upper") {
		t.Errorf("upper on an overlay: exit %d\n%s\n%s", code, out, errs)
	}
	if _, ok, _ := findMount(dir); ok {
		t.Errorf("%s mounted after a refused upper", dir)
	}
	if d, _ := writableDirs(cache, dir, ""); true {
		if _, ok, _ := findMount(d.Lower); ok {
			t.Errorf("lower %s still mounted after a refused upper", d.Lower)
		}
	}

	// An upper whose path needs escaping, in use by a first mount.
	upper := filepath.Join(tmp, `odd,name:with\chars`)
	first := t.TempDir()
	cleanupMount(t, cache, first)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, ref, first); code != 0 {
		t.Fatalf("mount with an odd upper path: exit %d\n%s\n%s", code, out, errs)
	}
	if err := os.WriteFile(filepath.Join(first, "marker"), []byte("m"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "marker")); err != nil || string(b) != "m" {
		t.Errorf("marker in the upper: %q, %v", b, err)
	}
	second := t.TempDir()
	cleanupMount(t, cache, second)
	out, errs, code = execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, ref, second)
	if code != exitFailure || !strings.Contains(errs, "is in use by the ocifs mount at "+first) {
		t.Errorf("upper in use: exit %d\n%s\n%s", code, out, errs)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", first); code != 0 {
		t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(upper, "marker")); err != nil {
		t.Errorf("a kept upper lost its changes at unmount: %v", err)
	}

	// Another image over the same upper: refused, then forced.
	other, err := fstest.Build(writableLayers(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	otherRef := layoutRef(t, other)
	out, errs, code = execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, otherRef, second)
	if code != exitFailure || !strings.Contains(errs, "holds changes made over "+ref) || !strings.Contains(errs, "--force-upper") {
		t.Errorf("upper of another image: exit %d\n%s\n%s", code, out, errs)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, "--force-upper", otherRef, second); code != 0 {
		t.Fatalf("--force-upper: exit %d\n%s\n%s", code, out, errs)
	}
	if b, err := os.ReadFile(filepath.Join(second, "marker")); err != nil || string(b) != "m" {
		t.Errorf("marker through the forced mount: %q, %v", b, err)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", second); code != 0 {
		t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
	}
}

// TestWritableStale kills the daemon of a writable mount: the overlay
// stays, its image files fail, and both unmount and a new mount clean up.
func TestWritableStale(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	ref := layoutRef(t, fixtureImage(t))
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	d, _ := writableDirs(cache, dir, "")
	for round := range 2 {
		if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", ref, dir); code != 0 {
			t.Fatalf("round %d: mount --writable: exit %d\n%s\n%s", round, code, out, errs)
		}
		if err := os.WriteFile(filepath.Join(dir, "note"), []byte("n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(d.Upper, "note")); err != nil {
			t.Errorf("round %d: default upper %s lacks the new file: %v", round, d.Upper, err)
		}
		pid := daemonPID(t, cache, dir)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := waitExit(t.Context(), pid, time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err == nil {
			t.Errorf("round %d: an image file read after its daemon died", round)
		}
		if round == 0 {
			// Mounting again cleans up first.
			continue
		}
		out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir)
		if code != 0 || out != "unmounted "+dir+"\n" {
			t.Fatalf("unmount of a stale writable mount: exit %d\n%s\n%s", code, out, errs)
		}
		checkGone(t, cache, dir, pid)
	}
	for _, p := range []string{d.Upper, d.Work, d.Lower} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// requireBusybox returns a static busybox to put in an image.
func requireBusybox(t *testing.T) string {
	t.Helper()
	const p = "/bin/busybox"
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test needs a static %s (apt-get install busybox-static), and CI=true", p)
		}
		t.Skipf("needs a static %s (apt-get install busybox-static)", p)
	}
	return p
}

// TestWritableChroot runs a small real workload in a chroot on a writable
// mount, remounts the kept upper, and checks that the cached blobs are
// unchanged.
func TestWritableChroot(t *testing.T) {
	requireFUSE(t)
	busybox := requireBusybox(t)
	bin := ocifsBinary(t)
	bb := fstest.File{Header: wfHeader(tar.TypeReg, "bin/busybox", 0o755), Path: busybox}
	files := []fstest.File{
		{Header: wfHeader(tar.TypeDir, "bin/", 0o755)}, bb,
		{Header: wfHeader(tar.TypeDir, "etc/", 0o755)},
		{Header: wfHeader(tar.TypeReg, "etc/app.conf", 0o644), Data: []byte("port=80\nname=demo\n")},
		{Header: wfHeader(tar.TypeDir, "var/", 0o755)}, {Header: wfHeader(tar.TypeDir, "var/lib/", 0o755)},
		{Header: wfHeader(tar.TypeDir, "var/lib/data/", 0o755)},
		{Header: wfHeader(tar.TypeReg, "var/lib/data/a", 0o644), Data: []byte("a\n")},
		{Header: wfHeader(tar.TypeReg, "var/lib/data/b", 0o644), Data: []byte("b\n")},
		{Header: wfHeader(tar.TypeDir, "tmp/", 0o1777)},
	}
	for _, name := range []string{"sh", "sed", "ls", "cat", "rm", "mkdir", "echo", "sha256sum"} {
		h := wfHeader(tar.TypeSymlink, "bin/"+name, 0o777)
		h.Linkname = "busybox"
		files = append(files, fstest.File{Header: h})
	}
	fileSize := func() int64 { st, _ := os.Stat(busybox); return st.Size() }()
	files[1].Header.Size = fileSize
	img, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: files}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := registryRef(t, img, nil)
	cache := isolate(t)
	upper := filepath.Join(t.TempDir(), "upper")
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	mount := func() {
		t.Helper()
		if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, ref, dir); code != 0 {
			t.Fatalf("mount --writable: exit %d\n%s\n%s", code, out, errs)
		}
	}
	unmount := func() {
		t.Helper()
		if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
			t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
		}
	}
	mount()
	script := `set -e
echo hello > /hello.txt
mkdir -p /opt/app
sed -i 's/port=80/port=8080/' /etc/app.conf
rm -rf /var/lib/data
ls / > /opt/app/root.txt
sha256sum /bin/busybox > /opt/app/sum.txt
cat /etc/app.conf`
	cmd := exec.CommandContext(t.Context(), "chroot", dir, "/bin/sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chroot workload: %v\n%s", err, out)
	}
	if string(out) != "port=8080\nname=demo\n" {
		t.Errorf("chroot workload printed %q", out)
	}
	unmount()

	// The upper holds the changes in overlayfs's format.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "var/lib/data"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("upper var/lib/data: mode %o rdev %d, %v; want a 0/0 whiteout", st.Mode, st.Rdev, err)
	}

	mount()
	check := map[string]string{"hello.txt": "hello\n", "etc/app.conf": "port=8080\nname=demo\n"}
	for p, want := range check {
		if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != want {
			t.Errorf("after remount %s = %q, %v; want %q", p, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "var/lib/data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after remount var/lib/data: %v, want not exist", err)
	}
	sum, err := os.ReadFile(filepath.Join(dir, "opt/app/sum.txt"))
	bbBytes, _ := os.ReadFile(busybox)
	h := sha256.Sum256(bbBytes)
	if err != nil || !strings.HasPrefix(string(sum), hex.EncodeToString(h[:])) {
		t.Errorf("sha256sum run from the image = %q, %v; want %x", sum, err, h)
	}
	unmount()

	// Every cached blob still matches its digest.
	r := mustRun(t, "--cache-dir", cache, "cache", "ls")
	blobs := 0
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "blob" {
			continue
		}
		algo, hexd, _ := strings.Cut(f[1], ":")
		fh, err := os.Open(filepath.Join(cache, "blobs", algo, hexd))
		if err != nil {
			t.Errorf("cached blob %s: %v", f[1], err)
			continue
		}
		hh := sha256.New()
		_, err = io.Copy(hh, fh)
		fh.Close()
		if got := "sha256:" + hex.EncodeToString(hh.Sum(nil)); err != nil || got != f[1] {
			t.Errorf("cached blob %s now hashes to %s (%v)", f[1], got, err)
		}
		blobs++
	}
	if blobs == 0 {
		t.Errorf("cache ls lists no blobs:\n%s", r.stdout)
	}
}

func TestMountHelpWritable(t *testing.T) {
	r := mustRun(t, "mount", "--help")
	for _, w := range []string{"--writable", "--upper DIR", "DIR.work", "--force-upper", "--progressive", "trust trade-off",
		"ocifs mount --writable --upper /var/lib/app/upper", "redirect_dir=on", "trusted.overlay.opaque"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("mount --help lacks %q", w)
		}
	}
}

func TestDaemonArgsWritable(t *testing.T) {
	g := &globals{cacheDir: "/c"}
	got := strings.Join(daemonArgs(g, "img", "/mnt", &mountOpts{prefetch: "all", writable: true, upper: "/u", forceUpper: true, progressive: true}), " ")
	want := "--cache-dir=/c mount --foreground --ready-fd=3 --prefetch=all --upper=/u --progressive --writable --force-upper -- img /mnt"
	if got != want {
		t.Errorf("daemonArgs = %q\nwant %q", got, want)
	}
	// The daemon parses what the parent spelled out.
	set := newFlagSet("mount")
	mountFlags(set)
	if err := set.Parse(strings.Fields(want)[2:]); err != nil {
		t.Fatalf("parse daemon args: %v", err)
	}
	for _, name := range []string{"writable", "force-upper", "progressive"} {
		if v, _ := set.GetBool(name); !v {
			t.Errorf("daemon flag --%s not set", name)
		}
	}
	if v, _ := set.GetString("upper"); v != "/u" {
		t.Errorf("daemon --upper = %q", v)
	}
}

// TestWritableSIGTERM stops the daemon of a writable mount with SIGTERM: it
// unmounts the overlay (which ends the FUSE view under it) and removes the
// default upper.
func TestWritableSIGTERM(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	ref := layoutRef(t, fixtureImage(t))
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", ref, dir); code != 0 {
		t.Fatalf("mount --writable: exit %d\n%s\n%s", code, out, errs)
	}
	checkContent(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "etc/motd"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := daemonPID(t, cache, dir)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t.Context(), pid, time.Minute); err != nil {
		t.Fatalf("daemon after SIGTERM: %v", err)
	}
	checkGone(t, cache, dir, pid)
	d, _ := writableDirs(cache, dir, "")
	for _, p := range []string{d.Upper, d.Work, d.Lower} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// TestWritableCopyUpFetchesOneFile checks that a copy-up reads only the file
// it copies: on an indexed layer with --prefetch=none, chmod of one 4 MiB
// file fetches far less than the layer holds.
func TestWritableCopyUpFetchesOneFile(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	const n = 4 << 20
	var files []fstest.File
	for i, name := range []string{"a.bin", "b.bin", "c.bin"} {
		files = append(files, fstest.File{Header: wfHeader(tar.TypeReg, name, 0o644), Data: randomBytes(int64(i+11), n)})
	}
	img, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: files}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := registryRef(t, img, nil)
	cache := isolate(t)
	mustRun(t, "--cache-dir", cache, "index", "build", "--span-size", "262144", ref)
	// Index building fetched the layer: start the mount from an empty blob cache.
	if err := os.RemoveAll(filepath.Join(cache, "blobs")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--prefetch=none", ref, dir); code != 0 {
		t.Fatalf("mount --writable: exit %d\n%s\n%s", code, out, errs)
	}
	if err := os.Chmod(filepath.Join(dir, "b.bin"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, _ := writableDirs(cache, dir, "")
	if b, err := os.ReadFile(filepath.Join(d.Upper, "b.bin")); err != nil || !bytes.Equal(b, files[1].Data) {
		t.Fatalf("copied-up b.bin in the upper: %d bytes, %v", len(b), err)
	}
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "stats", "--json", dir)
	if code != 0 {
		t.Fatalf("stats: %s", errs)
	}
	var st struct {
		BytesFetched int64 `json:"bytes_fetched"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("copy-up of one %d-byte file fetched %d bytes (layer %d bytes)", n, st.BytesFetched, img.LayerDescs[0].Size)
	if st.BytesFetched < n/2 || st.BytesFetched > img.LayerDescs[0].Size*2/3 {
		t.Errorf("copy-up fetched %d bytes; want about one file's %d, well under the layer's %d", st.BytesFetched, n, img.LayerDescs[0].Size)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
		t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
	}
}
