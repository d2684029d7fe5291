package critest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestPauseCommand runs the pause image's entrypoint on the host: it must
// keep running until signalled and exit 0 on SIGTERM and SIGINT (its
// trap), taking its sleep with it, and die on SIGKILL.
func TestPauseCommand(t *testing.T) {
	if _, err := os.Stat(BusyboxBinary); err != nil {
		skipOrFail(t, "needs "+BusyboxBinary+" (apt-get install busybox-static)")
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			args := slices.Clone(PauseCommand)
			args[0] = BusyboxBinary
			cmd := exec.CommandContext(t.Context(), args[0], args[1:]...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group, to clean up the sleep
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
			// Once the sleep runs, the trap is set (it comes first in the
			// script): only then is the signal's effect defined. Until the
			// forked shell has exec'd busybox sleep, a signal to it would
			// be caught by the handler it inherited and lost at the exec
			// (in a container, the shell's exit as PID 1 ends it anyway).
			child, err := waitChild(cmd.Process.Pid, "sleep", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatalf("signal: %v (did the entrypoint exit on its own?)", err)
			}
			err = cmd.Wait()
			var exitErr *exec.ExitError
			switch {
			case sig == syscall.SIGKILL:
				if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Errorf("after SIGKILL: %v, want killed", err)
				}
			case err != nil:
				t.Errorf("after %v: %v, want exit status 0", sig, err)
			default:
				if err := waitGone([]int{child}, 10*time.Second); err != nil {
					t.Errorf("after %v: the sleep (pid %d) outlives the entrypoint: %v", sig, child, err)
				}
			}
		})
	}
}

// waitChild polls until pid has a child whose command line holds word
// and returns it.
func waitChild(pid int, word string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return 0, err
		}
		for _, f := range strings.Fields(string(b)) {
			cmdline, _ := os.ReadFile("/proc/" + f + "/cmdline")
			if slices.Contains(strings.Split(string(cmdline), "\x00"), word) {
				var child int
				fmt.Sscan(f, &child)
				return child, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("pid %d has no child running %q after %v", pid, word, timeout)
		}
		time.Sleep(time.Millisecond) // polling /proc: nothing to wait on
	}
}

func TestPauseImageConfig(t *testing.T) {
	if _, err := os.Stat(BusyboxBinary); err != nil {
		skipOrFail(t, "needs "+BusyboxBinary+" (apt-get install busybox-static)")
	}
	im, err := PauseImage()
	if err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Config.Entrypoint, PauseCommand) {
		t.Errorf("entrypoint = %q, want %q", cfg.Config.Entrypoint, PauseCommand)
	}
	var mf ocispec.Manifest
	if err := json.Unmarshal(im.Manifest, &mf); err != nil {
		t.Fatal(err)
	}
	if mf.Config.Digest != im.ConfigDesc.Digest || im.ConfigDesc.Size != int64(len(im.Config)) {
		t.Errorf("manifest config %v, image config %v (%d bytes): SetConfig left them apart", mf.Config.Digest, im.ConfigDesc.Digest, len(im.Config))
	}
	if got := im.ManifestDesc.Digest.String(); !strings.HasPrefix(got, "sha256:") || im.ManifestDesc.Size != int64(len(im.Manifest)) {
		t.Errorf("manifest descriptor %v does not describe the manifest", im.ManifestDesc)
	}
	r, _, err := im.Open(im.ConfigDesc.Digest)
	if err != nil {
		t.Fatalf("Open(config): %v", err)
	}
	r.Close()
}
