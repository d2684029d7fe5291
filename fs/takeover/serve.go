package takeover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Client is a daemon's line to its holder.
type Client struct {
	c    *net.UnixConn
	have bool  // the holder has a connection (another daemon mounted)
	init *Init // its INIT exchange, when it had one
	fd   int   // the connection, once taken; else -1

	mu      sync.Mutex // one request at a time
	replies chan reply
	stop    chan struct{}
}

type reply struct {
	m  message
	fd int
}

// Dial connects to the holder at socket and asks what it holds, without
// taking it: whether a connection exists (Have), and its INIT exchange
// (Init: the image to load, pinned, and the generation its tree must
// have). The daemon loads the image, then [Serve] takes the connection,
// and only then is a daemon serving it told to stop.
func Dial(socket string) (*Client, error) {
	c, err := dial(socket)
	if err != nil {
		return nil, err
	}
	cl := &Client{c: c, fd: -1, replies: make(chan reply, 1), stop: make(chan struct{})}
	go cl.read()
	r, err := cl.request(message{Op: opPeek, PID: os.Getpid()}, -1)
	if err != nil {
		c.Close()
		return nil, err
	}
	cl.have, cl.init = r.Have, r.Init
	return cl, nil
}

// take asks for the connection, saying which tree this daemon serves: the
// holder refuses a daemon whose tree has another generation than the
// connection's (the serving one then serves on), and answers a daemon
// started for an upgrade once the serving one has stopped.
func (c *Client) take(generation uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := send(c.c, message{Op: opGet, PID: os.Getpid(), Generation: generation}, -1); err != nil {
		return err
	}
	r, ok := <-c.replies
	switch {
	case !ok:
		return errors.New("holder socket: closed before it handed over the connection")
	case r.m.Op == opHave && r.fd >= 0:
		c.fd, c.have, c.init = r.fd, true, r.m.Init
	case r.m.Op == opNone:
		c.have = false
	case r.m.Op == opError:
		return fmt.Errorf("holder: %s", r.m.Err)
	default:
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
		return fmt.Errorf("holder answered %q to get", r.m.Op)
	}
	return nil
}

// Have reports whether the holder has a connection another daemon mounted:
// this daemon takes it over rather than mounting.
func (c *Client) Have() bool { return c.have }

// Init returns the held connection's INIT exchange (nil if none).
func (c *Client) Init() *Init { return c.init }

// StopRequested is closed when the holder asks this daemon to stop for a
// hand-over: [Server.Stop], then exit 0 without unmounting.
func (c *Client) StopRequested() <-chan struct{} { return c.stop }

func (c *Client) read() {
	defer close(c.replies)
	stopped := false
	for {
		m, fd, err := recv(c.c)
		if err != nil {
			return
		}
		if m.Op == opStop {
			if fd >= 0 {
				unix.Close(fd)
			}
			if !stopped {
				stopped = true
				close(c.stop)
			}
			continue
		}
		c.replies <- reply{m, fd}
	}
}

// request sends m (with fd) and waits for the holder's answer.
func (c *Client) request(m message, fd int) (message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := send(c.c, m, fd); err != nil {
		return message{}, err
	}
	r, ok := <-c.replies
	if r.fd >= 0 {
		unix.Close(r.fd)
	}
	switch {
	case !ok:
		return message{}, fmt.Errorf("holder socket: closed before it answered %s", m.Op)
	case r.m.Op == opError:
		return message{}, fmt.Errorf("holder: %s: %s", m.Op, r.m.Err)
	}
	return r.m, nil
}

// Serving tells the holder this daemon serves the connection now.
func (c *Client) Serving() error {
	_, err := c.request(message{Op: opServing, PID: os.Getpid()}, -1)
	return err
}

// Close closes the line to the holder (not the connection).
func (c *Client) Close() error { return c.c.Close() }

// Options configure [Serve].
type Options struct {
	// Dir is the mountpoint: mounted there when the holder has no
	// connection yet.
	Dir string
	// AllowOther, Suid and Dev are as fs.MountOptions has them.
	AllowOther, Suid, Dev bool
	// Source is the mount's source in the mount table (default ocifs).
	Source string
	// Writable mounts read-write (the layer store's use notifications are
	// writes; its file system refuses the rest); default read-only.
	Writable bool
	// Generation and Ref identify what is served: saved with the INIT
	// exchange by the first daemon, checked by the next (see Init).
	Generation uint32
	Ref        string
	// Debug logs every request at Debug.
	Debug  bool
	Logger *slog.Logger
	// Readers is how many goroutines read requests (0: 4).
	Readers int
}

// maxWrite is what the INIT answer offers the kernel: requests are read
// into buffers of this plus room for the headers.
const (
	maxWrite = 128 << 10
	bufSize  = maxWrite + 8<<10
)

// Server answers one FUSE connection with go-fuse's protocol server.
type Server struct {
	fd   int
	ps   *fuse.ProtocolServer
	log  *slog.Logger
	dir  string
	init *Init
	cl   *Client

	// Took reports that the connection was taken over from another daemon;
	// TookAt, when this server began answering it.
	Took   bool
	TookAt time.Time

	bufs sync.Pool

	// mu guards stopping; inflight counts the requests being answered,
	// added to only while not stopping.
	mu       sync.Mutex
	stopping bool
	inflight sync.WaitGroup

	readers sync.WaitGroup
	done    chan struct{} // closed when the connection has ended
}

// Serve answers the connection cl holds, or mounts at o.Dir and answers
// that one (putting its fd, then its INIT exchange, with the holder before
// the kernel hears back, so a daemon dying at any point leaves the next
// what it needs). A connection taken over is told to resend the requests
// the old daemon had read and not answered (FUSE_NOTIFY_RESEND, Linux 6.9).
func Serve(cl *Client, fs fuse.RawFileSystem, o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	mo := &fuse.MountOptions{
		MaxWrite:     maxWrite,
		MaxReadAhead: 1 << 20,
		Debug:        o.Debug,
		Logger:       log.New(logWriter{o.Logger}, "", 0),
		// A passthrough backing id belongs to the daemon that opened it;
		// a connection handed over must not depend on one.
		DisabledCapabilities: fuse.CAP_PASSTHROUGH,
	}
	s := &Server{ps: fuse.NewProtocolServer(fs, mo), log: o.Logger, dir: o.Dir, cl: cl, done: make(chan struct{})}
	s.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	if err := cl.take(o.Generation); err != nil {
		return nil, fmt.Errorf("take over %s: %w", o.Dir, err)
	}
	if cl.fd >= 0 {
		s.fd = cl.fd
		s.Took = true
		if err := s.resume(cl.init, o); err != nil {
			return nil, err
		}
	} else if err := s.mount(o); err != nil {
		return nil, err
	}
	n := o.Readers
	if n <= 0 {
		n = 4
	}
	for range n {
		s.readers.Go(s.readLoop)
	}
	go func() {
		s.readers.Wait()
		close(s.done)
	}()
	if s.Took {
		// Requests the old daemon read sit in the kernel's processing
		// queue: put them back on the pending one, for the readers above.
		if err := notifyResend(s.fd); err != nil {
			s.log.Error("ask the kernel to resend the requests in flight; they wait until interrupted", "err", err)
		}
		s.TookAt = time.Now()
	}
	return s, nil
}

// resume takes over a connection another daemon answered INIT on: the
// INIT request is replayed into the protocol server, which learns from it
// what the kernel and the first daemon agreed; the answer is not sent.
func (s *Server) resume(in *Init, o Options) error {
	if in == nil {
		// The daemon before died between mounting and answering INIT: the
		// kernel resends it with the rest.
		if err := notifyResend(s.fd); err != nil {
			return fmt.Errorf("take over %s: %w", s.dir, err)
		}
		return s.answerInit(o)
	}
	if in.Generation != o.Generation {
		return fmt.Errorf("take over %s: the kernel holds node ids of a tree with generation %08x, this daemon serves %08x: "+
			"another image, or one numbered otherwise; not answering for them (unmount, then mount again)", s.dir, in.Generation, o.Generation)
	}
	out := make([]byte, 4096)
	n, st := s.ps.HandleRequest([][]byte{in.Request}, [][]byte{out})
	if !st.Ok() || n < 16 {
		return fmt.Errorf("take over %s: replay INIT: %v", s.dir, st)
	}
	if status := int32(binary.LittleEndian.Uint32(out[4:8])); status != 0 {
		return fmt.Errorf("take over %s: replayed INIT answered %d", s.dir, status)
	}
	if len(in.Reply) > 16 && string(out[16:n]) != string(in.Reply[16:]) {
		// The kernel keeps what the first daemon agreed; a binary that
		// would agree otherwise (other capabilities) still parses as that
		// one did for the requests read-only serving gets.
		s.log.Warn("this daemon would answer INIT otherwise than the one that mounted; serving on what the kernel agreed", "path", s.dir)
	}
	s.init = in
	return nil
}

// mount opens /dev/fuse, mounts it at o.Dir, puts the fd with the holder
// and answers INIT.
func (s *Server) mount(o Options) error {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mount %s: open /dev/fuse: %w", o.Dir, err)
	}
	flags := uintptr(unix.MS_RDONLY)
	if o.Writable {
		flags = 0
	}
	if !o.Suid {
		flags |= unix.MS_NOSUID
	}
	if !o.Dev {
		flags |= unix.MS_NODEV
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,default_permissions", fd)
	if o.AllowOther {
		data += ",allow_other"
	}
	source := o.Source
	if source == "" {
		source = "ocifs"
	}
	if err := unix.Mount(source, o.Dir, "fuse.ocifs", flags, data); err != nil {
		unix.Close(fd)
		return fmt.Errorf("mount %s: %w", o.Dir, err)
	}
	s.fd = fd
	if _, err := s.cl.request(message{Op: opPut}, fd); err != nil {
		_ = unix.Unmount(o.Dir, unix.MNT_DETACH)
		unix.Close(fd)
		return fmt.Errorf("mount %s: give the connection to the holder: %w", o.Dir, err)
	}
	if err := s.answerInit(o); err != nil {
		_ = unix.Unmount(o.Dir, unix.MNT_DETACH)
		return err
	}
	return nil
}

// answerInit reads the kernel's INIT, saves the exchange with the holder,
// then answers it.
func (s *Server) answerInit(o Options) error {
	buf := make([]byte, bufSize)
	for {
		n, err := unix.Read(s.fd, buf)
		switch {
		case err == unix.EINTR || err == unix.EAGAIN || err == unix.ENOENT:
			continue
		case err != nil:
			return fmt.Errorf("mount %s: read INIT: %w", o.Dir, err)
		case n < 40 || binary.LittleEndian.Uint32(buf[4:8]) != opcodeInit:
			return fmt.Errorf("mount %s: the kernel's first request is not INIT", o.Dir)
		}
		req := append([]byte(nil), buf[:n]...)
		out := make([]byte, 4096)
		m, st := s.ps.HandleRequest([][]byte{req}, [][]byte{out})
		if !st.Ok() {
			return fmt.Errorf("mount %s: answer INIT: %v", o.Dir, st)
		}
		in := &Init{Request: req, Reply: append([]byte(nil), out[:m]...), Generation: o.Generation, Ref: o.Ref}
		if _, err := s.cl.request(message{Op: opInit, Init: in}, -1); err != nil {
			return fmt.Errorf("mount %s: give INIT to the holder: %w", o.Dir, err)
		}
		s.init = in
		if _, err := unix.Write(s.fd, out[:m]); err != nil {
			return fmt.Errorf("mount %s: answer INIT: %w", o.Dir, err)
		}
		return nil
	}
}

// opcodeInit is FUSE_INIT; notifyResendCode FUSE_NOTIFY_RESEND.
const (
	opcodeInit       = 26
	notifyResendCode = 7
	// resendBit marks the unique of a request the kernel resent.
	resendBit = 1 << 63
)

// notifyResend writes FUSE_NOTIFY_RESEND: the kernel moves every request
// read and not answered back to the pending queue, their unique with bit
// 63 set.
func notifyResend(fd int) error {
	var h [16]byte
	binary.LittleEndian.PutUint32(h[0:4], 16)
	binary.LittleEndian.PutUint32(h[4:8], notifyResendCode)
	if _, err := unix.Write(fd, h[:]); err != nil {
		return fmt.Errorf("FUSE_NOTIFY_RESEND (Linux 6.9 and later): %w", err)
	}
	return nil
}

func (s *Server) readLoop() {
	for {
		bp := s.bufs.Get().(*[]byte)
		n, err := unix.Read(s.fd, *bp)
		switch {
		case err == unix.EINTR || err == unix.EAGAIN || err == unix.ENOENT:
			s.bufs.Put(bp)
			continue
		case err != nil:
			s.bufs.Put(bp)
			if err != unix.ENODEV {
				s.log.Error("read a FUSE request; this reader stops", "path", s.dir, "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.stopping {
			// Read after the hand-over began: the next daemon gets it
			// again when it asks the kernel to resend.
			s.mu.Unlock()
			s.bufs.Put(bp)
			return
		}
		s.inflight.Add(1)
		s.mu.Unlock()
		go s.handle(bp, n)
	}
}

func (s *Server) handle(bp *[]byte, n int) {
	defer s.inflight.Done()
	req := (*bp)[:n]
	ob := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(ob)
	defer s.bufs.Put(bp)
	out := *ob
	var m int
	if n >= 40 && binary.LittleEndian.Uint32(req[4:8]) == opcodeInit && s.init != nil {
		// INIT again, resent: the old daemon had read it and saved the
		// exchange, and died before the kernel had the answer.
		m = copy(out, s.init.Reply)
		copy(out[8:16], req[8:16])
	} else {
		var st fuse.Status
		m, st = s.ps.HandleRequest([][]byte{req}, [][]byte{out})
		if !st.Ok() {
			s.log.Warn("malformed FUSE request", "path", s.dir, "status", st)
			return
		}
	}
	if m == 0 {
		return // FORGET and the like: no answer
	}
	if _, err := unix.Write(s.fd, out[:m]); err != nil && err != unix.ENOENT && err != unix.ENODEV {
		s.log.Warn("answer a FUSE request", "path", s.dir, "err", err)
	}
}

// Wait blocks until the connection ends (the mount is gone).
func (s *Server) Wait() { <-s.done }

// WaitEnd is Wait, for the callers of fs.Mount's.
func (s *Server) WaitEnd() error {
	s.Wait()
	return nil
}

// Unmount unmounts the file system (EBUSY while files are open) and waits
// for the connection to end.
func (s *Server) Unmount() error {
	var err error
	for try, delay := 0, 5*time.Millisecond; try < 5; try, delay = try+1, delay*2 {
		if err = syscall.Unmount(s.dir, 0); err != syscall.EBUSY {
			break
		}
		time.Sleep(delay)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", s.dir, err)
	}
	s.Wait()
	return nil
}

// stopWait bounds how long Stop waits for the requests being answered: one
// stuck on an unreachable registry must not hold up a hand-over, and the
// next daemon is resent whatever is left unanswered.
const stopWait = 2 * time.Second

// Stop stops reading requests and waits (up to stopWait) for those being
// answered, for a hand-over: the connection lives on in the holder, and
// what was read after Stop began, or not answered by then, is resent to
// the next daemon.
func (s *Server) Stop() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopWait):
		s.log.Warn("handing over with requests still being answered; the next daemon answers them again", "path", s.dir)
	}
}

type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Debug(string(p))
	return len(p), nil
}
