package podmantest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// storeFixture is an image pushed to a registry and laid out in a fake
// store mounted over FUSE.
type storeFixture struct {
	reg     *registry
	im      *fstest.Image
	ref     string
	backing string // the directory the fake store serves
	store   *fakeStore
	layers  []Layer
}

// newStoreFixture pushes im as repo:1 and lays it out in a fake store.
func newStoreFixture(t testing.TB, im *fstest.Image, repo string) *storeFixture {
	t.Helper()
	f := &storeFixture{reg: newRegistry(t), im: im}
	if err := im.Push(t.Context(), f.reg.host, repo, "1"); err != nil {
		t.Fatal(err)
	}
	f.ref = f.reg.host + "/" + repo + ":1"
	f.backing = t.TempDir()
	var err error
	if f.layers, err = WriteImage(f.backing, f.ref, im); err != nil {
		t.Fatal(err)
	}
	f.store = mountFakeStore(t, f.backing)
	return f
}

// rel is a layer's directory relative to the store's root.
func (f *storeFixture) rel(i int) string { return relTo(f.backing, f.layers[i].Dir) }

// layerBlobGETs are the GETs of layer blobs (not the config's) from index
// from on.
func (f *storeFixture) layerBlobGETs(from int) []string {
	var out []string
	for _, p := range f.reg.blobGETs(from) {
		if !strings.HasSuffix(p, f.im.ConfigDesc.Digest.String()) {
			out = append(out, p)
		}
	}
	return out
}

// hostPaths are the host places podman 4.3.1 as root writes to by
// default; none may change while the tests run it.
var hostPaths = []string{"/var/lib/containers", "/run/containers", "/run/libpod", "/etc/containers", "/dev/shm"}

// snapshotHost lists every entry below hostPaths with its size and mtime.
func snapshotHost(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, root := range hostPaths {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				out[p] = "error: " + err.Error()
				return nil
			}
			out[p] = fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
			return nil
		})
	}
	return out
}

// TestRunFromStore lays out the small image in a fake store and runs it
// with podman configured to use the store: the program's output must be
// right and no layer blob may come from the registry. It pins down what
// podman 4.3.1 asks of the store, layer by layer: lookups of diff, info
// and blob in that order, never a read of blob, a "use" at lookup and
// another when the layer is stored, a release (rmdir of the layer's
// directory) when the pull ends, and one more at podman rmi. And it checks
// the host's podman paths are untouched.
func TestRunFromStore(t *testing.T) {
	requirePodman(t)
	hostBefore := snapshotHost(t)
	f := newStoreFixture(t, smallImage(t), "podmantest/small")
	p := startPodman(t, Options{Registries: []string{f.reg.host}, AdditionalLayerStore: f.store.mnt})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	before := len(f.reg.front.Requests())
	res, err := p.Run(ctx, RunSpec{Image: f.ref, Command: smallCommand})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("podman run from the store: first output after %v, done after %v", res.Timings.ToFirstOutput(), res.Timings.Done.Sub(res.Timings.Start))
	if res.ExitCode != 0 || string(res.Stdout) != smallOutput {
		t.Fatalf("podman run = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, smallOutput)
	}
	if len(res.Stderr) != 0 {
		t.Errorf("podman run wrote to stderr (a warning about the store?): %s", res.Stderr)
	}
	if got := f.layerBlobGETs(before); len(got) != 0 {
		t.Errorf("layer blob GETs = %q, want none", got)
	}
	if got, want := f.reg.blobGETs(before), []string{"/v2/podmantest/small/blobs/" + f.im.ConfigDesc.Digest.String()}; !slices.Equal(got, want) {
		t.Errorf("blob GETs = %q, want %q (the config only)", got, want)
	}
	im, err := p.InspectImage(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(im.RootFS.Layers, f.im.DiffIDs) {
		t.Errorf("image's DiffIDs = %v, want %v", im.RootFS.Layers, f.im.DiffIDs)
	}

	for i := range f.layers {
		ev := layerEvents(f.store.Events(0), f.rel(i))
		t.Logf("layer %d after the run: %q", i, ev)
		var files []string // the layer's own entries looked up, in order, once each
		counts := map[string]int{}
		for _, e := range ev {
			counts[e.Op+" "+e.Path]++
			if e.Op == "lookup" && e.Path != "" && e.Path != "use" && !slices.Contains(files, e.Path) && !strings.HasPrefix(e.Path, "diff/") {
				files = append(files, e.Path)
			}
		}
		// diff1: the overlay driver checks whether a layer has a
		// second diff directory.
		if want := []string{"diff", "info", "blob", "diff1"}; !slices.Equal(files, want) {
			t.Errorf("layer %d: entries looked up %q, want %q", i, files, want)
		}
		for _, c := range []struct {
			ev   string
			want int
		}{
			{"open blob", 0},
			{"open info", 2}, // LookupAdditionalLayer, then PutAdditionalLayer
			{"use ", 2},      // LookupAdditionalLayer, then CreateAs
			{"release ", 1},  // the image destination's Close
		} {
			if got := counts[c.ev]; got != c.want {
				t.Errorf("layer %d: %q %d times after the run, want %d", i, c.ev, got, c.want)
			}
		}
	}

	from := f.store.Len()
	if err := p.Rmi(ctx, f.ref); err != nil {
		t.Fatal(err)
	}
	for i := range f.layers {
		ev := layerEvents(f.store.Events(from), f.rel(i))
		if !slices.Contains(ev, storeEvent{"release", ""}) || slices.ContainsFunc(ev, func(e storeEvent) bool { return e.Op == "use" }) {
			t.Errorf("layer %d: podman rmi: store saw %q, want a release and no use", i, ev)
		}
	}

	shadowed, err := p.Shadowed()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("podman wrote outside its configured directories (kept in the namespace's overlays): %q", shadowed)
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	hostAfter := snapshotHost(t)
	for k, v := range hostAfter {
		if hostBefore[k] != v {
			t.Errorf("host path %s changed: %q -> %q", k, hostBefore[k], v)
		}
	}
	for k := range hostBefore {
		if _, ok := hostAfter[k]; !ok {
			t.Errorf("host path %s disappeared", k)
		}
	}
}

// TestStoreUseWarnings runs from two stores that do not answer the use
// and release notifications with ENOENT: a plain directory (the use file
// is created, and removed again by podman; the rmdir fails with
// ENOTEMPTY) and a read-only mount (the kernel answers EROFS to both).
// podman runs from either, but warns on stderr for every notification:
// a store must be mounted read-write and answer ENOENT.
func TestStoreUseWarnings(t *testing.T) {
	requirePodman(t)
	im := smallImage(t)
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "podmantest/warn", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/podmantest/warn:1"
	for _, c := range []struct {
		name string
		// wants are substrings of podman's warnings.
		wants []string
		store func(t *testing.T, backing string) string
	}{
		{"plain directory", []string{
			"Unexpected error by Additional Layer Store <nil> during use; GC doesn't seem to be supported",
			"Unexpected error by Additional Layer Store directory not empty during release",
		}, func(t *testing.T, backing string) string { return backing }},
		{"read-only mount", []string{
			"Unexpected error by Additional Layer Store open " + "%s/use: read-only file system during use",
			"Unexpected error by Additional Layer Store read-only file system during release",
		}, func(t *testing.T, backing string) string { return mountFakeStoreRO(t, backing, true).mnt }},
	} {
		t.Run(c.name, func(t *testing.T) {
			backing := t.TempDir()
			layers, err := WriteImage(backing, ref, im)
			if err != nil {
				t.Fatal(err)
			}
			store := c.store(t, backing)
			p := startPodman(t, Options{Registries: []string{reg.host}, AdditionalLayerStore: store})
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			before := len(reg.front.Requests())
			res, err := p.Run(ctx, RunSpec{Image: ref, Command: smallCommand})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 0 || string(res.Stdout) != smallOutput {
				t.Fatalf("podman run = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, smallOutput)
			}
			for _, g := range reg.blobGETs(before) {
				if !strings.HasSuffix(g, im.ConfigDesc.Digest.String()) {
					t.Errorf("layer blob GET %s, want none", g)
				}
			}
			stderr := string(res.Stderr)
			t.Logf("podman's stderr:\n%s", stderr)
			for _, w := range c.wants {
				if strings.Contains(w, "%s") {
					w = fmt.Sprintf(w, filepath.Join(store, relTo(backing, layers[0].Dir)))
				}
				if !strings.Contains(stderr, w) {
					t.Errorf("podman's stderr has no %q", w)
				}
			}
			for _, l := range layers {
				if _, err := os.Lstat(filepath.Join(l.Dir, "use")); err == nil {
					t.Errorf("%s/use left behind", l.Dir)
				}
			}
		})
	}
}

// TestStoreRefNames pins down the reference string whose base64 names a
// store's image directory. The image is laid out under every candidate
// name; the layer lookups that reach a layer's diff say which one podman
// used: the reference as containers/image's docker transport normalizes
// it (registry, path, ":latest" when no tag was given, "@digest" alone
// when it carried a digest, tag or not), never with a "docker://" or "//"
// prefix.
func TestStoreRefNames(t *testing.T) {
	requirePodman(t)
	im := smallImage(t)
	reg := newRegistry(t)
	host, md := reg.host, im.ManifestDesc.Digest
	repo := host + "/podmantest/names"
	for _, tag := range []string{"1", "latest"} {
		if err := im.Push(t.Context(), host, "podmantest/names", tag); err != nil {
			t.Fatal(err)
		}
	}
	backing := t.TempDir()
	candidates := []string{
		repo + ":1", repo + ":latest", repo, repo + "@" + md.String(), repo + ":1@" + md.String(),
		"docker://" + repo + ":1", "//" + repo + ":1",
	}
	for _, name := range candidates {
		if _, err := WriteImage(backing, name, im); err != nil {
			t.Fatal(err)
		}
	}
	store := mountFakeStore(t, backing)
	p := startPodman(t, Options{Registries: []string{host}, AdditionalLayerStore: store.mnt})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for _, c := range []struct{ pull, want string }{
		{repo + ":1", repo + ":1"},
		{"docker://" + repo + ":1", repo + ":1"},
		{repo, repo + ":latest"},
		{repo + "@" + md.String(), repo + "@" + md.String()},
		{repo + ":1@" + md.String(), repo + "@" + md.String()},
	} {
		from := store.Len()
		before := len(reg.front.Requests())
		if _, err := p.Pull(ctx, c.pull); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range store.Events(from) {
			// <base64, possibly with '/'>/<layer digest>/diff
			i := strings.LastIndex(e.Path, "/sha256:")
			if e.Op != "lookup" || !strings.HasSuffix(e.Path, "/diff") || i < 0 {
				continue
			}
			b, err := base64.StdEncoding.DecodeString(e.Path[:i])
			if err != nil {
				t.Errorf("pull %s: store lookup %q: not base64: %v", c.pull, e.Path, err)
				continue
			}
			if !slices.Contains(names, string(b)) {
				names = append(names, string(b))
			}
		}
		if len(names) != 1 || names[0] != c.want {
			t.Errorf("pull %s: layers looked up under %q, want %q", c.pull, names, c.want)
		}
		var layerGETs []string
		for _, g := range reg.blobGETs(before) {
			if !strings.HasSuffix(g, im.ConfigDesc.Digest.String()) {
				layerGETs = append(layerGETs, g)
			}
		}
		if len(layerGETs) != 0 {
			t.Errorf("pull %s: layer blob GETs %q, want none", c.pull, layerGETs)
		}
		if _, err := p.Output(ctx, "rmi", "--all", "--force"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStoreENOENT hides layers from the store: a layer the store answers
// ENOENT for is pulled from the registry as usual and the others still
// come from the store; with the whole image hidden, everything is pulled.
func TestStoreENOENT(t *testing.T) {
	requirePodman(t)
	f := newStoreFixture(t, smallImage(t), "podmantest/enoent")
	p := startPodman(t, Options{Registries: []string{f.reg.host}, AdditionalLayerStore: f.store.mnt})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	layerGET := func(i int) string {
		return "/v2/podmantest/enoent/blobs/" + f.im.LayerDescs[i].Digest.String()
	}
	for _, c := range []struct {
		name   string
		hide   string
		wantGE []string
	}{
		{"top layer hidden", f.rel(1), []string{layerGET(1)}},
		{"image hidden", relTo(f.backing, RefDir(f.backing, f.ref)), []string{layerGET(0), layerGET(1)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.store.Hide(c.hide)
			before := len(f.reg.front.Requests())
			from := f.store.Len()
			res, err := p.Run(ctx, RunSpec{Image: f.ref, Command: smallCommand})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 0 || string(res.Stdout) != smallOutput {
				t.Fatalf("podman run = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, smallOutput)
			}
			got := f.layerBlobGETs(before)
			slices.Sort(got)
			if !slices.Equal(got, c.wantGE) {
				t.Errorf("layer blob GETs = %q, want %q", got, c.wantGE)
			}
			ev := layerEvents(f.store.Events(from), c.hide)
			if len(ev) == 0 || slices.ContainsFunc(ev, func(e storeEvent) bool { return e != storeEvent{"lookup", ""} }) {
				t.Errorf("events under the hidden %s = %q, want only lookups of it", c.hide, ev)
			}
			if _, err := p.Output(ctx, "rmi", "--all", "--force"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// runtimeAdded are the paths podman 4.3.1 creates in a container's root
// when it creates the container, whatever stores the image's layers (with
// netns "none": no etc/resolv.conf). Their mtimes, and those of the
// directories they are made in, are the container's time of creation.
var runtimeAdded = []string{"proc", "sys", "dev", "run/.containerenv", "etc/hosts", "etc/hostname", "etc/mtab"}

// storeVsPull lists, by path, what differs between a container's root
// from the fake store and one from podman's own pull of the same corner
// image: mtimes only, each a time of unpack or of creation:
//
//   - the root, etc, run and the runtime's mount points and files: the
//     container's time of creation (each container has its own);
//   - bin, gnu, hl, implied, implied/a, implied/a/b, opaque, private,
//     sameanc, sameopq, sameopq/sub: directories a layer writes into
//     without an entry for them (busybox into bin/, whiteouts, opaque
//     markers, implied parents), which the applier creates in that
//     layer's diff with the time of unpack (WriteImage's and podman's
//     unpacks happen at different times).
var storeVsPull = map[string]bool{
	".": true, "etc": true, "run": true, "proc": true, "sys": true,
	"etc/hosts": true, "etc/hostname": true, "etc/mtab": true, "run/.containerenv": true,
	"bin": true, "gnu": true, "hl": true, "implied": true, "implied/a": true, "implied/a/b": true,
	"opaque": true, "private": true, "sameanc": true, "sameopq": true, "sameopq/sub": true,
}

// TestStoreRootEqualsPull runs the corner image (whiteouts, opaque
// directories, hardlinks, devices, xattrs, long names) twice: once pulled
// by podman the ordinary way, once from the fake store (no layer blob
// fetched), and compares the two containers' roots: they may differ only
// in the mtimes storeVsPull lists, and each of those must differ (else the
// list is stale).
func TestStoreRootEqualsPull(t *testing.T) {
	requirePodman(t)
	f := newStoreFixture(t, cornerBusybox(t), "podmantest/corners")
	plain := startPodman(t, Options{Registries: []string{f.reg.host}})
	stored := startPodman(t, Options{Registries: []string{f.reg.host}, AdditionalLayerStore: f.store.mnt})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	sleep := RunSpec{Image: f.ref, Command: []string{critest.BusyboxPath, "sleep", "3600"}}

	id, err := plain.RunDetached(ctx, sleep)
	if err != nil {
		t.Fatal(err)
	}
	want, err := plain.ContainerRoot(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	before := len(f.reg.front.Requests())
	id2, err := stored.RunDetached(ctx, sleep)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.layerBlobGETs(before); len(got) != 0 {
		t.Errorf("run from the store: layer blob GETs = %q, want none", got)
	}
	got, err := stored.ContainerRoot(ctx, id2)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range runtimeAdded {
		if _, err := os.Lstat(filepath.Join(got, p)); err != nil {
			t.Errorf("runtime mount point %s not in the container root: %v", p, err)
		}
	}
	seen := map[string]bool{}
	for _, d := range fstest.CompareTrees(got, want, fstest.CompareOptions{}) {
		p, rest, _ := strings.Cut(d, ": ")
		if strings.HasPrefix(rest, "mtime ") && storeVsPull[p] {
			seen[p] = true
			t.Logf("store vs pull (a time of unpack or of creation): %s", d)
			continue
		}
		t.Errorf("store vs pull: %s", d)
	}
	for p := range storeVsPull {
		if !seen[p] {
			t.Errorf("store vs pull: %s: no mtime difference any more: update storeVsPull", p)
		}
	}
	m, err := fstest.Manifest(got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compared %d entries", len(m))
	if len(m) < 30 {
		t.Errorf("the container root has %d entries: not the corner image?", len(m))
	}
}

// TestPodmanKilled kills the podman of an attached podman run with
// SIGKILL while its container runs (conmon and the container survive
// it): the next podman run of the same image must still come from the
// store and print the right output, and the killed run's container must
// still be there for podman to remove.
func TestPodmanKilled(t *testing.T) {
	requirePodman(t)
	f := newStoreFixture(t, smallImage(t), "podmantest/killed")
	p := startPodman(t, Options{Registries: []string{f.reg.host}, AdditionalLayerStore: f.store.mnt})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	args := p.runArgs(RunSpec{Image: f.ref, Name: "killed", Command: []string{critest.BusyboxPath, "sh", "-c", "echo started; exec " + critest.BusyboxPath + " sleep 3600"}}, "--rm", "--quiet")
	cmd := p.Podman(ctx, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, len("started\n"))
	if _, err := out.Read(line); err != nil || string(line) != "started\n" {
		t.Fatalf("first output of the container = %q (%v), want %q", line, err, "started\n")
	}
	// nsenter exec()s podman: the command's process is podman itself.
	if got := comm(cmd.Process.Pid); got != "podman" {
		t.Fatalf("process %d is %q, want podman", cmd.Process.Pid, got)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	state, err := p.Output(ctx, "inspect", "--format", "{{.State.Status}}", "killed")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(state) != "running" {
		t.Errorf("container state after its podman run was killed = %q, want running", state)
	}
	before := len(f.reg.front.Requests())
	res, err := p.Run(ctx, RunSpec{Image: f.ref, Command: smallCommand})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || string(res.Stdout) != smallOutput {
		t.Fatalf("podman run after the kill = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, smallOutput)
	}
	if got := f.reg.blobGETs(before); len(got) != 0 {
		t.Errorf("blob GETs after the kill = %q, want none (the image is stored)", got)
	}
	if err := p.RemoveContainer(ctx, "killed"); err != nil {
		t.Fatal(err)
	}
	// A fresh podman with the same store must find everything too.
	fresh := startPodman(t, Options{Registries: []string{f.reg.host}, AdditionalLayerStore: f.store.mnt})
	before = len(f.reg.front.Requests())
	if res, err = fresh.Run(ctx, RunSpec{Image: f.ref, Command: smallCommand}); err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || string(res.Stdout) != smallOutput {
		t.Fatalf("fresh podman run = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, smallOutput)
	}
	if got := f.layerBlobGETs(before); len(got) != 0 {
		t.Errorf("fresh podman: layer blob GETs = %q, want none", got)
	}
}

// TestInfoFields removes or spoils one thing a layer's directory gives
// and runs podman: it pins down which info fields podman 4.3.1 needs
// (diff-digest only: without it podman panics; the others may go), that
// a layer without diff, info or blob is pulled normally, that blob is
// never read, and that a wrong diff-digest is taken as the DiffID
// unchecked (the layer is stored under a chain ID of that digest).
func TestInfoFields(t *testing.T) {
	requirePodman(t)
	im := smallImage(t)
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "podmantest/info", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/podmantest/info:1"
	type outcome struct {
		ok      bool // podman run printed the right output
		panics  bool // podman panicked
		fetched int  // layer blobs fetched
		// diffIDs: every layer podman stored records the config's DiffID.
		diffIDs bool
	}
	for _, c := range []struct {
		name  string
		spoil func(l Layer) error
		want  outcome
	}{
		{"complete", nil, outcome{ok: true, diffIDs: true}},
		{"no compressed-diff-digest", dropField("compressed-diff-digest"), outcome{ok: true, diffIDs: true}},
		{"no compressed-size", dropField("compressed-size"), outcome{ok: true, diffIDs: true}},
		{"no diff-digest", dropField("diff-digest"), outcome{panics: true}},
		{"no diff-size", dropField("diff-size"), outcome{ok: true, diffIDs: true}},
		{"no compression", dropField("compression"), outcome{ok: true, diffIDs: true}},
		{"info is {}", func(l Layer) error { return os.WriteFile(filepath.Join(l.Dir, "info"), []byte("{}"), 0o644) }, outcome{panics: true}},
		{"only diff-digest", func(l Layer) error { return WriteInfo(l.Dir, Info{UncompressedDigest: l.Info.UncompressedDigest}) }, outcome{ok: true, diffIDs: true}},
		{"wrong diff-digest", func(l Layer) error {
			info := l.Info
			info.UncompressedDigest = digest.FromString("not this layer: " + l.Info.UncompressedDigest.String())
			return WriteInfo(l.Dir, info)
		}, outcome{ok: true}},
		{"no info file", removeFile("info"), outcome{ok: true, fetched: 2, diffIDs: true}},
		{"no blob file", removeFile("blob"), outcome{ok: true, fetched: 2, diffIDs: true}},
		{"empty blob file", func(l Layer) error { return os.Truncate(filepath.Join(l.Dir, "blob"), 0) }, outcome{ok: true, diffIDs: true}},
		{"no diff dir", func(l Layer) error { return os.RemoveAll(filepath.Join(l.Dir, "diff")) }, outcome{ok: true, fetched: 2, diffIDs: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			backing := t.TempDir()
			layers, err := WriteImage(backing, ref, im)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range layers {
				if c.spoil != nil {
					if err := c.spoil(l); err != nil {
						t.Fatal(err)
					}
				}
			}
			store := mountFakeStore(t, backing)
			p := startPodman(t, Options{Registries: []string{reg.host}, AdditionalLayerStore: store.mnt})
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			before := len(reg.front.Requests())
			res, err := p.Run(ctx, RunSpec{Image: ref, Command: smallCommand})
			if err != nil {
				t.Fatal(err)
			}
			var got outcome
			got.ok = res.ExitCode == 0 && string(res.Stdout) == smallOutput
			got.panics = strings.HasPrefix(string(res.Stderr), "panic: ")
			for _, g := range reg.blobGETs(before) {
				if !strings.HasSuffix(g, im.ConfigDesc.Digest.String()) {
					got.fetched++
				}
			}
			stderr, _, _ := strings.Cut(strings.TrimSpace(string(res.Stderr)), "\n")
			t.Logf("exit %d after %v, stdout %q, stderr %q..., %d layer blobs fetched", res.ExitCode, res.Timings.Done.Sub(res.Timings.Start).Round(time.Millisecond), res.Stdout, stderr, got.fetched)
			if got.ok {
				stored, err := p.StoredLayers()
				if err != nil {
					t.Fatal(err)
				}
				var diffIDs []digest.Digest
				for _, l := range stored {
					diffIDs = append(diffIDs, l.UncompressedDigest)
				}
				t.Logf("podman stored layers with DiffIDs %v", diffIDs)
				got.diffIDs = slices.Equal(diffIDs, im.DiffIDs)
			}
			for _, l := range layers {
				if ev := layerEvents(store.Events(0), relTo(backing, l.Dir)); slices.Contains(ev, storeEvent{"open", "blob"}) {
					t.Errorf("layer %s: podman read blob", relTo(backing, l.Dir))
				}
			}
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// dropField removes one key from a layer's info file.
func dropField(key string) func(Layer) error {
	return func(l Layer) error {
		p := filepath.Join(l.Dir, "info")
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		if _, ok := m[key]; !ok {
			return fmt.Errorf("info %s has no %q", p, key)
		}
		delete(m, key)
		b, err = json.Marshal(m)
		if err != nil {
			return err
		}
		return os.WriteFile(p, b, 0o644)
	}
}

// removeFile removes one file of a layer's directory.
func removeFile(name string) func(Layer) error {
	return func(l Layer) error { return os.Remove(filepath.Join(l.Dir, name)) }
}
