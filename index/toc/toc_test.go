package toc

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/index"
)

// reference decompresses a whole blob and reads it with index.Build, the
// independent implementation of the entry rules. It returns the entries a
// merged tree should get (eStargz landmarks and TOC dropped) and the
// uncompressed stream their offsets point into.
func reference(tb testing.TB, blob []byte, layout Layout) ([]index.Entry, []byte) {
	tb.Helper()
	var r io.Reader
	if layout == LayoutEstargz {
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			tb.Fatal(err)
		}
		r = zr
	} else {
		zr, err := zstd.NewReader(bytes.NewReader(blob))
		if err != nil {
			tb.Fatal(err)
		}
		defer zr.Close()
		r = zr
	}
	stream, err := io.ReadAll(r)
	if err != nil {
		tb.Fatalf("decompressing the whole blob: %v", err)
	}
	t, err := index.Build(bytes.NewReader(stream), index.Options{})
	if err != nil {
		tb.Fatalf("index.Build: %v", err)
	}
	var out []index.Entry
	for _, e := range t.Entries {
		if layout.estargz() && (e.Name == tocTarName || e.Name == prefetchLandmark || e.Name == noPrefetchLandmark) {
			continue
		}
		out = append(out, e)
	}
	return out, stream
}

// readFile reads e's content chunk by chunk from blob.
func readFile(tb testing.TB, l *Layer, blob []byte, e index.Entry) []byte {
	tb.Helper()
	var out []byte
	for off := e.Offset; off < e.Offset+e.Size; {
		i := l.ChunkFor(off)
		if i < 0 {
			tb.Fatalf("%s: ChunkFor(%d) = -1", e.Name, off)
		}
		c := l.Chunks[i]
		data, err := DecodeChunk(l.Format, c, blob[c.C:c.CEnd])
		if err != nil {
			tb.Fatalf("%s: DecodeChunk(chunk %d %+v): %v", e.Name, i, c, err)
		}
		end := min(c.U+c.Size, e.Offset+e.Size)
		out = append(out, data[off-c.U:end-c.U]...)
		off = end
	}
	return out
}

// checkLayer checks the invariants doc.go promises of a Layer.
func checkLayer(tb testing.TB, l *Layer, loc Location) {
	tb.Helper()
	var u int64
	for i, c := range l.Chunks {
		if c.U != u || c.Size <= 0 {
			tb.Fatalf("chunk %d: U %d size %d, want U %d and size > 0", i, c.U, c.Size, u)
		}
		u += c.Size
		if c.C < 0 || c.CEnd <= c.C || c.CEnd > loc.PayloadEnd {
			tb.Fatalf("chunk %d: blob range %d-%d outside [0, %d)", i, c.C, c.CEnd, loc.PayloadEnd)
		}
		if i > 0 {
			p := l.Chunks[i-1]
			if c.C < p.C || (c.C == p.C && c.InnerOffset < p.InnerOffset+p.Size) || (c.C > p.C && c.C < p.CEnd) {
				tb.Fatalf("chunk %d (%+v) overlaps chunk %d (%+v)", i, c, i-1, p)
			}
		}
	}
	if u != l.ContentSize {
		tb.Fatalf("chunks cover %d bytes, ContentSize %d", u, l.ContentSize)
	}
	var want int64
	for _, e := range l.Entries {
		if e.Type == index.TypeReg {
			if e.Offset != want {
				tb.Fatalf("%s: virtual offset %d, want %d", e.Name, e.Offset, want)
			}
			want += e.Size
		}
	}
	if want != l.ContentSize {
		tb.Fatalf("files hold %d bytes, ContentSize %d", want, l.ContentSize)
	}
}

// compareWithReference checks every entry and every file's content.
func compareWithReference(t *testing.T, tl testLayer, l *Layer) {
	t.Helper()
	ref, stream := reference(t, tl.blob, l.Layout)
	if got, want := len(l.Entries), len(ref); got != want {
		t.Fatalf("got %d entries, want %d:\ngot  %v\nwant %v", got, want, names(l.Entries), names(ref))
	}
	for i, want := range ref {
		got := l.Entries[i]
		wantData := stream[want.Offset : want.Offset+want.Size]
		got.Offset, want.Offset = 0, 0
		if !reflect.DeepEqual(got, want) {
			t.Errorf("entry %d:\ngot  %+v\nwant %+v", i, got, want)
			continue
		}
		if got.Type == index.TypeReg {
			if data := readFile(t, l, tl.blob, l.Entries[i]); !bytes.Equal(data, wantData) {
				t.Errorf("content of %s: got %d bytes, want %d (equal: %v)", got.Name, len(data), len(wantData), bytes.Equal(data, wantData))
			}
		}
	}
}

func names(es []index.Entry) []string {
	var s []string
	for _, e := range es {
		s = append(s, e.Type.String()+":"+e.Name)
	}
	return s
}

// legacyFooter replaces the 51-byte footer of an eStargz blob with the
// legacy 47-byte one: the same empty gzip member, its extra field holding
// "%016xSTARGZ" without a subfield header.
func legacyFooter(tb testing.TB, tl testLayer) testLayer {
	tb.Helper()
	loc, err := Locate(tl.desc, tail(tl.blob), Options{})
	if err != nil {
		tb.Fatal(err)
	}
	f := []byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0}
	f = append(f, fmt.Sprintf("%016xSTARGZ", loc.Offset)...)
	f = append(f, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0)
	blob := append(append([]byte{}, tl.blob[:len(tl.blob)-estargzFooterSize]...), f...)
	tl.blob, tl.desc.Size = blob, int64(len(blob))
	return tl
}

func TestDecodeLayers(t *testing.T) {
	plain := makeTar(t, fixtureFiles(false))
	subsec := makeTar(t, fixtureFiles(true))
	cases := []struct {
		name        string
		build       func(t *testing.T) testLayer
		layout      Layout
		needTail    bool
		verified    bool
		landmark    Landmark
		minChunks   int // at least this many chunks
		innerOffset bool
	}{
		{"estargz default chunks", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, false, false, estargz.WithParallelism(1))
		}, LayoutEstargz, true, true, LandmarkNoPrefetch, 8, false},
		{"estargz 4 KiB chunks in 3 parts", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, false, false, estargz.WithChunkSize(4096), estargz.WithParallelism(3))
		}, LayoutEstargz, true, true, LandmarkNoPrefetch, 90, false},
		{"estargz prioritized files", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, false, false, estargz.WithChunkSize(10000),
				estargz.WithPrioritizedFiles([]string{"bin/big", "etc/hostname"}), estargz.WithParallelism(2))
		}, LayoutEstargz, true, true, LandmarkPrefetch, 30, false},
		{"estargz min chunk size packs files", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, false, false, estargz.WithChunkSize(8192), estargz.WithMinChunkSize(64<<10))
		}, LayoutEstargz, true, true, LandmarkNoPrefetch, 40, true},
		{"estargz stored blocks", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, false, false, estargz.WithChunkSize(50000), estargz.WithCompressionLevel(gzip.NoCompression))
		}, LayoutEstargz, true, true, LandmarkNoPrefetch, 10, false},
		{"estargz legacy footer", func(t *testing.T) testLayer {
			return legacyFooter(t, buildEstargz(t, plain, false, false, estargz.WithChunkSize(30000)))
		}, LayoutEstargz, true, true, LandmarkNoPrefetch, 10, false},
		{"estargz zstd with position annotations", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, true, true, estargz.WithChunkSize(4096), estargz.WithParallelism(2))
		}, LayoutEstargzZstd, false, true, LandmarkNoPrefetch, 90, false},
		{"estargz zstd footer only", func(t *testing.T) testLayer {
			return buildEstargz(t, plain, true, false, estargz.WithChunkSize(20000),
				estargz.WithPrioritizedFiles([]string{"zeros"}))
		}, LayoutEstargzZstd, true, true, LandmarkPrefetch, 20, false},
		{"zstd:chunked 7000-byte chunks", func(t *testing.T) testLayer {
			return buildZstdChunked(t, subsec, 7000)
		}, LayoutZstdChunked, false, true, LandmarkNone, 50, false},
		{"zstd:chunked one chunk per file", func(t *testing.T) testLayer {
			return buildZstdChunked(t, subsec, 1<<20)
		}, LayoutZstdChunked, false, true, LandmarkNone, 8, false},
		{"zstd:chunked footer only", func(t *testing.T) testLayer {
			tl := buildZstdChunked(t, plain, 9000)
			tl.desc.Annotations = nil
			return tl
		}, LayoutZstdChunked, true, false, LandmarkNone, 40, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tl := tc.build(t)
			_, err := Locate(tl.desc, nil, Options{})
			if gotNeed := errors.Is(err, ErrNeedTail); gotNeed != tc.needTail {
				t.Fatalf("Locate(desc, nil) = %v, want ErrNeedTail: %v", err, tc.needTail)
			}
			if !tc.needTail && err != nil {
				t.Fatalf("Locate(desc, nil) = %v", err)
			}
			l, loc := decodeLayer(t, tl, true)
			if loc.Layout != tc.layout || l.Layout != tc.layout || l.Format != tc.layout.Format() {
				t.Errorf("layout %v/%v format %q, want %v", loc.Layout, l.Layout, l.Format, tc.layout)
			}
			if got := loc.Verified(); got != tc.verified {
				t.Errorf("Verified() = %v, want %v", got, tc.verified)
			}
			if l.Landmark != tc.landmark {
				t.Errorf("Landmark = %v, want %v", l.Landmark, tc.landmark)
			}
			if len(l.Chunks) < tc.minChunks {
				t.Errorf("got %d chunks, want at least %d", len(l.Chunks), tc.minChunks)
			}
			inner := false
			for _, c := range l.Chunks {
				inner = inner || c.InnerOffset > 0
			}
			if inner != tc.innerOffset {
				t.Errorf("chunks with an inner offset: %v, want %v", inner, tc.innerOffset)
			}
			checkLayer(t, l, loc)
			compareWithReference(t, tl, l)
			if l.Landmark == LandmarkPrefetch {
				checkPrefetch(t, l)
			}
		})
	}
}

// checkPrefetch checks that the prioritised files lie before the landmark
// and the others after it.
func checkPrefetch(t *testing.T, l *Layer) {
	t.Helper()
	if l.PrefetchEnd <= 0 || l.PrefetchU <= 0 {
		t.Fatalf("PrefetchEnd %d, PrefetchU %d, want both > 0", l.PrefetchEnd, l.PrefetchU)
	}
	for _, c := range l.Chunks {
		if before := c.U < l.PrefetchU; before != (c.CEnd <= l.PrefetchEnd) {
			t.Errorf("chunk %+v: before PrefetchU %d: %v, before PrefetchEnd %d: %v", c, l.PrefetchU, before, l.PrefetchEnd, !before)
		}
	}
}

func TestLocateNotLazy(t *testing.T) {
	files := makeTar(t, fixtureFiles(false))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(files)
	zw.Close()
	cases := []struct {
		name string
		blob []byte
		ann  map[string]string
		want error
	}{
		{"plain tar", files, nil, ErrNotLazy},
		{"plain gzip", gz.Bytes(), nil, ErrNotLazy},
		{"plain zstd", zstdFrame(t, files), nil, ErrNotLazy},
		{"tiny blob", []byte{1}, nil, ErrNotLazy},
		{"toc digest annotation on plain gzip", gz.Bytes(), map[string]string{AnnotationTOCDigest: "sha256:" + fmt.Sprintf("%064x", 1)}, index.ErrFormat},
		{"bad toc digest annotation", gz.Bytes(), map[string]string{AnnotationTOCDigest: "md5:abc"}, index.ErrFormat},
		{"checksum without position", gz.Bytes(), map[string]string{AnnotationManifestChecksum: "sha256:" + fmt.Sprintf("%064x", 1)}, index.ErrFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			desc := ocispec.Descriptor{Size: int64(len(tc.blob)), Annotations: tc.ann}
			_, err := Locate(desc, tail(tc.blob), Options{})
			if !errors.Is(err, tc.want) {
				t.Errorf("Locate = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestLayerChunkFor(t *testing.T) {
	l := &Layer{ContentSize: 30, Chunks: []Chunk{{U: 0, Size: 10}, {U: 10, Size: 5}, {U: 15, Size: 15}}}
	for _, tc := range []struct {
		off  int64
		want int
	}{{-1, -1}, {0, 0}, {9, 0}, {10, 1}, {14, 1}, {15, 2}, {29, 2}, {30, -1}, {1 << 40, -1}} {
		if got := l.ChunkFor(tc.off); got != tc.want {
			t.Errorf("ChunkFor(%d) = %d, want %d", tc.off, got, tc.want)
		}
	}
}

// Names are cleaned as index.Build cleans tar names: the same corner cases
// through a zstd:chunked layer (whose TOC keeps names as the tar has them)
// must give the entries index.Build gives. eStargz names are not reserved
// there, so the landmark and TOC names are ordinary files.
func TestEntryNamesLikeIndex(t *testing.T) {
	dir := func(name string) testFile {
		return testFile{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: baseTime}}
	}
	reg := func(name string, data string) testFile {
		return testFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: baseTime}, data: []byte(data)}
	}
	link := func(typ byte, name, target string) testFile {
		return testFile{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, ModTime: baseTime}}
	}
	files := []testFile{
		dir("./"), dir("/abs/"), dir("./dot/./dir/"),
		reg("/abs/file", "a"), reg("a/../../escape", "b"), reg("dup//slashes", "c"),
		reg("d/.wh.deleted", ""), reg("d/.wh..wh..opq", ""), reg(".wh.top", ""),
		dir(".wh..wh.plnk/"), reg(".wh..wh.plnk/123.456", "aufs"), reg("x/.wh..wh.aufs", ""),
		link(tar.TypeLink, "hard", "/abs/../abs/file"), link(tar.TypeSymlink, "sym", "../../etc//passwd/"),
		reg(".prefetch.landmark", "\x0f"), reg("stargz.index.json", "{}"), reg("dir/.no.prefetch.landmark", "z"),
		reg("last", "end"),
	}
	tl := buildZstdChunked(t, makeTar(t, files), 3)
	l, _ := decodeLayer(t, tl, false)
	compareWithReference(t, tl, l)
	got := names(l.Entries)
	want := []string{"dir:", "dir:abs", "dir:dot/dir", "file:abs/file", "file:escape", "file:dup/slashes",
		"whiteout:d/deleted", "opaque:d", "whiteout:top", "hardlink:hard", "symlink:sym",
		"file:.prefetch.landmark", "file:stargz.index.json", "file:dir/.no.prefetch.landmark", "file:last"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entries:\ngot  %q\nwant %q", got, want)
	}
	if l.Landmark != LandmarkNone {
		t.Errorf("Landmark = %v, want none", l.Landmark)
	}
}

// DecodeChunk shares pooled decompressors; run it from many goroutines
// (under -race) and check every result.
func TestDecodeChunkConcurrent(t *testing.T) {
	plain := makeTar(t, fixtureFiles(false))
	for _, tl := range []testLayer{
		buildEstargz(t, plain, false, false, estargz.WithChunkSize(4096)),
		buildZstdChunked(t, plain, 4096),
	} {
		l, _ := decodeLayer(t, tl, true)
		want := make([][]byte, len(l.Chunks))
		for i, c := range l.Chunks {
			want[i] = mustDecode(t, l, c, tl.blob[c.C:c.CEnd])
		}
		errs := make(chan error, 8)
		for g := range 8 {
			go func() {
				for i := g; i < len(l.Chunks); i += 3 {
					c := l.Chunks[i]
					got, err := DecodeChunk(l.Format, c, tl.blob[c.C:c.CEnd])
					if err == nil && !bytes.Equal(got, want[i]) {
						err = fmt.Errorf("chunk %d: different bytes", i)
					}
					if err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
}
