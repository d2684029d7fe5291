package fstest

import (
	"os"
	"time"
)

// ReadFileWithin reads path, failing the test if the read does not return
// within d: a read through a mount whose daemon hangs fails its test
// instead of the whole run.
func ReadFileWithin(tb TB, d time.Duration, path string) ([]byte, error) {
	tb.Helper()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := os.ReadFile(path)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-time.After(d):
		tb.Fatalf("read of %s still blocked after %v: the daemon hangs", path, d)
		return nil, nil
	}
}
