// Package bench is `make bench` and `ocifs bench`: it measures an ocifs
// lazy mount against full pulls, on one machine, in one run, from cold
// caches, and writes bench/results/<date>.json, .md and .svg.
//
// Images are made on the machine (no internet): a Debian root file system
// with python3 (apt-get download + dpkg -x), the Go toolchain of
// /usr/local/go, and a 1 GiB model image of four large random files; each
// as plain gzip, gzip with a pushed ocifs index, eStargz and zstd:chunked
// (the last two only where `ocifs inspect` reports their lazy mode). They
// are cached under bench/.cache keyed by their input.
//
// The registry (Debian docker-registry) runs in a network namespace of its
// own, reached through a veth pair; every client goes through a counting
// TCP proxy on loopback, which also adds the round-trip time of the cloud
// and slow profiles (tbf shapes the veth to 1 Gbit/s for cloud, 100 Mbit/s
// for slow; this kernel has no netem).
//
// Methods: ocifs lazy mount on an empty cache, the same with
// --prefetch=none for start-up only (what the program alone fetches), the
// same with a start-up profile recorded and pushed beside the image
// (ocifs-profile), stargz-store with its defaults, its layers stacked by
// overlayfs (stargz-store, eStargz: the lazy peer of the same workloads),
// ocifs on a cache the background fetch completed, `ocifs pull` then overlayfs over the tree,
// and containerd (started with its own root and socket, `ctr images pull`
// into the overlayfs snapshotter, `ctr images mount`). Workloads:
// first-file (/etc/os-release), start-up (chroot and run the image's
// program), walk (lstat every entry), read-all (read every file once).
//
// Container start (issues 14-16), each repetition from nothing (a new
// containerd or podman root, a new snapshotter or store, the page cache
// dropped), on the images with a container program (python: python3 -c
// 'print(42)'; go: go version): through CRI on containerd 2.x
// (--containerd2, `make containerd2`), the time from PullImage to the
// program's exit seen with its output, for containerd's overlayfs
// (cri-overlayfs, plain gzip), stargz-snapshotter (cri-stargz, eStargz),
// SOCI (cri-soci, plain gzip with a SOCI index built and pushed once) and
// `ocifs snapshotter` (cri-ocifs, gzip+index, --profile=none; and
// cri-ocifs-profile, replaying a profile of the container's program
// recorded beforehand; cri-ocifs-estargz, on cri-stargz's eStargz image;
// cri-ocifs-stream, on the plain gzip image with no index anywhere;
// --ocifs-snapshotter is its command line, so another
// build can be measured); cri-warm, containerd's overlayfs with the image
// pulled before the clock starts, is the floor: what a start costs with no
// layer byte to fetch; and podman run to the
// first output with podman's own pull (podman-pull) or stargz-store as
// additional layer store (podman-stargz). The peers are small mains of our
// own over each project's library module, pinned in nested modules under
// bench/peers and built by `make peers` into bench/peers/bin (--peers);
// `make peers-check` runs one container through each (TestPeer*). A
// method whose binary is missing is reported "not available" with the
// reason, never measured.
//
// # Who imports it
//
// Nothing imports bench but its own commands (bench/run, which `make bench`
// runs) and cmd/ocifs/bench.go, the `ocifs bench` command: a thin flag
// wrapper that measures the very binary it is part of. That one edge is
// intended; so bench and what it imports (fs/fstest, fs/mountinfo) are
// linked into ocifs, and must link no test code: fs/fstest takes its own TB
// interface, not package testing. cmd/ocifs's TestImportDirection fails on
// any other importer and on any package of ours linking testing.
package bench
