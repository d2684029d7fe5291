// Package takeover keeps a FUSE connection alive across the daemons that
// serve it: a daemon may crash, or be replaced by a new binary, and the
// mount stays, with its open files, and the requests it was answering are
// answered by the next daemon.
//
// # The parts
//
//   - The holder ([Hold]): a small long-lived process (`ocifs holder`, named
//     ocifs in the process table) that starts the daemon, keeps the
//     connection's /dev/fuse fd and the INIT exchange ([Init]), and when
//     the daemon dies starts another and hands it both over a unix socket
//     (SOCK_SEQPACKET, the fd by SCM_RIGHTS). It does no FUSE work and
//     holds no image state, so what can crash it is small; a crash of the
//     daemon cannot close the fd, the holder's copy keeps the connection.
//   - The daemon's side: [Dial] asks the holder what it holds (whether a
//     connection exists, and its [Init]: the pinned image to load and the
//     generation its tree must have); the daemon loads the image; [Serve]
//     then takes the connection, giving its tree's generation (the holder
//     refuses another), and either mounts (the first daemon: open
//     /dev/fuse, mount(2), put the fd, read INIT, put the exchange, only
//     then answer it) or takes the connection over (replay the saved INIT
//     request into the protocol server so it knows what the kernel agreed
//     to, then write FUSE_NOTIFY_RESEND).
//   - The server: go-fuse's fuse.ProtocolServer (experimental in v2.12.1),
//     fed by our own read loop on the fd, over a fuse.RawFileSystem whose
//     node ids are a function of the image (fs.RawFS). go-fuse's fuse.Server
//     cannot be used: it insists on reading INIT itself, and a taken-over
//     connection was INITed long ago. Its fs bridge (fs.NewNodeFS) cannot
//     either: it panics on node ids it did not hand out and on FORGETs of
//     lookups it never counted. fs.RawFS keeps no table at all: the node id
//     is the tree's depth-first number, the generation a digest of the
//     tree, the file handle of an open file or directory is its node id, a
//     directory offset is an index into the directory's sorted names, and
//     FORGET is a no-op. So every id, handle and offset the kernel holds
//     from any daemon of the image means the same thing in the next.
//
// # In-flight requests
//
// A request the dead daemon had read and not answered sits in the kernel's
// processing queue. The new daemon writes FUSE_NOTIFY_RESEND (notify code
// 7, Linux 6.9 and later) once it serves: the kernel puts every such
// request back on the pending queue, its unique with bit 63 set, and the
// new daemon reads and answers it like any other. An INIT the old daemon
// read, saved and died before answering comes back the same way and is
// answered with the saved reply. Without FUSE_NOTIFY_RESEND (older
// kernels) such requests wait until interrupted (the reader's signal); the
// rest of the mount works.
//
// # Hand-over on purpose (upgrade)
//
// An upgrade (opUpgrade on the socket: `ocifs upgrade`, or SIGHUP to the
// holder) starts a new daemon from the binary at the path the mount was
// made with, while the old one serves. The new one loads the image (from
// the cache: a few hundred milliseconds), then asks for the connection;
// only then is the old one told to stop: it stops reading, finishes what
// it was answering, and exits 0. The holder then hands the fd to the new
// one, which writes FUSE_NOTIFY_RESEND for whatever the old one read after
// it stopped (and whatever it had not answered within 2s). Readers see one
// pause, no error. A new daemon that fails to load, or whose tree has
// another generation (a binary that numbers trees otherwise), is refused
// before the old one is told anything: the old one serves on.
//
// # What survives, what does not
//
// Survive: the mount, the kernel's dentries, inodes, attributes and page
// cache, open files and directories (handles are node ids), directory
// listings in progress (offsets are indexes), requests in flight. The
// image is served by its pinned digest ([Init].Ref), so a tag moved
// meanwhile changes nothing; a daemon whose tree has another generation
// than the kernel's refuses to serve (the kernel's node ids would name
// other files).
//
// Do not survive, or are not offered:
//   - A progressive load (fs.Options.Progressive): it numbers nodes in the
//     order it first sees them, not as a function of the image, so no other
//     daemon can derive the kernel's node ids (fs.ErrNotDerivable).
//   - FUSE passthrough: a backing id belongs to the daemon that registered
//     it, so a takeover-capable mount disables CAP_PASSTHROUGH and serves
//     every read itself (slower for hot, fully cached files).
//   - Writable mounts (overlayfs over the FUSE view): not built yet.
//   - The daemon's memory: the decoded piece cache, read-ahead state,
//     counters of `ocifs stats` (they restart from zero), the background
//     fetch (it starts again from what the disk cache has).
//   - Bytes not in the cache while the registry is unreachable: a read of
//     them fails with EIO after the usual retries, as without a restart
//     (the new daemon itself needs no registry: see below).
//   - A crash of the holder itself ends the mount as a crash of a daemon
//     without a holder does (readers get ENOTCONN).
//
// # The layer store taken over (ocifs store --takeover)
//
// fs/store served raw (store.NewRaw) numbers its own nodes (slot 0: the
// directories of references' base64, layers' directories, info, blob)
// and gives layers their slots in the order podman first looks them up:
// not a function of anything the next daemon could read, so every new id
// and slot is appended to store-ids.jsonl in the mount's state directory
// and fsynced before the kernel hears of it. A daemon taking over opens
// the file only once it holds the connection (the one before writes it
// until it stops), and answers requests only then; a slot it has not
// served yet loads its image and view on demand, as the snapshotter does.
// A mount made afresh starts the file afresh. Init.Ref is "store:" + the
// mountpoint, Init.Generation store.Generation. The use counts of
// podman's notifications are the daemon's memory: they restart from zero.
//
// # A layer mount taken over (ocifs snapshotter --takeover)
//
// The snapshotter serves every image layer of the node on one FUSE mount
// (fs.LayerFS, --root/layers), each layer a directory named by its
// containerd snapshot id. With --takeover the process systemd starts is
// the holder (the same [Hold]), and the daemon its child, with the same
// command line; the daemon serves the mount with fs.LayerFS.Raw over
// [Serve], which keeps no table either: a node id is slot<<32 | the
// node's number in the layer's view tree, and a layer's slot is its
// snapshot id, which containerd never reuses. Init.Generation is
// fs.LayerGeneration (how slots and views are numbered), Init.Ref
// "layers:" + the root: the new daemon needs no image of its own, only
// its flags, which the holder passes again.
//
// A new daemon starts with no layer loaded. A request about a slot it
// does not serve yet (the kernel's node ids from the daemon before) is
// resolved on demand: snapshot id -> its committed labels in the
// snapshotter's metadata (io.ocifs.remote, io.ocifs.layer) -> the image,
// pinned, loaded from the cache (manifest and config too, see below)
// -> the layer's view, numbered as before, with the
// same generation, which the kernel checks at every LOOKUP of a cached
// dentry. A slot that is no committed remote snapshot gets ESTALE (ENOENT
// for a name looked up at the root), never another layer's file. Only
// decimal names are served raw: a slot counted down from the top (the
// bridge's for other names) would not be derivable.
//
// Order of a hand-over: a daemon taking over takes the connection first
// (for an upgrade that stops the daemon serving it, which finishes its
// requests, stops its gRPC server and exits 0 without unmounting), and
// only then opens the metadata (bbolt's lock), the gRPC socket, the
// metrics port and the CRI image socket the old one held; requests read
// meanwhile wait for it. containerd's proxy client reconnects to the
// socket by itself; calls it makes in the gap fail with Unavailable and
// are retried by kubelet.
//
// What survives: running containers (their overlay mounts keep their
// lower directories on the connection), their open files, reads in
// flight; new containers start as soon as the new daemon serves the
// socket. What does not: the CRI image service's in-memory credentials
// (--cri-image-service; a layer of a private registry then needs root's
// auth file or credential helper to be served again), the daemon's
// counters and decoded caches, passthrough (off: every read goes through
// the daemon). A name removed from the mount stays visible to the
// kernel for at most a second (no invalidation is sent), then ENOENT.
// SIGTERM to the holder still stops everything, as without --takeover:
// running containers' reads of lazy layers then fail.
//
// A restart while the registry is down works for what is cached: the new
// daemon reads the pinned manifest and the config from the cache (checked
// against their digests again), and the registry's index artifacts as last
// listed, their heads and eStargz or zstd:chunked TOCs likewise, so it
// loads and takes over at once (fetch's offline.go, fs.Image's plan).
//
// # What it must not do
//
// Know images or trees: it serves any fuse.RawFileSystem whose ids are
// derivable, and passes Init.Generation and Init.Ref through without
// interpreting them beyond equality.
package takeover
