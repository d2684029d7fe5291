package index

import (
	"bytes"
	"testing"
)

// TestBuildLayerProgress: the snapshots Options.Progress receives grow
// monotonically, hold only entries whose content lies before their TarSize,
// serve every byte before TarSize exactly as the final table does (spans,
// windows and digests included), and end in the final table's spans.
func TestBuildLayerProgress(t *testing.T) {
	raw := manySmallFiles(t, 3<<20)
	cases := []struct {
		name      string
		blob      []byte
		mediaType string
	}{
		{"gzip", gzipMember(t, raw, 6, false, 0), mtGzip},
		{"gzip multi-member", gzipSplit(t, raw, []int{len(raw) / 3, len(raw) / 2}, 1, true, 0), mtGzip},
		{"plain tar", raw, mtTar},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var snaps []*Table
			opts := Options{SpanSize: 64 << 10, Progress: func(s *Table) { snaps = append(snaps, s) }}
			final, err := BuildLayer(bytes.NewReader(c.blob), c.mediaType, opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(snaps) < 10 {
				t.Fatalf("%d snapshots for %d spans; want one per span", len(snaps), len(final.Spans))
			}
			var prev *Table
			for k, s := range snaps {
				if prev != nil && (s.TarSize < prev.TarSize || len(s.Spans) < len(prev.Spans) || len(s.Entries) < len(prev.Entries)) {
					t.Fatalf("snapshot %d shrank: tar %d spans %d entries %d after %d/%d/%d",
						k, s.TarSize, len(s.Spans), len(s.Entries), prev.TarSize, len(prev.Spans), len(prev.Entries))
				}
				if len(s.Spans) == 0 || s.TarSize != final.SpanEnd(len(s.Spans)-1) {
					t.Fatalf("snapshot %d: TarSize %d with %d spans; want the end of its last span", k, s.TarSize, len(s.Spans))
				}
				for i, sp := range s.Spans {
					if sp != final.Spans[i] {
						t.Fatalf("snapshot %d span %d = %+v, final %+v", k, i, sp, final.Spans[i])
					}
				}
				if !equalEntries(s.Entries, final.Entries[:len(s.Entries)]) {
					t.Fatalf("snapshot %d: entries are not a prefix of the final table's", k)
				}
				for _, e := range s.Entries {
					if e.Type == TypeReg && e.Offset+e.Size > s.TarSize {
						t.Fatalf("snapshot %d (TarSize %d) holds %s ending at %d", k, s.TarSize, e.Name, e.Offset+e.Size)
					}
				}
				if s.Digest != "" || s.DiffID != "" {
					t.Fatalf("snapshot %d claims digests %s / %s before anything was verified", k, s.Digest, s.DiffID)
				}
				prev = s
			}
			// Every span the last snapshot holds decodes, through the
			// snapshot's own windows, to the raw stream.
			last := snaps[len(snaps)-1]
			if got := readThroughIndex(t, last, c.blob, 0, last.TarSize); !bytes.Equal(got, raw[:last.TarSize]) {
				t.Fatalf("the last snapshot's %d bytes differ from the stream", last.TarSize)
			}
		})
	}
}
