package fetch

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The registry's response headers are outside bytes too: these targets
// cover the two fetch parses, Content-Range and Retry-After.

// FuzzCheckContentRange: checkContentRange accepts exactly the header
// that names the asked range (and the blob's size, or "*"), and any other
// text is an ErrFormat error, never a panic.
func FuzzCheckContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/1000", "bytes 0-99/*", "bytes 1-100/1000", "bytes 0-99/999",
		"bytes=0-99/1000", "bytes -/", "bytes 0-99", "bytes 00-099/01000", "bytes +0-99/1000", "bytes 9223372036854775807-0/1"} {
		f.Add(s, int64(0), int64(99), int64(1000))
	}
	f.Fuzz(func(t *testing.T, v string, first, last, size int64) {
		err := checkContentRange(v, first, last, size)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("checkContentRange(%q) error %v does not wrap ErrFormat", v, err)
			}
			return
		}
		// Accepted: the numbers it names must be the ones asked for.
		var a, b int64
		var total string
		if _, err := fmt.Sscanf(v, "bytes %d-%d/%s", &a, &b, &total); err != nil || a != first || b != last {
			t.Fatalf("checkContentRange(%q, %d, %d, %d) accepted a header naming %d-%d (%v)", v, first, last, size, a, b, err)
		}
	})
}

// FuzzRetryAfter: any Retry-After value gives a wait in [0, maxRetryAfter]
// or none, so a registry cannot park a read for longer than the cap.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "5", "-1", "99999999999999999999", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", ""} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := retryAfter(v, now)
		if !ok && d != 0 {
			t.Fatalf("retryAfter(%q) = %v, false", v, d)
		}
		if d < 0 || d > maxRetryAfter {
			t.Fatalf("retryAfter(%q) = %v, outside [0, %v]", v, d, maxRetryAfter)
		}
	})
}
