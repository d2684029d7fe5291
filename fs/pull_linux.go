package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/index"
)

// Pull writes the merged tree into dir, which must be empty or absent: the
// same result a full pull and unpack gives, without a FUSE mount. Every path
// written comes from the merged tree, whose names hold no "/" or "..", and
// dir starts empty, so no entry can reach outside dir: there is no symlink in
// any parent that Pull did not create as a directory itself.
func (im *Image) Pull(ctx context.Context, dir string) error {
	tree, err := im.WaitTree(ctx)
	if err != nil {
		return fmt.Errorf("pull into %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("pull into %s: %w", dir, err)
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return fmt.Errorf("pull into %s: %w", dir, err)
	} else if len(ents) > 0 {
		return fmt.Errorf("pull into %s: directory is not empty", dir)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, l := range im.layers {
		g.Go(func() error {
			if err := l.ensure(gctx); err != nil {
				return err
			}
			// Read files from the layer's extracted tree rather than span by span.
			l.setUrgent()
			l.unpack(gctx)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	p := &puller{im: im, ctx: ctx, links: map[*Node]string{}}
	if err := p.dir(dir, tree.Root); err != nil {
		return err
	}
	return nil
}

type puller struct {
	im    *Image
	ctx   context.Context
	links map[*Node]string // first path written for each hardlinked file
}

// dir writes the children of d into path, then d's own metadata, so that
// writing children does not disturb the directory's mtime or mode.
func (p *puller) dir(path string, d *Node) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	if err := p.im.refusedList(d); err != nil {
		return fmt.Errorf("pull %s: %w", path, err)
	}
	for _, name := range d.Names() {
		c := d.Child(name)
		cp := filepath.Join(path, name)
		if err := p.im.refusedNode(c); err != nil {
			return fmt.Errorf("pull %s: %w", cp, err)
		}
		if err := p.entry(cp, c); err != nil {
			return fmt.Errorf("pull %s: %w", cp, err)
		}
	}
	return p.meta(path, d)
}

func (p *puller) entry(path string, n *Node) error {
	if first, ok := p.links[n]; ok {
		return os.Link(first, path)
	}
	switch n.Type {
	case index.TypeDir:
		if err := unix.Mkdir(path, 0o700); err != nil {
			return err
		}
		return p.dir(path, n)
	case index.TypeReg:
		if err := p.file(path, n); err != nil {
			return err
		}
		if n.Nlink > 1 {
			p.links[n] = path
		}
	case index.TypeSymlink:
		if err := os.Symlink(n.Linkname, path); err != nil {
			return err
		}
	case index.TypeChar, index.TypeBlock, index.TypeFifo:
		mode := typeBits(n.Type)
		dev := unix.Mkdev(uint32(n.Devmajor), uint32(n.Devminor))
		if n.Type == index.TypeFifo {
			dev = 0
		}
		if err := unix.Mknod(path, mode|0o600, int(dev)); err != nil {
			return err
		}
		if n.Nlink > 1 {
			p.links[n] = path
		}
	}
	return p.meta(path, n)
}

func (p *puller) file(path string, n *Node) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if sp := p.im.sparseMap(n); sp != nil {
		// Only the data segments are written, each at its offset, and the
		// size set after: the holes stay holes, as GNU tar extracts them.
		r := readerAt{p.ctx, p.im, n}
		for _, s := range sp.Segments {
			if _, err := io.Copy(io.NewOffsetWriter(f, s.Off), io.NewSectionReader(r, s.Off, s.Len)); err != nil {
				return err
			}
		}
		if err := f.Truncate(n.Size); err != nil {
			return err
		}
	} else if _, err := io.Copy(f, p.im.Open(p.ctx, n)); err != nil {
		return err
	}
	return f.Close()
}

// meta sets owner, mode, xattrs and times, in the order that keeps each:
// chown clears setuid bits, so mode follows it; times come last.
func (p *puller) meta(path string, n *Node) error {
	if err := os.Lchown(path, int(n.UID), int(n.GID)); err != nil {
		return err
	}
	if n.Type != index.TypeSymlink {
		if err := unix.Chmod(path, n.Mode); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(n.Xattrs))
	for k := range n.Xattrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := unix.Lsetxattr(path, k, []byte(n.Xattrs[k]), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", k, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.ModTime.UnixNano()), unix.NsecToTimespec(n.ModTime.UnixNano())}
	if n.ModTime.IsZero() {
		now := unix.NsecToTimespec(time.Unix(0, 0).UnixNano())
		ts = []unix.Timespec{now, now}
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
}
