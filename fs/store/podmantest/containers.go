package podmantest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// pullFlags are the flags of every pull here: the loopback registries
// speak plain HTTP, and the instance's policy accepts unsigned images.
func (p *Podman) pullFlags() []string {
	return []string{"--tls-verify=false", "--signature-policy", p.PolicyPath}
}

// Pull pulls ref and returns the image's ID (its config digest's hex).
func (p *Podman) Pull(ctx context.Context, ref string) (string, error) {
	out, err := p.Output(ctx, append(append([]string{"pull", "--quiet"}, p.pullFlags()...), ref)...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// Rmi removes the images refs (references or IDs).
func (p *Podman) Rmi(ctx context.Context, refs ...string) error {
	_, err := p.Output(ctx, append([]string{"rmi"}, refs...)...)
	return err
}

// Image is what podman's image inspect says about one image.
type Image struct {
	ID     string `json:"Id"`
	RootFS struct {
		Layers []digest.Digest `json:"Layers"` // DiffIDs, bottom first
	} `json:"RootFS"`
}

// InspectImage inspects the image ref.
func (p *Podman) InspectImage(ctx context.Context, ref string) (*Image, error) {
	out, err := p.Output(ctx, "image", "inspect", ref)
	if err != nil {
		return nil, err
	}
	var ims []Image
	if err := json.Unmarshal([]byte(out), &ims); err != nil {
		return nil, fmt.Errorf("podman image inspect %s: %w", ref, err)
	}
	if len(ims) != 1 {
		return nil, fmt.Errorf("podman image inspect %s: %d images", ref, len(ims))
	}
	return &ims[0], nil
}

// RunSpec is a container to run.
type RunSpec struct {
	// Image is the reference to run; podman pulls it when missing.
	Image string
	// Command replaces the image's command (and, with Entrypoint set
	// to "", its entrypoint; the images here have none).
	Command []string
	// Name names the container; empty lets podman choose.
	Name string
	// Args are more flags for podman run, before the image.
	Args []string
}

// runArgs builds the podman run arguments for spec.
func (p *Podman) runArgs(spec RunSpec, extra ...string) []string {
	args := append([]string{"run"}, extra...)
	args = append(args, p.pullFlags()...)
	args = append(args, RunFlags...)
	args = append(args, "--cgroup-parent", p.CgroupParent)
	if spec.Name != "" {
		args = append(args, "--name", spec.Name)
	}
	args = append(args, spec.Args...)
	args = append(args, spec.Image)
	return append(args, spec.Command...)
}

// Timings are the moments of one [Podman.Run].
type Timings struct {
	// Start is when podman run was started.
	Start time.Time
	// FirstOutput is when the first byte of the container's stdout
	// arrived; zero if it printed nothing.
	FirstOutput time.Time
	// Done is when podman run had exited.
	Done time.Time
}

// ToFirstOutput is the time from podman run started to the container's
// first output: the pull (or the store's lookups), the container's
// creation and its program's start.
func (t Timings) ToFirstOutput() time.Duration {
	if t.FirstOutput.IsZero() {
		return 0
	}
	return t.FirstOutput.Sub(t.Start)
}

// Result is what [Podman.Run] saw.
type Result struct {
	// ExitCode is podman run's exit status: the container's, or 125-127
	// for podman's own failures.
	ExitCode int
	// Stdout is the container's stdout; Stderr its stderr together with
	// podman's own messages (--quiet keeps pull progress out).
	Stdout, Stderr []byte
	Timings        Timings
}

// Run runs spec with podman run --rm (attached, pulling when missing) and
// returns the exit code, the output and the timings. A non-zero exit is
// a Result, not an error; an error means podman could not be run or ctx
// ended.
func (p *Podman) Run(ctx context.Context, spec RunSpec) (*Result, error) {
	cmd := p.Podman(ctx, p.runArgs(spec, "--rm", "--quiet")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("podman run %s: %w", spec.Image, err)
	}
	r := &Result{}
	r.Timings.Start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("podman run %s: %w", spec.Image, err)
	}
	fw := &firstWrite{}
	_, copyErr := io.Copy(fw, stdout)
	err = cmd.Wait()
	r.Timings.Done = time.Now()
	r.Timings.FirstOutput = fw.first
	r.Stdout, r.Stderr = fw.buf.Bytes(), stderr.Bytes()
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr) && ctx.Err() == nil:
		r.ExitCode = exitErr.ExitCode()
	case err != nil:
		return nil, fmt.Errorf("podman run %s: %w: %s", spec.Image, err, stderr.String())
	case copyErr != nil:
		return nil, fmt.Errorf("podman run %s: read output: %w", spec.Image, copyErr)
	}
	return r, nil
}

// firstWrite keeps what is written to it and when the first byte came.
type firstWrite struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	first time.Time
}

func (w *firstWrite) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.first.IsZero() && len(b) > 0 {
		w.first = time.Now()
	}
	return w.buf.Write(b)
}

// RunDetached starts spec in the background (podman run -d) and returns
// the container's ID. Remove it with [Podman.RemoveContainer]; Stop
// removes any left.
func (p *Podman) RunDetached(ctx context.Context, spec RunSpec) (string, error) {
	out, err := p.Output(ctx, p.runArgs(spec, "--detach", "--quiet")...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// RemoveContainer removes the container id, killing it first.
func (p *Podman) RemoveContainer(ctx context.Context, id string) error {
	_, err := p.Output(ctx, "rm", "--force", "--time", "0", id)
	return err
}

// ContainerPID returns the host pid of the running container id's
// program.
func (p *Podman) ContainerPID(ctx context.Context, id string) (int, error) {
	out, err := p.Output(ctx, "inspect", "--format", "{{.State.Pid}}", id)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("container %s: no running process (podman says pid %q)", id, strings.TrimSpace(out))
	}
	return pid, nil
}

// ContainerRoot returns the root file system of the running container id
// as the host can read it: the overlay containers/storage mounted (its
// merged directory) through /proc/<holder>/root, since the mount lives in
// the instance's namespace. It is the image as the storage made it,
// without the mounts the runtime adds inside the container (/proc, /sys,
// /dev, /dev/shm, /run/.containerenv, /etc/hosts, /etc/hostname,
// /etc/resolv.conf) but with the mount points podman created for them.
func (p *Podman) ContainerRoot(ctx context.Context, id string) (string, error) {
	if _, err := p.ContainerPID(ctx, id); err != nil {
		return "", err
	}
	out, err := p.Output(ctx, "inspect", "--format", "{{.GraphDriver.Data.MergedDir}}", id)
	if err != nil {
		return "", err
	}
	merged := strings.TrimSpace(out)
	if !strings.HasPrefix(merged, p.Root+"/") {
		return "", fmt.Errorf("container %s: merged directory %q is not under the graph root %s", id, merged, p.Root)
	}
	return p.HostPath(merged), nil
}

// StoredLayer is containers/storage's record of one layer, as its
// layers.json keeps it.
type StoredLayer struct {
	ID                 string        `json:"id"`
	Parent             string        `json:"parent"`
	CompressedDigest   digest.Digest `json:"compressed-diff-digest"`
	UncompressedDigest digest.Digest `json:"diff-digest"`
}

// StoredLayers reads the overlay driver's layer records
// (<Root>/overlay-layers/layers.json). Read it while no podman runs.
func (p *Podman) StoredLayers() ([]StoredLayer, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, "overlay-layers", "layers.json"))
	if err != nil {
		return nil, fmt.Errorf("read podman's layer records: %w", err)
	}
	var out []StoredLayer
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("read podman's layer records: %w", err)
	}
	return out, nil
}
