package fetch

import (
	"bytes"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestObserveRange: each range read is reported once, with its length and
// time when it went to the registry, as cached when the blob was cached.
func TestObserveRange(t *testing.T) {
	up := newTestRegistry(t, nil)
	mi := pushMirrorImage(t, up)
	var mu sync.Mutex
	var seen []RangeRead
	c, _ := testClient(t, Options{ObserveRange: func(r RangeRead) {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
	}})
	ctx := t.Context()
	im, err := c.Resolve(ctx, up.host+"/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	desc, data := mi.layers[0], mi.data[0]
	want := data[100:1100]
	got, err := im.FetchRange(ctx, desc, 100, 1000, digest.FromBytes(want))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("FetchRange = %d bytes, %v", len(got), err)
	}
	if err := c.Cache().Put(desc.Digest, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := im.FetchRange(ctx, desc, 100, 1000, digest.FromBytes(want)); err != nil {
		t.Fatal(err)
	}
	if n := c.Stats().BlobRequests[desc.Digest]; n != 1 {
		t.Errorf("Stats().BlobRequests[layer] = %d, want 1 (the range from the registry)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("observed %d range reads, want 2: %+v", len(seen), seen)
	}
	if r := seen[0]; r.Digest != desc.Digest || r.Bytes != 1000 || r.Cached || r.Duration <= 0 || r.Err != nil {
		t.Errorf("first read observed as %+v, want 1000 bytes of %s from the registry, with a duration", r, desc.Digest)
	}
	if r := seen[1]; r.Bytes != 1000 || !r.Cached || r.Duration != 0 || r.Err != nil {
		t.Errorf("second read observed as %+v, want 1000 cached bytes", r)
	}
}
