package critest

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fs/fstest"
)

// BusyboxBinary is Debian's statically linked busybox (package
// busybox-static): one file that runs in any image.
const BusyboxBinary = "/bin/busybox"

// BusyboxPath is where [BusyboxLayer] puts busybox in an image.
const BusyboxPath = "/bin/busybox"

// PauseCommand is the pause image's entrypoint: a shell that sleeps in the
// background and waits, so SIGTERM (or SIGINT) runs its trap and it exits
// 0 at once, taking the sleep with it; SIGKILL ends it too. Without the
// trap a shell that is PID 1 of its namespace would ignore SIGTERM. The
// trap names the sleep by $!, which the shell sets as it forks, before any
// trap can run (a variable assigned after the & could still be empty).
var PauseCommand = []string{BusyboxPath, "sh", "-c",
	`trap 'kill $!; exit 0' TERM INT; ` + BusyboxPath + ` sleep 2147483647 & wait`}

// imageTime is the mtime of the entries made here, so the same input
// gives the same image bytes.
var imageTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// BusyboxLayer is a layer holding busybox at [BusyboxPath] (mode 0755,
// root's), read from [BusyboxBinary] when the image is built. It has no
// entry for bin/ itself, so that it leaves a lower layer's bin/ as it is;
// over an image without one, bin/ is an implied parent (see fs/fstest).
func BusyboxLayer(c fstest.Compression) (fstest.Layer, error) {
	if _, err := os.Stat(BusyboxBinary); err != nil {
		return fstest.Layer{}, fmt.Errorf("busybox layer: %w (apt-get install busybox-static)", err)
	}
	return fstest.Layer{
		Compression: c,
		Files: []fstest.File{{
			Header: tar.Header{Typeflag: tar.TypeReg, Name: BusyboxPath[1:], Mode: 0o755, ModTime: imageTime},
			Path:   BusyboxBinary,
		}},
	}, nil
}

// PauseImage builds the pod sandbox image: one gzip layer with bin/ and
// busybox, [PauseCommand] as its entrypoint.
func PauseImage() (*fstest.Image, error) {
	l, err := BusyboxLayer(fstest.Gzip)
	if err != nil {
		return nil, err
	}
	bin := fstest.File{Header: tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: imageTime}}
	l.Files = append([]fstest.File{bin}, l.Files...)
	im, err := fstest.Build([]fstest.Layer{l}, fstest.Options{})
	if err != nil {
		return nil, fmt.Errorf("build pause image: %w", err)
	}
	err = SetConfig(im, func(c *ocispec.ImageConfig) {
		c.Entrypoint = PauseCommand
		c.Cmd = nil
	})
	return im, err
}

// PushPauseImage builds [PauseImage], pushes it to the plain-HTTP
// registry at host as repo:tag and returns its reference, for
// [Options.SandboxImage].
func PushPauseImage(ctx context.Context, host, repo, tag string) (string, error) {
	im, err := PauseImage()
	if err != nil {
		return "", err
	}
	if err := im.Push(ctx, host, repo, tag); err != nil {
		return "", fmt.Errorf("push pause image: %w", err)
	}
	return host + "/" + repo + ":" + tag, nil
}

// SetConfig edits the runtime configuration (entrypoint, command,
// environment, ...) of a built image and rewrites its config and manifest
// blobs and descriptors to match; the layers stay as they are.
func SetConfig(im *fstest.Image, edit func(*ocispec.ImageConfig)) error {
	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		return fmt.Errorf("set image config: decode config: %w", err)
	}
	edit(&cfg.Config)
	b, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("set image config: %w", err)
	}
	im.Config = b
	im.ConfigDesc = ocispec.Descriptor{MediaType: im.ConfigDesc.MediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}

	var mf ocispec.Manifest
	if err := json.Unmarshal(im.Manifest, &mf); err != nil {
		return fmt.Errorf("set image config: decode manifest: %w", err)
	}
	mf.Config = im.ConfigDesc
	if b, err = json.Marshal(mf); err != nil {
		return fmt.Errorf("set image config: %w", err)
	}
	im.Manifest = b
	im.ManifestDesc = ocispec.Descriptor{MediaType: im.ManifestDesc.MediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	return nil
}
