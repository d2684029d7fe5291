package fstest

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
)

// LazyFormat is a layer format that carries its own table of contents.
type LazyFormat int

const (
	// Estargz is eStargz as containerd's estargz package writes it (gzip).
	Estargz LazyFormat = iota + 1
	// EstargzZstd is the zstd flavour of the estargz package (its
	// zstdchunked compressor): TOC in a skippable frame, "GnUlInUx" footer,
	// the toc.digest and the older io.containers.zstd-chunked.* annotations.
	EstargzZstd
	// ZstdChunked is zstd:chunked as containers/storage writes it: each
	// file's content in its own zstd frames, the manifest and tar-split in
	// skippable frames, a 64-byte "GNUlInUx" footer and the
	// io.github.containers.zstd-chunked.* annotations.
	ZstdChunked
)

// String names the format.
func (f LazyFormat) String() string {
	switch f {
	case Estargz:
		return "estargz"
	case EstargzZstd:
		return "estargz-zstd"
	case ZstdChunked:
		return "zstd-chunked"
	}
	return fmt.Sprintf("LazyFormat(%d)", int(f))
}

// The annotations that bind a lazy layer's TOC to its manifest.
const (
	AnnotationTOCDigest          = "containerd.io/snapshot/stargz/toc.digest"
	AnnotationManifestChecksum   = "io.github.containers.zstd-chunked.manifest-checksum"
	AnnotationManifestPosition   = "io.github.containers.zstd-chunked.manifest-position"
	AnnotationTarSplitPosition   = "io.github.containers.zstd-chunked.tarsplit-position"
	legacyZstdChunkedAnnotations = "io.containers.zstd-chunked."
)

// LazyOptions configures BuildLazy. ChunkSize 0 keeps each writer's default
// (4 MiB for eStargz; 64 KiB here for zstd:chunked).
type LazyOptions struct {
	Format    LazyFormat
	ChunkSize int
	// Prioritized lists files an eStargz builder puts first, before a
	// .prefetch.landmark; empty gives a .no.prefetch.landmark. Ignored for
	// ZstdChunked.
	Prioritized []string
	// Annotate, when set, edits each layer's annotations before the
	// manifest is written (drop the digest to make a TOC unverified, or set
	// a wrong one).
	Annotate func(layer int, ann map[string]string)
	// BlobDir as in Options: layer blobs written to files instead of memory.
	BlobDir string
	// NoTarSplit leaves the tar-split data out of ZstdChunked layers (and
	// tarSplitDigest out of their TOC), as containers/storage did before it
	// stored one.
	NoTarSplit bool
	// EditTOC, when set, is called on each non-chunk entry of a ZstdChunked
	// layer's TOC before the TOC is written and bound by its annotation: a
	// TOC that lies about the tar it comes with. A renamed file's chunk
	// entries follow its new name. The tar-split (unless NoTarSplit) still
	// describes the tar.
	EditTOC func(layer int, e *TOCEntry)
}

// BuildLazy encodes the layers (their Compression is ignored) in a lazy
// format, with the layer annotations its writers set, plus a config and an
// OCI manifest. The DiffIDs are those of the uncompressed streams, which
// for eStargz include its TOC entry and landmark file.
func BuildLazy(layers []Layer, opts LazyOptions) (*Image, error) {
	plat, err := ParsePlatform("")
	if err != nil {
		return nil, err
	}
	im := &Image{Platform: plat, blobDir: opts.BlobDir}
	var history []ocispec.History
	for i, l := range layers {
		var tarBuf bytes.Buffer
		tw := tar.NewWriter(&tarBuf)
		for j := range l.Files {
			if err := writeEntry(tw, &tarBuf, &l.Files[j]); err != nil {
				return nil, fmt.Errorf("layer %d entry %d %q: %w", i, j, l.Files[j].Header.Name, err)
			}
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		blob, diffID, ann, err := encodeLazy(i, tarBuf.Bytes(), opts)
		if err != nil {
			return nil, fmt.Errorf("encode layer %d as %s: %w", i, opts.Format, err)
		}
		if opts.Annotate != nil {
			opts.Annotate(i, ann)
		}
		mt := ocispec.MediaTypeImageLayerGzip
		if opts.Format != Estargz {
			mt = ocispec.MediaTypeImageLayerZstd
		}
		desc := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: ann}
		if opts.BlobDir != "" {
			if err := writeBlobFile(opts.BlobDir, desc.Digest, blob); err != nil {
				return nil, err
			}
		} else {
			im.Layers = append(im.Layers, blob)
		}
		im.LayerDescs = append(im.LayerDescs, desc)
		im.DiffIDs = append(im.DiffIDs, diffID)
		history = append(history, ocispec.History{Created: &created,
			CreatedBy: fmt.Sprintf("fstest layer %d (%d entries, %s)", i, len(l.Files), opts.Format)})
	}
	cfg := ocispec.Image{
		Created:  &created,
		Platform: plat,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: im.DiffIDs},
		History:  history,
	}
	if im.Config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	im.ConfigDesc = descriptor(ocispec.MediaTypeImageConfig, im.Config)
	mf := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: im.ConfigDesc, Layers: im.LayerDescs}
	if im.Manifest, err = json.Marshal(mf); err != nil {
		return nil, err
	}
	im.ManifestDesc = descriptor(ocispec.MediaTypeImageManifest, im.Manifest)
	return im, nil
}

func writeBlobFile(dir string, d digest.Digest, b []byte) error {
	p := blobPath(dir, d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o644)
}

// encodeLazy converts one tar stream.
func encodeLazy(layer int, tarBlob []byte, opts LazyOptions) (blob []byte, diffID digest.Digest, ann map[string]string, err error) {
	switch opts.Format {
	case Estargz, EstargzZstd:
		return encodeEstargz(tarBlob, opts)
	case ZstdChunked:
		chunk := opts.ChunkSize
		if chunk <= 0 {
			chunk = 64 << 10
		}
		var edit func(*TOCEntry)
		if opts.EditTOC != nil {
			edit = func(e *TOCEntry) { opts.EditTOC(layer, e) }
		}
		return encodeZstdChunked(tarBlob, chunk, !opts.NoTarSplit, edit)
	}
	return nil, "", nil, fmt.Errorf("unknown lazy format %d", int(opts.Format))
}

// zstdCompression pairs estargz's zstd compressor and decompressor.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

func encodeEstargz(tarBlob []byte, opts LazyOptions) ([]byte, digest.Digest, map[string]string, error) {
	var eo []estargz.Option
	if opts.ChunkSize > 0 {
		eo = append(eo, estargz.WithChunkSize(opts.ChunkSize))
	}
	if len(opts.Prioritized) > 0 {
		var missed []string
		eo = append(eo, estargz.WithPrioritizedFiles(opts.Prioritized), estargz.WithAllowPrioritizeNotFound(&missed))
	}
	meta := map[string]string{}
	if opts.Format == EstargzZstd {
		eo = append(eo, estargz.WithCompression(zstdCompression{
			&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: meta}, &zstdchunked.Decompressor{}}))
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarBlob), 0, int64(len(tarBlob))), eo...)
	if err != nil {
		return nil, "", nil, err
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		return nil, "", nil, err
	}
	ann := map[string]string{AnnotationTOCDigest: b.TOCDigest().String()}
	for k, v := range meta {
		ann[k] = v
	}
	return blob, b.DiffID(), ann, nil
}

// TOCEntry mirrors containers/storage's zstd:chunked FileMetadata JSON:
// one entry of a ZstdChunked layer's TOC (LazyOptions.EditTOC). Its
// strings are written with encoding/json, which, as in skopeo and podman,
// puts U+FFFD in place of every byte of a name that is not UTF-8.
type TOCEntry struct {
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Linkname    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	Size        int64             `json:"size,omitempty"`
	UID         int               `json:"uid,omitempty"`
	GID         int               `json:"gid,omitempty"`
	ModTime     *time.Time        `json:"modtime,omitempty"`
	Devmajor    int64             `json:"devMajor,omitempty"`
	Devminor    int64             `json:"devMinor,omitempty"`
	Xattrs      map[string]string `json:"xattrs,omitempty"`
	Digest      string            `json:"digest,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	EndOffset   int64             `json:"endOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkDigest string            `json:"chunkDigest,omitempty"`
	ChunkType   string            `json:"chunkType,omitempty"`
}

type csTOC struct {
	Version        int           `json:"version"`
	Entries        []TOCEntry    `json:"entries"`
	TarSplitDigest digest.Digest `json:"tarSplitDigest,omitempty"`
}

var csTypes = map[byte]string{tar.TypeReg: "reg", tar.TypeLink: "hardlink", tar.TypeChar: "char",
	tar.TypeBlock: "block", tar.TypeDir: "dir", tar.TypeFifo: "fifo", tar.TypeSymlink: "symlink"}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// frameEncoder compresses whole frames; EncodeAll is safe for concurrent
// use. The frames carry no content checksum (it is optional in zstd), so
// that nothing but a reader's chunk digest check catches a flipped byte in
// a raw block: tests of that check must be able to fail.
var frameEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
	zstd.WithEncoderCRC(false))

// zstdFrame compresses b as one zstd frame.
func zstdFrame(b []byte) ([]byte, error) {
	return frameEncoder.EncodeAll(b, nil), nil
}

func skippableFrame(b []byte) []byte {
	out := append([]byte{0x50, 0x2a, 0x4d, 0x18}, binary.LittleEndian.AppendUint32(nil, uint32(len(b)))...)
	return append(out, b...)
}

// encodeZstdChunked writes tarBlob in containers/storage's layout: tar
// headers in frames of their own, each chunkSize piece of file content in
// its own frame, then the manifest, the tar-split data (withTarSplit) and
// the footer in skippable frames. The blob decompresses to tarBlob exactly.
// edit, when set, changes each file entry of the manifest.
func encodeZstdChunked(tarBlob []byte, chunkSize int, withTarSplit bool, edit func(*TOCEntry)) ([]byte, digest.Digest, map[string]string, error) {
	var blob []byte
	var entries []TOCEntry
	cr := &countReader{r: bytes.NewReader(tarBlob)}
	tr := tar.NewReader(cr)
	var pos int64
	appendFrame := func(b []byte) error {
		f, err := zstdFrame(b)
		blob = append(blob, f...)
		return err
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, "", nil, err
		}
		dataOff := cr.n
		e := TOCEntry{Type: csTypes[hdr.Typeflag], Name: hdr.Name, Linkname: hdr.Linkname, Mode: hdr.Mode, Size: hdr.Size,
			UID: hdr.Uid, GID: hdr.Gid, Devmajor: hdr.Devmajor, Devminor: hdr.Devminor}
		if e.Type == "" {
			return nil, "", nil, fmt.Errorf("%s: tar type %q", hdr.Name, hdr.Typeflag)
		}
		if !hdr.ModTime.IsZero() {
			mt := hdr.ModTime
			e.ModTime = &mt
		}
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[name] = base64.StdEncoding.EncodeToString([]byte(v))
			}
		}
		if hdr.Size == 0 || hdr.Typeflag != tar.TypeReg {
			entries = append(entries, e)
			continue
		}
		data := tarBlob[dataOff : dataOff+hdr.Size]
		if err := appendFrame(tarBlob[pos:dataOff]); err != nil {
			return nil, "", nil, err
		}
		e.Digest = digest.FromBytes(data).String()
		var chunks []TOCEntry
		for off := 0; off < len(data); off += chunkSize {
			piece := data[off:min(off+chunkSize, len(data))]
			c := TOCEntry{Type: "chunk", Name: hdr.Name, Offset: int64(len(blob)), ChunkOffset: int64(off),
				ChunkSize: int64(len(piece)), ChunkDigest: digest.FromBytes(piece).String()}
			chunks = append(chunks, c)
			if err := appendFrame(piece); err != nil {
				return nil, "", nil, err
			}
		}
		e.Offset, e.EndOffset = chunks[0].Offset, int64(len(blob))
		if len(chunks) > 1 {
			e.ChunkSize, e.ChunkDigest = chunks[0].ChunkSize, chunks[0].ChunkDigest
		}
		entries = append(entries, e)
		if len(chunks) > 1 {
			entries = append(entries, chunks[1:]...)
		}
		pos = dataOff + hdr.Size
	}
	if err := appendFrame(tarBlob[pos:]); err != nil {
		return nil, "", nil, err
	}

	// The tar-split data, as containers/storage stores it. tar-split
	// refuses tars that repeat a path (the corner image does); such a layer
	// gets none, and readers have only the TOC's names.
	var ts bytes.Buffer
	var tsDigest digest.Digest
	var tsSize int64
	if withTarSplit {
		if d, n, err := tarSplit(&ts, tarBlob); err == nil {
			tsDigest, tsSize = d, n
		} else {
			ts.Reset()
		}
	}
	if edit != nil {
		name := ""
		for i := range entries {
			if entries[i].Type == "chunk" {
				entries[i].Name = name
				continue
			}
			edit(&entries[i])
			name = entries[i].Name
		}
	}
	manifest, err := json.Marshal(csTOC{Version: 1, Entries: entries, TarSplitDigest: tsDigest})
	if err != nil {
		return nil, "", nil, err
	}
	compressed, err := zstdFrame(manifest)
	if err != nil {
		return nil, "", nil, err
	}
	manifestOff := int64(len(blob)) + 8
	blob = append(blob, skippableFrame(compressed)...)
	tsOff := int64(len(blob)) + 8
	blob = append(blob, skippableFrame(ts.Bytes())...)
	footer := make([]byte, 64)
	for i, v := range []int64{manifestOff, int64(len(compressed)), int64(len(manifest)), 1, tsOff, int64(ts.Len()), tsSize} {
		binary.LittleEndian.PutUint64(footer[8*i:], uint64(v))
	}
	copy(footer[56:], "GNUlInUx")
	blob = append(blob, skippableFrame(footer)...)
	ann := map[string]string{
		AnnotationManifestChecksum: digest.FromBytes(compressed).String(),
		AnnotationManifestPosition: fmt.Sprintf("%d:%d:%d:1", manifestOff, len(compressed), len(manifest)),
	}
	if ts.Len() > 0 {
		ann[AnnotationTarSplitPosition] = fmt.Sprintf("%d:%d:%d", tsOff, ts.Len(), tsSize)
	}
	return blob, digest.FromBytes(tarBlob), ann, nil
}

// tarSplit writes the zstd-compressed tar-split data of tarBlob to w and
// returns its digest and uncompressed size.
func tarSplit(w io.Writer, tarBlob []byte) (digest.Digest, int64, error) {
	d := digest.Canonical.Digester()
	zw, err := zstd.NewWriter(io.MultiWriter(w, d.Hash()))
	if err != nil {
		return "", 0, err
	}
	cw := &countWriter{w: zw}
	its, err := asm.NewInputTarStream(bytes.NewReader(tarBlob), storage.NewJSONPacker(cw), nil)
	if err != nil {
		return "", 0, err
	}
	if _, err := io.Copy(io.Discard, its); err != nil {
		return "", 0, err
	}
	if err := zw.Close(); err != nil {
		return "", 0, err
	}
	return d.Digest(), cw.n, nil
}

// LegacyZstdChunkedAnnotations renames the zstd:chunked annotations of ann
// to the older io.containers.zstd-chunked.* keys.
func LegacyZstdChunkedAnnotations(ann map[string]string) {
	for _, k := range []string{AnnotationManifestChecksum, AnnotationManifestPosition, AnnotationTarSplitPosition} {
		if v, ok := ann[k]; ok {
			delete(ann, k)
			ann[legacyZstdChunkedAnnotations+strings.TrimPrefix(k, "io.github.containers.zstd-chunked.")] = v
		}
	}
}
