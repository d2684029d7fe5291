package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ocifs/ocifs/fs/mountinfo"
)

// Methods and workloads, as the tables name them.
const (
	mLazy       = "ocifs-lazy"    // ocifs mount on an empty cache
	mDemand     = "ocifs-demand"  // the same with --prefetch=none: what the workload alone fetches (first file and start-up, gzip+index and eStargz)
	mWarm       = "ocifs-warm"    // ocifs mount on a cache the background fetch completed
	mProfile    = "ocifs-profile" // ocifs mount on an empty cache, with a start-up profile recorded and pushed beside the image
	mPull       = "ocifs-pull"    // ocifs pull, then overlayfs over the unpacked tree
	mContainerd = "containerd"    // ctr image pull into the overlayfs snapshotter, then its snapshot mounted
	wFirst      = "first-file"    // read /etc/os-release
	wStartup    = "start-up"      // chroot and run the image's program
	wWalk       = "walk"          // lstat every entry
	wReadAll    = "read-all"      // read every regular file once
)

var (
	allMethods   = []string{mLazy, mDemand, mProfile, mStargzStore, mWarm, mPull, mContainerd}
	allWorkloads = []string{wFirst, wStartup, wWalk, wReadAll}
)

// sample is one measured cell repetition.
type sample struct {
	Profile  string `json:"profile"`
	Image    string `json:"image"`
	Format   string `json:"format"`
	Method   string `json:"method"`
	Workload string `json:"workload"`
	Rep      int    `json:"rep"`
	// ReadyS: from the start to the mount answering (lazy) or to the pulled
	// tree mounted (pull methods). DoneS: to the workload finished.
	ReadyS float64 `json:"ready_s"`
	DoneS  float64 `json:"done_s"`
	// Bytes and requests from the registry as the proxy counted them, from
	// the start until the workload finished (HTTP headers included).
	Bytes    int64 `json:"bytes"`
	Requests int64 `json:"requests"`
	// What ocifs stats said (lazy methods only).
	OcifsBytes    int64 `json:"ocifs_bytes_fetched,omitempty"`
	OcifsRequests int64 `json:"ocifs_requests,omitempty"`
	// OcifsServed: bytes the daemon served to FUSE reads (what the kernel
	// asked for the workload); OcifsLayerBytes: bytes of layer blobs
	// fetched (indexes, manifests and configs not counted).
	OcifsServed     int64 `json:"ocifs_bytes_served,omitempty"`
	OcifsLayerBytes int64 `json:"ocifs_layer_bytes_fetched,omitempty"`
	// What the start-up profile's replay had done when the workload
	// finished (ocifs-profile): the source it came from, the uncompressed
	// bytes it read, and how long it took (0 while still running).
	ProfileSource string  `json:"profile_source,omitempty"`
	ProfileBytes  int64   `json:"profile_bytes,omitempty"`
	ProfileS      float64 `json:"profile_s,omitempty"`
	// PeakRSSKB: VmHWM of the ocifs daemon or containerd, or the max RSS
	// of `ocifs pull`. CPUS: user+system seconds of the daemon (from the
	// start), the commands run (mount, pull, ctr) and the workload itself.
	// Phases of a CRI container start, in seconds from PullImage sent:
	// PullImage returned, CreateContainer and StartContainer returned,
	// and the exit containerd recorded (cri-* methods only).
	Phases    *criPhases `json:"cri_phases,omitempty"`
	PeakRSSKB int64      `json:"peak_rss_kb"`
	CPUS      float64    `json:"cpu_s"`
	DaemonCPU float64    `json:"daemon_cpu_s"`
	Err       string     `json:"error,omitempty"`
}

// runner holds what every measurement needs.
type runner struct {
	ocifs string
	work  string
	net   *network
	log   io.Writer
	// coldWorkloads: drop the page cache before each pull-method workload.
	coldWorkloads bool
	// The container-start methods: the peers' binaries, containerd 2.x's
	// directory, the ocifs snapshotter's command line and the pod sandbox
	// image pushed for CRI.
	peers, containerd2, ocifsSnapshotter, pause string
	// sociRefs are the SOCI-converted images of the cri-soci method.
	sociRefs map[*builtImage]string
	// profiled is, per image, the command whose start-up profile is the
	// newest in the registry (the one a mount replays).
	profiled map[*builtImage]string
}

func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// procStats reads VmHWM (KiB) and utime+stime (seconds) of pid.
func procStats(pid int) (hwmKB int64, cpu float64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				f := strings.Fields(l)
				if len(f) >= 2 {
					hwmKB, _ = strconv.ParseInt(f[1], 10, 64)
				}
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 13 {
				u, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				cpu = (u + st) / 100 // USER_HZ
			}
		}
	}
	return hwmKB, cpu
}

func rusageCPU(ps *os.ProcessState) float64 {
	if ps == nil {
		return 0
	}
	return ps.UserTime().Seconds() + ps.SystemTime().Seconds()
}

// run runs a command, returning its output and CPU seconds.
func (r *runner) run(ctx context.Context, name string, args ...string) (string, float64, *os.ProcessState, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(lastLines(out.String(), 5)))
	}
	return out.String(), rusageCPU(cmd.ProcessState), cmd.ProcessState, err
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// workload runs w on the tree at root and returns its CPU seconds.
func workload(ctx context.Context, w string, root string, startup []string) (float64, error) {
	switch w {
	case wFirst:
		return threadCPU(func() error {
			b, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
			if err == nil && len(b) == 0 {
				err = errors.New("empty /etc/os-release")
			}
			return err
		})
	case wStartup:
		// Through chroot(8), not SysProcAttr.Chroot: Go forks with vfork and
		// holds this thread (and with it any stop-the-world, so the proxy
		// in this process) until the child's execve returns, and an execve
		// of a binary on the mount waits for the proxy to deliver it.
		cmd := exec.CommandContext(ctx, "/usr/sbin/chroot", append([]string{root}, startup...)...)
		cmd.Dir = "/"
		cmd.Env = startupEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("start-up %v: %v: %s", startup, err, lastLines(string(out), 3))
		}
		return rusageCPU(cmd.ProcessState), nil
	case wWalk:
		return threadCPU(func() error {
			return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				_, err = os.Lstat(p)
				return err
			})
		})
	case wReadAll:
		buf := make([]byte, 1<<20)
		return threadCPU(func() error {
			return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return err
				}
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
				return err
			})
		})
	}
	return 0, fmt.Errorf("unknown workload %q", w)
}

// startupEnv is the environment of a start-up chrooted into an image (no
// /proc there: Go's trimmed binary needs GOROOT to find itself).
var startupEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "GOROOT=/usr/local/go", "GOTOOLCHAIN=local", "GOTELEMETRY=off"}

// threadCPU runs f on one locked OS thread and returns its CPU seconds.
func threadCPU(f func() error) (float64, error) {
	type res struct {
		cpu float64
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var a, b syscall.Rusage
		syscall.Getrusage(1, &a) // RUSAGE_THREAD
		err := f()
		syscall.Getrusage(1, &b)
		cpu := float64(b.Utime.Nano()+b.Stime.Nano()-a.Utime.Nano()-a.Stime.Nano()) / 1e9
		ch <- res{cpu, err}
	}()
	r := <-ch
	return r.cpu, r.err
}

var pidRE = regexp.MustCompile(`\(pid (\d+)`)

// mountOcifs runs `ocifs mount` and returns the daemon pid and the CPU of
// the mount command.
//
// OCIFS_BENCH_MOUNT_FLAGS in the environment adds flags to every ocifs
// mount (for experiments: "--prefetch=none", "--no-passthrough").
func (r *runner) mountOcifs(ctx context.Context, cache, ref, mnt string, extra ...string) (int, float64, error) {
	args := append([]string{"--cache-dir", cache, "mount"}, extra...)
	args = append(args, strings.Fields(os.Getenv("OCIFS_BENCH_MOUNT_FLAGS"))...)
	out, cpu, _, err := r.run(ctx, r.ocifs, append(args, ref, mnt)...)
	if err != nil {
		return 0, cpu, err
	}
	m := pidRE.FindStringSubmatch(out)
	if m == nil {
		return 0, cpu, fmt.Errorf("ocifs mount printed no pid: %q", out)
	}
	pid, _ := strconv.Atoi(m[1])
	return pid, cpu, nil
}

type ocifsStats struct {
	BytesFetched   int64 `json:"bytes_fetched"`
	Requests       int64 `json:"requests"`
	BytesServed    int64 `json:"bytes_served"`
	VerifyFailures int64 `json:"verify_failures"`
	Profile        *struct {
		Source   string `json:"source"`
		Bytes    int64  `json:"bytes"`
		Done     bool   `json:"done"`
		Duration string `json:"duration"`
	} `json:"profile"`
	Layers []struct {
		Mode         string `json:"mode"`
		BytesFetched int64  `json:"bytes_fetched"`
		Complete     bool   `json:"complete"`
		Verified     bool   `json:"verified"`
		Settled      bool   `json:"settled"`
	} `json:"layers"`
}

func (r *runner) stats(ctx context.Context, cache, mnt string) (ocifsStats, error) {
	var s ocifsStats
	out, _, _, err := r.run(ctx, r.ocifs, "--cache-dir", cache, "stats", "--json", mnt)
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal([]byte(out), &s)
}

func (r *runner) unmount(mnt, cache string) {
	if cache != "" {
		if _, _, _, err := r.run(context.Background(), r.ocifs, "--cache-dir", cache, "unmount", mnt); err == nil {
			return
		}
	}
	exec.Command("umount", mnt).Run()
	if isMounted(mnt) {
		exec.Command("umount", "-l", mnt).Run()
	}
}

func isMounted(p string) bool {
	ms, err := mountinfo.Read(mountinfo.Self)
	if err != nil {
		return false
	}
	_, ok := mountinfo.Topmost(ms, p)
	return ok
}

// recordProfile records a start-up profile of b (what argv reads, run
// chrooted into the image) with `ocifs profile record --push --runs 3`, on a
// throwaway cache, so that the mounts of the profile methods find it in
// the registry. A mount replays the newest profile, so it is recorded
// again only when the newest is of another command: the chroot start-up
// (ocifs-profile) and the container's program (cri-ocifs-profile) differ.
func (r *runner) recordProfile(ctx context.Context, b *builtImage, argv []string) error {
	key := strings.Join(argv, "\x00")
	if r.profiled[b] == key {
		return nil
	}
	cache := filepath.Join(r.work, "profile-cache")
	defer os.RemoveAll(cache)
	// --no-chroot and chroot(8) from here: the command runs with
	// startupEnv, as the start-up workload does, not with the image
	// config's environment only
	script := `exec /usr/bin/env -i "$@" /usr/sbin/chroot "$OCIFS_ROOT" ` + shellQuote(argv)
	// Three runs: a Go program's reads vary from run to run (its runtime
	// starts threads that fault pages of its binary in any order).
	args := append([]string{"--cache-dir", cache, "profile", "record", "--push", "--runs", "3", "--no-chroot", b.ref(r.net.Host()), "--",
		"/bin/sh", "-c", script, "sh"}, startupEnv...)
	if _, _, _, err := r.run(ctx, r.ocifs, args...); err != nil {
		return err
	}
	r.profiled[b] = key
	return nil
}

// lazy measures one workload on an ocifs mount with the cache at cache
// (empty for mLazy, complete for mWarm).
func (r *runner) lazy(ctx context.Context, s *sample, b *builtImage, spec imageSpec, cache string) error {
	mnt := filepath.Join(r.work, "mnt")
	os.MkdirAll(mnt, 0o755)
	if err := dropCaches(); err != nil {
		return err
	}
	c0 := r.net.proxy.counters()
	t0 := time.Now()
	var extra []string
	if s.Method == mDemand {
		extra = append(extra, "--prefetch=none")
	}
	if s.Method != mProfile {
		// Profiles are measured by their own method: the others show
		// ocifs without one, although the registry may hold one.
		extra = append(extra, "--profile=none")
	}
	pid, cpu, err := r.mountOcifs(ctx, cache, b.ref(r.net.Host()), mnt, extra...)
	if err != nil {
		return err
	}
	defer r.unmount(mnt, cache)
	s.ReadyS = time.Since(t0).Seconds()
	wcpu, werr := watchedWorkload(ctx, s.Workload, mnt, mnt, spec.Startup)
	s.DoneS = time.Since(t0).Seconds()
	c := r.net.proxy.counters().sub(c0)
	s.Bytes, s.Requests = c.BytesDown, c.Requests
	s.PeakRSSKB, s.DaemonCPU = procStats(pid)
	s.CPUS = cpu + wcpu + s.DaemonCPU
	if st, err := r.stats(ctx, cache, mnt); err == nil {
		s.OcifsBytes, s.OcifsRequests, s.OcifsServed = st.BytesFetched, st.Requests, st.BytesServed
		for _, l := range st.Layers {
			s.OcifsLayerBytes += l.BytesFetched
		}
		if p := st.Profile; p != nil {
			s.ProfileSource, s.ProfileBytes = p.Source, p.Bytes
			if d, err := time.ParseDuration(p.Duration); err == nil && p.Done {
				s.ProfileS = d.Seconds()
			}
		}
	}
	return werr
}

// watchedWorkload runs workload w on the tree at root; past
// workloadTimeout it aborts the FUSE connection mounted at fuse, so that a
// hung mount fails its cell instead of the run.
func watchedWorkload(ctx context.Context, w, root, fuse string, startup []string) (float64, error) {
	watchdog := time.AfterFunc(workloadTimeout, func() { abortFUSE(fuse) })
	cpu, err := workload(ctx, w, root, startup)
	if !watchdog.Stop() {
		err = fmt.Errorf("%s did not finish in %v: aborted the FUSE connection (%v)", w, workloadTimeout, err)
	}
	return cpu, err
}

// workloadTimeout bounds one workload on an ocifs mount; past it the FUSE
// connection is aborted so that a hung mount fails its cell instead of
// the run.
const workloadTimeout = 5 * time.Minute

// abortFUSE aborts the FUSE connection mounted at mnt
// (/sys/fs/fuse/connections/<minor>/abort).
func abortFUSE(mnt string) {
	ms, err := mountinfo.Read(mountinfo.Self)
	if err != nil {
		return
	}
	for _, m := range ms {
		if m.Mountpoint == mnt {
			if _, minor, ok := strings.Cut(m.Dev, ":"); ok {
				os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0o200)
			}
		}
	}
}

// warmCache mounts b on a fresh cache and waits until every layer is
// complete, verified and settled (the background fetch, its checks and the
// extraction of its files), then unmounts.
func (r *runner) warmCache(ctx context.Context, b *builtImage, cache string) error {
	mnt := filepath.Join(r.work, "mnt")
	os.MkdirAll(mnt, 0o755)
	if _, _, err := r.mountOcifs(ctx, cache, b.ref(r.net.Host()), mnt); err != nil {
		return err
	}
	defer r.unmount(mnt, cache)
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		st, err := r.stats(ctx, cache, mnt)
		if err != nil {
			return err
		}
		if st.VerifyFailures > 0 {
			return fmt.Errorf("ocifs stats reports %d verify failures: the background fetch will not complete (see the mount log)", st.VerifyFailures)
		}
		done := len(st.Layers) > 0
		for _, l := range st.Layers {
			done = done && l.Complete && l.Verified && l.Settled // settled: extracted too
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("background fetch did not complete in 5 minutes")
}

// fullPull measures one pull (ocifs pull + overlayfs, or containerd) and
// then each workload on the result, in order: the pull is the same for
// every workload, so it is done once per repetition and its figures are
// added to each workload's.
func (r *runner) fullPull(ctx context.Context, method string, b *builtImage, spec imageSpec, workloads []string, base sample) ([]sample, error) {
	mnt := filepath.Join(r.work, "mnt")
	os.MkdirAll(mnt, 0o755)
	dir := filepath.Join(r.work, "pull")
	os.RemoveAll(dir)
	os.MkdirAll(dir, 0o755)
	defer os.RemoveAll(dir)
	var (
		daemonPID int
		cpu       float64
		rssKB     int64
		stop      = func() {}
	)
	if method == mContainerd {
		pid, stopC, err := startContainerd(ctx, dir)
		if err != nil {
			return nil, err
		}
		daemonPID, stop = pid, stopC
	}
	defer func() { stop() }()
	if err := dropCaches(); err != nil {
		return nil, err
	}
	_, daemonCPU0 := procStats(daemonPID)
	c0 := r.net.proxy.counters()
	t0 := time.Now()
	ref := b.ref(r.net.Host())
	switch method {
	case mPull:
		// ru_maxrss of a child counts the RSS it had before exec (this
		// process's, forked), so its peak is sampled from /proc instead.
		cmd := exec.CommandContext(ctx, r.ocifs, "--cache-dir", filepath.Join(dir, "cache"), "pull", ref, filepath.Join(dir, "rootfs"))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		done, finished := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for {
				if hwm, _ := procStats(cmd.Process.Pid); hwm > 0 {
					rssKB = max(rssKB, hwm)
				}
				select {
				case <-finished:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		err := cmd.Wait()
		close(finished)
		<-done
		if err != nil {
			return nil, fmt.Errorf("ocifs pull %s: %v: %s", ref, err, lastLines(out.String(), 5))
		}
		cpu += rusageCPU(cmd.ProcessState)
		for _, d := range []string{"upper", "work"} {
			os.MkdirAll(filepath.Join(dir, d), 0o755)
		}
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(dir, "rootfs"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
		if _, _, _, err := r.run(ctx, "mount", "-t", "overlay", "overlay", "-o", opts, mnt); err != nil {
			return nil, err
		}
		defer r.unmount(mnt, "")
	case mContainerd:
		addr := filepath.Join(dir, "containerd.sock")
		_, pcpu, _, err := r.run(ctx, "ctr", "-a", addr, "-n", "bench", "images", "pull", "--plain-http", ref)
		if err != nil {
			return nil, err
		}
		cpu += pcpu
		_, mcpu, _, err := r.run(ctx, "ctr", "-a", addr, "-n", "bench", "images", "mount", ref, mnt)
		if err != nil {
			return nil, err
		}
		cpu += mcpu
		defer r.unmount(mnt, "")
	}
	ready := time.Since(t0)
	var out []sample
	for _, w := range workloads {
		s := base
		s.Method, s.Workload = method, w
		if r.coldWorkloads {
			if err := dropCaches(); err != nil {
				return nil, err
			}
		}
		t1 := time.Now()
		wcpu, err := workload(ctx, w, mnt, spec.Startup)
		s.ReadyS = ready.Seconds()
		s.DoneS = (ready + time.Since(t1)).Seconds()
		c := r.net.proxy.counters().sub(c0)
		s.Bytes, s.Requests = c.BytesDown, c.Requests
		s.CPUS = cpu + wcpu
		if daemonPID != 0 {
			hwm, dcpu := procStats(daemonPID)
			s.PeakRSSKB, s.DaemonCPU = hwm, dcpu-daemonCPU0
			s.CPUS += s.DaemonCPU
		} else {
			s.PeakRSSKB = rssKB
		}
		if err != nil {
			s.Err = err.Error()
		}
		out = append(out, s)
	}
	return out, nil
}

// startContainerd starts containerd with its own root, state, socket and
// config under dir, and waits until ctr reaches it.
func startContainerd(ctx context.Context, dir string) (int, func(), error) {
	root, state, addr := filepath.Join(dir, "containerd-root"), filepath.Join(dir, "containerd-state"), filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %q
`, root, state, addr)
	cfgPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return 0, nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "..", "containerd.log"))
	if err != nil {
		return 0, nil, err
	}
	cmd := exec.Command("containerd", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return 0, nil, fmt.Errorf("start containerd: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		// snapshots may still be mounted if a workload failed half way
		ms, _ := mountinfo.Read(mountinfo.Self)
		for _, m := range ms {
			if strings.HasPrefix(m.Mountpoint, root) {
				exec.Command("umount", "-l", m.Mountpoint).Run()
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := exec.CommandContext(ctx, "ctr", "-a", addr, "version").Run(); err == nil {
			return cmd.Process.Pid, stop, nil
		}
		select {
		case <-exited:
			return 0, nil, fmt.Errorf("containerd exited at start (log %s)", logf.Name())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return 0, nil, errors.New("containerd did not answer in 30s")
		}
	}
}

// shellQuote quotes each word of argv for sh.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
