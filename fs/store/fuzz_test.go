package store

import (
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzDecodeRef feeds decodeRef the names a kernel may pass (a path of
// base64 elements): it never panics, and what it returns is what the
// standard base64 of the name decodes to, never a name with a NUL or a
// newline.
func FuzzDecodeRef(f *testing.F) {
	for _, s := range []string{"", "MTI3LjAuMC4xOjUwMDAvYS9iOjE=", base64.StdEncoding.EncodeToString([]byte("127.0.0.1:5000/r@sha256:" + strings.Repeat("0", 64))), "ab/c+", "===="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b64 string) {
		ref := decodeRef(b64)
		if ref == "" {
			return
		}
		if strings.ContainsAny(ref, "\x00\n") {
			t.Fatalf("decodeRef(%q) = %q", b64, ref)
		}
		if base64.StdEncoding.EncodeToString([]byte(ref)) != b64 {
			t.Fatalf("decodeRef(%q) = %q, which does not encode back", b64, ref)
		}
	})
}
