package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifySocket listens where a service manager would, and returns the
// socket's path and a function that waits for the next datagram.
func notifySocket(t *testing.T) (string, func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return path, func() string {
		t.Helper()
		if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
}

// notified is a foreground mount of the fixture image started as a
// Type=notify unit's main process, with the socket it notifies.
type notified struct {
	bin, ref, cache, dir, sock string
	next                       func() string // the next notification
	cmd                        *exec.Cmd
	out                        *bytes.Buffer // its stdout and stderr
}

// startNotified starts `ocifs mount FLAGS` of the fixture image with
// NOTIFY_SOCKET set; the cleanup kills it and unmounts.
func startNotified(t *testing.T, flags ...string) *notified {
	t.Helper()
	requireFUSE(t)
	m := &notified{bin: ocifsBinary(t), ref: layoutRef(t, fixtureImage(t)), cache: isolate(t), dir: t.TempDir()}
	m.sock, m.next = notifySocket(t)
	cleanupMount(t, m.cache, m.dir)
	args := append([]string{"--cache-dir", m.cache, "mount"}, flags...)
	m.cmd = exec.Command(m.bin, append(args, m.ref, m.dir)...)
	m.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+m.sock)
	m.out = &bytes.Buffer{}
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.cmd.Process.Kill(); _ = m.cmd.Wait() })
	return m
}

// stopNotified stops cmd as systemd does, with SIGTERM, and checks that it
// says STOPPING=1 and exits 0.
func stopNotified(t *testing.T, cmd *exec.Cmd, out *bytes.Buffer, next func() string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if msg := next(); msg != "STOPPING=1" {
		t.Errorf("on SIGTERM %s said %q, want STOPPING=1", cmd.Args[1:], msg)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("%s after SIGTERM: %v\n%s", cmd.Args[1:], err, out.String())
	}
}

// TestMountNotifiesSystemd: `ocifs mount --foreground` under a Type=notify
// unit says READY=1 once the mount answers and STOPPING=1 on SIGTERM; a
// daemon started by `ocifs mount` does not speak for the unit.
func TestMountNotifiesSystemd(t *testing.T) {
	m := startNotified(t, "--foreground")
	bin, ref, cache, dir, sock, next, cmd, out := m.bin, m.ref, m.cache, m.dir, m.sock, m.next, m.cmd, m.out
	msg := next()
	if !strings.HasPrefix(msg, "READY=1\nSTATUS=serving "+ref+" at "+dir) {
		t.Errorf("first notification %q, want READY=1 and a status", msg)
	}
	// READY means the mount answers now.
	if b, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err != nil || string(b) != fixtureRelease {
		t.Errorf("read right after READY=1: %q, %v", b, err)
	}
	stopNotified(t, cmd, out, next)

	// Started by `ocifs mount`, the daemon does not inherit NOTIFY_SOCKET.
	dir2 := t.TempDir()
	cleanupMount(t, cache, dir2)
	c2 := exec.Command(bin, "--cache-dir", cache, "mount", ref, dir2)
	c2.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	if b, err := c2.CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, b)
	}
	pid := daemonPID(t, cache, dir2)
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil || bytes.Contains(env, []byte("NOTIFY_SOCKET=")) {
		t.Errorf("the mount daemon's environment has NOTIFY_SOCKET (err %v)", err)
	}
	if _, errs, code := execOcifs(t, bin, "unmount", dir2); code != 0 {
		t.Fatalf("unmount: %d %s", code, errs)
	}
}

// TestTakeoverForegroundNotifies: `ocifs mount --takeover --foreground`,
// as the mount unit runs it, is the holder itself: the unit's main process.
// It says READY=1 once the mount answers; its daemon, a child without
// NOTIFY_SOCKET, can be killed and is replaced without the mount or the
// main process going away; SIGTERM gives STOPPING=1, an unmount and exit 0.
func TestTakeoverForegroundNotifies(t *testing.T) {
	m := startNotified(t, "--takeover", "--foreground")
	ref, cache, dir, next, cmd, out := m.ref, m.cache, m.dir, m.next, m.cmd, m.out
	if msg := next(); !strings.HasPrefix(msg, "READY=1\nSTATUS=serving "+ref+" at "+dir) {
		t.Errorf("first notification %q, want READY=1 and a status", msg)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err != nil || string(b) != fixtureRelease {
		t.Errorf("read right after READY=1: %q, %v", b, err)
	}
	st := mountStateOf(t, cache, dir)
	if st.HolderPID != cmd.Process.Pid || st.PID == cmd.Process.Pid {
		t.Fatalf("mount state: holder pid %d, daemon pid %d; want the holder to be the command (pid %d) and the daemon apart",
			st.HolderPID, st.PID, cmd.Process.Pid)
	}
	env, err := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/environ")
	if err != nil || bytes.Contains(env, []byte("NOTIFY_SOCKET=")) {
		t.Errorf("the mount daemon's environment has NOTIFY_SOCKET (err %v): it would speak for the unit", err)
	}
	if st.Log != "" {
		t.Errorf("mount state names log %s; the daemon writes to its holder's stderr (the journal)", st.Log)
	}

	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNewServer(t, cache, dir, st.PID)
	if b, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err != nil || string(b) != fixtureRelease {
		t.Errorf("read after the daemon was killed: %q, %v", b, err)
	}
	if cmd.ProcessState != nil {
		t.Fatalf("the main process ended when its daemon was killed:\n%s", out.String())
	}

	stopNotified(t, cmd, out, next)
	if _, ok, _ := findMount(dir); ok {
		t.Errorf("%s is still mounted after SIGTERM", dir)
	}
}

// TestMakeInstall: make install puts the binary and every unit of
// cmd/ocifs/systemd under PREFIX, with @BINDIR@ replaced, and systemd's own
// checker finds nothing wrong with the units.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("make is missing, and CI=true")
		}
		t.Skip("no make")
	}
	prefix := t.TempDir()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	mk := exec.Command("make", "-C", root, "install", "PREFIX="+prefix, "BIN="+filepath.Join(t.TempDir(), "ocifs"))
	if b, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, b)
	}
	bin := filepath.Join(prefix, "bin", "ocifs")
	if b, err := exec.Command(bin, "--help").Output(); err != nil || !strings.Contains(string(b), "Usage:") {
		t.Errorf("installed %s --help: %v", bin, err)
	}
	units, err := filepath.Glob("systemd/*.service")
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in cmd/ocifs/systemd: %v", err)
	}
	unitDir := filepath.Join(prefix, "lib", "systemd", "system")
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join(unitDir, filepath.Base(u)))
		if err != nil {
			t.Errorf("unit %s not installed: %v", u, err)
			continue
		}
		if bytes.Contains(b, []byte("@BINDIR@")) || !bytes.Contains(b, []byte("ExecStart="+bin+" ")) {
			t.Errorf("installed %s does not run %s:\n%s", u, bin, b)
		}
		if !bytes.Contains(b, []byte("KillMode=")) {
			t.Errorf("%s says no KillMode: the default (control-group) would kill what it leaves running", u)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("no systemd-analyze: the units' syntax is not checked")
		return
	}
	for _, u := range units {
		name := filepath.Base(u)
		if strings.HasSuffix(name, "@.service") {
			name = strings.TrimSuffix(name, "@.service") + "@mnt-app.service"
		}
		v := exec.Command(analyze, "verify", "--man=no", name)
		v.Dir = unitDir
		v.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+unitDir+":")
		b, _ := v.CombinedOutput()
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			// Outside a booted systemd the standard targets are missing;
			// anything about the unit's own lines is a defect.
			if l != "" && !strings.Contains(l, ".target") {
				t.Errorf("systemd-analyze verify %s: %s", name, l)
			}
		}
	}
}
