package fstest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// rawEntry is one entry of a tar as its blocks say: the PAX records of the
// extended header before it, in order, and its own header and data.
type rawEntry struct {
	records  [][2]string
	typeflag byte
	size     int64
	mode     string
	data     []byte
}

// rawEntries walks the blocks of tar stream b by hand, without archive/tar.
func rawEntries(t *testing.T, b []byte) []rawEntry {
	t.Helper()
	var out []rawEntry
	var recs [][2]string
	for off := 0; off+512 <= len(b); {
		blk := b[off : off+512]
		if bytes.Equal(blk, make([]byte, 512)) {
			break
		}
		size, err := strconv.ParseInt(strings.Trim(string(blk[124:136]), " \x00"), 8, 64)
		if err != nil {
			t.Fatalf("block at %d: size field %q", off, blk[124:136])
		}
		data := b[off+512 : off+512+int(size)]
		off += 512 + int(size+511)/512*512
		if blk[156] == tar.TypeXHeader {
			for rest := string(data); rest != ""; {
				n, _, _ := strings.Cut(rest, " ")
				l, err := strconv.Atoi(n)
				if err != nil || l > len(rest) {
					t.Fatalf("bad PAX record in %q", rest)
				}
				k, v, _ := strings.Cut(rest[len(n)+1:l-1], "=")
				recs = append(recs, [2]string{k, v})
				rest = rest[l:]
			}
			continue
		}
		out = append(out, rawEntry{records: recs, typeflag: blk[156], size: size, mode: string(blk[100:107]), data: data})
		recs = nil
	}
	return out
}

// TestSparseMatchesGNUTar: for each shape of SparseLayers and each format,
// GNU tar archiving a real sparse file (holes made by truncate) writes the
// same PAX records, header size and data bytes as the generator.
func TestSparseMatchesGNUTar(t *testing.T) {
	out, err := exec.Command("tar", "--version").Output()
	if err != nil || !bytes.Contains(out, []byte("GNU tar")) {
		skipOrFail(t, fmt.Sprintf("needs GNU tar (apt-get install tar): %v", err))
	}
	var files []File
	for _, f := range SparseLayers()[0].Files {
		if f.Sparse != nil {
			files = append(files, f)
		}
	}
	if len(files) != 15 {
		t.Fatalf("SparseLayers has %d sparse files in its first layer, want 15", len(files))
	}
	for _, f := range files {
		t.Run(f.Header.Name, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Base(f.Header.Name)
			p := filepath.Join(dir, base)
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			fh, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			pos := 0
			for _, s := range f.Sparse.Segments {
				if _, err := fh.WriteAt(f.Data[pos:pos+int(s.Len)], s.Off); err != nil {
					t.Fatal(err)
				}
				pos += int(s.Len)
			}
			if err := fh.Truncate(f.Sparse.Size); err != nil {
				t.Fatal(err)
			}
			if err := fh.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, SparseTime, SparseTime); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("tar", "--sparse", "--format=posix", "--sparse-version="+f.Sparse.Version,
				"--owner=0", "--group=0", "--numeric-owner", "--pax-option=delete=atime,delete=ctime", "-cf", "-", "-C", dir, base)
			gnu, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}

			g := f
			g.Header.Name = base
			g.Header.PAXRecords = nil // GNU tar writes xattrs only with --xattrs
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			if err := writeEntry(tw, &buf, &g); err != nil {
				t.Fatal(err)
			}
			if err := tw.Close(); err != nil {
				t.Fatal(err)
			}

			want, got := rawEntries(t, gnu), rawEntries(t, buf.Bytes())
			if len(want) != 1 || len(got) != 1 {
				t.Fatalf("GNU tar wrote %d entries, the generator %d; want 1 each", len(want), len(got))
			}
			w, e := want[0], got[0]
			if !reflect.DeepEqual(e.records, w.records) {
				t.Errorf("PAX records:\n got %q\nwant %q (GNU tar)", e.records, w.records)
			}
			if e.typeflag != w.typeflag || e.size != w.size || e.mode != w.mode {
				t.Errorf("header: type %c, size %d, mode %s; GNU tar: type %c, size %d, mode %s", e.typeflag, e.size, e.mode, w.typeflag, w.size, w.mode)
			}
			if !bytes.Equal(e.data, w.data) {
				t.Errorf("the entry's %d data bytes differ from GNU tar's %d", len(e.data), len(w.data))
			}
			// archive/tar reads the generator's entry as the file on disk.
			disk, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(&buf)
			hdr, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			content, err := io.ReadAll(tr)
			if err != nil || hdr.Name != base || !bytes.Equal(content, disk) || !bytes.Equal(f.Sparse.Expand(f.Data), disk) {
				t.Errorf("archive/tar reads %q, %d bytes, err %v; the file on disk has %d bytes", hdr.Name, len(content), err, len(disk))
			}
		})
	}
}
