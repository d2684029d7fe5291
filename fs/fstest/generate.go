package fstest

import (
	"archive/tar"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Random returns a random but valid image of about n entries spread over a
// few gzip layers, for fuzz and load tests. Later layers overwrite files,
// add hardlinks to lower files, white out existing files and directories
// and mark existing directories opaque. The same seed gives the same layers.
//
// Every whiteout or opaque marker names a path that exists in the merged
// lower layers and that the same layer does not otherwise touch, so the
// result does not depend on in-layer ordering rules.
func Random(seed int64, n int) []Layer {
	rng := rand.New(rand.NewSource(seed))
	nLayers := 1
	switch {
	case n >= 60:
		nLayers = 4
	case n >= 20:
		nLayers = 3
	case n >= 6:
		nLayers = 2
	}
	g := &randomGen{rng: rng, kinds: map[string]byte{}}
	layers := make([]Layer, nLayers)
	for i := range layers {
		count := n / nLayers
		if i == nLayers-1 {
			count = n - count*(nLayers-1)
		}
		layers[i] = Layer{Files: g.layer(i, count), Compression: Gzip}
	}
	return layers
}

// randomGen models the merged tree so far: path → 'd', 'f' or 'l'.
type randomGen struct {
	rng     *rand.Rand
	kinds   map[string]byte
	touched map[string]bool // paths this layer wrote
	names   int
}

func (g *randomGen) sorted(kind byte, lowerOnly bool) []string {
	var out []string
	for p, k := range g.kinds {
		if k == kind && (!lowerOnly || !g.touchedUnder(p)) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// touchedUnder reports whether this layer wrote p or anything below it.
func (g *randomGen) touchedUnder(p string) bool {
	for t := range g.touched {
		if t == p || strings.HasPrefix(t, p+"/") {
			return true
		}
	}
	return false
}

func (g *randomGen) removeUnder(p string, self bool) {
	for q := range g.kinds {
		if (self && q == p) || strings.HasPrefix(q, p+"/") {
			delete(g.kinds, q)
		}
	}
}

func (g *randomGen) newName(dir string) string {
	g.names++
	name := fmt.Sprintf("n%03d", g.names)
	if g.rng.Intn(8) == 0 {
		name += strings.Repeat("_", 90+g.rng.Intn(40)) // PAX path
	}
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (g *randomGen) pick(list []string) string { return list[g.rng.Intn(len(list))] }

func (g *randomGen) layer(idx, count int) []File {
	g.touched = map[string]bool{}
	var files []File
	mtime := time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(hdr tar.Header, data []byte) {
		hdr.Format = tar.FormatPAX
		hdr.ModTime = mtime.Add(time.Duration(g.rng.Int63n(int64(365 * 24 * time.Hour))))
		files = append(files, File{Header: hdr, Data: data})
	}
	modes := []int64{0o644, 0o600, 0o755, 0o4755, 0o444, 0}
	for len(files) < count {
		dirs := append([]string{""}, g.sorted('d', false)...)
		parent := g.pick(dirs)
		op := g.rng.Intn(20)
		switch {
		case op < 4: // directory
			p := g.newName(parent)
			add(tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: []int64{0o755, 0o700, 0o1777}[g.rng.Intn(3)]}, nil)
			g.kinds[p], g.touched[p] = 'd', true
		case op < 11: // new file
			p := g.newName(parent)
			data := randomBytes(g.rng.Int63(), g.rng.Intn(8<<10))
			add(tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: modes[g.rng.Intn(len(modes))], Uid: g.rng.Intn(2) * 1000}, data)
			g.kinds[p], g.touched[p] = 'f', true
		case op < 13: // overwrite a lower file
			lower := g.sorted('f', true)
			if len(lower) == 0 {
				continue
			}
			p := g.pick(lower)
			add(tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o644}, randomBytes(g.rng.Int63(), g.rng.Intn(4<<10)))
			g.touched[p] = true
		case op < 15: // symlink
			p := g.newName(parent)
			target := g.pick(append(g.sorted('f', false), "/etc/hostname", "dangling"))
			add(tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target, Mode: 0o777}, nil)
			g.kinds[p], g.touched[p] = 'l', true
		case op < 17: // hardlink to any existing file
			all := g.sorted('f', false)
			if len(all) == 0 {
				continue
			}
			p := g.newName(parent)
			add(tar.Header{Typeflag: tar.TypeLink, Name: p, Linkname: g.pick(all)}, nil)
			g.kinds[p], g.touched[p] = 'f', true
		case op < 19: // whiteout of a lower path
			var lower []string
			for _, k := range []byte{'f', 'd', 'l'} {
				lower = append(lower, g.sorted(k, true)...)
			}
			if idx == 0 || len(lower) == 0 {
				continue
			}
			sort.Strings(lower)
			p := g.pick(lower)
			add(tar.Header{Typeflag: tar.TypeReg, Name: path.Join(path.Dir(p), ".wh."+path.Base(p)), Mode: 0o644}, nil)
			g.removeUnder(p, true)
			g.touched[p] = true
		default: // opaque marker on a lower directory
			lower := g.sorted('d', true)
			if idx == 0 || len(lower) == 0 {
				continue
			}
			p := g.pick(lower)
			add(tar.Header{Typeflag: tar.TypeReg, Name: p + "/.wh..wh..opq", Mode: 0o644}, nil)
			g.removeUnder(p, false)
			g.touched[p] = true
		}
	}
	return files
}

// GoToolchain turns the tree at dir (e.g. /usr/local/go) into nLayers gzip
// layers balanced by bytes: top-level subtrees are the units, and a subtree
// larger than a layer's share is split into its children (its own
// directory entry then goes into layer 0, before any child), largest unit
// first onto the lightest layer. Modes, owners, mtimes (to the
// nanosecond), symlinks, devices, fifos and hardlinks within one layer are
// kept (a hardlink group split across layers becomes separate files);
// xattrs and sockets are not. File contents are streamed from disk at Build
// time (File.Path), so combine it with Options.BlobDir for large trees.
// Layer 0 also carries the root directory entry "./".
func GoToolchain(dir string, nLayers int) ([]Layer, error) {
	if nLayers < 1 {
		return nil, fmt.Errorf("tree %s to layers: nLayers %d < 1", dir, nLayers)
	}
	sizes := map[string]int64{}       // rel path → bytes of the subtree plus a header each
	children := map[string][]string{} // rel dir → rel children, in walk order
	isDir := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		isDir[rel] = d.IsDir()
		size := int64(512)
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			size += fi.Size()
		}
		for q := rel; ; q = path.Dir(q) {
			sizes[q] += size
			if q == "." {
				break
			}
		}
		children[path.Dir(rel)] = append(children[path.Dir(rel)], rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tree %s to layers: %w", dir, err)
	}
	share := sizes["."] / int64(nLayers)
	units := append([]string(nil), children["."]...)
	var splitDirs []string
	for split := true; split; {
		split = false
		var next []string
		for _, u := range units {
			if isDir[u] && sizes[u] > share && len(children[u]) > 0 {
				splitDirs = append(splitDirs, u)
				next = append(next, children[u]...)
				split = true
				continue
			}
			next = append(next, u)
		}
		units = next
	}
	sort.Slice(units, func(i, j int) bool {
		if sizes[units[i]] != sizes[units[j]] {
			return sizes[units[i]] > sizes[units[j]]
		}
		return units[i] < units[j]
	})
	assigned := make([][]string, nLayers)
	load := make([]int64, nLayers)
	for _, u := range units {
		best := 0
		for i := range load {
			if load[i] < load[best] {
				best = i
			}
		}
		assigned[best] = append(assigned[best], u)
		load[best] += sizes[u]
	}
	sort.Strings(splitDirs) // parents sort before their children
	layers := make([]Layer, nLayers)
	for i, names := range assigned {
		sort.Strings(names)
		var files []File
		if i == 0 {
			for _, rel := range append([]string{"."}, splitDirs...) {
				fi, err := os.Lstat(filepath.Join(dir, rel))
				if err != nil {
					return nil, fmt.Errorf("tree %s to layers: %w", dir, err)
				}
				name := rel
				if rel == "." {
					name = "./"
				}
				files = append(files, File{Header: headerFor(fi, name, "")})
			}
		}
		links := map[[2]uint64]string{}
		for _, name := range names {
			err := filepath.WalkDir(filepath.Join(dir, name), func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				rel, err := filepath.Rel(dir, p)
				if err != nil {
					return err
				}
				rel = filepath.ToSlash(rel)
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if fi.Mode()&fs.ModeSocket != 0 {
					return nil // tar has no sockets
				}
				var target string
				if fi.Mode()&fs.ModeSymlink != 0 {
					if target, err = os.Readlink(p); err != nil {
						return err
					}
				}
				f := File{Header: headerFor(fi, rel, target)}
				if fi.Mode().IsRegular() {
					st, _ := fi.Sys().(*syscall.Stat_t)
					if st != nil && st.Nlink > 1 {
						key := [2]uint64{uint64(st.Dev), st.Ino}
						if first, ok := links[key]; ok {
							f.Header.Typeflag, f.Header.Linkname = tar.TypeLink, first
							files = append(files, f)
							return nil
						}
						links[key] = rel
					}
					f.Path = p
				}
				files = append(files, f)
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("tree %s to layers: %w", dir, err)
			}
		}
		layers[i] = Layer{Files: files, Compression: Gzip}
	}
	return layers, nil
}

// headerFor builds a PAX tar header for a file on disk.
func headerFor(fi fs.FileInfo, name, target string) tar.Header {
	hdr := tar.Header{
		Name:    name,
		Mode:    int64(fi.Mode().Perm()),
		ModTime: fi.ModTime(),
		Format:  tar.FormatPAX,
	}
	m := fi.Mode()
	if m&fs.ModeSetuid != 0 {
		hdr.Mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		hdr.Mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		hdr.Mode |= 0o1000
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
	}
	switch {
	case m.IsDir():
		hdr.Typeflag = tar.TypeDir
		if !strings.HasSuffix(hdr.Name, "/") {
			hdr.Name += "/"
		}
	case m&fs.ModeSymlink != 0:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case m&fs.ModeNamedPipe != 0:
		hdr.Typeflag = tar.TypeFifo
	case m&fs.ModeDevice != 0:
		hdr.Typeflag = tar.TypeBlock
		if m&fs.ModeCharDevice != 0 {
			hdr.Typeflag = tar.TypeChar
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		}
	default:
		hdr.Typeflag = tar.TypeReg
	}
	return hdr
}
