package store

import (
	"os"
	"path/filepath"
	"testing"
)

// TestAssignments: ids and slots are given once, kept across a reopen of
// the file (the next daemon), a last line cut short is dropped (the kernel
// never heard of it), and a file that gives an id twice is refused.
func TestAssignments(t *testing.T) {
	path := filepath.Join(t.TempDir(), AssignmentsFile)
	a, err := openAssignments(path)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint64{}
	for _, p := range []string{"aGVs", "aGVs/bG8=", "aGVs/bG8=/sha256:abc"} {
		id, err := a.id(p)
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := a.id(p); again != id {
			t.Errorf("id of %q: %d, then %d", p, id, again)
		}
		ids[p] = id
	}
	s0, err := a.slot("r", 0)
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := a.slot("r", 1)
	if s0 == s1 || s0 == 0 {
		t.Errorf("slots %d and %d", s0, s1)
	}
	a.close()
	// A line cut short at the end.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":99,"pa`)
	f.Close()

	b, err := openAssignments(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer b.close()
	for p, id := range ids {
		if got, ok := b.ids[p]; !ok || got != id {
			t.Errorf("after reopen, id of %q = %d, want %d", p, got, id)
		}
		if got, ok := b.path(id); !ok || got != p {
			t.Errorf("after reopen, path of %d = %q, want %q", id, got, p)
		}
	}
	if k, ok := b.key(s1); !ok || k != (slotKey{"r", 1}) {
		t.Errorf("after reopen, slot %d serves %v", s1, k)
	}
	if _, ok := b.path(99); ok {
		t.Errorf("the id of a line cut short was kept")
	}
	next, err := b.id("new")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if next == id {
			t.Errorf("a new path got id %d, given before", id)
		}
	}

	bad := filepath.Join(t.TempDir(), AssignmentsFile)
	os.WriteFile(bad, []byte("{\"id\":2,\"path\":\"a\"}\n{\"id\":2,\"path\":\"b\"}\n"), 0o600)
	if _, err := openAssignments(bad); err == nil {
		t.Errorf("a file giving id 2 twice was accepted")
	}
}

// FuzzAssignments: whatever the file holds, reading it fails or gives
// every id one path and every slot one layer.
func FuzzAssignments(f *testing.F) {
	f.Add([]byte("{\"id\":2,\"path\":\"aGVs\"}\n{\"slot\":1,\"ref\":\"r\",\"layer\":0}\n"))
	f.Add([]byte("{\"id\":2,\"path\":\"a\"}\n{\"id\":3,\"path\":\"a\"}\n"))
	f.Add([]byte("{\"slot\":4294967296,\"ref\":\"r\"}\n"))
	f.Add([]byte("{\"id\":2,\"pa"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a := &assignments{ids: map[string]uint64{"": 1}, paths: map[uint64]string{1: ""},
			slots: map[slotKey]uint64{}, keys: map[uint64]slotKey{}, nextID: 2, next: 1}
		good, err := a.parse(b)
		if err != nil {
			return
		}
		if good > int64(len(b)) {
			t.Fatalf("%d good bytes of %d", good, len(b))
		}
		if len(a.ids) != len(a.paths) || len(a.slots) != len(a.keys) {
			t.Fatalf("%d ids for %d paths, %d slots for %d layers", len(a.paths), len(a.ids), len(a.keys), len(a.slots))
		}
		for id := range a.paths {
			if id >= a.nextID && id != 1 {
				t.Fatalf("id %d at or past the next, %d", id, a.nextID)
			}
		}
	})
}
