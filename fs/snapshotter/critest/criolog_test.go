package critest

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestDecodeLog(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		log                      string
		stdout, stderr, combined string
	}{
		{name: "empty", log: ""},
		{
			name:   "full lines of both streams",
			log:    "2016-10-06T00:17:09.669794202Z stdout F hello\n2016-10-06T00:17:09.669794203Z stderr F oops\n2016-10-06T00:17:10Z stdout F world\n",
			stdout: "hello\nworld\n", stderr: "oops\n", combined: "hello\noops\nworld\n",
		},
		{
			name:   "partial lines joined",
			log:    "2016-10-06T00:17:09.1Z stdout P abc\n2016-10-06T00:17:09.2Z stdout P def\n2016-10-06T00:17:09.3Z stdout F ghi\n",
			stdout: "abcdefghi\n", combined: "abcdefghi\n",
		},
		{
			name:   "empty line, with and without the space",
			log:    "2016-10-06T00:17:09Z stdout F \n2016-10-06T00:17:09Z stdout F\n",
			stdout: "\n\n", combined: "\n\n",
		},
		{
			name:   "content keeps its spaces after the one separator, a zone offset parses",
			log:    "2016-10-06T02:17:09.5+02:00 stderr F  two  spaces \n",
			stderr: " two  spaces \n", combined: " two  spaces \n",
		},
		{
			name:   "more tags after F",
			log:    "2016-10-06T00:17:09Z stdout F:x:y tagged\n",
			stdout: "tagged\n", combined: "tagged\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := DecodeLog([]byte(tc.log))
			if err != nil {
				t.Fatalf("DecodeLog: %v", err)
			}
			if string(out.Stdout) != tc.stdout || string(out.Stderr) != tc.stderr || string(out.Combined) != tc.combined {
				t.Errorf("DecodeLog = stdout %q stderr %q combined %q; want %q %q %q", out.Stdout, out.Stderr, out.Combined, tc.stdout, tc.stderr, tc.combined)
			}
		})
	}
}

func TestParseLogInvalid(t *testing.T) {
	for _, tc := range []struct{ name, log string }{
		{"no newline at the end", "2016-10-06T00:17:09Z stdout F cut"},
		{"bad time", "yesterday stdout F x\n"},
		{"bad stream", "2016-10-06T00:17:09Z stdin F x\n"},
		{"bad tag", "2016-10-06T00:17:09Z stdout X x\n"},
		{"no tags", "2016-10-06T00:17:09Z stdout\n"},
		{"only a time", "2016-10-06T00:17:09Z\n"},
		{"blank line", "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseLog([]byte(tc.log)); !errors.Is(err, ErrLogFormat) {
				t.Errorf("ParseLog(%q) error = %v, want ErrLogFormat", tc.log, err)
			}
		})
	}
}

// FuzzParseLog: no input panics, and what parses survives FormatLog and a
// second parse unchanged.
func FuzzParseLog(f *testing.F) {
	f.Add([]byte("2016-10-06T00:17:09.669794202Z stdout F hello\n"))
	f.Add([]byte("2016-10-06T00:17:09.1Z stdout P abc\n2016-10-06T00:17:09.3Z stderr F ghi\n"))
	f.Add([]byte("2016-10-06T02:17:09.5+02:00 stderr F:x  two \n2016-10-06T00:17:09Z stdout F\n"))
	f.Add(FormatLog([]LogEntry{{Time: time.Unix(1, 2), Stream: "stdout", Content: []byte("x y")}}))
	f.Add([]byte("2016-10-06T00:17:09Z stdin F x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseLog(b)
		if err != nil {
			if !errors.Is(err, ErrLogFormat) {
				t.Fatalf("ParseLog error %v does not wrap ErrLogFormat", err)
			}
			return
		}
		again, err := ParseLog(FormatLog(entries))
		if err != nil {
			t.Fatalf("ParseLog(FormatLog(entries)): %v", err)
		}
		if len(again) != len(entries) {
			t.Fatalf("round trip: %d entries, want %d", len(again), len(entries))
		}
		for i := range entries {
			a, e := again[i], entries[i]
			if !a.Time.Equal(e.Time) || a.Stream != e.Stream || a.Partial != e.Partial || !bytes.Equal(a.Content, e.Content) {
				t.Fatalf("round trip entry %d = %+v, want %+v", i, a, e)
			}
		}
	})
}
