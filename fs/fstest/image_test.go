package fstest

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func mustBuild(t testing.TB, layers []Layer, opts Options) *Image {
	t.Helper()
	im, err := Build(layers, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return im
}

func TestBuildDeterministic(t *testing.T) {
	tests := []struct {
		name   string
		layers func() []Layer
		opts   Options
	}{
		{"corners gzip", Corners, Options{}},
		{"corners zstd", func() []Layer { return CornersWith(Zstd) }, Options{}},
		{"corners none", func() []Layer { return CornersWith(None) }, Options{}},
		{"mixed docker", MixedCorners, Options{Docker: true}},
		{"random arm64", func() []Layer { return Random(7, 100) }, Options{Platform: "linux/arm64/v8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustBuild(t, tt.layers(), tt.opts)
			b := mustBuild(t, tt.layers(), tt.opts)
			if a.ManifestDesc.Digest != b.ManifestDesc.Digest {
				t.Errorf("manifest digests differ: %s, %s", a.ManifestDesc.Digest, b.ManifestDesc.Digest)
			}
			for i := range a.Layers {
				if !bytes.Equal(a.Layers[i], b.Layers[i]) {
					t.Errorf("layer %d bytes differ", i)
				}
				if got := digest.FromBytes(a.Layers[i]); got != a.LayerDescs[i].Digest {
					t.Errorf("layer %d digest %s, descriptor says %s", i, got, a.LayerDescs[i].Digest)
				}
			}
		})
	}
}

// decompress returns the tar bytes of an encoded layer.
func decompress(t *testing.T, blob []byte, mediaType string) []byte {
	t.Helper()
	var r io.Reader = bytes.NewReader(blob)
	switch mediaType {
	case ocispec.MediaTypeImageLayerGzip, MediaTypeDockerLayerGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case ocispec.MediaTypeImageLayerZstd, MediaTypeDockerLayerZstd:
		zr, err := zstd.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompress %s: %v", mediaType, err)
	}
	return b
}

func TestBuildConfigAndMediaTypes(t *testing.T) {
	im := mustBuild(t, MixedCorners(), Options{Docker: true, Platform: "linux/arm/v7"})
	wantTypes := []string{MediaTypeDockerLayerGzip, MediaTypeDockerLayerZstd, MediaTypeDockerLayer, MediaTypeDockerLayerGzip}
	for i, desc := range im.LayerDescs {
		if desc.MediaType != wantTypes[i] {
			t.Errorf("layer %d media type %q, want %q", i, desc.MediaType, wantTypes[i])
		}
		tarBytes := decompress(t, im.Layers[i], desc.MediaType)
		if got := digest.FromBytes(tarBytes); got != im.DiffIDs[i] {
			t.Errorf("layer %d DiffID %s, tar digests to %s", i, im.DiffIDs[i], got)
		}
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "arm" || cfg.Variant != "v7" {
		t.Errorf("config platform %s/%s/%s, want linux/arm/v7", cfg.OS, cfg.Architecture, cfg.Variant)
	}
	if len(cfg.RootFS.DiffIDs) != 4 || cfg.RootFS.DiffIDs[3] != im.DiffIDs[3] {
		t.Errorf("config diff_ids %v, want %v", cfg.RootFS.DiffIDs, im.DiffIDs)
	}
	var mf ocispec.Manifest
	if err := json.Unmarshal(im.Manifest, &mf); err != nil {
		t.Fatal(err)
	}
	if mf.MediaType != MediaTypeDockerManifest || mf.Config.MediaType != MediaTypeDockerConfig || im.ManifestDesc.MediaType != MediaTypeDockerManifest {
		t.Errorf("manifest media types %q, config %q", mf.MediaType, mf.Config.MediaType)
	}
}

// TestCornerTarEntries reads the corner layers back with archive/tar and
// checks that the tar features they claim to exercise are really encoded.
func TestCornerTarEntries(t *testing.T) {
	im := mustBuild(t, CornersWith(None), Options{})
	type seen struct {
		hdr   *tar.Header
		layer int
	}
	entries := map[string]seen{}
	rawHasGNULong := false
	for i, blob := range im.Layers {
		if bytes.Contains(blob, []byte("././@LongLink")) {
			rawHasGNULong = true
		}
		tr := tar.NewReader(bytes.NewReader(blob))
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			entries[hdr.Name] = seen{hdr, i}
		}
	}
	if !rawHasGNULong {
		t.Errorf("no GNU ././@LongLink record in any layer")
	}
	check := func(name string, f func(h *tar.Header) bool, what string) {
		t.Helper()
		e, ok := entries[name]
		if !ok {
			t.Errorf("no entry %q", name)
			return
		}
		if !f(e.hdr) {
			t.Errorf("entry %q (layer %d): want %s, got %+v", name, e.layer, what, *e.hdr)
		}
	}
	check("./", func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode == 0o755 }, "root dir 0755")
	check("./highuid", func(h *tar.Header) bool { return h.Uid == 3000000 && h.Gid == 3000001 }, "uid 3000000")
	check("./subsec", func(h *tar.Header) bool { return h.ModTime.Equal(CornerSubsecond) }, "sub-second mtime")
	check("./xattr-file", func(h *tar.Header) bool { return h.PAXRecords["SCHILY.xattr.user.bin"] == "\x00\x01\xfe\xff" }, "binary xattr")
	check("./dev/loop0", func(h *tar.Header) bool { return h.Typeflag == tar.TypeBlock && h.Devmajor == 7 }, "block 7,0")
	check("./hl/link2", func(h *tar.Header) bool { return h.Typeflag == tar.TypeLink && h.Linkname == "./hl/orig" }, "hardlink to ./hl/orig")
	check(CornerLongName, func(h *tar.Header) bool { return h.Format == tar.FormatPAX }, "PAX")
	check(CornerDeepPath, func(h *tar.Header) bool { return len(h.Name) > 255 }, "over 255 bytes")
	check(CornerGNULinkName, func(h *tar.Header) bool { return h.Format == tar.FormatGNU && h.Linkname == CornerGNUName }, "GNU hardlink")
	check("gnu/highuid", func(h *tar.Header) bool { return h.Uid == 3000000 && h.Format == tar.FormatGNU }, "GNU base-256 uid")
	check("opaque/.wh..wh..opq", func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg }, "opaque marker")
	if big := entries["./big.bin"].hdr; big == nil || big.Size != CornerBigSize {
		t.Errorf("big.bin = %+v, want size %d", big, CornerBigSize)
	}
}

func TestBuildBlobDir(t *testing.T) {
	dir := t.TempDir()
	mem := mustBuild(t, Corners(), Options{})
	disk := mustBuild(t, Corners(), Options{BlobDir: dir})
	if disk.Layers != nil {
		t.Errorf("Build with BlobDir kept %d layers in memory", len(disk.Layers))
	}
	if mem.ManifestDesc.Digest != disk.ManifestDesc.Digest {
		t.Errorf("manifest digest in memory %s, with BlobDir %s", mem.ManifestDesc.Digest, disk.ManifestDesc.Digest)
	}
	for i, desc := range disk.LayerDescs {
		b, err := os.ReadFile(filepath.Join(dir, "sha256", desc.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, mem.Layers[i]) {
			t.Errorf("layer %d on disk differs from memory", i)
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if len(tmps) != 0 {
		t.Errorf("temp files left in blob dir: %v", tmps)
	}
}

func TestBuildFilePath(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	content := randomBytes(3, 100000)
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	fromPath := mustBuild(t, []Layer{{Files: []File{{Header: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Path: src}}}}, Options{})
	fromData := mustBuild(t, []Layer{{Files: []File{{Header: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: content}}}}, Options{})
	if fromPath.ManifestDesc.Digest != fromData.ManifestDesc.Digest {
		t.Errorf("File.Path and File.Data give different images")
	}
	_, err := Build([]Layer{{Files: []File{{Header: tar.Header{Typeflag: tar.TypeDir, Name: "d/"}, Data: []byte("x")}}}}, Options{})
	if err == nil {
		t.Errorf("Build(dir with data) succeeded, want error")
	}
	if _, err := Build(nil, Options{Platform: "linux"}); err == nil {
		t.Errorf("Build(platform %q) succeeded, want error", "linux")
	}
}

func readIndex(t *testing.T, dir string) ocispec.Index {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestWriteLayoutTags(t *testing.T) {
	dir := t.TempDir()
	a := mustBuild(t, Corners(), Options{})
	b := mustBuild(t, Random(1, 30), Options{})
	for _, step := range []struct {
		im  *Image
		tag string
	}{{a, "a"}, {b, "b"}, {b, "a"}} {
		if err := step.im.WriteLayout(dir, step.tag); err != nil {
			t.Fatalf("WriteLayout(%s): %v", step.tag, err)
		}
	}
	idx := readIndex(t, dir)
	got := map[string]digest.Digest{}
	for _, m := range idx.Manifests {
		got[m.Annotations[ocispec.AnnotationRefName]] = m.Digest
	}
	want := map[string]digest.Digest{"a": b.ManifestDesc.Digest, "b": b.ManifestDesc.Digest}
	if len(got) != len(want) || len(idx.Manifests) != 2 || got["a"] != want["a"] || got["b"] != want["b"] {
		t.Errorf("index.json tags = %v, want %v", got, want)
	}
	for _, im := range []*Image{a, b} {
		for _, desc := range im.Blobs() {
			blob, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", desc.Digest.Encoded()))
			if err != nil {
				t.Fatal(err)
			}
			if digest.FromBytes(blob) != desc.Digest {
				t.Errorf("blob %s has wrong content", desc.Digest)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ocispec.ImageLayoutFile)); err != nil {
		t.Error(err)
	}
}

func TestBuildIndex(t *testing.T) {
	amd := mustBuild(t, Random(1, 10), Options{Platform: "linux/amd64"})
	arm := mustBuild(t, Random(2, 10), Options{Platform: "linux/arm64/v8"})
	ix, err := BuildIndex(map[string]*Image{"linux/arm64/v8": arm, "linux/amd64": amd})
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(ix.Manifest, &idx); err != nil {
		t.Fatal(err)
	}
	if ix.Desc.MediaType != ocispec.MediaTypeImageIndex || len(idx.Manifests) != 2 {
		t.Fatalf("index %s with %d manifests, want OCI index of 2", ix.Desc.MediaType, len(idx.Manifests))
	}
	if m := idx.Manifests[1]; m.Digest != arm.ManifestDesc.Digest || m.Platform.Architecture != "arm64" || m.Platform.Variant != "v8" {
		t.Errorf("index manifest 1 = %+v, want arm64/v8 %s", m, arm.ManifestDesc.Digest)
	}
	dir := t.TempDir()
	if err := ix.WriteLayout(dir, "multi"); err != nil {
		t.Fatal(err)
	}
	if got := readIndex(t, dir).Manifests[0].Digest; got != ix.Desc.Digest {
		t.Errorf("layout tag multi points to %s, want index %s", got, ix.Desc.Digest)
	}

	damd := mustBuild(t, Random(1, 10), Options{Docker: true})
	dix, err := BuildIndex(map[string]*Image{"linux/amd64": damd})
	if err != nil {
		t.Fatal(err)
	}
	if dix.Desc.MediaType != MediaTypeDockerManifestList {
		t.Errorf("index of Docker images has media type %q, want %q", dix.Desc.MediaType, MediaTypeDockerManifestList)
	}
}

func FuzzRandom(f *testing.F) {
	f.Add(int64(0), 1)
	f.Add(int64(1), 50)
	f.Add(int64(99), 200)
	f.Fuzz(func(t *testing.T, seed int64, n int) {
		if n < 0 || n > 400 {
			return
		}
		a := mustBuild(t, Random(seed, n), Options{})
		b := mustBuild(t, Random(seed, n), Options{})
		if a.ManifestDesc.Digest != b.ManifestDesc.Digest {
			t.Fatalf("Random(%d, %d) not deterministic", seed, n)
		}
	})
}

// TestIndependent keeps fstest an independent reference: it must not import
// other ocifs packages nor go-containerregistry.
func TestIndependent(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if (strings.HasPrefix(pkg, "github.com/ocifs/ocifs/") && pkg != "github.com/ocifs/ocifs/fs/fstest") ||
			strings.HasPrefix(pkg, "github.com/google/go-containerregistry") {
			t.Errorf("fstest depends on %s", pkg)
		}
	}
}
