package fstest

import (
	"archive/tar"
	"math/rand"
	"strings"
	"time"
)

// Corners is the corner-case image in gzip: four layers that together
// exercise what union filesystems and tar parsers get wrong. The comment on
// each layer below says what it exercises and what the merged tree shows.
func Corners() []Layer { return CornersWith(Gzip) }

// CornersWith is [Corners] with every layer in compression c.
func CornersWith(c Compression) []Layer {
	layers := corners()
	for i := range layers {
		layers[i].Compression = c
	}
	return layers
}

// MixedCorners is [Corners] with layers alternating gzip, zstd and none.
func MixedCorners() []Layer {
	layers := corners()
	order := []Compression{Gzip, Zstd, None}
	for i := range layers {
		layers[i].Compression = order[i%len(order)]
	}
	return layers
}

// Times used by the corner image.
var (
	// CornerTime is the mtime of most corner entries.
	CornerTime = time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)
	// CornerSubsecond is the mtime of "subsec" (needs a PAX mtime record).
	CornerSubsecond = time.Date(2023, 5, 6, 7, 8, 9, 123456789, time.UTC)
)

// Long names used by the corner image.
var (
	// CornerLongName is a PAX path over 100 bytes (layer 1).
	CornerLongName = "long/" + strings.Repeat("x", 120) + ".txt"
	// CornerLongTarget is a PAX linkpath over 100 bytes (layer 1).
	CornerLongTarget = "../" + strings.Repeat("t", 140)
	// CornerDeepPath is a path over 255 bytes made of 30-byte components (layer 1).
	CornerDeepPath = deepPath()
	// CornerGNUName is a GNU long name ('L' record) over 100 bytes (layer 2).
	CornerGNUName = "gnu/" + strings.Repeat("g", 150)
	// CornerGNULinkName is a GNU hardlink with a long name to CornerGNUName (layer 2).
	CornerGNULinkName = "gnu/" + strings.Repeat("h", 120)
	// CornerGNULongTarget is a GNU long link target ('K' record, layer 2).
	CornerGNULongTarget = strings.Repeat("k", 130)
)

func deepPath() string {
	var parts []string
	for i := 0; i < 10; i++ {
		parts = append(parts, strings.Repeat(string(rune('a'+i)), 30))
	}
	return "deep/" + strings.Join(parts, "/") + "/leaf.txt"
}

// CornerUnstableMtimes are the paths of the corner image whose mtime a
// umoci 0.4.7 unpack leaves at the time of unpack: the implied parents of
// implied/a/b/c.txt and the root, in which umoci created "implied" (see the
// package doc), and the directories from which a late whiteout or opaque
// marker of layer 1 removed lower entries after umoci had set their
// attributes (samewh, sameanc, sameopq/sub: their tar mtime is CornerTime).
// Pass them as CompareOptions.IgnoreMtimePaths.
var CornerUnstableMtimes = []string{".", "implied", "implied/a", "implied/a/b", "samewh", "sameanc", "sameopq/sub"}

// CornerBigSize is the size of "big.bin", whose content is seeded random bytes.
const CornerBigSize = 1<<20 + 12345

// entry builders; all default to root-owned, CornerTime, the given format.
type layerBuilder struct {
	format tar.Format
	prefix string // "./" for the layer that writes "./"-prefixed names
	files  []File
}

func (b *layerBuilder) add(hdr tar.Header, data []byte) *tar.Header {
	hdr.Name = b.prefix + hdr.Name
	if hdr.Typeflag == tar.TypeLink {
		hdr.Linkname = b.prefix + hdr.Linkname
	}
	if hdr.ModTime.IsZero() {
		hdr.ModTime = CornerTime
	}
	hdr.Format = b.format
	b.files = append(b.files, File{Header: hdr, Data: data})
	return &b.files[len(b.files)-1].Header
}

func (b *layerBuilder) dir(name string, mode int64) *tar.Header {
	return b.add(tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}, nil)
}

func (b *layerBuilder) file(name string, mode int64, data string) *tar.Header {
	return b.add(tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, []byte(data))
}

func (b *layerBuilder) symlink(name, target string) *tar.Header {
	return b.add(tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil)
}

func (b *layerBuilder) hardlink(name, target string) *tar.Header {
	return b.add(tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}, nil)
}

func (b *layerBuilder) whiteout(dir, name string) {
	p := ".wh." + name
	if dir != "" {
		p = dir + "/" + p
	}
	b.add(tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o644}, nil)
}

func (b *layerBuilder) opaque(dir string) {
	b.add(tar.Header{Typeflag: tar.TypeReg, Name: dir + "/.wh..wh..opq", Mode: 0o644}, nil)
}

// randomBytes returns n bytes from a PRNG seeded with seed.
func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func corners() []Layer {
	return []Layer{cornerLayer0(), cornerLayer1(), cornerLayer2(), cornerLayer3()}
}

// cornerLayer0 is the base layer, PAX format, every name "./"-prefixed
// (hardlink targets too), with a "./" root entry of mode 0755.
//
// Exercises: regular files (empty, small, 1 MiB+ random), directory modes
// 0700 and 01777, setuid 04755 / setgid 02755 files and a 02775 directory,
// a mode-000 file, uid/gid 1000 and 3000000 (PAX uid/gid), a sub-second
// mtime (PAX mtime), symlinks (relative, absolute, dangling, to a
// directory), a hardlink group of three, char 1,3 and block 7,0 devices, a
// fifo, xattrs (three on a file incl. a binary value, one on a directory),
// non-ASCII names, names with spaces, implied parents (implied/a/b/c.txt
// with no directory entries), a duplicate path (dup.txt, later wins), and
// the targets of layer 1's whiteouts and replacements.
//
// Merged tree after this layer alone: every entry as written; dup.txt has
// content "second\n" and mode 0644; implied, implied/a, implied/a/b exist
// as directories that no entry describes.
func cornerLayer0() Layer {
	b := &layerBuilder{format: tar.FormatPAX, prefix: "./"}
	b.add(tar.Header{Typeflag: tar.TypeDir, Name: "", Mode: 0o755}, nil) // "./"
	b.dir("etc", 0o755)
	b.file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n")
	b.file("etc/group", 0o644, "root:x:0:\n")
	b.file("empty", 0o644, "")
	b.add(tar.Header{Typeflag: tar.TypeReg, Name: "big.bin", Mode: 0o644}, randomBytes(1, CornerBigSize))
	b.dir("private", 0o700)
	b.file("private/secret", 0o600, "s3cret\n").Uid = 1000
	b.dir("tmp", 0o1777)
	b.dir("bin", 0o755)
	b.file("bin/suid", 0o4755, "#!/bin/sh\necho suid\n")
	b.file("bin/sgid", 0o2755, "#!/bin/sh\necho sgid\n")
	b.dir("bin/sgiddir", 0o2775).Gid = 50
	b.file("noperm", 0, "nobody may read this\n")
	h := b.file("owned", 0o644, "owned by 1000:1000\n")
	h.Uid, h.Gid, h.Uname, h.Gname = 1000, 1000, "user", "user"
	h = b.file("highuid", 0o640, "owned by 3000000:3000001\n")
	h.Uid, h.Gid = 3000000, 3000001
	b.file("subsec", 0o644, "sub-second mtime\n").ModTime = CornerSubsecond
	b.dir("links", 0o755)
	b.symlink("links/rel", "../etc/passwd")
	b.symlink("links/abs", "/etc/passwd")
	b.symlink("links/dangling", "../does/not/exist")
	b.symlink("links/todir", "../etc")
	b.dir("hl", 0o755)
	b.file("hl/orig", 0o644, "hardlinked content\n")
	b.hardlink("hl/link1", "hl/orig")
	b.hardlink("hl/link2", "hl/orig")
	b.dir("dev", 0o755)
	b.add(tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, nil)
	b.add(tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop0", Mode: 0o660, Gid: 6, Devmajor: 7, Devminor: 0}, nil)
	b.add(tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o644}, nil)
	b.file("xattr-file", 0o644, "has xattrs\n").PAXRecords = map[string]string{
		"SCHILY.xattr.user.foo":   "bar",
		"SCHILY.xattr.user.multi": "line1\nline2 = x",
		"SCHILY.xattr.user.bin":   "\x00\x01\xfe\xff",
	}
	b.dir("xattr-dir", 0o755).PAXRecords = map[string]string{"SCHILY.xattr.user.dirattr": "d"}
	b.dir("ünïcødé", 0o755)
	b.file("ünïcødé/日本語.txt", 0o644, "こんにちは\n")
	b.dir("with space", 0o755)
	b.file("with space/file name.txt", 0o644, "spaces\n")
	b.file("implied/a/b/c.txt", 0o644, "parents implied\n")
	b.file("dup.txt", 0o600, "first\n")
	b.file("gone.txt", 0o644, "whited out in layer 1\n")
	b.dir("gonedir", 0o755)
	b.file("gonedir/a", 0o644, "a\n")
	b.dir("gonedir/sub", 0o755)
	b.file("gonedir/sub/b", 0o644, "b\n")
	b.dir("opaque", 0o750)
	b.file("opaque/lower1", 0o644, "hidden by layer 1's opaque marker\n")
	b.dir("opaque/lowerdir", 0o755)
	b.file("opaque/lowerdir/x", 0o644, "x\n")
	b.file("f2d", 0o644, "file, then dir, then file\n")
	b.dir("d2f", 0o755)
	b.file("d2f/child", 0o644, "child of d2f\n")
	b.symlink("s2d", "etc")
	b.file("lower-target", 0o644, "hardlinked from layer 1\n")
	b.dir("samewh", 0o755)
	b.file("samewh/lower", 0o644, "whited out by layer 1\n")
	b.dir("sameanc", 0o711)
	b.file("sameanc/old", 0o644, "whited out by layer 1\n")
	b.dir("sameopq", 0o755)
	b.file("sameopq/lower", 0o644, "hidden by layer 1's late opaque marker\n")
	b.dir("sameopq/sub", 0o750)
	b.file("sameopq/sub/low", 0o644, "hidden too\n")
	b.file("samefile", 0o644, "layer 0's samefile\n")
	b.file("dup.txt", 0o644, "second\n")
	return Layer{Files: b.files}
}

// cornerLayer1 is PAX format without "./" prefixes.
//
// Exercises: whiteout of a file (gone.txt) and of a directory with
// contents (gonedir); an opaque directory whose marker sits between this
// layer's own entries (opaque/new1 before it, opaque/new2 and
// opaque/newdir/y after it); file→dir (f2d), dir→file (d2f), symlink→dir
// (s2d); a hardlink to a lower-layer file (upper-link → lower-target); an
// overwrite of a lower file with another mode (etc/passwd); a PAX long name,
// a PAX long symlink target, and a path over 255 bytes.
//
// Also whiteouts and an opaque marker that come after entries of their own
// layer, which they must leave alone (a whiteout applies to lower layers
// only): samewh/ and samewh/x before .wh.samewh; sameanc/z (no directory
// entry) before .wh.sameanc; sameopq/y and sameopq/sub/new before
// sameopq/.wh..wh..opq; samefile before .wh.samefile.
//
// Merged tree: no gone.txt, no gonedir; opaque/ holds exactly new1, new2,
// newdir/y (lower1 and lowerdir gone) and keeps layer 0's mode 0750; f2d is
// a directory with f2d/inside; d2f is a file; s2d is a directory with
// s2d/file; upper-link and lower-target share one inode, nlink 2;
// etc/passwd has mode 0600 and the new content; samewh/ (mode 0700) holds
// only x; sameanc/ keeps layer 0's mode 0711 and holds only z; sameopq/
// holds y and sub/ (layer 0's mode 0750) with only new in it; samefile has
// layer 1's content.
func cornerLayer1() Layer {
	b := &layerBuilder{format: tar.FormatPAX}
	b.whiteout("", "gone.txt")
	b.whiteout("", "gonedir")
	b.file("opaque/new1", 0o644, "same layer as the opaque marker, before it\n")
	b.opaque("opaque")
	b.file("opaque/new2", 0o644, "same layer as the opaque marker, after it\n")
	b.dir("opaque/newdir", 0o755)
	b.file("opaque/newdir/y", 0o644, "y\n")
	b.dir("f2d", 0o711)
	b.file("f2d/inside", 0o644, "inside f2d\n")
	b.file("d2f", 0o644, "d2f is a file now\n")
	b.dir("s2d", 0o755)
	b.file("s2d/file", 0o644, "s2d is a dir now\n")
	b.hardlink("upper-link", "lower-target")
	b.file("etc/passwd", 0o600, "root:x:0:0:root:/root:/bin/bash\n")
	b.dir("long", 0o755)
	b.file(CornerLongName, 0o644, "PAX long name\n")
	b.symlink("long/symlink", CornerLongTarget)
	b.dir("samewh", 0o700)
	b.file("samewh/x", 0o644, "same layer as the whiteout of samewh, before it\n")
	b.whiteout("", "samewh")
	b.file("sameanc/z", 0o644, "same layer as the whiteout of its parent, before it\n")
	b.whiteout("", "sameanc")
	b.file("sameopq/y", 0o644, "same layer as a late opaque marker\n")
	b.file("sameopq/sub/new", 0o644, "same layer as a late opaque marker, below it\n")
	b.opaque("sameopq")
	b.file("samefile", 0o644, "layer 1's samefile, whited out later in the same layer\n")
	b.whiteout("", "samefile")
	b.dir("deep", 0o755)
	p := "deep"
	for _, part := range strings.Split(strings.TrimPrefix(CornerDeepPath, "deep/"), "/") {
		p += "/" + part
		if p == CornerDeepPath {
			b.file(p, 0o644, "deep leaf\n")
		} else {
			b.dir(p, 0o755)
		}
	}
	return Layer{Files: b.files}
}

// cornerLayer2 is GNU format (no PAX records allowed, so whole-second
// mtimes and no xattrs).
//
// Exercises: GNU long names ('L'), GNU long link targets ('K'), a hardlink
// whose name and target both need 'L'/'K', a base-256 uid/gid, and the
// way back: f2d becomes a file again, d2f a directory again.
//
// Merged tree: f2d is a file (no f2d/inside), d2f is a directory holding
// only d2f/again (layer 0's d2f/child stays gone); CornerGNUName and
// CornerGNULinkName share one inode; gnu/highuid is owned by 3000000:3000000.
func cornerLayer2() Layer {
	b := &layerBuilder{format: tar.FormatGNU}
	b.dir("gnu", 0o755)
	b.file(CornerGNUName, 0o644, "GNU long name\n")
	b.hardlink(CornerGNULinkName, CornerGNUName)
	b.symlink("gnu/longlink", CornerGNULongTarget)
	b.symlink("gnu/keeplink", CornerGNULongTarget)
	h := b.file("gnu/highuid", 0o644, "base-256 uid\n")
	h.Uid, h.Gid = 3000000, 3000000
	b.file("f2d", 0o644, "f2d is a file again\n")
	b.dir("d2f", 0o700)
	b.file("d2f/again", 0o644, "d2f is a dir again\n")
	return Layer{Files: b.files}
}

// cornerLayer3 is USTAR format.
//
// Exercises: a whiteout of one member of a hardlink group (hl/link2), a
// whiteout of an entry from the GNU layer, and an opaque marker on a
// directory that this layer does not otherwise describe (private/).
//
// Merged tree: hl/orig and hl/link1 share an inode with nlink 2; no
// gnu/longlink, gnu/keeplink stays; private/ is empty and keeps mode 0700.
func cornerLayer3() Layer {
	b := &layerBuilder{format: tar.FormatUSTAR}
	b.whiteout("hl", "link2")
	b.whiteout("gnu", "longlink")
	b.opaque("private")
	b.file("top.txt", 0o644, "top layer\n")
	return Layer{Files: b.files}
}
