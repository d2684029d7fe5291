// Package fetch reads OCI images from registries and OCI image layouts on
// disk, and keeps what it fetched in a digest-addressed cache.
//
// # What it owns
//
//   - References: `[registry/]repository[:tag][@sha256:…]` with Docker's
//     defaults, and `oci:PATH[:tag]` / `oci:PATH@sha256:…` layouts
//     ([ParseReference]).
//   - Manifests and image indexes (OCI and Docker schema 2), narrowed to a
//     platform, and image configs ([Client.Resolve], [ParseManifest],
//     [ParseIndex], [ParseConfig]).
//   - Registry access: authentication through an authn.Keychain, retries
//     with backoff for 429/5xx and connection errors, per-attempt timeouts
//     and a stall watchdog, redirects (credentials never follow them to
//     another host), Range reads and resumption ([Image.OpenBlob],
//     [Image.FetchRange], and [Image.FetchParts] for several verified
//     pieces in one request).
//   - Referrers of an image manifest, such as ocifs layer indexes
//     ([ArtifactTypeIndex]): listing through the OCI 1.1 referrers API or
//     the sha256-<hex> fallback tag ([Image.Referrers]), reading them
//     verified ([Image.FetchReferrer], [Image.FetchManifest],
//     [Image.FetchBlob]) and storing them ([Image.PushReferrer]), in a
//     registry or an OCI layout.
//   - The digest-addressed on-disk cache ([Cache]).
//
// # Invariants
//
// Every byte it returns was checked against a digest the caller supplied:
// a manifest against the pinned digest, the registry's
// Docker-Content-Digest or the parent index's descriptor; a config against
// the manifest's descriptor; a blob stream against its layer descriptor
// (the reader returns io.EOF only after the digest matched); a range
// against the span digest passed to FetchRange, each part of FetchParts
// against its own digest; a referrer against its descriptor, and against
// the image's manifest digest as its subject. A referrers list itself is
// only a hint: nothing in it is returned as verified until fetched. The
// cache admits a blob only after its digest matched, by rename from a temp
// file, so a bad or failed write never replaces or shadows a good entry.
//
// Errors caused by outside bytes wrap [ErrFormat] and read "invalid input:
// …"; a digest mismatch is a [*DigestError]. Absent things wrap
// [ErrNotFound], refused credentials [ErrUnauthorized], and say how to log
// in.
//
// # What it must not do
//
// It knows no tar, gzip, zstd or FUSE, and imports neither index nor fs.
// It never logs credentials or signed URL query strings, and never sends
// registry credentials to a host a request was redirected to.
//
// # Example
//
//	c, err := fetch.New(fetch.Options{Logger: log})
//	im, err := c.Resolve(ctx, "alpine:3.20")
//	rc, err := im.OpenBlob(ctx, im.Layers()[0])
//	defer rc.Close()
//	_, err = io.Copy(dst, rc) // err is nil only if the layer digest matched
package fetch
