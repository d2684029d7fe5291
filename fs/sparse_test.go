package fs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// sparseFiles returns the sparse files of layers by path, with their
// logical content.
func sparseFiles(layers []fstest.Layer) (maps map[string]*fstest.SparseMap, content map[string][]byte) {
	maps, content = map[string]*fstest.SparseMap{}, map[string][]byte{}
	for _, l := range layers {
		for _, f := range l.Files {
			if f.Sparse != nil {
				maps[f.Header.Name] = f.Sparse
				content[f.Header.Name] = f.Sparse.Expand(f.Data)
			}
		}
	}
	return maps, content
}

// checkHoles checks that every sparse file of the fixture under dir keeps
// its holes on disk: no more blocks than its data segments need.
func checkHoles(t *testing.T, what, dir string) {
	t.Helper()
	maps, _ := sparseFiles(fstest.SparseLayers())
	for name, m := range maps {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, name), &st); err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		var room int64 // the blocks the segments may touch
		for _, s := range m.Segments {
			room += (s.Off+s.Len+4095)/4096*4096 - s.Off/4096*4096
		}
		if st.Size != m.Size || st.Blocks*512 > room {
			t.Errorf("%s: %s has %d bytes in %d blocks; want %d bytes in at most %d bytes of blocks (holes kept)",
				what, name, st.Size, st.Blocks, m.Size, room)
		}
	}
}

// loadOn resolves and loads ref on the cache in dir with opts.
func loadOn(t *testing.T, dir, ref string, opts Options) *Image {
	t.Helper()
	opts.Logger = testLogger(t)
	return resolveLoad(t, newClient(t, dir, nil), ref, opts)
}

// TestSparseEqualsUmoci: GNU sparse files in all three PAX formats (holes
// at the start, at the end, everywhere, and a 48 MiB file whose 13 MiB of
// data cross several spans) mount and pull as umoci unpacks them, in every
// mode: streamed (gzip and plain tar), then from the local index those
// streams left, fetched whole (gzip, zstd), progressively, and from the
// layer's extracted tree. Pulled files keep their holes. Before sparse
// support, Load failed ("sparse files are not supported yet").
func TestSparseEqualsUmoci(t *testing.T) {
	fstest.RequireFUSE(t)
	want := reference(t, fstest.SparseLayers())
	pull := func(t *testing.T, im *Image) {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "rootfs")
		if err := im.Pull(t.Context(), dir); err != nil {
			t.Fatalf("Pull: %v", err)
		}
		compare(t, "pull", dir, want)
		checkHoles(t, "pull", dir)
	}
	for _, v := range []struct {
		name  string
		c     fstest.Compression
		opts  Options
		modes []string // of layers 0 and 1
		index bool     // mount again from the local index, then from the tree
	}{
		{"gzip", fstest.Gzip, Options{}, []string{ModeWhole, ModeStream}, true},
		{"plain tar", fstest.None, Options{}, []string{ModeWhole, ModeStream}, true},
		{"gzip fetched whole", fstest.Gzip, Options{WholeThreshold: 1 << 40}, []string{ModeWhole, ModeWhole}, false},
		{"zstd", fstest.Zstd, Options{}, []string{ModeWhole, ModeWhole}, false},
		{"progressive", fstest.Gzip, Options{Progressive: true, WholeThreshold: 1, NoRemoteIndex: true}, []string{ModeStream, ModeStream}, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			cache := t.TempDir()
			ref := layoutRef(t, withCompression(fstest.SparseLayers(), v.c))
			im := loadOn(t, cache, ref, v.opts)
			for i, l := range im.Layers() {
				if l.Mode != v.modes[i] {
					t.Fatalf("layer %d: mode %s (%s), want %s", i, l.Mode, l.Why, v.modes[i])
				}
			}
			compare(t, "mount", mountImage(t, im), want)
			pull(t, im)
			if !v.index {
				return
			}

			// The stream left an index in the cache: the next mount
			// serves the large layer in index mode.
			again := loadOn(t, cache, ref, v.opts)
			if l := again.Layers()[1]; l.Mode != ModeIndex {
				t.Fatalf("second load: layer 1 mode %s (%s), want index", l.Mode, l.Why)
			}
			compare(t, "mount from the local index", mountImage(t, again), want)
			if v.c != fstest.Gzip {
				return
			}

			// Once extracted (as the daemon does it: entries released),
			// every file is served from the layers' trees, sparse files
			// from files of their own whatever their size, holes kept.
			tree := loadOn(t, cache, ref, v.opts)
			tree.ReleaseEntries()
			for i, l := range tree.layers {
				if err := l.ensure(t.Context()); err != nil {
					t.Fatal(err)
				}
				l.unpack(t.Context())
				if l.tree.Load() == nil {
					t.Fatalf("layer %d has no tree after unpack", i)
				}
			}
			mnt := mountWith(t, tree, MountOptions{})
			compare(t, "mount from the extracted trees", mnt.Dir, want)
			if n := tree.spans.order.Len(); n != 0 {
				t.Errorf("%d spans decoded while reading from the trees; want none", n)
			}
			_, content := sparseFiles(fstest.SparseLayers())
			var files []string
			for name := range content {
				files = append(files, name)
			}
			checkTreeFiles(t, tree, cache, files)
			pull(t, tree)
		})
	}
}

// checkTreeFiles checks that each sparse file has a tree file of its own in
// its layer's tree, as large as the file and with its holes.
func checkTreeFiles(t *testing.T, im *Image, cache string, names []string) {
	t.Helper()
	maps, _ := sparseFiles(fstest.SparseLayers())
	for _, name := range names {
		n, err := im.Tree().Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		l := im.layers[n.Layer]
		p := filepath.Join(cache, "trees", "sha256", l.diffID.Encoded(), fmtOffset(n.Offset))
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Errorf("%s: no tree file of its own: %v", name, err)
			continue
		}
		if m := maps[name]; st.Size != m.Size || st.Blocks*512 >= max(m.Size, 4096) {
			t.Errorf("%s: tree file of %d bytes in %d blocks; want %d bytes with holes", name, st.Size, st.Blocks, m.Size)
		}
	}
}

// TestSparseLazyRead: in index mode a read of a sparse file fetches only
// the spans that hold the data segments it touches: nothing for a hole,
// the spans of one segment's bytes for a read inside it, and no more than
// the spans of the file's packed data for the whole file.
func TestSparseLazyRead(t *testing.T) {
	host := fstest.StartRegistry(t)
	layers := fstest.SparseLayers()
	_, content := sparseFiles(layers)
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "sparse/lazy", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/sparse/lazy:v1"
	pushIndexOf(t, ref, Options{Logger: testLogger(t), SpanSize: lazySpan})
	im := resolveLoad(t, newClient(t, "", nil), ref, Options{Logger: testLogger(t)})
	if l := im.Layers()[1]; l.Mode != ModeIndex {
		t.Fatalf("layer 1: mode %s (%s), want index from the registry", l.Mode, l.Why)
	}
	const name = "sparse/big.bin"
	n, err := im.Tree().Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	m := im.sparseMap(n)
	if m == nil || len(m.Segments) != len(fstest.SparseBigSegments) {
		t.Fatalf("%s: sparse map %v, want %d segments", name, m, len(fstest.SparseBigSegments))
	}
	tbl := im.layers[1].table
	// spanBytes bounds the blob bytes of the spans holding tar bytes [lo, hi).
	spanBytes := func(lo, hi int64) int64 {
		var sum int64
		for i := tbl.SpanFor(lo); i >= 0 && i <= tbl.SpanFor(hi-1); i++ {
			sum += tbl.Spans[i].CEnd - tbl.Spans[i].C
		}
		return sum
	}
	fetched := func() int64 { return im.Stats().Layers[1].BytesFetched }
	read := func(off, size int64) {
		t.Helper()
		buf := make([]byte, size)
		got, err := im.ReadAt(t.Context(), n, buf, off)
		if err != nil || !bytes.Equal(buf[:got], content[name][off:off+size]) {
			t.Fatalf("ReadAt(%s, off=%d, len=%d) = %d bytes, %v; want the file's bytes", name, off, size, got, err)
		}
	}
	seg := m.Segments[1] // 5 MiB at 16 MiB
	tests := []struct {
		name     string
		off, len int64
		max      int64 // blob bytes the read may fetch
	}{
		{"a hole before the first segment", 0, 1 << 20, 0},
		{"a hole between segments", 30 << 20, 2 << 20, 0},
		{"the hole after the last segment", fstest.SparseBigSize - 4096, 4096, 0},
		{"inside the second segment", seg.Off + 1<<20, 256 << 10, spanBytes(n.Offset+seg.Data+1<<20, n.Offset+seg.Data+1<<20+256<<10)},
		{"a hole and the start of the second segment", seg.Off - 64<<10, 128 << 10, spanBytes(n.Offset+seg.Data, n.Offset+seg.Data+64<<10)},
	}
	for _, tt := range tests {
		before := fetched()
		read(tt.off, tt.len)
		if got := fetched() - before; got > tt.max || (tt.max > 0 && got == 0) {
			t.Errorf("%s: read fetched %d blob bytes, want %s", tt.name, got, map[bool]string{true: "none", false: "at most the spans of the bytes read"}[tt.max == 0])
		}
	}
	before := fetched()
	all, err := io.ReadAll(im.Open(t.Context(), n))
	if err != nil || !bytes.Equal(all, content[name]) {
		t.Fatalf("reading all of %s: %d bytes, %v; want its %d bytes", name, len(all), err, len(content[name]))
	}
	if got, limit := fetched()-before, spanBytes(n.Offset, n.Offset+m.DataSize()); got > limit {
		t.Errorf("reading all of %s fetched %d blob bytes, more than the %d of the spans of its data", name, got, limit)
	}
	t.Logf("%s: %d bytes, %d of data; the layer's blob is %d bytes", name, n.Size, m.DataSize(), img.LayerDescs[1].Size)
}

// TestSparseProgressiveEarly: a progressive mount serves a sparse file its
// stream has passed while the rest of the layer is held back: the inode is
// one of the growing tree's, whose sparse map must be found too.
func TestSparseProgressiveEarly(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers := fstest.SparseLayers()
	_, content := sparseFiles(layers)
	ref, img := pushPlain(t, host, "sparse/progressive", layers)
	blob := img.LayerDescs[1]
	gate := newGate(blob.Digest.String(), blob.Size-fstest.SparseTrailerSize/2, 0)
	im := resolveLoad(t, newClient(t, "", gate), ref, progressiveOpts(t, true))
	mnt := mountImage(t, im)
	waitClosed(t, gate.reached, "the stream reaching the gate")
	read := make(chan struct{})
	go func() {
		defer close(read)
		for _, name := range []string{"sparse/big.bin", "sparse/after-big.bin"} {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil || !bytes.Equal(got, content[name]) {
				t.Errorf("read %s while the stream is held back: %d bytes, err %v; want its %d bytes", name, len(got), err, len(content[name]))
			}
		}
	}()
	select {
	case <-read:
	case <-time.After(time.Minute):
		// A guard against a hang, not a timing assertion: let the stream
		// go so the reads end and the mount can be unmounted.
		close(gate.open)
		<-read
		t.Fatalf("reads of files the held-back stream has passed still waited after a minute")
	}
	if im.Tree() != nil {
		t.Fatalf("the tree is final while a stream is held back: the early path was not tested")
	}
	close(gate.open)
	if _, err := im.WaitTree(t.Context()); err != nil {
		t.Fatal(err)
	}
	compare(t, "progressive mount", mnt, reference(t, fstest.SparseLayers()))
}

// TestMergeKeepsSparseMaps: the merged tree keeps the sparse map of each
// sparse file it holds (a hardlink shares it) and of none it dropped.
func TestMergeKeepsSparseMaps(t *testing.T) {
	sp := &index.SparseMap{Segments: []index.Segment{{Off: 10, Len: 2}}}
	mt := time.Unix(0, 0).UTC()
	tables := []*index.Table{
		{TarSize: 1 << 20, Entries: []index.Entry{
			{Name: "a", Type: index.TypeReg, Size: 100, Offset: 512, Sparse: sp, ModTime: mt},
			{Name: "b", Type: index.TypeReg, Size: 100, Offset: 2048, Sparse: &index.SparseMap{}, ModTime: mt},
			{Name: "c", Type: index.TypeHardlink, Linkname: "a", ModTime: mt},
			{Name: "d", Type: index.TypeReg, Size: 3, Offset: 4096, ModTime: mt},
		}},
		{TarSize: 1 << 20, Entries: []index.Entry{
			{Name: "b", Type: index.TypeReg, Size: 5, Offset: 512, ModTime: mt},
		}},
	}
	tree, err := Merge(tables)
	if err != nil {
		t.Fatal(err)
	}
	im := &Image{}
	im.tree.Store(tree)
	for name, want := range map[string]*index.SparseMap{"a": sp, "b": nil, "c": sp, "d": nil} {
		n, err := tree.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := im.sparseMap(n); got != want {
			t.Errorf("%s: sparse map %v, want %v", name, got, want)
		}
	}
	if len(tree.sparse) != 1 {
		t.Errorf("the tree keeps %d sparse maps, want 1 (b's was replaced)", len(tree.sparse))
	}
}

// TestSparseOldGNURefused: an old-GNU sparse entry (type 'S', as `tar
// --format=gnu --sparse` writes it) is refused at load with an error
// naming the file.
func TestSparseOldGNURefused(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "index", "testdata", "sparse", "gnutar-oldgnu.tar"))
	if err != nil {
		t.Fatal(err)
	}
	base, err := fstest.Build([]fstest.Layer{{Compression: fstest.Gzip, Files: []fstest.File{hostileFile("x", '0', []byte("x"))}}}, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := withLayer(t, base, 0, raw).WriteLayout(dir, "v1"); err != nil {
		t.Fatal(err)
	}
	err = loadErr(t, "oci:"+dir+":v1", Options{})
	want := `invalid input: tar entry "holes-both.bin": old GNU sparse entries (type S) are not supported`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("load: %v; want an error saying %q", err, want)
	}
}
