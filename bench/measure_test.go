package bench

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The profile methods hand a start-up's argv to sh inside a script: each
// word must come back as it was.
func TestShellQuote(t *testing.T) {
	argv := []string{"/usr/bin/python3", "-c", "import json, sqlite3; print('it''s', \"$HOME\")", "", "a\\b"}
	out, err := exec.Command("/bin/sh", "-c", `printf '%s\0' `+shellQuote(argv)).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if !slices.Equal(got, argv) {
		t.Fatalf("sh read %q back, want %q", got, argv)
	}
}
