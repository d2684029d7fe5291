package fs

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// nonUTF8Layers returns a layer whose names are not all UTF-8, as a tar
// made on a Latin-1 system holds them: file names (in PAX path records and
// raw in GNU headers), two names that are one once their bad bytes become
// U+FFFD, a directory, a symlink target, a hard link and an xattr name; and
// a second layer with one more such name. Mtimes are whole seconds, which
// eStargz keeps. (Both layers need such a name: an eStargz layer served
// lazily hides its TOC and landmark files, one streamed shows them, and
// umoci shows the top layer's.)
func nonUTF8Layers() []fstest.Layer {
	mt := time.Unix(1700000000, 0)
	reg := func(name, data string, format tar.Format) fstest.File {
		return fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt, Format: format}, Data: []byte(data)}
	}
	dir := func(name string) fstest.File {
		return fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt, Format: tar.FormatPAX}}
	}
	xattr := reg("names/xattr.txt", "has an xattr whose name is Latin-1\n", tar.FormatPAX)
	xattr.Header.PAXRecords = map[string]string{"SCHILY.xattr.user.caf\xe9": "value", "SCHILY.xattr.user.plain": "p"}
	files := []fstest.File{
		dir("./"),
		dir("names/"),
		reg("names/plain.txt", "a plain name\n", tar.FormatPAX),
		reg("names/caf\xe9.txt", "e acute in Latin-1\n", tar.FormatPAX),
		reg("names/caf\xe8.txt", "e grave in Latin-1: the same TOC name as the e acute\n", tar.FormatPAX),
		reg("names/gnu-\xff\xfe.bin", strings.Repeat("raw bytes in a GNU header's name field\n", 200), tar.FormatGNU),
		{Header: tar.Header{Name: "names/to-caf\xe9", Typeflag: tar.TypeSymlink, Linkname: "caf\xe9.txt", Mode: 0o777, ModTime: mt, Format: tar.FormatPAX}},
		{Header: tar.Header{Name: "names/hard-\xe9", Typeflag: tar.TypeLink, Linkname: "names/caf\xe9.txt", ModTime: mt, Format: tar.FormatPAX}},
		dir("names/d\xe9j\xe0/"),
		reg("names/d\xe9j\xe0/inner.txt", "in a directory with a Latin-1 name\n", tar.FormatPAX),
		xattr,
	}
	upper := []fstest.File{dir("etc/"), reg("etc/os-release", "ID=ocifs\n", tar.FormatPAX), reg("etc/r\xe9sum\xe9", "upper layer\n", tar.FormatPAX)}
	return []fstest.Layer{{Files: files}, {Files: upper}}
}

// umociOfBlobs returns umoci's unpack of the tars img's layer blobs
// decompress to (umoci reads no zstd: each tar is gzipped again into an
// image otherwise the same), so an eStargz image's reference holds the TOC
// and landmark files its tar holds.
func umociOfBlobs(t *testing.T, img *fstest.Image) string {
	t.Helper()
	out := img
	for i, desc := range img.LayerDescs {
		dr, err := index.Decompress(desc.MediaType, bytes.NewReader(img.Layers[i]))
		if err != nil {
			t.Fatal(err)
		}
		tarBytes, err := io.ReadAll(dr)
		dr.Close()
		if err != nil {
			t.Fatalf("decompressing layer %d: %v", i, err)
		}
		out = withLayer(t, out, i, tarBytes)
		out.LayerDescs[i].MediaType = ocispec.MediaTypeImageLayerGzip
		patchManifestJSON(t, out, func(m map[string]any) {
			m["layers"].([]any)[i].(map[string]any)["mediaType"] = ocispec.MediaTypeImageLayerGzip
		})
	}
	layout := t.TempDir()
	if err := out.WriteLayout(layout, "ref"); err != nil {
		t.Fatal(err)
	}
	return fstest.UmociUnpack(t, layout, "ref")
}

// settleAll starts the background fetch of every layer and waits until the
// background has nothing left to do: every layer fetched whole and checked
// (digest, DiffID, the table in use against the verified tar), extracted
// where it is extracted.
func settleAll(t *testing.T, im *Image) {
	t.Helper()
	im.Prefetch()
	im.bg.Wait()
	for _, l := range im.Layers() {
		if !l.Settled {
			t.Fatalf("layer %s not settled after the background ended", l.Digest)
		}
	}
}

// exactBeforeAndAfter mounts im and compares it with want before the
// background check (no Prefetch) and after it; then every layer must be
// complete and verified, nothing refused, no verification failed.
func exactBeforeAndAfter(t *testing.T, im *Image, want string) {
	t.Helper()
	mnt := mountImage(t, im)
	compare(t, "before the background check", mnt, want)
	settleAll(t, im)
	compare(t, "after the background check", mnt, want)
	st := im.Stats()
	if st.VerifyFailures != 0 {
		t.Errorf("verify_failures = %d, want 0", st.VerifyFailures)
	}
	for _, l := range st.Layers {
		if !l.Complete || !l.Verified || l.Refused != 0 {
			t.Errorf("layer %s: complete %v, verified %v, refused %d after the background check; want true, true, 0", l.Digest, l.Complete, l.Verified, l.Refused)
		}
	}
}

// TestLazyNonUTF8Names: a layer whose tar holds names that are not UTF-8
// reads exactly as umoci unpacks it, before the background check and after
// it, and nothing is EIO. A TOC (JSON) holds such names with U+FFFD in
// place of the bad bytes. zstd:chunked as containers/storage writes it now
// carries the tar-split, whose raw headers hold the exact names: the layer
// is served lazily with them. eStargz and a zstd:chunked TOC without a tar-split
// cannot say the names: the layer is streamed (gzip) or fetched whole
// (zstd), verified against its digest, and its why says so.
//
// The refusal of a TOC is one Warn line per layer (both layers have such a
// name), none when the tar-split gives the names.
//
// Before the fix, every variant failed the first comparison (the lazy tree
// had "caf\ufffd.txt", one file for two names, and no "caf\xe9.txt"), and
// the background check then quarantined the layer: every file of it EIO.
func TestLazyNonUTF8Names(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	tests := []struct {
		name   string
		opts   fstest.LazyOptions
		mode   string
		whyHas string
	}{
		{"zstd-chunked with tar-split", fstest.LazyOptions{Format: fstest.ZstdChunked, ChunkSize: 16 << 10}, ModeZstdChunked, "tar-split"},
		{"zstd-chunked without tar-split", fstest.LazyOptions{Format: fstest.ZstdChunked, NoTarSplit: true}, ModeWhole, "U+FFFD"},
		{"estargz", fstest.LazyOptions{Format: fstest.Estargz, ChunkSize: 4 << 10}, ModeStream, "U+FFFD"},
		{"estargz-zstd", fstest.LazyOptions{Format: fstest.EstargzZstd}, ModeWhole, "U+FFFD"},
	}
	for n, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layers := nonUTF8Layers()
			ref, img := pushLazy(t, host, fmt.Sprintf("names/nonutf8-%d", n), layers, tt.opts)
			want := umociOfBlobs(t, img)
			log, lines := capturingLogger(t)
			opts := lazyOpts(t)
			opts.Logger = log
			im := resolveLoad(t, newClient(t, "", nil), ref, opts)
			l := im.Layers()[0]
			if l.Mode != tt.mode || !strings.Contains(l.Why, tt.whyHas) {
				t.Errorf("layer 0: mode %s (%s), want %s saying %q", l.Mode, l.Why, tt.mode, tt.whyHas)
			}
			exactBeforeAndAfter(t, im, want)
			refusals := len(layers)
			if tt.mode == ModeZstdChunked {
				refusals = 0
			}
			if n := lines.count(namesRefusedLine); n != refusals {
				t.Errorf("%d log lines say %q, want %d (one per layer whose TOC cannot say its names)", n, namesRefusedLine, refusals)
			}
		})
	}
}

// namesRefusedLine is what the one Warn line about a TOC that cannot give
// its layer's names exactly says.
const namesRefusedLine = "lazy layer refused: its TOC cannot give its names exactly"

// TestIndexNonUTF8Names: an ocifs index holds names as the tar's bytes, so
// gzip layers whose names are not UTF-8 are served lazily in index mode,
// from the registry's index and from the local one a stream left, exactly
// as umoci unpacks them, before the background check and after it, with
// nothing refused or failed.
func TestIndexNonUTF8Names(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers := withCompression(nonUTF8Layers(), fstest.Gzip)
	ref, _ := pushPlain(t, host, "names/index", layers)
	want := reference(t, nonUTF8Layers())
	pushIndexOf(t, ref, Options{Logger: testLogger(t), SpanSize: lazySpan})
	streamed := t.TempDir()
	loadOn(t, streamed, ref, Options{WholeThreshold: 1, NoRemoteIndex: true}) // streams, leaves a local index
	for _, v := range []struct {
		name  string
		cache string
		opts  Options
	}{
		{"registry index", "", lazyOpts(t)},
		{"local index left by a stream", streamed, Options{Logger: testLogger(t), WholeThreshold: 1, NoRemoteIndex: true}},
	} {
		t.Run(v.name, func(t *testing.T) {
			im := resolveLoad(t, newClient(t, v.cache, nil), ref, v.opts)
			for i, l := range im.Layers() {
				if l.Mode != ModeIndex {
					t.Fatalf("layer %d: mode %s (%s), want %s", i, l.Mode, l.Why, ModeIndex)
				}
			}
			exactBeforeAndAfter(t, im, want)
		})
	}
}

// TestSkopeoZstdChunkedNonUTF8Names: the same layers, written as
// zstd:chunked by skopeo itself (1.9.3 here: containers/storage's older
// layout, legacy annotations and no tar-split), read exactly as umoci
// unpacks the gzip original, before the background check and after it: the
// TOC cannot say the names, so the layer is fetched whole and verified.
// Before the fix the lazy tree had "caf\ufffd.txt" and the check then
// quarantined the layer.
func TestSkopeoZstdChunkedNonUTF8Names(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers := withCompression(nonUTF8Layers(), fstest.Gzip)
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layout := t.TempDir()
	if err := img.WriteLayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	want := fstest.UmociUnpack(t, layout, "v1")
	ref := host + "/names/skopeo:v1"
	fstest.SkopeoCopy(t, "--dest-tls-verify=false", "--dest-compress-format", "zstd:chunked", "oci:"+layout+":v1", "docker://"+ref)

	im := resolveLoad(t, newClient(t, "", nil), ref, lazyOpts(t))
	for _, l := range im.Layers() {
		if l.MediaType != ocispec.MediaTypeImageLayerZstd {
			t.Fatalf("layer %s: media type %s; skopeo did not write zstd:chunked", l.Digest, l.MediaType)
		}
	}
	if l := im.Layers()[0]; l.Mode != ModeWhole || !strings.Contains(l.Why, "U+FFFD") {
		t.Errorf("layer 0: mode %s (%s), want %s saying why the TOC cannot be used", l.Mode, l.Why, ModeWhole)
	}
	exactBeforeAndAfter(t, im, want)
}
