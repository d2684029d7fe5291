package critest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Client speaks CRI runtime v1 to one [Containerd]. Its methods wrap the
// calls a kubelet makes for one pod with plain containers; Runtime and
// Image are there for anything else.
type Client struct {
	Runtime runtimeapi.RuntimeServiceClient
	Image   runtimeapi.ImageServiceClient

	conn *grpc.ClientConn
	cd   *Containerd
}

// Dial connects to c's CRI socket. The connection is made lazily; the
// first call waits for it.
func (c *Containerd) Dial(ctx context.Context) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+c.Address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Large image lists and verbose statuses.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("dial CRI %s: %w", c.Address, err)
	}
	return &Client{
		Runtime: runtimeapi.NewRuntimeServiceClient(conn),
		Image:   runtimeapi.NewImageServiceClient(conn),
		conn:    conn,
		cd:      c,
	}, nil
}

// Close closes the connection.
func (cl *Client) Close() error { return cl.conn.Close() }

// Auth is the username and password CRI passes to the registry.
type Auth struct {
	Username, Password string
}

// PullImage pulls ref (with auth, when not nil) and returns the image's ID
// as CRI reports it (its config digest).
func (cl *Client) PullImage(ctx context.Context, ref string, auth *Auth) (string, error) {
	req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
	if auth != nil {
		req.Auth = &runtimeapi.AuthConfig{Username: auth.Username, Password: auth.Password}
	}
	resp, err := cl.Image.PullImage(ctx, req)
	if err != nil {
		return "", fmt.Errorf("CRI pull %s: %w", ref, err)
	}
	return resp.ImageRef, nil
}

// RemoveImage removes the image ref (a reference or an ID).
func (cl *Client) RemoveImage(ctx context.Context, ref string) error {
	if _, err := cl.Image.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		return fmt.Errorf("CRI remove image %s: %w", ref, err)
	}
	return nil
}

// ListImages lists the images CRI knows.
func (cl *Client) ListImages(ctx context.Context) ([]*runtimeapi.Image, error) {
	resp, err := cl.Image.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI list images: %w", err)
	}
	return resp.Images, nil
}

// Pod is a running pod sandbox.
type Pod struct {
	ID string
	// LogDir is the pod's log directory; each container logs to
	// LogDir/<container name>.log.
	LogDir string
	Config *runtimeapi.PodSandboxConfig
}

// hostNamespaces are the namespace options of every pod and container
// here: the host's network (no CNI needed), a pod-wide PID and IPC
// namespace.
func hostNamespaces() *runtimeapi.NamespaceOption {
	return &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_NODE,
		Pid:     runtimeapi.NamespaceMode_POD,
		Ipc:     runtimeapi.NamespaceMode_POD,
	}
}

// RunPod starts a pod sandbox named name on the host network, its log
// directory under the instance's directory and its cgroups under
// [Containerd.CgroupParent]. containerd pulls the sandbox image first if
// it does not have it.
func (cl *Client) RunPod(ctx context.Context, name string) (*Pod, error) {
	var uid [8]byte
	if _, err := rand.Read(uid[:]); err != nil {
		return nil, err
	}
	logDir := filepath.Join(cl.cd.dir, "pods", name+"-"+hex.EncodeToString(uid[:4]))
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("run pod %s: %w", name, err)
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name:      name,
			Uid:       hex.EncodeToString(uid[:]),
			Namespace: "critest",
		},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: cl.cd.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: hostNamespaces(),
			},
		},
	}
	resp, err := cl.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("run pod %s: %w", name, err)
	}
	return &Pod{ID: resp.PodSandboxId, LogDir: logDir, Config: cfg}, nil
}

// RemovePod stops the pod sandbox id (killing its containers) and removes
// it with its containers.
func (cl *Client) RemovePod(ctx context.Context, id string) error {
	if _, err := cl.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("stop pod %s: %w", id, err)
	}
	if _, err := cl.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("remove pod %s: %w", id, err)
	}
	return nil
}

// ContainerSpec is a container to run in a pod.
type ContainerSpec struct {
	// Name is unique in the pod; the log is <Pod.LogDir>/<Name>.log.
	Name string
	// Image is the image's reference or ID, already pulled.
	Image string
	// Command and Args replace the image's entrypoint and command.
	Command, Args []string
	// Env holds KEY=value pairs.
	Env        []string
	WorkingDir string
}

// CreateContainer creates a container in pod and returns its ID.
func (cl *Client) CreateContainer(ctx context.Context, pod *Pod, spec ContainerSpec) (string, error) {
	if spec.Name == "" || spec.Image == "" {
		return "", errors.New("create container: ContainerSpec needs a Name and an Image")
	}
	var envs []*runtimeapi.KeyValue
	for _, kv := range spec.Env {
		k, v, _ := strings.Cut(kv, "=")
		envs = append(envs, &runtimeapi.KeyValue{Key: k, Value: []byte(v)})
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: spec.Name},
		Image:      &runtimeapi.ImageSpec{Image: spec.Image},
		Command:    spec.Command,
		Args:       spec.Args,
		WorkingDir: spec.WorkingDir,
		Envs:       envs,
		LogPath:    spec.Name + ".log",
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: hostNamespaces()},
		},
	}
	resp, err := cl.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.ID, Config: cfg, SandboxConfig: pod.Config,
	})
	if err != nil {
		return "", fmt.Errorf("create container %s from %s: %w", spec.Name, spec.Image, err)
	}
	return resp.ContainerId, nil
}

// StartContainer starts the container id.
func (cl *Client) StartContainer(ctx context.Context, id string) error {
	if _, err := cl.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	return nil
}

// RemoveContainer removes the container id, killing it if it runs.
func (cl *Client) RemoveContainer(ctx context.Context, id string) error {
	if _, err := cl.Runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return nil
}

// ContainerStatus returns the container's status.
func (cl *Client) ContainerStatus(ctx context.Context, id string) (*runtimeapi.ContainerStatus, error) {
	resp, err := cl.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return nil, fmt.Errorf("container %s status: %w", id, err)
	}
	return resp.Status, nil
}

// WaitContainer waits until the container id has exited and returns its
// final status. CRI has no exit notification containerd 1.6 implements,
// so it polls ContainerStatus (every 2 ms at first, then up to every
// 20 ms); the exit time in the status is containerd's own.
func (cl *Client) WaitContainer(ctx context.Context, id string) (*runtimeapi.ContainerStatus, error) {
	delay := 2 * time.Millisecond
	for {
		st, err := cl.ContainerStatus(ctx, id)
		if err != nil {
			return nil, err
		}
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st, nil
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("wait for container %s (state %s): %w", id, st.State, ctx.Err())
		case <-timer.C:
		}
		delay = min(delay*2, 20*time.Millisecond)
	}
}

// ContainerLog reads and decodes the log of a container from its status
// (read it once the container has exited: see [ParseLog]).
func ContainerLog(st *runtimeapi.ContainerStatus) (Output, error) {
	if st.LogPath == "" {
		return Output{}, fmt.Errorf("container %s has no log path", st.Id)
	}
	b, err := os.ReadFile(st.LogPath)
	if err != nil {
		return Output{}, fmt.Errorf("container %s log: %w", st.Id, err)
	}
	out, err := DecodeLog(b)
	if err != nil {
		return Output{}, fmt.Errorf("container %s log %s: %w", st.Id, st.LogPath, err)
	}
	return out, nil
}

// ContainerPID returns the host PID of the container's init process, from
// the verbose status containerd gives ("info" JSON, field "pid").
func (cl *Client) ContainerPID(ctx context.Context, id string) (int, error) {
	resp, err := cl.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("container %s status: %w", id, err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(resp.Info["info"]), &info); err != nil {
		return 0, fmt.Errorf("container %s: verbose info: %w", id, err)
	}
	if info.Pid <= 0 {
		return 0, fmt.Errorf("container %s: no running process (state %s)", id, resp.Status.GetState())
	}
	return info.Pid, nil
}

// ContainerRoot returns the root file system of the running container id
// as a path on the host: the bundle's rootfs the shim mounted from the
// snapshotter's mounts, under containerd's state directory. It shows the
// image as the snapshotter made it, without the mounts the runtime adds
// inside the container (/proc, /dev, /sys, /dev/shm, and /etc/hosts,
// /etc/hostname, /etc/resolv.conf bound from the pod); the mount points
// the runtime created for them (proc/, sys/, dev/ and the three /etc
// files, changing their directories' mtimes) are in it, as on any
// overlay upper. /proc/<ContainerPID>/root is the container's own view,
// with those mounts.
func (cl *Client) ContainerRoot(ctx context.Context, id string) (string, error) {
	if _, err := cl.ContainerPID(ctx, id); err != nil {
		return "", err
	}
	p := filepath.Join(cl.cd.State, "io.containerd.runtime.v2.task", Namespace, id, "rootfs")
	ok, err := IsMountPoint(p)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("container %s: %s is not a mount point here (did the shim mount it in a namespace of its own?)", id, p)
	}
	return p, nil
}

// ContainerView returns /proc/<pid>/root of the running container id's
// init process: its root as the container sees it, with the runtime's
// mounts on it. Read single files through it; do not walk it whole (its
// proc/ and sys/ are the kernel's). [Client.ContainerRoot] is the tree to
// compare.
func (cl *Client) ContainerView(ctx context.Context, id string) (string, error) {
	pid, err := cl.ContainerPID(ctx, id)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("/proc/%d/root", pid), nil
}

// Timings are the moments of one [Client.Run], for the benchmark.
type Timings struct {
	// PullStart is when PullImage was sent; Pulled when it returned.
	PullStart, Pulled time.Time
	// Created and Started are when CreateContainer and StartContainer
	// returned.
	Created, Started time.Time
	// Exited is the exit time containerd recorded.
	Exited time.Time
	// Done is when the exit had been seen and the output read.
	Done time.Time
}

// Pull is how long PullImage took.
func (t Timings) Pull() time.Duration { return t.Pulled.Sub(t.PullStart) }

// Total is from PullImage sent to the program's exit seen with its output.
func (t Timings) Total() time.Duration { return t.Done.Sub(t.PullStart) }

// Result is what [Client.Run] saw.
type Result struct {
	ImageID     string
	ContainerID string
	ExitCode    int32
	Output      Output
	Timings     Timings
}

// Run pulls spec.Image (with auth, when not nil), runs it in pod to its
// exit and returns the exit code, the output from the log and the
// timings. The container is left in place (exited) for the caller to
// inspect or remove.
func (cl *Client) Run(ctx context.Context, pod *Pod, spec ContainerSpec, auth *Auth) (*Result, error) {
	var r Result
	r.Timings.PullStart = time.Now()
	id, err := cl.PullImage(ctx, spec.Image, auth)
	if err != nil {
		return nil, err
	}
	r.Timings.Pulled = time.Now()
	r.ImageID = id
	if r.ContainerID, err = cl.CreateContainer(ctx, pod, spec); err != nil {
		return nil, err
	}
	r.Timings.Created = time.Now()
	if err := cl.StartContainer(ctx, r.ContainerID); err != nil {
		return nil, err
	}
	r.Timings.Started = time.Now()
	st, err := cl.WaitContainer(ctx, r.ContainerID)
	if err != nil {
		return nil, err
	}
	if r.Output, err = ContainerLog(st); err != nil {
		return nil, err
	}
	r.Timings.Done = time.Now()
	r.Timings.Exited = time.Unix(0, st.FinishedAt)
	r.ExitCode = st.ExitCode
	return &r, nil
}
