package critest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Bounds of Stop's steps. Stop takes no context: it runs in cleanups, after
// a test's context has ended, and must finish its work regardless.
const (
	stopPodsTimeout   = 60 * time.Second // removing every pod through CRI
	stopTermTimeout   = 15 * time.Second // containerd's own shutdown after SIGTERM
	stopGoneTimeout   = 15 * time.Second // killed processes disappearing
	stopCgroupTimeout = 15 * time.Second // cgroups emptying after SIGKILL
)

// Stop removes every pod through CRI, stops containerd (SIGTERM, then
// SIGKILL), kills shims and container processes left behind, unmounts
// everything under Root and State and removes the pods' cgroups. What it
// had to force is listed in Leftovers. It is safe to call twice; the
// second call does nothing.
func (c *Containerd) Stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	if c.Running() {
		// When Start failed, CRI may never answer and has no pods.
		if c.criReady {
			if err := c.removePods(); err != nil {
				// Not fatal: the forced cleanup below still runs.
				c.Leftovers = append(c.Leftovers, "pods not removed through CRI: "+err.Error())
			}
		}
		if err := c.terminate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.killShims(); err != nil {
		errs = append(errs, err)
	}
	if err := c.killCgroups(); err != nil {
		errs = append(errs, err)
	}
	if err := c.unmountAll(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop containerd %s: %w", c.Address, err)
	}
	return nil
}

// removePods stops and removes every pod sandbox CRI knows, which stops
// their containers and lets the shims exit.
func (c *Containerd) removePods() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopPodsTimeout)
	defer cancel()
	cl, err := c.Dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	pods, err := cl.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	var errs []error
	for _, p := range pods.GetItems() {
		if err := cl.RemovePod(ctx, p.Id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// terminate sends SIGTERM, waits for containerd's shutdown and kills it
// if it takes too long.
func (c *Containerd) terminate() error {
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal containerd: %w", err)
	}
	timer := time.NewTimer(stopTermTimeout)
	defer timer.Stop()
	select {
	case <-c.exited:
		return nil
	case <-timer.C:
	}
	c.Leftovers = append(c.Leftovers, fmt.Sprintf("containerd (pid %d) still running %v after SIGTERM: killed", c.cmd.Process.Pid, stopTermTimeout))
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill containerd: %w", err)
	}
	<-c.exited
	return nil
}

// shimSocketDir is where runc v2 shims of containerd 1.6 to 2.4 put their
// sockets, whatever containerd's --state: /run/containerd/s.
const shimSocketDir = "/run/containerd/s"

// killShims kills every runc shim serving this containerd: a shim's
// command line carries "-address <containerd socket>". Shims daemonize, so
// they are not our children and outlive a killed containerd. The sockets
// of the killed shims are removed too.
func (c *Containerd) killShims() error {
	shims, err := findShims(c.Address)
	if err != nil {
		return err
	}
	var pids []int
	for _, sh := range shims {
		c.Leftovers = append(c.Leftovers, fmt.Sprintf("shim pid %d killed", sh.pid))
		if err := unix.Kill(sh.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill shim %d: %w", sh.pid, err)
		}
		pids = append(pids, sh.pid)
	}
	if err := waitGone(pids, stopGoneTimeout); err != nil {
		return err
	}
	var errs []error
	for _, sh := range shims {
		for _, p := range shimSockets(c.Address, sh.namespace, sh.id) {
			if fi, err := os.Lstat(p); err != nil || fi.Mode()&fs.ModeSocket == 0 {
				continue
			}
			c.Leftovers = append(c.Leftovers, "removed shim socket "+p)
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// shimSockets are the socket paths a shim serving address for id in
// namespace listens on: the sha256 of address/namespace/id (and of
// .../debug), as containerd's shim.SocketAddress names them.
func shimSockets(address, namespace, id string) []string {
	var out []string
	for _, p := range []string{filepath.Join(address, namespace, id), filepath.Join(address, namespace, id, "debug")} {
		out = append(out, filepath.Join(shimSocketDir, fmt.Sprintf("%x", sha256.Sum256([]byte(p)))))
	}
	return out
}

type shimProc struct {
	pid           int
	namespace, id string
}

// shimPIDs returns the pids of the shims serving addr.
func shimPIDs(addr string) ([]int, error) {
	shims, err := findShims(addr)
	var pids []int
	for _, sh := range shims {
		pids = append(pids, sh.pid)
	}
	return pids, err
}

// findShims scans /proc for containerd-shim processes started with
// -address addr.
func findShims(addr string) ([]shimProc, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []shimProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a kernel thread
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		sh := shimProc{pid: pid}
		ours := false
		for i := 0; i+1 < len(args); i++ {
			switch strings.TrimLeft(args[i], "-") {
			case "address":
				ours = ours || args[i+1] == addr
			case "namespace":
				sh.namespace = args[i+1]
			case "id":
				sh.id = args[i+1]
			}
		}
		if ours {
			out = append(out, sh)
		}
	}
	return out, nil
}

// waitGone polls until none of pids is alive (a zombie counts as gone: its
// parent, not us, reaps it) or timeout passes.
func waitGone(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		var alive []int
		for _, pid := range pids {
			if processAlive(pid) {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still alive %v after SIGKILL", alive, timeout)
		}
		time.Sleep(delay) // polling the kernel's process table: there is nothing to wait on
		delay = min(delay*2, 100*time.Millisecond)
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// cgroupDirs returns the directories of c.CgroupParent in every mounted
// cgroup hierarchy (v1 controllers and the v2 unified tree).
func (c *Containerd) cgroupDirs() ([]string, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, m := range mounts {
		if m.fstype != "cgroup" && m.fstype != "cgroup2" {
			continue
		}
		d := filepath.Join(m.point, c.CgroupParent)
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// killCgroups kills every process left in the pods' cgroup parent and
// removes the cgroups, deepest first.
func (c *Containerd) killCgroups() error {
	dirs, err := c.cgroupDirs()
	if err != nil {
		return err
	}
	var errs []error
	for _, root := range dirs {
		var tree []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				tree = append(tree, p)
			}
			return nil
		})
		deadline := time.Now().Add(stopCgroupTimeout)
		delay := time.Millisecond
		killed := map[int]bool{}
		for {
			pids := cgroupProcs(tree)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("cgroup %s: processes %v survive SIGKILL", root, pids))
				break
			}
			for _, pid := range pids {
				if !killed[pid] {
					killed[pid] = true
					c.Leftovers = append(c.Leftovers, fmt.Sprintf("pid %d in %s killed", pid, root))
				}
				unix.Kill(pid, unix.SIGKILL)
			}
			time.Sleep(delay) // polling cgroup.procs: there is nothing to wait on
			delay = min(delay*2, 100*time.Millisecond)
		}
		sort.Slice(tree, func(i, j int) bool { return len(tree[i]) > len(tree[j]) })
		for _, d := range tree {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupProcs returns the distinct pids listed in the cgroup.procs of dirs
// that are still alive.
func cgroupProcs(dirs []string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err == nil && !seen[pid] && processAlive(pid) {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// unmountAll unmounts every mount below the instance's directory (Root,
// State), deepest first. containerd leaves the overlay
// rootfs of each bundle, the pods' shm mounts and, when killed, snapshot
// mounts behind.
func (c *Containerd) unmountAll() error {
	var errs []error
	// A mount can hide another at the same point: read again until none
	// is left (bounded, in case one refuses to go).
	for range 10 {
		mounts, err := readMountinfo()
		if err != nil {
			return err
		}
		var points []string
		for _, m := range mounts {
			if strings.HasPrefix(m.point, c.dir+"/") {
				points = append(points, m.point)
			}
		}
		if len(points) == 0 {
			return errors.Join(errs...)
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		errs = errs[:0]
		for _, p := range points {
			c.Leftovers = append(c.Leftovers, "unmounted "+p)
			if err := unix.Unmount(p, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				// Busy (a process we could not see still uses it):
				// detach it, so at least the tree can be removed.
				if err2 := unix.Unmount(p, unix.MNT_DETACH); err2 != nil && !errors.Is(err2, unix.EINVAL) {
					errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
				}
			}
		}
	}
	errs = append(errs, errors.New("mounts keep reappearing under "+c.dir))
	return errors.Join(errs...)
}

type mountEntry struct {
	point, fstype, source string
}

// readMountinfo parses /proc/self/mountinfo: the mount point is field 5,
// the file system type and source follow the " - " separator; paths are
// octal-escaped (\040 for a space).
func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 2 {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(fields[4]), fstype: tail[0], source: unescapeMount(tail[1])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount undoes the kernel's octal escapes of space, tab, newline
// and backslash in mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// IsMountPoint reports whether p is a mount point in this process's mount
// namespace.
func IsMountPoint(p string) (bool, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return false, err
	}
	p = filepath.Clean(p)
	for _, m := range mounts {
		if m.point == p {
			return true, nil
		}
	}
	return false, nil
}
