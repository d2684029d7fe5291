package fetch

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"
)

// listed is the bytes of every entry List reports.
func listed(t *testing.T, c *Cache) int64 {
	t.Helper()
	ents, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		n += e.Size
	}
	return n
}

// TestBoundAtWrite: with SetMaxBytes, every admission (blob, index, tree)
// makes room for itself, least recently used first, so what List reports
// never passes the bound; a pinned entry and one being written are never
// removed to make room; an entry used recently outlives older ones; an
// entry larger than what the pins leave is admitted once everything
// unpinned is gone; and the count agrees with the listing after a Trim.
func TestBoundAtWrite(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pre := putBlobs(t, c, 2, 1000) // before the bound: counted by its listing
	const max = 5000
	if err := c.SetMaxBytes(max); err != nil {
		t.Fatal(err)
	}
	if got := c.Bound(); got.Bytes != 2000 || got.Max != max {
		t.Fatalf("Bound() after SetMaxBytes = %+v, want 2000 bytes counted of %d", got, max)
	}
	pin, err := c.Pin("keep", []PinEntry{{Digest: pre[0]}})
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Release()
	w, err := c.Create(digest.FromString("being written"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if _, err := w.Write(bytes.Repeat([]byte("w"), 3000)); err != nil {
		t.Fatal(err)
	}

	var ds []digest.Digest
	for i := range 12 {
		b := bytes.Repeat([]byte{byte(100 + i)}, 1000)
		d := digest.FromBytes(b)
		if err := c.Put(d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
		if i > 0 {
			// Reading ds[0] each time keeps it the most recently used.
			f, err := c.Open(ds[0])
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		if n := listed(t, c); n > max {
			t.Fatalf("after blob %d: the cache lists %d bytes, bound %d", i, n, max)
		}
		if i%4 == 1 {
			if err := c.WriteIndex(d, bytes.Repeat([]byte("i"), 500)); err != nil {
				t.Fatal(err)
			}
			if n := listed(t, c); n > max {
				t.Fatalf("after index %d: the cache lists %d bytes, bound %d", i, n, max)
			}
		}
	}
	if !c.Has(pre[0]) {
		t.Errorf("the pinned blob was removed to make room")
	}
	if c.Has(pre[1]) || c.Has(ds[1]) {
		t.Errorf("blobs used longest ago are still cached: %v", has(c, pre[1], ds[1]))
	}
	if !c.Has(ds[0]) || !c.Has(ds[11]) {
		t.Errorf("the blob read recently or the newest is gone: %v", has(c, ds[0], ds[11]))
	}
	if _, err := os.Stat(w.Name()); err != nil {
		t.Errorf("the blob being written was removed to make room: %v", err)
	}
	if err := w.Commit(); err == nil {
		t.Errorf("commit of a blob whose bytes are not its digest's succeeded")
	}

	// A tree counts too.
	pt, err := c.CreateTree(digest.FromString("tree"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pack, err := pt.CreatePack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pack.Write(bytes.Repeat([]byte("t"), 2500)); err != nil {
		t.Fatal(err)
	}
	pack.Close()
	if err := pt.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := listed(t, c); n > max {
		t.Errorf("after a tree: the cache lists %d bytes, bound %d", n, max)
	}

	// Larger than the bound leaves besides the pin: admitted alone.
	big := bytes.Repeat([]byte("B"), 4500)
	if err := c.Put(digest.FromBytes(big), bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	if n, want := listed(t, c), int64(1000+4500); n != want {
		t.Errorf("after a blob of 4500 bytes: the cache lists %d bytes, want the pin and it (%d)", n, want)
	}
	st := c.Bound()
	if st.Evicted == 0 || st.Peak != 1000+4500 {
		t.Errorf("bound %+v: want evictions, and the peak the pin and the big blob", st)
	}
	if st.Bytes != listed(t, c) {
		t.Errorf("the bound counts %d bytes, the cache lists %d", st.Bytes, listed(t, c))
	}
	// A Trim recounts from its listing, seeing what another process did.
	other, err := OpenCache(c.Dir())
	if err != nil {
		t.Fatal(err)
	}
	ob := bytes.Repeat([]byte("o"), 700)
	if err := other.Put(digest.FromBytes(ob), bytes.NewReader(ob)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Trim(TrimOptions{MaxBytes: max}); err != nil {
		t.Fatal(err)
	}
	if st, n := c.Bound(), listed(t, c); st.Bytes != n || n > max {
		t.Errorf("after a trim: the bound counts %d bytes, the cache lists %d (bound %d)", st.Bytes, n, max)
	}
	if f, err := c.Open(digest.FromBytes(big)); err == nil {
		b, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(b, big) {
			t.Errorf("the big blob reads back wrong")
		}
	}
}

// TestBoundRecountDuringAdmissions: a listing (Trim's, SetMaxBytes's) made
// while entries are evicted and admitted neither counts again an entry
// removed after it began (a trim racing an admission counted 5.1 MB in a
// 3 MiB bound: the evicted blob and the one admitted in its place) nor
// loses one admitted after it began.
func TestBoundRecountDuringAdmissions(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetMaxBytes(3000); err != nil {
		t.Fatal(err)
	}
	putBlobs(t, c, 3, 1000)
	b := c.bound.Load()
	ep := b.beginListing()
	ents, err := c.List() // shows the three blobs
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // each evicts one of the listed blobs
		d := bytes.Repeat([]byte{byte(200 + i)}, 1000)
		if err := c.Put(digest.FromBytes(d), bytes.NewReader(d)); err != nil {
			t.Fatal(err)
		}
	}
	c.recount(b, ep, ents)
	if st, n := c.Bound(), listed(t, c); st.Bytes != n || st.Peak > 3000 {
		t.Errorf("after a recount from a listing older than two admissions: the bound counts %d bytes (peak %d), the cache lists %d", st.Bytes, st.Peak, n)
	}
}
