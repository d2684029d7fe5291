package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/snapshotter/critest"
	"github.com/ocifs/ocifs/fs/store/podmantest"
)

// The container-start methods (issues 14 and 15): the time from the pull
// asked for to the container's program having exited with its output
// (CRI: PullImage on containerd 2.x to the exit seen in the container's
// log) or to its first output (podman run), from a cold start every
// repetition: a new containerd or podman root, a new snapshotter or store
// with an empty cache, the page cache dropped.
const (
	mCRIOverlay = "cri-overlayfs" // containerd 2.x, its own overlayfs snapshotter (plain gzip)
	mCRIStargz  = "cri-stargz"    // containerd 2.x + stargz-snapshotter (eStargz image)
	mCRISoci    = "cri-soci"      // containerd 2.x + SOCI snapshotter (plain gzip + its index)
	mCRIOcifs   = "cri-ocifs"     // containerd 2.x + `ocifs snapshotter` (gzip + ocifs index), no start-up profile
	// containerd 2.x + `ocifs snapshotter` replaying a start-up profile of
	// the container's program, recorded (`ocifs profile record --push`)
	// and pushed beside the image before the first repetition
	mCRIOcifsProf = "cri-ocifs-profile"
	// containerd 2.x + `ocifs snapshotter` on the eStargz image cri-stargz
	// starts, no start-up profile: the two snapshotters on the same bytes
	mCRIOcifsEstargz = "cri-ocifs-estargz"
	// containerd 2.x + `ocifs snapshotter` on the plain gzip image, no
	// index anywhere: each layer streamed once in order, verified and
	// indexed as it goes (stream mode), against cri-overlayfs's download
	// and unpack of the same image
	mCRIOcifsStream = "cri-ocifs-stream"
	// containerd 2.x, its own overlayfs snapshotter, the image pulled
	// before the clock starts: what a start costs here with no layer byte
	// to fetch (PullImage finds the image, the sandbox's and container's
	// set-up, runc, the exit seen), the floor every method shares
	mCRIWarm     = "cri-warm"
	mPodmanPull  = "podman-pull"   // podman run with podman's own pull (plain gzip)
	mPodmanStarz = "podman-stargz" // podman run through stargz-store as additional layer store (eStargz)
	wContainer   = "container"     // the workload of the container-start methods
)

var containerMethods = []string{mCRIWarm, mCRIOverlay, mCRIStargz, mCRISoci, mCRIOcifs, mCRIOcifsProf, mCRIOcifsEstargz, mCRIOcifsStream, mPodmanPull, mPodmanStarz}

// containerFormat is the one image format each container-start method is
// measured on: what that system is built to start lazily (or, for the
// full pulls, plain gzip).
var containerFormat = map[string]string{
	mCRIWarm: fmtGzip, mCRIOverlay: fmtGzip, mCRIStargz: fmtEstargz, mCRISoci: fmtGzip, mCRIOcifs: fmtGzipIndex, mCRIOcifsProf: fmtGzipIndex,
	mCRIOcifsEstargz: fmtEstargz, mCRIOcifsStream: fmtGzip,
	mPodmanPull: fmtGzip, mPodmanStarz: fmtEstargz,
}

func isContainerMethod(m string) bool {
	for _, c := range containerMethods {
		if c == m {
			return true
		}
	}
	return false
}

// DefaultOcifsSnapshotter is the command line of the cri-ocifs method's
// snapshotter; {ocifs}, {address}, {root} and {cache} are replaced.
const DefaultOcifsSnapshotter = "{ocifs} snapshotter --address {address} --root {root} --cache-dir {cache}"

// snapshotterCmd is the command line of a proxy snapshotter for method m,
// or nil for containerd's own overlayfs; an error says why the method is
// not available here.
func (r *runner) snapshotterCmd(ctx context.Context, m string) ([]string, error) {
	peer := func(name string, args ...string) ([]string, error) {
		bin := filepath.Join(r.peers, name)
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("not available: %s is not built (make peers)", bin)
		}
		return append([]string{bin}, args...), nil
	}
	switch m {
	case mCRIStargz:
		return peer("containerd-stargz-grpc", "--address", "{address}", "--root", "{root}")
	case mCRISoci:
		if _, err := peer("soci-convert"); err != nil {
			return nil, err
		}
		return peer("soci-snapshotter-grpc", "--address", "{address}", "--root", "{root}")
	case mCRIOcifs, mCRIOcifsProf, mCRIOcifsEstargz, mCRIOcifsStream:
		// the command and its subcommands (the words before the first
		// flag) must answer --help: an ocifs without the snapshotter
		// command makes the method "not available"
		argv := strings.Fields(strings.ReplaceAll(r.ocifsSnapshotter, "{ocifs}", r.ocifs))
		if len(argv) == 0 {
			return nil, errors.New("not available: empty --ocifs-snapshotter")
		}
		n := 1
		for n < len(argv) && !strings.HasPrefix(argv[n], "-") {
			n++
		}
		help := append(slices.Clone(argv[1:n]), "--help")
		out, err := exec.CommandContext(ctx, argv[0], help...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("not available: %s %s: %v: %s", argv[0], strings.Join(help, " "), err, lastLines(string(out), 2))
		}
		// The registry may hold a profile of the image (recorded by the
		// profile methods): cri-ocifs measures the snapshotter without
		// one, cri-ocifs-profile with it. A snapshotter from before
		// profiles replays none anyway.
		hasProfile := strings.Contains(string(out), "--profile")
		switch {
		case m == mCRIOcifsProf && !hasProfile:
			return nil, fmt.Errorf("not available: %s %s lists no --profile", argv[0], strings.Join(help, " "))
		case m == mCRIOcifsProf:
			argv = append(argv, "--profile=auto")
		case hasProfile:
			argv = append(argv, "--profile=none")
		}
		return argv, nil
	}
	return nil, nil
}

// available says whether method m can run here, and if not why.
func (r *runner) available(ctx context.Context, m string) error {
	switch m {
	case mStargzStore:
		if _, err := os.Stat(filepath.Join(r.peers, "stargz-store")); err != nil {
			return fmt.Errorf("not available: %s is not built (make peers)", filepath.Join(r.peers, "stargz-store"))
		}
		return nil
	case mPodmanPull, mPodmanStarz:
		if _, err := exec.LookPath(podmantest.DebianPodman); err != nil {
			return fmt.Errorf("not available: podman (apt-get install --no-install-recommends podman): %v", err)
		}
		if m == mPodmanStarz {
			if _, err := os.Stat(filepath.Join(r.peers, "stargz-store")); err != nil {
				return fmt.Errorf("not available: %s is not built (make peers)", filepath.Join(r.peers, "stargz-store"))
			}
		}
		return nil
	}
	if _, err := os.Stat(filepath.Join(r.containerd2, "containerd")); err != nil {
		return fmt.Errorf("not available: containerd 2.x is not in %s (make containerd2)", r.containerd2)
	}
	_, err := r.snapshotterCmd(ctx, m)
	return err
}

// daemon is a peer's background process with its log.
type daemon struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func startDaemon(argv []string, logPath string, env ...string) (*daemon, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	d := &daemon{cmd: exec.Command(argv[0], argv[1:]...), log: logPath, exited: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	return d, nil
}

// waitFor polls ok until it is true, the daemon exits or timeout passes.
func (d *daemon) waitFor(ctx context.Context, what string, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		select {
		case <-d.exited:
			return fmt.Errorf("%s exited before %s: %s", filepath.Base(d.cmd.Path), what, d.tail(5))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s in %s: %s", filepath.Base(d.cmd.Path), what, timeout, d.tail(5))
		}
	}
	return nil
}

func (d *daemon) tail(n int) string {
	b, _ := os.ReadFile(d.log)
	return lastLines(string(b), n)
}

// stop sends sig and waits; a daemon still there after 20 s is killed.
func (d *daemon) stop(sig syscall.Signal) {
	d.cmd.Process.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
}

// unmountUnder lazily unmounts every mount under dir (a peer that died
// may leave its FUSE mounts).
func unmountUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if f := strings.Fields(lines[i]); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			abortFUSE(f[4])
			syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}

// container measures one repetition of a container-start method.
func (r *runner) container(ctx context.Context, s *sample, b *builtImage, spec imageSpec) error {
	// podman's directories are not under /var or /run (the bench's work
	// directory is): podmantest lays overlays over those
	parent := r.work
	if strings.HasPrefix(s.Method, "podman-") {
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "obc")
	if err != nil {
		return err
	}
	defer func() {
		unmountUnder(dir)
		os.RemoveAll(dir)
	}()
	if s.Method == mPodmanPull || s.Method == mPodmanStarz {
		return r.podmanRun(ctx, s, b, spec, dir)
	}
	return r.criRun(ctx, s, b, spec, dir)
}

func (r *runner) criRun(ctx context.Context, s *sample, b *builtImage, spec imageSpec, dir string) error {
	argv, err := r.snapshotterCmd(ctx, s.Method)
	if err != nil {
		return err
	}
	opts := critest.Options{
		Binary:       filepath.Join(r.containerd2, "containerd"),
		Dir:          filepath.Join(dir, "ctrd"),
		Registries:   []string{r.net.Host()},
		SandboxImage: r.pause,
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return err
	}
	var sn *daemon
	if argv != nil {
		sock := filepath.Join(dir, "sn.sock")
		repl := strings.NewReplacer("{address}", sock, "{root}", filepath.Join(dir, "sn-root"), "{cache}", filepath.Join(dir, "sn-cache"))
		for i := range argv {
			argv[i] = repl.Replace(argv[i])
		}
		if s.Method == mCRISoci {
			// SOCI hands layers without a zTOC (under its 10 MiB minimum)
			// back through containerd's API, at /run/containerd's socket
			// unless told: this containerd's, as a deployment would set it
			// (else each such layer waits 10 s for a dial timeout)
			cfg := filepath.Join(dir, "soci.toml")
			toml := fmt.Sprintf("[content_store]\ncontainerd_address = %q\n", filepath.Join(opts.Dir, "containerd.sock"))
			if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
				return err
			}
			argv = append(argv, "--config", cfg)
		}
		if sn, err = startDaemon(argv, filepath.Join(r.work, s.Method+".log")); err != nil {
			return err
		}
		defer sn.stop(syscall.SIGINT) // SIGINT: stargz and SOCI unmount their layers
		if err := sn.waitFor(ctx, "socket "+sock, time.Minute, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
			return err
		}
		name := strings.TrimPrefix(s.Method, "cri-")
		if strings.HasPrefix(s.Method, mCRIOcifs+"-") {
			name = "ocifs"
		}
		opts.Proxy = &critest.ProxySnapshotter{Name: name, Address: sock}
	}
	c, err := critest.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Stop()
	cl, err := c.Dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	pod, err := cl.RunPod(ctx, "bench")
	if err != nil {
		return err
	}
	ref := b.ref(r.net.Host())
	if s.Method == mCRISoci {
		if ref = r.sociRefs[b]; ref == "" {
			return fmt.Errorf("no SOCI index was built for %s", b.repo())
		}
	}
	if s.Method == mCRIWarm {
		if _, err := cl.PullImage(ctx, ref, nil); err != nil {
			return fmt.Errorf("pull before the clock starts: %w", err)
		}
	}
	if err := dropCaches(); err != nil {
		return err
	}
	c0 := r.net.proxy.counters()
	res, err := cl.Run(ctx, pod, critest.ContainerSpec{Name: "bench", Image: ref, Command: spec.Container}, nil)
	if err != nil {
		if sn != nil {
			err = fmt.Errorf("%w (snapshotter log: %s)", err, sn.tail(3))
		}
		return err
	}
	cnt := r.net.proxy.counters().sub(c0)
	t := res.Timings
	s.ReadyS, s.DoneS = t.Pull().Seconds(), t.Total().Seconds()
	s.Phases = &criPhases{Pulled: t.Pulled.Sub(t.PullStart).Seconds(), Created: t.Created.Sub(t.PullStart).Seconds(),
		Started: t.Started.Sub(t.PullStart).Seconds(), Exited: t.Exited.Sub(t.PullStart).Seconds()}
	s.Bytes, s.Requests = cnt.BytesDown, cnt.Requests
	out := string(res.Output.Stdout) + string(res.Output.Stderr)
	if res.ExitCode != 0 || !strings.Contains(out, spec.Expect) {
		return fmt.Errorf("container exited %d with output %q (want %q in it)", res.ExitCode, lastLines(out, 3), spec.Expect)
	}
	if sn != nil {
		s.PeakRSSKB, s.DaemonCPU = procStats(sn.cmd.Process.Pid)
		keepLog(sn.log, s)
	}
	return nil
}

// criPhases are the moments of a CRI container start, in seconds from
// PullImage sent.
type criPhases struct {
	Pulled  float64 `json:"pulled"`
	Created float64 `json:"created"`
	Started float64 `json:"started"`
	Exited  float64 `json:"exited"`
}

// keepLog copies a snapshotter's or store's log into $OCIFS_BENCH_LOGS,
// when set, named after the sample: the work directory holding it is
// removed at the end of the run.
func keepLog(path string, s *sample) {
	dir := os.Getenv("OCIFS_BENCH_LOGS")
	if dir == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s-%s-%d.log", s.Image, s.Format, s.Method, s.Rep)), b, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: keep log %s: %v\n", path, err)
	}
}

func (r *runner) podmanRun(ctx context.Context, s *sample, b *builtImage, spec imageSpec, dir string) error {
	opts := podmantest.Options{Dir: filepath.Join(dir, "p"), Registries: []string{r.net.Host()}}
	if len(opts.Dir) > 42 {
		return fmt.Errorf("podman directory %s is over 42 bytes (podmantest.Options.Dir)", opts.Dir)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return err
	}
	var st *daemon
	if s.Method == mPodmanStarz {
		mnt := filepath.Join(dir, "store")
		var err error
		st, err = startDaemon([]string{filepath.Join(r.peers, "stargz-store"), "--root", filepath.Join(dir, "store-root"), mnt},
			filepath.Join(r.work, s.Method+".log"))
		if err != nil {
			return err
		}
		defer st.stop(syscall.SIGINT)
		// mounted before podman's namespace is made: the host's mounts
		// do not propagate into it later
		if err := st.waitFor(ctx, "mount on "+mnt, time.Minute, func() bool { return isFUSEMount(mnt) }); err != nil {
			return err
		}
		opts.AdditionalLayerStore = mnt
	}
	p, err := podmantest.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer p.Stop()
	if err := dropCaches(); err != nil {
		return err
	}
	c0 := r.net.proxy.counters()
	res, err := p.Run(ctx, podmantest.RunSpec{Image: b.ref(r.net.Host()), Command: spec.Container})
	if err != nil {
		return err
	}
	cnt := r.net.proxy.counters().sub(c0)
	s.ReadyS, s.DoneS = res.Timings.ToFirstOutput().Seconds(), res.Timings.Done.Sub(res.Timings.Start).Seconds()
	s.Bytes, s.Requests = cnt.BytesDown, cnt.Requests
	if res.ExitCode != 0 || !strings.Contains(string(res.Stdout), spec.Expect) {
		return fmt.Errorf("podman run exited %d with output %q (want %q in it): %s", res.ExitCode, res.Stdout, spec.Expect, lastLines(string(res.Stderr), 3))
	}
	if st != nil {
		s.PeakRSSKB, s.DaemonCPU = procStats(st.cmd.Process.Pid)
	}
	return nil
}

// isFUSEMount reports whether p is the mount point of a FUSE file system.
func isFUSEMount(p string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		fields := strings.Fields(l)
		if len(fields) > 4 && fields[4] == p {
			if _, after, ok := strings.Cut(l, " - "); ok && strings.HasPrefix(after, "fuse") {
				return true
			}
		}
	}
	return false
}

// writeContainerStart writes the container-start table of each profile:
// the CRI methods (PullImage sent → program exited, output read) and the
// podman methods (podman run started → first output), each with its
// ratio to the best peer's median in its group (below 1: faster).
func writeContainerStart(b *strings.Builder, res *Result, ok map[cellKey][]sample, errs map[cellKey]string) {
	any := false
	for k := range ok {
		any = any || k.workload == wContainer
	}
	for k := range errs {
		any = any || k.workload == wContainer
	}
	if !any {
		return
	}
	b.WriteString("\n## Container start\n\nCRI (containerd 2.x, a new containerd and snapshotter with empty roots each repetition): time from PullImage sent to the program's exit seen with its output in the container's log; the next column is PullImage alone. podman (a new root each repetition): time from `podman run` started to the container's first output; the next column is podman run's whole run. Bytes are what the proxy counted by then. `× best peer`: the median over the fastest median of the peers in the same group (stargz-snapshotter and SOCI for CRI, stargz-store for podman). cri-warm is containerd's overlayfs with the image pulled before the clock starts: the part of every CRI start that fetches no layer byte.\n")
	done := func(s sample) float64 { return s.DoneS }
	ready := func(s sample) float64 { return s.ReadyS }
	for _, p := range res.Profiles {
		fmt.Fprintf(b, "\n### Profile %s\n\n| image | method | format | to output | PullImage (CRI) · whole run (podman) | bytes | × best peer |\n|---|---|---|---|---|---|---|\n", p.Name)
		for _, im := range res.Options.Images {
			for _, group := range [][]string{{mCRIWarm, mCRIOverlay, mCRIStargz, mCRISoci, mCRIOcifs, mCRIOcifsProf, mCRIOcifsEstargz, mCRIOcifsStream}, {mPodmanPull, mPodmanStarz}} {
				peers := map[string]bool{mCRIStargz: true, mCRISoci: true, mPodmanStarz: true}
				best := math.NaN()
				for _, m := range group {
					k := cellKey{p.Name, im, containerFormat[m], m, wContainer}
					if !peers[m] || len(ok[k]) == 0 {
						continue
					}
					f := figure(ok[k], containerFigure(m, done, ready))
					if math.IsNaN(best) || f.med < best {
						best = f.med
					}
				}
				for _, m := range group {
					k := cellKey{p.Name, im, containerFormat[m], m, wContainer}
					if len(ok[k]) == 0 {
						if e := errs[k]; e != "" {
							first, _, _ := strings.Cut(e, "\n")
							fmt.Fprintf(b, "| %s | %s | %s | %s | | | |\n", im, m, containerFormat[m], strings.ReplaceAll(first, "|", "/"))
						}
						continue
					}
					t := figure(ok[k], containerFigure(m, done, ready))
					pull := figure(ok[k], containerFigure(m, ready, done))
					by := figure(ok[k], func(s sample) float64 { return float64(s.Bytes) })
					r := ""
					if !math.IsNaN(best) {
						r = fmt.Sprintf("%.2f×", t.med/best)
					}
					fmt.Fprintf(b, "| %s | %s | %s | %s [%s–%s] | %s | %s | %s |\n", im, m, containerFormat[m], secs(t.med), secs(t.min), secs(t.max), secs(pull.med), mb(by.med), r)
				}
			}
		}
	}
}

// containerFigure is the time to output of a container-start sample: DoneS
// for CRI (the exit seen), ReadyS for podman (the first output); other
// gives the second column (PullImage for CRI, the whole run for podman).
func containerFigure(m string, cri, podman func(sample) float64) func(sample) float64 {
	if strings.HasPrefix(m, "podman-") {
		return podman
	}
	return cri
}

// sociIndex builds the SOCI index of b with soci-convert (SOCI's v2
// layout: an image index holding the image, annotated, and its SOCI
// index), pushes it as <repo>-soci:1 and returns its reference through
// the proxy. Not timed: like `ocifs index build --push`, done once.
func (r *runner) sociIndex(ctx context.Context, c *cacheDir, b *builtImage) (string, error) {
	layout, err := os.MkdirTemp(r.work, "soci-layout")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(layout)
	dir := filepath.Join(layout, "blobs", "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	put := func(d digest.Digest, data []byte, from string) error {
		dst := filepath.Join(dir, d.Encoded())
		if from == "" {
			return os.WriteFile(dst, data, 0o644)
		}
		if os.Link(from, dst) == nil {
			return nil
		}
		in, err := os.ReadFile(from)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, in, 0o644)
	}
	if err := put(b.manifestDigest(), b.Manifest, ""); err != nil {
		return "", err
	}
	if err := put(digest.FromBytes(b.Config), b.Config, ""); err != nil {
		return "", err
	}
	for _, l := range b.Layers {
		if err := put(l.Digest, nil, blobFile(c, l.Digest)); err != nil {
			return "", err
		}
	}
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: b.manifestDigest(), Size: int64(len(b.Manifest))}}})
	if err := os.WriteFile(filepath.Join(layout, "index.json"), idx, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(layout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return "", err
	}
	repoTag := b.repo() + "-soci:1"
	if _, _, _, err := r.run(ctx, filepath.Join(r.peers, "soci-convert"), layout, r.net.PushHost()+"/"+repoTag); err != nil {
		return "", err
	}
	return r.net.Host() + "/" + repoTag, nil
}
