package fs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// gateTransport holds back the whole-blob GET of one blob after its first n
// bytes until open is closed, so a test can look at a mount while that
// layer's stream is known to be unfinished. With flip >= n, it also flips
// the byte at offset flip, after the gate.
type gateTransport struct {
	base    http.RoundTripper
	blob    string
	n, flip int64
	open    chan struct{}
	reached chan struct{} // closed once the body has delivered n bytes
	once    sync.Once
}

func newGate(blob string, n, flip int64) *gateTransport {
	return &gateTransport{base: http.DefaultTransport, blob: blob, n: n, flip: flip,
		open: make(chan struct{}), reached: make(chan struct{})}
}

func (g *gateTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.base.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, "/blobs/"+g.blob) ||
		resp.StatusCode != http.StatusOK || req.Header.Get("Range") != "" {
		return resp, err
	}
	resp.Body = &gatedBody{ReadCloser: resp.Body, g: g}
	return resp, nil
}

type gatedBody struct {
	io.ReadCloser
	g   *gateTransport
	off int64
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if b.off >= b.g.n {
		b.g.once.Do(func() { close(b.g.reached) })
		<-b.g.open
	} else if rem := b.g.n - b.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := b.ReadCloser.Read(p)
	if i := b.g.flip - b.off; b.g.flip > 0 && i >= 0 && i < int64(n) {
		p[i] ^= 0x01
	}
	b.off += int64(n)
	return n, err
}

// waitClosed fails the test if ch is not closed within a minute: a guard
// against a hang, not a timing assertion.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("%s: still waiting after a minute", what)
	}
}

// pushPlain pushes layers as an image with no index anywhere.
func pushPlain(t *testing.T, host, repo string, layers []fstest.Layer) (string, *fstest.Image) {
	t.Helper()
	img, err := fstest.Build(layers, fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Push(t.Context(), host, repo, "v1"); err != nil {
		t.Fatal(err)
	}
	return host + "/" + repo + ":v1", img
}

// progressiveOpts are the options of a progressive load in these tests:
// every layer streams (none is small enough to be fetched whole) in small
// spans.
func progressiveOpts(t *testing.T, on bool) Options {
	return Options{Logger: testLogger(t), Progressive: on, WholeThreshold: 1, SpanSize: 32 << 10, NoRemoteIndex: true}
}

// TestProgressiveServesWhileStreaming: with Progressive, a file the stream
// of its layer has passed reads right while the rest of that stream is held
// back; when the stream ends, every file reads right, the tree equals
// umoci's unpack, and inode numbers handed out early have not changed.
// Without Progressive, Load itself waits for the whole stream.
func TestProgressiveServesWhileStreaming(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(5, 200)
	ref, img := pushPlain(t, host, "progressive/app", layers)
	want := reference(t, layers)
	blob := img.LayerDescs[0]
	first := "data/f0000.txt"

	t.Run("off", func(t *testing.T) {
		gate := newGate(blob.Digest.String(), blob.Size/2, 0)
		im, err := Resolve(t.Context(), newClient(t, "", gate), ref, progressiveOpts(t, false))
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		loaded := make(chan error, 1)
		go func() { loaded <- im.Load(t.Context()) }()
		waitClosed(t, gate.reached, "the stream reaching the gate")
		select {
		case err := <-loaded:
			t.Fatalf("Load returned (%v) while half the layer was held back; want it to wait for the verified layer", err)
		default:
		}
		close(gate.open)
		if err := <-loaded; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("on", func(t *testing.T) {
		gate := newGate(blob.Digest.String(), blob.Size/2, 0)
		im := resolveLoad(t, newClient(t, "", gate), ref, progressiveOpts(t, true))
		mnt := mountImage(t, im)
		waitClosed(t, gate.reached, "the stream reaching the gate")
		got, err := os.ReadFile(filepath.Join(mnt, first))
		if err != nil || !bytes.Equal(got, content[first]) {
			t.Fatalf("read %s while the stream is held back: %d bytes, err %v; want %d bytes", first, len(got), err, len(content[first]))
		}
		var early syscall.Stat_t
		if err := syscall.Stat(filepath.Join(mnt, first), &early); err != nil {
			t.Fatal(err)
		}
		if l := im.Layers()[0]; l.Complete || l.Mode != ModeStream {
			t.Fatalf("layer 0 while held back: mode %s, complete %v; want an unfinished stream", l.Mode, l.Complete)
		}
		if im.Tree() != nil {
			t.Fatalf("the tree is final while a stream is held back")
		}

		close(gate.open)
		if _, err := im.WaitTree(t.Context()); err != nil {
			t.Fatal(err)
		}
		for name, want := range content {
			if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
			}
		}
		// The root and etc are implied (no entry): umoci leaves them at the time
		// of unpack.
		for _, d := range fstest.CompareTrees(mnt, want, fstest.CompareOptions{IgnoreMtimePaths: []string{".", "etc"}}) {
			t.Errorf("progressive mount: %s", d)
		}
		var late syscall.Stat_t
		if err := syscall.Stat(filepath.Join(mnt, first), &late); err != nil {
			t.Fatal(err)
		}
		if late.Ino != early.Ino {
			t.Errorf("%s: inode %d while streaming, %d after; want one number for the mount", first, early.Ino, late.Ino)
		}
		for i, l := range im.Layers() {
			if !l.Complete || !l.Verified {
				t.Errorf("layer %d after the stream: complete %v, verified %v", i, l.Complete, l.Verified)
			}
		}
	})
}

// TestProgressiveCorners: the corner-case image (whiteouts, opaque
// directories, hardlinks across layers), loaded progressively, equals
// umoci's unpack once its streams end, read through the mount from the
// start.
func TestProgressiveCorners(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	want := reference(t, fstest.Corners())
	ref, _ := pushPlain(t, host, "progressive/corners", fstest.CornersWith(fstest.Gzip))
	im := resolveLoad(t, newClient(t, "", nil), ref, progressiveOpts(t, true))
	mnt := mountImage(t, im)
	compare(t, "progressive mount", mnt, want)
}

// TestProgressiveTamperQuarantines: the trade-off is bounded. Bytes flipped
// after the part of the stream already served make the blob digest fail
// when the stream ends: the layer is quarantined (EIO for what was not read
// yet, verify_failures counted) and nothing of it is cached.
func TestProgressiveTamperQuarantines(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(6, 200)
	ref, img := pushPlain(t, host, "progressive/tamper", layers)
	blob := img.LayerDescs[0]
	cache := t.TempDir()
	gate := newGate(blob.Digest.String(), blob.Size/2, blob.Size*3/4)
	im := resolveLoad(t, newClient(t, cache, gate), ref, progressiveOpts(t, true))
	mnt := mountImage(t, im)
	waitClosed(t, gate.reached, "the stream reaching the gate")
	first := "data/f0000.txt"
	if got, err := os.ReadFile(filepath.Join(mnt, first)); err != nil || !bytes.Equal(got, content[first]) {
		t.Fatalf("read %s before the flipped byte: %d bytes, err %v", first, len(got), err)
	}
	close(gate.open)
	if _, err := im.WaitTree(t.Context()); err == nil {
		t.Fatalf("the tree became final after a stream with a flipped byte")
	}
	other := "data/f0001.txt"
	if b, err := os.ReadFile(filepath.Join(mnt, other)); !errors.Is(err, syscall.EIO) {
		t.Errorf("read %s after the layer failed verification: %d bytes, err %v; want EIO", other, len(b), err)
	}
	if st := im.Stats(); st.VerifyFailures == 0 {
		t.Errorf("verify_failures = 0 after a stream with a flipped byte")
	}
	c := newClient(t, cache, nil).Cache()
	if c.Has(blob.Digest) || c.HasIndex(blob.Digest) {
		t.Errorf("the tampered layer or its index is in the cache")
	}
	var de *fetch.DigestError
	if err := im.layers[0].quarantined(); !errors.As(err, &de) {
		t.Errorf("layer 0 quarantined for %v; want a digest mismatch", err)
	}
	if n := im.Stats().Fallbacks[FallbackQuarantine]; n != 1 {
		t.Errorf("fallbacks[%s] = %d after the stream's layer was quarantined, want 1", FallbackQuarantine, n)
	}
}

// TestProgressiveTruncatedTempFile: while a progressive stream is held
// back, its blob temp file is cut to nothing on disk. A file the stream
// has passed then cannot be read back: the read is EIO, not a short file.
// Before the fix the layer read's io.EOF (the temp file's end) reached the
// FUSE read as the file's end, and the file read as 0 bytes with no error.
func TestProgressiveTruncatedTempFile(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	layers, content := lazyLayers(7, 200)
	ref, img := pushPlain(t, host, "progressive/truncated", layers)
	blob := img.LayerDescs[0]
	cache := t.TempDir()
	gate := newGate(blob.Digest.String(), blob.Size/2, 0)
	im := resolveLoad(t, newClient(t, cache, gate), ref, progressiveOpts(t, true))
	mnt := mountImage(t, im)
	waitClosed(t, gate.reached, "the stream reaching the gate")
	temps, err := filepath.Glob(filepath.Join(cache, "tmp", blob.Digest.Encoded()+".*"))
	if err != nil || len(temps) != 1 {
		t.Fatalf("temp files of the streaming blob: %v, %v; want one", temps, err)
	}
	if err := os.Truncate(temps[0], 0); err != nil {
		t.Fatal(err)
	}
	first := "data/f0000.txt"
	if b, err := os.ReadFile(filepath.Join(mnt, first)); !errors.Is(err, syscall.EIO) {
		t.Errorf("read %s from a truncated temp file: %d bytes (want %d), err %v; want EIO", first, len(b), len(content[first]), err)
	}
	close(gate.open)
	if _, err := im.WaitTree(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// orderTransport records, in order, when each layer's whole-blob GET is
// sent ("get") and when its body has been read to the end ("end"). Range
// requests (Resolve's look at each layer's head and tail) are not noted.
type orderTransport struct {
	layers map[string]int // layer index by blob digest
	mu     sync.Mutex
	events []string
}

func (o *orderTransport) note(e string) {
	o.mu.Lock()
	o.events = append(o.events, e)
	o.mu.Unlock()
}

func (o *orderTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	i := strings.Index(req.URL.Path, "/blobs/")
	li, ok := 0, false
	if i >= 0 && req.Method == http.MethodGet && req.Header.Get("Range") == "" {
		li, ok = o.layers[req.URL.Path[i+len("/blobs/"):]]
	}
	if ok {
		o.note(fmt.Sprintf("get %d", li))
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || !ok {
		return resp, err
	}
	resp.Body = &orderBody{ReadCloser: resp.Body, end: func() { o.note(fmt.Sprintf("end %d", li)) }}
	return resp, nil
}

type orderBody struct {
	io.ReadCloser
	end  func()
	once sync.Once
}

func (b *orderBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(b.end)
	}
	return n, err
}

// TestProgressiveTopDown: a lookup of a name in the lowest of three
// streamed layers can be answered only once both layers above have
// streamed to their end, so the streams take the link top-down: each
// layer's request is sent only once the layer above has been read to its
// end, and the file reads right. Before, the three GETs were sent at once
// and shared the link, the top layer (the one every lookup waits for)
// ending no sooner than the others.
func TestProgressiveTopDown(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	var layers []fstest.Layer
	content := map[string][]byte{}
	for i, dir := range []string{"low", "mid", "top"} {
		ls, c := lazyLayers(uint64(40+i), 60)
		l := ls[0]
		for j := range l.Files {
			h := &l.Files[j].Header
			h.Name = strings.Replace(h.Name, "data/", dir+"/", 1)
		}
		for name, b := range c {
			if rest, ok := strings.CutPrefix(name, "data/"); ok { // not the second layer's etc/os-release
				content[dir+"/"+rest] = b
			}
		}
		layers = append(layers, l)
	}
	ref, img := pushPlain(t, host, "progressive/topdown", layers)
	order := &orderTransport{layers: map[string]int{}}
	for i, d := range img.LayerDescs {
		order.layers[d.Digest.String()] = i
	}
	im := resolveLoad(t, newClient(t, "", order), ref, progressiveOpts(t, true))
	mnt := mountImage(t, im)
	name := "low/f0000.txt"
	if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, content[name]) {
		t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(content[name]))
	}
	if _, err := im.WaitTree(t.Context()); err != nil {
		t.Fatal(err)
	}
	order.mu.Lock()
	got := strings.Join(order.events, ", ")
	order.mu.Unlock()
	if want := "get 2, end 2, get 1, end 1, get 0, end 0"; got != want {
		t.Errorf("layer requests: %s; want %s (top-down, each after the one above ended)", got, want)
	}
	for name, want := range content {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
		}
	}
}
