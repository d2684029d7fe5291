package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// logLines collects what a logger writes, for tests that count lines.
type logLines struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// count returns how many lines hold s.
func (l *logLines) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// capturingLogger logs to the test's output and to the returned lines.
func capturingLogger(t *testing.T) (*slog.Logger, *logLines) {
	lines := &logLines{}
	return slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), lines), &slog.HandlerOptions{Level: slog.LevelDebug})), lines
}

// disagreeLine is what the one Error line about a table that disagrees with
// its verified layer says (the EIOs served after it say only the first
// half).
const disagreeLine = "disagrees with the verified layer: the nodes it got wrong are refused"

// wantEIO fails the test unless err is EIO.
func wantEIO(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("%s: err %v, want EIO", what, err)
	}
}

// readWant fails the test unless path reads as want.
func readWant(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := fstest.ReadFileWithin(t, time.Minute, path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("read %s: %d bytes, err %v; want its %d bytes", path, len(got), err, len(want))
	}
}

// lyingTOCLayers returns a layer with files the TOC tells the truth about
// (good/, lies/other.txt, modes/fine.txt) and two it lies about in
// lyingTOC, and a plain second layer; with every file's content.
func lyingTOCLayers() ([]fstest.Layer, map[string][]byte) {
	mt := time.Unix(1700000000, 0)
	content := map[string][]byte{}
	reg := func(name string, data []byte) fstest.File {
		content[name] = data
		return fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt, Format: tar.FormatPAX}, Data: data}
	}
	dir := func(name string) fstest.File {
		return fstest.File{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt, Format: tar.FormatPAX}}
	}
	files := []fstest.File{dir("./"), dir("good/")}
	for i := range 20 {
		files = append(files, reg(fmt.Sprintf("good/f%02d.txt", i), bytes.Repeat([]byte(fmt.Sprintf("good file %d\n", i)), 100+i*500)))
	}
	files = append(files, dir("lies/"), reg("lies/told.txt", []byte("the TOC calls me planted.txt\n")),
		reg("lies/other.txt", []byte("the TOC is right about me\n")),
		dir("modes/"), reg("modes/mode.txt", []byte("the TOC says 0755\n")), reg("modes/fine.txt", []byte("right\n")))
	plain := []fstest.File{dir("etc/"), reg("etc/os-release", []byte("ID=ocifs\n"))}
	return []fstest.Layer{{Files: files}, {Files: plain}}, content
}

// lyingTOC renames lies/told.txt and changes the mode of modes/mode.txt in
// layer 0's TOC.
func lyingTOC(layer int, e *fstest.TOCEntry) {
	switch {
	case layer != 0:
	case e.Name == "lies/told.txt":
		e.Name = "lies/planted.txt"
	case e.Name == "modes/mode.txt":
		e.Mode = 0o755
	}
}

// TestChunkedLyingTOC: a zstd:chunked TOC, bound by its annotation, that
// lies about the tar it comes with (a file renamed, another's mode).
//
// With the tar-split, the lie is seen at load: the tar-split's headers do
// not match the TOC, so the layer is not served from it but fetched whole
// and verified; the tree is exact from the start.
//
// Without one, the lie is served until the background check has the
// verified layer; then the nodes it lies about are refused (EIO), as is the
// listing of the directory whose names it changed (and a lookup there of a
// name the served tree lacks), while everything else of the layer is served
// right from the verified bytes. One Error line says so. Before the fix the
// check quarantined the whole layer: every read of it was EIO, good/
// included.
func TestChunkedLyingTOC(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)

	t.Run("with tar-split", func(t *testing.T) {
		layers, _ := lyingTOCLayers()
		ref, img := pushLazy(t, host, "disagree/toc-tarsplit", layers, fstest.LazyOptions{Format: fstest.ZstdChunked, EditTOC: lyingTOC})
		want := umociOfBlobs(t, img)
		log, lines := capturingLogger(t)
		im := resolveLoad(t, newClient(t, "", nil), ref, Options{Logger: log, WholeThreshold: 1})
		if l := im.Layers()[0]; l.Mode != ModeWhole || !strings.Contains(l.Why, "tar-split") {
			t.Errorf("layer 0: mode %s (%s), want %s saying the tar-split disagrees", l.Mode, l.Why, ModeWhole)
		}
		if n := lines.count("tar-split"); n == 0 {
			t.Errorf("no log line says the tar-split disagrees with the TOC")
		}
		mnt := mountImage(t, im)
		compare(t, "before the background check", mnt, want)
		settleAll(t, im)
		compare(t, "after the background check", mnt, want)
		if st := im.Stats(); st.VerifyFailures != 0 {
			t.Errorf("verify_failures = %d, want 0", st.VerifyFailures)
		}
	})

	t.Run("without tar-split", func(t *testing.T) {
		layers, content := lyingTOCLayers()
		ref, img := pushLazy(t, host, "disagree/toc", layers, fstest.LazyOptions{Format: fstest.ZstdChunked, NoTarSplit: true, EditTOC: lyingTOC})
		want := umociOfBlobs(t, img)
		log, lines := capturingLogger(t)
		im := resolveLoad(t, newClient(t, "", nil), ref, Options{Logger: log, WholeThreshold: 1})
		if l := im.Layers()[0]; l.Mode != ModeZstdChunked {
			t.Fatalf("layer 0: mode %s (%s), want %s", l.Mode, l.Why, ModeZstdChunked)
		}
		if _, err := im.Tree().Lookup("lies/planted.txt"); err != nil {
			t.Fatalf("the lying TOC is not in use: %v", err)
		}
		mnt := mountImage(t, im)
		// Before the check only good/ is looked at through the mount: the
		// kernel keeps entries and attributes it has seen (refusals apply
		// to what reaches the daemon).
		compare(t, "good/ before the background check", filepath.Join(mnt, "good"), filepath.Join(want, "good"))

		settleAll(t, im)
		compare(t, "good/ after the background check", filepath.Join(mnt, "good"), filepath.Join(want, "good"))
		for _, name := range []string{"lies/other.txt", "modes/fine.txt", "etc/os-release"} {
			readWant(t, filepath.Join(mnt, name), content[name])
		}
		_, err := os.Lstat(filepath.Join(mnt, "lies/planted.txt"))
		wantEIO(t, "lstat of the name the TOC planted", err)
		_, err = os.ReadFile(filepath.Join(mnt, "modes/mode.txt"))
		wantEIO(t, "read of the file whose mode the TOC changed", err)
		_, err = os.ReadDir(filepath.Join(mnt, "lies"))
		wantEIO(t, "listing of the directory whose names the TOC changed", err)
		_, err = os.Lstat(filepath.Join(mnt, "lies/told.txt"))
		wantEIO(t, "lstat of the true name the served tree lacks", err)

		st := im.Stats()
		if st.VerifyFailures != 1 || st.Layers[0].Verified || !st.Layers[0].Complete || st.Layers[0].Refused != 2 {
			t.Errorf("stats: verify_failures %d, layer 0 complete %v verified %v refused %d; want 1, true, false, 2",
				st.VerifyFailures, st.Layers[0].Complete, st.Layers[0].Verified, st.Layers[0].Refused)
		}
		if !st.Layers[1].Verified {
			t.Errorf("layer 1 not verified")
		}
		if n := lines.count(disagreeLine); n != 1 {
			t.Errorf("%d log lines say %q, want 1", n, disagreeLine)
		}
	})
}

// TestLyingIndexSpans: a registry index whose entries are right but one of
// whose span windows is not (a span digest covers only the compressed
// bytes) decodes that span wrong until the background check; once the
// verified layer is in hand, the layer's reads are served from the spans
// built from it, so every file reads right and nothing is refused. Before
// the fix the check quarantined the layer and every file of it was EIO.
func TestLyingIndexSpans(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	const bad = 3
	ref, content := pushLyingIndex(t, host, "disagree/window", 4, 120, func(tbl *index.Table) {
		w, err := tbl.Window(bad)
		if err != nil || len(w) == 0 {
			t.Fatalf("span %d has no window to lie about (%v)", bad, err)
		}
		for i := range w {
			w[i] ^= 0x20
		}
	})
	log, lines := capturingLogger(t)
	im, err := Resolve(t.Context(), newClient(t, "", nil), ref, Options{Logger: log, WholeThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	if err := im.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	l := im.layers[0]
	if l.mode != ModeIndex || l.remote == nil {
		t.Fatalf("layer 0: mode %s, registry index %v; want the registry's index", l.mode, l.remote)
	}
	// The lie must bite, or this test shows nothing: a file in the span
	// decodes wrong before the check (read through ReadAt, not the mount,
	// whose page cache would keep it).
	var victim string
	im.Tree().Walk(func(p string, n *Node) error {
		if victim == "" && n.Type == index.TypeReg && n.Layer == 0 && l.table.SpanFor(n.Offset) == bad && l.table.SpanFor(n.Offset+n.Size-1) == bad {
			victim = p
		}
		return nil
	})
	if victim == "" {
		t.Fatalf("no file lies inside span %d", bad)
	}
	if b, err := readFile(t, im, victim); err == nil && bytes.Equal(b, content[victim]) {
		t.Fatalf("read %s through the lying window: right bytes; the fixture's lie changes nothing", victim)
	}

	mnt := mountImage(t, im)
	if err := l.ensure(t.Context()); err != nil {
		t.Fatalf("background check: %v", err)
	}
	// The layer's own read path, which the extracted files (made next, in
	// the background) would hide from a read through the mount.
	im.Tree().Walk(func(p string, n *Node) error {
		if n.Type != index.TypeReg || n.Layer != 0 {
			return nil
		}
		b := make([]byte, n.Size)
		if got, err := l.readAt(t.Context(), b, n.Offset, n.Offset+n.Size); err != nil || !bytes.Equal(b[:got], content[p]) {
			t.Errorf("layer read of %s after the check: %d bytes, err %v; want its %d bytes", p, got, err, len(content[p]))
		}
		return nil
	})
	settleAll(t, im)
	for name, want := range content {
		readWant(t, filepath.Join(mnt, name), want)
	}
	st := im.Stats()
	if st.VerifyFailures != 1 || st.Layers[0].Refused != 0 || !st.Layers[0].Verified {
		t.Errorf("stats: verify_failures %d, layer 0 refused %d verified %v; want 1, 0, true", st.VerifyFailures, st.Layers[0].Refused, st.Layers[0].Verified)
	}
	if n := lines.count(disagreeLine); n != 1 {
		t.Errorf("%d log lines say %q, want 1", n, disagreeLine)
	}
}
