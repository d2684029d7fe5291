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
// whiteout format), info ([Info]) and blob.
package podmantest
