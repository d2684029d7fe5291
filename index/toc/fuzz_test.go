package toc

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fuzzLayers are the generated layers the fuzz targets take seeds from.
// They are small: the fuzzer minimises every new input it finds, which
// takes long for large ones (run with -fuzzminimizetime=1x for brief runs:
// the default minutes-long minimisation looks like a stall).
func fuzzLayers(tb testing.TB) []testLayer {
	var files []testFile
	for _, f := range fixtureFiles(false) {
		switch f.hdr.Name {
		case "./", "etc/", "etc/hostname", "bin", "bin/suid", "bin/sh", "bin/hard", "dev/null", "xattr/file", "old/.wh.gone":
			files = append(files, f)
		}
	}
	plain := makeTar(tb, files)
	return []testLayer{
		buildEstargz(tb, plain, false, false, estargz.WithChunkSize(2000)),
		buildEstargz(tb, plain, false, false, estargz.WithChunkSize(2000), estargz.WithMinChunkSize(3000),
			estargz.WithPrioritizedFiles([]string{"bin/suid"})),
		legacyFooter(tb, buildEstargz(tb, plain, false, false)),
		buildEstargz(tb, plain, true, true, estargz.WithChunkSize(2000)),
		buildZstdChunked(tb, plain, 2000),
	}
}

// fuzzOpts keeps the fuzzer's allocations small.
var fuzzOpts = Options{MaxTOCSize: 1 << 20, MaxTOCJSONSize: 4 << 20, MaxEntries: 10000, MaxChunkSize: 1 << 20}

func FuzzFooter(f *testing.F) {
	for _, tl := range fuzzLayers(f) {
		f.Add(tail(tl.blob), tl.desc.Size, tl.desc.Annotations[AnnotationManifestPosition])
	}
	f.Add([]byte{}, int64(0), "8:1:1:1")
	f.Fuzz(func(t *testing.T, tl []byte, size int64, position string) {
		desc := ocispec.Descriptor{Size: size}
		if position != "" {
			desc.Annotations = map[string]string{AnnotationManifestPosition: position}
		}
		loc, err := Locate(desc, tl, fuzzOpts)
		if err != nil {
			return
		}
		if loc.Offset < 0 || loc.Size <= 0 || loc.Offset+loc.Size > size || loc.Size > fuzzOpts.MaxTOCSize ||
			loc.PayloadEnd < 0 || loc.PayloadEnd > loc.Offset || loc.JSONSize > fuzzOpts.MaxTOCJSONSize {
			t.Fatalf("Locate(size %d) = %+v: outside the blob or the caps", size, loc)
		}
	})
}

// tocJSON extracts the TOC JSON of an eStargz layer.
func tocJSON(tb testing.TB, tl testLayer) []byte {
	tb.Helper()
	loc, err := Locate(tl.desc, tail(tl.blob), Options{})
	if err != nil {
		tb.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(tl.blob[loc.Offset : loc.Offset+loc.Size]))
	if err != nil {
		tb.Fatal(err)
	}
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		tb.Fatal(err)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func FuzzTOC(f *testing.F) {
	for _, tl := range fuzzLayers(f)[:3] {
		f.Add(tocJSON(f, tl))
	}
	f.Add([]byte(`{"version":1,"entries":[{"name":"a","type":"reg","size":3,"offset":10,"innerOffset":2,"chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}`))
	loc := Location{Layout: LayoutEstargz, BlobSize: 1 << 20, Offset: 1 << 19, Size: 100, PayloadEnd: 1 << 19}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := newParser(loc, fuzzOpts.withDefaults())
		if err := p.parseJSON(bytes.NewReader(data)); err != nil {
			return
		}
		l, err := p.finish()
		if err != nil {
			return
		}
		checkLayer(t, l, loc)
		for _, e := range l.Entries {
			if len(e.Name) > fuzzOpts.withDefaults().MaxNameLen {
				t.Fatalf("name of %d bytes passed the cap", len(e.Name))
			}
		}
	})
}

func FuzzZstdChunkedManifest(f *testing.F) {
	for _, tl := range fuzzLayers(f)[3:] {
		loc, err := Locate(tl.desc, nil, Options{})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tl.blob[loc.Offset:loc.Offset+loc.Size], loc.JSONSize)
	}
	f.Fuzz(func(t *testing.T, raw []byte, jsonSize int64) {
		if len(raw) == 0 || jsonSize < 0 {
			return
		}
		loc := Location{Layout: LayoutZstdChunked, BlobSize: 1 << 20, Offset: 1 << 19, Size: int64(len(raw)), JSONSize: jsonSize}
		if err := loc.check(fuzzOpts.withDefaults(), loc.BlobSize); err != nil {
			return
		}
		l, err := Decode(loc, raw, fuzzOpts)
		if err != nil {
			return
		}
		checkLayer(t, l, loc)
	})
}
