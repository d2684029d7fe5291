package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// The network namespace the registry runs in, the veth pair that reaches
// it and the addresses on each end. Nothing else is ever contacted.
const (
	netnsName = "ocifsbench"
	vethHost  = "obench0"
	vethNS    = "obench1"
	hostAddr  = "10.231.0.1"
	nsAddr    = "10.231.0.2"
	regPort   = "5000"
)

// profile is one network setting: the veth is shaped with tbf (rate) and
// the proxy holds each direction for delay (RTT = 2*delay).
type profile struct {
	Name  string        `json:"name"`
	Rate  string        `json:"rate,omitempty"` // tc rate, "" = unshaped
	Delay time.Duration `json:"delay_per_direction_ns"`
	Note  string        `json:"note"`
}

var profiles = map[string]profile{
	"lan":   {Name: "lan", Note: "unshaped veth into the registry's namespace, no added delay"},
	"cloud": {Name: "cloud", Rate: "1gbit", Delay: 10 * time.Millisecond, Note: "tbf 1 Gbit/s on both veth ends, 20 ms RTT added by the proxy"},
	// slow is the link issues 14-16 measured the peers on.
	"slow": {Name: "slow", Rate: "100mbit", Delay: 5 * time.Millisecond, Note: "tbf 100 Mbit/s on both veth ends, 10 ms RTT added by the proxy"},
}

// network is the registry in its namespace and the proxy in front of it.
type network struct {
	dir      string
	registry *exec.Cmd
	exited   chan struct{}
	proxy    *proxy
}

// Host is where clients reach the registry: the proxy on loopback.
func (n *network) Host() string { return n.proxy.addr() }

// PushHost reaches the registry directly (for publishing images, unmeasured).
func (n *network) PushHost() string { return nsAddr + ":" + regPort }

func ipCmd(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// teardownNetns removes what a previous run may have left.
func teardownNetns() {
	exec.Command("ip", "netns", "pids", netnsName).Run()
	if out, err := exec.Command("ip", "netns", "pids", netnsName).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			exec.Command("kill", "-9", f).Run()
		}
	}
	exec.Command("ip", "link", "del", vethHost).Run()
	exec.Command("ip", "netns", "del", netnsName).Run()
}

// lockPath is held (flock) for the whole of a run: the namespace, veth and
// addresses are fixed, so two runs at once would tear down each other's.
const lockPath = "/run/ocifs-bench.lock"

// lockRun takes the run lock or fails at once.
func lockRun() (unlock func(), err error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another ocifs bench is running (%s is locked)", lockPath)
	}
	return func() { f.Close() }, nil
}

// startNetwork creates the namespace and veth pair, starts docker-registry
// inside with storage under storage (kept between runs), and the proxy.
func startNetwork(ctx context.Context, dir, storage string) (*network, error) {
	teardownNetns()
	steps := [][]string{
		{"ip", "netns", "add", netnsName},
		{"ip", "link", "add", vethHost, "type", "veth", "peer", "name", vethNS, "netns", netnsName},
		{"ip", "addr", "add", hostAddr + "/30", "dev", vethHost},
		{"ip", "link", "set", vethHost, "up"},
		{"ip", "netns", "exec", netnsName, "ip", "addr", "add", nsAddr + "/30", "dev", vethNS},
		{"ip", "netns", "exec", netnsName, "ip", "link", "set", vethNS, "up"},
		{"ip", "netns", "exec", netnsName, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			teardownNetns()
			return nil, fmt.Errorf("set up network namespace: %w", err)
		}
	}
	n := &network{dir: dir, exited: make(chan struct{})}
	if err := os.MkdirAll(storage, 0o755); err != nil {
		n.close()
		return nil, err
	}
	cfg := fstest.RegistryConfig(storage, nsAddr+":"+regPort)
	cfgPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		n.close()
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		n.close()
		return nil, err
	}
	defer logf.Close()
	n.registry = exec.Command("ip", "netns", "exec", netnsName, "/usr/bin/docker-registry", "serve", cfgPath)
	n.registry.Stdout, n.registry.Stderr = logf, logf
	if err := n.registry.Start(); err != nil {
		n.close()
		return nil, fmt.Errorf("start docker-registry: %w", err)
	}
	go func() { n.registry.Wait(); close(n.exited) }()
	if n.proxy, err = startProxy(n.PushHost()); err != nil {
		n.close()
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		n.close()
		return nil, fmt.Errorf("docker-registry in namespace %s (log %s): %w", netnsName, logf.Name(), err)
	}
	return n, nil
}

func (n *network) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + n.PushHost() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-n.exited:
			return errors.New("registry exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer on /v2/ in 30s: %v", err)
		}
	}
}

// shape applies a profile: tbf on both veth ends (or none) and the proxy delay.
func (n *network) shape(p profile) error {
	for _, prefix := range [][]string{{"tc", "qdisc"}, {"ip", "netns", "exec", netnsName, "tc", "qdisc"}} {
		dev := vethHost
		if len(prefix) > 2 {
			dev = vethNS
		}
		del := append(slices.Clone(prefix), "del", "dev", dev, "root")
		exec.Command(del[0], del[1:]...).Run()
		if p.Rate != "" {
			add := append(slices.Clone(prefix), "add", "dev", dev, "root", "tbf", "rate", p.Rate, "burst", "1mb", "latency", "50ms")
			if err := ipCmd(add...); err != nil {
				return fmt.Errorf("shape %s: %w", p.Name, err)
			}
		}
	}
	n.proxy.setDelay(p.Delay)
	return nil
}

func (n *network) close() {
	if n.proxy != nil {
		n.proxy.close()
	}
	if n.registry != nil && n.registry.Process != nil {
		n.registry.Process.Kill()
		<-n.exited
	}
	teardownNetns()
}
