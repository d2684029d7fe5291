package fstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// RegistryBinary is the Debian distribution registry (package docker-registry).
const RegistryBinary = "/usr/bin/docker-registry"

// registryStartTimeout bounds how long RunRegistry waits for /v2/ to answer.
const registryStartTimeout = 30 * time.Second

// StartRegistry starts a plain-HTTP docker-registry on a free loopback port
// with storage under t.TempDir() and returns its host:port. The process is
// killed and waited for in t.Cleanup; its log is printed when the test
// failed. Without the binary the test is skipped (failed when CI=true).
func StartRegistry(t TB) (host string) {
	t.Helper()
	host, _ = StartStoppableRegistry(t)
	return host
}

// StartStoppableRegistry is [StartRegistry] for a test that takes the
// registry away while mounts use it: stop kills it (its port then refuses
// connections); the cleanup stops it if the test did not.
func StartStoppableRegistry(t TB) (host string, stop func()) {
	t.Helper()
	if _, err := os.Stat(RegistryBinary); err != nil {
		skipOrFail(t, "docker-registry not installed (apt-get install docker-registry)")
	}
	dir := t.TempDir()
	host, kill, err := RunRegistry(t.Context(), dir)
	if err != nil {
		logFile(t, filepath.Join(dir, "registry.log"))
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() {
		if err := kill(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
		if t.Failed() {
			logFile(t, filepath.Join(dir, "registry.log"))
		}
	})
	return host, func() {
		t.Helper()
		if err := kill(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	}
}

func logFile(t TB, p string) {
	t.Helper()
	if b, err := os.ReadFile(p); err == nil {
		t.Logf("%s:\n%s", p, b)
	}
}

// RegistryConfig is a docker-registry configuration that stores blobs
// under storage, serves plain HTTP on addr (host:port), allows deletes and
// logs warnings only, without an access log.
func RegistryConfig(storage, addr string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, storage, addr)
}

// RunRegistry starts docker-registry with its config, storage and log
// (registry.log) in dir, waits until GET /v2/ answers 200 and returns its
// host:port and a stop function that kills the process and waits for it.
// ctx bounds only the start; the registry runs until stop is called. It is
// the variant of [StartRegistry] for `make demo` and the benchmark.
func RunRegistry(ctx context.Context, dir string) (host string, stop func() error, err error) {
	if _, err := exec.LookPath(RegistryBinary); err != nil {
		return "", nil, fmt.Errorf("start registry: %w (apt-get install docker-registry)", err)
	}
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return "", nil, fmt.Errorf("start registry: %w", err)
	}
	host, err = freeLoopbackAddr()
	if err != nil {
		return "", nil, fmt.Errorf("start registry: %w", err)
	}
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(RegistryConfig(storage, host)), 0o644); err != nil {
		return "", nil, fmt.Errorf("start registry: %w", err)
	}
	logOut, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return "", nil, fmt.Errorf("start registry: %w", err)
	}
	defer logOut.Close() // the child holds its own descriptor

	cmd := exec.Command(RegistryBinary, "serve", configPath)
	cmd.Stdout, cmd.Stderr = logOut, logOut
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start registry: %w", err)
	}
	exited := make(chan struct{})
	var waitErr error // written before exited is closed
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill registry: %w", err)
		}
		<-exited
		var exitErr *exec.ExitError
		if errors.As(waitErr, &exitErr) {
			return nil // killed, as asked
		}
		return waitErr
	}
	if err := waitReady(ctx, host, exited); err != nil {
		stop()
		return "", nil, fmt.Errorf("start registry on %s (log in %s): %w", host, logOut.Name(), err)
	}
	return host, stop, nil
}

// waitReady polls GET /v2/ with backoff until it answers 200, the process
// exits, ctx ends or registryStartTimeout passes.
func waitReady(ctx context.Context, host string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, registryStartTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	delay := 5 * time.Millisecond
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		timer := time.NewTimer(delay)
		select {
		case <-exited:
			timer.Stop()
			return errors.New("registry exited before answering")
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("wait for /v2/: %w (last: %v)", ctx.Err(), err)
		case <-timer.C:
		}
		delay = min(delay*2, 500*time.Millisecond)
	}
}

// freeLoopbackAddr asks the kernel for a free port on 127.0.0.1. The port is
// released before the registry binds it; a collision shows as the registry
// exiting early with "address already in use" in its log.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}
