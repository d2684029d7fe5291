package sdnotify

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a datagram socket at addr, as the service manager does.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	name := addr
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read the notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	for _, addr := range []string{
		filepath.Join(t.TempDir(), "notify"),
		fmt.Sprintf("@ocifs-sdnotify-test-%d", os.Getpid()),
	} {
		t.Run(addr, func(t *testing.T) {
			conn := listen(t, addr)
			t.Setenv(Env, addr)
			if sent, err := Ready("serving /mnt/app\nnow"); !sent || err != nil {
				t.Fatalf("Ready = %v, %v", sent, err)
			}
			if got, want := receive(t, conn), "READY=1\nSTATUS=serving /mnt/app now"; got != want {
				t.Errorf("Ready sent %q, want %q", got, want)
			}
			if _, err := Stopping(); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, conn); got != "STOPPING=1" {
				t.Errorf("Stopping sent %q", got)
			}
		})
	}
}

func TestNotifyWithout(t *testing.T) {
	t.Setenv(Env, "")
	if sent, err := Ready("x"); sent || err != nil {
		t.Errorf("Ready without %s = %v, %v; want nothing sent, no error", Env, sent, err)
	}
	t.Setenv(Env, "relative/path")
	if _, err := Ready(""); err == nil {
		t.Errorf("Ready to a relative socket path: no error")
	}
	t.Setenv(Env, filepath.Join(t.TempDir(), "nobody-listens"))
	if sent, err := Ready(""); sent || err == nil {
		t.Errorf("Ready to a socket nobody listens on = %v, %v; want an error", sent, err)
	}
	t.Setenv(Env, "/x")
	Unset()
	if v, ok := os.LookupEnv(Env); ok {
		t.Errorf("after Unset %s = %q", Env, v)
	}
}

// TestNotifyAt: the socket is named by the caller, not the environment.
func TestNotifyAt(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	conn := listen(t, addr)
	t.Setenv(Env, "")
	if sent, err := NotifyAt(addr, "READY=1"); !sent || err != nil {
		t.Fatalf("NotifyAt = %v, %v", sent, err)
	}
	if got := receive(t, conn); got != "READY=1" {
		t.Errorf("NotifyAt sent %q, want READY=1", got)
	}
	if sent, err := NotifyAt("", "READY=1"); sent || err != nil {
		t.Errorf("NotifyAt(\"\") = %v, %v; want nothing sent, no error", sent, err)
	}
}
