package takeover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HolderOptions configure [Hold].
type HolderOptions struct {
	// Socket is the path of the unix socket the daemons reach the holder
	// at (created; removed when the holder ends).
	Socket string
	// Exe is the binary a daemon runs: looked up again at every start, so
	// a binary replaced at that path runs from the next start on.
	Exe string
	// Name is a daemon's argv[0] (what the process table shows), Args the
	// rest of its command line.
	Name string
	Args []string
	// Output receives the daemons' stdout and stderr (nil: discarded).
	Output *os.File
	// Ready, if set, is handed to the first daemon as its fd 3 (where it
	// tells whoever started the mount that it answers, or why not), and
	// closed here once that daemon has it.
	Ready *os.File
	// Logger gets the holder's lifecycle lines; nil discards them.
	Logger *slog.Logger
}

// daemon is one daemon the holder started.
type daemon struct {
	pid     int
	started time.Time
	conn    *net.UnixConn // set once it asked for the connection
	served  bool          // it said it serves
}

// event is what the holder's loop acts on.
type event struct {
	// A daemon exited: pid, and its status (nil: exit 0).
	exited  int
	waitErr error
	// A message from conn.
	conn *net.UnixConn
	msg  message
	fd   int
	// A signal.
	sig os.Signal
}

// holder is the state of [Hold], owned by its loop.
type holder struct {
	o      HolderOptions
	log    *slog.Logger
	events chan event

	fd     int   // the connection's /dev/fuse fd; -1 until a daemon puts it
	init   *Init // its INIT exchange, once a daemon has answered it
	served bool  // some daemon has said it serves the connection

	children map[int]*daemon
	// current holds the connection: the daemon that put it or was given it.
	current *daemon
	// stopping: current was asked to stop, to hand over to pending.
	stopping bool
	// pending asked for the connection while current held it (an upgrade).
	pending *daemon
	// upgraders wait for the next daemon to serve.
	upgraders []*net.UnixConn

	backoff time.Duration
	restart <-chan time.Time
}

// Hold keeps the FUSE connection of one mount alive across the daemons
// that serve it: it starts a daemon, keeps the /dev/fuse fd that daemon
// mounted with (and the INIT exchange) where the daemon's death cannot
// close it, and when a daemon dies starts another (at once if the dead one
// had served, else after a pause that grows up to 10s), which is handed
// the fd over Socket. An upgrade (a message on the socket, or SIGHUP) starts a
// new daemon first and tells the serving one to stop only once the new
// one is loaded and asks for the connection.
//
// It returns nil when a daemon exits 0 of its own accord (the mount was
// unmounted: its connection ended, or the daemon was told to stop), and an
// error when the first daemon fails before it serves. Signals, not ctx,
// end it: SIGTERM and SIGINT are passed on to the serving daemon (which
// unmounts and exits 0); SIGHUP is an upgrade. ctx is not used to cancel:
// a holder lives as long as its mount, which is the point.
func Hold(_ context.Context, o HolderOptions) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.Remove(o.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("holder socket %s: %w", o.Socket, err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: o.Socket, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("holder socket %s: %w", o.Socket, err)
	}
	defer ln.Close()
	if err := os.Chmod(o.Socket, 0o600); err != nil {
		return fmt.Errorf("holder socket %s: %w", o.Socket, err)
	}
	h := &holder{o: o, log: o.Logger, events: make(chan event, 16), fd: -1, children: map[int]*daemon{}}
	defer func() {
		if h.fd >= 0 {
			unix.Close(h.fd)
		}
	}()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			h.events <- event{sig: s}
		}
	}()
	go h.accept(ln)

	if err := h.start(); err != nil {
		return err
	}
	for {
		var ev event
		select {
		case <-h.restart:
			h.restart = nil
			if err := h.start(); err != nil {
				h.log.Error("restart the mount daemon", "err", err)
				h.scheduleRestart(false)
			}
			continue
		case ev = <-h.events:
		}
		switch {
		case ev.sig != nil:
			h.onSignal(ev.sig)
		case ev.conn != nil:
			h.onMessage(ev.conn, ev.msg, ev.fd)
		default:
			if done, err := h.onExit(ev.exited, ev.waitErr); done {
				return err
			}
		}
	}
}

// accept reads the messages of every connection to the socket into events.
func (h *holder) accept(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		go func() {
			for {
				m, fd, err := recv(c)
				if err != nil {
					c.Close() // the daemon's exit, not its socket, is what counts
					return
				}
				h.events <- event{conn: c, msg: m, fd: fd}
			}
		}()
	}
}

// start starts a daemon.
func (h *holder) start() error {
	cmd := exec.Command(h.o.Exe, h.o.Args...)
	cmd.Args[0] = h.o.Name
	if h.o.Output != nil {
		cmd.Stdout, cmd.Stderr = h.o.Output, h.o.Output
	}
	// Every daemon gets an fd 3, as the first one's command line says:
	// the ready pipe for the first, /dev/null for the rest, so that no
	// daemon mistakes a file of its own for it.
	ready := h.o.Ready
	if ready == nil {
		null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("start the mount daemon: %w", err)
		}
		ready = null
	}
	cmd.ExtraFiles = []*os.File{ready}
	err := cmd.Start()
	ready.Close()
	h.o.Ready = nil
	if err != nil {
		return fmt.Errorf("start the mount daemon %s: %w", h.o.Exe, err)
	}
	d := &daemon{pid: cmd.Process.Pid, started: time.Now()}
	h.children[d.pid] = d
	h.log.Info("mount daemon started", "pid", d.pid, "exe", h.o.Exe)
	go func() {
		err := cmd.Wait()
		h.events <- event{exited: d.pid, waitErr: err}
	}()
	return nil
}

func (h *holder) onSignal(s os.Signal) {
	if s == syscall.SIGHUP {
		h.upgrade(nil)
		return
	}
	h.signalCurrent(syscall.SIGTERM)
}

func (h *holder) signalCurrent(s syscall.Signal) {
	if h.current != nil {
		_ = syscall.Kill(h.current.pid, s)
	}
}

func (h *holder) reply(c *net.UnixConn, m message, fd int) {
	if err := send(c, m, fd); err != nil {
		h.log.Warn("answer a daemon", "op", m.Op, "err", err)
	}
}

func (h *holder) onMessage(c *net.UnixConn, m message, fd int) {
	switch m.Op {
	case opPeek:
		if d := h.children[m.PID]; d != nil {
			d.conn = c
		}
		h.reply(c, message{Op: opOK, Have: h.fd >= 0, Init: h.init}, -1)
	case opGet:
		d := h.children[m.PID]
		if d == nil {
			h.reply(c, message{Op: opError, Err: fmt.Sprintf("pid %d is not a daemon this holder started", m.PID)}, -1)
			return
		}
		d.conn = c
		switch {
		case h.init != nil && m.Generation != h.init.Generation:
			// Checked before the serving daemon is told to stop: a binary
			// that numbers the tree otherwise must not end the mount.
			h.reply(c, message{Op: opError, Err: fmt.Sprintf("the kernel holds node ids of a tree with generation %08x, this daemon's has %08x "+
				"(another image, or a binary that numbers trees otherwise): it cannot take over; unmount and mount again to serve it", h.init.Generation, m.Generation)}, -1)
		case h.fd < 0 && h.current == nil:
			h.current = d
			h.reply(c, message{Op: opNone}, -1)
		case h.current != nil && h.current != d:
			// An upgrade: the new daemon is loaded; the old one stops,
			// and its exit hands the connection over.
			h.pending = d
			if !h.stopping && h.current.conn != nil {
				h.stopping = true
				h.log.Info("handing over", "from", h.current.pid, "to", d.pid)
				h.reply(h.current.conn, message{Op: opStop}, -1)
			}
		default:
			h.give(d)
		}
	case opPut:
		if fd < 0 {
			h.reply(c, message{Op: opError, Err: "put without an fd"}, -1)
			return
		}
		if h.fd >= 0 {
			unix.Close(h.fd)
		}
		h.fd = fd
		h.reply(c, message{Op: opOK}, -1)
	case opInit:
		h.init = m.Init
		h.reply(c, message{Op: opOK}, -1)
	case opServing:
		h.served = true
		if d := h.children[m.PID]; d != nil {
			d.served = true
		}
		h.reply(c, message{Op: opOK}, -1)
		for _, u := range h.upgraders {
			h.reply(u, message{Op: opOK, PID: m.PID}, -1)
			u.Close()
		}
		h.upgraders = nil
	case opUpgrade:
		h.upgrade(c)
	default:
		if fd >= 0 {
			unix.Close(fd)
		}
		h.reply(c, message{Op: opError, Err: "unknown op " + m.Op}, -1)
	}
}

// give hands the connection to d, which becomes current.
func (h *holder) give(d *daemon) {
	h.current = d
	if h.fd < 0 {
		h.reply(d.conn, message{Op: opNone}, -1)
		return
	}
	h.reply(d.conn, message{Op: opHave, Init: h.init}, h.fd)
}

// upgrade starts a new daemon to hand over to; c, if set, is told when it
// serves.
func (h *holder) upgrade(c *net.UnixConn) {
	if h.fd < 0 || !h.served || h.current == nil {
		if c != nil {
			h.reply(c, message{Op: opError, Err: "the mount does not serve yet; try again once it does"}, -1)
		}
		return
	}
	if h.pending != nil || h.stopping {
		if c != nil {
			h.upgraders = append(h.upgraders, c) // the hand-over under way serves it
		}
		return
	}
	if err := h.start(); err != nil {
		if c != nil {
			h.reply(c, message{Op: opError, Err: err.Error()}, -1)
		}
		return
	}
	if c != nil {
		h.upgraders = append(h.upgraders, c)
	}
}

// onExit handles the exit of daemon pid; done reports that the holder
// ends, with err.
func (h *holder) onExit(pid int, waitErr error) (done bool, err error) {
	d := h.children[pid]
	delete(h.children, pid)
	if d == nil {
		return false, nil
	}
	status := "exit 0"
	if waitErr != nil {
		status = waitErr.Error()
	}
	if d != h.current {
		// A daemon that never held the connection: a new one that died
		// loading, before it asked for it or while waiting for it.
		if h.pending == d {
			h.pending = nil
		}
		h.log.Warn("mount daemon exited before it took over", "pid", pid, "status", status)
		for _, u := range h.upgraders {
			h.reply(u, message{Op: opError, Err: fmt.Sprintf("the new daemon (pid %d) exited (%s) before it took over; see the mount's log", pid, status)}, -1)
			u.Close()
		}
		h.upgraders = nil
		if h.current == nil && h.fd < 0 && len(h.children) == 0 {
			return true, fmt.Errorf("the mount daemon exited (%s) before it mounted", status)
		}
		if h.current == nil && !h.stopping && h.restart == nil && len(h.children) == 0 && h.fd >= 0 {
			h.scheduleRestart(d.served)
		}
		return false, nil
	}
	h.current = nil
	wasStopping := h.stopping
	h.stopping = false
	switch {
	case h.pending != nil:
		p := h.pending
		h.pending = nil
		h.log.Info("mount daemon handed over", "from", pid, "to", p.pid, "status", status)
		h.give(p)
	case wasStopping:
		h.log.Warn("mount daemon stopped for a hand-over, but its successor is gone; starting another", "pid", pid)
		h.scheduleRestart(d.served)
	case !h.served:
		// The first daemon died before it said it serves: whoever started
		// the mount has its error. Closing the fd ends the connection.
		h.log.Error("mount daemon exited before it served", "pid", pid, "status", status)
		return true, fmt.Errorf("the mount daemon exited (%s) before it served", status)
	case waitErr == nil:
		h.log.Info("mount daemon exited; the mount is over", "pid", pid)
		return true, nil
	default:
		h.log.Warn("mount daemon died; starting another to take over", "pid", pid, "status", status)
		h.scheduleRestart(d.served)
	}
	return false, nil
}

// scheduleRestart starts a daemon again: at once after one that served,
// else after a pause that doubles with every death before serving (a
// daemon that cannot load the image), up to 10s.
func (h *holder) scheduleRestart(served bool) {
	switch {
	case served:
		h.backoff = 0
	case h.backoff == 0:
		h.backoff = 100 * time.Millisecond
	default:
		h.backoff = min(2*h.backoff, 10*time.Second)
	}
	if h.backoff == 0 {
		if err := h.start(); err == nil {
			return
		}
		h.backoff = 100 * time.Millisecond
	}
	h.restart = time.After(h.backoff)
}
