// Package snapshotter is ocifs as a containerd proxy snapshotter: a
// snapshots.Snapshotter (containerd's core/snapshots interface) over
// overlayfs whose image layers, where a [Layers] can serve them, are
// directories of a lazy view rather than trees containerd downloaded and
// unpacked. [Serve] puts it on a unix socket as
// containerd.services.snapshots.v1.Snapshots:
//
//	[proxy_plugins.ocifs]
//	  type = "snapshot"
//	  address = "/run/ocifs/snapshotter.sock"
//
//	sn, err := snapshotter.Open(ctx, snapshotter.Options{Root: root, Layers: layers})
//	srv, err := snapshotter.Serve("/run/ocifs/snapshotter.sock", sn)
//	...
//	err = srv.Stop(ctx)
//	err = sn.Close()
//
// # Metadata
//
// Snapshot metadata lives in containerd's own bbolt MetaStore
// (core/snapshots/storage) in Root/metadata.db, and the gRPC service is
// containerd's contrib/snapshotservice: List filters, parent chains,
// Commit, Remove and the error codes are containerd's, not a copy of
// them. Each snapshot has Root/snapshots/<id>/ with fs/ (the upper
// directory) and, while active, work/, laid out as containerd's overlayfs
// snapshotter lays them out.
//
// # Remote snapshots
//
// When containerd unpacks a layer it first Prepares an active snapshot
// with the label containerd.io/snapshot.ref (the layer's chain ID, the
// name the layer is to be committed under) and, with label passing on,
// the cri.* labels naming image, manifest and layer. Prepare then asks
// [Layers.Prepare]. If it serves the layer, the snapshot is committed at
// once under the chain ID with labels of ours ([LabelRemote] pinning
// image and manifest, [LabelLayer]) besides containerd's, fs/ becomes a
// symlink to the layer's directory, and Prepare answers AlreadyExists:
// containerd finds the committed snapshot by its labels and downloads
// nothing. If Layers cannot, one Warn line names the layer and the
// reason, [Stats].Fallback goes up, and Prepare returns ordinary mounts:
// containerd downloads and applies the layer itself. No layer is ever
// silently slower.
//
// A remote snapshot is served on demand: every Mounts of a snapshot over
// it asks [Layers.Dir], so after a restart nothing needs restoring up
// front. Remove and Cleanup release every removed id from Layers.
//
// # Serving layers: one lower per layer, one FUSE mount (Remote)
//
// [Remote] is the Layers of `ocifs snapshotter`. Each remote snapshot is
// the per-layer view of its image (fs.Image.LayerView): the layer's own
// tree exactly as containerd's applier writes it into an empty upper
// directory for its overlayfs snapshotter (whiteouts as 0/0 devices,
// opaque directories by xattr), served as directory <id> of one FUSE
// mount at Root/layers (fs.LayerFS) that holds every image's layers. The
// container's root is then the kernel's overlayfs over one lower per
// layer, as with containerd's own snapshotter. Chosen over one lower of
// ocifs's merged view of the chain because:
//
//   - it equals containerd's root by construction: the union is the
//     kernel's, over the trees containerd's applier would have written
//     (fs/layerview.go is checked against that applier, and
//     TestCRIRemote compares the container roots), not a second union
//     implementation that must agree with overlayfs on every corner;
//   - a layer is served once however many images and chains share it,
//     and containerd's own snapshot model (a committed snapshot per
//     chain ID, parents, GC) holds unchanged: a chain view would be
//     per top layer, and every image would merge again;
//   - a layer ocifs cannot serve falls back alone: containerd applies it
//     between remote layers (TestCRI), where a merged chain would need
//     every layer below it to be ocifs's.
//
// The cost is overlayfs's layer count (Mounts keeps long lowerdir lists
// mountable: TestCRILongChain) and one FUSE lookup per layer on a miss.
//
// Prepare resolves the image as <cri.image-ref without digest>@<cri.manifest-digest>
// with the shared fetch client (one digest cache for every image),
// loads it once however many Prepares of it run at once (the load runs
// on the Remote's context, so one caller giving up fails no other), and
// checks the layer against it: the layer digest must be in the manifest,
// the chain ID of the config's DiffIDs up to it must be snapshot.ref,
// and cri.image-layers (this layer and those above) and 2.x's diff-id
// must agree. Anything else is an error, so the snapshotter falls back,
// loudly. An image stays open while any of its layers is held; Release
// of the last closes it. Dir after a restart resolves again from the
// committed snapshot's io.ocifs.remote and io.ocifs.layer labels. Usage
// is what the layer's tree takes once complete: its files in 4 KiB
// blocks, a block per directory and symlink, one inode per node.
//
// A layer with an ocifs index (local cache or the registry's referrer)
// fetches only the spans containers read; an eStargz or zstd:chunked one
// only its chunks; a layer with no index anywhere is streamed once by
// the load (stream mode: fetched in order and indexed, never unpacked),
// so the first Prepare of such an image costs its download, without
// containerd's decompress-and-write of every file.
//
// # Takeover (ocifs snapshotter --takeover)
//
// The layer mount's FUSE connection can outlive the daemon: a holder
// keeps it and starts a new daemon, which takes it over (see
// fs/takeover's doc.go, "A layer mount taken over"). The mount is then
// served raw (fs.NewRawLayerFS): the kernel names a layer's nodes by
// slot = snapshot id, and a request about a snapshot the new daemon does
// not serve yet is answered after [Snapshotter.ServeAgain] looks the id
// up in the metadata and serves the committed layer again through
// [Layers.Dir], as a mount after a restart does. An id that is no
// committed remote snapshot gets ESTALE. TestCRITakeover runs a container
// reading its lazy layer across SIGKILLs of the daemon, `ocifs upgrade`
// and SIGHUP.
//
// # Invariants
//
//   - The mounts of a chain are what containerd's overlayfs snapshotter
//     would give for it; a remote layer's directory stands where the
//     layer's applied upper directory would.
//   - Every lower directory is Root/snapshots/<id>/fs, so containerd's
//     mount code can shorten a long lowerdir option (see
//     [Snapshotter.Mounts]).
//   - The io.ocifs.* labels of a snapshot change only with the snapshot:
//     Update keeps them.
//
// It must not know how layers are fetched or served: that is [Layers]'s.
//
// # What containerd does with it (measured with 1.6.20 and 2.4.2)
//
// TestCRI and TestCRILongChain pin these down, on 1.6's client-side pull
// and on both of 2.4's (client-side and transfer service):
//
//   - Each layer's unpack is a Prepare(key "k8s.io/<n>/extract-<random>
//     <chain ID>", parent = the backend name of the layer below) with
//     containerd.io/snapshot.ref and the four cri.* labels (2.4 adds
//     containerd.io/snapshot/diff-id). After our AlreadyExists containerd
//     Walks with the filter labels."containerd.io/snapshot.ref"==<chain
//     ID>,parent==<parent> and Stats what it found; a layer it applied
//     itself it Commits as "k8s.io/<n>/<chain ID>" with the same labels.
//   - Once containerd has to apply one layer of an image, it downloads
//     every layer above it as well, also those we then serve remotely
//     (it applies none of them): a fallback in the middle of an image costs
//     the download of the rest of it.
//   - A container's snapshot is a Prepare without labels, then Mounts
//     twice. After a restart of the snapshotter containerd reconnects on
//     its next call: the next container start worked at once.
//   - RemovePod and RemoveImage make its garbage collector Walk (no
//     filter), Remove children before parents, then call Cleanup.
//   - Neither version called View, Update or Usage in these runs. The
//     metadata store's Update, though, sends only the labels containerd
//     passes on, and with no field paths replaces all of them: hence
//     Update keeps ours.
//   - With over a page of overlay options, a mount fails ("mount options is
//     too long") in 1.6's own temporary mount at CreateContainer and in
//     2.4's shim at StartContainer unless every lower directory shares one
//     parent directory, which both then mount from with relative paths.
package snapshotter
