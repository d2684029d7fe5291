// Package fs serves an OCI image as one merged directory tree: the union of
// its layers, mounted with FUSE, unpacked by Pull, or read file by file.
//
// # What it owns
//
//   - The union ([Merge]): layers applied bottom-up as an unpacker applies
//     them, with whiteouts, opaque directories, implied parents, symlinks
//     followed in parent paths, and hardlinks sharing one [Node].
//   - Each layer's plan and state: where its entry table comes from (the
//     index cache, or streaming the blob) and when its bytes are ready.
//   - The FUSE nodes ([Image.Mount]), error-to-errno mapping, and Pull.
//
// # Invariants
//
//   - A byte is served only from a span or chunk checked against its digest,
//     or from a layer whose blob was checked against the manifest's digest
//     and whose uncompressed tar (or the stream its extracted files came
//     from) against the config's DiffID. A failed check is EIO and one Error
//     log line.
//   - Verified bytes are the truth. A layer is served from a TOC or an index
//     (which bind only chunk or span digests) until its verified bytes are in
//     hand; then its table in use is compared with them, and if they
//     disagree (one Error line), a node is served only if merging the
//     layers with that layer's verified entries instead gives the same node
//     at the same path: same type, attributes, link count, link target and,
//     for a file, the same bytes. Other nodes are EIO, and so are the listing
//     of a directory whose names differ and a lookup there of a missing
//     name; wrong spans or windows are replaced by those built from the
//     verified blob. Bytes that fail their own digest still quarantine the
//     layer: every read of it is EIO.
//   - A TOC that cannot say the names exactly (JSON holds U+FFFD for bytes
//     that are not UTF-8) is not served from unless the layer's tar-split,
//     bound to it by digest, gives them: the layer is streamed or fetched
//     whole instead.
//   - A read waits only for the layer that holds its file.
//   - Inode numbers are a function of the image: the same image gives the same
//     numbers on every mount.
//   - The tree is immutable once merged, so FUSE requests read it without
//     locks.
//
// # What it must not do
//
// Parse formats (that is [github.com/ocifs/ocifs/index]) or send HTTP (that is
// [github.com/ocifs/ocifs/fetch]).
//
// # Example
//
//	im, err := fs.Resolve(ctx, client, "registry.example.com/app:1.4", fs.Options{})
//	if err != nil { ... }
//	defer im.Close()
//	if err := im.Load(ctx); err != nil { ... }
//	m, err := im.Mount(ctx, "/mnt/app", fs.MountOptions{})
//	if err != nil { ... }
//	m.Wait()
package fs
