package fstest

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LargeLayer is a big, realistic single layer made by [Large]: a root
// directory entry, a few dozen directories, then many small files, some
// medium ones and a few big ones, with symlinks and hardlinks among them.
// Contents compress like a real distribution layer (about 2 to 3 times with
// gzip): source-like text, library-like binaries (random code mixed with
// zero padding and repeated tables) and a few already-compressed files.
type LargeLayer struct {
	Layer Layer
	// Probe is a small regular file placed in the middle of the tar stream
	// (by bytes), far from both ends, for tests that read one file.
	Probe File
	// Bytes is the sum of the regular files' sizes.
	Bytes int64
}

// Large returns a gzip layer of about size bytes of file content (never
// less than size), the same for the same seed. Generating it costs about as
// much as writing the bytes once; nothing is compressed here.
//
// The mix: 3 big files (plus one per 128 MiB of size, at most 8) of size/40
// to size/12 each (capped at 50 MiB, at least 1 MiB); the rest are files of
// 100 B to 8 KiB (80%), 8 KiB to 128 KiB (17%) and 128 KiB to 2 MiB (3%).
func Large(seed uint64, size int64) LargeLayer {
	g := &largeGen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	g.words = g.dictionary(3000)
	mtime := time.Date(2023, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(sec int) time.Time { return mtime.Add(time.Duration(sec) * time.Second) }

	dirs := []string{"etc", "usr", "usr/bin", "usr/lib", "usr/share", "usr/share/doc", "var", "var/lib", "opt"}
	for i := range 40 {
		parent := []string{"usr/lib", "usr/share/doc", "var/lib", "opt"}[i%4]
		dirs = append(dirs, fmt.Sprintf("%s/%s%d", parent, g.word(), i))
	}
	sort.Strings(dirs) // parents first
	files := []File{{Header: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: at(0)}}}
	for i, d := range dirs {
		files = append(files, File{Header: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: at(i)}})
	}

	// The big files' sizes come first, so the small ones fill the rest.
	nBig := min(3+int(size/(128<<20)), 8)
	var bigSizes []int
	var bigTotal int64
	for range nBig {
		n := size/40 + g.rng.Int64N(max(size/12-size/40, 1))
		n = max(min(n, 50<<20), 1<<20)
		bigSizes = append(bigSizes, int(n))
		bigTotal += n
	}
	// Spread the big files over the stream, from 10% of the rest on.
	rest := max(size-bigTotal, 1<<20)
	bigAt := make([]int64, nBig)
	for i := range bigAt {
		bigAt[i] = rest * int64(10+80*i/nBig) / 100
	}

	ll := LargeLayer{}
	var written int64 // bytes of small and medium files so far
	var regs []string
	probeDone, bigDone := false, 0
	modes := []int64{0o644, 0o644, 0o644, 0o755, 0o600, 0o444}
	for i := 0; written < rest || !probeDone || bigDone < nBig; i++ {
		dir := dirs[g.rng.IntN(len(dirs))]
		hdr := tar.Header{Typeflag: tar.TypeReg, Mode: modes[g.rng.IntN(len(modes))], ModTime: at(1000 + i)}
		if g.rng.IntN(10) == 0 {
			hdr.Uid, hdr.Gid = 1000, 1000
		}
		switch {
		case bigDone < nBig && written >= bigAt[bigDone]:
			hdr.Name = fmt.Sprintf("usr/lib/big%d-%s.so", bigDone, g.word())
			hdr.Mode = 0o755
			data := g.binary(bigSizes[bigDone])
			if bigDone == 1 {
				hdr.Name = fmt.Sprintf("usr/share/big%d-%s.txt", bigDone, g.word())
				hdr.Mode = 0o644
				data = g.text(bigSizes[bigDone])
			}
			files = append(files, File{Header: hdr, Data: data})
			ll.Bytes += int64(len(data))
			regs = append(regs, hdr.Name)
			bigDone++
			continue
		case !probeDone && written >= rest/2:
			hdr.Name, hdr.Mode = "etc/lazy-probe.conf", 0o644
			data := []byte(fmt.Sprintf("# read by the lazy-read tests\nseed=%d\nsize=%d\n%s\n", seed, size, g.text(300)))
			ll.Probe = File{Header: hdr, Data: data}
			files = append(files, ll.Probe)
			ll.Bytes += int64(len(data))
			probeDone = true
			continue
		case len(regs) > 10 && g.rng.IntN(60) == 0:
			target := regs[g.rng.IntN(len(regs))]
			files = append(files, File{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: path.Join(dir, fmt.Sprintf("%s%d.link", g.word(), i)),
				Linkname: "/" + target, Mode: 0o777, ModTime: hdr.ModTime}})
			continue
		case len(regs) > 10 && g.rng.IntN(200) == 0:
			target := regs[g.rng.IntN(len(regs))]
			files = append(files, File{Header: tar.Header{Typeflag: tar.TypeLink, Name: path.Join(dir, fmt.Sprintf("%s%d.hard", g.word(), i)),
				Linkname: target, ModTime: hdr.ModTime}})
			continue
		}
		var n int
		switch r := g.rng.IntN(100); {
		case r < 80:
			n = 100 + g.rng.IntN(8<<10)
		case r < 97:
			n = 8<<10 + g.rng.IntN(120<<10)
		default:
			n = 128<<10 + g.rng.IntN(2<<20-128<<10)
		}
		var data []byte
		switch r := g.rng.IntN(100); {
		case r < 65:
			hdr.Name = path.Join(dir, fmt.Sprintf("%s%d.%s", g.word(), i, []string{"go", "py", "h", "txt", "conf"}[g.rng.IntN(5)]))
			data = g.text(n)
		case r < 97:
			hdr.Name = path.Join(dir, fmt.Sprintf("lib%s%d.so", g.word(), i))
			data = g.binary(n)
		default:
			hdr.Name = path.Join(dir, fmt.Sprintf("%s%d.gz", g.word(), i))
			data = g.random(n)
		}
		files = append(files, File{Header: hdr, Data: data})
		regs = append(regs, hdr.Name)
		written += int64(n)
		ll.Bytes += int64(n)
	}
	ll.Layer = Layer{Files: files, Compression: Gzip}
	return ll
}

// largeGen makes file contents from a seeded PRNG, a few bytes per call.
type largeGen struct {
	rng   *rand.Rand
	words []string
}

// dictionary makes n pseudo-words of 2 to 11 letters.
func (g *largeGen) dictionary(n int) []string {
	const letters = "etaoinshrdlcumwfgypbvkjxqz_"
	out := make([]string, n)
	for i := range out {
		b := make([]byte, 2+g.rng.IntN(10))
		for j := range b {
			b[j] = letters[min(g.rng.IntN(len(letters)), g.rng.IntN(len(letters)))] // skewed to frequent letters
		}
		out[i] = string(b)
	}
	return out
}

// word picks a word, the frequent ones far more often (roughly Zipf).
func (g *largeGen) word() string {
	return g.words[g.rng.IntN(1+g.rng.IntN(len(g.words)))]
}

const hexDigits = "0123456789abcdef"

// text is source-like: indented lines of words, operators and numbers.
func (g *largeGen) text(n int) []byte {
	b := make([]byte, 0, n+64)
	col := 0
	for len(b) < n {
		switch r := g.rng.IntN(16); {
		case r == 0:
			b = append(b, '\n')
			for range g.rng.IntN(4) {
				b = append(b, '\t')
			}
			col = 0
			continue
		case r == 1:
			v := g.rng.Uint64()
			for range 4 + g.rng.IntN(12) {
				b = append(b, hexDigits[v&15])
				v >>= 4
			}
		case r < 4:
			b = append(b, "(){}[];:=.,+-*/<>!&|\""[g.rng.IntN(21)])
		default:
			b = append(b, g.word()...)
		}
		b = append(b, ' ')
		if col++; col > 12 {
			b = append(b, '\n')
			col = 0
		}
	}
	return b[:n]
}

// binary is library-like: runs of random "code", zero padding, and copies
// of earlier pieces (tables, strings) of the same file.
func (g *largeGen) binary(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; {
		m := min(16+g.rng.IntN(240), n-i)
		switch r := g.rng.IntN(10); {
		case r < 3: // random code
			for j := i; j < i+m; j += 8 {
				v := g.rng.Uint64()
				for k := j; k < min(j+8, i+m); k++ {
					b[k] = byte(v)
					v >>= 8
				}
			}
		case r < 5: // padding: already zero
		case r < 7: // a string
			w := g.word()
			for j := i; j < i+m; j += len(w) + 1 {
				copy(b[j:i+m], w)
			}
		default: // a repeat from earlier in the file
			if i > 4096 {
				from := i - 1 - g.rng.IntN(min(i-1, 30000))
				for j := range m {
					b[i+j] = b[from+j]
				}
			}
		}
		i += m
	}
	return b
}

// random is incompressible, like a file that is already compressed.
func (g *largeGen) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := g.rng.Uint64()
		for k := i; k < min(i+8, n); k++ {
			b[k] = byte(v)
			v >>= 8
		}
	}
	return b
}

// SystemGzip is the gzip binary [BuildSystemGzip] runs (Debian package gzip).
const SystemGzip = "gzip"

// BuildSystemGzip is [Build] for gzip layers, compressed by the system's
// GNU gzip (`gzip -LEVEL -n`) instead of klauspost/compress: many times
// faster under the race detector, and the deflate stream most real tools
// write. Every layer must be Gzip and opts.BlobDir must be set. The same
// input and gzip version give the same bytes.
func BuildSystemGzip(layers []Layer, opts Options, level int) (*Image, error) {
	if opts.BlobDir == "" {
		return nil, errors.New("build with system gzip: Options.BlobDir is not set")
	}
	if level < 1 || level > 9 {
		return nil, fmt.Errorf("build with system gzip: level %d is not 1-9", level)
	}
	plain := make([]Layer, len(layers))
	for i, l := range layers {
		if l.Compression != Gzip {
			return nil, fmt.Errorf("build with system gzip: layer %d is %s, not gzip", i, l.Compression)
		}
		plain[i] = Layer{Files: l.Files, Compression: None}
	}
	im, err := Build(plain, opts)
	if err != nil {
		return nil, err
	}
	mediaType, err := layerMediaType(Gzip, opts.Docker)
	if err != nil {
		return nil, err
	}
	for i, d := range im.LayerDescs {
		gz, err := systemGzip(opts.BlobDir, blobPath(opts.BlobDir, d.Digest), level)
		if err != nil {
			return nil, fmt.Errorf("build with system gzip: layer %d: %w", i, err)
		}
		gz.MediaType = mediaType
		im.LayerDescs[i] = gz
	}
	for _, d := range im.DiffIDs { // the plain tars, which the image no longer names
		if err := os.Remove(blobPath(opts.BlobDir, d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("build with system gzip: %w", err)
		}
	}

	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		return nil, fmt.Errorf("build with system gzip: config: %w", err)
	}
	for i := range cfg.History {
		cfg.History[i].CreatedBy = strings.Replace(cfg.History[i].CreatedBy, ", none)", fmt.Sprintf(", gzip -%d)", level), 1)
	}
	if im.Config, err = json.Marshal(cfg); err != nil {
		return nil, fmt.Errorf("build with system gzip: config: %w", err)
	}
	im.ConfigDesc = descriptor(im.ConfigDesc.MediaType, im.Config)
	var mf ocispec.Manifest
	if err := json.Unmarshal(im.Manifest, &mf); err != nil {
		return nil, fmt.Errorf("build with system gzip: manifest: %w", err)
	}
	mf.Config, mf.Layers = im.ConfigDesc, im.LayerDescs
	if im.Manifest, err = json.Marshal(mf); err != nil {
		return nil, fmt.Errorf("build with system gzip: manifest: %w", err)
	}
	im.ManifestDesc = descriptor(im.ManifestDesc.MediaType, im.Manifest)
	return im, nil
}

// systemGzip compresses the file src into blobDir/sha256/<hex> with gzip
// and returns the blob's digest and size.
func systemGzip(blobDir, src string, level int) (ocispec.Descriptor, error) {
	in, err := os.Open(src)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(blobDir, "layer-*.gz.tmp")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name()) // a no-op once renamed
	}()
	h := newCountingHash()
	var stderr strings.Builder
	cmd := exec.Command(SystemGzip, fmt.Sprintf("-%d", level), "-n", "-c")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, io.MultiWriter(tmp, h), &stderr
	if err := cmd.Run(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w: %s", SystemGzip, err, strings.TrimSpace(stderr.String()))
	}
	if err := tmp.Close(); err != nil {
		return ocispec.Descriptor{}, err
	}
	d := h.digest()
	if err := os.Rename(tmp.Name(), blobPath(blobDir, d)); err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{Digest: d, Size: h.n}, nil
}
