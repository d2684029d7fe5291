package takeover

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Ops of the holder's socket: one JSON message per packet (SOCK_SEQPACKET),
// a file descriptor riding along with "put" and "have".
const (
	opPeek    = "peek"    // daemon: what do you hold? (ok, with Have and Init)
	opGet     = "get"     // daemon: give me the connection (have or none)
	opHave    = "have"    // holder: here it is, with its INIT, and its fd
	opNone    = "none"    // holder: there is none yet: mount, then put
	opPut     = "put"     // daemon: keep this connection's fd
	opInit    = "init"    // daemon: keep the INIT exchange of the connection
	opServing = "serving" // daemon: I answer the connection now
	opStop    = "stop"    // holder: stop reading the connection and exit 0
	opUpgrade = "upgrade" // anyone: start the binary again, and hand over to it
	opOK      = "ok"      // answer: done
	opError   = "error"   // answer: not done, Err says why
)

// Init is what a daemon needs to serve a connection another daemon
// initialised, besides its fd: the INIT request the kernel sent and the
// answer it got (the new daemon's protocol server replays the request to
// learn the kernel's settings; the answer is what the kernel keeps), and
// the identity of the tree whose node ids the kernel holds.
type Init struct {
	Request []byte `json:"request"`
	Reply   []byte `json:"reply"`
	// Generation is the generation of the tree served (see
	// fs.RawFS.Generation): a daemon whose tree has another must not
	// answer for the kernel's node ids.
	Generation uint32 `json:"generation"`
	// Ref pins what is served: for `ocifs mount` the image
	// (repository@digest, or a layout's), so a new daemon serves the same
	// image even if its tag moved; for a layer mount (the snapshotter's)
	// its root, whose metadata says what each slot serves.
	Ref string `json:"ref,omitempty"`
}

type message struct {
	Op   string `json:"op"`
	PID  int    `json:"pid,omitempty"`
	Init *Init  `json:"init,omitempty"`
	Err  string `json:"err,omitempty"`
	// Have answers peek: the holder has a connection.
	Have bool `json:"have,omitempty"`
	// Generation, with get, is that of the tree the daemon serves.
	Generation uint32 `json:"generation,omitempty"`
}

const maxMessage = 64 << 10

// send writes m on c, with fd attached when fd >= 0.
func send(c *net.UnixConn, m message, fd int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("holder socket: send %s: %w", m.Op, err)
	}
	return nil
}

// errClosed is what recv returns when the other end has gone.
var errClosed = errors.New("holder socket closed")

// recv reads one message from c, and the fd that came with it (-1: none).
func recv(c *net.UnixConn) (message, int, error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return message{}, -1, fmt.Errorf("holder socket: %w", err)
	}
	if n == 0 && oobn == 0 {
		return message{}, -1, errClosed
	}
	fd := -1
	if oobn > 0 {
		scms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return message{}, -1, fmt.Errorf("holder socket: control message: %w", err)
		}
		for _, scm := range scms {
			fds, err := unix.ParseUnixRights(&scm)
			if err != nil {
				continue
			}
			for _, f := range fds {
				if fd < 0 {
					fd = f
				} else {
					unix.Close(f) // one fd per message; more is not ours to keep
				}
			}
		}
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return message{}, -1, fmt.Errorf("holder socket: invalid input: %w", err)
	}
	return m, fd, nil
}

// dial connects to the holder's socket.
func dial(socket string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("holder socket %s: %w", socket, err)
	}
	return c, nil
}

// Upgrade asks the holder at socket to start its binary again and hand the
// connection over to the new daemon; it returns once the new daemon serves
// (its pid), or why it does not (the old one then serves on, unless it had
// already stopped: then the holder restarts daemons as after a crash).
func Upgrade(socket string) (int, error) {
	c, err := dial(socket)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := send(c, message{Op: opUpgrade, PID: os.Getpid()}, -1); err != nil {
		return 0, err
	}
	m, fd, err := recv(c)
	if fd >= 0 {
		unix.Close(fd)
	}
	switch {
	case err != nil:
		return 0, err
	case m.Op == opError:
		return 0, errors.New(m.Err)
	case m.Op != opOK:
		return 0, fmt.Errorf("holder answered %q to upgrade", m.Op)
	}
	return m.PID, nil
}
