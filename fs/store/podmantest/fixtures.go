package podmantest

import (
	"archive/tar"
	"path"
	"strings"

	"github.com/ocifs/ocifs/fs/fstest"
)

// DropUnpullable removes from one layer's entries what podman 4.3.1
// cannot pull (see the package doc): all but the last entry of each name
// (tar-split refuses duplicates), hardlinks to a path no earlier entry of
// the layer wrote (a lower layer's: ENOENT), and whiteouts of a path an
// earlier entry of the layer wrote or wrote below (EEXIST). It returns
// the entries kept and a line per entry left out.
func DropUnpullable(files []fstest.File) (kept []fstest.File, dropped []string) {
	clean := func(p string) string { return path.Clean("/" + p) }
	last := map[string]int{}
	for i, f := range files {
		last[clean(f.Header.Name)] = i
	}
	written := map[string]bool{}
	wroteAt := func(p string) bool {
		for w := range written {
			if w == p || strings.HasPrefix(w, p+"/") {
				return true
			}
		}
		return false
	}
	for i, f := range files {
		name := clean(f.Header.Name)
		dir, base := path.Split(name)
		if last[name] != i {
			dropped = append(dropped, f.Header.Name+" (the same name comes again in this layer)")
			continue
		}
		if target, ok := strings.CutPrefix(base, ".wh."); ok && target != ".wh..opq" && wroteAt(path.Join(dir, target)) {
			dropped = append(dropped, f.Header.Name+" (whites out its own layer's "+path.Join(dir, target)+")")
			continue
		}
		if f.Header.Typeflag == tar.TypeLink && !written[clean(f.Header.Linkname)] {
			dropped = append(dropped, f.Header.Name+" -> "+f.Header.Linkname+" (a hardlink to a lower layer)")
			continue
		}
		written[name] = true
		kept = append(kept, f)
	}
	return kept, dropped
}
