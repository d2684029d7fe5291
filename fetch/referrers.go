package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The ocifs layer-index artifact: an OCI image manifest whose subject is an
// image manifest, with one blob per indexed layer.
const (
	// ArtifactTypeIndex is the artifactType of an ocifs layer-index artifact.
	ArtifactTypeIndex = "application/vnd.ocifs.index.v1"
	// MediaTypeIndexLayer is the media type of one layer index blob inside
	// the artifact.
	MediaTypeIndexLayer = "application/vnd.ocifs.index.layer.v1"
	// AnnotationLayerDigest, on each index blob descriptor in the artifact
	// manifest, names the layer digest it indexes.
	AnnotationLayerDigest = "io.ocifs.layer.digest"
	// AnnotationIndexHeadDigest and AnnotationIndexHeadSize, on an index
	// blob descriptor, give the digest of the blob's first
	// AnnotationIndexHeadSize bytes (decimal): the index's head, its entry
	// table and spans with a sha256 of each window after it. A reader
	// fetches the head alone with a Range GET and checks it against this
	// digest, and each window when its span is read; without them it
	// fetches the whole blob. The artifact manifest's digest covers them
	// as it covers the blob's digest.
	AnnotationIndexHeadDigest = "io.ocifs.index.head.digest"
	AnnotationIndexHeadSize   = "io.ocifs.index.head.size"
)

// IndexHead returns the head of the index blob desc describes, from its
// annotations (checked by [Image.FetchReferrer]): its first size bytes,
// which must have digest d. ok is false when desc names no head.
func IndexHead(desc ocispec.Descriptor) (size int64, d digest.Digest, ok bool) {
	size, d, err := indexHead(desc)
	return size, d, err == nil && d != ""
}

// indexHead parses the head annotations of an index blob descriptor: both
// or neither, a sha256 digest and a decimal size in (0, desc.Size] written
// without sign or leading zeros.
func indexHead(desc ocispec.Descriptor) (int64, digest.Digest, error) {
	ds, hasD := desc.Annotations[AnnotationIndexHeadDigest]
	ss, hasS := desc.Annotations[AnnotationIndexHeadSize]
	if !hasD && !hasS {
		return 0, "", nil
	}
	if !hasD || !hasS {
		return 0, "", fmt.Errorf("%s and %s must come together", AnnotationIndexHeadDigest, AnnotationIndexHeadSize)
	}
	d := digest.Digest(ds)
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return 0, "", fmt.Errorf("%s %q is not a sha256 digest", AnnotationIndexHeadDigest, ds)
	}
	size, err := strconv.ParseInt(ss, 10, 64)
	if err != nil || strconv.FormatInt(size, 10) != ss || size <= 0 || size > desc.Size {
		return 0, "", fmt.Errorf("%s %q is not a size in 1..%d", AnnotationIndexHeadSize, ss, desc.Size)
	}
	return size, d, nil
}

// The ocifs start-up profile artifact: an OCI image manifest whose subject
// is an image manifest, with the profile blob (index.Profile's encoding)
// and, when the profile has one, its pack blob, beside the index artifact.
const (
	// ArtifactTypeProfile is the artifactType of a start-up profile artifact.
	ArtifactTypeProfile = "application/vnd.ocifs.profile.v1"
	// MediaTypeProfile is the media type of the profile blob in it.
	MediaTypeProfile = "application/vnd.ocifs.profile.layer.v1"
	// MediaTypeProfilePack is the media type of a profile's pack blob
	// (index.ProfilePack): the start-up's bytes in zstd frames.
	MediaTypeProfilePack = "application/vnd.ocifs.profile.pack.v1"
	// AnnotationProfileBytes, on the artifact manifest, is how many
	// uncompressed bytes the profile's ranges cover, for listings.
	AnnotationProfileBytes = "io.ocifs.profile.bytes"
)

// Caps on what a referrers answer may make us do.
const (
	// maxReferrerPages caps the Link-paginated pages of one referrers list.
	maxReferrerPages = 16
	// maxSmallBlobSize caps FetchBlob.
	maxSmallBlobSize = 64 << 20
)

// subjectDescriptor is the descriptor of the image's manifest, the subject
// of its referrers.
func (im *Image) subjectDescriptor() ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType: im.ManifestMediaType,
		Digest:    im.ManifestDigest,
		Size:      int64(len(im.manifestBytes)),
	}
}

// fallbackTag is the tag under which the referrers tag schema keeps the
// referrers of d: "sha256-<hex>".
func fallbackTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded()
}

// Referrers lists the manifests whose subject is this image's manifest
// (ManifestDigest, the platform manifest, not an index above it) and whose
// artifactType is artifactType ("" lists all).
//
// From a registry it asks the OCI 1.1 referrers API
// (GET /v2/<repo>/referrers/<digest>?artifactType=…, following Link
// pagination) and, when the registry does not have it (404, 405, 400, 501
// or an answer that is not an OCI image index, as distribution 2.8 gives),
// reads the image index tagged sha256-<hex> (the referrers tag schema),
// verified against its Docker-Content-Digest. Entries whose artifactType a
// registry reported wrongly (as the empty config's media type, as
// go-containerregistry's test registry does) are corrected from their
// manifest, fetched and checked with [Image.FetchReferrer]; one that does
// not check out is dropped with a warning. From an OCI layout it lists the
// manifests in index.json whose subject is the image's manifest.
//
// The list is a hint, not trusted: read each entry with
// [Image.FetchReferrer], which verifies it and checks its subject and
// artifactType. No referrers is an empty (non-nil) list, not an error.
func (im *Image) Referrers(ctx context.Context, artifactType string) ([]ocispec.Descriptor, error) {
	var (
		descs []ocispec.Descriptor
		err   error
	)
	switch s := im.src.(type) {
	case *chainSource:
		descs, err = im.chainReferrers(ctx, s, artifactType)
		switch {
		case err == nil:
			im.saveReferrers(artifactType, descs)
		case ctx.Err() == nil:
			// The registry cannot be asked: its last answer, if
			// any, is a hint as good as a new one (offline.go).
			saved, when, ok := im.savedReferrers(artifactType)
			if !ok {
				break
			}
			if !isOffline(ctx) {
				im.c.log.Warn("referrers: the registry did not answer; using the list it gave before",
					"image", im.Ref, "digest", im.ManifestDigest, "saved", when.UTC().Format(time.RFC3339), "err", err)
			}
			descs, err = saved, nil
		}
	case *layoutSource:
		descs, err = im.layoutReferrers(ctx, s, artifactType)
	default:
		return nil, fmt.Errorf("referrers of %s: not supported for %s", im.ManifestDigest, im.src)
	}
	if err != nil {
		return nil, err
	}
	out := []ocispec.Descriptor{}
	for _, d := range descs {
		if artifactType == "" || d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil
}

// chainReferrers asks each host with the referrers capability in turn
// (with none, those that may resolve tags: the fallback is a tag), and
// takes the first list that has an entry of artifactType ("" any). A host
// whose list is empty hands the question on, since a mirror may lack what
// the registry has; when every host answers, some empty, the list is empty.
func (im *Image) chainReferrers(ctx context.Context, s *chainSource, artifactType string) ([]ocispec.Descriptor, error) {
	want := capReferrers
	if len(s.candidates(want)) == 0 {
		want = capResolve
	}
	var (
		found    []ocispec.Descriptor
		answered bool
	)
	err := s.try(ctx, want, "", "referrers of "+im.ManifestDigest.String()+" in", func(ctx context.Context, e *endpoint, rs *registrySource, final bool) error {
		descs, err := im.registryReferrers(ctx, rs, artifactType)
		if err != nil {
			if final && answered {
				im.c.log.Debug("referrers: the last host failed after a mirror answered with none", "image", im.Ref, "host", e.String(), "err", err)
				return nil
			}
			return err
		}
		if !final && !slices.ContainsFunc(descs, func(d ocispec.Descriptor) bool {
			return artifactType == "" || d.ArtifactType == artifactType
		}) {
			answered = true
			return fmt.Errorf("%s: %w", e, errNoReferrers)
		}
		found = descs
		return nil
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// referrersAPIs remembers, for a while, whether each repository (by API
// root, mirror namespace and repository: one host may serve repositories
// that differ) answered the referrers API: a lookup that knows asks only
// the API or only the fallback tag, and one that does not asks both at
// once, so that no lookup pays the API's 404 and then the tag one after
// the other.
type referrersAPIs struct {
	mu    sync.Mutex
	known map[string]referrersAPIAnswer
}

type referrersAPIAnswer struct {
	has  bool
	when time.Time
}

// referrersAPIMemory is how long an answer is remembered: a registry
// upgraded to the API (whose pushers then stop writing the tag) is asked
// again after it.
const referrersAPIMemory = 10 * time.Minute

// referrersAPIKey is what referrersAPIs keys its answers by.
func referrersAPIKey(s *registrySource) string { return s.base + "\x00" + s.ns + "\x00" + s.repo }

func (a *referrersAPIs) get(s *registrySource) (has, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ans, ok := a.known[referrersAPIKey(s)]
	if !ok || time.Since(ans.when) > referrersAPIMemory {
		return false, false
	}
	return ans.has, true
}

func (a *referrersAPIs) set(s *registrySource, has bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.known == nil {
		a.known = map[string]referrersAPIAnswer{}
	}
	a.known[referrersAPIKey(s)] = referrersAPIAnswer{has, time.Now()}
}

// registryReferrers asks the referrers API, else reads the fallback tag.
// When it is not known whether s has the API, the tag is read at the same
// time, and its answer dropped if the API answers. That read is left to
// finish rather than cancelled: on HTTP/1.1 a request cancelled in flight
// costs its connection, which the next request would then have to open
// again.
func (im *Image) registryReferrers(ctx context.Context, s *registrySource, artifactType string) ([]ocispec.Descriptor, error) {
	has, known := im.c.apis.get(s)
	if known && !has {
		return im.fallbackReferrers(ctx, s)
	}
	type tagAnswer struct {
		descs []ocispec.Descriptor
		err   error
	}
	var tag chan tagAnswer
	if !known {
		tag = make(chan tagAnswer, 1) // never blocks the read: nobody may wait
		go func() {
			descs, err := im.fallbackReferrers(ctx, s)
			tag <- tagAnswer{descs, err}
		}()
	}
	descs, ok, err := im.referrersAPI(ctx, s, artifactType)
	if err != nil {
		return nil, err
	}
	im.c.apis.set(s, ok)
	if !ok {
		im.c.log.Debug("registry has no referrers API; reading the fallback tag", "image", im.Ref, "digest", im.ManifestDigest)
		if tag != nil {
			t := <-tag
			return t.descs, t.err
		}
		return im.fallbackReferrers(ctx, s)
	}
	out := descs[:0]
	for _, d := range descs {
		if d.ArtifactType == "" || d.ArtifactType == ocispec.MediaTypeEmptyJSON {
			// A registry that reports the config's media type (or
			// nothing) instead of the manifest's artifactType: ask the
			// manifest.
			m, err := im.FetchReferrer(ctx, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
			if errors.Is(err, ErrFormat) {
				im.c.log.Warn("skipping a referrer that does not check out", "image", im.Ref, "digest", d.Digest, "err", err)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("referrers of %s: %w", im.ManifestDigest, err)
			}
			d.ArtifactType = m.ArtifactType
		}
		out = append(out, d)
	}
	return out, nil
}

// referrersAPI reads GET /v2/<repo>/referrers/<digest>. ok is false when the
// registry does not implement it.
func (im *Image) referrersAPI(ctx context.Context, s *registrySource, artifactType string) (descs []ocispec.Descriptor, ok bool, err error) {
	what := fmt.Sprintf("referrers of %s@%s", s.String(), im.ManifestDigest)
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	next := s.url("referrers", im.ManifestDigest.String(), q)
	seen := map[digest.Digest]bool{}
	for page := 0; next != ""; page++ {
		if page >= maxReferrerPages {
			return nil, false, formatError("%s: more than %d pages", what, maxReferrerPages)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, next, nil)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", what, err)
		}
		req.Header.Set("Accept", ocispec.MediaTypeImageIndex)
		resp, err := s.http.Do(req)
		if err != nil {
			return nil, false, registryError(err, what, s.host, s.String(), false)
		}
		b, ctype, err := readReferrersPage(resp, what, s)
		if err != nil {
			return nil, false, err
		}
		if b == nil {
			if page > 0 {
				return nil, false, fmt.Errorf("%s: page %d: registry answered %s", what, page+1, resp.Status)
			}
			return nil, false, nil // no referrers API
		}
		im.c.stats.bytes.Add(int64(len(b)))
		list, err := parseReferrers(ctype, b)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", what, err)
		}
		for _, d := range list {
			if !seen[d.Digest] {
				seen[d.Digest] = true
				descs = append(descs, d)
			}
		}
		next, err = nextLink(resp.Header.Values("Link"), resp.Request.URL)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", what, err)
		}
	}
	return descs, true, nil
}

// readReferrersPage reads and closes a referrers API answer. It returns nil
// bytes (and no error) when the answer says the API is missing: 404, 405,
// 400, or a 200 that is not an OCI image index.
func readReferrersPage(resp *http.Response, what string, s *registrySource) ([]byte, string, error) {
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusBadRequest, http.StatusNotImplemented:
		io.CopyN(io.Discard, resp.Body, maxDrainOnRetry)
		return nil, "", nil
	default:
		err := transport.CheckError(resp, http.StatusOK)
		if err == nil {
			err = fmt.Errorf("unexpected status %s", resp.Status)
		}
		return nil, "", registryError(err, what, s.host, s.String(), false)
	}
	ctype := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ctype); err != nil || mt != ocispec.MediaTypeImageIndex {
		return nil, "", nil
	}
	if resp.ContentLength > maxManifestSize {
		return nil, "", formatError("%s: larger than 4 MiB (%d bytes)", what, resp.ContentLength)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("%s: read: %w", what, err)
	}
	if len(b) > maxManifestSize {
		return nil, "", formatError("%s: larger than 4 MiB", what)
	}
	if b == nil {
		b = []byte{}
	}
	return b, ctype, nil
}

// nextLink returns the absolute URL of a Link header's rel="next" target,
// or "" when there is none.
func nextLink(links []string, base *url.URL) (string, error) {
	for _, h := range links {
		for _, l := range strings.Split(h, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(l), ";")
			target = strings.TrimSpace(target)
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			isNext := false
			for _, p := range strings.Split(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "rel") && strings.Trim(v, `"`) == "next" {
					isNext = true
				}
			}
			if !isNext {
				continue
			}
			u, err := url.Parse(target[1 : len(target)-1])
			if err != nil {
				return "", formatError("Link %q: %v", h, err)
			}
			u = base.ResolveReference(u)
			if u.Host != base.Host || u.Scheme != base.Scheme {
				return "", formatError("Link %q: next page on another host", h)
			}
			return u.String(), nil
		}
	}
	return "", nil
}

// fallbackReferrers reads the image index tagged sha256-<hex>. Absent, it
// means no referrers.
func (im *Image) fallbackReferrers(ctx context.Context, s *registrySource) ([]ocispec.Descriptor, error) {
	tag := fallbackTag(im.ManifestDigest)
	ix, err := fetchFallbackIndex(ctx, im.c, s, tag)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ix.Manifests, nil
}

// fetchFallbackIndex fetches and checks the referrers index tagged tag. The
// error wraps ErrNotFound when the tag does not exist.
func fetchFallbackIndex(ctx context.Context, c *Client, s *registrySource, tag string) (ocispec.Index, error) {
	what := fmt.Sprintf("referrers index %s:%s", s.String(), tag)
	b, ctype, claimed, err := s.manifest(ctx, tag)
	if err != nil {
		return ocispec.Index{}, err
	}
	c.stats.bytes.Add(int64(len(b)))
	if claimed != "" {
		if err := verifyBytes(what+" (Docker-Content-Digest)", claimed, b); err != nil {
			return ocispec.Index{}, err
		}
	}
	descs, err := parseReferrers(ctype, b)
	if err != nil {
		return ocispec.Index{}, fmt.Errorf("%s: %w", what, err)
	}
	var ix ocispec.Index
	if err := json.Unmarshal(b, &ix); err != nil { // parseReferrers accepted it
		return ocispec.Index{}, formatError("%s: %v", what, err)
	}
	ix.Manifests = descs
	return ix, nil
}

// parseReferrers parses a referrers list: an OCI image index (from the
// referrers API or the fallback tag; contentType may be generic) whose
// entries are manifests of at most 4 MiB. Entries are deduplicated by
// digest.
func parseReferrers(contentType string, b []byte) ([]ocispec.Descriptor, error) {
	mt, err := DetectMediaType(contentType, b)
	if err != nil {
		return nil, fmt.Errorf("referrers: %w", err)
	}
	if mt != ocispec.MediaTypeImageIndex {
		return nil, formatError("referrers: media type %q, want %q", mt, ocispec.MediaTypeImageIndex)
	}
	ix, err := ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("referrers: %w", err)
	}
	out := make([]ocispec.Descriptor, 0, len(ix.Manifests))
	seen := make(map[digest.Digest]bool, len(ix.Manifests))
	for i, d := range ix.Manifests {
		if d.Size <= 0 || d.Size > maxManifestSize {
			return nil, formatError("referrers: manifest %d (%s): size %d, want 1 to 4 MiB", i, d.Digest, d.Size)
		}
		if d.MediaType != "" && !isManifestType(d.MediaType) && !isIndexType(d.MediaType) {
			return nil, formatError("referrers: manifest %d (%s): media type %q is not a manifest", i, d.Digest, d.MediaType)
		}
		if seen[d.Digest] {
			continue
		}
		seen[d.Digest] = true
		out = append(out, d)
	}
	return out, nil
}

// layoutReferrers lists the manifests in the layout's index.json whose
// subject is the image's manifest. Entries whose descriptor already names
// another artifactType are skipped unread.
func (im *Image) layoutReferrers(ctx context.Context, s *layoutSource, artifactType string) ([]ocispec.Descriptor, error) {
	ix, _, err := s.index()
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, d := range ix.Manifests {
		if d.Digest == im.ManifestDigest || (d.MediaType != "" && d.MediaType != ocispec.MediaTypeImageManifest) {
			continue
		}
		if artifactType != "" && d.ArtifactType != "" && d.ArtifactType != artifactType {
			continue
		}
		if d.Size <= 0 || d.Size > maxManifestSize {
			continue // not a referrer we could read
		}
		b, err := im.FetchManifest(ctx, d)
		if errors.Is(err, ErrFormat) || errors.Is(err, ErrNotFound) {
			im.c.log.Warn("skipping a manifest in index.json that does not check out", "image", im.Ref, "digest", d.Digest, "err", err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("referrers of %s: %w", im.ManifestDigest, err)
		}
		var m ocispec.Manifest
		if json.Unmarshal(b, &m) != nil || m.Subject == nil || m.Subject.Digest != im.ManifestDigest {
			continue
		}
		desc := ocispec.Descriptor{
			MediaType:    ocispec.MediaTypeImageManifest,
			Digest:       d.Digest,
			Size:         d.Size,
			ArtifactType: m.ArtifactType,
			Annotations:  m.Annotations,
		}
		if desc.ArtifactType == "" {
			desc.ArtifactType = m.Config.MediaType
		}
		out = append(out, desc)
	}
	return out, nil
}

// FetchManifest reads the manifest desc names (at most 4 MiB, and exactly
// desc.Size bytes) and verifies it against desc.Digest. The bytes are
// counted in Stats under desc.Digest.
func (im *Image) FetchManifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	what := fmt.Sprintf("manifest %s from %s", desc.Digest, im.src)
	if err := checkDescriptor("manifest", desc); err != nil {
		return nil, err
	}
	if desc.Size > maxManifestSize {
		return nil, formatError("%s: size %d is larger than 4 MiB", what, desc.Size)
	}
	_, remote := im.src.(*chainSource)
	if remote {
		if b, ok := im.c.cachedManifest(desc.Digest); ok && verifyDescriptor(what, desc, b) == nil {
			return b, nil
		}
	}
	b, _, _, err := im.src.manifest(ctx, desc.Digest.String())
	if err != nil {
		return nil, err
	}
	im.c.stats.addBlob(desc.Digest, int64(len(b)))
	if err := verifyDescriptor(what, desc, b); err != nil {
		return nil, err
	}
	if remote {
		im.c.keepManifest(desc.Digest, b)
	}
	return b, nil
}

// FetchBlob reads the whole small blob desc names (at most 64 MiB) through
// [Image.OpenBlob], so it is verified against desc.Digest and desc.Size,
// resumed after a reset, read from the cache when there, and counted in
// Stats.
func (im *Image) FetchBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	if err := checkDescriptor("blob", desc); err != nil {
		return nil, err
	}
	if desc.Size > maxSmallBlobSize {
		return nil, formatError("%s: size %d is larger than 64 MiB", im.blobWhat(desc.Digest), desc.Size)
	}
	rc, err := im.OpenBlob(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b := make([]byte, 0, desc.Size)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		b = append(b, buf[:n]...)
		if err == io.EOF {
			return b, nil // EOF comes only after the digest matched
		}
		if err != nil {
			return nil, err
		}
	}
}

// FetchReferrer fetches the referrer manifest desc names (an entry of
// [Image.Referrers]), verifies it against desc, and checks that it is an
// OCI image manifest whose subject is this image's manifest and whose
// artifactType agrees with desc's (when desc has one). The manifest's
// ArtifactType is set from its config media type when the manifest has
// none. For an [ArtifactTypeIndex] artifact, every [MediaTypeIndexLayer]
// blob must carry a valid [AnnotationLayerDigest]. Failures wrap ErrFormat.
func (im *Image) FetchReferrer(ctx context.Context, desc ocispec.Descriptor) (ocispec.Manifest, error) {
	b, err := im.FetchManifest(ctx, desc)
	if err != nil {
		return ocispec.Manifest{}, err
	}
	m, err := parseReferrer(b, im.ManifestDigest)
	if err != nil {
		return ocispec.Manifest{}, fmt.Errorf("referrer %s from %s: %w", desc.Digest, im.src, err)
	}
	if desc.ArtifactType != "" && desc.ArtifactType != m.ArtifactType {
		return ocispec.Manifest{}, formatError("referrer %s from %s: the referrers list says artifactType %q, the manifest %q",
			desc.Digest, im.src, desc.ArtifactType, m.ArtifactType)
	}
	return m, nil
}

// parseReferrer parses and checks a referrer manifest whose subject must be
// subject.
func parseReferrer(b []byte, subject digest.Digest) (ocispec.Manifest, error) {
	if err := checkSize("referrer manifest", len(b)); err != nil {
		return ocispec.Manifest{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return ocispec.Manifest{}, formatError("referrer manifest: %v", err)
	}
	if m.SchemaVersion != 2 {
		return ocispec.Manifest{}, formatError("referrer manifest: schemaVersion %d, want 2", m.SchemaVersion)
	}
	if m.MediaType != "" && m.MediaType != ocispec.MediaTypeImageManifest {
		return ocispec.Manifest{}, formatError("referrer manifest: media type %q, want %q", m.MediaType, ocispec.MediaTypeImageManifest)
	}
	if m.Subject == nil {
		return ocispec.Manifest{}, formatError("referrer manifest: no subject")
	}
	if m.Subject.Digest != subject {
		return ocispec.Manifest{}, formatError("referrer manifest: subject %s, want %s (it refers to another image)", m.Subject.Digest, subject)
	}
	if err := checkDescriptor("referrer manifest: config", m.Config); err != nil {
		return ocispec.Manifest{}, err
	}
	if m.ArtifactType == "" {
		m.ArtifactType = m.Config.MediaType
	}
	for i, l := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("referrer manifest: blob %d", i), l); err != nil {
			return ocispec.Manifest{}, err
		}
		if m.ArtifactType != ArtifactTypeIndex || l.MediaType != MediaTypeIndexLayer {
			continue
		}
		v, ok := l.Annotations[AnnotationLayerDigest]
		if !ok {
			return ocispec.Manifest{}, formatError("referrer manifest: blob %d (%s) has no %s annotation", i, l.Digest, AnnotationLayerDigest)
		}
		if err := digest.Digest(v).Validate(); err != nil {
			return ocispec.Manifest{}, formatError("referrer manifest: blob %d (%s): %s %q: %v", i, l.Digest, AnnotationLayerDigest, v, err)
		}
		if _, _, err := indexHead(l); err != nil {
			return ocispec.Manifest{}, formatError("referrer manifest: blob %d (%s): %v", i, l.Digest, err)
		}
	}
	return m, nil
}
