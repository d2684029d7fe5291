package store

// The store served by a raw FUSE protocol server, for a connection another
// daemon may take over (fs/takeover): the ids of the store's own nodes and
// the slots of the layers are kept in a file (assign.go), so the next
// daemon answers for the ids the kernel holds.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fs"
)

// AssignmentsFile is the name of the file under the state directory that
// keeps a raw store's node ids and slots.
const AssignmentsFile = "store-ids.jsonl"

// NewRaw returns a store for the mount at dir that it does not mount: it
// is served by the file system [Store.Raw] returns, on a connection its
// caller answers (a takeover.Server, which mounts, or takes over the
// mount another daemon answered). Requests wait until [Store.StartRaw]
// has read the ids of the store's nodes and the slots of its layers.
// Passthrough is off (a backing id belongs to its daemon).
func NewRaw(ctx context.Context, dir string, opts Options) (*Store, error) {
	s, err := newStore(ctx, dir, opts)
	if err != nil {
		return nil, err
	}
	s.trees, s.started = map[uint64]*fs.RawFS{}, make(chan struct{})
	return s, nil
}

// StartRaw reads the ids and slots a raw store gave (stateDir/
// store-ids.jsonl, which must be private to this mount), then answers
// requests; each new id or slot is written there and fsynced before the
// kernel hears of it, so that the next daemon on the same stateDir names
// the same nodes by them. fresh (a connection this daemon mounted: the
// kernel holds no id yet) starts the file afresh. Call it once the daemon
// holds the connection: the daemon before it writes the file until then.
func (s *Store) StartRaw(stateDir string, fresh bool) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("layer store state: %w", err)
	}
	path := filepath.Join(stateDir, AssignmentsFile)
	if fresh {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("layer store ids: %w", err)
		}
	}
	a, err := openAssignments(path)
	if err != nil {
		return err
	}
	s.assign = a
	close(s.started)
	return nil
}

// PrepareRawMount makes ready the mountpoint of a raw store its caller
// mounts afresh (never one being taken over: a look at a mount whose
// daemon is being replaced waits for the replacement): a mount a dead
// daemon without a holder left is detached, the directory created.
func (s *Store) PrepareRawMount() error { return s.prepareMountpoint() }

// SetServer names what serves a raw store's connection, for Unmount to
// wait on.
func (s *Store) SetServer(srv interface{ Wait() }) { s.server = srv }

// Raw returns the raw file system of a store from [NewRaw].
func (s *Store) Raw() fuse.RawFileSystem {
	return &storeRaw{RawFileSystem: fuse.NewDefaultRawFileSystem(), s: s}
}

// storeRaw answers the store's requests: slot 0 holds the store's own
// nodes, named by their path in the assignments (rnode), every other slot
// a layer's diff/ tree.
type storeRaw struct {
	fuse.RawFileSystem
	s *Store
}

func (r *storeRaw) String() string { return "ocifs-store" }

// wait waits until the store has read its ids (StartRaw); false when the
// kernel interrupts the request first.
func (r *storeRaw) wait(cancel <-chan struct{}) bool {
	select {
	case <-r.s.started:
		return true
	case <-cancel:
		return false
	}
}

// The kinds of the store's own nodes.
const (
	kindDir   = iota // the root, or a directory of a reference's base64
	kindLayer        // <base64>/<digest>
	kindInfo         // <base64>/<digest>/info
	kindBlob         // <base64>/<digest>/blob
)

// rnode is one of the store's own nodes.
type rnode struct {
	id   uint64
	kind int
	b64  string // its reference's base64 (of a directory: its path)
	dg   digest.Digest
	path string
}

// parseNode classifies the slot-0 path p: a digest element (it has a ':',
// which base64 has not) ends the base64 part.
func parseNode(id uint64, p string) (rnode, bool) {
	n := rnode{id: id, path: p, kind: kindDir, b64: p}
	els := strings.Split(p, "/")
	for i, e := range els {
		if !strings.Contains(e, ":") {
			continue
		}
		dg, err := digest.Parse(e)
		if err != nil || i == 0 {
			return rnode{}, false
		}
		n.b64, n.dg = strings.Join(els[:i], "/"), dg
		switch rest := els[i+1:]; {
		case len(rest) == 0:
			n.kind = kindLayer
		case len(rest) == 1 && rest[0] == "info":
			n.kind = kindInfo
		case len(rest) == 1 && rest[0] == "blob":
			n.kind = kindBlob
		default:
			return rnode{}, false
		}
		return n, true
	}
	return n, true
}

// node returns the store's own node id; false for an id never given.
func (r *storeRaw) node(id uint64) (rnode, bool) {
	p, ok := r.s.assign.path(id)
	if !ok {
		return rnode{}, false
	}
	return parseNode(id, p)
}

// chanCtx is the context of one request: done when the kernel interrupts it.
type chanCtx struct {
	context.Context
	done <-chan struct{}
}

func (c chanCtx) Done() <-chan struct{} { return c.done }

func (c chanCtx) Err() error {
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}

func reqCtx(cancel <-chan struct{}) context.Context {
	return chanCtx{Context: context.Background(), done: cancel}
}

// layer loads n's image and finds its layer; ENOENT when it cannot be
// served (podman then pulls it itself).
func (r *storeRaw) layer(cancel <-chan struct{}, n rnode) (*image, int, fuse.Status) {
	ref := decodeRef(n.b64)
	if ref == "" {
		return nil, 0, fuse.ENOENT
	}
	img, err := r.s.acquire(reqCtx(cancel), ref)
	if err != nil {
		return nil, 0, fuse.ENOENT
	}
	i, ok := img.byDigest[n.dg]
	if !ok {
		r.s.log.Warn("layer not in the image: podman pulls it itself", "image", ref, "layer", n.dg)
		return nil, 0, fuse.ENOENT
	}
	return img, i, fuse.OK
}

// tree returns the raw file system of the layer in slot, loading its
// image when this daemon has not (the kernel holds its ids from another);
// nil for a slot never given or not servable (ESTALE).
func (r *storeRaw) tree(cancel <-chan struct{}, slot uint64) *fs.RawFS {
	r.s.mu.Lock()
	t := r.s.trees[slot]
	r.s.mu.Unlock()
	if t != nil {
		return t
	}
	k, ok := r.s.assign.key(slot)
	if !ok {
		return nil
	}
	img, err := r.s.acquire(reqCtx(cancel), k.ref)
	if err != nil || k.layer < 0 || k.layer >= len(img.views) {
		r.s.log.Warn("the kernel asks about a layer that cannot be served again: ESTALE", "image", k.ref, "layer", k.layer, "err", err)
		return nil
	}
	st, err := r.s.servedTree(img, k.layer)
	if err != nil {
		r.s.log.Warn("the kernel asks about a layer that cannot be served again: ESTALE", "image", k.ref, "layer", k.layer, "err", err)
		return nil
	}
	return r.rawTree(st)
}

// rawTree returns the raw file system of st, made once per slot.
func (r *storeRaw) rawTree(st *fs.ServedTree) *fs.RawFS {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	t := r.s.trees[st.Slot()]
	if t == nil {
		t = st.Raw(time.Hour)
		r.s.trees[st.Slot()] = t
	}
	return t
}

var stale = fuse.Status(syscall.ESTALE)

// entry fills out for the store's own node of id with attr.
func entry(out *fuse.EntryOut, id uint64) {
	out.NodeId = id
	out.SetEntryTimeout(time.Hour)
	out.SetAttrTimeout(time.Hour)
}

func (r *storeRaw) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	if h.NodeId>>32 != 0 {
		if t := r.tree(cancel, h.NodeId>>32); t != nil {
			return t.Lookup(cancel, h, name, out)
		}
		return stale
	}
	n, ok := r.node(h.NodeId)
	if !ok {
		return stale
	}
	switch n.kind {
	case kindDir:
		if dg, err := digest.Parse(name); err == nil {
			if _, _, st := r.layer(cancel, rnode{b64: n.b64, dg: dg}); !st.Ok() {
				return st
			}
			id, err := r.s.assign.id(n.b64 + "/" + dg.String())
			if err != nil {
				r.s.log.Error("keep a node id", "err", err)
				return fuse.EIO
			}
			entry(out, id)
			fillDir(&out.Attr, id)
			return fuse.OK
		}
		if name == "" || strings.Trim(name, b64Chars) != "" {
			return fuse.ENOENT
		}
		p := name
		if n.b64 != "" {
			p = n.b64 + "/" + name
		}
		id, err := r.s.assign.id(p)
		if err != nil {
			r.s.log.Error("keep a node id", "err", err)
			return fuse.EIO
		}
		entry(out, id)
		fillDir(&out.Attr, id)
		return fuse.OK
	case kindLayer:
		img, i, st := r.layer(cancel, n)
		if !st.Ok() {
			return st
		}
		switch name {
		case "diff":
			t, err := r.s.servedTree(img, i)
			if err != nil {
				r.s.log.Warn("layer not served", "image", img.ref, "layer", n.dg, "err", err)
				return fuse.EIO
			}
			r.rawTree(t).RootEntry(out)
			return fuse.OK
		case "info", "blob":
			id, err := r.s.assign.id(n.path + "/" + name)
			if err != nil {
				r.s.log.Error("keep a node id", "err", err)
				return fuse.EIO
			}
			entry(out, id)
			return r.fileAttr(cancel, rnode{id: id, kind: map[string]int{"info": kindInfo, "blob": kindBlob}[name], b64: n.b64, dg: n.dg}, &out.Attr)
		}
		return fuse.ENOENT
	}
	return fuse.ENOTDIR
}

// fileAttr fills a with the attributes of info or blob n.
func (r *storeRaw) fileAttr(cancel <-chan struct{}, n rnode, a *fuse.Attr) fuse.Status {
	img, i, st := r.layer(cancel, n)
	if !st.Ok() {
		return st
	}
	if n.kind == kindBlob {
		r.blob(img, i).fill(a, n.id)
		return fuse.OK
	}
	b, err := img.info(i)
	if err != nil {
		return fuse.EIO
	}
	(&memFile{data: b, id: n.id}).fill(a)
	return fuse.OK
}

// blob returns the blob file of layer i of img, made once.
func (r *storeRaw) blob(img *image, i int) *blobFile {
	img.smu.Lock()
	defer img.smu.Unlock()
	b := img.blobs[i]
	if b == nil {
		b = &blobFile{s: r.s, img: img, i: i}
		img.blobs[i] = b
	}
	return b
}

func (r *storeRaw) Forget(nodeID, nlookup uint64) {}

func (r *storeRaw) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	if in.NodeId>>32 != 0 {
		if t := r.tree(cancel, in.NodeId>>32); t != nil {
			return t.GetAttr(cancel, in, out)
		}
		return stale
	}
	n, ok := r.node(in.NodeId)
	if !ok {
		return stale
	}
	out.SetTimeout(time.Hour)
	switch n.kind {
	case kindDir:
		fillDir(&out.Attr, n.id)
	case kindLayer:
		fillDir(&out.Attr, n.id)
		out.Nlink = 3
	default:
		return r.fileAttr(cancel, n, &out.Attr)
	}
	return fuse.OK
}

func (r *storeRaw) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	if in.NodeId>>32 != 0 {
		if t := r.tree(cancel, in.NodeId>>32); t != nil {
			return t.Open(cancel, in, out)
		}
		return stale
	}
	n, ok := r.node(in.NodeId)
	switch {
	case !ok:
		return stale
	case n.kind == kindDir || n.kind == kindLayer:
		return fuse.Status(syscall.EISDIR)
	case in.Flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0:
		return fuse.EROFS
	}
	out.Fh = n.id
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (r *storeRaw) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if !r.wait(cancel) {
		return nil, fuse.EINTR
	}
	if in.NodeId>>32 != 0 {
		if t := r.tree(cancel, in.NodeId>>32); t != nil {
			return t.Read(cancel, in, buf)
		}
		return nil, stale
	}
	n, ok := r.node(in.NodeId)
	if !ok {
		return nil, stale
	}
	if n.kind != kindInfo && n.kind != kindBlob {
		return nil, fuse.Status(syscall.EISDIR)
	}
	img, i, st := r.layer(cancel, n)
	if !st.Ok() {
		return nil, fuse.EIO
	}
	buf = buf[:min(len(buf), int(in.Size))]
	off := int64(in.Offset)
	if n.kind == kindInfo {
		b, err := img.info(i)
		if err != nil {
			return nil, fuse.EIO
		}
		if off >= int64(len(b)) {
			return fuse.ReadResultData(nil), fuse.OK
		}
		return fuse.ReadResultData(b[off:min(int64(len(b)), off+int64(len(buf)))]), fuse.OK
	}
	f, err := r.blob(img, i).fetch(reqCtx(cancel))
	if err != nil {
		return nil, fuse.EIO
	}
	k, err := f.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		return nil, fuse.EIO
	}
	return fuse.ReadResultData(buf[:k]), fuse.OK
}

func (r *storeRaw) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {}

func (r *storeRaw) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

func (r *storeRaw) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	if !r.wait(cancel) {
		return nil, fuse.EINTR
	}
	if h.NodeId>>32 != 0 {
		if t := r.tree(cancel, h.NodeId>>32); t != nil {
			return t.Readlink(cancel, h)
		}
		return nil, stale
	}
	return nil, fuse.EINVAL
}

func (r *storeRaw) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if !r.wait(cancel) {
		return 0, fuse.EINTR
	}
	if h.NodeId>>32 != 0 {
		if t := r.tree(cancel, h.NodeId>>32); t != nil {
			return t.GetXAttr(cancel, h, attr, dest)
		}
		return 0, stale
	}
	return 0, fuse.ENOATTR
}

func (r *storeRaw) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if !r.wait(cancel) {
		return 0, fuse.EINTR
	}
	if h.NodeId>>32 != 0 {
		if t := r.tree(cancel, h.NodeId>>32); t != nil {
			return t.ListXAttr(cancel, h, dest)
		}
		return 0, stale
	}
	return 0, fuse.OK
}

func (r *storeRaw) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	if in.NodeId>>32 != 0 {
		if t := r.tree(cancel, in.NodeId>>32); t != nil {
			return t.OpenDir(cancel, in, out)
		}
		return stale
	}
	n, ok := r.node(in.NodeId)
	switch {
	case !ok:
		return stale
	case n.kind != kindDir && n.kind != kindLayer:
		return fuse.Status(syscall.ENOTDIR)
	}
	out.Fh = n.id
	return fuse.OK
}

func (r *storeRaw) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(cancel, in, out, false)
}

func (r *storeRaw) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(cancel, in, out, true)
}

// readDir lists nothing in a directory of base64 (as the bridge's store),
// and blob, diff, info in a layer's; without entries in a READDIRPLUS
// (the kernel looks them up).
func (r *storeRaw) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	if in.NodeId>>32 != 0 {
		t := r.tree(cancel, in.NodeId>>32)
		switch {
		case t == nil:
			return stale
		case plus:
			return t.ReadDirPlus(cancel, in, out)
		}
		return t.ReadDir(cancel, in, out)
	}
	n, ok := r.node(in.NodeId)
	switch {
	case !ok:
		return stale
	case n.kind == kindDir:
		return fuse.OK
	case n.kind != kindLayer:
		return fuse.Status(syscall.ENOTDIR)
	}
	ents := []fuse.DirEntry{{Name: "blob", Mode: syscall.S_IFREG}, {Name: "diff", Mode: syscall.S_IFDIR}, {Name: "info", Mode: syscall.S_IFREG}}
	fs.AddDirEntries(out, in.Offset, uint64(len(ents)), plus, func(i uint64) fuse.DirEntry { return ents[i] }, nil)
	return fuse.OK
}

func (r *storeRaw) ReleaseDir(in *fuse.ReleaseIn) {}

// Create of <layer>/use is podman's use of the layer: counted, answered
// ENOENT (containers/storage then knows the store counts), as every
// create in a layer's directory; elsewhere EROFS.
func (r *storeRaw) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	n, ok := r.node(in.NodeId)
	if in.NodeId>>32 != 0 || !ok || n.kind != kindLayer {
		return fuse.EROFS
	}
	if name == "use" {
		if ref := decodeRef(n.b64); ref != "" {
			r.s.use(layerKey(ref, n.dg), 1, ref, n.dg)
		}
	}
	return fuse.ENOENT
}

func (r *storeRaw) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

// Rmdir of a layer's directory is podman's release of a use: counted,
// answered ENOENT.
func (r *storeRaw) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if !r.wait(cancel) {
		return fuse.EINTR
	}
	n, ok := r.node(h.NodeId)
	if h.NodeId>>32 != 0 || !ok || n.kind != kindDir {
		return fuse.EROFS
	}
	dg, err := digest.Parse(name)
	ref := decodeRef(n.b64)
	if err == nil && ref != "" {
		r.s.use(layerKey(ref, dg), -1, ref, dg)
	}
	return fuse.ENOENT
}

func (r *storeRaw) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return fuse.OK
}
