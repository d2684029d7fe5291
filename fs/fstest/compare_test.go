package fstest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var treeTime = time.Date(2020, 2, 3, 4, 5, 6, 789, time.UTC)

// makeTree writes the same small tree every time: a directory, files, a
// hardlink pair, a symlink, xattrs, a fifo and (as root) a device and owners.
func makeTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "dir/sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "dir/file"), []byte("content\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "dir/sub/x"), []byte("x"), 0o600))
	must(os.Link(filepath.Join(root, "dir/file"), filepath.Join(root, "dir/link")))
	must(os.Symlink("file", filepath.Join(root, "dir/sym")))
	must(unix.Lsetxattr(filepath.Join(root, "dir/file"), "user.a", []byte("1"), 0))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	if os.Geteuid() == 0 {
		must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(root, "dir/sub/x"), 1000, 1000))
	}
	must(unix.Chmod(filepath.Join(root, "dir/sub/x"), 0o4755))
	for _, p := range []string{"fifo", "dir/sub/x", "dir/file", "dir/sym", "dir/sub", "dir", "."} {
		ts := []unix.Timespec{unix.NsecToTimespec(treeTime.UnixNano()), unix.NsecToTimespec(treeTime.UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, p), ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	if os.Geteuid() == 0 {
		ts := []unix.Timespec{unix.NsecToTimespec(treeTime.UnixNano()), unix.NsecToTimespec(treeTime.UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, "null"), ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func setMtime(t *testing.T, p string, mt time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func TestCompareTreesIdentical(t *testing.T) {
	got, want := t.TempDir(), t.TempDir()
	makeTree(t, got)
	makeTree(t, want)
	if diffs := CompareTrees(got, want, CompareOptions{}); len(diffs) != 0 {
		t.Errorf("CompareTrees(identical) = %q, want none", diffs)
	}
}

func TestCompareTreesFindsEachDifference(t *testing.T) {
	keepParent := func(t *testing.T, root, p string, f func()) {
		// Restores the parent directory's mtime after f changed its entries.
		t.Helper()
		f()
		setMtime(t, filepath.Join(root, filepath.Dir(p)), treeTime)
	}
	tests := []struct {
		name   string
		root   bool // needs root to make the change
		mutate func(t *testing.T, root string)
		opts   CompareOptions
		want   []string
	}{
		{
			name:   "mode",
			mutate: func(t *testing.T, r string) { os.Chmod(filepath.Join(r, "dir/sub/x"), 0o755) },
			want:   []string{"dir/sub/x: mode got 0755 want 4755"},
		},
		{
			name:   "root dir mode",
			mutate: func(t *testing.T, r string) { os.Chmod(r, 0o711) },
			want:   []string{".: mode got 0711 want 0700"},
		},
		{
			name: "owner",
			root: true,
			mutate: func(t *testing.T, r string) {
				os.Lchown(filepath.Join(r, "dir/sym"), 5, 6)
			},
			want: []string{"dir/sym: owner got 5:6 want 0:0"},
		},
		{
			name: "content same size",
			mutate: func(t *testing.T, r string) {
				p := filepath.Join(r, "dir/sub/x")
				os.WriteFile(p, []byte("y"), 0)
				setMtime(t, p, treeTime)
			},
			want: []string{"dir/sub/x: content sha256 got a1fce4363854 want 2d711642b726"},
		},
		{
			name: "xattr value",
			mutate: func(t *testing.T, r string) {
				unix.Lsetxattr(filepath.Join(r, "dir/file"), "user.a", []byte("2"), 0)
			},
			want: []string{`dir/file: xattr user.a got "2" want "1"`, `dir/link: xattr user.a got "2" want "1"`},
		},
		{
			name: "xattr added, ignored by option",
			mutate: func(t *testing.T, r string) {
				unix.Lsetxattr(filepath.Join(r, "dir/sub"), "user.b", []byte("b"), 0)
			},
			opts: CompareOptions{IgnoreXattrs: []string{"user.b"}},
		},
		{
			name: "xattr added",
			mutate: func(t *testing.T, r string) {
				unix.Lsetxattr(filepath.Join(r, "dir/sub"), "user.b", []byte("b"), 0)
			},
			want: []string{`dir/sub: xattr user.b unexpected (got "b")`},
		},
		{
			name:   "mtime nanosecond",
			mutate: func(t *testing.T, r string) { setMtime(t, filepath.Join(r, "dir/sub/x"), treeTime.Add(1)) },
			want:   []string{"dir/sub/x: mtime got 2020-02-03T04:05:06.00000079Z want 2020-02-03T04:05:06.000000789Z"},
		},
		{
			name:   "mtime below resolution",
			mutate: func(t *testing.T, r string) { setMtime(t, filepath.Join(r, "dir/sub/x"), treeTime.Add(1)) },
			opts:   CompareOptions{MtimeResolution: time.Second},
		},
		{
			name:   "dir mtime ignored",
			mutate: func(t *testing.T, r string) { setMtime(t, filepath.Join(r, "dir"), treeTime.Add(time.Hour)) },
			opts:   CompareOptions{IgnoreDirMtime: true},
		},
		{
			name:   "mtime path ignored",
			mutate: func(t *testing.T, r string) { setMtime(t, filepath.Join(r, "fifo"), treeTime.Add(time.Hour)) },
			opts:   CompareOptions{IgnoreMtimePaths: []string{"fifo"}},
		},
		{
			name: "symlink target",
			mutate: func(t *testing.T, r string) {
				p := filepath.Join(r, "dir/sym")
				keepParent(t, r, "dir/sym", func() {
					os.Remove(p)
					os.Symlink("fil", p)
				})
				setMtime(t, p, treeTime)
			},
			want: []string{`dir/sym: size got 3 want 4`, `dir/sym: symlink target got "fil" want "file"`},
		},
		{
			name: "hardlink broken",
			mutate: func(t *testing.T, r string) {
				p := filepath.Join(r, "dir/link")
				keepParent(t, r, "dir/link", func() {
					os.Remove(p)
					os.WriteFile(p, []byte("content\n"), 0o644)
				})
				unix.Lsetxattr(p, "user.a", []byte("1"), 0)
				setMtime(t, p, treeTime)
			},
			want: []string{
				"dir/file: nlink got 1 want 2",
				`dir/file: hardlinks got ["dir/file"] want ["dir/file" "dir/link"]`,
				"dir/link: nlink got 1 want 2",
				`dir/link: hardlinks got ["dir/link"] want ["dir/file" "dir/link"]`,
			},
		},
		{
			name: "file added",
			mutate: func(t *testing.T, r string) {
				keepParent(t, r, "new", func() { os.WriteFile(filepath.Join(r, "new"), nil, 0o640) })
			},
			want: []string{"new: unexpected (got file 0640)"},
		},
		{
			name: "file removed",
			mutate: func(t *testing.T, r string) {
				keepParent(t, r, "fifo", func() { os.Remove(filepath.Join(r, "fifo")) })
			},
			want: []string{"fifo: missing (want fifo 0644)"},
		},
		{
			name: "removed but ignored path",
			mutate: func(t *testing.T, r string) {
				keepParent(t, r, "dir/sub/x", func() { os.Remove(filepath.Join(r, "dir/sub/x")) })
				setMtime(t, filepath.Join(r, "dir/sub"), treeTime)
			},
			opts: CompareOptions{IgnorePaths: []string{"dir/sub"}},
		},
		{
			name: "type",
			mutate: func(t *testing.T, r string) {
				p := filepath.Join(r, "fifo")
				keepParent(t, r, "fifo", func() {
					os.Remove(p)
					os.WriteFile(p, nil, 0o644)
				})
			},
			want: []string{"fifo: type got file want fifo"},
		},
		{
			name: "device numbers",
			root: true,
			mutate: func(t *testing.T, r string) {
				p := filepath.Join(r, "null")
				keepParent(t, r, "null", func() {
					os.Remove(p)
					unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5)))
				})
				setMtime(t, p, treeTime)
			},
			want: []string{"null: rdev got 1,5 want 1,3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root")
			}
			got, want := t.TempDir(), t.TempDir()
			makeTree(t, got)
			makeTree(t, want)
			for _, r := range []string{got, want} {
				if err := os.Chmod(r, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			tt.mutate(t, got)
			diffs := CompareTrees(got, want, tt.opts)
			if !slices.Equal(diffs, tt.want) {
				t.Errorf("CompareTrees = %q\nwant %q", diffs, tt.want)
			}
		})
	}
}

func TestCompareTreesMissingRoot(t *testing.T) {
	diffs := CompareTrees(filepath.Join(t.TempDir(), "nope"), t.TempDir(), CompareOptions{})
	if len(diffs) != 1 {
		t.Fatalf("CompareTrees(missing root) = %q, want one line", diffs)
	}
}

func TestManifest(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	m, err := Manifest(root)
	if err != nil {
		t.Fatal(err)
	}
	file, link := m["dir/file"], m["dir/link"]
	if file.Ino != link.Ino || file.Nlink != 2 {
		t.Errorf("dir/file ino %d nlink %d, dir/link ino %d: want one inode, nlink 2", file.Ino, file.Nlink, link.Ino)
	}
	if got, want := m["dir/sym"].Target, "file"; got != want {
		t.Errorf("dir/sym target = %q, want %q", got, want)
	}
	if got, want := m["dir/file"].Xattrs["user.a"], "1"; got != want {
		t.Errorf("dir/file xattr user.a = %q, want %q", got, want)
	}
	if got, want := m["dir/sub/x"].Mode, uint32(0o4755); got != want {
		t.Errorf("dir/sub/x mode = %#o, want %#o", got, want)
	}
	if got, want := m["fifo"].Mtime, treeTime; !got.Equal(want) {
		t.Errorf("fifo mtime = %v, want %v", got, want)
	}
	if _, ok := m["."]; !ok {
		t.Errorf("Manifest has no root entry %q", ".")
	}
}
