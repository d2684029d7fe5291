package fs

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// bigLayer returns a single gzip layer of about size uncompressed bytes:
// files of 4 KiB to 4 MiB of text that gzip shrinks about 1.6 times, plus
// etc/os-release, the small file the benchmark reads.
func bigLayer(size int64) []fstest.Layer {
	rng := rand.New(rand.NewPCG(7, 7))
	words := strings.Fields("func return if err != nil { } for range := struct type interface package import var const map string int64 byte")
	mtime := time.Unix(1700000000, 0)
	files := []fstest.File{{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: []byte("ID=bench\nVERSION_ID=1\n")}}
	var total int64
	for i := 0; total < size; i++ {
		n := 4<<10 + rng.IntN(1<<20)
		if i%50 == 0 {
			n = 4 << 20
		}
		var b bytes.Buffer
		b.Grow(n + 64)
		for b.Len() < n {
			b.WriteString(words[rng.IntN(len(words))])
			if rng.IntN(3) != 0 {
				fmt.Fprintf(&b, " %x\n", rng.Uint64())
			} else {
				b.WriteByte(' ')
			}
		}
		total += int64(b.Len())
		files = append(files, fstest.File{Header: tar.Header{Name: fmt.Sprintf("data/%03d/file%05d", i%100, i), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: b.Bytes()})
	}
	return []fstest.Layer{{Files: files, Compression: fstest.Gzip}}
}

// BenchmarkLazyReadOneFile measures what reading one small file costs on a
// fresh cache when the image's index is in the registry, from a 200+ MB
// (compressed) single gzip layer (issue 3's goal: under 1.2x one span plus
// the index, under 3% of the layer):
//
//	go test -run '^$' -bench LazyReadOneFile -benchtime 3x ./fs/
func BenchmarkLazyReadOneFile(b *testing.B) {
	host := fstest.StartRegistry(b)
	img, err := fstest.Build(bigLayer(420<<20), fstest.Options{BlobDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	if err := img.Push(b.Context(), host, "bench/big", "v1"); err != nil {
		b.Fatal(err)
	}
	ref := host + "/bench/big:v1"
	builder, err := Resolve(b.Context(), mustClient(b, b.TempDir()), ref, Options{NoRemoteIndex: true})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := builder.Load(b.Context()); err != nil {
		b.Fatal(err)
	}
	buildTime := time.Since(start)
	if _, err := builder.PushIndex(b.Context()); err != nil {
		b.Fatal(err)
	}
	idx, tarBytes, err := builder.IndexSizes()
	if err != nil {
		b.Fatal(err)
	}
	t := builder.layers[0].table
	layerSize := img.LayerDescs[0].Size
	indexSize := idx[img.LayerDescs[0].Digest]
	var spanBytes int64
	for _, sp := range t.Spans {
		spanBytes += sp.CEnd - sp.C
	}
	avgSpan := spanBytes / int64(len(t.Spans))
	builder.Close()

	var fetched int64
	for b.Loop() {
		c := mustClient(b, b.TempDir())
		im, err := Resolve(b.Context(), c, ref, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := im.Load(b.Context()); err != nil {
			b.Fatal(err)
		}
		n, err := im.Tree().Lookup("etc/os-release")
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, n.Size)
		if _, err := im.ReadAt(b.Context(), n, buf, 0); err != nil {
			b.Fatal(err)
		}
		fetched = im.Stats().BytesFetched
		im.Close()
	}
	b.ReportMetric(float64(fetched), "bytes-fetched/op")
	b.ReportMetric(100*float64(fetched)/float64(layerSize), "%-of-layer")
	b.ReportMetric(float64(fetched)/float64(avgSpan+indexSize), "x-(span+index)")
	b.ReportMetric(100*float64(indexSize)/float64(tarBytes[img.LayerDescs[0].Digest]), "index-%-of-tar")
	b.Logf("layer %d bytes gzip, %d tar, %d spans of %d compressed bytes on average, index %d bytes; stream+index build took %v; one small file fetched %d bytes",
		layerSize, t.TarSize, len(t.Spans), avgSpan, indexSize, buildTime.Round(time.Millisecond), fetched)
}

func mustClient(b *testing.B, cache string) *fetch.Client {
	c, err := fetch.New(fetch.Options{CacheDir: cache})
	if err != nil {
		b.Fatal(err)
	}
	return c
}
