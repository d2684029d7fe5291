// Package fstest builds container images and reference trees for tests,
// the way net/http/httptest serves tests of net/http. Only tests, the
// benchmark and `make demo` import it.
//
// It imports no other ocifs package, so that it stays an independent
// reference: its images are encoded, pushed and unpacked without any of the
// code under test (and without go-containerregistry).
//
// # Images
//
// [Build] encodes [Layer]s (tar entries written exactly as given, in order,
// in gzip, zstd or plain tar) into blobs, a config and a manifest, in OCI
// or Docker schema 2 media types; the same input gives the same bytes.
// [Image.WriteLayout] stores the image in an OCI image layout,
// [Image.Push] uploads it to a registry, [BuildIndex] makes a
// multi-platform index of several images.
//
//	im, err := fstest.Build(fstest.Corners(), fstest.Options{})
//	host := fstest.StartRegistry(t)
//	err = im.Push(t.Context(), host, "corners", "latest")
//
// [Corners] is the corner-case image (whiteouts, opaque directories,
// hardlinks across layers, devices, xattrs, long and GNU names, ...),
// [Random] a seeded random image, [GoToolchain] a real directory tree split
// into layers.
//
// # Reference trees
//
// [UmociUnpack] unpacks an image with umoci, [CompareTrees] reports every
// difference between two trees (type, mode, owner, size, content, link
// target, xattrs, device numbers, mtime, hardlink groups). [StartRegistry]
// runs the Debian docker-registry. [RequireRoot] and [RequireFUSE] skip a
// test without them, and fail it when CI=true.
//
// # What umoci 0.4.7 does
//
// Measured with `umoci raw unpack` as root on ext4 (Debian umoci
// 0.4.7+ds-3). A union that must equal this unpack must do the same:
//
//   - Root: a "./" (or "/") directory entry sets the rootfs directory's
//     mode, uid/gid and mtime, wherever it sits in the layer, and a root
//     entry in a later layer wins. With no root entry at all the rootfs is
//     0755, 0:0, mtime the Unix epoch (1970-01-01T00:00:00Z).
//   - Implied parents: a directory no entry describes (implied/a for
//     implied/a/b/c.txt) is created 0755, 0:0, no xattrs, mtime the time
//     of unpack. Creating it also sets the mtime of the nearest directory
//     that already existed (often the root) to the time of unpack, and
//     umoci does not restore that. A later entry for the directory sets
//     its metadata as usual. Compare such paths with
//     CompareOptions.IgnoreMtimePaths ([CornerUnstableMtimes] for Corners).
//   - Directory mtimes: before each entry (whiteouts included) umoci saves
//     the parent directory's metadata and restores it afterwards, so a
//     directory keeps its header mtime however many children later entries
//     or later layers add or remove (except the implied-parent case).
//   - A directory entry for an existing directory (a later duplicate in
//     the same layer or one in a later layer) replaces its mode, owner,
//     mtime and xattrs (xattrs absent from the new header are removed) and
//     keeps its children.
//   - Same path twice in one layer: the later entry wins. A file replacing a
//     directory removes the whole directory; a directory replacing a file
//     removes the file.
//   - Whiteouts: ".wh.NAME" removes NAME and everything below it. A whiteout
//     of a path that does not exist is a no-op and creates no parents. A
//     path whited out and recreated in the same layer exists afterwards.
//   - Opaque directories: ".wh..wh..opq" removes every child that came from
//     lower layers and keeps this layer's entries in the directory, whether
//     they come before or after the marker in the tar. The directory keeps
//     its own metadata (mode, owner, mtime, xattrs) unless the layer also
//     has an entry for it. A marker in a directory that does not exist is a
//     no-op (the directory is not created). If a same-layer entry after the
//     marker needs a removed subdirectory again without describing it, that
//     subdirectory is implied (0755, time of unpack), and the opaque
//     directory's mtime becomes the time of unpack too.
//   - Hardlinks: a hardlink entry links to whatever inode its Linkname names
//     at that point, in the same layer or a lower one ("./"-prefixed names
//     and targets are normalised). The names share one inode and nlink
//     counts them. The link entry's own mode, owner, mtime and xattrs are
//     ignored; the target's stay. Writing a regular file over one name of a
//     group later (same or later layer) unlinks that name and creates a new
//     inode: the other names keep the old content and nlink drops. A
//     whiteout of one name drops nlink.
//   - Symlinks get the entry's owner and mtime (lchown, lutimes); their mode
//     is always 0777.
//   - Sub-second mtimes, setuid/setgid/sticky bits, mode 000, uids and gids
//     above 2097151, device numbers, fifos and user.* xattrs (binary values
//     included) are restored exactly.
//   - An entry below a path that a lower layer made a non-directory (p/q/r
//     over the file p, with no "p/" entry) makes umoci fail with "not a
//     directory"; the generators here never produce that.
//   - umoci reads neither zstd layers ("blob is not correct mediatype") nor
//     Docker schema 2 manifests: compare a zstd or Docker image with the
//     unpack of the same layers built as OCI gzip (CornersWith(Gzip)).
package fstest
