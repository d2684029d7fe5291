package fetch

import (
	"bytes"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

func BenchmarkCacheOpenHit(b *testing.B) {
	c := newCache(b)
	data := bytes.Repeat([]byte("x"), 4096)
	d := digest.FromBytes(data)
	if err := c.Put(d, bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, len(data))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := c.Open(d)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(f, buf); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

func BenchmarkOpenBlob(b *testing.B) {
	const size = 64 << 20
	tr := newTestRegistry(b, nil)
	blob := randomBytes(b, size)
	img := testImage(b, types.OCIManifestSchema1, blob)
	tr.push(b, "bench:v1", img)
	c, _ := testClient(b, Options{})
	im, err := c.Resolve(b.Context(), tr.host+"/bench:v1")
	if err != nil {
		b.Fatal(err)
	}
	desc := im.Layers()[0]
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		rc, err := im.OpenBlob(b.Context(), desc)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, rc, buf) // hide ReadFrom so reads are 1 MiB
		rc.Close()
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
}
