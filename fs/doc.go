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
