package fstest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unpackLayers builds layers as an OCI image and unpacks it with umoci.
func unpackLayers(t *testing.T, layers []Layer) string {
	t.Helper()
	im := mustBuild(t, layers, Options{})
	layout := filepath.Join(t.TempDir(), "layout")
	if err := im.WriteLayout(layout, "test"); err != nil {
		t.Fatal(err)
	}
	return UmociUnpack(t, layout, "test")
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestCornersUmoci checks the key corners of the merged tree umoci makes of
// Corners against what the layer comments promise.
func TestCornersUmoci(t *testing.T) {
	root := unpackLayers(t, Corners())
	m, err := Manifest(root)
	if err != nil {
		t.Fatal(err)
	}
	absent := []string{
		"gone.txt", "gonedir", "gonedir/a", "opaque/lower1", "opaque/lowerdir", "f2d/inside",
		"d2f/child", "hl/link2", "gnu/longlink", "private/secret", "s2d/passwd",
	}
	for _, p := range absent {
		if _, ok := m[p]; ok {
			t.Errorf("%s exists, want it removed", p)
		}
	}
	type want struct {
		typ     string
		mode    uint32
		content string // sha256 of this, when set
		uid     uint32
		nlink   uint64
	}
	wants := map[string]want{
		".":                        {typ: "dir", mode: 0o755},
		"dup.txt":                  {typ: "file", mode: 0o644, content: "second\n", nlink: 1},
		"opaque":                   {typ: "dir", mode: 0o750},
		"opaque/new1":              {typ: "file", mode: 0o644, content: "same layer as the opaque marker, before it\n", nlink: 1},
		"opaque/new2":              {typ: "file", mode: 0o644, content: "same layer as the opaque marker, after it\n", nlink: 1},
		"opaque/newdir/y":          {typ: "file", mode: 0o644, content: "y\n", nlink: 1},
		"hl/orig":                  {typ: "file", mode: 0o644, content: "hardlinked content\n", nlink: 2},
		"upper-link":               {typ: "file", mode: 0o644, content: "hardlinked from layer 1\n", nlink: 2},
		"bin/suid":                 {typ: "file", mode: 0o4755, nlink: 1},
		"bin/sgid":                 {typ: "file", mode: 0o2755, nlink: 1},
		"tmp":                      {typ: "dir", mode: 0o1777},
		"private":                  {typ: "dir", mode: 0o700},
		"noperm":                   {typ: "file", mode: 0, nlink: 1},
		"highuid":                  {typ: "file", mode: 0o640, uid: 3000000, nlink: 1},
		"owned":                    {typ: "file", mode: 0o644, uid: 1000, nlink: 1},
		"gnu/highuid":              {typ: "file", mode: 0o644, uid: 3000000, nlink: 1},
		"f2d":                      {typ: "file", mode: 0o644, content: "f2d is a file again\n", nlink: 1},
		"d2f":                      {typ: "dir", mode: 0o700},
		"s2d":                      {typ: "dir", mode: 0o755},
		"etc/passwd":               {typ: "file", mode: 0o600, content: "root:x:0:0:root:/root:/bin/bash\n", nlink: 1},
		"fifo":                     {typ: "fifo", mode: 0o644, nlink: 1},
		"implied/a":                {typ: "dir", mode: 0o755},
		"ünïcødé/日本語.txt":          {typ: "file", mode: 0o644, content: "こんにちは\n", nlink: 1},
		"with space/file name.txt": {typ: "file", mode: 0o644, content: "spaces\n", nlink: 1},
		CornerLongName:             {typ: "file", mode: 0o644, content: "PAX long name\n", nlink: 1},
		CornerDeepPath:             {typ: "file", mode: 0o644, content: "deep leaf\n", nlink: 1},
		CornerGNUName:              {typ: "file", mode: 0o644, content: "GNU long name\n", nlink: 2},
		"big.bin":                  {typ: "file", mode: 0o644, content: string(randomBytes(1, CornerBigSize)), nlink: 1},
		"links/dangling":           {typ: "symlink", mode: 0o777, nlink: 1},
		"long/symlink":             {typ: "symlink", mode: 0o777, nlink: 1},
		"xattr-dir":                {typ: "dir", mode: 0o755},
		"top.txt":                  {typ: "file", mode: 0o644, content: "top layer\n", nlink: 1},
		"opaque/newdir":            {typ: "dir", mode: 0o755},
		"gnu/keeplink":             {typ: "symlink", mode: 0o777, nlink: 1},
		"deep":                     {typ: "dir", mode: 0o755},
		"implied/a/b/c.txt":        {typ: "file", mode: 0o644, content: "parents implied\n", nlink: 1},
		"links/todir":              {typ: "symlink", mode: 0o777, nlink: 1},
		"xattr-file":               {typ: "file", mode: 0o644, content: "has xattrs\n", nlink: 1},
		"dev/null":                 {typ: "char", mode: 0o666, nlink: 1},
		"bin/sgiddir":              {typ: "dir", mode: 0o2775},
		"lower-target":             {typ: "file", mode: 0o644, content: "hardlinked from layer 1\n", nlink: 2},
		"hl/link1":                 {typ: "file", mode: 0o644, content: "hardlinked content\n", nlink: 2},
		"d2f/again":                {typ: "file", mode: 0o644, content: "d2f is a dir again\n", nlink: 1},
		"s2d/file":                 {typ: "file", mode: 0o644, content: "s2d is a dir now\n", nlink: 1},
		"empty":                    {typ: "file", mode: 0o644, content: "", nlink: 1},
		"implied":                  {typ: "dir", mode: 0o755},
	}
	for p, w := range wants {
		e, ok := m[p]
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		if e.Type != w.typ || e.Mode != w.mode || e.Uid != w.uid {
			t.Errorf("%s: %s %04o uid %d, want %s %04o uid %d", p, e.Type, e.Mode, e.Uid, w.typ, w.mode, w.uid)
		}
		if w.typ == "file" && (w.content != "" || p == "empty") && e.SHA256 != sha(w.content) {
			t.Errorf("%s: content sha256 %.12s, want %.12s", p, e.SHA256, sha(w.content))
		}
		if w.nlink != 0 && e.Nlink != w.nlink {
			t.Errorf("%s: nlink %d, want %d", p, e.Nlink, w.nlink)
		}
	}
	sameInode := [][]string{{"hl/orig", "hl/link1"}, {"upper-link", "lower-target"}, {CornerGNUName, CornerGNULinkName}}
	for _, g := range sameInode {
		if m[g[0]].Ino != m[g[1]].Ino {
			t.Errorf("%s and %s are different inodes, want one", g[0], g[1])
		}
	}
	if d := m["dev/null"]; d.Major != 1 || d.Minor != 3 {
		t.Errorf("dev/null rdev %d,%d, want 1,3", d.Major, d.Minor)
	}
	if d := m["dev/loop0"]; d.Type != "block" || d.Major != 7 || d.Minor != 0 || d.Gid != 6 {
		t.Errorf("dev/loop0 = %s %d,%d gid %d, want block 7,0 gid 6", d.Type, d.Major, d.Minor, d.Gid)
	}
	if x := m["xattr-file"].Xattrs; x["user.foo"] != "bar" || x["user.multi"] != "line1\nline2 = x" || x["user.bin"] != "\x00\x01\xfe\xff" {
		t.Errorf("xattr-file xattrs %q", x)
	}
	if x := m["xattr-dir"].Xattrs; x["user.dirattr"] != "d" {
		t.Errorf("xattr-dir xattrs %q", x)
	}
	if got := m["subsec"].Mtime; !got.Equal(CornerSubsecond) {
		t.Errorf("subsec mtime %v, want %v", got, CornerSubsecond)
	}
	for _, p := range []string{"etc", "opaque", "hl", "d2f", "private", "gnu"} {
		if got := m[p].Mtime; !got.Equal(CornerTime) {
			t.Errorf("%s mtime %v, want %v (directory mtimes are restored)", p, got, CornerTime)
		}
	}
	if got, want := m["gnu/keeplink"].Target, CornerGNULongTarget; got != want {
		t.Errorf("gnu/keeplink target %q, want %q", got, want)
	}
	if got, want := m["long/symlink"].Target, CornerLongTarget; got != want {
		t.Errorf("long/symlink target %q, want %q", got, want)
	}
	if got, want := m["links/abs"].Target, "/etc/passwd"; got != want {
		t.Errorf("links/abs target %q, want %q", got, want)
	}
	// private/ only held layer 0's secret, hidden by layer 3's opaque marker.
	if ents, err := os.ReadDir(filepath.Join(root, "private")); err != nil || len(ents) != 0 {
		t.Errorf("private/ = %v, %v; want empty", ents, err)
	}
}

// TestUmociUnpackStable unpacks the same corner image twice and in two
// compressions: the trees may differ only in CornerUnstableMtimes.
func TestUmociUnpackStable(t *testing.T) {
	a := unpackLayers(t, CornersWith(Gzip))
	b := unpackLayers(t, CornersWith(None))
	if diffs := CompareTrees(a, b, CompareOptions{IgnoreMtimePaths: CornerUnstableMtimes}); len(diffs) != 0 {
		t.Errorf("gzip and plain unpacks differ:\n%q", diffs)
	}
}

// TestUmociImpliedParents pins the umoci behaviour the package doc
// describes for implied parents and the root, so a umoci upgrade that
// changes it is noticed.
func TestUmociImpliedParents(t *testing.T) {
	t1 := time.Date(2001, 1, 1, 1, 1, 1, 0, time.UTC)
	dir := func(name string, mode int64) File {
		return File{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: t1, Format: tar.FormatPAX}}
	}
	file := func(name string) File {
		return File{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: t1, Format: tar.FormatPAX}}
	}
	before := time.Now().Add(-time.Minute) // generous: only "is it the time of unpack, not t1"
	t.Run("no root entry", func(t *testing.T) {
		m, err := Manifest(unpackLayers(t, []Layer{{Files: []File{file("a")}}}))
		if err != nil {
			t.Fatal(err)
		}
		if r := m["."]; r.Mode != 0o755 || r.Uid != 0 || !r.Mtime.Equal(time.Unix(0, 0)) {
			t.Errorf("root = %04o uid %d mtime %v, want 0755 uid 0 at the epoch", r.Mode, r.Uid, r.Mtime)
		}
	})
	t.Run("root entry last", func(t *testing.T) {
		m, err := Manifest(unpackLayers(t, []Layer{{Files: []File{file("a"), dir("./", 0o711)}}}))
		if err != nil {
			t.Fatal(err)
		}
		if r := m["."]; r.Mode != 0o711 || !r.Mtime.Equal(t1) {
			t.Errorf("root = %04o mtime %v, want 0711 at %v", r.Mode, r.Mtime, t1)
		}
	})
	t.Run("implied below described dir", func(t *testing.T) {
		m, err := Manifest(unpackLayers(t, []Layer{{Files: []File{dir("./", 0o755), dir("x/", 0o700), file("x/y/z")}}}))
		if err != nil {
			t.Fatal(err)
		}
		if y := m["x/y"]; y.Mode != 0o755 || y.Uid != 0 || y.Mtime.Before(before) {
			t.Errorf("implied x/y = %04o uid %d mtime %v, want 0755 uid 0 at unpack time", y.Mode, y.Uid, y.Mtime)
		}
		if x := m["x"]; x.Mode != 0o700 || x.Mtime.Before(before) {
			t.Errorf("x = %04o mtime %v, want 0700 with the unpack time (mkdir of x/y)", x.Mode, x.Mtime)
		}
		if r := m["."]; !r.Mtime.Equal(t1) {
			t.Errorf("root mtime %v, want %v (restored after x was written)", r.Mtime, t1)
		}
	})
	t.Run("hardlink metadata ignored", func(t *testing.T) {
		link := File{Header: tar.Header{Typeflag: tar.TypeLink, Name: "l", Linkname: "a", Mode: 0o600, Uid: 7, ModTime: t1.Add(time.Hour), Format: tar.FormatPAX}}
		m, err := Manifest(unpackLayers(t, []Layer{{Files: []File{file("a")}}, {Files: []File{link}}}))
		if err != nil {
			t.Fatal(err)
		}
		if l := m["l"]; l.Mode != 0o644 || l.Uid != 0 || !l.Mtime.Equal(t1) || l.Nlink != 2 || l.Ino != m["a"].Ino {
			t.Errorf("l = %04o uid %d mtime %v nlink %d, want a's inode 0644 uid 0 at %v nlink 2", l.Mode, l.Uid, l.Mtime, l.Nlink, t1)
		}
	})
}

// TestRandomUmoci checks that umoci accepts random images, and that a
// whiteout in them really removes something.
func TestRandomUmoci(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		layers := Random(seed, 150)
		whiteouts := 0
		for _, l := range layers[1:] {
			for _, f := range l.Files {
				if filepath.Base(f.Header.Name)[:min(4, len(filepath.Base(f.Header.Name)))] == ".wh." {
					whiteouts++
				}
			}
		}
		if whiteouts == 0 {
			t.Errorf("Random(%d, 150) has no whiteouts", seed)
		}
		root := unpackLayers(t, layers)
		if _, err := Manifest(root); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGoToolchainRoundTrip turns a small tree into layers, unpacks them
// with umoci and expects the same tree back.
func TestGoToolchainRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src)
	if err := os.MkdirAll(filepath.Join(src, "other/deeper"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "other/deeper/big"), randomBytes(5, 300000), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"other/deeper", "other", "."} {
		setMtime(t, filepath.Join(src, p), treeTime)
	}
	layers, err := GoToolchain(src, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 3 {
		t.Fatalf("GoToolchain gave %d layers, want 3", len(layers))
	}
	im := mustBuild(t, layers, Options{BlobDir: t.TempDir()})
	layout := filepath.Join(t.TempDir(), "layout")
	if err := im.WriteLayout(layout, "go"); err != nil {
		t.Fatal(err)
	}
	got := UmociUnpack(t, layout, "go")
	// Hardlinks only survive within one layer, and dir/file and dir/link are in one.
	if diffs := CompareTrees(got, src, CompareOptions{IgnoreXattrs: []string{"user.a"}}); len(diffs) != 0 {
		t.Errorf("unpack differs from source:\n%q", diffs)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(got, "dir/link"), &st); err != nil || st.Nlink != 2 {
		t.Errorf("dir/link nlink %d (%v), want 2", st.Nlink, err)
	}
}
