package podmantest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Binaries this package runs (Debian 12's podman, conmon, runc and
// util-linux).
const (
	DebianPodman = "/usr/bin/podman"
	DebianConmon = "/usr/bin/conmon"
	DebianRunc   = "/usr/sbin/runc"
	unshareBin   = "/usr/bin/unshare"
	nsenterBin   = "/usr/bin/nsenter"
)

// RunFlags are the flags every container here runs with. Without both
// ulimits runc fails to start a container on this machine ("error
// setting rlimits": podman asks for more open files and processes than
// the VM allows); --runtime runc repeats containers.conf's choice (Debian's
// podman prefers crun, which is not installed without recommends).
var RunFlags = []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--runtime", "runc"}

// shadowed are the host directories the instance's mount namespace lays a
// private overlay over: podman 4.3 as root writes there whatever its
// configuration says (containers/image's blob info cache in
// /var/lib/containers/cache, network lock files in /run/containers), and
// none of it may reach the host.
var shadowed = []string{"/var", "/run"}

// maxRunRoot is the longest --runroot podman 4.3.1 accepts
// (pkg/domain/infra: "the specified runroot is longer than 50
// characters").
const maxRunRoot = 50

// Options configures [Start]. Only Dir is required.
type Options struct {
	// Dir holds everything of this instance: graph root, run root, tmp,
	// configuration files, the overlays' upper directories. It must exist
	// and be at most 42 bytes long (Dir/runroot at most 50: see
	// maxRunRoot); the t.TempDir() of a test is often longer.
	Dir string
	// Registries are plain-HTTP registries (host:port) podman may pull
	// from; registries.conf marks each insecure.
	Registries []string
	// AdditionalLayerStore, when set, is the path of an additional layer
	// store, configured with the ":ref" option. It must exist and be a
	// directory when Start runs (containers/storage checks it every time
	// podman starts), and it must be visible in the instance's mount
	// namespace: mount a FUSE store before Start (the host's mounts are
	// private, so a later mount never propagates in), or start it inside
	// with [Podman.Command].
	AdditionalLayerStore string
	// Binary is the podman executable; empty means [DebianPodman].
	Binary string
	// Debug runs every podman with --log-level=debug (its stderr shows
	// each layer lookup).
	Debug bool
}

// Podman is one podman configuration with a mount namespace of its own,
// started by [Start]. Every podman it runs shares that namespace, so
// container mounts made by one (podman run) are seen by the next (podman
// rm) and vanish with the namespace when [Podman.Stop] ends it.
type Podman struct {
	// Root and RunRoot are containers/storage's graph root and run root.
	Root, RunRoot string
	// Tmp is podman's tmp_dir (locks, exits, events) and TMPDIR.
	Tmp string
	// StorageConf, RegistriesConf, ContainersConf and PolicyPath are the
	// configuration files written for this instance.
	StorageConf, RegistriesConf, ContainersConf, PolicyPath string
	// Store is the additional layer store configured, or "".
	Store string
	// Binary is the podman executable, an absolute path.
	Binary string
	// CgroupParent is the cgroup every container of [Podman.Run] and
	// [Podman.RunDetached] runs under, so that Stop finds them all.
	CgroupParent string
	// Leftovers lists what Stop had to clean up by force; empty when
	// podman left nothing.
	Leftovers []string

	dir    string
	debug  bool
	holder *exec.Cmd // the process keeping the mount namespace alive
	mntNS  string    // its /proc/<pid>/ns/mnt link target, "mnt:[inode]"
	// nsFile holds the namespace open from Start until Stop has seen
	// the last process of it go: a namespace's inode number is reused
	// once nothing refers to it, and a process of a namespace made
	// afterwards (another test's holder) would otherwise match mntNS.
	nsFile *os.File
	exited chan struct{}
	// uppers maps each shadowed host directory to the overlay upper
	// directory that took podman's writes to it.
	uppers  map[string]string
	stopped bool
}

// Start writes the configuration files, creates the instance's mount
// namespace (with the private overlays over /var and /run) and checks that
// podman answers. Nothing runs in the background afterwards but the
// process holding the namespace.
func Start(ctx context.Context, opts Options) (*Podman, error) {
	p, in, err := prepare(opts)
	if err != nil {
		return nil, err
	}
	files := map[string]string{
		p.StorageConf:    storageConf(in),
		p.RegistriesConf: registriesConf(in),
		p.ContainersConf: containersConf(in),
		p.PolicyPath:     policyJSON,
	}
	for name, content := range files {
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			return nil, fmt.Errorf("start podman: %w", err)
		}
	}
	if err := p.startNamespace(ctx); err != nil {
		return nil, err
	}
	// podman info opens the storage (and the additional layer store) the
	// way every later command will: a bad configuration fails here.
	if _, err := p.Output(ctx, "info", "--format", "{{.Store.GraphRoot}}"); err != nil {
		stopErr := p.Stop()
		return nil, errors.Join(fmt.Errorf("start podman: %w", err), stopErr)
	}
	return p, nil
}

// prepare checks the options, finds the binaries and creates the
// directories.
func prepare(opts Options) (*Podman, configInput, error) {
	if opts.Dir == "" {
		return nil, configInput{}, errors.New("start podman: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, configInput{}, fmt.Errorf("start podman: %w", err)
	}
	binary := opts.Binary
	if binary == "" {
		binary = DebianPodman
	}
	if binary, err = exec.LookPath(binary); err != nil {
		return nil, configInput{}, fmt.Errorf("start podman: %w (apt-get install podman)", err)
	}
	if binary, err = filepath.Abs(binary); err != nil {
		return nil, configInput{}, fmt.Errorf("start podman: %w", err)
	}
	for _, b := range []string{DebianConmon, DebianRunc, unshareBin, nsenterBin} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, configInput{}, fmt.Errorf("start podman: %w (apt-get install podman runc util-linux)", err)
		}
	}
	if s := opts.AdditionalLayerStore; s != "" {
		if !filepath.IsAbs(s) || strings.ContainsAny(s, ":,") {
			return nil, configInput{}, fmt.Errorf("start podman: additional layer store %q: want an absolute path without ':' or ','", s)
		}
		if fi, err := os.Stat(s); err != nil || !fi.IsDir() {
			return nil, configInput{}, fmt.Errorf("start podman: additional layer store %q must be an existing directory (containers/storage refuses to start otherwise): %v", s, err)
		}
	}
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, configInput{}, fmt.Errorf("start podman: %w", err)
	}
	p := &Podman{
		Root:           filepath.Join(dir, "root"),
		RunRoot:        filepath.Join(dir, "runroot"),
		Tmp:            filepath.Join(dir, "tmp"),
		StorageConf:    filepath.Join(dir, "storage.conf"),
		RegistriesConf: filepath.Join(dir, "registries.conf"),
		ContainersConf: filepath.Join(dir, "containers.conf"),
		PolicyPath:     filepath.Join(dir, "policy.json"),
		Store:          opts.AdditionalLayerStore,
		Binary:         binary,
		CgroupParent:   "/ocifs-podmantest-" + hex.EncodeToString(suffix[:]),
		dir:            dir,
		debug:          opts.Debug,
		uppers:         map[string]string{},
	}
	in := configInput{
		root:       p.Root,
		runroot:    p.RunRoot,
		tmp:        p.Tmp,
		store:      p.Store,
		registries: opts.Registries,
		netDir:     filepath.Join(dir, "networks"),
		env:        append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, p.env()...),
	}
	// podman 4.3.1 refuses a --runroot over 50 bytes, and conmon's
	// cleanup command passes one: every attached run would then wait
	// podman's 20 s conmon timeout for the exit code.
	if len(p.RunRoot) > maxRunRoot {
		return nil, configInput{}, fmt.Errorf("start podman: run root %s is %d bytes, over the %d podman's cleanup command accepts: use a Dir of at most %d bytes", p.RunRoot, len(p.RunRoot), maxRunRoot, maxRunRoot-len("/runroot"))
	}
	for _, d := range []string{p.Root, p.RunRoot, p.Tmp, in.netDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, configInput{}, fmt.Errorf("start podman: %w", err)
		}
	}
	for _, r := range opts.Registries {
		if r == "" || strings.ContainsAny(r, "/\\ \"") {
			return nil, configInput{}, fmt.Errorf("start podman: registry %q: want host:port", r)
		}
	}
	return p, in, nil
}

// env is what every podman of this instance runs with: the configuration
// files and TMPDIR.
func (p *Podman) env() []string {
	return []string{
		"CONTAINERS_CONF=" + p.ContainersConf,
		"CONTAINERS_STORAGE_CONF=" + p.StorageConf,
		"CONTAINERS_REGISTRIES_CONF=" + p.RegistriesConf,
		"TMPDIR=" + p.Tmp,
	}
}

// startNamespace starts the holder: a shell in a new mount namespace
// (private propagation, util-linux's unshare default) that mounts an
// overlay over each shadowed directory, says "ready" and sleeps until
// killed.
func (p *Podman) startNamespace(ctx context.Context) error {
	var script strings.Builder
	script.WriteString("set -e\n")
	for i, d := range shadowed {
		upper := filepath.Join(p.dir, fmt.Sprintf("shadow%d", i), "upper")
		work := filepath.Join(p.dir, fmt.Sprintf("shadow%d", i), "work")
		for _, x := range []string{upper, work} {
			if err := os.MkdirAll(x, 0o755); err != nil {
				return fmt.Errorf("start podman: %w", err)
			}
		}
		p.uppers[d] = upper
		fmt.Fprintf(&script, "mount -t overlay ocifs-podmantest -o lowerdir=%s,upperdir=%s,workdir=%s %s\n", d, upper, work, d)
	}
	script.WriteString("echo ready\nexec sleep infinity\n")
	cmd := exec.Command(unshareBin, "--mount", "--propagation", "private", "/bin/sh", "-c", script.String())
	cmd.Dir = p.dir
	// Its own process group: a ^C meant for the test reaches it only
	// through Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("start podman namespace: %w", err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start podman namespace: %w", err)
	}
	p.holder = cmd
	p.exited = make(chan struct{})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("holder said %q", line)
		}
		ready <- err
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errors.New("no answer in 30s")
	}
	if err == nil {
		p.nsFile, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	}
	if err == nil {
		p.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	}
	if err != nil {
		cmd.Process.Kill()
		<-p.exited
		if p.nsFile != nil {
			p.nsFile.Close()
			p.nsFile = nil
		}
		return fmt.Errorf("start podman namespace: %w: %s", err, stderr.String())
	}
	return nil
}

// NamespacePID is the pid of the process holding the instance's mount
// namespace: /proc/<NamespacePID>/root is the file system as podman and
// its containers' mounts see it.
func (p *Podman) NamespacePID() int { return p.holder.Process.Pid }

// HostPath returns the path under which the host sees path p of the
// instance's mount namespace (a container's merged root, say).
func (p *Podman) HostPath(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", p.holder.Process.Pid, path)
}

// Shadowed returns what podman wrote to the host directories the
// instance's overlays shadow, as the host paths it would have written
// (directories podman only passed through are left out).
func (p *Podman) Shadowed() ([]string, error) {
	var out []string
	for _, d := range shadowed {
		upper := p.uppers[d]
		err := filepath.WalkDir(upper, func(path string, e os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() {
				return nil
			}
			rel, err := filepath.Rel(upper, path)
			if err != nil {
				return err
			}
			out = append(out, filepath.Join(d, rel))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list what podman wrote to %s: %w", d, err)
		}
	}
	return out, nil
}

// Command returns a command that runs name with args in the instance's
// mount namespace with its configuration in the environment. Use it for
// anything that must see podman's mounts, or be seen by podman: a FUSE
// store mounted by a process started this way is visible to podman.
func (p *Podman) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", p.holder.Process.Pid), "--", name}, args...)
	cmd := exec.CommandContext(ctx, nsenterBin, full...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env()...)
	// Killing nsenter would leave podman running: kill the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// Podman returns a command running podman with args (after the
// instance's global flags) in the instance's namespace.
func (p *Podman) Podman(ctx context.Context, args ...string) *exec.Cmd {
	var global []string
	if p.debug {
		global = append(global, "--log-level=debug")
	}
	return p.Command(ctx, p.Binary, append(global, args...)...)
}

// Output runs podman with args and returns its stdout; an error quotes
// its stderr.
func (p *Podman) Output(ctx context.Context, args ...string) (string, error) {
	cmd := p.Podman(ctx, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &CommandError{Args: args, Err: err, Stderr: stderr.String()}
	}
	return stdout.String(), nil
}

// CommandError is a podman command that failed, with what it said.
type CommandError struct {
	Args   []string
	Err    error
	Stderr string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("podman %s: %v: %s", strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

func (e *CommandError) Unwrap() error { return e.Err }
