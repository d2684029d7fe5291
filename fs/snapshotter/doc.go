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
