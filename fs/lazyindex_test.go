package fs

import (
	"bytes"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// lazyIndexSetup is the lazy test image with its index pushed, seen through
// a fault front that records every request.
type lazyIndexSetup struct {
	front   *fstest.Faults
	ref     string // through the front
	content map[string][]byte
	layer   digest.Digest // the big layer
}

func newLazyIndexSetup(t *testing.T, seed uint64, push func(t *testing.T, ref string)) lazyIndexSetup {
	t.Helper()
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(seed, 300)
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	repo := fmt.Sprintf("lazyindex/s%d", seed)
	if err := img.Push(t.Context(), host, repo, "v1"); err != nil {
		t.Fatal(err)
	}
	push(t, host+"/"+repo+":v1")
	f, err := fstest.NewFaults(host)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Cleanup(f.Release)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/" + repo + ":v1"
	return lazyIndexSetup{front: f, ref: ref, content: content, layer: img.LayerDescs[0].Digest}
}

func pushIndexT(t *testing.T, ref string) {
	pushIndexOf(t, ref, Options{Logger: testLogger(t), SpanSize: lazySpan})
}

// blobGets returns the GETs of blob d the front saw, and the bytes they
// asked for (a GET without Range asks for size bytes).
func blobGets(t *testing.T, reqs []fstest.Request, d digest.Digest, size int64) (n int, ranges []string, asked int64) {
	t.Helper()
	for _, r := range reqs {
		if r.Method != "GET" || !strings.HasSuffix(r.Path, "/blobs/"+d.String()) {
			continue
		}
		n++
		ranges = append(ranges, r.Range)
		if r.Range == "" {
			asked += size
			continue
		}
		var a, b int64
		if _, err := fmt.Sscanf(r.Range, "bytes=%d-%d", &a, &b); err != nil {
			t.Fatalf("request %s: Range %q: %v", r.Path, r.Range, err)
		}
		asked += b - a + 1
	}
	return n, ranges, asked
}

// windowBytes returns the stored bytes of the windows of spans [s0, s1].
func windowBytes(tbl *index.Table, s0, s1 int) int64 {
	var sum int64
	for i := s0; i <= s1; i++ {
		_, n, _ := tbl.WindowLocation(i)
		sum += n
	}
	return sum
}

// TestLazyIndexFetchesWhatTheReadNeeds: with an index whose head is
// published, a mount fetches the head alone (one Range GET, checked against
// the artifact's digest for it), and a first read of one file fetches its
// spans from the layer and their windows from the index blob, nothing else
// of either: the index blob's bytes fetched are the head plus those
// windows, far less than the blob.
func TestLazyIndexFetchesWhatTheReadNeeds(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newLazyIndexSetup(t, 5, pushIndexT)
	im := loadImage(t, newClient(t, "", nil), s.ref)
	l := im.layers[0]
	if l.lazy == nil {
		t.Fatalf("layer 0 (mode %s: %s): the registry's index is not read piece by piece", l.mode, l.why)
	}
	idx := *l.remote
	headSize, _, _ := fetch.IndexHead(idx)
	n, ranges, asked := blobGets(t, s.front.Requests(), idx.Digest, idx.Size)
	if want := fmt.Sprintf("bytes=0-%d", headSize-1); n != 1 || ranges[0] != want {
		t.Fatalf("loading: index blob GETs %v, want one, Range %s (its head)", ranges, want)
	}
	t.Logf("index blob %d bytes, head %d (%.1f%%)", idx.Size, headSize, 100*float64(headSize)/float64(idx.Size))

	mnt := mountImage(t, im) // no prefetch: only what is read is fetched
	tbl := l.tbl()
	name := "data/f0150.txt"
	node, err := im.Tree().Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	s0, s1 := tbl.SpanFor(node.Offset), tbl.SpanFor(node.Offset+node.Size-1)
	if s0 <= 0 {
		t.Fatalf("fixture: %s starts in span %d, want a later span (one with a window)", name, s0)
	}
	readWant(t, filepath.Join(mnt, name), s.content[name])

	reqs := s.front.Requests()
	n, ranges, asked = blobGets(t, reqs, idx.Digest, idx.Size)
	wantWindows := windowBytes(tbl, s0, s1)
	if wantWindows == 0 {
		t.Fatalf("fixture: spans %d-%d have no stored windows", s0, s1)
	}
	if asked != headSize+wantWindows {
		t.Errorf("index blob: GETs %v asked for %d bytes, want the head and the windows of spans %d-%d: %d+%d",
			ranges, asked, s0, s1, headSize, wantWindows)
	}
	if n != 2 {
		t.Errorf("index blob: %d GETs %v, want 2: the head, then the read's windows in one", n, ranges)
	}
	var spanBytes int64
	for i := s0; i <= s1; i++ {
		spanBytes += tbl.Spans[i].CEnd - tbl.Spans[i].C
	}
	ln, lranges, lasked := blobGets(t, reqs, s.layer, l.desc.Size)
	if lasked != spanBytes || ln != 1 {
		t.Errorf("layer blob: GETs %v asked for %d bytes, want one asking for spans %d-%d: %d", lranges, lasked, s0, s1, spanBytes)
	}
	t.Logf("read of %s (%d bytes, spans %d-%d): layer %d bytes of %d, index %d bytes of %d",
		name, node.Size, s0, s1, lasked, l.desc.Size, asked, idx.Size)

	// Every file still reads right, each window checked on the way.
	for p, want := range s.content {
		readWant(t, filepath.Join(mnt, p), want)
	}
	if st := im.Stats(); st.VerifyFailures != 0 {
		t.Errorf("verify_failures = %d", st.VerifyFailures)
	}
}

// TestLazyIndexTamperedWindow: a registry that flips a byte of every ranged
// answer for the index blob after the head was fetched makes reads of
// files whose spans need a window fail with EIO, never serve bytes decoded
// with a wrong window, and caches no bad window. Without the window
// digests the flipped window would inflate into wrong bytes.
func TestLazyIndexTamperedWindow(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newLazyIndexSetup(t, 6, pushIndexT)
	cache := t.TempDir()
	im := loadImage(t, newClient(t, cache, nil), s.ref)
	l := im.layers[0]
	if l.lazy == nil {
		t.Fatalf("layer 0: the registry's index is not read piece by piece")
	}
	idx := *l.remote
	s.front.Add(&fstest.Rule{Method: "GET", Path: idx.Digest.String(), Ranged: fstest.WithRange,
		Fault: fstest.Fault{Kind: fstest.Flip, N: 100}})
	mnt := mountImage(t, im)
	tbl := l.tbl()
	name := "data/f0150.txt"
	node, err := im.Tree().Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	s0 := tbl.SpanFor(node.Offset)
	_, wn, wsum := tbl.WindowLocation(s0)
	if wn <= 100 {
		t.Fatalf("fixture: span %d of %s has a %d-byte window", s0, name, wn)
	}
	b, err := os.ReadFile(filepath.Join(mnt, name))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read %s through a tampered window: %d bytes, err %v; want EIO", name, len(b), err)
	}
	if st := im.Stats(); st.VerifyFailures == 0 {
		t.Errorf("verify_failures = 0 after a tampered window")
	}
	// The file in the small layer (its index fetched whole at load) reads.
	readWant(t, filepath.Join(mnt, "etc/os-release"), s.content["etc/os-release"])
	if newClient(t, cache, nil).Cache().Has(wsum) {
		t.Errorf("the tampered window %s is in the cache", wsum)
	}

	// Once the registry answers right again, the same read succeeds: the
	// bad window was not kept.
	s.front.Clear()
	readWant(t, filepath.Join(mnt, name), s.content[name])
}

// TestLazyIndexNextMount: a second mount on the same cache reads the head
// from the disk cache and the windows its reads fetched before too; after
// the background fetch checked the whole layer (and with it the whole index
// blob), the index blob is cached whole.
func TestLazyIndexNextMount(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newLazyIndexSetup(t, 7, pushIndexT)
	cache := t.TempDir()
	name := "data/f0150.txt"

	// Read in-process, not through a mount, so that no kernel read-ahead
	// is still starting fetches when bg.Wait waits for their disk writes.
	first := loadImage(t, newClient(t, cache, nil), s.ref)
	idx := *first.layers[0].remote
	if b, err := readFile(t, first, name); err != nil || !bytes.Equal(b, s.content[name]) {
		t.Fatalf("first mount: read %s: %d bytes, err %v", name, len(b), err)
	}
	first.bg.Wait() // the spans and windows fetched are written to the disk cache
	before := len(s.front.Requests())

	second := loadImage(t, newClient(t, cache, nil), s.ref)
	if second.layers[0].lazy == nil {
		t.Fatalf("second mount: the index is not read piece by piece")
	}
	mnt2 := mountImage(t, second)
	readWant(t, filepath.Join(mnt2, name), s.content[name])
	if n, ranges, _ := blobGets(t, s.front.Requests()[before:], idx.Digest, idx.Size); n != 0 {
		t.Errorf("second mount: %d GETs of the index blob %v, want none (head and windows cached)", n, ranges)
	}

	if err := second.layers[0].ensure(t.Context()); err != nil {
		t.Fatalf("background fetch: %v", err)
	}
	if !newClient(t, cache, nil).Cache().Has(idx.Digest) {
		t.Errorf("after the background fetch checked the layer, the index blob is not cached whole")
	}
	for p, want := range s.content {
		readWant(t, filepath.Join(mnt2, p), want)
	}
	if st := second.Stats(); st.VerifyFailures != 0 || !st.Layers[0].Verified {
		t.Errorf("stats: verify_failures %d, layer 0 verified %v; want 0, true", st.VerifyFailures, st.Layers[0].Verified)
	}
}

// TestIndexWithoutHeadReadWhole: an index artifact without the head
// annotations (pushed before they existed) is fetched whole, as before, and
// serves every file.
func TestIndexWithoutHeadReadWhole(t *testing.T) {
	fstest.RequireFUSE(t)
	s := newLazyIndexSetup(t, 8, func(t *testing.T, ref string) {
		c, err := fetch.New(fetch.Options{CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		im, err := Resolve(t.Context(), c, ref, Options{SpanSize: lazySpan, NoRemoteIndex: true})
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		if err := im.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		var blobs []fetch.Blob
		for _, l := range im.layers {
			b, err := l.tbl().MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			blobs = append(blobs, fetch.Blob{Data: b, Desc: ocispec.Descriptor{
				MediaType: fetch.MediaTypeIndexLayer, Digest: digest.FromBytes(b), Size: int64(len(b)),
				Annotations: map[string]string{fetch.AnnotationLayerDigest: l.desc.Digest.String()},
			}})
		}
		created := map[string]string{ocispec.AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano)}
		if _, err := im.img.PushReferrer(t.Context(), fetch.ArtifactTypeIndex, created, blobs); err != nil {
			t.Fatal(err)
		}
	})
	im := loadImage(t, newClient(t, "", nil), s.ref)
	l := im.layers[0]
	if l.lazy != nil || l.mode != ModeIndex {
		t.Fatalf("layer 0: mode %s (%s), lazy %v; want the index fetched whole", l.mode, l.why, l.lazy != nil)
	}
	if n, ranges, _ := blobGets(t, s.front.Requests(), l.remote.Digest, l.remote.Size); n != 1 || ranges[0] != "" {
		t.Errorf("index blob GETs %v, want one without Range", ranges)
	}
	mnt := mountImage(t, im)
	for p, want := range s.content {
		readWant(t, filepath.Join(mnt, p), want)
	}
}
