// Package store is ocifs's containers/storage additional layer store: one
// FUSE mount ([Mount]) that podman, buildah and CRI-O consult before they
// pull a layer, serving any number of images lazily from ocifs's verified
// read path. fs/store/podmantest measures podman's side of the contract;
// this package serves it.
//
// # Layout
//
//	<store>/<base64 of the reference>/<layer digest>/diff/   the layer's own tree
//	                                               /info    JSON (see below)
//	                                               /blob    the compressed bytes
//
// The reference is containers/image's docker reference of the image pulled
// ("host/repo:tag", "host/repo@sha256:..."), in the standard base64, whose
// '/' is a path separator: the store's directories are the elements of a
// base64 as far as they go, and a name with a ':' (a digest, which base64
// never has) under one that decodes to a reference is a layer. (In the
// base64 of printable ASCII a '/' stands only for a '?' in the third byte
// of a group, which no reference holds: podman never asks for such a
// path; the case is handled, and fuzzed, not met.) Only the
// canonical base64 of a UTF-8 reference names an image. The image is
// resolved (shared fetch client: its digest cache and credentials) and
// loaded on the first lookup of one of its layers, once however many
// layers podman looks up at once; an image that fails to load is tried
// again by the next lookup. A layer is found by its compressed digest
// (containers/storage 1.43, podman 4.3.1) or, for eStargz and
// zstd:chunked, by its TOC digest (containers/storage 1.54 and later).
// Anything the store cannot serve is ENOENT, one Warn line says why, and
// podman pulls that layer itself.
//
// diff/ is the layer's view as containers/storage's overlay driver writes
// it ([fs.PodmanLayerViews]: implied parents 0755 root, the bottom layer
// in overlay format, the root 0555), served by an [fs.ServedTree] in a
// slot of its own (node ids slot<<32 | node, slot 0 being the store's own
// directories and files). info carries compressed-diff-digest,
// compressed-size, diff-digest (the config's DiffID, which the manifest
// binds through the config digest: containers/storage takes it unchecked
// as the layer's id), diff-size (the uncompressed tar's), compression
// (containers/storage's archive.Compression) and, for TOC layers,
// toc-digest and flags.expected-layer-diffid. blob has the manifest's
// size; its bytes are fetched whole and checked against the layer digest
// the first time something reads it (podman push or save; a pull or a run
// only stats it), and a mismatch is EIO with one Error line.
//
// # Use and release
//
// The mount is read-write only for podman's notifications: a create of
// <layer>/use counts a use, an rmdir of <layer> a release, and both are
// answered ENOENT, which tells containers/storage the store counts
// ([Store.Uses]). A pull leaves a count of 1 per layer and podman rmi takes
// it back to 0. Nothing is evicted: an image stays loaded until the store
// is unmounted, so a layer in use never is (eviction of images whose count
// went back to 0 is not done yet). A sparse file (GNU tar's PAX formats)
// reads as its logical content, holes as zeros, through the merged tree's
// sparse map; one that a later layer of the image replaces is EIO in its
// own layer's diff/, never its packed bytes.
//
// # Takeover (ocifs store --takeover)
//
// Served raw ([NewRaw], [Store.Raw]) on a connection a holder keeps
// (fs/takeover), the store's node ids outlive its daemon: the ids of its
// own nodes and the slots of its layers, given in first-seen order, are
// kept in store-ids.jsonl ([Store.StartRaw]), each written and fsynced
// before the kernel hears of it; a line cut short by a crash is dropped
// (the kernel never had that id), any other bad line refuses to start.
// A request about a slot the daemon has not served loads its image and
// layer view again; an id the file does not give is ESTALE, never another
// node. TestStoreTakeover runs a podman container reading its layer
// across SIGKILLs and an upgrade of the daemon.
package store
