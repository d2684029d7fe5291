package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// Labels containerd's CRI plugin puts on the Prepare of each layer's unpack
// when label passing is on (see fs/snapshotter/critest for what 1.6 and 2.4
// send). LabelSnapshotRef (the layer's chain ID) comes with every unpack.
const (
	LabelImageRef       = "containerd.io/snapshot/cri.image-ref"
	LabelManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
	LabelLayerDigest    = "containerd.io/snapshot/cri.layer-digest"
	LabelImageLayers    = "containerd.io/snapshot/cri.image-layers"
)

// Labels of our own on a committed remote snapshot: they mark it remote and
// pin what [Layers] needs to find the layer again after a restart. They
// belong to the snapshotter: Update keeps them whatever it is asked.
const (
	// LabelRemote is the image the layer was served from, pinned to its
	// manifest: "<image ref without digest>@<manifest digest>".
	LabelRemote = "io.ocifs.remote"
	// LabelLayer is the layer's (compressed) digest in that manifest.
	LabelLayer = "io.ocifs.layer"
)

// ocifsLabelPrefix starts every label that belongs to the snapshotter.
const ocifsLabelPrefix = "io.ocifs."

// DefaultRoot is where [Options.Root] points when empty.
const DefaultRoot = "/var/lib/ocifs/snapshotter"

// Layers serves image layers lazily, each as a directory holding the layer's
// own tree in overlayfs's format (what containerd's applier would have
// written into an empty upper directory; see /work/notes/runtime-design.md).
// Snapshots are named by id, containerd's storage id of the snapshot: a
// decimal number, stable for the snapshot's life and across restarts.
// Its methods are called concurrently, never while the metadata store is
// locked: they may take as long as fetching a manifest takes.
type Layers interface {
	// Prepare makes the layer the labels describe (containerd's Prepare
	// labels: snapshot.ref and the cri.* ones) available as snapshot id.
	// An error means the layer cannot be served lazily: containerd then
	// downloads and applies it, and the error is the reason logged.
	Prepare(ctx context.Context, id string, labels map[string]string) (Layer, error)
	// Dir returns the directory of snapshot id, which Prepare made earlier,
	// in this process or before a restart; labels are the committed
	// snapshot's (Prepare's and [LabelRemote], [LabelLayer]). It is asked
	// each time a mount needs the layer, so it may set the layer up again.
	Dir(ctx context.Context, id string, labels map[string]string) (string, error)
	// Release drops snapshot id. Releasing an id that is not held (a
	// local snapshot, one released already, one Prepare refused) is no
	// error: the snapshotter releases every id it removes.
	Release(ctx context.Context, id string) error
}

// Layer is a layer [Layers.Prepare] serves.
type Layer struct {
	// Dir holds the layer's tree.
	Dir string
	// Usage is what the layer takes once complete (its uncompressed
	// size and inode count); Usage of the snapshot reports it.
	Usage snapshots.Usage
}

// Options configures [Open]. The zero value works: snapshots under
// [DefaultRoot], every layer applied by containerd.
type Options struct {
	// Root holds metadata.db (containerd's snapshot metadata store) and
	// snapshots/<id>/ with each snapshot's fs/ (its tree: the upper
	// directory, or a symlink to the layer's directory for a remote one)
	// and work/. Empty means DefaultRoot.
	Root string
	// Layers serves layers lazily. Nil means none is: each layer's
	// Prepare falls back (logged and counted) and containerd applies it.
	Layers Layers
	// Logger receives a Warn line per fallback and a Debug line per
	// remote snapshot committed; nil discards them.
	Logger *slog.Logger
}

// Snapshotter is containerd's snapshots.Snapshotter over overlayfs, with
// layers that [Layers] serves lazily committed as remote snapshots. Its
// metadata is containerd's own bbolt MetaStore, so List filters, parent
// chains, Commit and Remove behave exactly as in containerd's overlayfs
// snapshotter. It is safe for concurrent use.
type Snapshotter struct {
	root    string
	layers  Layers
	log     *slog.Logger
	ms      *storage.MetaStore
	options []string // appended to every overlay mount

	remote, fallback atomic.Int64
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// openTimeout bounds the wait for the metadata database's lock: another
// snapshotter on the same root holds it as long as it runs.
const openTimeout = time.Second

// Open opens (or creates) the snapshotter's root and its metadata store.
// It fails when another snapshotter has the same root open.
func Open(ctx context.Context, opts Options) (*Snapshotter, error) {
	root := opts.Root
	if root == "" {
		root = DefaultRoot
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open snapshotter: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("open snapshotter: %w", err)
	}
	db := filepath.Join(root, "metadata.db")
	ms, err := storage.NewMetaStore(db, func(o *bolt.Options) error {
		o.Timeout = openTimeout
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open snapshotter metadata %s: %w", db, err)
	}
	// The store opens the database on first use; open it now, so that a
	// second snapshotter on this root fails here rather than on a call.
	if err := ms.WithTransaction(ctx, false, func(context.Context) error { return nil }); err != nil {
		return nil, fmt.Errorf("open snapshotter metadata %s (is another snapshotter using %s?): %w", db, root, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Snapshotter{root: root, layers: opts.Layers, log: log, ms: ms}
	// As containerd's overlayfs snapshotter: no inode index, which would
	// tie the upper to these exact lower directories.
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
		s.options = append(s.options, "index=off")
	}
	return s, nil
}

// Close closes the metadata store; the snapshots stay on disk.
func (s *Snapshotter) Close() error { return s.ms.Close() }

// Stats are counts since [Open].
type Stats struct {
	// Remote counts layers committed as remote snapshots.
	Remote int64
	// Fallback counts layers containerd had to download and apply itself
	// because [Layers] could not serve them (or none was configured, or
	// containerd passed no cri.* labels).
	Fallback int64
}

// Stats returns the counts so far.
func (s *Snapshotter) Stats() Stats {
	return Stats{Remote: s.remote.Load(), Fallback: s.fallback.Load()}
}

func (s *Snapshotter) snapshotDir(id string) string { return filepath.Join(s.root, "snapshots", id) }
func (s *Snapshotter) upperPath(id string) string   { return filepath.Join(s.snapshotDir(id), "fs") }
func (s *Snapshotter) workPath(id string) string    { return filepath.Join(s.snapshotDir(id), "work") }

// isRemote reports whether a snapshot's labels mark it remote.
func isRemote(labels map[string]string) bool { return labels[LabelRemote] != "" }

// Stat returns the info of the snapshot named or keyed key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes a snapshot's labels as containerd's metadata store does,
// except the snapshotter's own (io.ocifs.*): they stay as they are, since
// containerd sends only the labels it passes on (Update with no field
// paths replaces all of them) and a remote snapshot without them could
// not be found again after a restart.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, old, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		info.Labels = maps.Clone(info.Labels)
		var paths []string
		whole := len(fieldpaths) == 0
		for _, p := range fieldpaths {
			switch {
			case strings.HasPrefix(p, "labels."+ocifsLabelPrefix):
				// ours: not to be changed
			case p == "labels":
				whole = true
				paths = append(paths, p)
			default:
				paths = append(paths, p)
			}
		}
		if len(fieldpaths) > 0 && len(paths) == 0 {
			newInfo = old
			return nil
		}
		if whole {
			for k, v := range old.Labels {
				if strings.HasPrefix(k, ocifsLabelPrefix) {
					if info.Labels == nil {
						info.Labels = map[string]string{}
					}
					info.Labels[k] = v
				}
			}
			for k := range info.Labels {
				if _, ok := old.Labels[k]; !ok && strings.HasPrefix(k, ocifsLabelPrefix) {
					delete(info.Labels, k)
				}
			}
		}
		newInfo, err = storage.UpdateInfo(ctx, info, paths...)
		return err
	})
	return newInfo, err
}

// Usage returns what the snapshot key takes: for an active snapshot the
// disk usage of its upper directory now; for a committed one what was
// recorded at commit (its upper's disk usage, or what [Layers] reported
// for a remote layer).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("usage of snapshot %s: %w", key, err)
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Prepare creates an active snapshot key over parent. When the labels name
// a layer of an image (containerd's unpack of it) and [Layers] serves it,
// the snapshot is committed under the layer's chain ID (the
// containerd.io/snapshot.ref label) at once and Prepare answers
// ErrAlreadyExists, which tells containerd the layer is there: it neither
// downloads nor applies it. When Layers cannot, one Warn line says why,
// the fallback counter goes up and Prepare returns the mounts for
// containerd to apply the layer into.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	target := base.Labels[snapshots.LabelSnapshotRef]
	if target == "" {
		return s.create(ctx, snapshots.KindActive, key, parent, base.Labels)
	}
	if err := s.existing(ctx, target, parent); err != nil {
		return nil, err
	}
	m, err := s.create(ctx, snapshots.KindActive, key, parent, base.Labels)
	if err != nil {
		return nil, err
	}
	return s.prepareRemote(ctx, key, parent, target, base.Labels, m)
}

// existing answers ErrAlreadyExists when the remote snapshot target is
// committed over parent already (another namespace pulled the image):
// containerd's metadata store finds it by its labels.
func (s *Snapshotter) existing(ctx context.Context, target, parent string) error {
	var info snapshots.Info
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		_, info, _, err = storage.GetInfo(ctx, target)
		return err
	})
	switch {
	case errdefs.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case info.Kind == snapshots.KindCommitted && info.Parent == parent && isRemote(info.Labels):
		return fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	}
	// Taken by something else: prepareRemote's commit finds out and falls
	// back.
	return nil
}

// prepareRemote asks Layers for the layer of the active snapshot key and
// commits it as target, or falls back to m.
func (s *Snapshotter) prepareRemote(ctx context.Context, key, parent, target string, labels map[string]string, m []mount.Mount) ([]mount.Mount, error) {
	id, _, err := s.idOf(ctx, key)
	if err != nil {
		return nil, err
	}
	layer := labels[LabelLayerDigest]
	pinned, err := remoteLabels(labels)
	if err == nil && s.layers == nil {
		err = errors.New("no lazy layer source is configured")
	}
	var l Layer
	if err == nil {
		l, err = s.layers.Prepare(ctx, id, labels)
		if err == nil && !filepath.IsAbs(l.Dir) {
			err = fmt.Errorf("layer source gave directory %q, not an absolute path", l.Dir)
		}
	}
	if err == nil {
		err = s.link(id, l.Dir)
	}
	if err == nil {
		committed := maps.Clone(labels)
		maps.Copy(committed, pinned)
		err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
			_, err := storage.CommitActive(ctx, key, target, l.Usage, snapshots.WithLabels(committed))
			return err
		})
		if err == nil {
			s.remote.Add(1)
			s.log.Debug("remote snapshot committed", "layer", layer, "snapshot", target, "id", id, "path", l.Dir)
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		if errdefs.IsAlreadyExists(err) && errdefs.IsAlreadyExists(s.existing(ctx, target, parent)) {
			// Another Prepare of the same layer (a pull in another
			// namespace) committed it first: use that one.
			if rerr := s.Remove(ctx, key); rerr != nil {
				s.log.Warn("remove a snapshot prepared twice", "layer", layer, "id", id, "err", rerr)
			}
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		err = fmt.Errorf("commit as %s: %w", target, err)
		if uerr := s.unlink(id); uerr != nil {
			// The active snapshot's fs/ is not a plain directory again:
			// containerd cannot apply into it.
			return nil, errors.Join(err, uerr)
		}
	}
	if rerr := s.release(ctx, id); rerr != nil {
		s.log.Warn("release a layer that fell back", "layer", layer, "id", id, "err", rerr)
	}
	s.fallback.Add(1)
	s.log.Warn("layer not served lazily: containerd downloads and applies it", "layer", layer, "image", labels[LabelImageRef], "snapshot", target, "err", err)
	return m, nil
}

// remoteLabels are the labels that pin a remote snapshot, made from the
// cri.* labels; an error says which are missing.
func remoteLabels(labels map[string]string) (map[string]string, error) {
	ref, manifest, layer := labels[LabelImageRef], labels[LabelManifestDigest], labels[LabelLayerDigest]
	if ref == "" || manifest == "" || layer == "" {
		return nil, errors.New("containerd passed no cri.* labels (CRI's disable_snapshot_annotations = false, or the proxy's enable_remote_snapshot_annotations export on containerd 2.1+ transfer pulls)")
	}
	// A reference pinned to an index digest names another manifest than
	// the one the layer is in: pin the manifest.
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	return map[string]string{LabelRemote: ref + "@" + manifest, LabelLayer: layer}, nil
}

// View creates a read-only snapshot key over parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	return s.create(ctx, snapshots.KindView, key, parent, base.Labels)
}

// create makes the snapshot's directory and its metadata in one
// transaction, as containerd's overlayfs snapshotter does, and returns
// its mounts.
func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, labels map[string]string) (_ []mount.Mount, err error) {
	var tmp, dir string
	defer func() {
		if err == nil {
			return
		}
		for _, d := range []string{tmp, dir} {
			if d == "" {
				continue
			}
			if rerr := os.RemoveAll(d); rerr != nil {
				s.log.Warn("remove the directory of a snapshot not created", "path", d, "err", rerr)
			}
		}
	}()
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		tmp, err = os.MkdirTemp(filepath.Join(s.root, "snapshots"), "new-")
		if err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if err := os.Mkdir(filepath.Join(tmp, "fs"), 0o755); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if kind == snapshots.KindActive {
			if err := os.Mkdir(filepath.Join(tmp, "work"), 0o711); err != nil {
				return fmt.Errorf("create snapshot %s: %w", key, err)
			}
		}
		sn, err := storage.CreateSnapshot(ctx, kind, key, parent, snapshots.WithLabels(labels))
		if err != nil {
			return err
		}
		dir = s.snapshotDir(sn.ID)
		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		tmp = ""
		return nil
	})
	if err != nil {
		return nil, err
	}
	m, err := s.Mounts(ctx, key)
	if err != nil {
		// A remote parent's layer cannot be had: containerd gets no
		// snapshot, so none is left behind.
		if rerr := s.Remove(ctx, key); rerr != nil {
			s.log.Warn("remove a snapshot whose mounts failed", "snapshot", key, "err", rerr)
		}
		return nil, err
	}
	return m, nil
}

// idOf returns the storage id and info of key.
func (s *Snapshotter) idOf(ctx context.Context, key string) (id string, info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, info, err
}

// Commit commits the active snapshot key as name, recording the disk
// usage of its upper directory.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return fmt.Errorf("commit snapshot %s: %w", key, err)
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(du), opts...); err != nil {
			return fmt.Errorf("commit snapshot %s as %s: %w", key, name, err)
		}
		return nil
	})
}

// Remove removes the snapshot key (it must have no children), its
// directory and every directory no snapshot owns any more, and releases
// their layers.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var orphans []string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove snapshot %s: %w", key, err)
		}
		orphans, err = s.orphans(ctx)
		return err
	}); err != nil {
		return err
	}
	// The metadata is gone: what follows only frees space, and a failure
	// is logged, not returned (Cleanup tries again).
	s.removeDirs(ctx, orphans)
	return nil
}

// Cleanup removes the directories no snapshot owns (left by a crash or a
// failed removal) and releases their layers.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var orphans []string
	// A write transaction: no snapshot can be created while the
	// directories are listed.
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		orphans, err = s.orphans(ctx)
		return err
	}); err != nil {
		return err
	}
	s.removeDirs(ctx, orphans)
	return nil
}

// orphans lists the names under snapshots/ that no snapshot's id names;
// it runs inside a transaction.
func (s *Snapshotter) orphans(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if _, ok := ids[e.Name()]; !ok {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// removeDirs removes snapshots/<name> for each name and releases each
// numeric one (a snapshot id) from Layers.
func (s *Snapshotter) removeDirs(ctx context.Context, names []string) {
	for _, name := range names {
		if err := os.RemoveAll(s.snapshotDir(name)); err != nil {
			s.log.Warn("remove snapshot directory", "path", s.snapshotDir(name), "err", err)
		}
		if _, err := strconv.ParseUint(name, 10, 64); err != nil {
			continue // a directory of a create that did not finish
		}
		if err := s.release(ctx, name); err != nil {
			s.log.Warn("release layer of removed snapshot", "id", name, "err", err)
		}
	}
}

func (s *Snapshotter) release(ctx context.Context, id string) error {
	if s.layers == nil {
		return nil
	}
	return s.layers.Release(ctx, id)
}

// Walk calls fn for every snapshot matching the filters (containerd's
// filter syntax: name, parent, kind, labels.KEY).
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}
