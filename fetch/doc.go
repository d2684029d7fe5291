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
//     registry or an OCI layout; in the image's own repository or, through
//     [Image.InRepository], in another one (an index repository for images
//     one cannot push to), still keyed and checked by the manifest digest.
//   - The digest-addressed on-disk cache ([Cache]): pins of what live
//     processes use, least-recently-used trims ([Cache.Trim]), and a size
//     bound held at write time ([Cache.SetMaxBytes], bound.go says exactly
//     what it guarantees).
//   - Counting blob bytes by what a caller fetched them for
//     ([CountBytes]).
//   - Registry mirrors as node engineers already configure them for
//     containerd (a hosts.toml tree, [Options.HostsDir]) and podman
//     (registries.conf, [Options.RegistriesConf]); see Mirrors below.
//
// # Mirrors
//
// With a mirror configuration, each manifest and blob request goes to the
// configured hosts in order and then to the registry (unless the
// configuration replaces it: hosts.toml's server, registries.conf's
// location). A host that cannot be reached, answers 5xx, 404 or a 401 the
// keychain cannot satisfy hands the request to the next one at once (no
// retries but on the last host), logged once per image at Warn with the
// host and why. Range reads go the same way. Each host gets the keychain's
// credentials for its own name: a registry's never reach its mirror.
//
// Digests make any mirror safe for content. Bytes a mirror sends that do
// not match are never returned: where fetch still holds them (manifests,
// the config, FetchRange, FetchParts, CheckRange) it asks the next host
// at once; a blob stream (OpenBlob) has handed its bytes out before the
// digest can be checked, so it fails with a [*DigestError] naming the
// mirror, and the next open of that blob skips it. Tags are another
// matter: a tag resolved through a mirror is only as trustworthy as the
// mirror, so tags go only to hosts the configuration trusts with them
// (hosts.toml's "resolve" capability; for registries.conf, mirrors are
// used for tag pulls unless pull-from-mirror = "digest-only" or the
// registry's mirror-by-digest-only says otherwise). The manifest digest a
// tag resolves to then pins everything else.
//
// Both files are read once, by [New], and checked strictly: an unknown key
// or a bad value is an error naming the file and key. Neither is read
// unless named: a node's registries.conf is written for podman and may
// redirect or block pulls ocifs makes for containerd. For a --hosts-dir or
// --registries-conf flag, the usual paths are [DefaultHostsDir] and
// [DefaultRegistriesConf] (whose drop-ins in registries.conf.d are read
// with it).
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
// # Without the registry
//
// A manifest fetched and verified is kept in the cache under its digest,
// like the config, so a reference pinned by digest (and an index's child,
// and a referrer's artifact manifest) resolves from the cache, checked
// again, without a request: a daemon restarting while the registry is down
// loads its pinned image. A tag is resolved by the registry only. The last
// referrers list of an image is saved and given back when the registry
// does not answer, and [Image.CheckRangeKept] keeps ranges a load needs
// each time (a TOC). Under an [Offline] context nothing is asked of any
// registry (offline.go).
//
// Errors caused by outside bytes wrap [ErrFormat] and read "invalid input:
// …"; a digest mismatch is a [*DigestError], which wraps [ErrDigest] and
// ErrFormat. Absent things wrap [ErrNotFound], refused credentials
// [ErrUnauthorized], and say how to log in.
//
// # Errors shared with index and fs
//
// fetch and index do not import each other, yet both report bad outside
// bytes and digest mismatches, and fs and cmd branch on those without caring
// which package found them. So ErrFormat and ErrDigest are kinds, not
// identities: each of fetch, index (with index/toc) and fs declares its own
// ErrFormat ("invalid input") and ErrDigest ("digest mismatch"), each with an
// exported ErrorKind() string method and an Is method that matches any error
// reporting the same kind. errors.Is(err, fetch.ErrFormat) therefore holds
// for an error wrapping index.ErrFormat or fs.ErrFormat, and the other way
// round. Each package builds only its own error types (fs checks digests
// with its own fs.DigestError, not this one); to read a mismatch's details
// use errors.As with the type of the package that reported it.
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
