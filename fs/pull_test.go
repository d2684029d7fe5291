package fs

import (
	"archive/tar"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestPullStaysInside: entries that climb out with "../", absolute paths,
// and paths through symlinks that point outside all land inside the target
// directory, and nothing outside it changes.
func TestPullStaysInside(t *testing.T) {
	fstest.RequireRoot(t)
	outside := t.TempDir()
	sentinel := filepath.Join(outside, "sentinel")
	if err := os.WriteFile(sentinel, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	hdr := func(name string, typ byte, link string) fstest.File {
		h := tar.Header{Name: name, Typeflag: typ, Linkname: link, Mode: 0o644, ModTime: mtime, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			return fstest.File{Header: h, Data: []byte("evil")}
		}
		return fstest.File{Header: h}
	}
	layers := []fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{
		hdr("../../../../"+sentinel, tar.TypeReg, ""),
		hdr(sentinel, tar.TypeReg, ""),
		hdr("escape", tar.TypeSymlink, outside),
		hdr("up", tar.TypeSymlink, "../../../.."+outside),
	}}, {Compression: fstest.Gzip, Files: []fstest.File{
		hdr("escape/sentinel", tar.TypeReg, ""),
		hdr("up/sentinel", tar.TypeReg, ""),
		hdr("escape/new", tar.TypeReg, ""),
	}}}
	im := loadImage(t, newClient(t, "", nil), layoutRef(t, layers))
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := im.Pull(t.Context(), dir); err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "keep" {
		t.Fatalf("file outside the target: %q, %v; want it untouched", b, err)
	}
	if ents, err := os.ReadDir(outside); err != nil || len(ents) != 1 {
		t.Fatalf("directory outside the target has %d entries (%v), want only the sentinel", len(ents), err)
	}
	// Inside, the entries landed where an unpacker confined to the root puts them.
	for _, p := range []string{sentinel, filepath.Join(outside, "new")} {
		if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != "evil" {
			t.Errorf("%s inside the target: %q, %v", p, b, err)
		}
	}
	if err := im.Pull(t.Context(), dir); err == nil {
		t.Errorf("Pull into a non-empty directory succeeded, want an error")
	}
}
