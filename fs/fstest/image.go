package fstest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Compression is how a layer blob is compressed.
type Compression int

const (
	// None stores the layer as a plain tar.
	None Compression = iota
	// Gzip compresses the layer with gzip (no name, zero mtime, so the bytes are deterministic).
	Gzip
	// Zstd compresses the layer with zstd (single-threaded encoder, deterministic).
	Zstd
)

// String names the compression as it appears in media types.
func (c Compression) String() string {
	switch c {
	case None:
		return "none"
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// Docker schema 2 media types; image-spec only defines the OCI ones.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar"
	MediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerLayerZstd    = "application/vnd.docker.image.rootfs.diff.tar.zstd"
)

// File is one tar entry, written in order. For regular files Header.Size is
// set by Build from Data or from the file at Path; other sizes are left as
// given (zero for everything but regular files).
type File struct {
	Header tar.Header
	// Data is the content of a regular file.
	Data []byte
	// Path, when set, names a file on disk whose content is streamed into
	// the entry at Build time instead of Data, so large trees are never held
	// in memory.
	Path string
	// Sparse, when set, writes the regular file as a GNU sparse file
	// (see SparseMap); Data then holds only its segments' bytes.
	Sparse *SparseMap
}

// Layer is one image layer: its entries in tar order and its compression.
type Layer struct {
	Files       []File
	Compression Compression
}

// Options configures Build. The zero value builds an in-memory OCI image for
// the running GOOS/GOARCH.
type Options struct {
	// Docker selects Docker schema 2 media types instead of OCI ones.
	Docker bool
	// Platform is "os/arch[/variant]"; empty means runtime.GOOS/GOARCH.
	Platform string
	// BlobDir, when set, makes Build write layer blobs as files
	// BlobDir/sha256/<hex> instead of holding them in Image.Layers (which is
	// then nil). Use it for large images.
	BlobDir string
}

// Image is a built image: every blob with its descriptor. Its bytes are a
// pure function of the layers and options given to Build.
type Image struct {
	// Layers holds the encoded layer blobs; nil when Options.BlobDir was set.
	Layers     [][]byte
	LayerDescs []ocispec.Descriptor
	// DiffIDs are the sha256 digests of the uncompressed layer tars.
	DiffIDs      []digest.Digest
	Config       []byte
	ConfigDesc   ocispec.Descriptor
	Manifest     []byte
	ManifestDesc ocispec.Descriptor
	// Platform is the platform recorded in the config.
	Platform ocispec.Platform

	blobDir string
}

// created is the fixed creation time written into configs, so that Build is
// deterministic.
var created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (ocispec.Platform, error) {
	if s == "" {
		return ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ocispec.Platform{}, fmt.Errorf("parse platform %q: want os/arch[/variant]", s)
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// Build encodes the layers, a config and a manifest. The same input gives
// the same bytes.
func Build(layers []Layer, opts Options) (*Image, error) {
	plat, err := ParsePlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	im := &Image{Platform: plat, blobDir: opts.BlobDir}
	if opts.BlobDir != "" {
		if err := os.MkdirAll(filepath.Join(opts.BlobDir, "sha256"), 0o755); err != nil {
			return nil, fmt.Errorf("create blob dir: %w", err)
		}
	}
	var history []ocispec.History
	for i, l := range layers {
		desc, diffID, blob, err := encodeLayer(l, opts)
		if err != nil {
			return nil, fmt.Errorf("encode layer %d: %w", i, err)
		}
		if opts.BlobDir == "" {
			im.Layers = append(im.Layers, blob)
		}
		im.LayerDescs = append(im.LayerDescs, desc)
		im.DiffIDs = append(im.DiffIDs, diffID)
		history = append(history, ocispec.History{
			Created:   &created,
			CreatedBy: fmt.Sprintf("fstest layer %d (%d entries, %s)", i, len(l.Files), l.Compression),
		})
	}
	cfg := ocispec.Image{
		Created:  &created,
		Platform: plat,
		Config:   ocispec.ImageConfig{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: im.DiffIDs},
		History:  history,
	}
	if cfg.RootFS.DiffIDs == nil {
		cfg.RootFS.DiffIDs = []digest.Digest{}
	}
	if im.Config, err = json.Marshal(cfg); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	cfgType, mfType := ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageManifest
	if opts.Docker {
		cfgType, mfType = MediaTypeDockerConfig, MediaTypeDockerManifest
	}
	im.ConfigDesc = descriptor(cfgType, im.Config)
	mf := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: mfType,
		Config:    im.ConfigDesc,
		Layers:    im.LayerDescs,
	}
	if mf.Layers == nil {
		mf.Layers = []ocispec.Descriptor{}
	}
	if im.Manifest, err = json.Marshal(mf); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	im.ManifestDesc = descriptor(mfType, im.Manifest)
	return im, nil
}

func descriptor(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

func layerMediaType(c Compression, docker bool) (string, error) {
	switch {
	case c == None && docker:
		return MediaTypeDockerLayer, nil
	case c == Gzip && docker:
		return MediaTypeDockerLayerGzip, nil
	case c == Zstd && docker:
		return MediaTypeDockerLayerZstd, nil
	case c == None:
		return ocispec.MediaTypeImageLayer, nil
	case c == Gzip:
		return ocispec.MediaTypeImageLayerGzip, nil
	case c == Zstd:
		return ocispec.MediaTypeImageLayerZstd, nil
	}
	return "", fmt.Errorf("unknown compression %d", int(c))
}

// countingHash tracks the digest and size of everything written to it.
type countingHash struct {
	h hash.Hash
	n int64
}

func newCountingHash() *countingHash { return &countingHash{h: sha256.New()} }

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func (c *countingHash) digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(c.h.Sum(nil)))
}

// encodeLayer writes one layer blob to memory or to opts.BlobDir and returns
// its descriptor, its DiffID and (in memory) its bytes.
func encodeLayer(l Layer, opts Options) (ocispec.Descriptor, digest.Digest, []byte, error) {
	mediaType, err := layerMediaType(l.Compression, opts.Docker)
	if err != nil {
		return ocispec.Descriptor{}, "", nil, err
	}
	var (
		buf  bytes.Buffer
		tmp  *os.File
		dest io.Writer = &buf
	)
	if opts.BlobDir != "" {
		tmp, err = os.CreateTemp(opts.BlobDir, "layer-*.tmp")
		if err != nil {
			return ocispec.Descriptor{}, "", nil, fmt.Errorf("create temp blob: %w", err)
		}
		defer func() {
			tmp.Close()
			os.Remove(tmp.Name()) // a no-op once renamed
		}()
		dest = tmp
	}
	blobHash := newCountingHash()
	compressed := io.MultiWriter(dest, blobHash)

	var comp io.WriteCloser
	switch l.Compression {
	case None:
		comp = nopWriteCloser{compressed}
	case Gzip:
		zw, err := gzip.NewWriterLevel(compressed, gzip.DefaultCompression)
		if err != nil {
			return ocispec.Descriptor{}, "", nil, err
		}
		comp = zw
	case Zstd:
		zw, err := zstd.NewWriter(compressed, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return ocispec.Descriptor{}, "", nil, err
		}
		comp = zw
	}
	diffHash := newCountingHash()
	stream := io.MultiWriter(comp, diffHash)
	tw := tar.NewWriter(stream)
	for i := range l.Files {
		if err := writeEntry(tw, stream, &l.Files[i]); err != nil {
			return ocispec.Descriptor{}, "", nil, fmt.Errorf("entry %d %q: %w", i, l.Files[i].Header.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return ocispec.Descriptor{}, "", nil, fmt.Errorf("close tar: %w", err)
	}
	if err := comp.Close(); err != nil {
		return ocispec.Descriptor{}, "", nil, fmt.Errorf("close %s: %w", l.Compression, err)
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: blobHash.digest(), Size: blobHash.n}
	if tmp != nil {
		if err := tmp.Close(); err != nil {
			return ocispec.Descriptor{}, "", nil, fmt.Errorf("write blob: %w", err)
		}
		if err := os.Rename(tmp.Name(), blobPath(opts.BlobDir, desc.Digest)); err != nil {
			return ocispec.Descriptor{}, "", nil, fmt.Errorf("store blob: %w", err)
		}
		return desc, diffHash.digest(), nil, nil
	}
	return desc, diffHash.digest(), buf.Bytes(), nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// writeEntry writes f with tw, or, for a sparse file archive/tar cannot
// write, directly to stream, the tar stream below tw.
func writeEntry(tw *tar.Writer, stream io.Writer, f *File) error {
	hdr := f.Header
	isReg := hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA //nolint:staticcheck // TypeRegA is what old tars carry
	if !isReg && (f.Data != nil || f.Path != "" || f.Sparse != nil) {
		return errors.New("content given for a non-regular entry")
	}
	if f.Sparse != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
		return writeSparse(stream, f)
	}
	if !isReg {
		return tw.WriteHeader(&hdr)
	}
	hdr.Typeflag = tar.TypeReg
	if f.Path == "" {
		hdr.Size = int64(len(f.Data))
		if err := tw.WriteHeader(&hdr); err != nil {
			return err
		}
		_, err := tw.Write(f.Data)
		return err
	}
	src, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	hdr.Size = fi.Size()
	if err := tw.WriteHeader(&hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, src)
	if err != nil {
		return err
	}
	if n != hdr.Size {
		return fmt.Errorf("read %s: got %d bytes, stat said %d", f.Path, n, hdr.Size)
	}
	return nil
}

func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, d.Algorithm().String(), d.Encoded())
}

// Blobs lists every blob of the image (config, layers, manifest last) by descriptor.
func (im *Image) Blobs() []ocispec.Descriptor {
	descs := append([]ocispec.Descriptor{im.ConfigDesc}, im.LayerDescs...)
	return append(descs, im.ManifestDesc)
}

// Open returns the bytes of one of the image's blobs.
func (im *Image) Open(d digest.Digest) (io.ReadCloser, int64, error) {
	switch d {
	case im.ConfigDesc.Digest:
		return io.NopCloser(bytes.NewReader(im.Config)), int64(len(im.Config)), nil
	case im.ManifestDesc.Digest:
		return io.NopCloser(bytes.NewReader(im.Manifest)), int64(len(im.Manifest)), nil
	}
	for i, desc := range im.LayerDescs {
		if desc.Digest != d {
			continue
		}
		if im.Layers != nil {
			return io.NopCloser(bytes.NewReader(im.Layers[i])), desc.Size, nil
		}
		f, err := os.Open(blobPath(im.blobDir, d))
		if err != nil {
			return nil, 0, fmt.Errorf("open blob %s: %w", d, err)
		}
		return f, desc.Size, nil
	}
	return nil, 0, fmt.Errorf("open blob %s: not part of the image", d)
}

// WriteLayout writes the image into an OCI image layout at dir (created if
// needed) and tags it in index.json with org.opencontainers.image.ref.name.
// An existing layout is extended: other tags stay, an entry with the same
// tag is replaced.
func (im *Image) WriteLayout(dir, tag string) error {
	for _, desc := range im.Blobs() {
		if err := writeLayoutBlob(dir, desc, im.Open); err != nil {
			return err
		}
	}
	desc := im.ManifestDesc
	desc.Platform = &im.Platform
	return tagLayout(dir, tag, desc)
}

func writeLayoutBlob(dir string, desc ocispec.Descriptor, open func(digest.Digest) (io.ReadCloser, int64, error)) error {
	dst := blobPath(filepath.Join(dir, "blobs"), desc.Digest)
	if _, err := os.Stat(dst); err == nil {
		return nil // content addressed: already there
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	src, _, err := open(desc.Digest)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write layout blob %s: %w", desc.Digest, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return fmt.Errorf("write layout blob %s: %w", desc.Digest, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write layout blob %s: %w", desc.Digest, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write layout blob %s: %w", desc.Digest, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("write layout blob %s: %w", desc.Digest, err)
	}
	return nil
}

// tagLayout writes oci-layout and adds desc to index.json under tag.
func tagLayout(dir, tag string, desc ocispec.Descriptor) error {
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), layout, 0o644); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	indexPath := filepath.Join(dir, "index.json")
	idx := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	if b, err := os.ReadFile(indexPath); err == nil {
		if err := json.Unmarshal(b, &idx); err != nil {
			return fmt.Errorf("read layout %s: index.json: %w", dir, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read layout %s: %w", dir, err)
	}
	desc.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] != tag {
			kept = append(kept, m)
		}
	}
	idx.Manifests = append(kept, desc)
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	tmp := indexPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	if err := os.Rename(tmp, indexPath); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	return nil
}
