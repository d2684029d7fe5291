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
//   - The FUSE nodes ([Image.Mount]), error-to-errno mapping, and Pull;
//     the raw protocol of the same tree, for a connection one daemon hands
//     to the next ([Image.RawFS]).
//   - Per-layer views ([Image.LayerViews]) and [LayerFS], one mount serving
//     many of them (a containerd snapshotter's lower directories): each
//     tree in a slot of its own, node ids slot<<32 | the tree's numbers
//     ([ServedTree], the building block for other layouts).
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
//   - A tree merged by [Merge] numbers its inodes as a function of the
//     layers (depth-first, in name order, from 1), so every mount of an
//     image that is not loaded progressively gives each path the same inode
//     number and FUSE node id. A progressive load numbers paths in the order
//     it first sees them: stable for the load and its mounts (the final
//     tree keeps them), not across loads. Either way a hardlinked file has
//     one number.
//   - The tree is immutable once merged, so FUSE requests read it without
//     locks.
//
// # Identity across daemons
//
// The kernel names a node of a FUSE mount in a file handle as (node id,
// generation), and keeps such handles beyond the daemon that gave them:
// overlayfs records one in every file it copies up (trusted.overlay.origin)
// and decodes it in the next mount over the same upper directory, and a
// takeover of the FUSE connection by a new daemon
// ([github.com/ocifs/ocifs/fs/takeover]) leaves the kernel holding every
// node id, file handle and directory offset the old daemon gave. So a handle must name
// the same file in every daemon that accepts it, and no other file ever.
//
//   - Node ids are the inode numbers of the tree (go-fuse's ExternalNodeID),
//     not the order of lookups in one daemon.
//   - A tree merged by [Merge] is numbered as a function of the layers; its
//     generation is a digest of the DiffIDs and the numbered tree (names,
//     types and numbers: identity.go), with the top bit clear. A new daemon
//     of the image derives the same ids and generation, so the handles of
//     the old one name the same files; a handle of another image, or of a
//     tree numbered or merged otherwise (another ocifs), does not decode.
//   - A progressive load ([Options.Progressive], with a layer to stream)
//     numbers paths in the order it first sees them, which depends on how
//     far each stream had got: not a function of the image. Its handles are
//     made unmistakable instead: its generation is random with the top bit
//     set, so it matches no other load, progressive or not, and a node id
//     it never gave decodes to nothing (ESTALE).
//   - [RawFS], the raw protocol a connection handed from daemon to daemon
//     is served with, keeps no table of what the kernel was told: a node
//     id is the tree's number, the file handle of an open file or
//     directory is its node id, a directory offset is an index into its
//     sorted names, and FORGET does nothing. go-fuse's bridge cannot be
//     told about nodes it did not create (it panics on such ids and on
//     FORGETs of lookups it never counted), so a takeover mount does not
//     use it. A progressive load is not offered takeover
//     ([ErrNotDerivable]).
//   - Generation 0 is never used (ocifs gave it to every node before these
//     rules, in lookup order), except by the root, whose generation the
//     kernel fixes at 0 and whose handle names the root in every mount.
//
// A handle of a node the kernel holds an inode for decodes in any mount. One
// of a node it holds none for decodes only with [MountOptions.ExportHandles],
// where the kernel asks the daemon for the node id (LOOKUP of ".", answered
// by LookupNode in identity.go) and for a directory's parent (LOOKUP of
// ".."). That is off by default: on kernels with the FUSE dentry epoch
// (measured on 6.18) the dentry the kernel makes for a handle decoded so
// fails every revalidation, and overlayfs, which revalidates its lower
// dentries, then fails the copied-up file with ESTALE from its second use
// on. Without it the kernel answers such a handle ESTALE, which overlayfs
// takes as "origin unknown": the copied-up file is served from the upper
// alone, with the upper's inode number.
//
// # How a layer reaches its bytes
//
// Each layer has one reader (readers.go), chosen when it is planned (an
// eStargz or zstd:chunked TOC: chunkReader) or loaded (an ocifs index's
// spans: spanReader; the whole layer first: wholeReader; a progressive
// stream: streamReader), and replaced only when a stream ends or when the
// verified bytes replace a wrong index's spans (verifiedReader). The ones
// that serve piece by piece share one read loop, one fetch of a piece, one
// gathering of verified bytes and the image's one piece cache, keyed by
// blob digest and piece (pieces.go); every mode fills the whole layer in
// the background through one fill (layer.go). What stays in the layer is
// its lifecycle: the current attempt at its complete bytes, and quarantine.
//
// # Locking
//
// The merged tree is immutable and read without locks. Every lock of the
// package, what it guards, and the order they are taken in (a lock is
// taken only before those listed after it, never while holding one of
// them); a lock marked leaf is never held while another is taken:
//
//  0. LayerFS.mu (layerfs_linux.go), a read-write lock per LayerFS mount:
//     the names served and the slots given. add holds it while it makes a
//     ServedTree, so it comes before every lock of an image.
//  1. readAhead.mu (readahead.go), one per image: the sequential streams
//     seen and the read-ahead runs in flight. Taken before pieceCache.mu
//     (and alone by Stats, for the runs in flight: counters.go).
//  2. pieceCache.mu (pieces.go), one per image: the decoded pieces (spans,
//     chunks) in memory, their LRU order and size, and the fetches in
//     flight. Leaf within the package (claimEach asks the disk cache,
//     fetch.Cache, whether a chunk is there while holding it).
//  3. layer.mu (layer.go), one per layer: its table (never modified, only
//     replaced by ReleaseEntries with a copy without entries), its reader,
//     its current attempt and its quarantine. Leaf: a reader is used after
//     it is let go.
//  4. progress.mu (progressive.go): a progressive load's partial tables,
//     the streams running, the snapshot tree and the inode numbers given
//     by path. Leaf.
//  5. foreground.mu (prefetch.go): the fetches readers wait on, for the
//     background to yield to, and what transfers told of the link. Leaf.
//     The background's turn (foreground.turn, a one-slot semaphore like
//     Image.fetchSem) is held while a background request is sent and
//     received; foreground.mu is taken under it, nothing else.
//  6. Image.rmu (disagree.go): serialises updates of the published
//     refusals (read through an atomic pointer). Nothing but atomics is
//     read under it.
//  7. inode.omu (node.go), one per FUSE inode: the io mode (passthrough or
//     not) of its open files. Leaf.
//  8. recorder.mu and replayState.mu (profile.go): the ranges a start-up
//     profile being recorded has seen, and what a replay has done. Leaf.
//
// Besides, sync.Once values make a layer's extracted tree (layer.unpackOnce,
// unpack.go), an image's node generation (nodeGen), a tree's index of
// nodes by id (nodeIndex, identity.go) and an image's layer views
// (imageViews, views.go; podmanViews, views_podman.go) once; only LayerFS.mu may be held when one is
// entered. Counters, flags and published values (Image.tree, layer.tree,
// layer.disagreed, a stream's snapshot, a blob sink's progress) are
// atomics, and a fetch's result is published by closing its done channel
// (attempt, pieceFetch).
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
