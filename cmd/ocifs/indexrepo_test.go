package main

// Issue 16's index repository, through the real binary and docker-registry
// (no referrers API: the sha256-<hex> fallback tag): indexes of an image in
// repository A, which the test treats as read-only, are pushed to B with
// `index build --push --index-repo`, and a mount of A given --index-repo B
// reads lazily; what B holds is verified as an index from A would be.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
)

// countingFront counts the response body bytes a registry front sent, per
// request path.
type countingFront struct {
	next http.Handler
	// mu guards bytes.
	mu    sync.Mutex
	bytes map[string]int64
}

func (c *countingFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cw := &countWriter{ResponseWriter: w}
	c.next.ServeHTTP(cw, r)
	c.mu.Lock()
	c.bytes[r.URL.Path] += cw.n
	c.mu.Unlock()
}

// sum returns the bytes sent for paths containing s, and resets the counts
// when reset is set.
func (c *countingFront) sum(s string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for p, b := range c.bytes {
		if strings.Contains(p, s) {
			n += b
		}
	}
	return n
}

func (c *countingFront) reset() {
	c.mu.Lock()
	c.bytes = map[string]int64{}
	c.mu.Unlock()
}

type countWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *countWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// indexRepoMount is one fresh-cache mount with --prefetch=none, the probe
// read through it, its stats and its daemon's log.
type indexRepoMount struct {
	stats fs.Stats
	log   string
}

// TestCLIIndexRepo: an image in repository A without an index; its index
// built and pushed to repository B; mounts of A with and without
// --index-repo B, with B's index blob tampered with, and with B's fallback
// tag listing another image's artifact.
func TestCLIIndexRepo(t *testing.T) {
	requireFUSE(t)
	bin := ocifsBinary(t)
	registryHost := fstest.StartRegistry(t)
	isolate(t)
	faults, err := fstest.NewFaults(registryHost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(faults.Release)
	front := &countingFront{next: faults, bytes: map[string]int64{}}
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	ll := fstest.Large(5, 24<<20)
	build := func(platform string) *fstest.Image {
		img, err := fstest.BuildSystemGzip([]fstest.Layer{ll.Layer}, fstest.Options{BlobDir: t.TempDir(), Platform: platform}, 1)
		if err != nil {
			t.Fatalf("build the image: %v", err)
		}
		return img
	}
	img := build("")
	// Another image of the same layer (another platform in its config):
	// another manifest digest, so its index artifact is not for img.
	twin := build("linux/s390x")
	layer := img.LayerDescs[0]
	if twin.LayerDescs[0].Digest != layer.Digest || twin.ManifestDesc.Digest == img.ManifestDesc.Digest {
		t.Fatalf("twin image: layer %s manifest %s; want layer %s and another manifest than %s",
			twin.LayerDescs[0].Digest, twin.ManifestDesc.Digest, layer.Digest, img.ManifestDesc.Digest)
	}
	if err := img.Push(t.Context(), registryHost, "app/a", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := twin.Push(t.Context(), registryHost, "app/twin", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := host + "/app/a:v1"
	repoB := host + "/indexes/b"

	out, errs, code := execOcifs(t, bin, "--cache-dir", filepath.Join(t.TempDir(), "c"), "index", "build", "--push",
		"--span-size", "1048576", "--index-repo", repoB, ref)
	if code != 0 || !strings.Contains(out, "pushed index artifact") || !strings.Contains(out, " to "+repoB+"\n") {
		t.Fatalf("index build --push --index-repo: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	tag := "/manifests/" + img.ManifestDesc.Digest.Algorithm().String() + "-" + img.ManifestDesc.Digest.Encoded()
	if _, status := httpGet(t, "http://"+registryHost+"/v2/app/a"+tag, ocispec.MediaTypeImageIndex); status != http.StatusNotFound {
		t.Fatalf("repository A has a referrers tag (status %d): the index went to the image's repository", status)
	}
	blob := registryIndexBlob(t, registryHost, "indexes/b", img.ManifestDesc.Digest, layer.Digest)
	indexDigest := digest.FromBytes(blob)
	t.Logf("layer %s: %d bytes; index blob %s in %s: %d bytes", layer.Digest, layer.Size, indexDigest, repoB, len(blob))

	var mountWaiting func(t *testing.T, waitLog string, args ...string) indexRepoMount
	mount := func(t *testing.T, args ...string) indexRepoMount {
		t.Helper()
		return mountWaiting(t, "", args...)
	}
	mountWaiting = func(t *testing.T, waitLog string, args ...string) indexRepoMount {
		t.Helper()
		// Short: the stats socket's path must fit in 108 bytes, and the
		// subtests' names make t.TempDir long.
		short, err := os.MkdirTemp("", "ocifs-ir-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		cache, dir := filepath.Join(short, "cache"), t.TempDir()
		cleanupMount(t, cache, dir)
		front.reset()
		out, errs, code := execOcifs(t, bin, append(append([]string{"--cache-dir", cache, "mount", "--prefetch=none"}, args...), ref, dir)...)
		if code != 0 {
			t.Fatalf("ocifs mount: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
		}
		got, err := os.ReadFile(filepath.Join(dir, ll.Probe.Header.Name))
		if err != nil || !bytes.Equal(got, ll.Probe.Data) {
			t.Fatalf("read %s: %d bytes, %v; want the %d bytes of the image", ll.Probe.Header.Name, len(got), err, len(ll.Probe.Data))
		}
		var m indexRepoMount
		logPath := namePaths(cache, dir).log
		for waitLog != "" {
			if b, _ := os.ReadFile(logPath); strings.Contains(string(b), waitLog) {
				break
			}
			select {
			case <-t.Context().Done():
				t.Fatalf("the daemon never logged %q", waitLog)
			case <-time.After(50 * time.Millisecond):
			}
		}
		out, errs, code = execOcifs(t, bin, "--cache-dir", cache, "stats", "--json", dir)
		if code != 0 || json.Unmarshal([]byte(out), &m.stats) != nil || len(m.stats.Layers) != 1 {
			t.Fatalf("ocifs stats --json: exit %d\n%s%s", code, out, errs)
		}
		log, _ := os.ReadFile(logPath)
		m.log = string(log)
		if _, errs, code := execOcifs(t, bin, "--cache-dir", cache, "unmount", dir); code != 0 {
			t.Fatalf("ocifs unmount: exit %d: %s", code, errs)
		}
		l := m.stats.Layers[0]
		t.Logf("layer mode %s (%s); %d layer bytes, %d bytes from %s at the front", l.Mode, l.Why, front.sum(layer.Digest.String()), front.sum("/v2/indexes/"), host+"/indexes")
		return m
	}

	t.Run("without --index-repo the layer streams", func(t *testing.T) {
		m := mount(t)
		if l := m.stats.Layers[0]; l.Mode != fs.ModeStream {
			t.Errorf("layer mode %q (%s), want %q: nothing in A indexes it", l.Mode, l.Why, fs.ModeStream)
		}
		if n := front.sum(layer.Digest.String()); n < layer.Size {
			t.Errorf("%d bytes of the layer at the front, want all %d (streamed)", n, layer.Size)
		}
	})

	t.Run("with --index-repo the first read is lazy", func(t *testing.T) {
		m := mount(t, "--index-repo", host+"/indexes/none", "--index-repo", repoB)
		l := m.stats.Layers[0]
		if l.Mode != fs.ModeIndex || !strings.Contains(l.Why, "index repository "+repoB) {
			t.Errorf("layer mode %q (%s), want %q from index repository %s", l.Mode, l.Why, fs.ModeIndex, repoB)
		}
		if l.Complete || m.stats.VerifyFailures != 0 {
			t.Errorf("layer complete %v, verify failures %d after one read with --prefetch=none", l.Complete, m.stats.VerifyFailures)
		}
		// The index is read piece by piece from B: its head and the
		// window of the span read, never from A.
		if n := front.sum("/v2/indexes/b/blobs/" + indexDigest.String()); n == 0 || n > int64(len(blob)) {
			t.Errorf("%d bytes of the %d-byte index blob from B at the front, want some and at most all", n, len(blob))
		}
		// Issue 3's bound for a first read is about one span: allow a fifth of the layer.
		if n := front.sum(layer.Digest.String()); n == 0 || n > layer.Size/5 {
			t.Errorf("%d bytes of the %d-byte layer at the front for one small file, want some and at most a fifth", n, layer.Size)
		}
	})

	t.Run("the config file's index-repo is used", func(t *testing.T) {
		file := writeConfig(t, "index-repo = [\""+host+"/indexes/none\", \""+repoB+"\"]\n")
		r := mustRun(t, "--config", file, "--cache-dir", filepath.Join(t.TempDir(), "c"), "inspect", "--json", ref)
		var got inspectOutput
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got.Layers) != 1 {
			t.Fatalf("inspect --json: %v\n%s", err, r.stdout)
		}
		if l := got.Layers[0]; l.Mode != fs.ModeIndex || !strings.Contains(l.Why, repoB) {
			t.Errorf("inspect with index-repo in the config: layer mode %q (%s), want index from %s", l.Mode, l.Why, repoB)
		}
	})

	t.Run("a tampered index blob in B is refused", func(t *testing.T) {
		rule := faults.Add(&fstest.Rule{Path: "/blobs/" + indexDigest.String(), Fault: fstest.Fault{Kind: fstest.Flip, N: -1}})
		defer faults.Clear()
		m := mount(t, "--index-repo", repoB)
		if faults.Hits(rule[0]) == 0 {
			t.Fatal("the index blob was never asked for")
		}
		if l := m.stats.Layers[0]; l.Mode != fs.ModeStream || !strings.Contains(l.Why, "unusable") {
			t.Errorf("layer mode %q (%s), want %q after a bad index", l.Mode, l.Why, fs.ModeStream)
		}
		if !strings.Contains(m.log, "registry index unusable; streaming the layer instead") || !strings.Contains(m.log, "source="+repoB) ||
			!strings.Contains(m.log, indexDigest.String()) {
			t.Errorf("daemon log lacks the refusal of %s from %s:\n%s", indexDigest, repoB, m.log)
		}
	})

	t.Run("another image's artifact in the index repository is not used", func(t *testing.T) {
		repoC := host + "/indexes/c"
		out, errs, code := execOcifs(t, bin, "--cache-dir", filepath.Join(t.TempDir(), "c"), "index", "build", "--push",
			"--span-size", "1048576", "--index-repo", repoC, host+"/app/twin:v1")
		if code != 0 {
			t.Fatalf("index build of the twin: exit %d\n%s%s", code, out, errs)
		}
		// Make C's referrers tag of img list the twin's artifact: its index
		// would even fit the layer, but its subject is the twin.
		twinTag := "/manifests/" + twin.ManifestDesc.Digest.Algorithm().String() + "-" + twin.ManifestDesc.Digest.Encoded()
		b, status := httpGet(t, "http://"+registryHost+"/v2/indexes/c"+twinTag, ocispec.MediaTypeImageIndex)
		if status != http.StatusOK {
			t.Fatalf("the twin's referrers tag in C: status %d", status)
		}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, "http://"+registryHost+"/v2/indexes/c"+tag, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", ocispec.MediaTypeImageIndex)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT the twin's list under img's tag: %v %v", err, resp)
		}
		resp.Body.Close()
		m := mount(t, "--index-repo", repoC)
		if l := m.stats.Layers[0]; l.Mode != fs.ModeStream {
			t.Errorf("layer mode %q (%s), want %q: the artifact is the twin's", l.Mode, l.Why, fs.ModeStream)
		}
		if !strings.Contains(m.log, "index artifact unusable; ignored") || !strings.Contains(m.log, "refers to another image") {
			t.Errorf("daemon log lacks the refused artifact:\n%s", m.log)
		}
	})

	t.Run("a node that streamed a layer pushes the index it built", func(t *testing.T) {
		repoP := host + "/indexes/pushed"
		m := mountWaiting(t, "pushed the indexes built here", "--push-index-to", repoP)
		if l := m.stats.Layers[0]; l.Mode != fs.ModeStream {
			t.Fatalf("first mount: layer mode %q (%s), want %q (nothing indexes it yet)", l.Mode, l.Why, fs.ModeStream)
		}
		if !strings.Contains(m.log, "source="+repoP) {
			t.Errorf("daemon log does not name %s:\n%s", repoP, m.log)
		}
		m = mount(t, "--index-repo", repoP)
		l := m.stats.Layers[0]
		if l.Mode != fs.ModeIndex || !strings.Contains(l.Why, "index repository "+repoP) {
			t.Errorf("second mount: layer mode %q (%s), want %q from %s", l.Mode, l.Why, fs.ModeIndex, repoP)
		}
		// The daemon indexed with the default span size (4 MiB of tar, about
		// 1.8 MB of this layer), so the bound is looser than above.
		if n := front.sum(layer.Digest.String()); n == 0 || n > layer.Size/2 {
			t.Errorf("second mount: %d bytes of the %d-byte layer for one small file, want some and at most half", n, layer.Size)
		}
	})
}
