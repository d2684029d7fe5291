package fetch

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// A cached blob is admitted only after its digest is checked, but it is read
// again on later mounts: a copy damaged on disk must not be served. Hashing a
// whole cached layer (and its uncompressed tar) on every mount costs seconds
// of CPU and disk for a large image, so a successful check is recorded in a
// stamp beside the blob, naming the file's identity: device, inode, size,
// modification and change times. A later Verify of the same, unchanged file
// trusts the stamp; any write, truncation, chmod, rename over or replacement
// of the file changes its change time or inode, and the file is hashed again.
// (Since Linux 6.13 a change made after the stamp's stat gets a finer change
// time than the stat saw; on older kernels a change within the same clock
// tick as the check could go unseen.) What a stamp cannot see is damage below
// the file system, a sector that reads back different bytes: `ocifs cache
// verify` hashes every blob again.

// verifiedDir holds one stamp per checked blob: verified/<alg>/<hex>.
const verifiedDir = "verified"

// Verify checks that f, a cached blob opened with Open, holds exactly the
// bytes of d. An unchanged file checked before is trusted (see above); any
// other is hashed, and a match is recorded. A mismatch is a *DigestError.
func (c *Cache) Verify(f *os.File, d digest.Digest) error {
	id := fileIdentity(f)
	stamp, err := c.path(verifiedDir, d)
	if err != nil {
		return err
	}
	if id != "" {
		if b, err := os.ReadFile(stamp); err == nil && string(b) == id {
			return nil
		}
	}
	if err := c.hash(f, d); err != nil {
		return err
	}
	c.stamp(d, id)
	return nil
}

// VerifyAll hashes f again against d whatever its stamp says, and records a
// match. It is what `ocifs cache verify` runs.
func (c *Cache) VerifyAll(f *os.File, d digest.Digest) error {
	id := fileIdentity(f) // before hashing: a change meanwhile must not be stamped good
	if err := c.hash(f, d); err != nil {
		return err
	}
	c.stamp(d, id)
	return nil
}

// hash reads the whole of f and compares its digest with d.
func (c *Cache) hash(f *os.File, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return formatError("cache: digest %q: %v", d, err)
	}
	h := d.Algorithm().Hash()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62))
	c.hashed.Add(n)
	if err != nil {
		return fmt.Errorf("cache: checking %s: %w", f.Name(), err)
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return &DigestError{What: "cached " + f.Name(), Want: d, Got: got}
	}
	return nil
}

// stamp records that the file with identity id holds d's bytes. Without an
// identity (a platform that gives none) nothing is recorded. A stamp that
// cannot be written only costs a hash next time.
func (c *Cache) stamp(d digest.Digest, id string) {
	if id == "" {
		return
	}
	dst, err := c.path(verifiedDir, d)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Join(c.dir, tmpDir), "stamp.*")
	if err != nil {
		return
	}
	_, werr := tmp.WriteString(id)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), dst) != nil {
		os.Remove(tmp.Name())
	}
}

// unstamp forgets the check of blob d.
func (c *Cache) unstamp(d digest.Digest) {
	if p, err := c.path(verifiedDir, d); err == nil {
		os.Remove(p)
	}
}
