package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// slowBlobs serves blob bodies in 256 KiB pieces 30 ms apart, so that a
// pull takes long enough to show progress.
func slowBlobs(h http.Handler) http.Handler { return slowerBlobs(30 * time.Millisecond)(h) }

// slowerBlobs is slowBlobs with pieces pause apart.
func slowerBlobs(pause time.Duration) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/blobs/") {
				h.ServeHTTP(w, r)
				return
			}
			h.ServeHTTP(&slowWriter{ResponseWriter: w, pause: pause}, r)
		})
	}
}

type slowWriter struct {
	http.ResponseWriter
	pause time.Duration
}

func (s *slowWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 256<<10)
		m, err := s.ResponseWriter.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		b = b[k:]
		time.Sleep(s.pause)
	}
	return n, nil
}

// TestPullProgress: ocifs pull draws bars on a terminal, prints plain lines
// on a pipe, and nothing with --progress=none; the summary line follows.
func TestPullProgress(t *testing.T) {
	requireRoot(t)
	bin := ocifsBinary(t)
	img, _ := boundImage(t)
	ref := registryRef(t, img, slowBlobs)
	isolate(t)

	t.Run("terminal", func(t *testing.T) {
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatalf("open a pseudo-terminal: %v", err)
		}
		defer ptmx.Close()
		if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 24, Cols: 120}); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(t.Context(), bin, "--cache-dir", filepath.Join(t.TempDir(), "c"), "pull", ref, filepath.Join(t.TempDir(), "root"))
		var stdout bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, tty
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close()
		var out bytes.Buffer
		_, err = io.Copy(&out, ptmx) // until the child closes its end: EIO
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Errorf("read the terminal: %v", err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("pull on a terminal: %v\n%s", err, out.String())
		}
		s := out.String()
		t.Logf("on a terminal:\n%q", s)
		for _, want := range []string{"\x1b[", "pull " + ref, "MiB", "100 %", "3/3 layers", "pulled " + ref} {
			if !strings.Contains(s, want) {
				t.Errorf("terminal output lacks %q:\n%q", want, s)
			}
		}
		// At least one frame drawn before the end: a bar part way.
		if !strings.Contains(s, "fetching") {
			t.Errorf("no frame showed the fetch under way:\n%q", s)
		}
	})

	pullPiped := func(t *testing.T, flags ...string) string {
		args := append([]string{"--cache-dir", filepath.Join(t.TempDir(), "c")}, flags...)
		args = append(args, "pull", ref, filepath.Join(t.TempDir(), "root"))
		_, errs, code := execOcifs(t, bin, args...)
		if code != 0 {
			t.Fatalf("pull %v: exit %d\n%s", flags, code, errs)
		}
		return errs
	}
	t.Run("pipe", func(t *testing.T) {
		errs := pullPiped(t, "--progress-interval=200ms")
		t.Logf("on a pipe:\n%s", errs)
		if strings.Contains(errs, "\x1b") {
			t.Errorf("escape sequences on a pipe:\n%q", errs)
		}
		var lines []string
		for _, l := range strings.Split(errs, "\n") {
			if strings.HasPrefix(l, "pull "+ref+": ") {
				lines = append(lines, l)
			}
		}
		if len(lines) < 2 {
			t.Errorf("%d progress lines on a pipe, want periodic ones and a last:\n%s", len(lines), errs)
		} else if last := lines[len(lines)-1]; !strings.Contains(last, ": done, ") || !strings.Contains(last, "(100%), 3/3 layers") {
			t.Errorf("last progress line %q, want done at 100%% with 3/3 layers", last)
		}
		if !strings.Contains(errs, "pulled "+ref) {
			t.Errorf("no summary line:\n%s", errs)
		}
	})
	t.Run("none", func(t *testing.T) {
		errs := pullPiped(t, "--progress=none")
		if strings.Contains(errs, "pull "+ref+": ") || !strings.HasPrefix(errs, "pulled "+ref) {
			t.Errorf("--progress=none printed:\n%s", errs)
		}
	})
	r := runCLI(t, "--progress=fancy", "pull", ref, t.TempDir())
	if r.code != exitUsage || !strings.Contains(r.stderr, "--progress") {
		t.Errorf("--progress=fancy: exit %d, %q", r.code, r.stderr)
	}
}

// TestMountProgress: a mount that streams its layers before it answers
// shows how far they are (plain lines on a pipe), then "mounted"; index
// build and cache verify show theirs too.
func TestMountProgress(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	img, want := boundImage(t)
	ref := registryRef(t, img, slowerBlobs(150*time.Millisecond)) // about 1.5s per layer
	cache := isolate(t)
	dir := t.TempDir()
	cleanupMount(t, cache, dir)
	out, errs, code := execOcifs(t, bin, "--cache-dir", cache, "--progress-interval=200ms", "mount", ref, dir)
	if code != 0 {
		t.Fatalf("mount: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("mount on a pipe:\nstderr:\n%sstdout:\n%s", errs, out)
	lines := strings.Split(strings.TrimSpace(errs), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "mount "+ref+": ") || strings.Contains(lines[0], "done") ||
		!strings.Contains(lines[len(lines)-1], ": done, ") || strings.Contains(errs, "\x1b") {
		t.Errorf("mount progress on a pipe:\n%s\nwant plain lines ending in done", errs)
	}
	if !strings.HasPrefix(out, "mounted "+ref) {
		t.Errorf("mount stdout %q", out)
	}
	for name, b := range want {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, b) {
			t.Errorf("read %s: %d bytes, %v", name, len(got), err)
		}
	}
	if _, errs, code := execOcifs(t, bin, "unmount", dir); code != 0 {
		t.Fatalf("unmount: %d %s", code, errs)
	}

	_, errs, code = execOcifs(t, bin, "--cache-dir", cache, "--progress=plain", "cache", "verify")
	if code != 0 || !strings.Contains(errs, "cache verify: done, ") || !strings.Contains(errs, "blobs") {
		t.Errorf("cache verify --progress=plain: exit %d, stderr:\n%s", code, errs)
	}
	_, errs, code = execOcifs(t, bin, "--cache-dir", filepath.Join(t.TempDir(), "c"), "--progress=plain", "index", "build", ref)
	if code != 0 || !strings.Contains(errs, "index "+ref+": done, ") || !strings.Contains(errs, "3/3 layers") {
		t.Errorf("index build --progress=plain: exit %d, stderr:\n%s", code, errs)
	}
}

func TestBarName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"pull alpine", "pull alpine"},
		{"pull 127.0.0.1:5077/bench/python-gzip@sha256:4882552992628faa7adaa576677a6be320053b9a202ba3c0939fae060d0b376d", "…7/bench/python-gzip@sha256:488255299262"},
		{"index registry.example.com/team/app:1.4", "index registry.example.com/team/app:1.4"},
	} {
		if got := barName(c.in); got != c.want {
			t.Errorf("barName(%q) = %q, want %q", c.in, got, c.want)
		}
		if n := len([]rune(barName(c.in))); n > barNameMax {
			t.Errorf("barName(%q) is %d runes, over %d", c.in, n, barNameMax)
		}
	}
}
