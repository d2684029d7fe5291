package fs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// Hostile images: each test builds an image a malicious publisher could
// push and checks that ocifs either serves it confined and correct or
// refuses it with a clear error; never a crash, a hang or an escape.
// (Pull confinement of "../", absolute names and symlinked parents is
// TestPullStaysInside; caps on the tar are index's TestBuildRejects; TOC
// caps are index/toc's TestDecodeCaps; the manifest cap is fetch's
// TestManifestErrors and cmd's TestBadInputManifestOver4MiB.)

var hostileTime = time.Unix(1700000000, 0)

func hostileFile(name string, typ byte, data []byte) fstest.File {
	return fstest.File{Header: tar.Header{Name: name, Typeflag: typ, Mode: 0o644, ModTime: hostileTime, Format: tar.FormatPAX}, Data: data}
}

// loadErr resolves and loads layers from a layout and returns Load's error.
func loadErr(t *testing.T, ref string, opts Options) error {
	t.Helper()
	im, err := Resolve(t.Context(), newClient(t, "", nil), ref, opts)
	if err != nil {
		return err
	}
	defer im.Close()
	return im.Load(t.Context())
}

// TestHostileDeepNesting: 2000 nested directories mount, walk and pull,
// and the file at the bottom reads right. 2100 levels make a name longer
// than the 4096-byte cap: a clear error at load, not a path the kernel
// cannot resolve. Removing index's MaxNameLen cap fails the second half.
func TestHostileDeepNesting(t *testing.T) {
	fstest.RequireFUSE(t)
	deep := strings.Repeat("d/", 2000) + "bottom.txt"
	want := []byte("at the bottom\n")
	layers := []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{hostileFile(deep, tar.TypeReg, want)}}}
	im := loadImage(t, newClient(t, "", nil), layoutRef(t, layers))
	dirs := 0
	if err := im.Tree().Walk(func(_ string, n *Node) error {
		if n.IsDir() {
			dirs++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if dirs != 2001 {
		t.Errorf("tree has %d directories, want 2001 (root and 2000 implied)", dirs)
	}
	dir := mountImage(t, im)
	if got, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, deep)); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read at depth 2000: %q, %v", got, err)
	}
	pulled := filepath.Join(t.TempDir(), "rootfs")
	if err := im.Pull(t.Context(), pulled); err != nil {
		t.Fatalf("Pull: %v", err)
	}
	// The pulled path is longer than PATH_MAX from /: walk down relative.
	fd, err := unix.Open(pulled, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 2000 {
		next, err := unix.Openat(fd, "d", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("pulled tree: %v", err)
		}
		fd = next
	}
	f, err := unix.Openat(fd, "bottom.txt", unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	unix.Close(fd)
	if err != nil {
		t.Fatalf("pulled bottom.txt: %v", err)
	}
	buf := make([]byte, 100)
	n, _ := unix.Read(f, buf)
	unix.Close(f)
	if !bytes.Equal(buf[:n], want) {
		t.Errorf("pulled bottom.txt = %q", buf[:n])
	}

	tooDeep := strings.Repeat("d/", 2100) + "bottom.txt"
	err = loadErr(t, layoutRef(t, []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{hostileFile(tooDeep, tar.TypeReg, want)}}}), Options{})
	if err == nil || !strings.Contains(err.Error(), "MaxNameLen") {
		t.Errorf("load of a 4210-byte name: %v; want the name-length cap's error", err)
	}
}

// TestHostileXattrs: a 60 KiB xattr value (under Linux's 64 KiB limit) is
// served whole; a 900 KiB one (under the 1 MiB cap but over what the
// kernel passes) fails getxattr with E2BIG or ERANGE while the file and its
// neighbours still read; xattrs totalling over 1 MiB are refused at load.
// Removing index's MaxXattrBytes cap fails the last case.
func TestHostileXattrs(t *testing.T) {
	fstest.RequireFUSE(t)
	big := bytes.Repeat([]byte("x"), 60<<10)
	huge := bytes.Repeat([]byte("y"), 900<<10)
	withX := func(name string, x map[string]string) fstest.File {
		f := hostileFile(name, tar.TypeReg, []byte(name))
		f.Header.PAXRecords = map[string]string{}
		for k, v := range x {
			f.Header.PAXRecords["SCHILY.xattr."+k] = v
		}
		return f
	}
	layers := []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		withX("big", map[string]string{"user.big": string(big)}),
		withX("huge", map[string]string{"user.huge": string(huge)}),
		hostileFile("plain", tar.TypeReg, []byte("plain")),
	}}}
	dir := mountImage(t, loadImage(t, newClient(t, "", nil), layoutRef(t, layers)))
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(filepath.Join(dir, "big"), "user.big", buf)
	if err != nil || !bytes.Equal(buf[:n], big) {
		t.Errorf("getxattr user.big: %d bytes, %v; want %d", n, err, len(big))
	}
	if _, err := unix.Getxattr(filepath.Join(dir, "huge"), "user.huge", buf); !errors.Is(err, syscall.E2BIG) && !errors.Is(err, syscall.ERANGE) {
		t.Errorf("getxattr of a 900 KiB value: %v; want E2BIG or ERANGE", err)
	}
	for _, name := range []string{"huge", "plain", "big"} {
		if b, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, name)); err != nil || string(b) != name {
			t.Errorf("read %s after the xattr reads: %q, %v", name, b, err)
		}
	}

	// Go's tar writer stops at 1 MiB of PAX records, so the cap is
	// exercised at 512 KiB here (the default is 1 MiB).
	over := map[string]string{}
	for i := range 3 {
		over[fmt.Sprintf("user.part%d", i)] = string(bytes.Repeat([]byte("z"), 200<<10))
	}
	err = loadErr(t, layoutRef(t, []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{withX("over", over)}}}),
		Options{Index: index.Options{MaxXattrBytes: 512 << 10}})
	if err == nil || !strings.Contains(err.Error(), "MaxXattrBytes") {
		t.Errorf("load of 600 KiB of xattrs on one entry under a 512 KiB cap: %v; want the xattr cap's error", err)
	}
}

// TestHostileNames: "../" and absolute names land inside the image's root
// in the mounted tree, nothing named ".." exists, and a hardlink to a
// missing file is a clear load error. Removing name cleaning in index
// fails the lookups; removing the hardlink check fails the last case.
func TestHostileNames(t *testing.T) {
	fstest.RequireFUSE(t)
	layers := []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		hostileFile("../../../../etc/climbed", tar.TypeReg, []byte("climbed")),
		hostileFile("/abs/rooted", tar.TypeReg, []byte("rooted")),
		hostileFile("a/../../b/sneaky", tar.TypeReg, []byte("sneaky")),
	}}}
	dir := mountImage(t, loadImage(t, newClient(t, "", nil), layoutRef(t, layers)))
	for name, want := range map[string]string{"etc/climbed": "climbed", "abs/rooted": "rooted", "b/sneaky": "sneaky"} {
		if b, err := fstest.ReadFileWithin(t, readGuard, filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s in the mount: %q, %v; want %q", name, b, err, want)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "abs b etc" {
		t.Errorf("mount root holds %q, want \"abs b etc\"", got)
	}

	link := hostileFile("alias", tar.TypeLink, nil)
	link.Header.Linkname = "no/such/target"
	err = loadErr(t, layoutRef(t, []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{hostileFile("x", tar.TypeReg, []byte("x")), link}}}), Options{})
	if err == nil || !strings.Contains(err.Error(), `hardlink "alias" to "no/such/target"`) {
		t.Errorf("load of a hardlink to a missing file: %v; want a hardlink error naming both", err)
	}
}

// withLayer returns a copy of img whose layer i is blob (a gzip of tarBytes),
// with the descriptors, the config's DiffID and the manifest made
// consistent with it: an image that is honest about digests and lies only
// inside the tar.
func withLayer(t *testing.T, img *fstest.Image, i int, tarBytes []byte) *fstest.Image {
	t.Helper()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBytes)
	zw.Close()
	out := *img
	out.Layers = append([][]byte(nil), img.Layers...)
	out.LayerDescs = append(out.LayerDescs[:0:0], img.LayerDescs...)
	out.Layers[i] = gz.Bytes()
	out.LayerDescs[i].Digest = digest.FromBytes(gz.Bytes())
	out.LayerDescs[i].Size = int64(gz.Len())
	var cfg map[string]any
	if err := json.Unmarshal(img.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["rootfs"].(map[string]any)["diff_ids"].([]any)[i] = digest.FromBytes(tarBytes).String()
	out.Config, _ = json.Marshal(cfg)
	out.ConfigDesc.Digest, out.ConfigDesc.Size = digest.FromBytes(out.Config), int64(len(out.Config))
	patchManifestJSON(t, &out, func(m map[string]any) {
		m["config"].(map[string]any)["digest"] = out.ConfigDesc.Digest.String()
		m["config"].(map[string]any)["size"] = out.ConfigDesc.Size
		l := m["layers"].([]any)[i].(map[string]any)
		l["digest"], l["size"] = out.LayerDescs[i].Digest.String(), out.LayerDescs[i].Size
	})
	return &out
}

// patchManifestJSON edits img's manifest and recomputes its descriptor.
func patchManifestJSON(t *testing.T, img *fstest.Image, edit func(map[string]any)) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	img.Manifest, _ = json.Marshal(m)
	img.ManifestDesc.Digest, img.ManifestDesc.Size = digest.FromBytes(img.Manifest), int64(len(img.Manifest))
}

// TestHostileSizesLie: sizes that lie are refused with a clear error, in
// the tar (a header claiming more data than follows; sizes past the layer)
// and in the manifest (a layer descriptor one byte short or long). Each
// is a load error, never a tree with a file whose bytes run into the next
// entry. Removing the size checks of fetch's blob reader fails the
// descriptor cases.
func TestHostileSizesLie(t *testing.T) {
	base, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		hostileFile("honest", tar.TypeReg, bytes.Repeat([]byte("h"), 5000)),
	}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	write := func(img *fstest.Image) string {
		dir := t.TempDir()
		if err := img.WriteLayout(dir, "v1"); err != nil {
			t.Fatal(err)
		}
		return "oci:" + dir + ":v1"
	}
	// A tar header claiming 1 MiB of data followed by 10 bytes and the end.
	var raw bytes.Buffer
	hdr := make([]byte, 512)
	copy(hdr, "liar")
	copy(hdr[100:], "0000644\x00")
	copy(hdr[108:], "0000000\x00")
	copy(hdr[116:], "0000000\x00")
	copy(hdr[124:], fmt.Sprintf("%011o\x00", 1<<20))
	copy(hdr[136:], "00000000000\x00")
	hdr[156] = '0'
	copy(hdr[257:], "ustar\x0000")
	copy(hdr[148:], "        ")
	sum := 0
	for _, b := range hdr {
		sum += int(b)
	}
	copy(hdr[148:], fmt.Sprintf("%06o\x00 ", sum))
	raw.Write(hdr)
	raw.Write([]byte("0123456789"))

	for _, tc := range []struct {
		name string
		img  *fstest.Image
		want string
	}{
		{"tar entry larger than the stream", withLayer(t, base, 0, raw.Bytes()), "truncated"},
		{"descriptor one byte short", func() *fstest.Image {
			img := *base
			patchManifestJSON(t, &img, func(m map[string]any) {
				l := m["layers"].([]any)[0].(map[string]any)
				l["size"] = base.LayerDescs[0].Size - 1
			})
			return &img
		}(), fmt.Sprintf("more than the %d bytes its descriptor declares", base.LayerDescs[0].Size-1)},
		{"descriptor one byte long", func() *fstest.Image {
			img := *base
			patchManifestJSON(t, &img, func(m map[string]any) {
				l := m["layers"].([]any)[0].(map[string]any)
				l["size"] = base.LayerDescs[0].Size + 1
			})
			return &img
		}(), fmt.Sprintf("%d bytes, want %d", base.LayerDescs[0].Size, base.LayerDescs[0].Size+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := loadErr(t, write(tc.img), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("load: %v; want an error saying %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestHostileBomb: a decompression bomb (32 MiB of zeros in a gzip layer
// of a few tens of KiB) and an entry flood (5000 empty files) are refused
// at load with the cap's error when the caps are below them, the same
// caps whose defaults (64 GiB, 4 million entries) bound a real mount.
// Removing the MaxTarSize or MaxEntries check in index fails the case.
func TestHostileBomb(t *testing.T) {
	bomb := []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{hostileFile("zeros", tar.TypeReg, make([]byte, 32<<20))}}}
	var flood []fstest.File
	for i := range 5000 {
		flood = append(flood, hostileFile(fmt.Sprintf("f%05d", i), tar.TypeReg, nil))
	}
	for _, tc := range []struct {
		name   string
		layers []fstest.Layer
		opts   index.Options
		want   string
	}{
		{"decompressed size", bomb, index.Options{MaxTarSize: 8 << 20}, "decompressed size exceeds 8388608 bytes"},
		{"entry count", []fstest.Layer{{Compression: fstest.Gzip, Files: flood}}, index.Options{MaxEntries: 1000}, "more than 1000 entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := layoutRef(t, tc.layers)
			err := loadErr(t, ref, Options{Index: tc.opts})
			if err == nil || !errors.Is(err, index.ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("load: %v; want an invalid-input error saying %q", err, tc.want)
			}
			// The same image loads under the default caps.
			if err := loadErr(t, ref, Options{}); err != nil {
				t.Errorf("load under the default caps: %v", err)
			}
		})
	}
}
