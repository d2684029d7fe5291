package critest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Binaries this package uses unless told otherwise (Debian packages
// containerd and runc).
const (
	DebianContainerd = "/usr/bin/containerd"
	DebianRunc       = "/usr/bin/runc"
	// ShimBinary is the runc v2 shim's file name; the one beside the
	// containerd binary is used.
	ShimBinary = "containerd-shim-runc-v2"
)

// Namespace is the containerd namespace the CRI plugin keeps everything in.
const Namespace = "k8s.io"

// maxSocketPath is the longest unix socket path Linux accepts
// (sizeof(sun_path) - 1), less the ".ttrpc" containerd appends for its
// second socket.
const maxSocketPath = 107 - len(".ttrpc")

// Options configures [Start]. Only Dir is required; the zero value of every
// other field runs Debian's containerd with overlayfs.
type Options struct {
	// Binary is the containerd executable; empty means [DebianContainerd].
	// Its --version chooses the configuration format. The runc v2 shim is
	// the one in the same directory, which also goes first on containerd's
	// PATH (so a 2.x build never picks up Debian's 1.6 shim).
	Binary string
	// Dir holds everything of this instance: root, state, socket,
	// configuration, hosts.toml files and log. It must exist and be short
	// enough for a unix socket path (Dir/containerd.sock.ttrpc under 108
	// bytes): the t.TempDir() of a long test name may not be.
	Dir string
	// Registries are plain-HTTP registries (host:port) containerd is to
	// pull from; each gets a hosts.toml under the registry config_path.
	Registries []string
	// SandboxImage is the pod sandbox image reference, pinned in the
	// configuration (push one with [PushPauseImage]); it must live in one of
	// Registries. Empty leaves containerd's default, which is not
	// reachable from here: every RunPod would fail.
	SandboxImage string
	// Proxy, when set, declares a proxy snapshotter and makes it the CRI
	// snapshotter. Nil means containerd's own overlayfs.
	Proxy *ProxySnapshotter
	// Pull chooses how CRI pulls on 2.x; see [PullMode].
	Pull PullMode
	// Runc is the runc binary; empty means [DebianRunc].
	Runc string
	// Debug sets containerd's log level to debug.
	Debug bool
	// StartTimeout bounds how long Start waits for CRI to answer; zero
	// means a minute.
	StartTimeout time.Duration
}

// ProxySnapshotter is a snapshotter plugin containerd reaches over gRPC
// (containerd.services.snapshots.v1.Snapshots) on a unix socket. It need
// not listen yet when containerd starts (1.6.20 and 2.4.2 start, CRI
// ready, without it): containerd dials it on first use.
type ProxySnapshotter struct {
	// Name is the snapshotter's name in containerd and in CRI's
	// snapshotter setting, e.g. "ocifs".
	Name string
	// Address is the path of the unix socket it serves on.
	Address string
	// WithoutLabels leaves containerd's label passing at its default (off),
	// as a control: containerd then unpacks every layer itself into the
	// snapshotter, with no cri.* labels on Prepare.
	WithoutLabels bool
}

// PullMode is the path CRI pulls images along.
type PullMode int

const (
	// PullDefault is the version's own default: the client-side pull for
	// 1.x and 2.0, the transfer service for 2.1 and later.
	PullDefault PullMode = iota
	// PullLocal is the client-side pull (use_local_image_pull on 2.x).
	PullLocal
	// PullTransfer is the transfer service (2.1 and later only).
	PullTransfer
)

func (m PullMode) String() string {
	switch m {
	case PullDefault:
		return "default"
	case PullLocal:
		return "local"
	case PullTransfer:
		return "transfer"
	}
	return fmt.Sprintf("PullMode(%d)", int(m))
}

// Containerd is a running containerd started by [Start].
type Containerd struct {
	// Version is the binary's release.
	Version Version
	// Pull is the pull path in use (never PullDefault).
	Pull PullMode
	// Address is the path of the gRPC socket (CRI and containerd's API).
	Address string
	// Root and State are containerd's --root and --state.
	Root, State string
	// ConfigPath is the configuration file written for this instance.
	ConfigPath string
	// LogPath is containerd's stdout and stderr.
	LogPath string
	// Snapshotter is the snapshotter CRI uses ("overlayfs" or the proxy's name).
	Snapshotter string
	// CgroupParent is the cgroup every pod of a [Client] runs under, so
	// that Stop can find every process containerd started.
	CgroupParent string
	// Binary is the containerd executable, an absolute path.
	Binary string
	// Leftovers lists what Stop had to clean up by force (processes
	// killed, mounts unmounted); empty when containerd left nothing.
	Leftovers []string

	dir      string
	criReady bool // CRI answered once: Stop can remove pods through it
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error // set before exited is closed
	stopped  bool
}

// Start writes a configuration for the binary's version, starts containerd
// and waits until its CRI plugin answers and reports the runtime ready. On
// failure everything started is stopped again and the error quotes the end
// of containerd's log.
func Start(ctx context.Context, opts Options) (*Containerd, error) {
	in, c, err := prepare(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.ConfigPath, []byte(config(in)), 0o644); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	logf, err := os.Create(c.LogPath)
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	defer logf.Close() // the child has its own descriptor

	cmd := exec.Command(c.Binary, "--config", c.ConfigPath, "--root", c.Root, "--state", c.State, "--address", c.Address)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(in.shim)+string(os.PathListSeparator)+os.Getenv("PATH"))
	// Its own process group: a ^C meant for the test reaches containerd
	// only through Stop, which cleans up after it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd %s: %w", c.Binary, err)
	}
	c.cmd = cmd
	c.exited = make(chan struct{})
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()

	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	if err := c.waitReady(ctx, timeout); err != nil {
		stopErr := c.Stop()
		return nil, errors.Join(fmt.Errorf("start containerd %s (config %s): %w\n%s", c.Version, c.ConfigPath, err, c.LogTail(30)), stopErr)
	}
	c.criReady = true
	return c, nil
}

// prepare checks the options, finds the binaries and creates the
// directories.
func prepare(ctx context.Context, opts Options) (configInput, *Containerd, error) {
	if opts.Dir == "" {
		return configInput{}, nil, errors.New("start containerd: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
	}
	binary := opts.Binary
	if binary == "" {
		binary = DebianContainerd
	}
	binary, err = exec.LookPath(binary)
	if err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd: %w (apt-get install containerd, or make containerd2)", err)
	}
	if binary, err = filepath.Abs(binary); err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
	}
	v, err := BinaryVersion(ctx, binary)
	if err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
	}
	shim := filepath.Join(filepath.Dir(binary), ShimBinary)
	if _, err := os.Stat(shim); err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd %s: the runc shim must sit beside it: %w", binary, err)
	}
	runc := opts.Runc
	if runc == "" {
		runc = DebianRunc
	}
	if runc, err = exec.LookPath(runc); err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd: %w (apt-get install runc)", err)
	}
	pull := opts.Pull
	switch {
	case pull == PullDefault && v.AtLeast(2, 1):
		pull = PullTransfer
	case pull == PullDefault:
		pull = PullLocal
	case pull == PullTransfer && !v.AtLeast(2, 1):
		return configInput{}, nil, fmt.Errorf("start containerd %s: CRI pulls through the transfer service from 2.1 on", v)
	case pull != PullLocal && pull != PullTransfer:
		return configInput{}, nil, fmt.Errorf("start containerd: unknown %v", pull)
	}
	if p := opts.Proxy; p != nil {
		if p.Name == "" || p.Name == "overlayfs" || strings.ContainsAny(p.Name, "\"\\/ ") {
			return configInput{}, nil, fmt.Errorf("start containerd: proxy snapshotter name %q: want a plain name other than overlayfs", p.Name)
		}
		if !filepath.IsAbs(p.Address) {
			return configInput{}, nil, fmt.Errorf("start containerd: proxy snapshotter address %q: want an absolute socket path", p.Address)
		}
	}
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
	}
	c := &Containerd{
		Version:      v,
		Pull:         pull,
		Address:      filepath.Join(dir, "containerd.sock"),
		Root:         filepath.Join(dir, "root"),
		State:        filepath.Join(dir, "state"),
		ConfigPath:   filepath.Join(dir, "config.toml"),
		LogPath:      filepath.Join(dir, "containerd.log"),
		CgroupParent: "/ocifs-critest-" + hex.EncodeToString(suffix[:]),
		Binary:       binary,
		dir:          dir,
	}
	if len(c.Address) > maxSocketPath {
		return configInput{}, nil, fmt.Errorf("start containerd: socket path %s is %d bytes, over the %d a unix socket allows: use a shorter Dir", c.Address, len(c.Address), maxSocketPath)
	}
	in := configInput{
		version:      v,
		root:         c.Root,
		state:        c.State,
		address:      c.Address,
		hostsDir:     filepath.Join(dir, "certs.d"),
		optDir:       filepath.Join(dir, "opt"),
		cniDir:       filepath.Join(dir, "cni"),
		shim:         shim,
		runc:         runc,
		runcRoot:     filepath.Join(c.State, "runc"),
		sandboxImage: opts.SandboxImage,
		debug:        opts.Debug,
		proxy:        opts.Proxy,
		pull:         pull,
	}
	c.Snapshotter = in.snapshotter()
	for _, d := range []string{c.Root, c.State, in.hostsDir, in.optDir, in.cniDir} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
		}
	}
	for _, host := range opts.Registries {
		if host == "" || strings.ContainsAny(host, "/\\ ") {
			return configInput{}, nil, fmt.Errorf("start containerd: registry %q: want host:port", host)
		}
		hd := filepath.Join(in.hostsDir, host)
		if err := os.MkdirAll(hd, 0o755); err != nil {
			return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
		}
		if err := os.WriteFile(filepath.Join(hd, "hosts.toml"), []byte(hostsTOML(host)), 0o644); err != nil {
			return configInput{}, nil, fmt.Errorf("start containerd: %w", err)
		}
	}
	return in, c, nil
}

// waitReady polls CRI's Version and Status with backoff until the runtime
// is ready, containerd exits, ctx ends or timeout passes.
func (c *Containerd) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl, err := c.Dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	delay := 5 * time.Millisecond
	for {
		err := c.ready(ctx, cl)
		if err == nil {
			return nil
		}
		timer := time.NewTimer(delay)
		select {
		case <-c.exited:
			timer.Stop()
			return fmt.Errorf("containerd exited before CRI answered: %v", c.waitErr)
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("wait for CRI on %s: %w (last: %v)", c.Address, ctx.Err(), err)
		case <-timer.C:
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

func (c *Containerd) ready(ctx context.Context, cl *Client) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cl.Runtime.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		return err
	}
	st, err := cl.Runtime.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return err
	}
	for _, cond := range st.GetStatus().GetConditions() {
		if cond.Type == runtimeapi.RuntimeReady && !cond.Status {
			return fmt.Errorf("runtime not ready: %s: %s", cond.Reason, cond.Message)
		}
	}
	return nil
}

// LogTail returns the last n lines of containerd's log, for error messages.
func (c *Containerd) LogTail(n int) string {
	b, err := os.ReadFile(c.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("last %d lines of %s:\n%s", len(lines), c.LogPath, bytes.Join(lines, []byte("\n")))
}

// Running reports whether the containerd process is still alive.
func (c *Containerd) Running() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}
