package mountinfo

import (
	"fmt"
	"strings"
	"testing"
)

// escape escapes a path as the kernel writes it in mountinfo.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func TestParse(t *testing.T) {
	table := "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n" +
		"98 22 0:50 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:60 - fuse.ocifs ocifs rw,user_id=0,group_id=0\n" +
		"garbage line\n" +
		"99 98 0:51 /sub\\134dir /mnt/a\\040b rw - fuse.ocifs ocifs rw\n" +
		"100 98 0:52 / /mnt/no-superopts rw - tmpfs tmpfs\n"
	got := Parse([]byte(table))
	want := []Mount{
		{"0:21", "/", "/proc", "proc", "proc", []string{"rw"}},
		{"0:50", "/", "/mnt/a b", "fuse.ocifs", "ocifs", []string{"rw", "user_id=0", "group_id=0"}},
		{"0:51", `/sub\dir`, "/mnt/a b", "fuse.ocifs", "ocifs", []string{"rw"}},
		{"0:52", "/", "/mnt/no-superopts", "tmpfs", "tmpfs", nil},
	}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("Parse = %q, want %q", got, want)
	}
	if m, ok := Topmost(got, "/mnt/a b"); !ok || m.Dev != "0:51" {
		t.Errorf("Topmost(/mnt/a b) = %+v, %v; want the mount of 0:51, the later line", m, ok)
	}
	if m, ok := Topmost(got, "/mnt"); ok {
		t.Errorf("Topmost(/mnt) = %+v, want none", m)
	}
}

func TestUnescape(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`/plain`, `/plain`},
		{`/a\040b`, `/a b`},
		{`/u\054v`, `/u,v`},
		{`/w\134x`, `/w\x`},
		{`/not\999octal`, `/not\999octal`},
		{`/short\04`, `/short\04`},
		{`\`, `\`},
	} {
		if got := Unescape(tt.in); got != tt.want {
			t.Errorf("Unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestAt reads this process's real mount table: the root is always a mount,
// and a fresh directory under it is not.
func TestAt(t *testing.T) {
	if m, ok, err := At("/"); err != nil || !ok || m.FSType == "" {
		t.Errorf("At(/) = %+v, %v, %v; want the root mount", m, ok, err)
	}
	dir := t.TempDir()
	if m, ok, err := At(dir + "/none"); err != nil || ok {
		t.Errorf("At(%s/none) = %+v, %v, %v; want no mount", dir, m, ok, err)
	}
}

// FuzzParse checks that any mount table parses without panic, and that any
// mountpoint the kernel escapes comes back as it was.
func FuzzParse(f *testing.F) {
	f.Add([]byte("98 22 0:50 / /mnt/x rw - fuse.ocifs ocifs rw\n"), "/mnt/a b")
	f.Add([]byte("1 2 3 4 5 6 - \n- - -\n"), "/x\\y\tz\n")
	f.Add([]byte("\\\\\\0 \\777 \\"), "\\777")
	f.Add([]byte("1 2 3 4 /a\r 6 - t s\r\n"), "/a\r\f\v\u0085")
	f.Fuzz(func(t *testing.T, table []byte, mp string) {
		for _, m := range Parse(table) {
			// Escaped fields may hold a newline (\012); the raw ones cannot.
			if strings.Contains(m.Dev, "\n") || strings.Contains(m.FSType, "\n") {
				t.Errorf("a field spans lines: %+v", m)
			}
		}
		if mp == "" || strings.ContainsRune(mp, 0) {
			return
		}
		line := "98 22 0:50 / " + escape(mp) + " rw shared:1 - fuse.ocifs " + escape(mp) + "\n"
		got := Parse([]byte(line))
		if len(got) != 1 || got[0].Mountpoint != mp || got[0].FSType != "fuse.ocifs" || got[0].Source != mp || got[0].Dev != "0:50" {
			t.Errorf("Parse(%q) = %+v, want mountpoint %q", line, got, mp)
		}
	})
}
