// Command ocifs mounts an OCI container image as a directory, lazily: file
// bytes are fetched from the registry (or an OCI layout on disk) when
// something reads them, each checked against its digest, and cached.
//
// This package holds only the command line: flags (pflag), help text, the
// slog handler, signals, the mount daemon's life cycle and exit codes. main
// calls run, which tests drive in-process. See DESIGN.md, "CLI
// contract", for the names scripts rely on.
//
// # Files
//
//   - main.go: run, global flags, usage errors, exit codes, hints, the logger.
//   - commands.go: the command table and every --help text.
//   - mount.go: mount checks, the daemon (re-exec with a ready pipe), serving.
//   - writable.go: --writable: the kernel's overlayfs over the read-only view,
//     the upper and work directories, their checks and clean-up.
//   - control.go: mount state files, the stats socket client, unmount, stats.
//   - image.go: inspect, ls, cat, pull and path resolution inside an image.
//   - cache.go: cache ls, du and prune.
package main
