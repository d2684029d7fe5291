package fetch

import (
	"container/list"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// A bound held at write time (SetMaxBytes). Trim alone keeps a cache under
// a size only between its runs: a mount streaming a layer of 2.5 MiB after
// another peaked at 7.7 MB in a cache trimmed to 3 MiB every 100 ms. With a
// bound, every entry this Cache admits (a blob's Commit, WriteIndex, a
// tree's Commit) first makes room for itself: the least recently used
// entries that no live Pin names are removed until the entries already
// committed and the new one fit. So, as this Cache counts them:
//
//   - the committed entries (what List reports: blobs, indexes, trees)
//     total at most MaxBytes after every admission and at every moment
//     between them, unless the pinned entries and the one being admitted
//     alone exceed it: then every unpinned entry is gone and the new one is
//     admitted anyway (a mount cannot do without it), and the bound holds
//     again once pins are released and the next entry makes room;
//   - what is being written is not an entry yet: each write in flight
//     (one temp file or tree under tmp/, at most the size of the entry it
//     will be) is on disk besides, and is never removed to make room.
//
// The Cache counts what it admits and removes itself, starting from a
// listing made by SetMaxBytes and made again by every Trim: entries other
// processes add in between are seen at the next Trim (a daemon with
// --cache-max trims every few seconds), and removals by others only make
// the count high, which is the safe side.

// bound is a Cache's write-time bound and its count of the entries, least
// recently used first.
type bound struct {
	max int64

	// mu guards everything below. It is held while an entry is admitted
	// (the evictions it needs and its rename), so admissions are counted
	// one after another; nothing else is taken under it but the disk.
	mu      sync.Mutex
	size    int64 // bytes of the entries counted
	peak    int64 // the highest size since SetMaxBytes
	evicted int64 // entries removed to make room
	lru     *list.List
	byKey   map[PinEntry]*list.Element
	epoch   uint64 // bumped when a listing starts; entries admitted after it carry the new value
	// gone holds the entries removed since the oldest listing under way
	// began, with the epoch then: a listing may still show them.
	gone map[PinEntry]uint64
}

type boundEntry struct {
	key   PinEntry // Kind and Digest
	size  int64
	epoch uint64
}

// BoundStats is what a Cache's write-time bound counts.
type BoundStats struct {
	Max     int64 // the bound; 0 when the Cache has none
	Bytes   int64 // the committed entries as the Cache counts them
	Peak    int64 // the highest Bytes since SetMaxBytes
	Evicted int64 // entries removed to make room for new ones
}

// SetMaxBytes makes the cache hold max bytes of entries at write time (see
// above), counting from a listing it makes now. It removes nothing itself:
// Trim brings a cache that is over the bound back under it.
func (c *Cache) SetMaxBytes(max int64) error {
	if max <= 0 {
		return errors.New("cache: bound must be positive")
	}
	b := &bound{max: max, lru: list.New(), byKey: map[PinEntry]*list.Element{}, gone: map[PinEntry]uint64{}}
	ep := b.beginListing()
	// Counting before the listing: what is admitted while it runs is
	// counted as admitted, and kept by the recount.
	if !c.bound.CompareAndSwap(nil, b) {
		return errors.New("cache: a bound is set already")
	}
	ents, err := c.List()
	if err != nil {
		c.bound.Store(nil)
		return err
	}
	c.recount(b, ep, ents)
	return nil
}

// Bound returns what the write-time bound counts.
func (c *Cache) Bound() BoundStats {
	b := c.bound.Load()
	if b == nil {
		return BoundStats{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return BoundStats{Max: b.max, Bytes: b.size, Peak: b.peak, Evicted: b.evicted}
}

// beginListing marks the start of a listing the count will be rebuilt
// from: entries admitted from now on are kept by the rebuild.
func (b *bound) beginListing() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.epoch++
	return b.epoch
}

// recount rebuilds b's count from ents, listed after beginListing gave ep,
// least recently used first, keeping what was admitted since.
func (c *Cache) recount(b *bound, ep uint64, ents []CacheEntry) {
	type used struct {
		e CacheEntry
		t time.Time
	}
	us := make([]used, len(ents))
	for i, e := range ents {
		us[i] = used{e, c.lastUse(e)}
	}
	slices.SortFunc(us, func(a, b used) int {
		if x := a.t.Compare(b.t); x != 0 {
			return x
		}
		return strings.Compare(string(a.e.Digest), string(b.e.Digest))
	})
	b.mu.Lock()
	defer b.mu.Unlock()
	lru, byKey := list.New(), map[PinEntry]*list.Element{}
	var size int64
	for _, u := range us {
		k := PinEntry{u.e.Kind, u.e.Digest}
		if el, ok := b.byKey[k]; ok && el.Value.(*boundEntry).epoch >= ep {
			continue // admitted since the listing began: kept below, as it is now
		}
		if e, ok := b.gone[k]; ok && e >= ep {
			continue // removed since the listing began
		}
		byKey[k] = lru.PushBack(&boundEntry{key: k, size: u.e.Size})
		size += u.e.Size
	}
	for el := b.lru.Front(); el != nil; el = el.Next() {
		be := el.Value.(*boundEntry)
		if be.epoch >= ep {
			byKey[be.key] = lru.PushBack(be)
			size += be.size
		}
	}
	b.lru, b.byKey, b.size = lru, byKey, size
	b.peak = max(b.peak, size)
	for k, e := range b.gone {
		if e <= ep {
			delete(b.gone, k) // no later listing can show it (a concurrent one is newer)
		}
	}
}

// admit installs an entry of kind and digest d, size bytes, by calling
// install (the rename), after making room for it under the bound.
func (c *Cache) admit(kind string, d digest.Digest, size int64, install func() error) error {
	b := c.bound.Load()
	if b == nil {
		return install()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := PinEntry{kind, d}
	var old int64
	if el, ok := b.byKey[k]; ok {
		old = el.Value.(*boundEntry).size
	}
	if over := b.size - old + size - b.max; over > 0 {
		c.evict(b, over, k)
	}
	if err := install(); err != nil {
		return err
	}
	if el, ok := b.byKey[k]; ok {
		b.size -= el.Value.(*boundEntry).size
		b.lru.Remove(el)
	}
	b.byKey[k] = b.lru.PushBack(&boundEntry{key: k, size: size, epoch: b.epoch})
	b.size += size
	b.peak = max(b.peak, b.size)
	return nil
}

// evict removes least recently used entries that no live pin names, other
// than keep, until need bytes are freed or none is left. b.mu is held.
func (c *Cache) evict(b *bound, need int64, keep PinEntry) {
	pins, err := c.pinned()
	if err != nil {
		return // nothing is known to be free to remove
	}
	for el := b.lru.Front(); el != nil && need > 0; {
		next := el.Next()
		be := el.Value.(*boundEntry)
		if be.key != keep && !pins[PinEntry{"", be.key.Digest}] && !pins[be.key] {
			if err := c.remove(be.key.Kind, be.key.Digest); err == nil || errors.Is(err, ErrNotFound) {
				b.lru.Remove(el)
				delete(b.byKey, be.key)
				b.gone[be.key] = b.epoch
				b.size -= be.size
				need -= be.size
				b.evicted++
			}
		}
		el = next
	}
}

// used moves the entry to the most recently used end of the count.
func (b *bound) used(kind string, d digest.Digest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el, ok := b.byKey[PinEntry{kind, d}]; ok {
		b.lru.MoveToBack(el)
	}
}

// forget drops a removed entry from the count.
func (b *bound) forget(kind string, d digest.Digest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := PinEntry{kind, d}
	b.gone[k] = b.epoch
	if el, ok := b.byKey[k]; ok {
		b.size -= el.Value.(*boundEntry).size
		b.lru.Remove(el)
		delete(b.byKey, k)
	}
}

// treeBytes is what a tree directory's files take on disk, as List counts
// them.
func treeBytes(dir string) int64 {
	files, _ := os.ReadDir(dir)
	var n int64
	for _, f := range files {
		if fi, err := f.Info(); err == nil && fi.Mode().IsRegular() && !strings.HasPrefix(f.Name(), ".") {
			n += diskSize(fi)
		}
	}
	return n
}
