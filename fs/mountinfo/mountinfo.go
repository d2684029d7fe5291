package mountinfo

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Mount is one line of a mountinfo table, the fields ocifs needs.
type Mount struct {
	Dev        string   // the device, "MAJOR:MINOR" (a FUSE mount's minor names its connection)
	Root       string   // the path within the file system that is mounted
	Mountpoint string   // where it is mounted, unescaped
	FSType     string   // "ext4", "overlay", "fuse.ocifs"
	Source     string   // the mount source, unescaped
	SuperOpts  []string // the super block options, split on ','; nil when the line has none
}

// Self is the mount table of the calling process's mount namespace.
const Self = "/proc/self/mountinfo"

// Read reads and parses the mount table at path ([Self], or
// /proc/PID/mountinfo for another process's namespace).
func Read(path string) ([]Mount, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return Parse(b), nil
}

// Parse parses a mount table in the format of proc(5); lines it cannot
// read are skipped.
func Parse(b []byte) []Mount {
	var out []Mount
	// Split on '\n' only: bufio.ScanLines would also drop a '\r' that ends
	// a line, and with it part of a path.
	for _, line := range strings.Split(string(b), "\n") {
		// "ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTS"
		fields := strings.Split(line, " ")
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			continue
		}
		m := Mount{
			Dev:        fields[2],
			Root:       Unescape(fields[3]),
			Mountpoint: Unescape(fields[4]),
			FSType:     fields[sep+1],
			Source:     Unescape(fields[sep+2]),
		}
		if sep+3 < len(fields) {
			m.SuperOpts = strings.Split(fields[sep+3], ",")
		}
		out = append(out, m)
	}
	return out
}

// Unescape undoes the kernel's octal escapes (\040 for a space) in a path
// or an option value (overlayfs's upperdir=/a\054b for "/a,b").
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Topmost returns the last mount in ms at mountpoint, the one a path lookup
// sees when several are stacked there.
func Topmost(ms []Mount, mountpoint string) (Mount, bool) {
	var found Mount
	ok := false
	for _, m := range ms {
		if m.Mountpoint == mountpoint {
			found, ok = m, true
		}
	}
	return found, ok
}

// At reports the topmost mount at dir (absolute) in the calling process's
// namespace. dir itself is not resolved, only its parent: the table holds
// resolved paths, and dir may be a dead FUSE mount that cannot be stat'ed.
func At(dir string) (Mount, bool, error) {
	ms, err := Read(Self)
	if err != nil {
		return Mount{}, false, err
	}
	want := dir
	if parent, err := filepath.EvalSymlinks(filepath.Dir(dir)); err == nil {
		want = filepath.Join(parent, filepath.Base(dir))
	}
	m, ok := Topmost(ms, want)
	return m, ok, nil
}
