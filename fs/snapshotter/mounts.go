package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
)

// parentDir is one committed snapshot below a mount.
type parentDir struct {
	id string
	// lower is the path given to overlayfs: always snapshots/<id>/fs,
	// which for a remote snapshot is a symlink to its layer's directory.
	lower string
	// dir is the snapshot's tree itself: the layer's directory for a
	// remote snapshot, else lower.
	dir string
}

// Mounts returns the mounts of the active or view snapshot key, as
// containerd's overlayfs snapshotter makes them: with no parent a bind
// mount of its own directory; a view of one parent a read-only bind mount
// of that parent's tree; otherwise an overlay with the parents as lower
// directories, nearest first, and for an active snapshot its upper and
// work directories.
//
// A remote parent's tree is asked of [Layers.Dir] on every call (after a
// restart that sets the layer up again). Its lower directory is given as
// snapshots/<id>/fs, a symlink to that tree which overlayfs follows at
// mount time, so that every lower directory sits under one directory:
// when the options outgrow a page, containerd's mount code (the shim's,
// 1.6 and 2.x alike) then mounts from that directory with relative lower
// paths; with lower directories scattered over two trees it cannot
// shorten them and the mount fails.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	id, kind, chain, err := s.chain(ctx, key)
	if err != nil {
		return nil, err
	}
	parents := make([]parentDir, 0, len(chain))
	for _, c := range chain {
		p := parentDir{id: c.id, lower: s.upperPath(c.id), dir: s.upperPath(c.id)}
		if isRemote(c.labels) {
			if p.dir, err = s.layerDir(ctx, c); err != nil {
				return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
			}
		}
		parents = append(parents, p)
	}

	if len(parents) == 0 {
		mode := "rw"
		if kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: s.upperPath(id), Options: []string{mode, "rbind"}}}, nil
	}
	if kind == snapshots.KindView && len(parents) == 1 {
		return []mount.Mount{{Type: "bind", Source: parents[0].dir, Options: []string{"ro", "rbind"}}}, nil
	}
	var options []string
	if kind == snapshots.KindActive {
		options = append(options, "workdir="+s.workPath(id), "upperdir="+s.upperPath(id))
	}
	lowers := make([]string, len(parents))
	for i, p := range parents {
		lowers[i] = p.lower
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, s.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}, nil
}

// chained is one committed snapshot below another.
type chained struct {
	id, name string
	labels   map[string]string
}

// chain returns the id and kind of the active or view snapshot key and
// its parents, nearest first, in one read transaction.
func (s *Snapshotter) chain(ctx context.Context, key string) (id string, kind snapshots.Kind, parents []chained, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		sn, err := storage.GetSnapshot(ctx, key)
		if err != nil {
			return fmt.Errorf("mounts of snapshot %s: %w", key, err)
		}
		id, kind = sn.ID, sn.Kind
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return fmt.Errorf("mounts of snapshot %s: %w", key, err)
		}
		for p := info.Parent; p != ""; p = info.Parent {
			var pid string
			if pid, info, _, err = storage.GetInfo(ctx, p); err != nil {
				return fmt.Errorf("mounts of snapshot %s: parent %s: %w", key, p, err)
			}
			parents = append(parents, chained{id: pid, name: p, labels: info.Labels})
		}
		if len(parents) != len(sn.ParentIDs) {
			return fmt.Errorf("mounts of snapshot %s: %d parents by name, %d by id: %w", key, len(parents), len(sn.ParentIDs), errdefs.ErrDataLoss)
		}
		return nil
	})
	return id, kind, parents, err
}

// layerDir asks Layers for the tree of the remote snapshot c and points
// its fs/ at it.
func (s *Snapshotter) layerDir(ctx context.Context, c chained) (string, error) {
	if s.layers == nil {
		return "", fmt.Errorf("snapshot %s (id %s) is a remote layer of %s, and no lazy layer source is configured", c.name, c.id, c.labels[LabelRemote])
	}
	dir, err := s.layers.Dir(ctx, c.id, c.labels)
	if err != nil {
		return "", fmt.Errorf("layer %s of %s (snapshot %s, id %s): %w", c.labels[LabelLayer], c.labels[LabelRemote], c.name, c.id, err)
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("layer %s of %s (snapshot %s, id %s): layer source gave directory %q, not an absolute path", c.labels[LabelLayer], c.labels[LabelRemote], c.name, c.id, dir)
	}
	if err := s.link(c.id, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// linkSeq makes the temporary names of link unique within the process.
var linkSeq atomic.Uint64

// link makes snapshots/<id>/fs a symlink to dir, replacing an (empty)
// directory or a symlink elsewhere; concurrent calls are safe, each
// replacing the link whole with rename(2).
func (s *Snapshotter) link(id, dir string) error {
	p := s.upperPath(id)
	if cur, err := os.Readlink(p); err == nil && cur == dir {
		return nil
	}
	tmp := p + ".link-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(linkSeq.Add(1), 10)
	if err := os.Symlink(dir, tmp); err != nil {
		return fmt.Errorf("link snapshot %s to its layer: %w", id, err)
	}
	err := os.Rename(tmp, p)
	if err != nil {
		// fs/ is still the directory of the active snapshot (rename(2)
		// puts no symlink over a directory): it must be empty.
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = rerr
		} else {
			err = os.Rename(tmp, p)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("link snapshot %s to its layer: %w", id, err)
	}
	return nil
}

// unlink makes snapshots/<id>/fs an empty directory again, undoing link.
func (s *Snapshotter) unlink(id string) error {
	p := s.upperPath(id)
	if _, err := os.Readlink(p); err != nil {
		return nil // not a link
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("unlink snapshot %s: %w", id, err)
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		return fmt.Errorf("unlink snapshot %s: %w", id, err)
	}
	return nil
}

// ServeAgain serves the remote snapshot of storage id id again, as a mount
// of it would ([Layers.Dir]): for a layer mount another daemon answered
// before this one (a takeover), whose kernel names the layer's nodes by
// the id. An id that is no committed remote snapshot is an error.
func (s *Snapshotter) ServeAgain(ctx context.Context, id string) error {
	var c chained
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		name, ok := ids[id]
		if !ok {
			return fmt.Errorf("no snapshot has id %s: %w", id, errdefs.ErrNotFound)
		}
		_, info, _, err := storage.GetInfo(ctx, name)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindCommitted || !isRemote(info.Labels) {
			return fmt.Errorf("snapshot %s (id %s) is no committed remote layer: %w", name, id, errdefs.ErrNotFound)
		}
		c = chained{id: id, name: name, labels: info.Labels}
		return nil
	})
	if err != nil {
		return fmt.Errorf("serve snapshot id %s again: %w", id, err)
	}
	_, err = s.layerDir(ctx, c)
	return err
}
