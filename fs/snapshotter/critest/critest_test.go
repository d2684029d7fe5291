package critest

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// cornerBusybox is the corner image of fs/fstest with busybox on top, so a
// container can run in it. With applicable, what containerd cannot unpack
// (see TestCRIRunCorners) is left out and logged: hardlinks whose target
// is in a lower layer, and whiteouts of a path their own layer wrote
// before them.
func cornerBusybox(t *testing.T, applicable bool) *fstest.Image {
	t.Helper()
	bb, err := BusyboxLayer(fstest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	layers := fstest.Corners()
	if applicable {
		for i := range layers {
			var dropped []string
			layers[i].Files, dropped = dropUnapplicable(layers[i].Files)
			for _, d := range dropped {
				t.Logf("corner layer %d: left out %s", i, d)
			}
		}
	}
	im, err := fstest.Build(append(layers, bb), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// dropUnapplicable removes the hardlinks whose target no earlier entry of
// the same layer names (containerd's applier writes into the new upper
// directory only: link(2) fails with ENOENT) and the whiteouts of a path
// an earlier entry of the same layer wrote, or wrote below (the applier
// makes the whiteout's device node where that entry is: EEXIST).
func dropUnapplicable(files []fstest.File) (kept []fstest.File, dropped []string) {
	clean := func(p string) string { return path.Clean("/" + p) }
	seen := map[string]bool{}
	written := func(p string) bool {
		for w := range seen {
			if w == p || strings.HasPrefix(w, p+"/") {
				return true
			}
		}
		return false
	}
	for _, f := range files {
		name := clean(f.Header.Name)
		dir, base := path.Split(name)
		if target, ok := strings.CutPrefix(base, ".wh."); ok && target != ".wh..opq" && written(path.Join(dir, target)) {
			dropped = append(dropped, f.Header.Name+" (whites out its own layer's "+path.Join(dir, target)+")")
			continue
		}
		if f.Header.Typeflag == tar.TypeLink && !seen[clean(f.Header.Linkname)] {
			dropped = append(dropped, f.Header.Name+" -> "+f.Header.Linkname+" (a hardlink to a lower layer)")
			continue
		}
		seen[name] = true
		kept = append(kept, f)
	}
	return kept, dropped
}

// overlayfsDiffers lists, by path, what differs between containerd's
// overlayfs unpack of the corner image (without what containerd cannot
// apply, see dropUnapplicable) and umoci's, as measured with containerd 1.6.20 and 2.4.2. None of it
// comes from the runtime; each is how containerd's applier or overlayfs
// work:
//
//   - mtime of bin, gnu, hl, opaque, sameopq: a later layer writes into
//     the directory without an entry for it (busybox into bin/, whiteouts
//     into gnu/ and hl/, opaque/new1 before opaque's marker, sameopq/y
//     before sameopq's), so the
//     applier creates it in the new upper and its mtime becomes the time
//     of unpack; umoci restores a parent's metadata after each entry.
//   - mode of both hardlink groups: the applier applies a hardlink
//     entry's own mode (0 in these headers) to the shared inode; umoci
//     ignores the link entry's metadata.
//   - nlink of hl/orig, hl/link1: overlayfs reports the lower inode's
//     link count, which still counts hl/link2 that layer 3 whites out.
var overlayfsDiffers = map[string][]string{
	"bin":                    {"mtime"},
	"gnu":                    {"mtime"},
	"hl":                     {"mtime"},
	"opaque":                 {"mtime"},
	"sameopq":                {"mtime"},
	"hl/orig":                {"mode", "nlink"},
	"hl/link1":               {"mode", "nlink"},
	fstest.CornerGNUName:     {"mode"},
	fstest.CornerGNULinkName: {"mode"},
}

// checkOverlayfsDiffs fails the test for every difference that is not in
// overlayfsDiffers and for every one listed there that did not show (then
// containerd changed, and the list must follow).
func checkOverlayfsDiffs(t *testing.T, diffs []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, d := range diffs {
		p, rest, _ := strings.Cut(d, ": ")
		kind, _, _ := strings.Cut(rest, " ")
		if !slices.Contains(overlayfsDiffers[p], kind) {
			t.Errorf("container root vs umoci: %s", d)
			continue
		}
		seen[p+" "+kind] = true
		t.Logf("container root vs umoci (a known containerd/overlayfs difference): %s", d)
	}
	for p, kinds := range overlayfsDiffers {
		for _, k := range kinds {
			if !seen[p+" "+k] {
				t.Errorf("container root vs umoci: %s: no %s difference any more: update overlayfsDiffers", p, k)
			}
		}
	}
}

// runtimeAdded are the paths the runtime adds to a container's root: the
// mount points of /proc, /sys and /dev (a tmpfs over the image's dev/)
// and the files bound from the pod over /etc/resolv.conf, /etc/hostname
// and /etc/hosts. They are the only paths the comparison with umoci's
// unpack ignores.
var runtimeAdded = []string{"proc", "sys", "dev", "etc/resolv.conf", "etc/hostname", "etc/hosts"}

// TestCRIRunCorners pulls the corner image (whiteouts, opaque
// directories, hardlinks, long names, devices, xattrs, ...) from the
// loopback registry through CRI into containerd's overlayfs snapshotter,
// runs a program in a pod and checks its exit code and output from the
// CRI log; then compares a running container's root with umoci's unpack
// of the same image.
//
// containerd cannot unpack the corner image as it is: its overlayfs
// applier writes each layer straight into the new upper directory, so a
// hardlink to a file of a lower layer (layer 1's upper-link) fails with
// ENOENT, in 1.6.20 and 2.4.2 alike (the image spec allows that: "extracting
// a layer with hardlink references to files outside of the layer may
// fail"). Nor can it apply a whiteout of a path the same layer wrote
// before it (layer 1's .wh.samewh after samewh/x: the whiteout's device
// node fails with EEXIST). The test checks the first failure, then runs
// on the corner image without those entries.
func TestCRIRunCorners(t *testing.T) {
	for _, b := range binaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			f := newFixture(t)
			full, im := cornerBusybox(t, false), cornerBusybox(t, true)
			if err := full.Push(t.Context(), f.host, "critest/corners-full", "1"); err != nil {
				t.Fatal(err)
			}
			if err := im.Push(t.Context(), f.host, "critest/corners", "1"); err != nil {
				t.Fatal(err)
			}
			c := startContainerd(t, b, f, Options{})
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			cl, err := c.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()

			_, err = cl.PullImage(ctx, f.host+"/critest/corners-full:1", nil)
			if err == nil || !strings.Contains(err.Error(), "failed to extract layer") || !strings.Contains(err.Error(), "upper-link") {
				t.Errorf("pull of the corner image with a cross-layer hardlink: err = %v, want containerd's \"failed to extract layer ... upper-link\"", err)
			} else {
				t.Logf("as expected, containerd %s cannot unpack a cross-layer hardlink: %v", c.Version, err)
			}

			ref := f.host + "/critest/corners:1"
			pod, err := cl.RunPod(ctx, "corners")
			if err != nil {
				t.Fatal(err)
			}
			// The program reads files that only the merged layers
			// give: layer 1's etc/passwd, layer 3's top.txt.
			res, err := cl.Run(ctx, pod, ContainerSpec{
				Name:    "print",
				Image:   ref,
				Command: []string{BusyboxPath, "sh", "-c", "cat /etc/passwd /top.txt; echo to-stderr >&2; exit 3"},
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("pull %v, total %v (pull start to exit seen with output)", res.Timings.Pull(), res.Timings.Total())
			if res.ExitCode != 3 {
				t.Errorf("exit code = %d, want 3", res.ExitCode)
			}
			if got, want := string(res.Output.Stdout), "root:x:0:0:root:/root:/bin/bash\ntop layer\n"; got != want {
				t.Errorf("stdout = %q, want %q", got, want)
			}
			if got, want := string(res.Output.Stderr), "to-stderr\n"; got != want {
				t.Errorf("stderr = %q, want %q", got, want)
			}

			// A container that sleeps: its root, as the snapshotter
			// mounted it, against umoci's unpack.
			id, err := cl.CreateContainer(ctx, pod, ContainerSpec{Name: "sleep", Image: ref, Command: []string{BusyboxPath, "sleep", "3600"}})
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.StartContainer(ctx, id); err != nil {
				t.Fatal(err)
			}
			root, err := cl.ContainerRoot(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(root, c.State+"/") {
				t.Errorf("container root %s is not under the state dir %s", root, c.State)
			}
			// The container sees the pod's /etc/hostname (the host's
			// name: host network); the root holds only its mount point.
			view, err := cl.ContainerView(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			host, err := os.Hostname()
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(view, "etc/hostname")); err != nil || strings.TrimSpace(string(b)) != host {
				t.Errorf("container's /etc/hostname = %q (%v), want %q", b, err, host)
			}
			if b, err := os.ReadFile(filepath.Join(root, "etc/hostname")); err != nil || len(b) != 0 {
				t.Errorf("etc/hostname in the container root = %q (%v), want the runtime's empty mount point", b, err)
			}
			// What the comparison ignores must be there: the runtime's
			// mount points, in the container root but not in the image.
			for _, p := range runtimeAdded {
				if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
					t.Errorf("runtime mount point %s not in the container root: %v", p, err)
				}
			}
			layout := filepath.Join(t.TempDir(), "layout")
			if err := im.WriteLayout(layout, "1"); err != nil {
				t.Fatal(err)
			}
			want := fstest.UmociUnpack(t, layout, "1")
			diffs := fstest.CompareTrees(root, want, fstest.CompareOptions{
				IgnorePaths: runtimeAdded,
				// etc and the root hold mount points the runtime
				// created (the root's mtime is umoci's time of
				// unpack anyway).
				IgnoreMtimePaths: append(fstest.CornerUnstableMtimes, "etc"),
			})
			checkOverlayfsDiffs(t, diffs)
			if err := cl.RemovePod(ctx, pod.ID); err != nil {
				t.Fatal(err)
			}
			if ok, err := IsMountPoint(root); err != nil || ok {
				t.Errorf("after RemovePod: %s still mounted (%v)", root, err)
			}
		})
	}
}

// TestCRIPullAuth pulls through a front that demands basic credentials:
// CRI's PullImage must fail without them and with a wrong password, and
// succeed with the right ones, which must reach the registry.
func TestCRIPullAuth(t *testing.T) {
	for _, b := range binaries() {
		t.Run(b.name, func(t *testing.T) {
			requireCRI(t, b)
			f := newFixture(t)
			front, err := fstest.NewFaults(f.host)
			if err != nil {
				t.Fatal(err)
			}
			const user, pass = "critest", "s3cret"
			front.RequireBasicAuth(user, pass)
			srv := httptest.NewServer(front)
			defer srv.Close()
			host := srv.Listener.Addr().String()
			c := startContainerd(t, b, f, Options{Registries: []string{f.host, host}})
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			cl, err := c.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ref := host + "/critest/pause:1"
			for _, auth := range []*Auth{nil, {Username: user, Password: "wrong"}} {
				if _, err := cl.PullImage(ctx, ref, auth); err == nil {
					t.Errorf("PullImage(%s, %+v) succeeded, want an authorization error", ref, auth)
				} else {
					t.Logf("PullImage with %+v: %v", auth, err)
				}
			}
			id, err := cl.PullImage(ctx, ref, &Auth{Username: user, Password: pass})
			if err != nil {
				t.Fatal(err)
			}
			images, err := cl.ListImages(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, im := range images {
				found = found || im.Id == id && slices.Contains(im.RepoTags, ref)
			}
			if !found {
				t.Errorf("ListImages has no %s with id %s: %v", ref, id, images)
			}
			want := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
			var authed int
			for _, r := range front.Requests() {
				if r.Auth == want {
					authed++
				}
			}
			if authed == 0 {
				t.Errorf("no request reached the registry with the credentials; requests: %+v", front.Requests())
			}
			if err := cl.RemoveImage(ctx, ref); err != nil {
				t.Fatal(err)
			}
			images, err = cl.ListImages(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, im := range images {
				if im.Id == id {
					t.Errorf("image %s still listed after RemoveImage: %v", id, im)
				}
			}
		})
	}
}
