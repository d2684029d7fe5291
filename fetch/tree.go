package fetch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// A tree is a layer's regular files extracted from its uncompressed tar,
// under the layer's DiffID: each large file in a file of its own, named by
// the offset of its content in the tar (16 hex digits) (so is each sparse
// file, whatever its size, expanded with its holes: its bytes in the tar
// are packed, not at its own offsets), and the small ones
// in place in a sparse copy of the tar, the pack, which holds nothing else
// (headers and large files are holes):
//
//	trees/<alg>/<hex>/<offset>   a large file's bytes
//	trees/<alg>/<hex>/pack       the small files' bytes at their tar offsets
//	trees/<alg>/<hex>/.sealed    "v1 <ns> <min>": the latest change time of its files when
//	                             finished (Unix ns), and the size from which a file has its own
//	                             file (smaller ones are in the pack)
//
// A tree is written only from a tar stream whose digest is checked against
// the DiffID as it is extracted, and appears by rename once that check has
// passed and its files are on disk. A file is what FUSE passthrough hands
// to the kernel, so its offsets must be the file's own: that is why a tree
// and not the tar for a large file. Small files stay packed: one file per
// small file costs an inode read and an open per file read, which on a
// cold cache made reading many small files twice as slow as from a tar. A
// file changed after the seal (any write, truncation or chmod moves its
// change time past it) is refused by Open, and a changed pack by OpenTree.

// KindTree is the cache kind of an extracted layer tree.
const KindTree = "tree"

const (
	treesDir   = "trees"
	sealedName = ".sealed"
	packName   = "pack"
)

// ErrTreeChanged is returned by Tree.Open for a file that is not as the
// tree was sealed.
var ErrTreeChanged = errors.New("tree file changed since it was extracted")

// Tree is an extracted layer tree in the cache. It holds its pack open
// until Close.
type Tree struct {
	dir    string
	sealed int64 // Unix nanoseconds
	pack   *os.File
}

// readSeal reads the seal of the tree in dir: its time and the size from
// which files have a file of their own. A missing seal is an error that
// wraps fs.ErrNotExist; an unreadable one wraps ErrTreeChanged.
func readSeal(dir string) (ns, fileMin int64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, sealedName))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 3 && f[0] == "v1" {
		if ns, err = strconv.ParseInt(f[1], 10, 64); err == nil {
			if fileMin, err = strconv.ParseInt(f[2], 10, 64); err == nil {
				return ns, fileMin, nil
			}
		}
	}
	return 0, 0, fmt.Errorf("seal %q unreadable: %w", b, ErrTreeChanged)
}

// sealedWith reports whether dir holds a sealed tree whose files of fileMin
// bytes and more have files of their own.
func sealedWith(dir string, fileMin int64) bool {
	_, min, err := readSeal(dir)
	return err == nil && min == fileMin
}

// removeTreeDir removes the tree in dir, unsealing it first: a tree half
// removed must not be taken for whole.
func removeTreeDir(dir string) error {
	os.Remove(filepath.Join(dir, sealedName))
	return os.RemoveAll(dir)
}

// OpenTree opens the tree of uncompressed layer d whose files of fileMin
// bytes and more have files of their own; the error wraps ErrNotFound if
// there is none, and ErrTreeChanged if the tree is not as extracted (an
// unreadable seal, another fileMin, a pack changed since).
func (c *Cache) OpenTree(d digest.Digest, fileMin int64) (*Tree, error) {
	dir, err := c.path(treesDir, d)
	if err != nil {
		return nil, err
	}
	ns, min, err := readSeal(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cache: tree %s: %w", d, ErrNotFound)
	} else if err != nil {
		return nil, fmt.Errorf("cache: tree %s: %w", d, err)
	}
	if min != fileMin {
		return nil, fmt.Errorf("cache: tree %s: files from %d bytes have their own, want from %d: %w", d, min, fileMin, ErrTreeChanged)
	}
	t := &Tree{dir: dir, sealed: ns}
	if t.pack, err = t.open(packName, -1); err != nil {
		return nil, err
	}
	c.touch(KindTree, d)
	return t, nil
}

// ReadPack reads the pack: the small files' bytes at their tar offsets.
func (t *Tree) ReadPack(p []byte, off int64) (int, error) { return t.pack.ReadAt(p, off) }

// Close closes the pack.
func (t *Tree) Close() error { return t.pack.Close() }

// treeFileName names the file holding the content at tar offset off.
func treeFileName(off int64) string { return fmt.Sprintf("%016x", off) }

// Open opens the file whose content starts at tar offset off and checks
// that it is as extracted: a regular file of size bytes, unchanged since
// the seal. The error wraps ErrTreeChanged if not.
func (t *Tree) Open(off, size int64) (*os.File, error) {
	return t.open(treeFileName(off), size)
}

// open opens name in the tree and checks it: a regular file of size bytes
// (any size if size < 0), unchanged since the seal.
func (t *Tree) open(name string, size int64) (*os.File, error) {
	f, err := os.Open(filepath.Join(t.dir, name))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("cache: tree %s: %s: %w", t.dir, name, ErrTreeChanged)
		}
		return nil, fmt.Errorf("cache: tree %s: %w", t.dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: tree %s: %w", t.dir, err)
	}
	ctime := st.Ctim.Sec*1e9 + st.Ctim.Nsec
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || (size >= 0 && st.Size != size) || ctime > t.sealed {
		f.Close()
		return nil, fmt.Errorf("cache: tree %s: %s (%d bytes, changed %s, tree sealed %s): %w", t.dir, name, st.Size,
			time.Unix(0, ctime).UTC().Format(time.RFC3339Nano), time.Unix(0, t.sealed).UTC().Format(time.RFC3339Nano), ErrTreeChanged)
	}
	return f, nil
}

// PendingTree is a tree being extracted into a temp directory.
type PendingTree struct {
	c       *Cache
	d       digest.Digest
	fileMin int64
	dir     string
	done    bool
}

// CreateTree starts extracting the tree of uncompressed layer d, whose
// files of fileMin bytes and more get files of their own (Create) and the
// others go to the pack (CreatePack).
func (c *Cache) CreateTree(d digest.Digest, fileMin int64) (*PendingTree, error) {
	if _, err := c.path(treesDir, d); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Join(c.dir, tmpDir), "tree-"+d.Encoded()+".*")
	if err != nil {
		return nil, fmt.Errorf("cache: tree %s: %w", d, err)
	}
	return &PendingTree{c: c, d: d, fileMin: fileMin, dir: dir}, nil
}

// Create creates the file for the content at tar offset off.
func (p *PendingTree) Create(off int64) (*os.File, error) {
	if p.done {
		return nil, fmt.Errorf("cache: tree %s: create after Commit or Abort", p.d)
	}
	f, err := os.OpenFile(filepath.Join(p.dir, treeFileName(off)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: tree %s: %w", p.d, err)
	}
	return f, nil
}

// CreatePack creates the pack: the caller writes each small file's bytes
// at its tar offset and sets the pack's size to the tar's.
func (p *PendingTree) CreatePack() (*os.File, error) {
	if p.done {
		return nil, fmt.Errorf("cache: tree %s: create after Commit or Abort", p.d)
	}
	f, err := os.OpenFile(filepath.Join(p.dir, packName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: tree %s: %w", p.d, err)
	}
	return f, nil
}

// Commit seals the tree and renames it into trees/. The caller has checked
// the stream it was extracted from against the DiffID. Its files are
// flushed to disk first (one syncfs), so a crash never leaves a sealed tree
// of unwritten files. If the tree is already cached the temp one is dropped.
func (p *PendingTree) Commit() error {
	if p.done {
		return fmt.Errorf("cache: tree %s: Commit after Commit or Abort", p.d)
	}
	defer p.Abort()
	dst, _ := p.c.path(treesDir, p.d)
	if sealedWith(dst, p.fileMin) {
		return nil // another process sealed it first
	}
	if _, err := os.Stat(filepath.Join(p.dir, packName)); err != nil {
		return fmt.Errorf("cache: tree %s: no pack: %w", p.d, err)
	}
	d, err := os.Open(p.dir)
	if err != nil {
		return fmt.Errorf("cache: tree %s: %w", p.d, err)
	}
	err = unix.Syncfs(int(d.Fd()))
	d.Close()
	if err != nil {
		return fmt.Errorf("cache: tree %s: sync: %w", p.d, err)
	}
	// The seal is the latest change time among the files, read back with
	// stat: a later change to any of them gets a later one (since Linux
	// 6.13 even within the same clock tick, once the time has been read).
	seal, err := latestChange(p.dir)
	if err != nil {
		return fmt.Errorf("cache: tree %s: %w", p.d, err)
	}
	if err := writeSynced(filepath.Join(p.dir, sealedName), fmt.Sprintf("v1 %d %d\n", seal, p.fileMin)); err != nil {
		return fmt.Errorf("cache: tree %s: %w", p.d, err)
	}
	// Whatever is at dst is not a tree of this kind (it would have been
	// taken above): an unsealed leftover of an interrupted Remove, or a
	// tree another version of ocifs made.
	removeTreeDir(dst)
	if err := p.c.admit(KindTree, p.d, treeBytes(p.dir), func() error { return p.c.install(p.dir, dst) }); err != nil {
		if sealedWith(dst, p.fileMin) {
			return nil // another process sealed it first
		}
		return fmt.Errorf("cache: tree %s: %w", p.d, err)
	}
	return nil
}

// writeSynced writes s to a new file at path and syncs it.
func writeSynced(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// latestChange returns the latest change time, in Unix nanoseconds, of the
// files in dir.
func latestChange(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var latest int64
	for _, e := range ents {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, e.Name()), &st); err != nil {
			return 0, err
		}
		latest = max(latest, st.Ctim.Sec*1e9+st.Ctim.Nsec)
	}
	return latest, nil
}

// Abort removes the temp directory; a no-op after Commit or Abort.
func (p *PendingTree) Abort() {
	if p.done {
		return
	}
	p.done = true
	os.RemoveAll(p.dir)
}

// treeEntries lists the trees in the cache with their total size, dated by
// their seal.
func (c *Cache) treeEntries() ([]CacheEntry, error) {
	var out []CacheEntry
	root := filepath.Join(c.dir, treesDir)
	algs, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("cache: list %s: %w", root, err)
	}
	for _, alg := range algs {
		ents, err := os.ReadDir(filepath.Join(root, alg.Name()))
		if err != nil {
			return nil, fmt.Errorf("cache: list %s: %w", root, err)
		}
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), e.Name())
			if d.Validate() != nil || !e.IsDir() {
				continue
			}
			dir := filepath.Join(root, alg.Name(), e.Name())
			en := CacheEntry{Kind: KindTree, Digest: d}
			if fi, err := os.Stat(filepath.Join(dir, sealedName)); err == nil {
				en.ModTime = fi.ModTime()
			} else if fi, err := e.Info(); err == nil {
				en.ModTime = fi.ModTime()
			}
			en.Size = treeBytes(dir)
			out = append(out, en)
		}
	}
	return out, nil
}

// diskSize is what a file takes on disk: a sparse pack less than its size.
func diskSize(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return min(fi.Size(), st.Blocks*512)
	}
	return fi.Size()
}
