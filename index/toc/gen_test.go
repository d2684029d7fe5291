package toc

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
)

// testFile is one entry of a generated tar.
type testFile struct {
	hdr  tar.Header
	data []byte
}

// content returns n deterministic bytes: half compressible text, half noise,
// so that chunks compress to varied sizes.
func content(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	b := make([]byte, n)
	for i := range b {
		if (i/4096)%2 == 0 {
			b[i] = "ocifs lazily mounts images\n"[i%27]
		} else {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

var baseTime = time.Unix(1700000000, 0)

// fixtureFiles returns the entries of a layer that exercises every entry
// kind and the content sizes around chunk boundaries. With subsecond, mtimes
// carry nanoseconds (eStargz rounds them, so only zstd:chunked may use it).
func fixtureFiles(subsecond bool) []testFile {
	mt := func(i int) time.Time {
		t := baseTime.Add(time.Duration(i) * time.Hour)
		if subsecond {
			t = t.Add(time.Duration(i*1234567+1) * time.Nanosecond)
		}
		return t
	}
	reg := func(name string, mode int64, data []byte, i int) testFile {
		return testFile{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)),
			Uid: 1000 + i, Gid: 100 + i, ModTime: mt(i), Format: tar.FormatPAX}, data: data}
	}
	files := []testFile{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: mt(0), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: mt(1), Format: tar.FormatPAX}},
		reg("etc/hostname", 0o644, []byte("box\n"), 2),
		reg("etc/empty", 0o600, nil, 3),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "bin", Mode: 0o1777, ModTime: mt(4), Format: tar.FormatPAX}},
		reg("bin/suid", 0o4755, content(1, 5000), 5),
		reg("bin/big", 0o755, content(2, 300_000), 6),
		reg("bin/exact", 0o644, content(3, 65536), 7),
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "../usr//bin/./dash", ModTime: mt(8), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "bin/hard", Linkname: "./bin/suid", ModTime: mt(9), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt(10), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, Gid: 6, ModTime: mt(11), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o644, ModTime: mt(12), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "xattr/file", Mode: 0o644, Size: 3, ModTime: mt(13), Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\xff"}},
			data: []byte("abc")},
		reg("old/.wh.gone", 0o644, nil, 14),
		reg("opaque/.wh..wh..opq", 0o644, nil, 15),
		reg(strings.Repeat("long/", 40)+"name", 0o644, content(4, 100), 16),
		reg("zeros", 0o644, make([]byte, 20_000), 17),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "ids", Mode: 0o700, Uid: 1 << 31, Gid: 65534, ModTime: mt(18), Format: tar.FormatPAX}},
		reg("last", 0o644, content(5, 10), 19),
	}
	return files
}

// makeTar writes files as a tar stream.
func makeTar(tb testing.TB, files []testFile) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := f.hdr
		if err := tw.WriteHeader(&h); err != nil {
			tb.Fatalf("WriteHeader(%q): %v", h.Name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			tb.Fatalf("Write(%q): %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// testLayer is a built blob with the descriptor a manifest would carry.
type testLayer struct {
	blob []byte
	desc ocispec.Descriptor
}

// buildEstargz builds an eStargz (or, with zstd, estargz's zstd flavour)
// layer. posAnnotations adds the zstd:chunked annotations the zstd
// compressor computes; the TOC digest annotation is always set.
func buildEstargz(tb testing.TB, tarBlob []byte, useZstd, posAnnotations bool, opts ...estargz.Option) testLayer {
	tb.Helper()
	meta := map[string]string{}
	if useZstd {
		opts = append(opts, estargz.WithCompression(zstdCompression{
			&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: meta}, &zstdchunked.Decompressor{}}))
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarBlob), 0, int64(len(tarBlob))), opts...)
	if err != nil {
		tb.Fatalf("estargz.Build: %v", err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		tb.Fatalf("reading estargz blob: %v", err)
	}
	ann := map[string]string{AnnotationTOCDigest: b.TOCDigest().String()}
	if posAnnotations {
		for k, v := range meta {
			ann[k] = v
		}
	}
	return testLayer{blob: blob, desc: ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: ann}}
}

// zstdCompression pairs estargz's zstd compressor and decompressor into
// the estargz.Compression that Build wants.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

// csEntry mirrors the FileMetadata JSON of containers/storage's
// zstd:chunked manifest (pkg/chunked/internal/minimal).
type csEntry struct {
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
	Entries        []csEntry     `json:"entries"`
	TarSplitDigest digest.Digest `json:"tarSplitDigest,omitempty"`
}

var csTypes = map[byte]string{tar.TypeReg: "reg", tar.TypeLink: "hardlink", tar.TypeChar: "char",
	tar.TypeBlock: "block", tar.TypeDir: "dir", tar.TypeFifo: "fifo", tar.TypeSymlink: "symlink"}

// countingReader counts what archive/tar reads, giving data offsets.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// zstdFrame compresses b as one zstd frame.
func zstdFrame(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := zw.Write(b); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func skippable(b []byte) []byte {
	out := append([]byte{0x50, 0x2a, 0x4d, 0x18}, binary.LittleEndian.AppendUint32(nil, uint32(len(b)))...)
	return append(out, b...)
}

// buildZstdChunked writes tarBlob in containers/storage's zstd:chunked
// layout (pkg/chunked/compressor): tar headers in their own frames, each
// chunk of content in its own frame (content split every chunkSize bytes
// here instead of by rolling checksum; runs of zeros are marked "zeros"),
// then the manifest, the tar-split data and a 64-byte footer in skippable
// frames, and the annotations c/image sets.
func buildZstdChunked(tb testing.TB, tarBlob []byte, chunkSize int) testLayer {
	tb.Helper()
	return buildZstdChunkedSplit(tb, tarBlob, chunkSize, tarBlob)
}

// buildZstdChunkedSplit is buildZstdChunked with the tar-split of
// tarSplitSource, another tar when a test wants the two to disagree.
func buildZstdChunkedSplit(tb testing.TB, tarBlob []byte, chunkSize int, tarSplitSource []byte) testLayer {
	tb.Helper()
	var blob []byte
	var entries []csEntry
	cr := &countingReader{r: bytes.NewReader(tarBlob)}
	tr := tar.NewReader(cr)
	var pos int64 // tar bytes already written to the blob
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		dataOff := cr.n
		e := csEntry{Type: csTypes[hdr.Typeflag], Name: hdr.Name, Linkname: hdr.Linkname, Mode: hdr.Mode, Size: hdr.Size,
			UID: hdr.Uid, GID: hdr.Gid, Devmajor: hdr.Devmajor, Devminor: hdr.Devminor}
		if e.Type == "" {
			tb.Fatalf("type %q", hdr.Typeflag)
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
		if hdr.Size == 0 {
			entries = append(entries, e)
			continue
		}
		data := tarBlob[dataOff : dataOff+hdr.Size]
		blob = append(blob, zstdFrame(tb, tarBlob[pos:dataOff])...)
		e.Digest = digest.FromBytes(data).String()
		var chunks []csEntry
		for off := 0; off < len(data); off += chunkSize {
			piece := data[off:min(off+chunkSize, len(data))]
			c := csEntry{Type: "chunk", Name: hdr.Name, Offset: int64(len(blob)), ChunkOffset: int64(off),
				ChunkSize: int64(len(piece)), ChunkDigest: digest.FromBytes(piece).String()}
			if bytes.Count(piece, []byte{0}) == len(piece) {
				c.ChunkType = "zeros"
			}
			chunks = append(chunks, c)
			blob = append(blob, zstdFrame(tb, piece)...)
		}
		e.Offset, e.EndOffset = chunks[0].Offset, int64(len(blob))
		if len(chunks) > 1 {
			e.ChunkSize, e.ChunkDigest, e.ChunkType = chunks[0].ChunkSize, chunks[0].ChunkDigest, chunks[0].ChunkType
			entries = append(entries, e)
			for _, c := range chunks[1:] {
				entries = append(entries, c)
			}
		} else {
			entries = append(entries, e)
		}
		pos = dataOff + hdr.Size
	}
	blob = append(blob, zstdFrame(tb, tarBlob[pos:])...)

	// tar-split data, as c/storage stores it.
	ts, tsDigest, tsSize := tarSplitOf(tb, tarSplitSource)
	manifest, err := json.Marshal(csTOC{Version: 1, Entries: entries, TarSplitDigest: tsDigest})
	if err != nil {
		tb.Fatal(err)
	}
	return finishZstdChunked(tb, blob, manifest, ts, tsSize)
}

// tarSplitOf returns the tar-split data of tarBlob as containers/storage
// stores it (zstd-compressed storage JSON), its digest and its uncompressed
// size.
func tarSplitOf(tb testing.TB, tarBlob []byte) ([]byte, digest.Digest, int64) {
	tb.Helper()
	var ts bytes.Buffer
	tsDigester := digest.Canonical.Digester()
	zw, err := zstd.NewWriter(io.MultiWriter(&ts, tsDigester.Hash()))
	if err != nil {
		tb.Fatal(err)
	}
	cw := &countingWriter{w: zw}
	its, err := asm.NewInputTarStream(bytes.NewReader(tarBlob), storage.NewJSONPacker(cw), nil)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, its); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return ts.Bytes(), tsDigester.Digest(), cw.n
}

// finishZstdChunked appends the manifest, tar-split and footer frames to a
// payload and returns the layer with its annotations.
func finishZstdChunked(tb testing.TB, blob, manifest, tarSplit []byte, tarSplitSize int64) testLayer {
	tb.Helper()
	compressed := zstdFrame(tb, manifest)
	manifestOff := int64(len(blob)) + 8
	blob = append(blob, skippable(compressed)...)
	tsOff := int64(len(blob)) + 8
	blob = append(blob, skippable(tarSplit)...)
	footer := make([]byte, 64)
	for i, v := range []int64{manifestOff, int64(len(compressed)), int64(len(manifest)), 1, tsOff, int64(len(tarSplit)), tarSplitSize} {
		binary.LittleEndian.PutUint64(footer[8*i:], uint64(v))
	}
	copy(footer[56:], "GNUlInUx")
	blob = append(blob, skippable(footer)...)
	ann := map[string]string{
		AnnotationManifestChecksum: digest.FromBytes(compressed).String(),
		AnnotationManifestPosition: fmt.Sprintf("%d:%d:%d:1", manifestOff, len(compressed), len(manifest)),
		AnnotationTarSplitPosition: fmt.Sprintf("%d:%d:%d", tsOff, len(tarSplit), tarSplitSize),
	}
	return testLayer{blob: blob, desc: ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: ann}}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// tail returns the bytes Locate wants from the end of blob.
func tail(blob []byte) []byte {
	return blob[len(blob)-int(min(TailSize(), int64(len(blob)))):]
}

// decodeLayer locates and decodes a test layer, failing the test on error.
func decodeLayer(tb testing.TB, tl testLayer, withTail bool) (*Layer, Location) {
	tb.Helper()
	var tl0 []byte
	if withTail {
		tl0 = tail(tl.blob)
	}
	loc, err := Locate(tl.desc, tl0, Options{})
	if err != nil {
		tb.Fatalf("Locate: %v", err)
	}
	l, err := Decode(loc, tl.blob[loc.Offset:loc.Offset+loc.Size], Options{})
	if err != nil {
		tb.Fatalf("Decode: %v", err)
	}
	return l, loc
}
