package fstest

import (
	"os"
	"os/exec"
	"path/filepath"
)

// UmociBinary is the reference unpacker (Debian package umoci, 0.4.7).
const UmociBinary = "umoci"

// inCI reports whether CI=true, where missing prerequisites fail tests
// instead of skipping them.
func inCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail skips the test with reason, or fails it when CI=true.
func skipOrFail(t TB, reason string) {
	t.Helper()
	if inCI() {
		t.Fatalf("%s (CI=true, so this is a failure)", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips the test unless it runs as root (fails it when CI=true).
func RequireRoot(t TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root")
	}
}

// RequireFUSE skips the test unless it runs as root and /dev/fuse opens
// (fails it when CI=true).
func RequireFUSE(t TB) {
	t.Helper()
	RequireRoot(t)
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		skipOrFail(t, "needs /dev/fuse: "+err.Error())
		return
	}
	f.Close()
}

// UmociUnpack unpacks tag of the OCI layout at layoutDir with
// `umoci raw unpack` into a fresh directory under t.TempDir() and returns
// it. It needs root and umoci (skipped without, failed when CI=true).
//
// umoci 0.4.7 cannot read zstd layers: compare a zstd image against the
// unpack of the same layers built with gzip (e.g. CornersWith(Gzip)).
func UmociUnpack(t TB, layoutDir, tag string) (rootfs string) {
	t.Helper()
	if _, err := exec.LookPath(UmociBinary); err != nil {
		skipOrFail(t, "umoci not installed (apt-get install umoci)")
	}
	RequireRoot(t)
	rootfs = filepath.Join(t.TempDir(), "rootfs")
	cmd := exec.CommandContext(t.Context(), UmociBinary, "raw", "unpack", "--image", layoutDir+":"+tag, rootfs)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("umoci raw unpack %s:%s: %v\n%s", layoutDir, tag, err, out)
	}
	return rootfs
}

// SkopeoBinary copies images between layouts and registries, recompressing
// them on the way (Debian package skopeo, 1.9.3).
const SkopeoBinary = "skopeo"

// SkopeoCopy runs `skopeo copy ARGS...` (skipped without skopeo, failed
// when CI=true), e.g. to write an image's layers as zstd:chunked the way
// containers/storage's compressor does.
func SkopeoCopy(t TB, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(SkopeoBinary); err != nil {
		skipOrFail(t, "skopeo not installed (apt-get install skopeo)")
	}
	cmd := exec.CommandContext(t.Context(), SkopeoBinary, append([]string{"copy", "--quiet"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy %v: %v\n%s", args, err, out)
	}
}
