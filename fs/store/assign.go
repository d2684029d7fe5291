package store

// The node ids of a store served raw (for a takeover): the store numbers
// its own nodes and slots in the order it first sees them, so the numbers
// are kept in a file, each written and fsynced before the kernel hears of
// it, for the next daemon to answer for the ids the kernel holds.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
)

// assignment is one line of the file: a node of slot 0 (ID, Path) or a
// layer's slot (Slot, Ref, Layer).
type assignment struct {
	ID    uint64 `json:"id,omitempty"`
	Path  string `json:"path,omitempty"`
	Slot  uint64 `json:"slot,omitempty"`
	Ref   string `json:"ref,omitempty"`
	Layer int    `json:"layer,omitempty"`
}

// slotKey is what a slot serves: layer Layer of reference Ref.
type slotKey struct {
	ref   string
	layer int
}

// assignments are the ids and slots given so far, in memory and in their
// file. It is safe for concurrent use.
type assignments struct {
	mu     sync.Mutex
	f      *os.File
	ids    map[string]uint64 // slot-0 path -> id; "" is the root, 1
	paths  map[uint64]string
	slots  map[slotKey]uint64
	keys   map[uint64]slotKey
	nextID uint64
	next   uint64 // the next slot
}

// maxAssignment bounds a line of the file.
const maxAssignment = 64 << 10

// openAssignments reads the file at path (created if missing) and keeps it
// open for the assignments to come. A last line cut short (a daemon killed
// while writing it: the kernel never heard of that id) is dropped; any
// other bad line is an error, as the ids the kernel holds would be unknown.
func openAssignments(path string) (*assignments, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("layer store ids: %w", err)
	}
	a := &assignments{f: f, ids: map[string]uint64{"": 1}, paths: map[uint64]string{1: ""},
		slots: map[slotKey]uint64{}, keys: map[uint64]slotKey{}, nextID: 2, next: 1}
	b, err := os.ReadFile(path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer store ids: %w", err)
	}
	good, err := a.parse(b)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer store ids %s: %w", path, err)
	}
	if good < int64(len(b)) {
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, fmt.Errorf("layer store ids: %w", err)
		}
	}
	if _, err := f.Seek(good, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("layer store ids: %w", err)
	}
	return a, nil
}

// parse adds the lines of b and returns how many bytes of it are whole
// lines.
func (a *assignments) parse(b []byte) (int64, error) {
	var good int64
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxAssignment)
	for sc.Scan() {
		line := sc.Bytes()
		end := good + int64(len(line)) + 1
		if end > int64(len(b)) {
			break // no newline: cut short
		}
		var as assignment
		if err := json.Unmarshal(line, &as); err != nil {
			return 0, fmt.Errorf("invalid input at byte %d: %w", good, err)
		}
		if err := a.add(as); err != nil {
			return 0, fmt.Errorf("invalid input at byte %d: %w", good, err)
		}
		good = end
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("invalid input after byte %d: %w", good, err)
	}
	return good, nil
}

// add records as, refusing one that gives a number or a name twice.
func (a *assignments) add(as assignment) error {
	switch {
	case as.ID != 0 && as.Slot == 0:
		if _, ok := a.paths[as.ID]; ok {
			return fmt.Errorf("id %d given twice", as.ID)
		}
		if _, ok := a.ids[as.Path]; ok || as.ID >= 1<<32 {
			return fmt.Errorf("path %q given twice, or id %d too large", as.Path, as.ID)
		}
		a.ids[as.Path], a.paths[as.ID] = as.ID, as.Path
		a.nextID = max(a.nextID, as.ID+1)
	case as.Slot != 0 && as.ID == 0 && as.Ref != "" && as.Layer >= 0:
		k := slotKey{as.Ref, as.Layer}
		if _, ok := a.keys[as.Slot]; ok {
			return fmt.Errorf("slot %d given twice", as.Slot)
		}
		if _, ok := a.slots[k]; ok || as.Slot >= 1<<32 {
			return fmt.Errorf("layer %d of %s given two slots, or slot %d too large", as.Layer, as.Ref, as.Slot)
		}
		a.slots[k], a.keys[as.Slot] = as.Slot, k
		a.next = max(a.next, as.Slot+1)
	default:
		return errors.New("neither an id nor a slot")
	}
	return nil
}

// write appends as to the file and syncs it, under a.mu.
func (a *assignments) write(as assignment) error {
	b, err := json.Marshal(as)
	if err != nil {
		return err
	}
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("layer store ids: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("layer store ids: %w", err)
	}
	return a.add(as)
}

// id returns the slot-0 id of path p, giving it the next one (written
// first) if it has none.
func (a *assignments) id(p string) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.ids[p]; ok {
		return id, nil
	}
	if a.nextID >= 1<<32 {
		return 0, errors.New("layer store ids: slot 0 is full")
	}
	as := assignment{ID: a.nextID, Path: p}
	if err := a.write(as); err != nil {
		return 0, err
	}
	return as.ID, nil
}

// path returns the slot-0 path of id.
func (a *assignments) path(id uint64) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.paths[id]
	return p, ok
}

// slot returns the slot of layer i of ref, giving it the next one (written
// first) if it has none.
func (a *assignments) slot(ref string, i int) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := slotKey{ref, i}
	if s, ok := a.slots[k]; ok {
		return s, nil
	}
	if a.next >= 1<<32 {
		return 0, errors.New("layer store ids: no slot left")
	}
	as := assignment{Slot: a.next, Ref: ref, Layer: i}
	if err := a.write(as); err != nil {
		return 0, err
	}
	return as.Slot, nil
}

// key returns what slot serves.
func (a *assignments) key(slot uint64) (slotKey, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k, ok := a.keys[slot]
	return k, ok
}

func (a *assignments) close() error { return a.f.Close() }
