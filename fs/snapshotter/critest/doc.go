// Package critest runs a real containerd with its CRI plugin, the way
// net/http/httptest runs a real HTTP server: for the tests and the benchmark
// of a remote snapshotter. Nothing here imports testing; every function
// returns an error, so a test, a benchmark and a command can all use it.
//
// # What it starts
//
// [Start] runs a given containerd binary (Debian's /usr/bin/containerd 1.6,
// or a 2.x build) with a root, state, socket and configuration of its own
// under one directory, so several instances and the host's own containerd
// never meet. The configuration is written for the binary's version
// (config version 2 for 1.x, version 3 for 2.x) with: the CRI plugin, runc
// through the runc v2 shim (the shim beside the containerd binary, runc
// from /usr/bin), restrict_oom_score_adj (the VM lacks CAP_SYS_RESOURCE), a
// pinned sandbox image, plain-HTTP loopback registries through hosts.toml
// files under a registry config_path (containerd 1.6.20 reads them too), no
// CNI (pods use the host network), and either containerd's own overlayfs
// snapshotter or a proxy snapshotter selected for CRI with the
// containerd.io/snapshot/cri.* labels passed to it ([ProxySnapshotter]).
//
// [Containerd.Stop] removes every pod through CRI, stops containerd, kills
// any shim or container process it left (by the shim's -address and by the
// cgroup parent every pod of a [Client] runs under), unmounts everything
// left under its root and state (containerd leaves overlay, shm and bundle
// mounts behind when it is killed) and removes the cgroups.
//
// # Labels and the two pull paths
//
// A remote snapshotter learns which layer a Prepare is for only from the
// labels containerd adds, and without them every remote snapshotter
// silently gets a full pull. Containerd 1.x and 2.x add them on the
// client-side ("local") pull when the CRI config sets
// disable_snapshot_annotations = false. Containerd 2.1 and later pull
// through the transfer service by default; there the labels come from the
// snapshotter's exports (enable_remote_snapshot_annotations = "true") and
// the transfer service unpacks only for platforms and snapshotters listed
// in its unpack_config. Setting disable_snapshot_annotations = false on
// 2.1+ silently switches CRI back to the local pull (containerd logs a
// warning), so for [PullTransfer] the harness leaves it at its default.
// [Options.Pull] picks the path.
//
// # CRI
//
// [Containerd.Dial] returns a [Client] speaking CRI runtime v1 (k8s.io/cri-api)
// over the socket: [Client.PullImage], [Client.RunPod],
// [Client.CreateContainer], [Client.StartContainer], [Client.WaitContainer],
// [ContainerLog] and the removals, and [Client.Run], which pulls,
// runs one program to its exit and returns its exit code, output and
// [Timings] for the benchmark. [Client.ContainerRoot] gives the path of a
// running container's root file system on the host, for comparing it with
// a reference tree (fs/fstest's CompareTrees).
//
// # Images
//
// [PauseImage] builds a tiny sandbox image from Debian's busybox-static
// whose entrypoint sleeps until SIGTERM or SIGKILL ([PushPauseImage] pushes
// it); [BusyboxLayer] adds
// busybox to any fs/fstest image so a container can run a program in it;
// [SetConfig] gives a built image an entrypoint.
//
// # What containerd does (measured with 1.6.20 and 2.4.2)
//
// The tests here pin these down; each is checked by one of them.
//
//   - Labels (TestCRIProxyLabels): with label passing on, the Prepare of
//     each layer's unpack carries containerd.io/snapshot.ref (the layer's
//     chain ID: the name the snapshot is committed under) and
//     containerd.io/snapshot/cri.image-ref, cri.manifest-digest,
//     cri.layer-digest and cri.image-layers (this layer's digest and those
//     above it, comma-separated); 2.4 adds containerd.io/snapshot/diff-id
//     (the layer's DiffID) whatever the settings. The same labels come with
//     the Commit. With label passing at containerd's default only
//     snapshot.ref (and 2.4's diff-id) arrive. 1.6's local pull and 2.4's
//     local and transfer pulls send the same cri.* labels. The sandbox
//     image's layer gets them too (its pull happens inside RunPodSandbox).
//   - RPC order for a pull the snapshotter does not claim: per layer, bottom
//     up, Prepare(key "k8s.io/<n>/extract-<random> <chain ID>", parent
//     "k8s.io/<m>/<parent chain ID>") then Commit(name "k8s.io/<n+1>/<chain
//     ID>"); no Stat before Prepare (containerd's metadata store answers
//     that itself). The container's own snapshot is a Prepare with no
//     labels at all, then Mounts (twice on 1.6 and 2.4 for a container,
//     once for a sandbox). Keys carry containerd's namespace and a
//     counter; the chain ID is the part after the last "/".
//   - Removal: RemovePod and RemoveImage make containerd's garbage
//     collector List the snapshotter, then Remove the container's and the
//     sandbox's snapshots and each layer's, children before parents.
//   - containerd cannot unpack a layer holding a hardlink to a file of a
//     lower layer into overlayfs (TestCRIRunCorners): its applier writes
//     into the new upper directory only, and link(2) fails with ENOENT.
//     Nor a whiteout of a path its own layer wrote before it: the
//     whiteout's device node fails with EEXIST.
//   - Against umoci's unpack, containerd's overlayfs tree differs in the
//     mtime of directories a later layer writes into without an entry for
//     them (the time of unpack), in the mode of hardlinked files (the link
//     entry's own mode is applied to the inode) and, through overlayfs, in
//     the nlink of files whose other names a later layer whites out.
//   - 2.4 reads config version 3 and migrates it to its version 4 on load
//     ([grpc] becomes the plugin io.containerd.server.v1.grpc), logging a
//     warning each start; version 3 is kept because every 2.x reads it.
//   - Stop after a SIGKILL of containerd (TestStop): the shim, the pod's
//     processes, the bundles' rootfs mounts and the sandbox's shm mount all
//     survive, and the shim's socket stays in /run/containerd/s.
package critest
