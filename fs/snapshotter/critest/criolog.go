package critest

import (
	"bytes"
	"errors"
	"fmt"
	"time"
)

// ErrLogFormat is wrapped by every error for bytes that are not in the CRI
// container log format.
var ErrLogFormat = errors.New("invalid input: not a CRI container log")

// LogEntry is one line of a CRI container log file:
//
//	2016-10-06T00:17:09.669794202Z stdout F the line's content
//
// (time, stream, tags, content; see the Kubernetes CRI container log
// design). The tag P marks a partial line, continued by the next entry of
// the same stream; F a full one, whose newline the runtime removed.
type LogEntry struct {
	Time time.Time
	// Stream is "stdout" or "stderr".
	Stream  string
	Partial bool
	Content []byte
}

// maxLogLine caps a log line; containerd splits lines at 16 KiB by default.
const maxLogLine = 1 << 20

// ParseLog parses a CRI container log. Every line must end in a newline;
// an incomplete last line (the runtime still writing it) is an error, so
// read the log after the container has exited.
func ParseLog(b []byte) ([]LogEntry, error) {
	var out []LogEntry
	for n := 1; len(b) > 0; n++ {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, fmt.Errorf("%w: line %d has no newline", ErrLogFormat, n)
		}
		line := b[:i]
		b = b[i+1:]
		if len(line) > maxLogLine {
			return nil, fmt.Errorf("%w: line %d is %d bytes, over %d", ErrLogFormat, n, len(line), maxLogLine)
		}
		e, err := parseLogLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrLogFormat, n, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func parseLogLine(line []byte) (LogEntry, error) {
	ts, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return LogEntry{}, errors.New("no stream after the time")
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return LogEntry{}, fmt.Errorf("time %q: %v", ts, err)
	}
	stream, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return LogEntry{}, errors.New("no tags after the stream")
	}
	if s := string(stream); s != "stdout" && s != "stderr" {
		return LogEntry{}, fmt.Errorf("stream %q: want stdout or stderr", stream)
	}
	// The content may be empty, and then the separating space may be
	// missing too.
	tags, content, _ := bytes.Cut(rest, []byte(" "))
	first, _, _ := bytes.Cut(tags, []byte(":"))
	var partial bool
	switch string(first) {
	case "P":
		partial = true
	case "F":
	default:
		return LogEntry{}, fmt.Errorf("tags %q: want P or F first", tags)
	}
	return LogEntry{Time: t, Stream: string(stream), Partial: partial, Content: bytes.Clone(content)}, nil
}

// FormatLog encodes entries in the CRI container log format, as containerd
// writes it (times in UTC with nanoseconds).
func FormatLog(entries []LogEntry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		tag := "F"
		if e.Partial {
			tag = "P"
		}
		b.WriteString(e.Time.UTC().Format(time.RFC3339Nano))
		b.WriteByte(' ')
		b.WriteString(e.Stream)
		b.WriteByte(' ')
		b.WriteString(tag)
		b.WriteByte(' ')
		b.Write(e.Content)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Output is a container's output put back together from its log.
type Output struct {
	Stdout, Stderr []byte
	// Combined is both streams in the order the runtime logged them.
	Combined []byte
}

// DecodeLog parses a CRI container log and joins each stream's lines
// back together: partial lines are concatenated and every full line gets
// its newline back. A last line the program left without a newline
// comes back with one (the format cannot tell).
func DecodeLog(b []byte) (Output, error) {
	entries, err := ParseLog(b)
	if err != nil {
		return Output{}, err
	}
	var out Output
	for _, e := range entries {
		s := &out.Stdout
		if e.Stream == "stderr" {
			s = &out.Stderr
		}
		*s = append(*s, e.Content...)
		out.Combined = append(out.Combined, e.Content...)
		if !e.Partial {
			*s = append(*s, '\n')
			out.Combined = append(out.Combined, '\n')
		}
	}
	return out, nil
}
