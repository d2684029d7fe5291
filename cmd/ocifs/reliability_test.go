package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// relGuard bounds every wait in these tests on something the daemon does:
// a hang fails the test with its own message instead of the run's timeout.
const relGuard = 60 * time.Second

// relFiles are the files of the reliability image: three incompressible
// files in an indexed gzip layer, and a small one in a second layer.
var relFiles = map[string][]byte{
	"a.bin":    randomBytes(71, 2<<20),
	"b.bin":    randomBytes(72, 2<<20),
	"c.bin":    randomBytes(73, 2<<20),
	"etc/motd": []byte("small layer\n"),
}

// relImage is the reliability image in an in-process registry behind a
// fault front, with a local index of its big layer in indexCache.
type relImage struct {
	front      *fstest.Faults
	ref        string // through the front
	indexCache string // a cache holding only the layers' indexes
}

// newRelImage pushes the image, builds its indexes with `ocifs index build`
// into a cache (then drops the fetched bytes, keeping only the indexes), and
// returns it. With user set the front demands those basic credentials and
// they are written to $DOCKER_CONFIG (call isolate first).
func newRelImage(t *testing.T, user, pass string) relImage {
	t.Helper()
	var big []fstest.File
	for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
		big = append(big, tarFile(n, 0o644, relFiles[n]))
	}
	img, err := fstest.Build([]fstest.Layer{
		{Compression: fstest.Gzip, Files: big},
		{Compression: fstest.Gzip, Files: []fstest.File{tarDir("etc", 0o755), tarFile("etc/motd", 0o644, relFiles["etc/motd"])}},
	}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	direct := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(direct.Close)
	if err := img.Push(t.Context(), strings.TrimPrefix(direct.URL, "http://"), "rel/app", "v1"); err != nil {
		t.Fatalf("push: %v", err)
	}
	front, err := fstest.NewFaults(direct.URL)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	t.Cleanup(front.Release)
	host := strings.TrimPrefix(srv.URL, "http://")
	if user != "" {
		front.RequireBasicAuth(user, pass)
		writeDockerConfig(t, host, user, pass)
	}
	ri := relImage{front: front, ref: host + "/rel/app:v1", indexCache: filepath.Join(t.TempDir(), "cache")}
	mustRun(t, "--cache-dir", ri.indexCache, "index", "build", "--span-size", "262144", ri.ref)
	if err := os.RemoveAll(filepath.Join(ri.indexCache, "blobs")); err != nil {
		t.Fatal(err)
	}
	return ri
}

// seedCache copies the indexes into cache, so a mount from it is lazy.
func (ri relImage) seedCache(t *testing.T, cache string) {
	t.Helper()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(ri.indexCache, "index"), cache+"/").CombinedOutput(); err != nil {
		t.Fatalf("copy indexes: %v\n%s", err, out)
	}
}

// checkRelFiles reads every file of the image through the mount at dir.
func checkRelFiles(t *testing.T, dir string) {
	t.Helper()
	for name, want := range relFiles {
		got, err := fstest.ReadFileWithin(t, relGuard, filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s through the mount: %d bytes, %v; want the image's %d bytes", name, len(got), err, len(want))
		}
	}
}

// checkCacheSound fails unless cache/tmp is empty and every blob in the
// cache hashes to its name: nothing half-written or wrong was kept.
func checkCacheSound(t *testing.T, cache string) (blobs int) {
	t.Helper()
	if ents, err := os.ReadDir(filepath.Join(cache, "tmp")); err == nil && len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("cache tmp/ holds %v after the mount ended", names)
	}
	dir := filepath.Join(cache, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.Name() {
			t.Errorf("cached blob %s holds %d bytes hashing to %x", e.Name(), len(b), sum)
		}
		blobs++
	}
	return blobs
}

// TestReliabilityKillMidRead: the daemon is killed with SIGKILL while a
// read waits on a stalled registry answer. The reader gets an error
// (ENOTCONN, ECONNABORTED or EIO) instead of hanging, and a new mount of the
// same directory cleans the stale mount and serves the image. Without the
// stale-mount cleaning in mount, the second mount fails ("exit 1"); a
// reader left hanging fails at relGuard.
func TestReliabilityKillMidRead(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	ri := newRelImage(t, "", "")
	ri.seedCache(t, cache)
	ri.front.Add(&fstest.Rule{Method: "GET", Path: "/blobs/", Ranged: fstest.WithRange,
		Fault: fstest.Fault{Kind: fstest.Stall, N: 10}})
	dir, logPath := e2eMount(t, bin, cache, ri.ref, "--prefetch=none")
	pid := daemonPID(t, cache, dir)

	readErr := stalledRead(t, ri, filepath.Join(dir, "b.bin"))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill daemon: %v", err)
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) && !errors.Is(err, syscall.EIO) {
			t.Errorf("read when the daemon died: %v; want ENOTCONN, ECONNABORTED or EIO", err)
		}
	case <-time.After(relGuard):
		t.Fatalf("read still blocked %v after the daemon was killed", relGuard)
	}
	if err := waitExit(t.Context(), pid, relGuard); err != nil {
		t.Fatalf("killed daemon %d did not exit: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a.bin")); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("stat in the dead mount: %v; want ENOTCONN", err)
	}

	ri.front.Clear()
	ri.front.Release()
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--prefetch=none", ri.ref, dir)
	if code != 0 {
		t.Fatalf("mount over the stale mount: exit %d\n%s\n%s", code, out, errs)
	}
	checkRelFiles(t, dir)
	if b, err := os.ReadFile(logPath); err != nil || !bytes.Contains(b, []byte("cleaning a stale mount")) {
		t.Errorf("daemon log (err %v) lacks the stale-mount line", err)
	}
	e2eUnmount(t, bin, cache, dir)
}

// TestReliabilityFullDisk puts the cache on a tmpfs too small for the spans
// read. Every read is still served right (the bytes are verified in memory
// before the cache is tried), and the cache keeps nothing half-written:
// tmp/ is empty and every blob hashes to its name. A cache that renamed
// unverified or partial temp files into place fails checkCacheSound. The
// small layer (etc/motd) is fetched whole at its first read: when a
// background span write had just taken the last free blocks, its blob did
// not fit and the read failed with EIO, now and then; fs's
// TestFullDiskServesVerifiedBytes shows that case on a disk full from the
// start. A failure prints the daemon's log, which lives on the full tmpfs
// too and may lack lines.
func TestReliabilityFullDisk(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	_ = isolate(t)
	ri := newRelImage(t, "", "")
	var indexBytes int64
	filepath.Walk(filepath.Join(ri.indexCache, "index"), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			indexBytes += fi.Size()
		}
		return nil
	})
	cache := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	// Room for the indexes, the daemon's state and log, and about 1 MiB of
	// the 6 MiB of spans the reads fetch.
	size := (indexBytes + 1<<20 + 4095) / 4096 * 4096
	if err := unix.Mount("tmpfs", cache, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(cache, unix.MNT_DETACH) })
	ri.seedCache(t, cache)

	dir, logPath := e2eMount(t, bin, cache, ri.ref, "--prefetch=none")
	checkRelFiles(t, dir)
	checkRelFiles(t, dir) // again: served from what the cache kept, or fetched again
	if t.Failed() {
		b, err := os.ReadFile(logPath)
		t.Logf("daemon log %s (err %v):\n%s", logPath, err, b)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cache, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free > 512<<10 {
		t.Errorf("the cache tmpfs has %d bytes free after reading 6 MiB: the disk never filled, the test proves nothing", free)
	}
	e2eUnmount(t, bin, cache, dir)
	if n := checkCacheSound(t, cache); n == 0 {
		t.Errorf("nothing was cached at all; want what fitted")
	}
}

// corruptFiles flips a byte in the middle of every regular file under root.
func corruptFiles(t *testing.T, root string) (n int) {
	t.Helper()
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b[len(b)/2] ^= 0x5a
		n++
		return os.WriteFile(p, b, fi.Mode())
	})
	if err != nil {
		t.Fatalf("corrupt %s: %v", root, err)
	}
	return n
}

// TestReliabilityCorruptCache damages the cache on disk between two mounts:
// every cached span, and separately the index. The damage is detected, the
// bytes fetched again, and every read is right. Without the re-check of
// cached spans (fs readCached) the first case serves flipped bytes and
// fails at checkRelFiles; without the index checksum, the second fails.
func TestReliabilityCorruptCache(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	_ = isolate(t)
	ri := newRelImage(t, "", "")
	for _, what := range []string{"blobs", "index"} {
		t.Run(what, func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "cache")
			if err := os.Mkdir(cache, 0o755); err != nil {
				t.Fatal(err)
			}
			ri.seedCache(t, cache)
			dir, _ := e2eMount(t, bin, cache, ri.ref, "--prefetch=none")
			checkRelFiles(t, dir)
			e2eUnmount(t, bin, cache, dir)
			if n := corruptFiles(t, filepath.Join(cache, what)); n == 0 {
				t.Fatalf("no file under %s to corrupt; the test proves nothing", what)
			}
			dir, logPath := e2eMount(t, bin, cache, ri.ref, "--prefetch=none")
			checkRelFiles(t, dir)
			e2eUnmount(t, bin, cache, dir)
			b, _ := os.ReadFile(logPath)
			if !bytes.Contains(b, []byte("unusable")) && !bytes.Contains(b, []byte("checksum mismatch")) && !bytes.Contains(b, []byte("damaged")) {
				t.Errorf("daemon log says nothing of the damage:\n%s", b)
			}
			checkCacheSound(t, cache)
		})
	}
}

// TestReliabilityCredentialsHidden: a registry behind basic auth, the
// credentials in $DOCKER_CONFIG. After a mount at debug level, reads, a
// failing read (503 on every retry), stats and a failing cat, neither the
// password nor the encoded credentials appear in the daemon log, in any
// output, or in stats. The front records that the credentials were sent,
// so the test cannot pass by never using them.
func TestReliabilityCredentialsHidden(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	const user, pass = "ocifs-user", "S3cr3t-pa55w0rd"
	ri := newRelImage(t, user, pass)
	ri.seedCache(t, cache)
	secrets := []string{pass, base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}

	var outputs []string
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "--log-level", "debug", "mount", "--prefetch=none", ri.ref, t.TempDir())
	if code != 0 {
		t.Fatalf("mount: exit %d\n%s", code, errs)
	}
	_, logPath, _ := strings.Cut(strings.TrimSpace(out), ", log ")
	logPath = strings.TrimSuffix(logPath, ")")
	dir := strings.TrimSpace(strings.SplitN(strings.SplitN(out, " at ", 2)[1], " (pid", 2)[0])
	cleanupMount(t, cache, dir)
	outputs = append(outputs, out, errs)

	if got, err := fstest.ReadFileWithin(t, relGuard, filepath.Join(dir, "a.bin")); err != nil || !bytes.Equal(got, relFiles["a.bin"]) {
		t.Fatalf("read a.bin: %d bytes, %v", len(got), err)
	}
	ri.front.Add(&fstest.Rule{Method: "GET", Path: "/blobs/", Fault: fstest.Fault{Kind: fstest.Status, Status: 503}})
	if _, err := fstest.ReadFileWithin(t, relGuard, filepath.Join(dir, "c.bin")); !errors.Is(err, syscall.EIO) {
		t.Errorf("read through a 503 on every retry: %v, want EIO", err)
	}
	ri.front.Clear()
	out, errs, _ = execOcifs(t, bin, "--cache-dir", cache, "stats", "--json", dir)
	outputs = append(outputs, out, errs)
	out, errs, _ = execOcifs(t, bin, "--cache-dir", cache, "--log-level", "debug", "cat", ri.ref, "no/such/file")
	outputs = append(outputs, out, errs)
	e2eUnmount(t, bin, cache, dir)

	logb, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(logb, []byte("503")) && !bytes.Contains(logb, []byte("Service Unavailable")) {
		t.Errorf("daemon log does not show the failed requests; the test proves little:\n%s", logb)
	}
	outputs = append(outputs, string(logb))
	for _, o := range outputs {
		for _, s := range secrets {
			if strings.Contains(o, s) {
				t.Errorf("credentials %q appear in:\n%s", s, o)
			}
		}
	}
	sent := false
	for _, r := range ri.front.Requests() {
		sent = sent || r.Auth != ""
	}
	if !sent {
		t.Fatal("the credentials were never sent; the test proves nothing")
	}
}

// mountOptions returns the per-mount and super-block options of the mount
// at dir from /proc/self/mountinfo.
func mountOptions(t *testing.T, dir string) (mnt, super map[string]bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	set := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, o := range strings.Split(s, ",") {
			m[o] = true
		}
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != real {
			continue
		}
		for i := 6; i < len(f)-3; i++ {
			if f[i] == "-" {
				mnt, super = set(f[5]), set(f[i+3])
			}
		}
	}
	if mnt == nil {
		t.Fatalf("%s not in /proc/self/mountinfo", dir)
	}
	return mnt, super
}

// TestReliabilityMountFlags: a mount is nosuid and nodev, and not
// allow_other, unless --suid, --dev and --allow-other ask. Dropping
// MS_NOSUID or MS_NODEV in fs.Mount fails the first case.
func TestReliabilityMountFlags(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	ref := layoutRef(t, fixtureImage(t))
	for _, tc := range []struct {
		flags                   []string
		nosuid, nodev, allowAll bool
	}{
		{nil, true, true, false},
		{[]string{"--suid"}, false, true, false},
		{[]string{"--dev"}, true, false, false},
		{[]string{"--allow-other"}, true, true, true},
	} {
		t.Run(strings.Join(append([]string{"flags"}, tc.flags...), " "), func(t *testing.T) {
			cache := isolate(t)
			dir, _ := e2eMount(t, bin, cache, ref, tc.flags...)
			mnt, super := mountOptions(t, dir)
			if mnt["nosuid"] != tc.nosuid || mnt["nodev"] != tc.nodev || !mnt["ro"] {
				t.Errorf("mount options %v: want ro, nosuid=%v, nodev=%v", mnt, tc.nosuid, tc.nodev)
			}
			if super["allow_other"] != tc.allowAll {
				t.Errorf("super options %v: want allow_other=%v", super, tc.allowAll)
			}
			e2eUnmount(t, bin, cache, dir)
		})
	}
}

// TestReliabilityWritableSymlinks: an image's symlinks cannot make a write
// on a --writable mount land outside the upper directory. Inside a chroot
// on the mount, an absolute symlink resolves inside the image, so a write
// through it lands in the upper; from outside, operations on the symlinks
// themselves (lchown, rename, remove, then a directory of the same name)
// change only the upper. A host directory the symlinks name stays as it
// was. If copy-up followed a lower symlink, the lchown would change the
// host directory's owner and fail the sentinel check.
func TestReliabilityWritableSymlinks(t *testing.T) {
	requireFUSE(t)
	busybox := requireBusybox(t)
	bin := ocifsBinary(t)
	outside := t.TempDir()
	sentinel := filepath.Join(outside, "sentinel")
	if err := os.WriteFile(sentinel, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostTmpName := fmt.Sprintf("ocifs-escape-%d", os.Getpid())
	t.Cleanup(func() { os.Remove(filepath.Join("/tmp", hostTmpName)) })
	sym := func(name, target string) fstest.File {
		h := wfHeader(tar.TypeSymlink, name, 0o777)
		h.Linkname = target
		return fstest.File{Header: h}
	}
	st, err := os.Stat(busybox)
	if err != nil {
		t.Fatal(err)
	}
	bb := fstest.File{Header: wfHeader(tar.TypeReg, "bin/busybox", 0o755), Path: busybox}
	bb.Header.Size = st.Size()
	img, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: wfHeader(tar.TypeDir, "bin/", 0o755)}, bb, sym("bin/sh", "busybox"),
		{Header: wfHeader(tar.TypeDir, "tmp/", 0o1777)},
		sym("escape", outside),
		sym("up", strings.Repeat("../", 12)+strings.TrimPrefix(outside, "/")),
		sym("tmplink", "/tmp"),
		sym("victim", sentinel),
	}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := layoutRef(t, img)
	cache := isolate(t)
	upper := filepath.Join(t.TempDir(), "upper")
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "mount", "--writable", "--upper", upper, ref, dir); code != 0 {
		t.Fatalf("mount --writable: exit %d\n%s\n%s", code, out, errs)
	}

	script := fmt.Sprintf(`echo a > /tmplink/%s; echo b > /escape/new; echo c > /up/new; echo d > /victim; mkdir -p /escape/made; true`, hostTmpName)
	ctx, cancel := context.WithTimeout(t.Context(), relGuard)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "chroot", dir, "/bin/sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("chroot script: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "tmp", hostTmpName)); err != nil || string(b) != "a\n" {
		t.Errorf("write through /tmplink in the chroot: upper has %q, %v; want it there", b, err)
	}
	if _, err := os.Lstat(filepath.Join("/tmp", hostTmpName)); err == nil {
		t.Errorf("write through /tmplink in the chroot created the host's /tmp/%s", hostTmpName)
	}

	if err := os.Lchown(filepath.Join(dir, "escape"), 4321, 4321); err != nil {
		t.Errorf("lchown escape: %v", err)
	}
	if err := os.Rename(filepath.Join(dir, "up"), filepath.Join(dir, "up2")); err != nil {
		t.Errorf("rename up: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "victim")); err != nil {
		t.Errorf("remove victim: %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "victim"), 0o755); err != nil {
		t.Errorf("mkdir victim: %v", err)
	} else if err := os.WriteFile(filepath.Join(dir, "victim", "f"), []byte("inside"), 0o644); err != nil {
		t.Errorf("write victim/f: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(upper, "escape")); err != nil || fi.Mode()&os.ModeSymlink == 0 || fi.Sys().(*syscall.Stat_t).Uid != 4321 {
		t.Errorf("upper escape after lchown: %v, %v; want a symlink owned by 4321", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "victim", "f")); err != nil || string(b) != "inside" {
		t.Errorf("upper victim/f: %q, %v", b, err)
	}

	// Nothing outside changed: contents, owner, entries.
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "keep" {
		t.Errorf("host sentinel: %q, %v; want it untouched", b, err)
	}
	var ost unix.Stat_t
	if err := unix.Stat(outside, &ost); err != nil || ost.Uid != 0 {
		t.Errorf("host directory owner %d (%v); want 0: lchown followed the image's symlink", ost.Uid, err)
	}
	if ents, err := os.ReadDir(outside); err != nil || len(ents) != 1 {
		t.Errorf("host directory has %d entries (%v), want only the sentinel", len(ents), err)
	}
	if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
		t.Fatalf("unmount: exit %d\n%s\n%s", code, out, errs)
	}
}

// TestReliabilitySIGTERMMidRead: SIGTERM while a read waits on a registry
// that never answers. The mount is busy (the file is open), so the daemon
// detaches it lazily and stops fetching: the stuck read fails instead of
// holding the daemon, which then exits and leaves nothing behind. Without
// StopFetching the read retries for as long as the registry stalls, and
// the daemon waits for it.
func TestReliabilitySIGTERMMidRead(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	cache := isolate(t)
	ri := newRelImage(t, "", "")
	ri.seedCache(t, cache)
	ri.front.Add(&fstest.Rule{Method: "GET", Path: "/blobs/", Ranged: fstest.WithRange,
		Fault: fstest.Fault{Kind: fstest.Stall, N: 1000}})
	t.Cleanup(func() { ri.front.Clear(); ri.front.Release() })
	dir, _ := e2eMount(t, bin, cache, ri.ref, "--prefetch=none")
	pid := daemonPID(t, cache, dir)

	readErr := stalledRead(t, ri, filepath.Join(dir, "b.bin"))
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM daemon: %v", err)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Errorf("read against a stalled registry succeeded after SIGTERM")
		}
	case <-time.After(relGuard):
		t.Fatalf("read still blocked %v after SIGTERM", relGuard)
	}
	if err := waitExit(t.Context(), pid, relGuard); err != nil {
		t.Fatalf("daemon %d did not exit after SIGTERM: %v", pid, err)
	}
	checkGone(t, cache, dir, pid)
}

// stalledRead reads path in the background and returns once the read's
// request has reached a Stall rule of ri's front; the channel then gives
// the read's outcome.
func stalledRead(t *testing.T, ri relImage, path string) <-chan error {
	t.Helper()
	readErr := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(path)
		readErr <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), relGuard)
	defer cancel()
	if _, err := ri.front.WaitRequest(ctx, func(r fstest.Request) bool { return r.Fault == fstest.Stall }); err != nil {
		t.Fatalf("the read never reached the registry: %v", err)
	}
	return readErr
}
