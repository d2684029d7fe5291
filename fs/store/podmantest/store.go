package podmantest

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containers/storage/pkg/archive"
	"github.com/containers/storage/pkg/chrootarchive"
	"github.com/containers/storage/pkg/reexec"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs/fstest"
)

// Info is the content of an additional layer's info file: the JSON of a
// containers/storage Layer, of which a store fills in the fields below.
// containers/storage 1.43 decodes it into its Layer and keeps it as the
// stored layer's record (its ID, parent and creation time replaced).
type Info struct {
	// CompressedDigest and CompressedSize are the blob's digest and
	// size as the manifest gives them.
	CompressedDigest digest.Digest `json:"compressed-diff-digest,omitempty"`
	CompressedSize   int64         `json:"compressed-size,omitempty"`
	// UncompressedDigest is the layer's DiffID; UncompressedSize the
	// length of its uncompressed tar.
	UncompressedDigest digest.Digest `json:"diff-digest,omitempty"`
	UncompressedSize   int64         `json:"diff-size,omitempty"`
	// Compression is containers/storage's archive.Compression of the
	// blob: 0 uncompressed, 2 gzip, 4 zstd.
	Compression archive.Compression `json:"compression,omitempty"`
	// TOCDigest and Flags are what containers/storage 1.54 and later
	// look layers up by (eStargz and zstd:chunked layers only).
	TOCDigest digest.Digest  `json:"toc-digest,omitempty"`
	Flags     map[string]any `json:"flags,omitempty"`
}

// RefDir is the directory of reference ref in the store: the standard
// base64 of ref joined to store. A '/' in the base64 makes it more than
// one path element, as containers/storage's path.Join does too.
func RefDir(store, ref string) string {
	return filepath.Join(store, base64.StdEncoding.EncodeToString([]byte(ref)))
}

// LayerDir is the directory of one layer of ref: RefDir/<digest>, with
// the layer's diff, info and blob in it.
func LayerDir(store, ref string, d digest.Digest) string {
	return filepath.Join(RefDir(store, ref), d.String())
}

// Layer is one layer laid out by [WriteImage].
type Layer struct {
	// Dir is the layer's directory (diff/, info, blob).
	Dir  string
	Info Info
}

// WriteImage lays out every layer of im under store for reference ref, as
// a containers/storage additional layer store presents it to podman
// 4.3.1 (containers/storage 1.43, containers/image 5.23): for each layer,
// keyed by its compressed digest,
//
//   - diff/: the layer applied into an empty directory of mode 0555 by
//     containers/storage's own applier (pkg/chrootarchive
//     UntarUncompressed with the overlay whiteout format, the call its
//     overlay driver makes for a pull; the process must have called
//     [Init]): whiteouts as 0/0 character devices, opaque directories with
//     trusted.overlay.opaque=y, implied parents (directories the layer
//     writes into without an entry) 0755 and root's whatever a lower
//     layer made them, with the time of unpack as mtime, and the root
//     entry ignored;
//   - info: [Info] from the manifest's descriptor and the layer's DiffID
//     and uncompressed size, both computed here and checked against the
//     config;
//   - blob: the compressed bytes.
//
// Applying needs root (devices, trusted.* xattrs, ownership).
func WriteImage(store, ref string, im *fstest.Image) ([]Layer, error) {
	// podman sets umask 022 before anything else (cmd/podman's
	// early_init): its applier's implied parents are 0755 whatever the
	// caller's umask. The umask is the process's: WriteImage changes it
	// while it runs.
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	var out []Layer
	for i, desc := range im.LayerDescs {
		l, err := writeLayer(LayerDir(store, ref, desc.Digest), im, desc)
		if err != nil {
			return nil, fmt.Errorf("lay out layer %d (%s) of %s: %w", i, desc.Digest, ref, err)
		}
		if l.Info.UncompressedDigest != im.DiffIDs[i] {
			return nil, fmt.Errorf("lay out layer %d (%s) of %s: DiffID %s, the config says %s", i, desc.Digest, ref, l.Info.UncompressedDigest, im.DiffIDs[i])
		}
		out = append(out, l)
	}
	return out, nil
}

// diffMode is the mode of every layer's diff directory in
// containers/storage 1.43: its overlay driver creates the bottom layer's
// with 0555 and every other with its parent's mode, and its applier never
// applies a tar's root entry ("./") to it. A container's root is this
// directory's mode.
const diffMode = 0o555

// Init runs containers/storage's applier when the process was started as
// its re-executed child ("storage-untar", which chroots into the layer's
// directory before it applies), and then reports true: call it first in
// TestMain of any test binary that uses [WriteImage], and return when it
// reports true.
//
//	func TestMain(m *testing.M) {
//		if podmantest.Init() {
//			return
//		}
//		os.Exit(m.Run())
//	}
func Init() bool { return reexec.Init() }

func writeLayer(dir string, im *fstest.Image, desc ocispec.Descriptor) (Layer, error) {
	diff := filepath.Join(dir, "diff")
	if err := os.MkdirAll(diff, 0o755); err != nil {
		return Layer{}, err
	}
	if err := os.Chmod(diff, diffMode); err != nil {
		return Layer{}, err
	}
	// blob: the compressed bytes as the registry serves them.
	rc, _, err := im.Open(desc.Digest)
	if err != nil {
		return Layer{}, err
	}
	blob, err := os.Create(filepath.Join(dir, "blob"))
	if err != nil {
		rc.Close()
		return Layer{}, err
	}
	_, err = io.Copy(blob, rc)
	rc.Close()
	if cerr := blob.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Layer{}, fmt.Errorf("write blob: %w", err)
	}

	// diff/: decompress, hash and count the tar on its way to the
	// applier.
	f, err := os.Open(filepath.Join(dir, "blob"))
	if err != nil {
		return Layer{}, err
	}
	defer f.Close()
	header := make([]byte, 10)
	n, _ := io.ReadFull(f, header)
	compression := archive.DetectCompression(header[:n])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Layer{}, err
	}
	tarStream, err := archive.DecompressStream(f)
	if err != nil {
		return Layer{}, fmt.Errorf("decompress: %w", err)
	}
	defer tarStream.Close()
	h := sha256.New()
	counted := &countingReader{r: io.TeeReader(tarStream, h)}
	// chrootarchive, as the overlay driver's ApplyDiff: inside the chroot
	// the applier's os.Lstat(hdr.Linkname) finds a hardlink's target, so
	// the link entry's mode and times are applied to the shared inode
	// (outside, that relative path would miss and they would not be).
	if err := chrootarchive.UntarUncompressed(counted, diff, &archive.TarOptions{WhiteoutFormat: archive.OverlayWhiteoutFormat}); err != nil {
		return Layer{}, fmt.Errorf("apply to %s: %w", diff, err)
	}
	// The applier stops at the end-of-archive marker; the DiffID covers
	// the padding after it too.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return Layer{}, fmt.Errorf("decompress: %w", err)
	}
	info := Info{
		CompressedDigest:   desc.Digest,
		CompressedSize:     desc.Size,
		UncompressedDigest: digest.NewDigest(digest.SHA256, h),
		UncompressedSize:   counted.n,
		Compression:        compression,
	}
	if err := WriteInfo(dir, info); err != nil {
		return Layer{}, err
	}
	return Layer{Dir: dir, Info: info}, nil
}

// WriteInfo writes info as the info file of the layer directory dir.
func WriteInfo(dir string, info Info) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "info"), b, 0o644)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
