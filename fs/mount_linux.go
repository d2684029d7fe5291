package fs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions configure a FUSE mount of an image. The zero value is a
// read-only, nosuid, nodev mount visible to root only.
type MountOptions struct {
	// AllowOther lets users other than root see the mount.
	AllowOther bool

	// Suid and Dev keep setuid bits and device nodes effective. They are off
	// by default: an image from a registry is untrusted.
	Suid bool
	Dev  bool

	// Debug logs every FUSE request through the image's logger at Debug.
	Debug bool

	// Timeout is how long the kernel may cache entries and attributes; the
	// image is immutable, so it is long. 0 means one hour.
	Timeout time.Duration
}

// Mount is a mounted image. Unmount or the kernel's unmount ends it.
type Mount struct {
	Dir    string
	server *fuse.Server
	im     *Image
}

// Mount serves the loaded image at dir with FUSE. It needs root and
// /dev/fuse: it mounts directly, without fusermount.
func (im *Image) Mount(ctx context.Context, dir string, opts MountOptions) (*Mount, error) {
	rootNode := im.Tree()
	if rootNode == nil && im.prog != nil {
		t, err := im.prog.lookup(ctx, "")
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", dir, err)
		}
		rootNode = &Tree{Root: t}
	}
	if rootNode == nil {
		return nil, fmt.Errorf("mount %s: image not loaded", dir)
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("mountpoint %s: %w", dir, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("mountpoint %s is not a directory", dir)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = time.Hour
	}
	flags := uintptr(syscall.MS_RDONLY)
	if !opts.Suid {
		flags |= syscall.MS_NOSUID
	}
	if !opts.Dev {
		flags |= syscall.MS_NODEV
	}
	fo := &fusefs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true, // mode 000 files keep their mode
		RootStableAttr:  &fusefs.StableAttr{Ino: rootNode.Root.ID},
		MountOptions: fuse.MountOptions{
			FsName:            "ocifs",
			Name:              "ocifs",
			AllowOther:        opts.AllowOther,
			DirectMountStrict: true,
			DirectMountFlags:  flags,
			Options:           []string{"ro", "default_permissions"},
			MaxReadAhead:      1 << 20,
			Debug:             opts.Debug,
		},
	}
	if opts.Debug {
		fo.MountOptions.Logger = slog.NewLogLogger(im.log.Handler(), slog.LevelDebug)
	}
	fo.Logger = log.New(logWriter{im.log}, "", 0)
	root := &inode{im: im, n: rootNode.Root, early: im.Tree() == nil}
	server, err := fusefs.Mount(dir, root, fo)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	im.log.Info("mounted", "path", dir)
	return &Mount{Dir: dir, server: server, im: im}, nil
}

// Wait blocks until the file system is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// ErrMountLingers is returned by [Mount.Unmount] when the mount is gone
// from this mount namespace but the kernel keeps its FUSE connection: a copy
// of the mount lives on in another mount namespace (one made while it was
// mounted, by a container runtime or `ip netns exec`). Closing the FUSE
// device, which the process does when it exits, ends that copy too (its
// readers get ENOTCONN).
var ErrMountLingers = errors.New("the mount lives on in another mount namespace")

// unmountGrace is how long Unmount waits for the kernel to end the FUSE
// connection after the unmount.
const unmountGrace = 2 * time.Second

// Unmount unmounts the file system (EBUSY while files are open) and waits
// for its requests to finish, at most unmountGrace: see [ErrMountLingers].
func (m *Mount) Unmount() error {
	var err error
	for try, delay := 0, 5*time.Millisecond; try < 5; try, delay = try+1, delay*2 {
		// The kernel may not have released the last file just closed.
		if err = syscall.Unmount(m.Dir, 0); err != syscall.EBUSY {
			break
		}
		time.Sleep(delay)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", m.Dir, err)
	}
	if !m.WaitFor(unmountGrace) {
		return fmt.Errorf("unmount %s: %w", m.Dir, ErrMountLingers)
	}
	return nil
}

// WaitFor waits at most d for the file system's connection to end, and
// reports whether it did.
func (m *Mount) WaitFor(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		m.server.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn(string(p))
	return len(p), nil
}
