package podmantest

import (
	"fmt"
	"strconv"
	"strings"
)

// configInput is what the configuration files of one instance are made
// from.
type configInput struct {
	root, runroot, tmp string
	// store is the additional layer store's path; "" for none.
	store      string
	registries []string
	// netDir is the network configuration directory; podman creates its
	// lock files there even with networking off.
	netDir string
	// envFiles are the KEY=value pairs conmon passes on to the cleanup
	// command it runs when a container exits (its --exit-command is a
	// podman of its own, which reads containers.conf again).
	env []string
}

// storageConf is a containers-storage.conf(5): the overlay driver in the
// instance's own graph and run roots, and the additional layer store with
// the ":ref" option (containers/storage then looks layers up under
// <store>/<base64 reference>/<digest>).
func storageConf(in configInput) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[storage]\ndriver = \"overlay\"\ngraphroot = %s\nrunroot = %s\n\n", q(in.root), q(in.runroot))
	b.WriteString("[storage.options]\n")
	if in.store != "" {
		fmt.Fprintf(&b, "additionallayerstores = [%s]\n", q(in.store+":ref"))
	}
	// No mount_program: the kernel's overlayfs, as Debian's podman uses
	// it as root. nodev is containers/storage's default mount option.
	b.WriteString("\n[storage.options.overlay]\nmountopt = \"nodev\"\n")
	return b.String()
}

// registriesConf is a containers-registries.conf(5) that knows only the
// given registries, each plain HTTP (insecure), and resolves no short
// names: every reference must name its registry.
func registriesConf(in configInput) string {
	var b strings.Builder
	b.WriteString("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n")
	for _, r := range in.registries {
		fmt.Fprintf(&b, "\n[[registry]]\nlocation = %s\ninsecure = true\n", q(r))
	}
	return b.String()
}

// containersConf is a containers.conf(5) that keeps every path podman 4.3
// writes to under the instance's directory (the libpod database, locks,
// events, volumes, image copy buffers), uses cgroupfs (no systemd here),
// file locks instead of the one shared-memory segment all root podmans
// share, runc, and no network (netns "none": no CNI or netavark needed).
func containersConf(in configInput) string {
	var b strings.Builder
	b.WriteString("[containers]\nnetns = \"none\"\nlog_driver = \"k8s-file\"\n\n")
	b.WriteString("[engine]\n")
	fmt.Fprintf(&b, "cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = %s\n", q(in.tmp+"/events.log"))
	fmt.Fprintf(&b, "lock_type = \"file\"\nruntime = \"runc\"\ntmp_dir = %s\n", q(in.tmp))
	fmt.Fprintf(&b, "static_dir = %s\nvolume_path = %s\nimage_copy_tmp_dir = %s\n", q(in.root+"/libpod"), q(in.root+"/volumes"), q(in.tmp))
	var env []string
	for _, e := range in.env {
		env = append(env, q(e))
	}
	fmt.Fprintf(&b, "conmon_env_vars = [%s]\n", strings.Join(env, ", "))
	fmt.Fprintf(&b, "\n[network]\nnetwork_config_dir = %s\n", q(in.netDir))
	return b.String()
}

// policyJSON accepts every image: the test images carry no signatures.
const policyJSON = `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n"

// q quotes s as a TOML basic string.
func q(s string) string { return strconv.Quote(s) }
