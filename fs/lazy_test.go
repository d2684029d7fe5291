package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// lazySpan is the span size of the indexes in these tests: small, so a test
// layer of a few MiB has many spans.
const lazySpan = 128 << 10

// lazyLayers returns one big gzip layer of many compressible files (and a
// second small layer), with the content of every file by path.
func lazyLayers(seed uint64, files int) ([]fstest.Layer, map[string][]byte) {
	rng := rand.New(rand.NewPCG(seed, seed))
	words := strings.Fields("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore")
	content := map[string][]byte{}
	mtime := time.Unix(1700000000, 0)
	var big []fstest.File
	big = append(big, fstest.File{Header: tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}})
	for i := range files {
		var b bytes.Buffer
		for b.Len() < 8<<10+rng.IntN(64<<10) {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(" \n"[rng.IntN(2)])
			if rng.IntN(3) == 0 {
				fmt.Fprintf(&b, "%x ", rng.Uint64())
			}
		}
		name := fmt.Sprintf("data/f%04d.txt", i)
		content[name] = b.Bytes()
		big = append(big, fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: b.Bytes()})
	}
	small := []fstest.File{{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: []byte("ID=ocifs\n")}}
	content["etc/os-release"] = small[0].Data
	return []fstest.Layer{{Files: big, Compression: fstest.Gzip}, {Files: small, Compression: fstest.Gzip}}, content
}

// withCompression sets every layer's compression.
func withCompression(ls []fstest.Layer, c fstest.Compression) []fstest.Layer {
	for i := range ls {
		ls[i].Compression = c
	}
	return ls
}

// pushIndexed pushes the lazy image to host and its ocifs index as a
// referrer (built on a throwaway cache), and returns the image reference.
func pushIndexed(t *testing.T, host string, layers []fstest.Layer) (string, *fstest.Image) {
	t.Helper()
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, "lazy/app", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/lazy/app:v1"
	pushIndexOf(t, ref, Options{Logger: testLogger(t), SpanSize: lazySpan})
	return ref, img
}

// TestLazyReadFromRegistryIndex: on a fresh cache, with the index pushed to
// distribution 2.8 (no referrers API: the sha256-<hex> tag), reading one
// small file fetches about one span plus the index, not the layer.
func TestLazyReadFromRegistryIndex(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(1, 300)
	ref, img := pushIndexed(t, host, layers)

	c := newClient(t, "", nil)
	im, err := Resolve(t.Context(), c, ref, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	for _, l := range im.Layers() {
		if l.Size >= DefaultWholeThreshold && l.Mode != ModeIndex {
			t.Fatalf("layer %s: mode %s (%s), want index from the registry", l.Digest, l.Mode, l.Why)
		}
	}
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	mnt := mountImage(t, im) // no Prefetch: only what is read is fetched
	before := im.Stats()
	name := "data/f0150.txt"
	got, err := os.ReadFile(filepath.Join(mnt, name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content[name]) {
		t.Fatalf("read %s: %d bytes differ from the %d written", name, len(got), len(content[name]))
	}
	after := im.Stats()
	layerSize := img.LayerDescs[0].Size
	fetched := after.Layers[0].BytesFetched
	t.Logf("layer %d bytes compressed; reading %s (%d bytes) fetched %d blob bytes (%.1f%%), %d in all since resolve",
		layerSize, name, len(got), fetched, 100*float64(fetched)/float64(layerSize), after.BytesFetched)
	// A file of at most 72 KiB touches at most two spans of 128 KiB of
	// output; their compressed bytes are less than that.
	if fetched == 0 || fetched > 2*lazySpan {
		t.Errorf("bytes fetched for one small file = %d, want between 1 and %d (two spans)", fetched, 2*lazySpan)
	}
	if after.BytesServed <= before.BytesServed {
		t.Errorf("bytes_served did not grow: %d then %d", before.BytesServed, after.BytesServed)
	}
	// Every other file reads right too, served span by span.
	for name, want := range content {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
		}
	}
	if st := im.Stats(); st.Layers[0].BytesFetched > layerSize+layerSize/10 {
		t.Errorf("reading every file fetched %d bytes of a %d-byte layer: spans fetched more than once", st.Layers[0].BytesFetched, layerSize)
	}
}

// rangeTamperer flips one byte at blob offset off of every response that
// carries it, for requests of one blob.
type rangeTamperer struct {
	base http.RoundTripper
	blob string
	off  int64
}

func (rt *rangeTamperer) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.base.RoundTrip(req)
	if err != nil || !strings.HasSuffix(req.URL.Path, "/blobs/"+rt.blob) || resp.StatusCode/100 != 2 {
		return resp, err
	}
	start := int64(0)
	if cr := resp.Header.Get("Content-Range"); cr != "" {
		var end, size int64
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &start, &end, &size); err != nil {
			return nil, err
		}
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if i := rt.off - start; i >= 0 && i < int64(len(body)) {
		body[i] ^= 0x01
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// TestTamperedSpan: a registry that flips one byte inside a span makes reads
// of files in that span fail with EIO, while files in other spans read right,
// and nothing bad is cached. In a plain tar layer nothing but the span digest
// stands between the flipped byte and the reader: without the check this test
// fails there.
func TestTamperedSpan(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	for _, c := range []fstest.Compression{fstest.Gzip, fstest.None} {
		t.Run(c.String(), func(t *testing.T) {
			layers, content := lazyLayers(2, 500)
			ref, img := pushIndexed(t, host, withCompression(layers, c))
			cache := t.TempDir()

			// Learn the spans from a clean resolve, then pick a byte in the middle of span 3.
			probe := loadImage(t, newClient(t, t.TempDir(), nil), ref)
			tbl := probe.layers[0].table
			if len(tbl.Spans) < 6 {
				t.Fatalf("fixture layer has %d spans, want at least 6", len(tbl.Spans))
			}
			bad := tbl.Spans[3]
			rt := &rangeTamperer{base: http.DefaultTransport, blob: img.LayerDescs[0].Digest.String(), off: (bad.C + bad.CEnd) / 2}
			im := loadImage(t, newClient(t, cache, rt), ref)
			mnt := mountImage(t, im)

			var inBad, elsewhere []string
			im.Tree().Walk(func(p string, n *Node) error {
				if n.Type != index.TypeReg || n.Layer != 0 {
					return nil
				}
				s0, s1 := tbl.SpanFor(n.Offset), tbl.SpanFor(n.Offset+max(n.Size, 1)-1)
				switch {
				case s0 <= 3 && 3 <= s1:
					inBad = append(inBad, p)
				case s1 < 2 || s0 > 4:
					elsewhere = append(elsewhere, p)
				}
				return nil
			})
			if len(inBad) == 0 || len(elsewhere) == 0 {
				t.Fatalf("fixture: %d files in span 3, %d far from it", len(inBad), len(elsewhere))
			}
			for _, p := range inBad {
				if b, err := os.ReadFile(filepath.Join(mnt, p)); !errors.Is(err, syscall.EIO) {
					t.Errorf("read %s in the tampered span: %d bytes, err %v; want EIO", p, len(b), err)
				}
			}
			for _, p := range elsewhere[:min(len(elsewhere), 20)] {
				if b, err := os.ReadFile(filepath.Join(mnt, p)); err != nil || !bytes.Equal(b, content[p]) {
					t.Errorf("read %s in a good span: %d bytes, err %v", p, len(b), err)
				}
			}
			if st := im.Stats(); st.VerifyFailures == 0 {
				t.Errorf("verify_failures = 0 after a tampered span")
			}
			if newClient(t, cache, nil).Cache().Has(bad.Digest) {
				t.Errorf("the tampered span is in the cache")
			}
		})
	}
}

// TestLyingIndexRefusesItsLies: an index whose entries do not match the
// layer (pushed by someone who can write to the repository) is caught when
// the background fetch has the whole verified layer. Only what it lies
// about is refused: the planted name and the file it points elsewhere in
// the tar (EIO), the listing of their directory and a lookup there of the
// true name the served tree lacks; the other files of the layer read right,
// from verified bytes. (This test asserted whole-layer quarantine before
// issue 12: data/f0020.txt was EIO.)
func TestLyingIndexRefusesItsLies(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	// The lies: one file's name changed, another's content located at the
	// next file's, every digest left as it was.
	ref, content := pushLyingIndex(t, host, "lazy/lie", 3, 60, func(tbl *index.Table) {
		var f30 *index.Entry
		for i := range tbl.Entries {
			switch e := &tbl.Entries[i]; e.Name {
			case "data/f0010.txt":
				e.Name = "data/planted.txt"
			case "data/f0030.txt":
				f30 = e
			case "data/f0031.txt":
				f30.Offset, f30.Size = e.Offset, min(f30.Size, e.Size)
			}
		}
	})

	// A mount daemon releases the entry tables after Load: the check then
	// reads the entries again from the index file, and must still see it.
	for _, release := range []bool{false, true} {
		t.Run(fmt.Sprintf("entries released %v", release), func(t *testing.T) {
			im, err := Resolve(t.Context(), newClient(t, "", nil), ref, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { im.Close() })
			if err := im.Load(t.Context()); err != nil {
				t.Fatal(err)
			}
			if release {
				im.ReleaseEntries()
				if im.layers[0].table.Entries != nil {
					t.Fatalf("ReleaseEntries kept the entries of a layer with an index file")
				}
			}
			if _, err := im.Tree().Lookup("data/planted.txt"); err != nil {
				t.Fatalf("the lying index was not used: %v", err)
			}
			mnt := mountImage(t, im)
			if err := im.layers[0].ensure(t.Context()); err != nil {
				t.Fatalf("background fetch: %v", err)
			}
			_, err = os.ReadFile(filepath.Join(mnt, "data/planted.txt"))
			wantEIO(t, "read of the planted name", err)
			_, err = os.ReadFile(filepath.Join(mnt, "data/f0030.txt"))
			wantEIO(t, "read of the file the index points at another's bytes", err)
			_, err = os.Lstat(filepath.Join(mnt, "data/f0010.txt"))
			wantEIO(t, "lstat of the true name the served tree lacks", err)
			_, err = os.ReadDir(filepath.Join(mnt, "data"))
			wantEIO(t, "listing of the directory whose names the index changed", err)
			readWant(t, filepath.Join(mnt, "data/f0020.txt"), content["data/f0020.txt"])
			readWant(t, filepath.Join(mnt, "etc/os-release"), content["etc/os-release"])
			if st := im.Stats(); st.VerifyFailures != 1 || st.Layers[0].Verified || st.Layers[0].Refused != 2 {
				t.Errorf("stats: verify_failures %d, layer 0 verified %v refused %d; want 1, false, 2",
					st.VerifyFailures, st.Layers[0].Verified, st.Layers[0].Refused)
			}
		})
	}
}

// TestLocalIndexWindowsStayOnDisk: a layer indexed here is served, on the
// next mount, from its cached index opened with index.Open: the windows stay
// in the index file until a span needs one, and every file still reads right.
// A damaged index file is refused and the layer is streamed again.
func TestLocalIndexWindowsStayOnDisk(t *testing.T) {
	fstest.RequireFUSE(t)
	layers, content := lazyLayers(3, 120)
	ref := layoutRef(t, layers)
	dir := t.TempDir()

	first, err := Resolve(t.Context(), newClient(t, dir, nil), ref, Options{Logger: testLogger(t), SpanSize: lazySpan})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	first.Close()

	im, err := Resolve(t.Context(), newClient(t, dir, nil), ref, Options{Logger: testLogger(t), WholeThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	l := im.layers[0]
	if l.mode != ModeIndex || l.indexFile == nil {
		t.Fatalf("layer 0: mode %s, index file %v; want index mode with its windows read from the index file", l.mode, l.indexFile)
	}
	mnt := mountImage(t, im)
	for name, want := range content {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
		}
	}

	// Flip one byte of the cached index: its checksum refuses it, and the
	// layer is streamed (and indexed) again rather than served from it.
	p := filepath.Join(dir, "index", "sha256", l.desc.Digest.Encoded())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := Resolve(t.Context(), newClient(t, dir, nil), ref, Options{Logger: testLogger(t), WholeThreshold: 1, NoRemoteIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if g := again.layers[0]; g.indexFile != nil || !g.built {
		t.Fatalf("damaged index: index file %v, built here %v; want the table rebuilt from the layer", g.indexFile, g.built)
	}
}
