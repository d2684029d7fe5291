package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// remountLayers is an image of many regular files of one type in a few
// directories, so that a file handle decoded to the wrong node most often
// lands on another regular file (which overlayfs cannot tell from the
// right one) rather than on a directory (which it rejects as an invalid
// origin).
func remountLayers() []fstest.Layer {
	dir := func(name string) fstest.File { return fstest.File{Header: wfHeader(tar.TypeDir, name+"/", 0o755)} }
	file := func(name string) fstest.File {
		return fstest.File{Header: wfHeader(tar.TypeReg, name, 0o644), Data: []byte("content of " + name + "\n")}
	}
	// big.bin makes layer 0 larger than a layer fetched whole, so that
	// --progressive streams it.
	big := fstest.File{Header: wfHeader(tar.TypeReg, "big.bin", 0o644), Data: randomBytes(12, 3<<19)}
	l0 := []fstest.File{dir("data"), dir("etc"), dir("lib"), file("top1"), file("top2"), big}
	for i := range 40 {
		l0 = append(l0, file(fmt.Sprintf("data/f%02d", i)))
	}
	for i := range 10 {
		l0 = append(l0, file(fmt.Sprintf("etc/e%d", i)))
	}
	for d := range 4 {
		l0 = append(l0, dir(fmt.Sprintf("lib/sub%d", d)))
		for i := range 5 {
			l0 = append(l0, file(fmt.Sprintf("lib/sub%d/l%d", d, i)))
		}
	}
	l1 := []fstest.File{file("data/f07"), file("data/f40"), file("etc/e10")}
	l1[0].Data = []byte("replaced in the top layer\n")
	return []fstest.Layer{{Compression: fstest.Gzip, Files: l0}, {Compression: fstest.Gzip, Files: l1}}
}

// remountChanges copies up files with changes that keep the rest of the
// file as the image has it: new times (touch), new modes, and small
// appends (whose times are then fixed, to compare with the reference).
func remountChanges(root string) error {
	at := func(p string) string { return filepath.Join(root, p) }
	fixed := []unix.Timespec{unix.NsecToTimespec(1.2e18 + 7), unix.NsecToTimespec(1.3e18 + 9)}
	var errs []error
	for _, p := range touched {
		errs = append(errs, unix.UtimesNano(at(p), fixed))
	}
	for p, mode := range chmodded {
		errs = append(errs, unix.Chmod(at(p), mode))
	}
	for _, p := range appended {
		errs = append(errs, writeNew(at(p), os.O_WRONLY|os.O_APPEND, "appended\n"), unix.UtimesNano(at(p), fixed))
	}
	return errors.Join(errs...)
}

// The files remountChanges copies up.
var (
	touched  = []string{"data/f05", "data/f17", "etc/e3", "lib/sub2/l1", "top2", "big.bin"}
	chmodded = map[string]uint32{"data/f22": 0o600, "etc/e6": 0o700, "lib/sub0/l4": 0o640, "data/f40": 0o444}
	appended = []string{"data/f31", "etc/e0", "lib/sub3/l2", "data/f07"}
	copiedUp = append(append(slices.Clone(touched), appended...), slices.Collect(maps.Keys(chmodded))...)
)

// compareRemount compares every entry of the mounted tree with the
// reference. It walks as fstest.Manifest does (each directory read, then
// its entries looked up in name order) but goes on past errors, reading
// every file, so that both ways a wrong origin shows are reported: ESTALE
// (overlayfs finds the handle's node already taken by another file) and
// another file's bytes and inode (the handle names a lower file that has
// no overlay inode yet). With no such difference, the full manifests are
// compared (owners, times, xattrs, hardlinks).
func compareRemount(t *testing.T, what, dir string, wm map[string]fstest.EntryInfo) {
	t.Helper()
	bad := false
	fail := func(format string, args ...any) {
		t.Helper()
		bad = true
		t.Errorf(what+": "+format, args...)
	}
	owner := map[[2]uint64]string{}
	var walk func(rel string)
	walk = func(rel string) {
		ents, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			fail("read directory %s: %v", rel, err)
			return
		}
		for _, e := range ents {
			p := path.Join(rel, e.Name())
			w, ok := wm[p]
			if !ok {
				fail("%s: not in the reference", p)
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
				fail("lstat %s: %v", p, err)
				continue
			}
			k := [2]uint64{st.Dev, st.Ino}
			if q, ok := owner[k]; ok && w.Nlink == 1 {
				fail("%s and %s share inode %d (dev %d)", q, p, st.Ino, st.Dev)
			}
			owner[k] = p
			if st.Mode&0o7777 != w.Mode {
				fail("%s: mode %04o, want %04o", p, st.Mode&0o7777, w.Mode)
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				walk(p)
			case unix.S_IFREG:
				b, err := os.ReadFile(filepath.Join(dir, p))
				sum := sha256.Sum256(b)
				if err != nil {
					fail("read %s: %v", p, err)
				} else if got := hex.EncodeToString(sum[:]); got != w.SHA256 {
					fail("%s: content %q, want the reference's (sha256 %.12s)", p, b, w.SHA256)
				}
			}
		}
	}
	walk("")
	if bad {
		return
	}
	got, err := fstest.Manifest(dir)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	// The root is implied: umoci leaves it at the time of unpack.
	for _, d := range fstest.CompareManifests(got, wm, fstest.CompareOptions{IgnoreMtimePaths: []string{"."}}) {
		t.Errorf("%s: %s", what, d)
	}
}

// lookupAll stats every path in order through the mount, and fails on any
// error (ESTALE is how overlayfs answers an origin it cannot trust).
func lookupAll(t *testing.T, what, dir string, paths []string) {
	t.Helper()
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
			t.Errorf("%s: lstat %s: %v", what, p, err)
		}
	}
}

// TestWritableRemountKeepsIdentity is issue 12's wrong bytes after a
// writable remount: overlayfs records, in each file it copies up, a file
// handle of the FUSE lower (trusted.overlay.origin), and decodes it in the
// next mount. A mount over a kept upper copies up files in one daemon, in
// one lookup order; each later daemon, looking files up in another order
// (readdir first, forward, shuffled, reverse, progressive), must show
// exactly the image with the changes, every file with its own bytes and
// inode; and so must the daemons after a copy-up by a progressive one.
func TestWritableRemountKeepsIdentity(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	img, err := fstest.Build(remountLayers(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := layoutRef(t, img)
	want := umociReference(t, remountLayers())
	wm, err := fstest.Manifest(want)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for p := range wm {
		if p != "." {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	reversed := slices.Clone(paths)
	slices.Reverse(reversed)
	shuffled := slices.Clone(paths)
	rand.New(rand.NewSource(12)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	if err := remountChanges(want); err != nil {
		t.Fatalf("changes on the reference: %v", err)
	}
	if wm, err = fstest.Manifest(want); err != nil {
		t.Fatal(err)
	}

	cache := isolate(t)
	upper := filepath.Join(t.TempDir(), "upper")
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	mount := func(what, cache string, flags ...string) {
		t.Helper()
		args := append([]string{"--cache-dir", cache, "mount", "--writable", "--upper", upper}, flags...)
		if out, errs, code := execOcifs(t, bin, append(args, ref, dir)...); code != 0 {
			t.Fatalf("%s: mount --writable: exit %d\n%s\n%s", what, code, out, errs)
		}
	}
	unmount := func(what, cache string) {
		t.Helper()
		if out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
			t.Fatalf("%s: unmount: exit %d\n%s\n%s", what, code, out, errs)
		}
	}

	// The first daemon looks up etc first, then the rest in name order, and
	// copies up. With node ids given in lookup order, the files copied up
	// in data then have ids that a later daemon, reading data first, gives
	// to files after them in data, not looked up yet: those show the
	// copied-up file's bytes.
	etcFirst := slices.Clone(paths)
	slices.SortStableFunc(etcFirst, func(a, b string) int {
		ea, eb := strings.HasPrefix(a, "etc"), strings.HasPrefix(b, "etc")
		switch {
		case ea && !eb:
			return -1
		case eb && !ea:
			return 1
		}
		return 0
	})
	mount("first mount", cache)
	lookupAll(t, "first mount", dir, etcFirst)
	if err := remountChanges(dir); err != nil {
		t.Fatalf("changes through the mount: %v", err)
	}
	compareRemount(t, "first mount", dir, wm)
	unmount("first mount", cache)
	// Every copy-up recorded its origin: the remounts decode them.
	for _, p := range copiedUp {
		if _, err := unix.Lgetxattr(filepath.Join(upper, p), "trusted.overlay.origin", nil); err != nil {
			t.Errorf("upper %s: trusted.overlay.origin: %v; want the handle overlayfs records", p, err)
		}
	}

	for _, order := range []struct {
		name   string
		lookup []string // before the walk, which reads each directory and then stats its entries
		flags  []string
	}{
		{name: "readdir first"},
		{name: "forward", lookup: paths},
		{name: "shuffled", lookup: shuffled},
		{name: "reverse", lookup: reversed},
		// A progressive load numbers paths as it first sees them: its
		// handles must not be taken for the stable ones, nor the other way.
		{name: "progressive", lookup: shuffled, flags: []string{"--progressive"}},
	} {
		what := "remount, " + order.name
		c := cache
		if order.flags != nil {
			c = isolate(t) // no index cached: the big layer streams
			cleanupMount(t, c, dir)
		}
		mount(what, c, order.flags...)
		lookupAll(t, what, dir, order.lookup)
		compareRemount(t, what, dir, wm)
		unmount(what, c)
	}

	// A copy-up in a progressive daemon records a handle of that load's
	// numbering, which the next daemon must not take for one of its own.
	c := isolate(t)
	cleanupMount(t, c, dir)
	mount("progressive copy-up", c, "--progressive")
	lookupAll(t, "progressive copy-up", dir, reversed)
	for _, root := range []string{dir, want} {
		if err := unix.Chmod(filepath.Join(root, "data/f33"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if wm, err = fstest.Manifest(want); err != nil {
		t.Fatal(err)
	}
	compareRemount(t, "progressive copy-up", dir, wm)
	unmount("progressive copy-up", c)
	if _, err := unix.Lgetxattr(filepath.Join(upper, "data/f33"), "trusted.overlay.origin", nil); err != nil {
		t.Errorf("upper data/f33: trusted.overlay.origin: %v; want the handle overlayfs records", err)
	}
	for _, order := range []struct {
		name   string
		lookup []string
	}{{"readdir first", nil}, {"shuffled", shuffled}} {
		what := "after the progressive copy-up, " + order.name
		mount(what, cache)
		lookupAll(t, what, dir, order.lookup)
		compareRemount(t, what, dir, wm)
		unmount(what, cache)
	}
}
