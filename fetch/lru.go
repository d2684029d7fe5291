package fetch

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Bounding the cache: which entries were used last, which are pinned by a
// live process, and Trim, which removes the rest least recently used first.
//
//	used/<kind>/<alg>/<hex>  an empty file whose mtime is the entry's last use
//	pins/<name>.pin          what a live process uses, one digest per line
//	                         ("sha256:…" for every kind, "index sha256:…" for
//	                         one), flock'ed by that process for as long as it lives
//
// A use stamp is a file of its own, not the entry's atime or mtime: the
// blob's own times are part of the identity its verification stamp records
// (verify.go), and atime is not kept on noatime mounts. A pin is held by an
// exclusive flock on its file: the kernel drops the lock when the process
// dies however it dies, so a pin no process holds is stale and Trim removes
// it. Partially written entries live under tmp/ until their rename and are
// never listed, so Trim cannot remove one.
const (
	usedDir = "used"
	pinsDir = "pins"
	// touchEvery bounds how often one process renews an entry's use stamp.
	touchEvery = time.Minute
)

// touched remembers when this process last renewed each use stamp, so that
// a read loop does not write one per read. It is bounded: past
// maxTouched stamps it starts again (each then costs one more utimes), so an
// image of a hundred thousand chunks does not grow it without end.
var touched struct {
	mu sync.Mutex
	at map[string]time.Time // stamp path -> last renewal
}

const maxTouched = 4096

// touch records that the entry of kind with digest d was just used.
func (c *Cache) touch(kind string, d digest.Digest) {
	if b := c.bound.Load(); b != nil {
		b.used(kind, d)
	}
	p, err := c.path(filepath.Join(usedDir, kind), d)
	if err != nil {
		return
	}
	now := time.Now()
	touched.mu.Lock()
	if last, ok := touched.at[p]; ok && now.Sub(last) < touchEvery {
		touched.mu.Unlock()
		return
	}
	if touched.at == nil || len(touched.at) >= maxTouched {
		touched.at = make(map[string]time.Time)
	}
	touched.at[p] = now
	touched.mu.Unlock()
	if err := os.Chtimes(p, now, now); err == nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	if f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o600); err == nil {
		f.Close()
		_ = os.Chtimes(p, now, now)
	}
}

// Added returns a channel that receives after entries were added to the
// cache through c (one signal for any number of them), so that a daemon
// keeping the cache bounded can trim soon after it grew.
func (c *Cache) Added() <-chan struct{} { return c.added }

func (c *Cache) signalAdded() {
	if c.added == nil {
		return
	}
	select {
	case c.added <- struct{}{}:
	default:
	}
}

// lastUse is when the entry was last used: its use stamp's time, or the
// entry's own mtime (when it was written) if that is later or no stamp
// exists.
func (c *Cache) lastUse(e CacheEntry) time.Time {
	p, err := c.path(filepath.Join(usedDir, e.Kind), e.Digest)
	if err != nil {
		return e.ModTime
	}
	if fi, err := os.Stat(p); err == nil && fi.ModTime().After(e.ModTime) {
		return fi.ModTime()
	}
	return e.ModTime
}

// unuse removes the entry's use stamp.
func (c *Cache) unuse(kind string, d digest.Digest) {
	if p, err := c.path(filepath.Join(usedDir, kind), d); err == nil {
		os.Remove(p)
		touched.mu.Lock()
		delete(touched.at, p)
		touched.mu.Unlock()
	}
}

// Pin keeps entries out of Trim's reach while the process that made it
// lives, or until Release.
type Pin struct {
	c    *Cache
	path string
	// mu guards f.
	mu sync.Mutex
	f  *os.File
}

// PinEntry names what a Pin keeps: the entry of Kind with Digest, or with
// Kind "" every entry with that digest (the blob, the index keyed by that
// layer digest, the tree keyed by that DiffID).
type PinEntry struct {
	Kind   string
	Digest digest.Digest
}

// Pin records that this process uses entries. name tells the pin apart
// from the process's others (a mountpoint's hash, a snapshot key); a pin
// of the same name is replaced.
func (c *Cache) Pin(name string, entries []PinEntry) (*Pin, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name[0] == '.' {
		return nil, fmt.Errorf("cache: pin name %q: want a plain file name", name)
	}
	dir := filepath.Join(c.dir, pinsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: pin: %w", err)
	}
	var buf bytes.Buffer
	for _, e := range entries {
		if e.Digest.Validate() != nil {
			continue
		}
		switch e.Kind {
		case "":
		case KindBlob, KindIndex, KindTree:
			buf.WriteString(e.Kind + " ")
		default:
			return nil, fmt.Errorf("cache: pin %s: unknown kind %q", name, e.Kind)
		}
		buf.WriteString(e.Digest.String())
		buf.WriteByte('\n')
	}
	// Lock the file before it is visible under its name, so that Trim never
	// sees it unlocked and takes it for stale.
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+hex.EncodeToString(rnd[:])+".tmp")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: pin: %w", err)
	}
	fail := func(err error) (*Pin, error) {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cache: pin %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return fail(err)
	}
	p := &Pin{c: c, path: filepath.Join(dir, name+".pin"), f: f}
	if err := os.Rename(tmp, p.path); err != nil {
		return fail(err)
	}
	return p, nil
}

// Release removes the pin.
func (p *Pin) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return
	}
	os.Remove(p.path)
	p.f.Close()
	p.f = nil
}

// pinned returns the entries of every live pin, and removes stale pins.
func (c *Cache) pinned() (map[PinEntry]bool, error) {
	dir := filepath.Join(c.dir, pinsDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[PinEntry]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache: pins: %w", err)
	}
	out := map[PinEntry]bool{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pin") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue // released meanwhile
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
			// No process holds it: its owner died without releasing it.
			os.Remove(p)
			f.Close()
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			kind, d, ok := strings.Cut(sc.Text(), " ")
			if !ok {
				kind, d = "", kind
			}
			if dg := digest.Digest(d); dg.Validate() == nil {
				out[PinEntry{kind, dg}] = true
			}
		}
		f.Close()
	}
	return out, nil
}

// TrimOptions says what Trim removes.
type TrimOptions struct {
	// OlderThan removes every entry not used for this long (0: none by age).
	OlderThan time.Duration
	// MaxBytes then removes entries least recently used first until the
	// cache holds at most this many bytes (0: no bound).
	MaxBytes int64
	// Now is the time ages are measured from; zero means time.Now().
	Now time.Time
}

// TrimResult is what Trim did.
type TrimResult struct {
	Entries, Removed int   // entries listed, and removed
	Freed            int64 // bytes removed
	Left             int64 // bytes left in the cache
	Pinned           int64 // of those, bytes a live pin keeps
}

// Trim removes entries not used for opts.OlderThan, then the least recently
// used until the cache holds opts.MaxBytes, never an entry a live Pin names
// nor one still being written. An entry removed while a reader has it open
// stays readable through that open file. Left can stay above MaxBytes when
// pinned entries alone exceed it.
func (c *Cache) Trim(opts TrimOptions) (TrimResult, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	b := c.bound.Load()
	var ep uint64
	if b != nil {
		ep = b.beginListing()
	}
	ents, err := c.List()
	if err != nil {
		return TrimResult{}, err
	}
	pins, err := c.pinned()
	if err != nil {
		return TrimResult{}, err
	}
	type cand struct {
		e    CacheEntry
		used time.Time
	}
	var cands []cand
	res := TrimResult{Entries: len(ents)}
	for _, e := range ents {
		res.Left += e.Size
		if pins[PinEntry{"", e.Digest}] || pins[PinEntry{e.Kind, e.Digest}] {
			res.Pinned += e.Size
			continue
		}
		cands = append(cands, cand{e, c.lastUse(e)})
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if x := a.used.Compare(b.used); x != 0 {
			return x
		}
		return strings.Compare(string(a.e.Digest), string(b.e.Digest))
	})
	var errs []error
	removed := map[PinEntry]bool{}
	for _, cd := range cands {
		old := opts.OlderThan > 0 && now.Sub(cd.used) > opts.OlderThan
		over := opts.MaxBytes > 0 && res.Left > opts.MaxBytes
		if !old && !over {
			break // the rest were used later still, and the bound holds
		}
		if err := c.Remove(cd.e.Kind, cd.e.Digest); err != nil {
			if !errors.Is(err, ErrNotFound) {
				errs = append(errs, err)
			} else {
				res.Left -= cd.e.Size // another trim got there first
				removed[PinEntry{cd.e.Kind, cd.e.Digest}] = true
			}
			continue
		}
		res.Removed++
		res.Freed += cd.e.Size
		res.Left -= cd.e.Size
		removed[PinEntry{cd.e.Kind, cd.e.Digest}] = true
	}
	if b != nil {
		// The listing is the count from now on: it sees what other
		// processes added and removed since the last one.
		left := slices.DeleteFunc(ents, func(e CacheEntry) bool { return removed[PinEntry{e.Kind, e.Digest}] })
		c.recount(b, ep, left)
	}
	return res, errors.Join(errs...)
}
