package fetch

import (
	"bytes"
	"crypto/sha256"
	_ "crypto/sha512" // registers sha384 and sha512 for go-digest
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// Cache layout under the root directory.
const (
	blobsDir   = "blobs"
	indexDir   = "index"
	profileDir = "profiles"
	// answersDir holds what a registry last answered (a referrers list,
	// the digest a tag named), keyed by a digest of the question.
	answersDir = "answers"
	// rangesDir holds blob ranges a load needs each time (CheckRangeKept).
	rangesDir  = "ranges"
	tmpDir     = "tmp"
	staleAfter = time.Hour
	// indexMagic starts every index file; the sha256 of the payload follows.
	indexMagic = "OCIFSIX1"
)

// Cache kinds reported by List and taken by Remove.
const (
	KindBlob    = "blob"
	KindIndex   = "index"
	KindProfile = "profile"
	// KindAnswer is what a registry last answered (offline.go): an
	// image's referrers list, the digest a tag named; for when it cannot
	// be asked.
	KindAnswer = "answer"
	// KindRange is a blob range kept for the loads that need it each
	// time, an eStargz or zstd:chunked TOC ([Image.CheckRangeKept]).
	KindRange = "range"
)

// Cache is the digest-addressed cache shared by all mounts:
//
//	blobs/<alg>/<hex>   content whose digest is the name, admitted only after verification
//	index/<alg>/<hex>   opaque index files keyed by a layer digest, with a checksum header
//	profiles/<alg>/<hex> opaque start-up profiles keyed by a manifest digest, with the same header
//	answers/<alg>/<hex> what a registry last answered (referrers, tags), with the same header (offline.go)
//	ranges/<alg>/<hex>  blob ranges a load needs each time (a TOC), with the same header (CheckRangeKept)
//	trees/<alg>/<hex>/  a layer's files, extracted from its verified tar (see Tree)
//	verified/<alg>/<hex> the identity of a blob file whose digest was checked (see Verify)
//	tmp/                temp files; stale ones are removed by OpenCache
//
// Every entry appears by rename, so readers never see a partial file, and a
// bad write never replaces a good entry. It is safe for concurrent use by
// goroutines and processes.
type Cache struct {
	dir string
	// added is signalled (never blocking) after an entry is installed.
	added chan struct{}

	hashed atomic.Int64 // bytes read by Verify's hashing, for tests

	bound atomic.Pointer[bound] // the write-time bound (SetMaxBytes, bound.go); nil for none
}

// OpenCache opens (creating with mode 0700) the cache rooted at dir, and
// removes temp files older than an hour left by crashed writers.
func OpenCache(dir string) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("open cache: empty directory name")
	}
	for _, sub := range []string{blobsDir, indexDir, profileDir, answersDir, rangesDir, tmpDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open cache %s: %w", dir, err)
		}
	}
	c := &Cache{dir: dir, added: make(chan struct{}, 1)}
	c.removeStale(time.Now().Add(-staleAfter))
	return c, nil
}

// removeStale deletes temp files last modified before cutoff.
func (c *Cache) removeStale(cutoff time.Time) {
	ents, err := os.ReadDir(filepath.Join(c.dir, tmpDir))
	if err != nil {
		return
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			os.RemoveAll(filepath.Join(c.dir, tmpDir, e.Name())) // a file, or a tree being extracted
		}
	}
}

// Dir returns the cache root.
func (c *Cache) Dir() string { return c.dir }

// path returns the file for digest d under kind's directory. d is
// validated, so a hostile digest cannot name a path outside the cache.
func (c *Cache) path(kindDir string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", formatError("cache: digest %q: %v", d, err)
	}
	return filepath.Join(c.dir, kindDir, d.Algorithm().String(), d.Encoded()), nil
}

// Has reports whether blob d is cached.
func (c *Cache) Has(d digest.Digest) bool {
	p, err := c.path(blobsDir, d)
	if err != nil {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// Open opens cached blob d; the error wraps ErrNotFound if it is absent.
func (c *Cache) Open(d digest.Digest) (*os.File, error) {
	p, err := c.path(blobsDir, d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("cache: blob %s: %w", d, ErrNotFound)
		}
		return nil, fmt.Errorf("cache: blob %s: %w", d, err)
	}
	c.touch(KindBlob, d)
	return f, nil
}

// Pending is a blob being written to the cache. It is admitted by Commit
// only if what was written has the digest it was created for.
type Pending struct {
	c     *Cache
	d     digest.Digest
	f     *os.File
	h     hash.Hash
	err   error // first write error, sticky
	done  bool
	bytes int64
}

// Create starts writing blob d into a temp file.
func (c *Cache) Create(d digest.Digest) (*Pending, error) {
	if _, err := c.path(blobsDir, d); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Join(c.dir, tmpDir), d.Encoded()+".*")
	if err != nil {
		return nil, fmt.Errorf("cache: blob %s: %w", d, err)
	}
	return &Pending{c: c, d: d, f: f, h: d.Algorithm().Hash()}, nil
}

// Name returns the path of the temp file being written. A reader may open
// it to read what has been written so far; until Commit has checked the
// digest those bytes are unverified.
func (p *Pending) Name() string { return p.f.Name() }

// Write appends b to the pending blob.
func (p *Pending) Write(b []byte) (int, error) {
	if p.done {
		return 0, fmt.Errorf("cache: blob %s: write after Commit or Abort", p.d)
	}
	if p.err != nil {
		return 0, p.err
	}
	n, err := p.f.Write(b)
	p.h.Write(b[:n])
	p.bytes += int64(n)
	if err != nil {
		p.err = fmt.Errorf("cache: blob %s: %w", p.d, err)
		return n, p.err
	}
	return n, nil
}

// Commit verifies what was written against the digest, syncs it, and
// renames it into blobs/. On a mismatch it returns a *DigestError and
// admits nothing; if the blob is already cached the temp is dropped.
func (p *Pending) Commit() error {
	if p.done {
		return fmt.Errorf("cache: blob %s: Commit after Commit or Abort", p.d)
	}
	defer p.Abort()
	if p.err != nil {
		return p.err
	}
	if got := digest.NewDigest(p.d.Algorithm(), p.h); got != p.d {
		return &DigestError{What: fmt.Sprintf("cache: blob %s (%d bytes written)", p.d, p.bytes), Want: p.d, Got: got}
	}
	if p.c.Has(p.d) {
		return nil
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("cache: blob %s: sync: %w", p.d, err)
	}
	if err := p.f.Close(); err != nil {
		return fmt.Errorf("cache: blob %s: %w", p.d, err)
	}
	dst, _ := p.c.path(blobsDir, p.d)
	if err := p.c.admit(KindBlob, p.d, p.bytes, func() error { return p.c.install(p.f.Name(), dst) }); err != nil {
		return fmt.Errorf("cache: blob %s: %w", p.d, err)
	}
	// The bytes were hashed as they were written: record the check.
	if f, err := os.Open(dst); err == nil {
		p.c.stamp(p.d, fileIdentity(f))
		f.Close()
	}
	return nil
}

// Abort removes the temp file. It is a no-op after Commit or Abort, so
// `defer p.Abort()` is always safe.
func (p *Pending) Abort() {
	if p.done {
		return
	}
	p.done = true
	p.f.Close()
	os.Remove(p.f.Name())
}

// install renames a finished temp file to dst and syncs dst's directory.
func (c *Cache) install(tmp, dst string) error {
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	c.signalAdded()
	return nil
}

// Put writes r to the cache as blob d: Create, copy, Commit.
func (c *Cache) Put(d digest.Digest, r io.Reader) error {
	p, err := c.Create(d)
	if err != nil {
		return err
	}
	defer p.Abort()
	if _, err := io.Copy(p, r); err != nil {
		return fmt.Errorf("cache: blob %s: %w", d, err)
	}
	return p.Commit()
}

// WriteIndex stores an index file for layer, atomically, behind a header
// that carries the sha256 of data.
func (c *Cache) WriteIndex(layer digest.Digest, data []byte) error {
	return c.writeChecked(KindIndex, indexDir, layer, data)
}

// WriteProfile stores the start-up profile of the image whose manifest
// digest is manifest, as WriteIndex stores an index: atomically, behind a
// checksum header. A profile stored before is replaced.
func (c *Cache) WriteProfile(manifest digest.Digest, data []byte) error {
	return c.writeChecked(KindProfile, profileDir, manifest, data)
}

// ReadProfile returns the profile stored for manifest, as ReadIndex does
// for an index.
func (c *Cache) ReadProfile(manifest digest.Digest) ([]byte, error) {
	f, r, err := c.openChecked(KindProfile, profileDir, manifest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, r.Size())
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("cache: profile %s: %w", manifest, err)
	}
	return b, nil
}

// writeChecked writes data under dir/key behind a header that carries its
// sha256: a temp file, synced, renamed into place.
func (c *Cache) writeChecked(kind, dir string, key digest.Digest, data []byte) error {
	dst, err := c.path(dir, key)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Join(c.dir, tmpDir), kind+"-"+key.Encoded()+".*")
	if err != nil {
		return fmt.Errorf("cache: %s %s: %w", kind, key, err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	sum := sha256.Sum256(data)
	var werr error
	for _, b := range [][]byte{[]byte(indexMagic), sum[:], data} {
		if _, err := f.Write(b); err != nil {
			werr = err
			break
		}
	}
	if werr == nil {
		werr = f.Sync()
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		size := int64(len(indexMagic) + len(sum) + len(data))
		werr = c.admit(kind, key, size, func() error { return c.install(f.Name(), dst) })
	}
	if werr != nil {
		return fmt.Errorf("cache: %s %s: %w", kind, key, werr)
	}
	return nil
}

// ReadIndex returns the index stored for layer. The error wraps ErrNotFound
// if there is none; a file whose checksum does not match is removed and
// reported as an ErrFormat error.
func (c *Cache) ReadIndex(layer digest.Digest) ([]byte, error) {
	f, r, err := c.OpenIndex(layer)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, r.Size())
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("cache: index %s: %w", layer, err)
	}
	return b, nil
}

// HasIndex reports whether an index is stored for layer, without reading it.
func (c *Cache) HasIndex(layer digest.Digest) bool {
	p, err := c.path(indexDir, layer)
	if err != nil {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// OpenIndex opens the index stored for layer after checking its checksum,
// reading the file once without keeping it in memory. r reads the index
// itself (the payload after the header) and stays valid until f is closed.
// The error wraps ErrNotFound if there is none; a file whose checksum does
// not match is removed and reported as an ErrFormat error.
func (c *Cache) OpenIndex(layer digest.Digest) (f *os.File, r *io.SectionReader, err error) {
	return c.openChecked(KindIndex, indexDir, layer)
}

// openChecked opens dir/key after checking its checksum header; see
// OpenIndex.
func (c *Cache) openChecked(kind, dir string, key digest.Digest) (f *os.File, r *io.SectionReader, err error) {
	p, err := c.path(dir, key)
	if err != nil {
		return nil, nil, err
	}
	f, err = os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("cache: %s %s: %w", kind, key, ErrNotFound)
		}
		return nil, nil, fmt.Errorf("cache: %s %s: %w", kind, key, err)
	}
	c.touch(kind, key)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("cache: %s %s: %w", kind, key, err)
	}
	hdr := int64(len(indexMagic) + sha256.Size)
	head := make([]byte, hdr)
	if fi.Size() < hdr {
		f.Close()
		os.Remove(p)
		return nil, nil, formatError("cache: %s %s: truncated (removed)", kind, key)
	}
	if _, err := f.ReadAt(head, 0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("cache: %s %s: %w", kind, key, err)
	}
	if string(head[:len(indexMagic)]) != indexMagic {
		f.Close()
		os.Remove(p)
		return nil, nil, formatError("cache: %s %s: bad header (removed)", kind, key)
	}
	r = io.NewSectionReader(f, hdr, fi.Size()-hdr)
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, r.Size())); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("cache: %s %s: %w", kind, key, err)
	}
	if !bytes.Equal(h.Sum(nil), head[len(indexMagic):]) {
		f.Close()
		os.Remove(p)
		return nil, nil, formatError("cache: %s %s: checksum mismatch (removed)", kind, key)
	}
	return f, r, nil
}

// CacheEntry describes one cached file.
type CacheEntry struct {
	Kind    string // KindBlob, KindIndex, KindProfile or KindTree
	Digest  digest.Digest
	Size    int64
	ModTime time.Time
}

// List returns every blob, index and tree in the cache.
func (c *Cache) List() ([]CacheEntry, error) {
	var out []CacheEntry
	for _, k := range []struct{ kind, dir string }{{KindBlob, blobsDir}, {KindIndex, indexDir}, {KindProfile, profileDir}, {KindAnswer, answersDir}, {KindRange, rangesDir}} {
		root := filepath.Join(c.dir, k.dir)
		algs, err := os.ReadDir(root)
		if errors.Is(err, fs.ErrNotExist) && k.kind != KindBlob && k.kind != KindIndex {
			continue // a cache opened by an older build
		}
		if err != nil {
			return nil, fmt.Errorf("cache: list %s: %w", root, err)
		}
		for _, alg := range algs {
			if !alg.IsDir() {
				continue
			}
			ents, err := os.ReadDir(filepath.Join(root, alg.Name()))
			if err != nil {
				return nil, fmt.Errorf("cache: list %s: %w", root, err)
			}
			for _, e := range ents {
				d := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), e.Name())
				if d.Validate() != nil {
					continue
				}
				fi, err := e.Info()
				if err != nil || !fi.Mode().IsRegular() {
					continue
				}
				out = append(out, CacheEntry{Kind: k.kind, Digest: d, Size: fi.Size(), ModTime: fi.ModTime()})
			}
		}
	}
	trees, err := c.treeEntries()
	if err != nil {
		return nil, err
	}
	return append(out, trees...), nil
}

// Remove deletes a blob, index or tree entry; the error wraps ErrNotFound
// if it is absent.
func (c *Cache) Remove(kind string, d digest.Digest) error {
	err := c.remove(kind, d)
	if b := c.bound.Load(); b != nil && (err == nil || errors.Is(err, ErrNotFound)) {
		b.forget(kind, d)
	}
	return err
}

// remove deletes an entry's files, and nothing else.
func (c *Cache) remove(kind string, d digest.Digest) error {
	var dir string
	switch kind {
	case KindBlob:
		dir = blobsDir
	case KindIndex:
		dir = indexDir
	case KindProfile:
		dir = profileDir
	case KindAnswer:
		dir = answersDir
	case KindRange:
		dir = rangesDir
	case KindTree:
		p, err := c.path(treesDir, d)
		if err != nil {
			return err
		}
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: %s %s: %w", kind, d, ErrNotFound)
		}
		if err := removeTreeDir(p); err != nil {
			return fmt.Errorf("cache: %s %s: %w", kind, d, err)
		}
		c.unuse(kind, d)
		return nil
	default:
		return fmt.Errorf("cache: remove: unknown kind %q (want %q, %q, %q, %q, %q or %q)", kind, KindBlob, KindIndex, KindProfile, KindAnswer, KindRange, KindTree)
	}
	p, err := c.path(dir, d)
	if err != nil {
		return err
	}
	if kind == KindBlob {
		c.unstamp(d)
	}
	c.unuse(kind, d)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: %s %s: %w", kind, d, ErrNotFound)
		}
		return fmt.Errorf("cache: %s %s: %w", kind, d, err)
	}
	return nil
}
