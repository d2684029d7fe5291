package bench

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// mStargzStore is the lazy peer of the chroot workloads (issue 16's "≥ 2×
// faster than stargz-store's defaults on the same image"): stargz-store
// with its defaults and an empty root, its layers stacked with overlayfs
// as podman stacks an additional layer store's, the workload run on the
// result, like ocifs-lazy's on an ocifs mount. Measured on eStargz.
const mStargzStore = "stargz-store"

// stargzStore measures one workload on stargz-store's view of b. The store
// is started and mounted before the clock (a daemon a host keeps running,
// as containerd for the containerd method), then the page cache is
// dropped. From the clock: each layer's diff directory is looked up at
// <store>/<base64(ref)>/<digest>/diff, all at once (that lookup is where
// stargz-store resolves the layer: manifest, footer, TOC), the diffs are
// stacked by overlayfs under a local upper, and the workload runs there.
// Ready is the overlay mounted.
func (r *runner) stargzStore(ctx context.Context, s *sample, b *builtImage, spec imageSpec) error {
	dir, err := os.MkdirTemp(r.work, "sgz")
	if err != nil {
		return err
	}
	defer func() {
		unmountUnder(dir)
		os.RemoveAll(dir)
	}()
	store := filepath.Join(dir, "store")
	st, err := startDaemon([]string{filepath.Join(r.peers, "stargz-store"), "--root", filepath.Join(dir, "store-root"), store},
		filepath.Join(r.work, s.Method+".log"))
	if err != nil {
		return err
	}
	defer st.stop(syscall.SIGINT)
	if err := st.waitFor(ctx, "mount on "+store, time.Minute, func() bool { return isFUSEMount(store) }); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	_, cpu0 := procStats(st.cmd.Process.Pid)
	c0 := r.net.proxy.counters()
	t0 := time.Now()
	refDir := filepath.Join(store, base64.StdEncoding.EncodeToString([]byte(b.ref(r.net.Host()))))
	diffs := make([]string, len(b.Layers))
	errs := make([]error, len(b.Layers))
	var wg sync.WaitGroup
	for i, l := range b.Layers {
		diffs[i] = filepath.Join(refDir, l.Digest.String(), "diff")
		wg.Go(func() { _, errs[i] = os.Stat(diffs[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("stargz-store layer %s: %w (store log: %s)", b.Layers[i].Digest, err, st.tail(3))
		}
	}
	// overlayfs lists the top layer first, separated by colons: a
	// digest's colon would split it, so each diff is named by a symlink
	// (overlayfs follows it at mount)
	lower := make([]string, len(diffs))
	for i, d := range diffs {
		link := filepath.Join(dir, fmt.Sprintf("l%d", i))
		if err := os.Symlink(d, link); err != nil {
			return err
		}
		lower[len(diffs)-1-i] = link
	}
	upper, work, root := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	_, mcpu, _, err := r.run(ctx, "mount", "-t", "overlay", "overlay", "-o", opts, root)
	if err != nil {
		return err
	}
	defer r.unmount(root, "")
	s.ReadyS = time.Since(t0).Seconds()
	wcpu, werr := watchedWorkload(ctx, s.Workload, root, store, spec.Startup)
	s.DoneS = time.Since(t0).Seconds()
	c := r.net.proxy.counters().sub(c0)
	s.Bytes, s.Requests = c.BytesDown, c.Requests
	var cpu float64
	s.PeakRSSKB, cpu = procStats(st.cmd.Process.Pid)
	s.DaemonCPU = cpu - cpu0
	s.CPUS = mcpu + wcpu + s.DaemonCPU
	return werr
}
