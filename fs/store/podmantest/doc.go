// Package podmantest runs Debian 12's podman (4.3.1: containers/storage
// 1.43.0, containers/image 5.23.1) as root with a configuration of its
// own, the way fs/snapshotter/critest runs containerd: for the tests of
// a containers/storage additional layer store. Nothing here imports
// testing; every function returns an error.
//
// # What it starts
//
// [Start] writes a storage.conf (overlay driver, its own graph root and
// run root, optionally an additional layer store with the ":ref"
// option), a registries.conf (the loopback registries, insecure; no
// short names), a containers.conf (cgroupfs, file locks and events
// under the instance's tmp_dir, runc, no network) and a policy.json
// accepting anything, and passes them to every podman through
// CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF and CONTAINERS_CONF
// (and to conmon's cleanup command through conmon_env_vars).
//
// Configuration alone does not keep podman 4.3.1 off the host: as root it
// writes containers/image's blob info cache to
// /var/lib/containers/cache/blob-info-cache-v1.boltdb (no option moves it)
// and network lock files to /run/containers/networks, whatever the
// configuration says. So every podman of an instance runs in a mount
// namespace of the instance's own (a holder process started with
// unshare; podman through nsenter, [Podman.Command]) in which /var and
// /run carry private overlays whose upper directories are the
// instance's: [Podman.Shadowed] lists what podman wrote there. The
// container mounts podman makes live in that namespace: [Podman.HostPath]
// reaches them from the host through /proc/<holder>/root. The host's
// mounts are private, so a mount made on the host after Start is not seen
// by podman: mount a FUSE store first, or inside with [Podman.Command].
//
// # Containers
//
// [Podman.Pull], [Podman.Rmi], [Podman.InspectImage], [Podman.Run]
// (podman run --rm --tls-verify=false with [RunFlags], the exit code,
// output and [Timings] to the container's first output),
// [Podman.RunDetached], [Podman.ContainerRoot] (a running container's
// merged root, for fs/fstest's CompareTrees) and [Podman.RemoveContainer].
//
// [Podman.Stop] removes every container through podman, waits for
// conmon's cleanup commands, kills what is left of the instance
// (processes in its namespace: podman, conmon; in its cgroup parent: the
// containers), ends the namespace, which takes all of podman's mounts
// with it, and removes the cgroups.
//
// # The additional layer store
//
// [WriteImage] lays an image out as a store presents it:
// <store>/<base64 of the reference>/<compressed digest>/ holding diff/
// (the layer applied by containers/storage's own pkg/archive in overlay
// whiteout format, chrooted as podman applies, so its hardlink handling
// matches), info ([Info]) and blob. A test binary using it calls [Init]
// first in TestMain. The package's tests serve such a directory over a
// small FUSE loopback that records podman's every lookup and open and
// answers the use and release notifications with ENOENT: the contract
// proven here is what ocifs's store must serve.
//
// # What podman 4.3.1 does with an additional layer store
//
// Measured as root with the kernel's overlayfs; each point is checked by a
// test here (named in brackets).
//
//   - Configuration: additionallayerstores = ["PATH:ref"] in
//     [storage.options] (overlay driver only); PATH must be an existing
//     directory whenever any podman starts, or every podman command fails
//     ("overlay: can't stat additionallayerstore dir"; [Options] checks
//     it first).
//   - Which directory: <store>/<base64.StdEncoding(ref)>/<digest>/, the
//     digest being the layer's compressed digest from the manifest, and ref
//     containers/image's docker reference of the image pulled:
//     "host/repo:tag" (with ":latest" when no tag was given),
//     "host/repo@sha256:..." when the reference carried a digest (its tag,
//     if any, dropped); never a "docker://" or "//" prefix
//     (TestStoreRefNames). A '/' in the base64 is a path separator.
//   - Lookups, per layer (layers concurrently): stat of diff, info, blob
//     in that order (each a walk from the store's root), create of
//     <layer>/use, read of info; when the layer is committed, read of info
//     again, create of use again, and a symlink from the layer's diff in
//     the graph root to <layer>/diff; at the end of the pull, rmdir of
//     <layer> (the release of the first use). podman rmi rmdirs <layer>
//     once more. blob is never read by a pull or a run (an empty file
//     will do); containers/storage reads it only to export the layer
//     (podman push or save). Mounting a container reads through the
//     symlink and looks up diff and diff1 (TestRunFromStore).
//   - use and release: a store that answers ENOENT to both is
//     "notification-aware" and podman says nothing. A plain directory
//     (use created, then removed by podman; rmdir fails with ENOTEMPTY)
//     and a read-only mount (EROFS from the kernel, which never asks the
//     store) both work but print a warning per notification
//     (TestStoreUseWarnings): mount the store read-write.
//   - info: only diff-digest is needed: without it podman panics ("no ':'
//     separator in digest"); compressed-diff-digest, compressed-size,
//     diff-size and compression may all be left out. diff-digest is taken
//     as the layer's DiffID unchecked: a wrong one is stored as the
//     layer's DiffID and chain ID (podman's image inspect still shows the
//     config's) (TestInfoFields).
//   - A layer whose diff, info or blob is missing, or that the store
//     answers ENOENT for, is pulled from the registry as usual; the
//     image's other layers still come from the store (TestStoreENOENT,
//     TestInfoFields).
//   - A container's root from the store equals one from podman's own pull
//     of the same image but for mtimes of unpack and of creation
//     (TestStoreRootEqualsPull). Both ignore the image's root entry: a
//     container's root directory is mode 0555, the mode the overlay
//     driver gives a layer's diff directory (the parent's, down to 0555
//     at the bottom). A directory a layer writes into without an entry
//     for it is 0755 and root's in the container whatever a lower layer
//     made it: the applier creates it so in that layer's diff, which is
//     topmost (TestImpliedParent; containerd copies the lower's
//     attributes instead). podman's pull refuses a layer with a name twice
//     ("duplicates of file paths not supported", from tar-split) and,
//     like containerd, cannot apply a hardlink to a lower layer or a
//     whiteout of a path its own layer wrote.
//   - A SIGKILLed podman run leaves conmon and its container running and
//     the store usable: the next run, and a fresh podman, come from the
//     store without a layer fetch (TestPodmanKilled).
//   - podman 4.3.1 refuses a --runroot over 50 bytes, and conmon's
//     cleanup command passes one: with a longer run root every attached
//     run waits podman's 20 s conmon timeout for its exit code ([Options]
//     refuses such a Dir).
//   - Times: podman run to the container's first output, python-like
//     image (three gzip layers of about 150 MB of files), from the
//     loopback registry: 3.3 to 4.1 s cold; from the fake store: 0.33 s
//     (BenchmarkPodmanRun).
package podmantest
