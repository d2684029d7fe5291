package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// mountLayerFS mounts a LayerFS under t.TempDir(), unmounted at cleanup.
func mountLayerFS(t *testing.T) *LayerFS {
	t.Helper()
	fstest.RequireFUSE(t)
	l, err := MountLayerFS(filepath.Join(t.TempDir(), "layers"), LayerFSOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("MountLayerFS: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	return l
}

// TestLayerFSOverlayEqualsUmoci serves every layer's view of an image in
// one LayerFS, mounts the kernel's overlayfs over those directories and
// compares it with umoci's unpack, as TestLayerViewsOverlayEqualsUmoci
// does with the views written to disk: the FUSE directories are lower
// directories overlayfs takes as they are (whiteout devices, the opaque
// xattr, hardlinks), and their bytes come through the image's read path.
func TestLayerFSOverlayEqualsUmoci(t *testing.T) {
	fstest.RequireRoot(t)
	l := mountLayerFS(t)
	type image struct {
		name     string
		layers   []fstest.Layer
		unstable []string
	}
	images := []image{{"corners", linkAttrsOfTargets(fstest.Corners()), fstest.CornerUnstableMtimes}}
	for seed := int64(1); seed <= 4; seed++ {
		images = append(images, image{fmt.Sprintf("random-%d", seed), linkAttrsOfTargets(fstest.Random(seed, 40+int(seed)*10)), nil})
	}
	inos := map[uint64]string{} // inode number → the name of the tree giving it, across the mount
	for ii, img := range images {
		t.Run(img.name, func(t *testing.T) {
			b := buildLayers(t, img.layers)
			layout := t.TempDir()
			if err := b.img.WriteLayout(layout, "v1"); err != nil {
				t.Fatal(err)
			}
			im := loadImage(t, newClient(t, "", nil), "oci:"+layout+":v1")
			views, err := im.LayerViews()
			if err != nil {
				t.Fatal(err)
			}
			var lowers []string
			for i := range views {
				name := strconv.Itoa(ii) + "-" + strconv.Itoa(i)
				dir, err := l.Add(name, im, i)
				if err != nil {
					t.Fatalf("Add(%s): %v", name, err)
				}
				t.Cleanup(func() {
					if err := l.Remove(name); err != nil {
						t.Errorf("Remove(%s): %v", name, err)
					}
				})
				lowers = append(lowers, dir)
				if err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
					if err != nil {
						return err
					}
					ino := fi.Sys().(*syscall.Stat_t).Ino
					if other, ok := inos[ino]; ok && other != name {
						t.Errorf("inode %d in trees %s and %s (%s)", ino, other, name, p)
					}
					inos[ino] = name
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			mnt := mountOverlay(t, lowers)
			merged := im.Tree()
			want := fstest.UmociUnpack(t, layout, "v1")
			diffs := fstest.CompareTrees(mnt, want, fstest.CompareOptions{IgnoreMtimePaths: img.unstable})
			got, err := fstest.Manifest(mnt)
			if err != nil {
				t.Fatal(err)
			}
			facts := newOverlayFacts(views, merged, got)
			explained := 0
			for _, d := range diffs {
				if why := facts.explain(d); why != "" {
					explained++
					continue
				}
				t.Errorf("overlay of the LayerFS directories vs umoci: %s", d)
			}
			if len(got) < 10 {
				t.Errorf("the overlay shows %d paths: not the image", len(got))
			}
			t.Logf("%d paths, %d differences that are overlayfs facts", len(got), explained)
		})
	}
}

// TestLayerFSNames: Add refuses a name twice and a path, Remove makes the
// name vanish (the kernel is told), and a name added after others lists
// with them.
func TestLayerFSNames(t *testing.T) {
	fstest.RequireRoot(t)
	l := mountLayerFS(t)
	im := loadImage(t, newClient(t, "", nil), layoutRef(t, fstest.Corners()))
	dir, err := l.Add("7", im, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/passwd")); err != nil {
		t.Fatalf("a file of layer 0: %v", err)
	}
	if _, err := l.Add("7", im, 1); !errors.Is(err, os.ErrExist) {
		t.Errorf("Add of a name served: %v, want ErrExist", err)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if _, err := l.Add(bad, im, 0); err == nil {
			t.Errorf("Add(%q) succeeded", bad)
		}
	}
	if _, err := l.Add("8", im, 99); err == nil {
		t.Errorf("Add of layer 99 succeeded")
	}
	if _, err := l.Add("9", im, 1); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"7", "9"}) {
		t.Errorf("ReadDir = %v, want [7 9]", names)
	}
	if err := l.Remove("7"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stat of a removed name: %v, want not exist", err)
	}
	if err := l.Remove("7"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(l.Dir, &st); err != nil {
		t.Fatal(err)
	}
	var mst unix.Stat_t
	if err := unix.Stat(filepath.Join(l.Dir, "9"), &mst); err != nil {
		t.Fatal(err)
	}
	if mst.Ino != 9<<32|1 {
		t.Errorf("root of tree 9 has inode %#x, want %#x: slot 9, node 1", mst.Ino, uint64(9<<32|1))
	}
	// A number given before, and a name that is none, get slots from the
	// top.
	for _, name := range []string{"7", "x"} {
		dir, err := l.Add(name, im, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Stat(dir, &mst); err != nil {
			t.Fatal(err)
		}
		if slot := mst.Ino >> 32; slot < numberedSlots || slot == 7 {
			t.Errorf("tree %s: slot %d, want one counted down from MaxSlot", name, slot)
		}
	}
}

// TestLayerFSSparse: the sparse files of a layer's view read as their
// logical content (holes as zeros) through the LayerFS, whichever layer
// they are in; one that a later layer replaces, which the merged tree
// (and so its sparse map) no longer holds, is EIO, never its packed bytes.
func TestLayerFSSparse(t *testing.T) {
	fstest.RequireRoot(t)
	l := mountLayerFS(t)
	layers := fstest.SparseLayers()
	_, content := sparseFiles(layers)
	var replaced string
	for _, f := range layers[0].Files {
		if f.Sparse != nil && f.Sparse.Size > 0 {
			replaced = f.Header.Name
			break
		}
	}
	layers = append(layers, fstest.Layer{Compression: fstest.Gzip, Files: []fstest.File{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: replaced, Mode: 0o644, Size: 9, ModTime: fstest.CornerTime}, Data: []byte("replaced\n")},
	}})
	im := loadImage(t, newClient(t, "", nil), layoutRef(t, layers))
	checked := 0
	for i, layer := range layers {
		dir, err := l.Add("s"+strconv.Itoa(i), im, i)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range layer.Files {
			name := f.Header.Name
			got, err := os.ReadFile(filepath.Join(dir, name))
			switch {
			case f.Sparse == nil:
			case name == replaced && i == 0:
				if !errors.Is(err, syscall.EIO) {
					t.Errorf("layer %d: read of %s, which layer %d replaces: %d bytes, %v; want EIO", i, name, len(layers)-1, len(got), err)
				}
			case err != nil:
				t.Errorf("layer %d: read %s: %v", i, name, err)
			case !bytes.Equal(got, content[name]):
				t.Errorf("layer %d: %s: %d bytes that differ from its %d bytes of logical content", i, name, len(got), len(content[name]))
			default:
				checked++
			}
		}
	}
	if checked < 10 {
		t.Errorf("%d sparse files checked, want the fixture's", checked)
	}
	got, err := os.ReadFile(filepath.Join(l.Dir, "s"+strconv.Itoa(len(layers)-1), replaced))
	if err != nil || string(got) != "replaced\n" {
		t.Errorf("the replacing file = %q, %v", got, err)
	}
}

// TestLayerFSLyingTOC: once the background check finds that a layer's
// table in use (here a zstd:chunked TOC) disagrees with its verified
// bytes, that layer's view refuses everything (EIO), the files the TOC was
// right about included: the refusals of the merged tree name its own
// nodes, not the view's. The other layer's view is served as before.
func TestLayerFSLyingTOC(t *testing.T) {
	fstest.RequireRoot(t)
	host := fstest.StartRegistry(t)
	l := mountLayerFS(t)
	layers, content := lyingTOCLayers()
	ref, _ := pushLazy(t, host, "layerfs/toc", layers, fstest.LazyOptions{Format: fstest.ZstdChunked, NoTarSplit: true, EditTOC: lyingTOC})
	im := resolveLoad(t, newClient(t, "", nil), ref, Options{Logger: testLogger(t), WholeThreshold: 1})
	if m := im.Layers()[0].Mode; m != ModeZstdChunked {
		t.Fatalf("layer 0: mode %s, want %s", m, ModeZstdChunked)
	}
	d0, err := l.Add("lies", im, 0)
	if err != nil {
		t.Fatal(err)
	}
	d1, err := l.Add("plain", im, 1)
	if err != nil {
		t.Fatal(err)
	}
	settleAll(t, im)
	_, err = os.ReadFile(filepath.Join(d0, "good/f00.txt"))
	wantEIO(t, "read of a file the lying TOC got right, in its layer's view", err)
	_, err = os.Lstat(filepath.Join(d0, "modes/fine.txt"))
	wantEIO(t, "lstat in the view of the layer that disagreed", err)
	readWant(t, filepath.Join(d1, "etc/os-release"), content["etc/os-release"])
}

// TestLayerFSHandlesAcrossMounts: a tree served under the same snapshot id
// by a new mount (a restarted daemon, a new load of the image) gives its
// files the same file handles (node id and generation) as before, so the
// handles the kernel keeps (overlayfs's origin records) name the same
// files; another layer's tree under that id gives other ones.
func TestLayerFSHandlesAcrossMounts(t *testing.T) {
	fstest.RequireRoot(t)
	ref := layoutRef(t, fstest.Corners())
	handle := func(layer int, file string) []byte {
		t.Helper()
		l, err := MountLayerFS(filepath.Join(t.TempDir(), "layers"), LayerFSOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := l.Unmount(); err != nil {
				t.Errorf("Unmount: %v", err)
			}
		}()
		im := loadImage(t, newClient(t, "", nil), ref)
		dir, err := l.Add("5", im, layer)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Remove("5")
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(dir, file), 0)
		if err != nil {
			t.Fatalf("name_to_handle_at %s: %v", file, err)
		}
		return append([]byte{byte(h.Type())}, h.Bytes()...)
	}
	a, b := handle(0, "etc/passwd"), handle(0, "etc/passwd")
	if !bytes.Equal(a, b) {
		t.Errorf("handles of layer 0's etc/passwd in two mounts: %x and %x, want equal", a, b)
	}
	var other []byte
	for i, l := range fstest.Corners() {
		if i == 0 {
			continue
		}
		for _, f := range l.Files {
			if f.Header.Typeflag == tar.TypeReg && !strings.HasPrefix(filepath.Base(f.Header.Name), ".wh.") {
				other = handle(i, f.Header.Name)
				break
			}
		}
		if other != nil {
			break
		}
	}
	if other == nil || bytes.Equal(other, a) {
		t.Errorf("a file of another layer under the same id has handle %x, layer 0's %x: want another", other, a)
	}
}

// TestLayerFSAfterCrash: a daemon killed with SIGKILL leaves its mount
// behind, answering ENOTCONN; the next MountLayerFS on that directory
// detaches it and serves (the snapshotter's restart after a crash).
func TestLayerFSAfterCrash(t *testing.T) {
	fstest.RequireRoot(t)
	fstest.RequireFUSE(t)
	dir := filepath.Join(t.TempDir(), "layers")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "OCIFS_LAYERFS_HELPER="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !isMounted(t, dir); time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the helper did not mount in 20s")
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); !errors.Is(err, syscall.ENOTCONN) {
		unix.Unmount(dir, unix.MNT_DETACH)
		t.Fatalf("statfs of a dead daemon's mount: %v, want ENOTCONN", err)
	}
	l, err := MountLayerFS(dir, LayerFSOptions{Logger: testLogger(t)})
	if err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		t.Fatalf("MountLayerFS over a dead mount: %v", err)
	}
	defer func() {
		if err := l.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
		if isMounted(t, dir) {
			t.Errorf("%s still mounted (the dead mount was not detached)", dir)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	}()
	im := loadImage(t, newClient(t, "", nil), layoutRef(t, fstest.Corners()))
	d, err := l.Add("1", im, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Remove("1")
	if b, err := os.ReadFile(filepath.Join(d, "etc/passwd")); err != nil || !strings.HasPrefix(string(b), "root:") {
		t.Errorf("etc/passwd after the restart = %q, %v", b, err)
	}
}

// init is the daemon TestLayerFSAfterCrash kills, when the test binary is
// run with OCIFS_LAYERFS_HELPER set: it mounts a LayerFS there and waits.
func init() {
	dir := os.Getenv("OCIFS_LAYERFS_HELPER")
	if dir == "" {
		return
	}
	if _, err := MountLayerFS(dir, LayerFSOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	time.Sleep(time.Minute)
	os.Exit(0)
}

// isMounted reports whether dir is a mountpoint in this mount namespace.
func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}
