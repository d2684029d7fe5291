package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// What a load can do without the registry. A manifest is content like any
// blob: once verified against its digest it is kept in the blob cache
// under that digest, and a reference pinned by digest (or an index's
// child, or a referrer's artifact manifest) is read from there, checked
// again, before any registry is asked. With the config (cached the same
// way since the first mount) that is all Resolve needs, so a daemon that
// restarts while the registry is down resolves its pinned image from the
// cache. A tag is another matter: only the registry knows what it names
// now, so resolving one still asks it.
//
// A referrers list is not content: it is what a registry answered when
// asked. The last answer is kept (kind answer, checksummed against damage
// like an index file) and given back when the registry cannot be asked; it
// stays a hint, since everything listed is fetched and verified by digest.
// What a tag last named is kept too, but only to say, when the tag cannot
// be resolved, which digest to mount instead.

// ErrOffline is wrapped by the error of a request a Client did not send
// because its context was made by [Offline].
var ErrOffline = errors.New("not asking the registry (answering from the cache only)")

type offlineKey struct{}

// Offline returns a context under which a Client answers from its cache
// alone: a manifest, blob or referrers request that would go to a registry
// fails at once with an error wrapping [ErrOffline], and [Image.Referrers]
// gives the list it saved last, if any. For a lookup that is worth doing
// only if it costs nothing.
func Offline(ctx context.Context) context.Context {
	return context.WithValue(ctx, offlineKey{}, true)
}

func isOffline(ctx context.Context) bool {
	v, _ := ctx.Value(offlineKey{}).(bool)
	return v
}

// cachedManifest returns manifest d from the blob cache, verified against
// d. A copy that does not check out is removed, with a warning, and
// reported absent, so that the caller fetches it again.
func (c *Client) cachedManifest(d digest.Digest) ([]byte, bool) {
	f, err := c.cache.Open(d)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err == nil && len(b) > maxManifestSize {
		err = formatError("cache: manifest %s is larger than 4 MiB", d)
	}
	if err == nil {
		err = verifyBytes("cache: manifest "+d.String(), d, b)
	}
	if err != nil {
		c.log.Warn("cached manifest damaged on disk; removed, asking the registry", "digest", d, "err", err)
		c.cache.Remove(KindBlob, d)
		return nil, false
	}
	return b, true
}

// keepManifest puts manifest bytes b, verified against d, into the blob
// cache, so that a later load by digest needs no registry. A cached copy
// that no longer checks out (damaged on disk) is replaced.
func (c *Client) keepManifest(d digest.Digest, b []byte) {
	if d.Validate() != nil {
		return
	}
	if c.cache.Has(d) {
		if _, ok := c.cachedManifest(d); ok {
			return
		}
	}
	if err := c.cache.Put(d, bytes.NewReader(b)); err != nil && !errors.Is(err, ErrFormat) {
		c.log.Warn("caching manifest", "digest", d, "err", err)
	}
}

// tagError says why a tag could not be resolved when the registry could
// not be asked: a tag names what the registry says it names now, so no
// cached answer stands in for it. What it named when last resolved is
// given as the way out, when that image is in the cache.
func (c *Client) tagError(ref Reference, err error) error {
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrFormat) {
		return err
	}
	hint := "name the image by digest, " + ref.repoName() + "@sha256:…, to mount it from the local cache"
	if d, when, ok := c.lastTag(ref); ok && c.cache.Has(d) {
		hint = fmt.Sprintf("it named %s when last resolved, %s; %s@%s mounts that from the local cache",
			d, when.UTC().Format(time.RFC3339), ref.repoName(), d)
	}
	return fmt.Errorf("resolving tag %q needs the registry, which did not answer (%s): %w", ref.Tag, hint, err)
}

// tagKey is the cache key of what tag ref last named.
func tagKey(ref Reference) digest.Digest {
	h := sha256.New()
	fmt.Fprintf(h, "ocifs tag v1\x00%s\x00%s", ref.repoName(), ref.Tag)
	return digest.NewDigest(digest.SHA256, h)
}

// saveTag records that tag ref named manifest d, for tagError's hint only:
// it is never used to resolve the tag.
func (c *Client) saveTag(ref Reference, d digest.Digest) {
	if err := c.cache.writeChecked(KindAnswer, answersDir, tagKey(ref), []byte(d.String())); err != nil {
		c.log.Warn("keeping what a tag named in the cache", "image", ref.String(), "err", err)
	}
}

// lastTag returns what tag ref named when last resolved, and when.
func (c *Client) lastTag(ref Reference) (digest.Digest, time.Time, bool) {
	f, r, err := c.cache.openChecked(KindAnswer, answersDir, tagKey(ref))
	if err != nil {
		return "", time.Time{}, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || r.Size() > 200 {
		return "", time.Time{}, false
	}
	b := make([]byte, r.Size())
	if _, err := r.ReadAt(b, 0); err != nil {
		return "", time.Time{}, false
	}
	d, err := digest.Parse(string(b))
	if err != nil {
		return "", time.Time{}, false
	}
	return d, fi.ModTime(), true
}

// maxSavedReferrers caps the entries of a saved referrers list.
const maxSavedReferrers = 4096

// referrersKey is the cache key of the referrers list of im's manifest in
// its repository, for artifactType.
func (im *Image) referrersKey(artifactType string) digest.Digest {
	h := sha256.New()
	fmt.Fprintf(h, "ocifs referrers v1\x00%s\x00%s\x00%s", im.src, im.ManifestDigest, artifactType)
	return digest.NewDigest(digest.SHA256, h)
}

// saveReferrers keeps descs as the last referrers answer for artifactType.
func (im *Image) saveReferrers(artifactType string, descs []ocispec.Descriptor) {
	if len(descs) > maxSavedReferrers {
		return
	}
	b, err := json.Marshal(descs)
	if err == nil {
		err = im.c.cache.writeChecked(KindAnswer, answersDir, im.referrersKey(artifactType), b)
	}
	if err != nil {
		im.c.log.Warn("keeping the referrers list in the cache", "digest", im.ManifestDigest, "err", err)
	}
}

// savedReferrers returns the referrers list saved for artifactType and when
// it was saved; ok is false when none is (or it is damaged: then it is
// removed).
func (im *Image) savedReferrers(artifactType string) (descs []ocispec.Descriptor, saved time.Time, ok bool) {
	key := im.referrersKey(artifactType)
	f, r, err := im.c.cache.openChecked(KindAnswer, answersDir, key)
	if err != nil {
		return nil, time.Time{}, false
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		saved = fi.ModTime()
	}
	b := make([]byte, r.Size())
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, time.Time{}, false
	}
	if descs, err = parseSavedReferrers(b); err != nil {
		im.c.log.Warn("saved referrers list unusable; removed", "digest", im.ManifestDigest, "err", err)
		im.c.cache.Remove(KindAnswer, key)
		return nil, time.Time{}, false
	}
	return descs, saved, true
}

// parseSavedReferrers decodes a saved referrers list (a JSON array of
// descriptors), at most maxSavedReferrers of them; entries with a bad
// digest or size are dropped. The list is never nil.
func parseSavedReferrers(b []byte) ([]ocispec.Descriptor, error) {
	var descs []ocispec.Descriptor
	if err := json.Unmarshal(b, &descs); err != nil {
		return nil, formatError("saved referrers list: %v", err)
	}
	if len(descs) > maxSavedReferrers {
		return nil, formatError("saved referrers list: %d entries, more than %d", len(descs), maxSavedReferrers)
	}
	out := []ocispec.Descriptor{}
	for _, d := range descs {
		if checkDescriptor("referrer", d) == nil {
			out = append(out, d)
		}
	}
	return out, nil
}
