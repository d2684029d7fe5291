package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fs/fstest"
)

// TestUnpackServesFromTar: once a gzip layer's blob is complete, it is
// decompressed into the cache under its DiffID and reads come from that
// file: reading every file decodes no span. A damaged tar on disk is
// noticed on the next mount and made again.
func TestUnpackServesFromTar(t *testing.T) {
	fstest.RequireFUSE(t)
	layers, content := lazyLayers(8, 150)
	ref := layoutRef(t, layers)
	dir := t.TempDir()

	load := func() *Image {
		im, err := Resolve(t.Context(), newClient(t, dir, nil), ref, Options{Logger: testLogger(t), SpanSize: lazySpan, WholeThreshold: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { im.Close() })
		if err := im.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := im.layers[0].ensure(t.Context()); err != nil {
			t.Fatal(err)
		}
		im.layers[0].unpack(t.Context())
		return im
	}
	im := load()
	l := im.layers[0]
	if l.tar.Load() == nil {
		t.Fatalf("layer 0 (%s) has no uncompressed tar after unpack", l.mode)
	}
	tarPath := filepath.Join(dir, "blobs", "sha256", l.diffID.Encoded())
	b, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(b); got != l.diffID {
		t.Fatalf("cached tar has digest %s, want the DiffID %s", got, l.diffID)
	}
	mnt := mountImage(t, im)
	for name, want := range content {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
		}
	}
	if n := im.spans.order.Len(); n != 0 {
		t.Errorf("%d spans decoded while reading from the uncompressed tar; want none", n)
	}

	// Damage the cached tar: the next mount re-checks it against the DiffID
	// and makes it again instead of serving it.
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(tarPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	again := load()
	if again.layers[0].tar.Load() == nil {
		t.Fatalf("no uncompressed tar after the damaged one was found")
	}
	if b, err := os.ReadFile(tarPath); err != nil || digest.FromBytes(b) != l.diffID {
		t.Fatalf("cached tar after remaking: err %v, digest %s; want %s", err, digest.FromBytes(b), l.diffID)
	}
}
