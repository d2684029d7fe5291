package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// Server serves a snapshotter as containerd.services.snapshots.v1.Snapshots
// over gRPC on a unix socket, for containerd's
//
//	[proxy_plugins.ocifs]
//	  type = "snapshot"
//	  address = "/run/ocifs/snapshotter.sock"
type Server struct {
	address string
	lock    *os.File // flock'ed for the server's life
	srv     *grpc.Server
	done    chan struct{}
	err     error // Serve's; set before done is closed
}

// probeTimeout bounds the dial that checks whether a daemon answers on a
// socket path.
const probeTimeout = time.Second

// Serve starts serving sn on the unix socket address (mode 0600). It
// refuses to start when another process serves on address or holds its
// lock file (address + ".lock"); a socket nobody answers on is a
// leftover of a daemon that died, and is replaced.
func Serve(address string, sn snapshots.Snapshotter) (*Server, error) {
	if address == "" {
		return nil, errors.New("serve snapshotter: no socket address")
	}
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, fmt.Errorf("serve snapshotter on %s: %w", address, err)
	}
	lock, err := os.OpenFile(address+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("serve snapshotter on %s: %w", address, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("serve snapshotter on %s: another ocifs snapshotter holds %s.lock", address, address)
		}
		return nil, fmt.Errorf("serve snapshotter on %s: lock: %w", address, err)
	}
	l, err := listen(address)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s := &Server{address: address, lock: lock, srv: grpc.NewServer(), done: make(chan struct{})}
	snapshotsapi.RegisterSnapshotsServer(s.srv, snapshotservice.FromSnapshotter(sn))
	go func() {
		s.err = s.srv.Serve(l)
		close(s.done)
	}()
	return s, nil
}

// listen removes a stale socket at address, refusing when something
// answers there or the path is not a socket, and listens with mode 0600.
func listen(address string) (net.Listener, error) {
	fi, err := os.Lstat(address)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("serve snapshotter on %s: %w", address, err)
	case fi.Mode().Type() != os.ModeSocket:
		return nil, fmt.Errorf("serve snapshotter on %s: it exists and is no socket (%s); remove it or choose another address", address, fi.Mode().Type())
	default:
		c, err := net.DialTimeout("unix", address, probeTimeout)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("serve snapshotter on %s: another daemon answers there; stop it or choose another address", address)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("serve snapshotter on %s: probe the existing socket: %w", address, err)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("serve snapshotter on %s: remove stale socket: %w", address, err)
		}
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, fmt.Errorf("serve snapshotter on %s: %w", address, err)
	}
	// With the usual umask 022 nobody but the owner could connect in the
	// moment before this (connect needs write permission).
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("serve snapshotter on %s: %w", address, err)
	}
	return l, nil
}

// Address is the socket path.
func (s *Server) Address() string { return s.address }

// Done is closed when the server has stopped serving.
func (s *Server) Done() <-chan struct{} { return s.done }

// Stop stops accepting calls and waits for those running to finish, until
// ctx ends; then it cuts the rest off. It removes the socket and the lock
// and returns the error serving ended with, if it was not the stop.
func (s *Server) Stop(ctx context.Context) error {
	graceful := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(graceful)
	}()
	select {
	case <-graceful:
	case <-ctx.Done():
		s.srv.Stop()
		<-graceful
	}
	<-s.done
	// grpc removes the socket file when its listener closes; what is
	// left is a socket another daemon could not have made while we held
	// the lock.
	err := s.err
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	if rerr := os.Remove(s.address); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	// The lock file stays (removing it would let a second daemon lock
	// another inode of the same name); closing it releases the lock.
	if cerr := s.lock.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return fmt.Errorf("stop snapshotter server on %s: %w", s.address, err)
	}
	return nil
}
