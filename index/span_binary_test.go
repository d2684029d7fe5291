package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestDecodeSpanNextBlockHeader is the regression test for spans whose end
// shares a byte with the next block's header: on machine code (the go
// binary) the inflater, given that byte as it is, went on decoding the next
// block's dynamic Huffman header from the zero padding and read over 100
// bytes of it, which DecodeSpan took for a span too short for its output.
func TestDecodeSpanNextBlockHeader(t *testing.T) {
	bin := filepath.Join(runtime.GOROOT(), "bin", "go")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Skipf("no go binary to compress: %v", err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	if err := tw.WriteHeader(&tar.Header{Name: "go", Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb.Bytes())
	zw.Close()
	blob := gz.Bytes()

	table, err := BuildLayer(bytes.NewReader(blob), "application/vnd.oci.image.layer.v1.tar+gzip", Options{SpanSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	tail := 0
	for i, sp := range table.Spans {
		if i+1 < len(table.Spans) && table.Spans[i+1].Bits > 0 {
			tail++
		}
		got, err := DecodeSpan(table, i, blob[sp.C:sp.CEnd])
		if err != nil {
			t.Fatalf("DecodeSpan(%d of %d, next bits %d): %v", i, len(table.Spans), table.Spans[min(i+1, len(table.Spans)-1)].Bits, err)
		}
		if want := tb.Bytes()[sp.U:table.SpanEnd(i)]; !bytes.Equal(got, want) {
			t.Fatalf("DecodeSpan(%d) differs from the sequential stream", i)
		}
	}
	if tail == 0 {
		t.Fatalf("no span ends inside a byte: the case this test is for did not occur (%d spans)", len(table.Spans))
	}
}
