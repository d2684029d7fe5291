package fstest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CompareOptions relaxes [CompareTrees]. The zero value compares everything
// exactly, mtimes to the nanosecond.
//
// Against a umoci 0.4.7 reference unpack (see the package doc for the
// measured behaviour) set IgnoreMtimePaths to the implied parent
// directories and to the directory an implied directory was first created
// in (umoci leaves both at the time of unpack), e.g. [CornerUnstableMtimes]
// for [Corners].
type CompareOptions struct {
	// MtimeResolution truncates both mtimes to this before comparing; zero
	// means nanoseconds.
	MtimeResolution time.Duration
	// IgnoreDirMtime skips the mtime of every directory.
	IgnoreDirMtime bool
	// IgnoreMtimePaths skips the mtime of these slash paths relative to the
	// roots ("." is the root itself).
	IgnoreMtimePaths []string
	// IgnoreXattrs lists xattr names not to compare; security.selinux is
	// always ignored.
	IgnoreXattrs []string
	// IgnorePaths drops these slash paths and everything below them from
	// both trees (e.g. "lost+found").
	IgnorePaths []string
}

// EntryInfo is what [Manifest] records about one entry, taken with Lstat.
type EntryInfo struct {
	// Type is "file", "dir", "symlink", "fifo", "char", "block" or "socket".
	Type string
	// Mode holds the permission bits with setuid, setgid and sticky (st_mode & 07777).
	Mode     uint32
	Uid, Gid uint32
	// Size is st_size; Manifest records it for regular files and symlinks only.
	Size int64
	// SHA256 is the hex sha256 of a regular file's content.
	SHA256 string
	// Target is a symlink's target.
	Target string
	// Xattrs maps every xattr name (except security.selinux) to its value.
	Xattrs map[string]string
	// Major and Minor are the device numbers of char and block devices.
	Major, Minor uint32
	Mtime        time.Time
	Nlink        uint64
	// Dev and Ino identify the inode, for hardlink groups.
	Dev, Ino uint64
}

// Manifest walks root without following symlinks and describes every entry,
// keyed by slash path relative to root; the root itself is ".".
func Manifest(root string) (map[string]EntryInfo, error) {
	out := map[string]EntryInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		info, err := describe(p)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = info
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk %s: %w", root, err)
	}
	return out, nil
}

func describe(p string) (EntryInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return EntryInfo{}, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	e := EntryInfo{
		Mode:  st.Mode & 0o7777,
		Uid:   st.Uid,
		Gid:   st.Gid,
		Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC(),
		Nlink: uint64(st.Nlink),
		Dev:   uint64(st.Dev),
		Ino:   st.Ino,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type, e.Size = "file", st.Size
		sum, err := fileSHA256(p)
		if err != nil {
			return EntryInfo{}, err
		}
		e.SHA256 = sum
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFLNK:
		e.Type, e.Size = "symlink", st.Size
		target, err := os.Readlink(p)
		if err != nil {
			return EntryInfo{}, err
		}
		e.Target = target
	case unix.S_IFIFO:
		e.Type = "fifo"
	case unix.S_IFCHR, unix.S_IFBLK:
		e.Type = "char"
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			e.Type = "block"
		}
		e.Major, e.Minor = unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
	case unix.S_IFSOCK:
		e.Type = "socket"
	default:
		e.Type = fmt.Sprintf("type %#o", st.Mode&unix.S_IFMT)
	}
	xattrs, err := listXattrs(p)
	if err != nil {
		return EntryInfo{}, err
	}
	e.Xattrs = xattrs
	return e, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// listXattrs reads every xattr of p without following symlinks. A file
// system without xattr support has none.
func listXattrs(p string) (map[string]string, error) {
	var names []byte
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
		}
		names = buf[:n]
		break
	}
	var out map[string]string
	for _, name := range bytes.Split(names, []byte{0}) {
		if len(name) == 0 || string(name) == "security.selinux" {
			continue
		}
		val, err := getXattr(p, string(name))
		if errors.Is(err, unix.ENODATA) {
			continue // removed while we looked
		}
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = map[string]string{}
		}
		out[string(name)] = val
	}
	return out, nil
}

func getXattr(p, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue
		}
		if err != nil {
			return "", &os.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		return string(buf[:n]), nil
	}
}

// CompareTrees compares the tree at got with the tree at want entry by
// entry (presence, type, permission bits, owner, size, content, symlink
// target, xattrs, device numbers, mtime, nlink and hardlink groups) and
// returns one human-readable line per difference, such as
// "etc/passwd: mode got 0644 want 0600", ordered by path. Identical trees
// give nil. A tree that cannot be walked gives one line saying so.
func CompareTrees(got, want string, opts CompareOptions) []string {
	gotM, err := Manifest(got)
	if err != nil {
		return []string{"got: " + err.Error()}
	}
	wantM, err := Manifest(want)
	if err != nil {
		return []string{"want: " + err.Error()}
	}
	return CompareManifests(gotM, wantM, opts)
}

// CompareManifests is [CompareTrees] on manifests already taken.
func CompareManifests(got, want map[string]EntryInfo, opts CompareOptions) []string {
	ignored := func(p string) bool {
		for _, ig := range opts.IgnorePaths {
			if p == ig || strings.HasPrefix(p, ig+"/") {
				return true
			}
		}
		return false
	}
	ignoreMtime := map[string]bool{}
	for _, p := range opts.IgnoreMtimePaths {
		ignoreMtime[path.Clean(p)] = true
	}
	ignoreXattr := map[string]bool{}
	for _, n := range opts.IgnoreXattrs {
		ignoreXattr[n] = true
	}
	gotLinks, wantLinks := linkGroups(got, ignored), linkGroups(want, ignored)

	paths := map[string]bool{}
	for p := range got {
		paths[p] = true
	}
	for p := range want {
		paths[p] = true
	}
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		if !ignored(p) {
			sorted = append(sorted, p)
		}
	}
	sort.Strings(sorted)

	var diffs []string
	for _, p := range sorted {
		g, inGot := got[p]
		w, inWant := want[p]
		add := func(format string, args ...any) {
			diffs = append(diffs, p+": "+fmt.Sprintf(format, args...))
		}
		switch {
		case !inGot:
			add("missing (want %s %04o)", w.Type, w.Mode)
			continue
		case !inWant:
			add("unexpected (got %s %04o)", g.Type, g.Mode)
			continue
		case g.Type != w.Type:
			add("type got %s want %s", g.Type, w.Type)
			continue
		}
		if g.Mode != w.Mode {
			add("mode got %04o want %04o", g.Mode, w.Mode)
		}
		if g.Uid != w.Uid || g.Gid != w.Gid {
			add("owner got %d:%d want %d:%d", g.Uid, g.Gid, w.Uid, w.Gid)
		}
		if g.Type != "dir" && g.Size != w.Size {
			add("size got %d want %d", g.Size, w.Size)
		}
		if g.SHA256 != w.SHA256 {
			add("content sha256 got %.12s want %.12s", g.SHA256, w.SHA256)
		}
		if g.Target != w.Target {
			add("symlink target got %q want %q", g.Target, w.Target)
		}
		if g.Major != w.Major || g.Minor != w.Minor {
			add("rdev got %d,%d want %d,%d", g.Major, g.Minor, w.Major, w.Minor)
		}
		diffs = append(diffs, compareXattrs(p, g.Xattrs, w.Xattrs, ignoreXattr)...)
		if !ignoreMtime[p] && !(opts.IgnoreDirMtime && g.Type == "dir") {
			gt, wt := g.Mtime, w.Mtime
			if opts.MtimeResolution > 0 {
				gt, wt = gt.Truncate(opts.MtimeResolution), wt.Truncate(opts.MtimeResolution)
			}
			if !gt.Equal(wt) {
				add("mtime got %s want %s", g.Mtime.Format(time.RFC3339Nano), w.Mtime.Format(time.RFC3339Nano))
			}
		}
		if g.Type != "dir" && g.Nlink != w.Nlink {
			add("nlink got %d want %d", g.Nlink, w.Nlink)
		}
		if g.Type == "file" && (g.Nlink > 1 || w.Nlink > 1) {
			gg, wg := gotLinks[inode{g.Dev, g.Ino}], wantLinks[inode{w.Dev, w.Ino}]
			if strings.Join(gg, "\x00") != strings.Join(wg, "\x00") {
				add("hardlinks got %q want %q", gg, wg)
			}
		}
	}
	return diffs
}

type inode struct{ dev, ino uint64 }

// linkGroups maps each regular-file inode to the sorted paths naming it.
func linkGroups(m map[string]EntryInfo, ignored func(string) bool) map[inode][]string {
	groups := map[inode][]string{}
	for p, e := range m {
		if e.Type == "file" && !ignored(p) {
			k := inode{e.Dev, e.Ino}
			groups[k] = append(groups[k], p)
		}
	}
	for _, g := range groups {
		sort.Strings(g)
	}
	return groups
}

func compareXattrs(p string, got, want map[string]string, ignore map[string]bool) []string {
	names := map[string]bool{}
	for n := range got {
		names[n] = true
	}
	for n := range want {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		if !ignore[n] {
			sorted = append(sorted, n)
		}
	}
	sort.Strings(sorted)
	var diffs []string
	for _, n := range sorted {
		g, inGot := got[n]
		w, inWant := want[n]
		switch {
		case !inGot:
			diffs = append(diffs, fmt.Sprintf("%s: xattr %s missing (want %q)", p, n, w))
		case !inWant:
			diffs = append(diffs, fmt.Sprintf("%s: xattr %s unexpected (got %q)", p, n, g))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: xattr %s got %q want %q", p, n, g, w))
		}
	}
	return diffs
}
