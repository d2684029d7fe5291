package bench

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/fstest"
)

// buildVersion is part of every cache key: bump it when the way images are
// made changes.
const buildVersion = "v1"

// Formats, as the tables name them.
const (
	fmtGzip      = "gzip"         // plain gzip, no index anywhere: ocifs streams it the first time
	fmtGzipIndex = "gzip+index"   // the same layers, with `ocifs index build --push`
	fmtEstargz   = "estargz"      // eStargz (gzip chunks + TOC)
	fmtZstdChunk = "zstd:chunked" // zstd:chunked (zstd frames + TOC in a skippable frame)
)

var allFormats = []string{fmtGzip, fmtGzipIndex, fmtEstargz, fmtZstdChunk}

// imageSpec is one benchmark image: a tree on disk split into layers, and
// the program its start-up workload runs.
type imageSpec struct {
	Name    string   `json:"name"`
	Startup []string `json:"startup"` // argv run chrooted into the tree
	Layers  int      `json:"layers"`
	// Container is the program the container-start methods run (through
	// CRI or podman) and Expect what its output must contain; images
	// without one are not measured there.
	Container []string `json:"container,omitempty"`
	Expect    string   `json:"expect,omitempty"`
	// Only, when set, restricts the image to these formats, methods and
	// workloads (the many-files image exists for the daemon's memory).
	Only map[string][]string `json:"only,omitempty"`
	// tree returns the directory trees (one per group of layers) and a key
	// that changes when their content does.
	tree func(ctx context.Context, c *cacheDir, quick bool) (trees []treePart, key string, err error)
}

// treePart is a directory tree published as n layers.
type treePart struct {
	dir    string
	prefix string // path inside the image
	n      int
}

var imageSpecs = []imageSpec{
	{Name: "python", Startup: []string{"/usr/bin/python3", "-c", "import json, sqlite3, asyncio"}, tree: pythonTree,
		Container: []string{"python3", "-c", "print(42)"}, Expect: "42"},
	{Name: "go", Startup: []string{"/usr/local/go/bin/go", "version"}, tree: goTree,
		Container: []string{"/usr/local/go/bin/go", "version"}, Expect: "go version go"},
	{Name: "model", Startup: []string{"/bin/busybox", "sh", "-c", "head -c 16777216 /models/model-00001-of-00004.safetensors | md5sum && md5sum /models/config.json"}, tree: modelTree},
	{Name: "files100k", Startup: []string{"/bin/busybox", "true"}, tree: manyFilesTree, Only: map[string][]string{
		"format": {fmtGzipIndex}, "method": {mLazy, mWarm}, "workload": {wFirst, wWalk}, "profile": {"lan"}}},
}

// allows reports whether spec takes part in a cell of this kind.
func (s imageSpec) allows(kind, v string) bool {
	only, ok := s.Only[kind]
	return !ok || slices.Contains(only, v)
}

// manyFilesTree is 100,000 small files (100 B to 2 KiB of text) in 1,000
// directories over the base: the daemon's memory per file.
func manyFilesTree(ctx context.Context, c *cacheDir, quick bool) ([]treePart, string, error) {
	base, err := baseTree(c)
	if err != nil {
		return nil, "", err
	}
	name := "files100k-" + buildVersion
	dir := c.path("trees", name)
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		os.RemoveAll(dir)
		rng := rand.New(rand.NewPCG(1, 2))
		const letters = "abcdefghijklmnopqrstuvwxyz      \n"
		buf := make([]byte, 2048)
		for d := range 1000 {
			sub := filepath.Join(dir, "srv", "data", fmt.Sprintf("d%03d", d/100), fmt.Sprintf("d%04d", d))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return nil, "", err
			}
			for f := range 100 {
				n := 100 + rng.IntN(1948)
				for i := range n {
					buf[i] = letters[rng.IntN(len(letters))]
				}
				if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d.txt", f)), buf[:n], 0o644); err != nil {
					return nil, "", err
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644); err != nil {
			return nil, "", err
		}
	}
	return []treePart{{dir: base, n: 1}, {dir: dir, n: 2}}, name, nil
}

// cacheDir is bench/.cache: trees, blobs and built images, keyed by input.
type cacheDir struct{ root string }

func (c *cacheDir) path(elem ...string) string {
	return filepath.Join(append([]string{c.root}, elem...)...)
}

// builtImage is an image ready to push: its manifest and where its blobs are.
type builtImage struct {
	Name     string               `json:"name"`
	Format   string               `json:"format"`
	Manifest []byte               `json:"manifest"`
	Config   []byte               `json:"config"`
	Layers   []ocispec.Descriptor `json:"layers"`
	// Size is config plus compressed layers; Unpacked the sum of the tars.
	Size     int64 `json:"size"`
	Unpacked int64 `json:"unpacked"`
	Files    int   `json:"files"`
}

func (b *builtImage) manifestDigest() digest.Digest { return digest.FromBytes(b.Manifest) }

// ---- trees ----

// baseTree is a tiny base for the images that are not a distribution: an
// os-release and busybox, so first-file and start-up have something to run.
func baseTree(c *cacheDir) (string, error) {
	dir := c.path("trees", "base-"+buildVersion)
	if _, err := os.Stat(filepath.Join(dir, ".done")); err == nil {
		return dir, nil
	}
	os.RemoveAll(dir)
	for _, d := range []string{"etc", "bin", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	osr, err := os.ReadFile("/usr/lib/os-release")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/os-release"), osr, 0o644); err != nil {
		return "", err
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755); err != nil {
		return "", err
	}
	for _, l := range []string{"sh", "head", "md5sum", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", l)); err != nil {
			return "", err
		}
	}
	return dir, os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644)
}

func goTree(ctx context.Context, c *cacheDir, quick bool) ([]treePart, string, error) {
	base, err := baseTree(c)
	if err != nil {
		return nil, "", err
	}
	goroot := "/usr/local/go"
	v, err := os.ReadFile(filepath.Join(goroot, "VERSION"))
	if err != nil {
		return nil, "", err
	}
	return []treePart{{dir: base, n: 1}, {dir: goroot, prefix: "usr/local/go", n: 4}}, "go-" + strings.Fields(string(v))[0], nil
}

// pythonTree is a Debian root file system holding python3: the .deb files
// of python3, bash, coreutils, base-files and everything they depend on,
// fetched with apt-get download from the configured mirror and unpacked
// with dpkg -x (maintainer scripts are not run; nothing in the workloads
// needs them).
func pythonTree(ctx context.Context, c *cacheDir, quick bool) ([]treePart, string, error) {
	dir := c.path("trees", "python-"+buildVersion)
	if b, err := os.ReadFile(filepath.Join(dir, ".done")); err == nil {
		return []treePart{{dir: filepath.Join(dir, "root"), n: 3}}, string(b), nil
	}
	os.RemoveAll(dir)
	debs := filepath.Join(dir, "debs")
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, "", err
	}
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
		"--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
		"python3", "base-files", "bash", "coreutils", "libsqlite3-0").Output()
	if err != nil {
		return nil, "", fmt.Errorf("apt-cache depends python3: %w", err)
	}
	set := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if l == "" || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "<") {
			continue
		}
		set[l] = true
	}
	var pkgs []string
	for p := range set {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q"}, pkgs...)...)
	cmd.Dir = debs
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("apt-get download python3 and dependencies: %v: %s", err, out)
	}
	files, err := filepath.Glob(filepath.Join(debs, "*.deb"))
	if err != nil || len(files) == 0 {
		return nil, "", fmt.Errorf("apt-get download gave no .deb files")
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintln(h, filepath.Base(f))
		if out, err := exec.CommandContext(ctx, "dpkg", "-x", f, root).CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("dpkg -x %s: %v: %s", f, err, out)
		}
	}
	os.RemoveAll(debs)
	key := "python-" + hex.EncodeToString(h.Sum(nil))[:16]
	return []treePart{{dir: root, n: 3}}, key, os.WriteFile(filepath.Join(dir, ".done"), []byte(key), 0o644)
}

// modelTree is a model-weights image: four large files of random bytes
// (weights barely compress), a config and a tokenizer, over the base.
// The weights total 1 GiB (256 MiB in --quick).
func modelTree(ctx context.Context, c *cacheDir, quick bool) ([]treePart, string, error) {
	base, err := baseTree(c)
	if err != nil {
		return nil, "", err
	}
	each := int64(256 << 20)
	if quick {
		each = 64 << 20
	}
	name := fmt.Sprintf("model-%s-%d", buildVersion, each)
	dir := c.path("trees", name)
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		os.RemoveAll(dir)
		if err := os.MkdirAll(filepath.Join(dir, "models"), 0o755); err != nil {
			return nil, "", err
		}
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range 4 {
			wg.Go(func() {
				errs[i] = writeRandom(filepath.Join(dir, "models", fmt.Sprintf("model-%05d-of-00004.safetensors", i+1)), uint64(i+1), each)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, "", err
		}
		cfg := `{"architectures":["BenchForCausalLM"],"hidden_size":4096,"num_hidden_layers":32,"torch_dtype":"bfloat16"}` + "\n"
		if err := os.WriteFile(filepath.Join(dir, "models", "config.json"), []byte(cfg), 0o644); err != nil {
			return nil, "", err
		}
		if err := writeRandom(filepath.Join(dir, "models", "tokenizer.model"), 99, 500<<10); err != nil {
			return nil, "", err
		}
		if err := os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644); err != nil {
			return nil, "", err
		}
	}
	return []treePart{{dir: base, n: 1}, {dir: dir, n: 2}}, name, nil
}

func writeRandom(p string, seed uint64, n int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	var s [32]byte
	s[0] = byte(seed)
	r := rand.NewChaCha8(s)
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, r, n); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ---- layers and formats ----

// tarLayers turns the trees into plain tar blobs (cached by key) and
// returns their descriptors (digest = DiffID) and file count.
func tarLayers(c *cacheDir, key string, parts []treePart) ([]ocispec.Descriptor, int, error) {
	metaPath := c.path("images", key+"-"+buildVersion+"-tar.json")
	var meta struct {
		Layers []ocispec.Descriptor
		Files  int
	}
	if b, err := os.ReadFile(metaPath); err == nil && json.Unmarshal(b, &meta) == nil {
		return meta.Layers, meta.Files, nil
	}
	var layers []fstest.Layer
	for _, p := range parts {
		ls, err := fstest.GoToolchain(p.dir, p.n)
		if err != nil {
			return nil, 0, err
		}
		if p.prefix != "" {
			prefixLayers(ls, p.prefix)
		}
		for i := range ls {
			ls[i].Compression = fstest.None
			var kept []fstest.File
			for _, f := range ls[i].Files {
				if filepath.Base(f.Header.Name) == ".done" {
					continue
				}
				if f.Header.Typeflag == tar.TypeReg {
					meta.Files++
				}
				kept = append(kept, f)
			}
			ls[i].Files = kept
		}
		if len(layers) > 0 && len(ls[0].Files) > 0 && ls[0].Files[0].Header.Name == "./" {
			ls[0].Files = ls[0].Files[1:] // one root entry, in the first layer
		}
		layers = append(layers, ls...)
	}
	im, err := fstest.Build(layers, fstest.Options{BlobDir: c.path("blobs")})
	if err != nil {
		return nil, 0, err
	}
	meta.Layers = im.LayerDescs
	b, _ := json.Marshal(meta)
	if err := os.MkdirAll(filepath.Dir(metaPath), 0o755); err != nil {
		return nil, 0, err
	}
	return meta.Layers, meta.Files, os.WriteFile(metaPath, b, 0o644)
}

// prefixLayers moves every entry under dir and adds dir's parents first.
func prefixLayers(ls []fstest.Layer, dir string) {
	var parents []fstest.File
	for p := dir; p != "."; p = filepath.Dir(p) {
		h := tar.Header{Name: p + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		parents = append([]fstest.File{{Header: h}}, parents...)
	}
	for i := range ls {
		for j := range ls[i].Files {
			h := &ls[i].Files[j].Header
			if h.Name == "./" {
				continue
			}
			h.Name = filepath.Join(dir, h.Name)
			if h.Typeflag == tar.TypeDir {
				h.Name += "/"
			}
			if h.Typeflag == tar.TypeLink {
				h.Linkname = filepath.Join(dir, h.Linkname)
			}
		}
	}
	ls[0].Files = append(parents, ls[0].Files...)
	if len(ls[0].Files) > len(parents) && ls[0].Files[len(parents)].Header.Name == "./" {
		root := ls[0].Files[len(parents)]
		copy(ls[0].Files[1:len(parents)+1], ls[0].Files[:len(parents)])
		ls[0].Files[0] = root
	}
}

func blobFile(c *cacheDir, d digest.Digest) string {
	return c.path("blobs", d.Algorithm().String(), d.Encoded())
}

// compressLayer encodes one tar blob in a format and returns the layer
// descriptor and its DiffID (which changes for eStargz: the TOC is part of
// the tar).
func compressLayer(c *cacheDir, tarDesc ocispec.Descriptor, format string) (ocispec.Descriptor, digest.Digest, error) {
	memo := c.path("images", "layer-"+buildVersion+"-"+strings.NewReplacer(":", "_", "+", "_").Replace(format)+"-"+tarDesc.Digest.Encoded()+".json")
	var m struct {
		Desc   ocispec.Descriptor
		DiffID digest.Digest
	}
	if b, err := os.ReadFile(memo); err == nil && json.Unmarshal(b, &m) == nil {
		if _, err := os.Stat(blobFile(c, m.Desc.Digest)); err == nil {
			return m.Desc, m.DiffID, nil
		}
	}
	src, err := os.Open(blobFile(c, tarDesc.Digest))
	if err != nil {
		return m.Desc, "", err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(c.path("blobs"), "layer-*.tmp")
	if err != nil {
		return m.Desc, "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	w := io.MultiWriter(tmp, h)
	m.Desc.Annotations = map[string]string{}
	switch format {
	case fmtGzip:
		zw, _ := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		if _, err := io.Copy(zw, bufio.NewReaderSize(src, 1<<20)); err != nil {
			return m.Desc, "", err
		}
		if err := zw.Close(); err != nil {
			return m.Desc, "", err
		}
		m.Desc.MediaType, m.DiffID, m.Desc.Annotations = ocispec.MediaTypeImageLayerGzip, tarDesc.Digest, nil
	case fmtEstargz, fmtZstdChunk:
		sr := io.NewSectionReader(src, 0, tarDesc.Size)
		opts := []estargz.Option{estargz.WithChunkSize(4 << 20)}
		meta := map[string]string{}
		if format == fmtZstdChunk {
			opts = append(opts, estargz.WithCompression(zstdCompression{
				&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: meta}, &zstdchunked.Decompressor{}}))
		}
		blob, err := estargz.Build(sr, opts...)
		if err != nil {
			return m.Desc, "", fmt.Errorf("build %s layer: %w", format, err)
		}
		if _, err := io.Copy(w, blob); err != nil {
			blob.Close()
			return m.Desc, "", err
		}
		blob.Close()
		m.DiffID = blob.DiffID()
		if format == fmtEstargz {
			m.Desc.MediaType = ocispec.MediaTypeImageLayerGzip
			m.Desc.Annotations[estargz.TOCJSONDigestAnnotation] = blob.TOCDigest().String()
			if n, err := blob.UncompressedSize(); err == nil {
				m.Desc.Annotations[estargz.StoreUncompressedSizeAnnotation] = strconv.FormatInt(n, 10)
			}
		} else {
			m.Desc.MediaType = ocispec.MediaTypeImageLayerZstd
			for k, v := range meta {
				m.Desc.Annotations[k] = v
			}
		}
	default:
		return m.Desc, "", fmt.Errorf("unknown format %q", format)
	}
	m.Desc.Digest = digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
	st, err := tmp.Stat()
	if err != nil {
		return m.Desc, "", err
	}
	m.Desc.Size = st.Size()
	if err := os.Rename(tmp.Name(), blobFile(c, m.Desc.Digest)); err != nil {
		return m.Desc, "", err
	}
	b, _ := json.Marshal(m)
	return m.Desc, m.DiffID, os.WriteFile(memo, b, 0o644)
}

// zstdCompression joins zstdchunked's compressor and decompressor into
// the estargz.Compression that estargz.Build wants.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

// buildImage makes (or takes from the cache) spec's image in format.
func buildImage(ctx context.Context, c *cacheDir, spec imageSpec, format string, quick bool) (*builtImage, error) {
	parts, key, err := spec.tree(ctx, c, quick)
	if err != nil {
		return nil, fmt.Errorf("tree for image %s: %w", spec.Name, err)
	}
	tars, files, err := tarLayers(c, key, parts)
	if err != nil {
		return nil, fmt.Errorf("layers of image %s: %w", spec.Name, err)
	}
	enc := format
	if format == fmtGzipIndex {
		enc = fmtGzip // the same blobs; the index is pushed next to them
	}
	b := &builtImage{Name: spec.Name, Format: format, Files: files}
	layers := make([]ocispec.Descriptor, len(tars))
	diffIDs := make([]digest.Digest, len(tars))
	errs := make([]error, len(tars))
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i, t := range tars {
		b.Unpacked += t.Size
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			layers[i], diffIDs[i], errs[i] = compressLayer(c, t, enc)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("image %s as %s: %w", spec.Name, format, err)
	}
	b.Layers = layers
	cfg := ocispec.Image{
		Created:  &time.Time{},
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config:   ocispec.ImageConfig{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: spec.Startup},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	*cfg.Created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if b.Config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	mf := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(b.Config), Size: int64(len(b.Config))},
		Layers:    layers,
	}
	mf.SchemaVersion = 2
	if b.Manifest, err = json.Marshal(mf); err != nil {
		return nil, err
	}
	b.Size = int64(len(b.Config))
	for _, l := range layers {
		b.Size += l.Size
	}
	return b, nil
}

// repo is the repository an image is pushed to: each format gets its own,
// so that the index pushed for gzip+index (a referrer, kept under the
// sha256-<hex> tag of the repository) is not seen by plain gzip.
func (b *builtImage) repo() string {
	return "bench/" + b.Name + "-" + strings.NewReplacer(":", "-", "+", "-").Replace(b.Format)
}

// ref is the reference clients use, through the proxy at host.
func (b *builtImage) ref(host string) string {
	return host + "/" + b.repo() + "@" + b.manifestDigest().String()
}
