package fetch

import (
	"bytes"
	"errors"
	"testing"
)

// TestCheckRange: one Range request hands check exactly the bytes asked
// for, check's error is returned, and a range outside the blob is refused
// before anything is sent.
func TestCheckRange(t *testing.T) {
	tr, im, desc, blob := partsImage(t, 1<<20, Options{})
	var got []byte
	err := im.CheckRange(t.Context(), desc, 1000, 5000, func(b []byte) error {
		got = append([]byte{}, b...)
		return nil
	})
	if err != nil || !bytes.Equal(got, blob[1000:6000]) {
		t.Fatalf("CheckRange: %d bytes (equal %v), err %v", len(got), bytes.Equal(got, blob[1000:6000]), err)
	}
	if r := blobRanges(tr, desc.Digest); len(r) != 1 {
		t.Errorf("ranges requested: %v, want one", r)
	}
	refuse := errors.New("refused by check")
	if err := im.CheckRange(t.Context(), desc, 0, 10, func([]byte) error { return refuse }); !errors.Is(err, refuse) {
		t.Errorf("CheckRange with a failing check: %v, want %v", err, refuse)
	}
	called := false
	if err := im.CheckRange(t.Context(), desc, desc.Size-5, 10, func([]byte) error { called = true; return nil }); err == nil || called {
		t.Errorf("CheckRange past the end: err %v, check called %v; want an error and no call", err, called)
	}
}
