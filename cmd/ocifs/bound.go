package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
)

// sizeValue is a pflag.Value for byte sizes: "500M", "10G", "1.5T",
// "10GiB", "4096" (powers of 1024).
type sizeValue int64

func (s *sizeValue) String() string {
	if *s == 0 {
		return ""
	}
	return humanBytes(int64(*s))
}

func (s *sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeValue(n)
	return nil
}

func (s *sizeValue) Type() string { return "SIZE" }

// parseSize reads a byte size: a number with an optional K, M, G or T
// (powers of 1024, optionally followed by "iB" or "B").
func parseSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i")
	mult := 1.0
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f*mult >= 1<<62 {
		return 0, fmt.Errorf("%q is not a size such as 500M, 10G or 1.5T", v)
	}
	return int64(f * mult), nil
}

// defaultTrimEvery is how often a daemon with --cache-max trims the cache.
const defaultTrimEvery = 10 * time.Second

// setCacheMax makes a daemon's cache hold --cache-max at write time (each
// entry it admits first removes the least recently used unpinned ones to
// make room: fetch.Cache.SetMaxBytes). Call it before the daemon fetches
// anything; boundCache then trims it, which also sees what other
// processes added.
func setCacheMax(cache *fetch.Cache, max int64) error {
	if err := cache.SetMaxBytes(max); err != nil {
		return fmt.Errorf("--cache-max: %w", err)
	}
	return nil
}

// holdCacheBound applies a daemon's --cache-max of max bytes (none when
// max is 0): held at each write (setCacheMax), and trimmed by boundCache
// every interval until the returned stop is called.
func holdCacheBound(log *slog.Logger, cache *fetch.Cache, max int64, every time.Duration) (stop func(), err error) {
	if max <= 0 {
		return func() {}, nil
	}
	if err := setCacheMax(cache, max); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { boundCache(ctx, log, cache, max, every) })
	return func() {
		cancel()
		wg.Wait()
	}, nil
}

// loadedImages is what a daemon serving many images (the snapshotter, the
// store) does with each image it loads: pin what it cannot do without in
// the cache, from its resolution (before its load fetches anything, which
// under --cache-max could otherwise evict them) until it is closed or the
// daemon stops, and count it in the metrics while it is served.
type loadedImages struct {
	e      *env
	mx     *daemonMetrics
	client *fetch.Client
	what   string // names the pins: "snapshotter", "store"

	// mu guards everything below.
	mu     sync.Mutex
	pins   map[*fs.Image]*fetch.Pin
	unmeta map[*fs.Image]func() // stop counting an image in the metrics
	n      int                  // pins made, for their names
}

// resolved is an OnResolve of fs/snapshotter and fs/store: it pins what
// the plan says the image needs (an image whose load fails keeps its pin
// until the daemon stops).
func (l *loadedImages) resolved(im *fs.Image) { l.pin(im) }

// loaded is an OnLoad of fs/snapshotter and fs/store: the image is counted,
// and pinned again with what its load settled on (a layer may stream
// where its plan said index).
func (l *loadedImages) loaded(im *fs.Image, took time.Duration) {
	remove := l.mx.add(l.client, im)
	l.mx.ready(took)
	l.pin(im)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unmeta == nil {
		l.unmeta = map[*fs.Image]func(){}
	}
	l.unmeta[im] = remove
}

// closing is an OnClose of fs/snapshotter: the image is no longer served.
func (l *loadedImages) closing(im *fs.Image) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if remove := l.unmeta[im]; remove != nil {
		remove()
		delete(l.unmeta, im)
	}
	if p := l.pins[im]; p != nil {
		p.Release()
		delete(l.pins, im)
	}
}

// pin pins im's entries, replacing its earlier pin.
func (l *loadedImages) pin(im *fs.Image) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	name := fmt.Sprintf("%s-%d-%d-%s", l.what, os.Getpid(), l.n, im.Fetched().ManifestDigest.Encoded()[:12])
	p, err := l.client.Cache().Pin(name, im.CacheEntries())
	if err != nil {
		l.e.log.Warn("pin an image's entries in the cache", "image", im.Ref(), "err", err)
		return
	}
	if old := l.pins[im]; old != nil {
		old.Release() // after the new one holds them
	}
	if l.pins == nil {
		l.pins = map[*fs.Image]*fetch.Pin{}
	}
	l.pins[im] = p
}

// release releases every pin.
func (l *loadedImages) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.pins {
		p.Release()
	}
	l.pins = nil
}

// boundCache keeps the cache under max bytes while ctx lives: it trims at
// once, then every interval and soon after entries were added, least
// recently used first, never what a live mount pins. It returns when ctx
// ends.
func boundCache(ctx context.Context, log *slog.Logger, cache *fetch.Cache, max int64, every time.Duration) {
	warned := false
	for {
		res, err := cache.Trim(fetch.TrimOptions{MaxBytes: max})
		if err != nil {
			log.Warn("cache trim", "err", err)
		}
		if res.Removed > 0 {
			log.Info("cache trimmed", "removed", res.Removed, "freed", res.Freed, "left", res.Left, "max", max)
		}
		if over := res.Left > max; over && !warned {
			log.Warn("the cache stays above --cache-max: live mounts pin more than that", "pinned", res.Pinned, "left", res.Left, "max", max)
			warned = true
		} else if !over {
			warned = false
		}
		// Trim again after every, or soon after the cache grew, but
		// not more often than soonest: a trim lists the whole cache.
		soonest := time.After(min(every, time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
			continue
		case <-cache.Added():
		}
		select {
		case <-ctx.Done():
			return
		case <-soonest:
		}
	}
}

// Mount logs: the daemon's log is rotated when it passes logMax bytes,
// keeping one previous file (.log.1); `cache prune` removes the logs of
// mounts no daemon serves.
const logMax = 8 << 20

// rotateLog renames path to path.1 when it is larger than max.
func rotateLog(path string, max int64) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() <= max {
		return false, nil
	}
	if err := os.Rename(path, path+".1"); err != nil {
		return false, err
	}
	return true, nil
}

// keepLogRotated rotates the daemon's own log, its stdout and stderr, while
// ctx lives: when the file passes logMax it becomes .log.1 and a new one is
// opened on fds 1 and 2.
func keepLogRotated(ctx context.Context, log *slog.Logger, path string) {
	rotateEvery(ctx, log, path, logRotation{every: time.Minute, max: logMax, fds: []int{1, 2}})
}

// logRotation is how a log is kept rotated: checked every, rotated past
// max bytes, the new file put on fds.
type logRotation struct {
	every time.Duration
	max   int64
	fds   []int
}

func rotateEvery(ctx context.Context, log *slog.Logger, path string, lr logRotation) {
	t := time.NewTicker(lr.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rotated, err := rotateLog(path, lr.max)
		if err != nil {
			log.Warn("rotate log", "path", path, "err", err)
			continue
		}
		if !rotated {
			continue
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			log.Warn("rotate log: reopen", "path", path, "err", err)
			continue
		}
		for _, fd := range lr.fds {
			_ = unix.Dup3(int(f.Fd()), fd, 0)
		}
		f.Close()
		log.Info("log rotated", "previous", path+".1")
	}
}

// daemonLogs returns the files live ocifs daemons write their logs to (their
// stdout and stderr), and those files' rotated names.
func daemonLogs() map[string]bool {
	out := map[string]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || !isDaemon(pid) {
			continue
		}
		for _, fd := range []string{"1", "2"} {
			if t, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd)); err == nil {
				out[strings.TrimSuffix(t, ".1")] = true // just rotated, not reopened yet
			}
		}
	}
	return out
}

// pruneLogs removes the logs (and rotated logs) of mounts that no live
// daemon serves and that were not written for age. It reports how many
// files it removed and their bytes. A log is live when its mount's state
// names a live daemon, or when a live daemon writes it (its stdout): the
// layer store's daemon keeps no mount state, and one that logged nothing
// for a day must not lose its log.
func pruneLogs(cacheDir string, age time.Duration, now time.Time) (n int, freed int64) {
	dir := filepath.Join(cacheDir, "mounts")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	written := daemonLogs()
	for _, e := range ents {
		name := e.Name()
		base, ok := strings.CutSuffix(name, ".log")
		if !ok {
			base, ok = strings.CutSuffix(name, ".log.1")
		}
		if !ok {
			continue
		}
		if st, err := readStateFile(filepath.Join(dir, base+".json")); err == nil && isDaemon(st.PID) {
			continue // a live mount's log
		}
		if written[filepath.Join(dir, base+".log")] {
			continue // a live daemon writes it
		}
		fi, err := e.Info()
		if err != nil || now.Sub(fi.ModTime()) < age {
			continue
		}
		if os.Remove(filepath.Join(dir, name)) == nil {
			n++
			freed += fi.Size()
		}
	}
	return n, freed
}
