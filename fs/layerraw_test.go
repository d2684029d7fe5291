package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestRawLayerFS serves the views of an image's layers in a LayerFS served
// raw (as a takeover serves it) and in one served by go-fuse's bridge,
// with the same names: every path has the same type, mode, size, inode
// number (slot<<32 | the view's number) and bytes in both. The raw one is
// given no layer beforehand: the first lookup of each name serves it
// through resolve, as a daemon that took a connection over does. A name
// resolve refuses is ENOENT, a name that is no number cannot be added, and
// a file held open across the removal of its layer reads ESTALE, never
// another layer's bytes.
func TestRawLayerFS(t *testing.T) {
	fstest.RequireFUSE(t)
	ref := layoutRef(t, fstest.Corners())
	im := loadImage(t, newClient(t, "", nil), ref)
	bridge := mountLayerFS(t)
	names := map[string]int{"3": 1, "4": 2, "17": len(im.Layers()) - 1}
	for name, layer := range names {
		if _, err := bridge.Add(name, im, layer); err != nil {
			t.Fatal(err)
		}
	}

	raw, err := NewRawLayerFS(filepath.Join(t.TempDir(), "raw"), LayerFSOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.PrepareRawMount(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	known := map[string]int{}
	for k, v := range names {
		known[k] = v
	}
	resolved := map[string]bool{}
	resolve := func(_ context.Context, name string) error {
		mu.Lock()
		layer, ok := known[name]
		if ok {
			resolved[name] = true
		}
		mu.Unlock()
		if !ok {
			return fmt.Errorf("no snapshot %s", name)
		}
		_, err := raw.Add(name, im, layer)
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	srv, err := fuse.NewServer(raw.Raw(resolve), raw.Dir, &fuse.MountOptions{
		AllowOther: true, FsName: "ocifs-layers", Name: "ocifs", DirectMount: true, DirectMountStrict: true,
		DirectMountFlags: syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
		Options:          []string{"default_permissions"},
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	raw.SetServer(srv)
	t.Cleanup(func() {
		if err := raw.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})

	for name := range names {
		compared := 0
		err := filepath.WalkDir(filepath.Join(bridge.Dir, name), func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(bridge.Dir, p)
			q := filepath.Join(raw.Dir, rel)
			var a, b unix.Stat_t
			if err := unix.Lstat(p, &a); err != nil {
				return err
			}
			if err := unix.Lstat(q, &b); err != nil {
				return fmt.Errorf("raw: %w", err)
			}
			if a.Mode != b.Mode || a.Size != b.Size || a.Ino != b.Ino || a.Nlink != b.Nlink || a.Rdev != b.Rdev {
				t.Errorf("%s: raw mode %o size %d ino %x nlink %d rdev %d; bridge %o %d %x %d %d", rel, b.Mode, b.Size, b.Ino, b.Nlink, b.Rdev, a.Mode, a.Size, a.Ino, a.Nlink, a.Rdev)
			}
			switch a.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				x, err1 := os.ReadFile(p)
				y, err2 := os.ReadFile(q)
				if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
					t.Errorf("%s: raw read %d bytes (%v), bridge %d (%v), or they differ", rel, len(y), err2, len(x), err1)
				}
			case unix.S_IFLNK:
				x, _ := os.Readlink(p)
				y, _ := os.Readlink(q)
				if x != y {
					t.Errorf("%s: raw link %q, bridge %q", rel, y, x)
				}
			}
			compared++
			return nil
		})
		if err != nil {
			t.Fatalf("walk %s: %v", name, err)
		}
		if compared < 2 {
			t.Errorf("layer %s: %d paths compared", name, compared)
		}
	}
	mu.Lock()
	n := len(resolved)
	mu.Unlock()
	if n != len(names) {
		t.Errorf("resolve served %d names, want %d", n, len(names))
	}
	if _, err := os.Stat(filepath.Join(raw.Dir, "9")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a name resolve refuses: %v, want ENOENT", err)
	}
	if _, err := raw.Add("app", im, 0); err == nil {
		t.Errorf("Add of a name that is no number to a raw LayerFS succeeded")
	}

	// A file held open across the removal of its layer.
	var held string
	_ = filepath.WalkDir(filepath.Join(raw.Dir, "17"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && held == "" {
			if fi, err := d.Info(); err == nil && fi.Size() > 0 {
				held = p
			}
		}
		return nil
	})
	if held == "" {
		t.Fatal("no regular file in layer 17")
	}
	f, err := os.Open(held)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mu.Lock()
	delete(known, "17")
	mu.Unlock()
	if err := raw.Remove("17"); err != nil {
		t.Fatal(err)
	}
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	buf := make([]byte, 1)
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, syscall.ESTALE) {
		t.Errorf("read of a file whose layer was removed: %v, want ESTALE", err)
	}
}
