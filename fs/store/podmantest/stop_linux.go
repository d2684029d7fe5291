package podmantest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of Stop's steps. Stop takes no context: it runs in cleanups, after
// a test's context has ended, and must finish its work regardless.
const (
	stopRemoveTimeout = 60 * time.Second // podman rm --all --force
	stopSettleTimeout = 15 * time.Second // podman's own cleanup processes ending
	stopGoneTimeout   = 15 * time.Second // killed processes disappearing
)

// Stop removes every container through podman, waits for the cleanup
// processes conmon starts when a container exits, kills whatever of the
// instance still runs (processes in its mount namespace: podman, conmon;
// processes in its cgroup parent: containers), ends the namespace (which
// takes every mount podman made with it), unmounts anything left under
// the instance's directory on the host and removes the cgroups. What it
// had to force is listed in Leftovers. It is safe to call twice; the
// second call does nothing. The instance's directory stays for the
// caller to remove.
func (p *Podman) Stop() error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	var errs []error
	if p.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), stopRemoveTimeout)
		if _, err := p.Output(ctx, "rm", "--all", "--force", "--time", "0"); err != nil {
			// Not fatal: the forced cleanup below still runs.
			p.Leftovers = append(p.Leftovers, "containers not removed through podman: "+err.Error())
		}
		cancel()
	}
	// conmon runs `podman container cleanup` when a container exits,
	// and exits after it: give both a moment to finish on their own
	// (on a loaded machine conmon outlived the cleanup by seconds, and
	// killing it then made a healthy run look forced). Anything else,
	// and what is still there at the timeout, killAll lists and kills.
	waitFor(stopSettleTimeout, func() bool {
		pids, _ := p.processes()
		return !slices.ContainsFunc(pids, func(pid int) bool { c := comm(pid); return c == "podman" || c == "conmon" })
	})
	if err := p.killAll(); err != nil {
		errs = append(errs, err)
	}
	if p.Running() {
		if err := p.holder.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("kill namespace holder: %w", err))
		}
	}
	<-p.exited
	if err := p.unmountAll(); err != nil {
		errs = append(errs, err)
	}
	if err := p.removeCgroups(); err != nil {
		errs = append(errs, err)
	}
	// The namespace's inode may be reused once nsFile is closed: look
	// for its processes one last time while it cannot be.
	if pids, err := p.processes(); err != nil {
		errs = append(errs, err)
	} else if len(pids) > 0 {
		errs = append(errs, fmt.Errorf("processes %v still there after the namespace ended", pids))
	}
	if p.nsFile != nil {
		p.nsFile.Close()
		p.nsFile = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop podman %s: %w", p.dir, err)
	}
	return nil
}

// Running reports whether the instance's namespace is still held.
func (p *Podman) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// killAll SIGKILLs every process of the instance but the holder, again
// until none is left (a dying podman may still fork).
func (p *Podman) killAll() error {
	killed := map[int]bool{}
	err := waitFor(stopGoneTimeout, func() bool {
		pids, _ := p.processes()
		for _, pid := range pids {
			if !killed[pid] {
				killed[pid] = true
				p.Leftovers = append(p.Leftovers, fmt.Sprintf("pid %d (%s) killed", pid, comm(pid)))
			}
			unix.Kill(pid, unix.SIGKILL)
		}
		return len(pids) == 0
	})
	if err != nil {
		pids, _ := p.processes()
		return fmt.Errorf("processes %v survive SIGKILL", pids)
	}
	return nil
}

// processes returns the live processes of the instance, the holder left
// out: those in its mount namespace (podman, conmon, cleanup commands)
// while nsFile holds it, and those in its cgroup parent (containers,
// which runc puts in mount namespaces of their own).
func (p *Podman) processes() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	inCgroup := map[int]bool{}
	dirs, err := p.cgroupDirs()
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		for _, pid := range cgroupProcs(d) {
			inCgroup[pid] = true
		}
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || (p.holder != nil && pid == p.holder.Process.Pid) || !processAlive(pid) {
			continue
		}
		ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns/mnt"))
		if (err == nil && p.nsFile != nil && ns == p.mntNS) || inCgroup[pid] {
			out = append(out, pid)
		}
	}
	return out, nil
}

// Processes returns the pids of the instance's live processes (the
// namespace's holder left out), for tests that check nothing is left.
func (p *Podman) Processes() ([]int, error) { return p.processes() }

// waitFor polls done with backoff until it reports true or timeout
// passes. It polls the kernel's process and cgroup tables: there is
// nothing to wait on.
func waitFor(timeout time.Duration, done func() bool) error {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for !done() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %v", timeout)
		}
		time.Sleep(delay)
		delay = min(delay*2, 100*time.Millisecond)
	}
	return nil
}

// processAlive reports whether pid runs (a zombie counts as gone: its
// parent, not us, reaps it).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// comm is the process's command name, for Leftovers.
func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// cgroupDirs returns the existing directories of CgroupParent in every
// mounted cgroup hierarchy (v1 controllers and the v2 unified tree).
func (p *Podman) cgroupDirs() ([]string, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, m := range mounts {
		if m.fstype != "cgroup" && m.fstype != "cgroup2" {
			continue
		}
		d := filepath.Join(m.point, p.CgroupParent)
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// CgroupDirs returns the cgroup directories of CgroupParent that exist.
func (p *Podman) CgroupDirs() ([]string, error) { return p.cgroupDirs() }

// cgroupProcs returns the pids listed in the cgroup.procs of root and
// every cgroup below it.
func cgroupProcs(root string) []int {
	var pids []int
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroups removes CgroupParent and everything below it, deepest
// first, in every hierarchy; killAll has emptied them.
func (p *Podman) removeCgroups() error {
	dirs, err := p.cgroupDirs()
	if err != nil {
		return err
	}
	var errs []error
	for _, root := range dirs {
		var tree []string
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				tree = append(tree, path)
			}
			return nil
		})
		sort.Slice(tree, func(i, j int) bool { return len(tree[i]) > len(tree[j]) })
		for _, d := range tree {
			// A cgroup whose last process just died may still be busy
			// for a moment.
			err := waitFor(stopGoneTimeout, func() bool {
				err := unix.Rmdir(d)
				return err == nil || errors.Is(err, unix.ENOENT)
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, unix.Rmdir(d)))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountAll unmounts, on the host, every mount below the instance's
// directory, deepest first. Podman's own mounts die with the namespace;
// this catches what a test mounted there and left.
func (p *Podman) unmountAll() error {
	for range 10 {
		mounts, err := readMountinfo()
		if err != nil {
			return err
		}
		var points []string
		for _, m := range mounts {
			if strings.HasPrefix(m.point, p.dir+"/") {
				points = append(points, m.point)
			}
		}
		if len(points) == 0 {
			return nil
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, pt := range points {
			p.Leftovers = append(p.Leftovers, "unmounted "+pt)
			if err := unix.Unmount(pt, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				unix.Unmount(pt, unix.MNT_DETACH)
			}
		}
	}
	return errors.New("mounts keep reappearing under " + p.dir)
}

type mountEntry struct {
	point, fstype, source string
}

// readMountinfo parses /proc/self/mountinfo: the mount point is field 5,
// the file system type and source follow the " - " separator; paths are
// octal-escaped (\040 for a space).
func readMountinfo() ([]mountEntry, error) {
	return readMountinfoFile("/proc/self/mountinfo")
}

// readMountinfoFile parses a mountinfo file (/proc/<pid>/mountinfo shows
// that process's namespace).
func readMountinfoFile(name string) ([]mountEntry, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
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
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return out, nil
}

// NamespaceMounts returns the mount points of the instance's namespace
// below path (the overlays of running containers under the graph root,
// say), as the namespace names them.
func (p *Podman) NamespaceMounts(path string) ([]string, error) {
	if !p.Running() {
		return nil, nil
	}
	mounts, err := readMountinfoFile(fmt.Sprintf("/proc/%d/mountinfo", p.holder.Process.Pid))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.point == path || strings.HasPrefix(m.point, path+"/") {
			out = append(out, m.point)
		}
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
