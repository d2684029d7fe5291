package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ocifs/ocifs/fs/mountinfo"
)

func TestWritableParseOverlays(t *testing.T) {
	table := strings.Join([]string{
		`22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw`,
		`45 27 0:39 / /mnt/app rw,relatime - overlay ocifs rw,lowerdir=/c/m/x.lower,upperdir=/up,workdir=/up.work,redirect_dir=on`,
		`46 27 0:40 / /mnt/a\040b rw - overlay overlay rw,lowerdir=/l,upperdir=/u\054v,workdir=/w\134x`,
		`47 27 0:41 / /mnt/ro rw - overlay overlay ro,lowerdir=/l1:/l2`,
		`48 27 0:42 / /mnt/fuse rw - fuse.ocifs ocifs rw,upperdir=/nope`,
		`garbage line`,
		``,
	}, "\n")
	want := []overlayMount{
		{mountpoint: "/mnt/app", source: "ocifs", upper: "/up", work: "/up.work"},
		{mountpoint: "/mnt/a b", source: "overlay", upper: "/u,v", work: `/w\x`},
		{mountpoint: "/mnt/ro", source: "overlay"},
	}
	got := overlays(mountinfo.Parse([]byte(table)))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parseOverlays =\n%+v\nwant\n%+v", got, want)
	}
}

func FuzzParseOverlays(f *testing.F) {
	f.Add([]byte("45 27 0:39 / /mnt/app rw - overlay ocifs rw,lowerdir=/l,upperdir=/u\\054,workdir=/w\n"))
	f.Add([]byte("1 2 3 4 5 6 - overlay\n- - - - - - - overlay x y,z=\\1"))
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, om := range overlays(mountinfo.Parse(b)) {
			if strings.Contains(om.mountpoint, "\n") || strings.Contains(om.upper, "\n") {
				t.Errorf("a field spans lines: %+v", om)
			}
		}
	})
}

func TestWritableEscapeOverlayPath(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"/var/cache/ocifs/mounts/x.lower", "/var/cache/ocifs/mounts/x.lower"},
		{"/a,b:c\\d", `/a\,b\:c\\d`},
		{"", ""},
	} {
		if got := escapeOverlayPath(tt.in); got != tt.want {
			t.Errorf("escapeOverlayPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWritableDirs(t *testing.T) {
	tmp := t.TempDir()
	const name = "0123456789abcdef-app" // cmd/ocifs derives it from the mountpoint
	tests := []struct {
		name, dir, upper string
		want             UpperDirs
		wantErr          string
	}{
		{name: "default", dir: "/mnt/app", want: UpperDirs{
			Lower: "/c/mounts/" + name + ".lower", Upper: "/c/mounts/" + name + ".upper",
			Work: "/c/mounts/" + name + ".work", Ephemeral: true}},
		{name: "kept", dir: "/mnt/app", upper: tmp + "/up", want: UpperDirs{
			Lower: "/c/mounts/" + name + ".lower", Upper: tmp + "/up", Work: tmp + "/up.work"}},
		{name: "upper inside the mountpoint", dir: tmp, upper: tmp + "/up", wantErr: "overlap"},
		{name: "mountpoint inside the upper", dir: tmp + "/up/m", upper: tmp + "/up", wantErr: "overlap"},
		{name: "root", dir: "/mnt/app", upper: "/", wantErr: "root directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := WritableDirs("/c/mounts", name, tt.dir, tt.upper)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WritableDirs(%q, %q) error %v, want %q", tt.dir, tt.upper, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("WritableDirs(%q, %q) = %+v, %v; want %+v", tt.dir, tt.upper, got, err, tt.want)
			}
		})
	}
	for in, want := range map[string]string{"r.io/a/b:1@sha256:ab": "r.io/a/b", "localhost:5000/x": "localhost:5000/x", "oci:/p:v1": "oci:/p"} {
		if got := imageName(in); got != want {
			t.Errorf("imageName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWritableUpperRecordInvalid: a damaged upper record is bad input, not
// our failure, and says how to go on.
func TestWritableUpperRecordInvalid(t *testing.T) {
	work := t.TempDir()
	if err := os.WriteFile(work+"/"+upperRecordName, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec, err := readUpperRecord(work)
	var h interface{ Hint() string }
	if rec != nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "upper record "+work) ||
		!errors.As(err, &h) || !strings.Contains(h.Hint(), "remove it") {
		t.Fatalf("readUpperRecord(damaged) = %+v, %v; want an ErrFormat error naming the file, with a hint", rec, err)
	}
	if rec, err := readUpperRecord(t.TempDir()); rec != nil || err != nil {
		t.Errorf("readUpperRecord(none) = %+v, %v; want nothing and no error", rec, err)
	}
}
