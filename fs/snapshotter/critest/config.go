package critest

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

// Version is a containerd release, as `containerd --version` reports it.
type Version struct {
	Major, Minor, Patch int
	// Raw is the version field as printed ("1.6.20~ds1", "2.4.2+unknown").
	Raw string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// versionRE finds the release in the third field of `containerd --version`:
// "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
// (Debian) or "containerd github.com/containerd/containerd/v2 2.4.2+unknown "
// (go install, where no linker flag set the version).
var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)`)

// ParseVersion parses the output of `containerd --version`.
func ParseVersion(out string) (Version, error) {
	fields := strings.Fields(out)
	if len(fields) < 3 || fields[0] != "containerd" {
		return Version{}, fmt.Errorf("parse containerd version %q: want \"containerd <module> <version> ...\"", out)
	}
	m := versionRE.FindStringSubmatch(fields[2])
	if m == nil {
		return Version{}, fmt.Errorf("parse containerd version %q: %q is not a release number", out, fields[2])
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	v.Raw = fields[2]
	return v, nil
}

// BinaryVersion runs `binary --version` and parses what it prints.
func BinaryVersion(ctx context.Context, binary string) (Version, error) {
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return Version{}, fmt.Errorf("%s --version: %w", binary, err)
	}
	return ParseVersion(string(out))
}

// configInput is everything the configuration is made from; paths are
// absolute.
type configInput struct {
	version      Version
	root, state  string
	address      string
	hostsDir     string // the registry config_path
	optDir       string // io.containerd.internal.v1.opt's path
	cniDir       string // an empty directory for CNI binaries and configs
	shim         string // containerd-shim-runc-v2
	runc         string
	runcRoot     string
	sandboxImage string
	debug        bool
	proxy        *ProxySnapshotter
	pull         PullMode // resolved: PullLocal or PullTransfer
}

// snapshotter is the name the CRI plugin pulls and runs with.
func (in configInput) snapshotter() string {
	if in.proxy != nil {
		return in.proxy.Name
	}
	return "overlayfs"
}

// labels reports whether the CRI plugin is to pass the cri.* labels.
func (in configInput) labels() bool { return in.proxy != nil && !in.proxy.WithoutLabels }

// tomlString is a TOML basic string: quoted, with backslash, quote and control
// characters escaped.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// config returns the containerd configuration for in.version: version 2
// for 1.x, version 3 for 2.x.
func config(in configInput) string {
	if in.version.Major < 2 {
		return configV2(in)
	}
	return configV3(in)
}

func logLevel(debug bool) string {
	if debug {
		return "debug"
	}
	return "info"
}

// configV2 is the containerd 1.x configuration (config version 2, plugin
// IDs with "io.containerd." prefixes; keys from containerd 1.6's
// pkg/cri/config). The CRI plugin is one plugin there, image and runtime
// settings alike.
func configV2(in configInput) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("version = 2")
	p("root = %s", tomlString(in.root))
	p("state = %s", tomlString(in.state))
	// Snapshotters this machine cannot use only add noise to the log.
	p(`disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]`)
	p("")
	p("[grpc]")
	p("  address = %s", tomlString(in.address))
	p("[debug]")
	p("  level = %s", tomlString(logLevel(in.debug)))
	p("")
	p(`[plugins."io.containerd.internal.v1.opt"]`)
	p("  path = %s", tomlString(in.optDir))
	p("")
	cri := `plugins."io.containerd.grpc.v1.cri"`
	p("[%s]", cri)
	p("  sandbox_image = %s", tomlString(in.sandboxImage))
	p("  restrict_oom_score_adj = true")
	p("  disable_tcp_service = true")
	p(`  stream_server_address = "127.0.0.1"`)
	p(`  stream_server_port = "0"`)
	p("  [%s.containerd]", cri)
	p("    snapshotter = %s", tomlString(in.snapshotter()))
	p(`    default_runtime_name = "runc"`)
	// 1.x passes the cri.* labels on its (only, client-side) pull path
	// when this is false; its default on Linux is true.
	p("    disable_snapshot_annotations = %t", !in.labels())
	p("    [%s.containerd.runtimes.runc]", cri)
	p(`      runtime_type = "io.containerd.runc.v2"`)
	p("      runtime_path = %s", tomlString(in.shim))
	p("      [%s.containerd.runtimes.runc.options]", cri)
	p("        BinaryName = %s", tomlString(in.runc))
	p("        Root = %s", tomlString(in.runcRoot))
	p("  [%s.cni]", cri)
	p("    bin_dir = %s", tomlString(in.cniDir))
	p("    conf_dir = %s", tomlString(in.cniDir))
	p("  [%s.registry]", cri)
	p("    config_path = %s", tomlString(in.hostsDir))
	writeProxy(p, in)
	return b.String()
}

// configV3 is the containerd 2.x configuration (config version 3; keys
// from containerd 2.4's internal/cri/config, plugins/transfer and
// internal/nri). CRI is split into an images plugin, a runtime plugin and
// the gRPC service.
func configV3(in configInput) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("version = 3")
	p("root = %s", tomlString(in.root))
	p("state = %s", tomlString(in.state))
	p(`disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]`)
	p("")
	p("[grpc]")
	p("  address = %s", tomlString(in.address))
	p("[debug]")
	p("  level = %s", tomlString(logLevel(in.debug)))
	p("")
	p(`[plugins."io.containerd.internal.v1.opt"]`)
	p("  path = %s", tomlString(in.optDir))
	// NRI would listen on the one host-wide /var/run/nri/nri.sock.
	p(`[plugins."io.containerd.nri.v1.nri"]`)
	p("  disable = true")
	p("")
	images := `plugins."io.containerd.cri.v1.images"`
	p("[%s]", images)
	p("  snapshotter = %s", tomlString(in.snapshotter()))
	switch {
	case in.pull == PullLocal && !in.version.AtLeast(2, 1):
		// 2.0 has no transfer-service pull in CRI, nor the switch.
		p("  disable_snapshot_annotations = %t", !in.labels())
	case in.pull == PullLocal:
		p("  use_local_image_pull = true")
		p("  disable_snapshot_annotations = %t", !in.labels())
	default:
		// On the transfer path the labels come from the snapshotter's
		// exports; disable_snapshot_annotations = false here would
		// silently switch CRI back to the local pull.
		p("  use_local_image_pull = false")
		p("  disable_snapshot_annotations = true")
	}
	p("  [%s.pinned_images]", images)
	p("    sandbox = %s", tomlString(in.sandboxImage))
	p("  [%s.registry]", images)
	p("    config_path = %s", tomlString(in.hostsDir))
	p("")
	rt := `plugins."io.containerd.cri.v1.runtime"`
	p("[%s]", rt)
	p("  restrict_oom_score_adj = true")
	p("  [%s.containerd]", rt)
	p(`    default_runtime_name = "runc"`)
	p("    [%s.containerd.runtimes.runc]", rt)
	p(`      runtime_type = "io.containerd.runc.v2"`)
	p("      runtime_path = %s", tomlString(in.shim))
	p("      [%s.containerd.runtimes.runc.options]", rt)
	p("        BinaryName = %s", tomlString(in.runc))
	p("        Root = %s", tomlString(in.runcRoot))
	p("  [%s.cni]", rt)
	p("    bin_dirs = [%s]", tomlString(in.cniDir))
	p("    conf_dir = %s", tomlString(in.cniDir))
	p("")
	p(`[plugins."io.containerd.grpc.v1.cri"]`)
	p("  disable_tcp_service = true")
	p(`  stream_server_address = "127.0.0.1"`)
	p(`  stream_server_port = "0"`)
	p("")
	transfer := `plugins."io.containerd.transfer.v1.local"`
	p("[%s]", transfer)
	p("  config_path = %s", tomlString(in.hostsDir))
	if in.proxy != nil {
		// The transfer service unpacks only for the (platform,
		// snapshotter) pairs listed here; a pull for any other
		// snapshotter is stored but not unpacked, and CRI then unpacks
		// it at container creation without labels.
		p("[[%s.unpack_config]]", transfer)
		p("  platform = %s", tomlString(runtime.GOOS+"/"+runtime.GOARCH))
		p("  snapshotter = %s", tomlString(in.proxy.Name))
	}
	writeProxy(p, in)
	return b.String()
}

// writeProxy declares the proxy snapshotter, with the export that makes
// the 2.1+ transfer service pass the labels (1.x ignores exports it does
// not know).
func writeProxy(p func(string, ...any), in configInput) {
	if in.proxy == nil {
		return
	}
	p("")
	p("[proxy_plugins.%s]", tomlString(in.proxy.Name))
	p(`  type = "snapshot"`)
	p("  address = %s", tomlString(in.proxy.Address))
	if in.labels() && in.version.Major >= 2 {
		p("  [proxy_plugins.%s.exports]", tomlString(in.proxy.Name))
		p(`    enable_remote_snapshot_annotations = "true"`)
	}
}

// hostsTOML is the hosts.toml that makes containerd reach host (host:port)
// over plain HTTP for pulls and resolves.
func hostsTOML(host string) string {
	u := "http://" + host
	return fmt.Sprintf("server = %s\n\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", tomlString(u), tomlString(u))
}
