package podmantest

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// fakeStore serves a directory laid out by WriteImage as an additional
// layer store over FUSE, the way a store that takes part in
// containers/storage's use/release protocol must answer: creating a
// layer's "use" file and removing a layer's directory are recorded and
// answered ENOENT ("notification-aware", containers/storage's comment
// says), everything else is passed through to the directory. Every
// lookup and open is recorded too, with the kernel's caches off, so the
// events are what podman asked for.
type fakeStore struct {
	dir, mnt string
	server   *fuse.Server

	// mu guards everything below.
	mu     sync.Mutex
	events []storeEvent
	hidden map[string]bool // relative paths that answer ENOENT on lookup
}

// storeEvent is one request podman made of the store.
type storeEvent struct {
	// Op is "lookup", "open", "use" (create of <layer>/use) or
	// "release" (rmdir of <layer>).
	Op string
	// Path is relative to the store's root.
	Path string
}

func (e storeEvent) String() string { return e.Op + " " + e.Path }

// mountFakeStore mounts a fakeStore of dir at a fresh directory and
// unmounts it in t.Cleanup. Mount it before starting the podman that uses
// it: the mount must exist in the podman's namespace.
func mountFakeStore(t testing.TB, dir string) *fakeStore {
	t.Helper()
	return mountFakeStoreRO(t, dir, false)
}

// mountFakeStoreRO is mountFakeStore, with readOnly a read-only mount (the
// kernel then answers EROFS to the use file's create and to the release's
// rmdir without asking the store).
func mountFakeStoreRO(t testing.TB, dir string, readOnly bool) *fakeStore {
	t.Helper()
	fs := &fakeStore{dir: dir, mnt: t.TempDir(), hidden: map[string]bool{}}
	root := &fusefs.LoopbackRoot{Path: dir}
	root.NewNode = func(r *fusefs.LoopbackRoot, parent *fusefs.Inode, name string, st *syscall.Stat_t) fusefs.InodeEmbedder {
		return &storeNode{LoopbackNode: fusefs.LoopbackNode{RootData: r}, fs: fs}
	}
	rootNode := root.NewNode(root, nil, "", nil)
	root.RootNode = rootNode
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	root.Dev = uint64(st.Dev)
	zero := time.Duration(0)
	opts := &fusefs.Options{
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName:            "podmantest-store",
			Name:              "podmantest",
			AllowOther:        true,
			DirectMountStrict: true,
		},
	}
	if readOnly {
		opts.MountOptions.Options = []string{"ro"}
	}
	server, err := fusefs.Mount(fs.mnt, rootNode, opts)
	if err != nil {
		t.Fatalf("mount fake store: %v", err)
	}
	fs.server = server
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount fake store %s: %v", fs.mnt, err)
		}
	})
	return fs
}

func (fs *fakeStore) record(op, path string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.events = append(fs.events, storeEvent{op, path})
}

// Events returns the events from index from on.
func (fs *fakeStore) Events(from int) []storeEvent {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]storeEvent(nil), fs.events[min(from, len(fs.events)):]...)
}

// Len is the number of events so far.
func (fs *fakeStore) Len() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.events)
}

// Hide makes lookups of rel (relative to the store's root) answer ENOENT.
func (fs *fakeStore) Hide(rel string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.hidden[rel] = true
}

func (fs *fakeStore) isHidden(rel string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.hidden[rel]
}

// storeNode is one node of a fakeStore.
type storeNode struct {
	fusefs.LoopbackNode
	fs *fakeStore
}

var (
	_ fusefs.NodeLookuper = (*storeNode)(nil)
	_ fusefs.NodeOpener   = (*storeNode)(nil)
	_ fusefs.NodeCreater  = (*storeNode)(nil)
	_ fusefs.NodeRmdirer  = (*storeNode)(nil)
)

// rel is the node's path relative to the store's root.
func (n *storeNode) rel(name string) string {
	p := n.Path(n.Root())
	if name == "" {
		return p
	}
	if p == "" {
		return name
	}
	return p + "/" + name
}

func (n *storeNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	rel := n.rel(name)
	n.fs.record("lookup", rel)
	if n.fs.isHidden(rel) {
		return nil, syscall.ENOENT
	}
	return n.LoopbackNode.Lookup(ctx, name, out)
}

func (n *storeNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	n.fs.record("open", n.rel(""))
	return n.LoopbackNode.Open(ctx, flags)
}

func (n *storeNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	if name == "use" {
		n.fs.record("use", n.rel(""))
		return nil, nil, 0, syscall.ENOENT
	}
	return nil, nil, 0, syscall.EROFS
}

func (n *storeNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	n.fs.record("release", n.rel(name))
	return syscall.ENOENT
}

// layerEvents keeps the events about paths below rel (a layer's
// directory), with rel cut off their paths ("" for the directory itself).
func layerEvents(events []storeEvent, rel string) []storeEvent {
	var out []storeEvent
	for _, e := range events {
		switch {
		case e.Path == rel:
			out = append(out, storeEvent{e.Op, ""})
		case strings.HasPrefix(e.Path, rel+"/"):
			out = append(out, storeEvent{e.Op, strings.TrimPrefix(e.Path, rel+"/")})
		}
	}
	return out
}

// relTo is p relative to the store dir.
func relTo(store, p string) string {
	r, err := filepath.Rel(store, p)
	if err != nil {
		return p
	}
	return r
}
