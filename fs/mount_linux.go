package fs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/mountinfo"
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

	// NoPassthrough serves every read through the daemon, even of files
	// whose layer is extracted into the cache (which by default are handed
	// to the kernel with FUSE passthrough where it allows that).
	NoPassthrough bool

	// ExportHandles lets the kernel decode a file handle of a node it
	// holds no inode for (NFS export, open_by_handle_at of a handle from an
	// earlier mount of the image) by asking the daemon for the node id;
	// without it such a handle is ESTALE. Leave it off under overlayfs (as
	// --writable or a container runtime mounts it): on kernels with the
	// FUSE dentry epoch, the copied-up files whose origins it decodes fail
	// with ESTALE. See "Identity across daemons" in the package doc.
	ExportHandles bool
}

// Mount is a mounted image. Unmount or the kernel's unmount ends it.
type Mount struct {
	Dir    string
	server *fuse.Server
	im     *Image
	dev    string // "major:minor" of the mount, as mount tables list it
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
	if rootNode.Root.ID != fuse.FUSE_ROOT_ID {
		return nil, fmt.Errorf("mount %s: the tree's root is node %d, want %d", dir, rootNode.Root.ID, fuse.FUSE_ROOT_ID)
	}
	gen := im.generation()
	fo := &fusefs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true, // mode 000 files keep their mode
		// Node ids are the tree's numbers, and a file handle (node id,
		// generation) names the same node in every mount that numbers and
		// generates alike (identity.go). The root's generation stays 0:
		// the kernel resets any other.
		ExternalNodeID: true,
		RootStableAttr: &fusefs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
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
	if opts.ExportHandles {
		fo.MountOptions.ExtraCapabilities |= fuse.CAP_EXPORT_SUPPORT // the kernel asks LookupNode
	}
	if opts.Debug {
		fo.MountOptions.Logger = slog.NewLogLogger(im.log.Handler(), slog.LevelDebug)
	}
	fo.Logger = log.New(logWriter{im.log}, "", 0)
	im.passthrough = !opts.NoPassthrough
	root := &inode{im: im, n: rootNode.Root, early: im.Tree() == nil}
	server, err := fusefs.Mount(dir, root, fo)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	im.log.Info("mounted", "path", dir, "generation", fmt.Sprintf("%08x", gen))
	m := &Mount{Dir: dir, server: server, im: im}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err == nil {
		m.dev = fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	}
	return m, nil
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

// Unmount unmounts the file system (EBUSY while files are open) and waits
// for the kernel to end its FUSE connection, which it does once the
// requests in flight are answered, or returns ErrMountLingers as soon as a
// copy of the mount in another namespace is seen to keep it.
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
	if err := m.WaitEnd(); err != nil {
		return fmt.Errorf("unmount %s: %w", m.Dir, err)
	}
	return nil
}

// WaitEnd waits, once the mount is gone from this namespace, for the kernel
// to end the FUSE connection; it returns ErrMountLingers instead when a
// mount namespace of another process still holds a copy of the mount, which
// would keep the connection for as long as it lives.
func (m *Mount) WaitEnd() error {
	done := make(chan struct{})
	go func() {
		m.server.Wait()
		close(done)
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-t.C:
			if m.dev != "" && mountedElsewhere(m.dev) {
				return ErrMountLingers
			}
		}
	}
}

// mountedElsewhere reports whether any process's mount table lists a mount
// of device dev ("major:minor").
func mountedElsewhere(dev string) bool {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	seen := map[string]bool{}
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		ns, err := os.Readlink(filepath.Join("/proc", p.Name(), "ns", "mnt"))
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		ms, err := mountinfo.Read(filepath.Join("/proc", p.Name(), "mountinfo"))
		if err != nil {
			continue
		}
		for _, m := range ms {
			if m.Dev == dev {
				return true
			}
		}
	}
	return false
}

type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn(string(p))
	return len(p), nil
}
