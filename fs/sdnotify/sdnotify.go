// Package sdnotify tells a service manager how a daemon is doing: the
// sd_notify(3) protocol, one datagram of newline-separated VAR=value
// assignments ("READY=1", "STATUS=...", "STOPPING=1") sent to the unix
// socket named by $NOTIFY_SOCKET. systemd sets that variable for a unit of
// Type=notify; without it every call does nothing, so a daemon calls these
// unconditionally. It is shared by every ocifs daemon (the mount daemon, the
// snapshotter, the store) and has no dependencies.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// Env is the variable that names the service manager's socket.
const Env = "NOTIFY_SOCKET"

// Notify sends state (such as "READY=1\nSTATUS=serving") to the service
// manager. It reports false, and no error, when there is none to tell.
func Notify(state string) (sent bool, err error) {
	path := os.Getenv(Env)
	if path == "" {
		return false, nil
	}
	return send(path, state)
}

// NotifyAt is Notify to the socket at path (a value $NOTIFY_SOCKET had),
// for a process that took the variable out of its environment so that its
// children do not speak for the unit. An empty path does nothing.
func NotifyAt(path, state string) (sent bool, err error) {
	if path == "" {
		return false, nil
	}
	return send(path, state)
}

func send(path, state string) (bool, error) {
	switch {
	case strings.HasPrefix(path, "@"):
		path = "\x00" + path[1:] // the abstract namespace
	case !strings.HasPrefix(path, "/"):
		return false, fmt.Errorf("sd_notify: %s=%q: want an absolute path or an @abstract name", Env, path)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	n, err := conn.Write([]byte(state))
	if err == nil && n != len(state) {
		err = errors.New("short write")
	}
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	return true, nil
}

// Ready says the daemon is serving; status is a line for systemctl status
// ("" for none).
func Ready(status string) (bool, error) {
	s := "READY=1"
	if status != "" {
		s += "\nSTATUS=" + oneLine(status)
	}
	return Notify(s)
}

// Status updates the line systemctl status shows.
func Status(status string) (bool, error) { return Notify("STATUS=" + oneLine(status)) }

// Stopping says the daemon has begun to shut down.
func Stopping() (bool, error) { return Notify("STOPPING=1") }

// Unset removes $NOTIFY_SOCKET from this process's environment, so that a
// child it starts (a mount daemon of its own) does not speak for the unit.
func Unset() { os.Unsetenv(Env) }

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
