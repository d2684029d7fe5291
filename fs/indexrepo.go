package fs

import (
	"context"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
)

// An index repository holds the ocifs indexes of images that live
// elsewhere, where one cannot push (docker.io/library/python): each index
// artifact there has the image's manifest as its subject, exactly as it
// would in the image's own repository, and is found by that manifest
// digest (the referrers API of the index repository, or its sha256-<hex>
// fallback tag). Nothing found there is trusted more than an index from
// the image's repository: the artifact must name this image's manifest, its
// blobs must match their digests, and each index must name its layer's
// digest and DiffID (layer.valid); anything else is logged and the layer
// streams.

// remoteIndex is an index blob found for a layer, and the repository it is
// in (the image's own, or an index repository).
type remoteIndex struct {
	desc ocispec.Descriptor
	from *fetch.Image
}

// indexSources returns where index artifacts are looked for, in order: the
// image's own repository, then each of Options.IndexRepos, then
// Options.PushIndexTo. A repository
// that cannot be named (its registry's mirror configuration is wrong) is
// logged and left out.
func (im *Image) indexSources() []*fetch.Image {
	out := []*fetch.Image{im.img}
	repos := im.opts.IndexRepos
	if p := im.opts.PushIndexTo; p != "" && !slices.Contains(repos, p) {
		repos = append(slices.Clip(repos), p)
	}
	for _, repo := range repos {
		there, err := im.img.InRepository(repo)
		if err != nil {
			im.log.Warn("index repository unusable; not looked in", "source", repo, "err", err)
			continue
		}
		out = append(out, there)
	}
	return out
}

// indexWhere names src for a layer's why: "the registry" for the image's
// own repository, else "index repository HOST/REPO".
func (im *Image) indexWhere(src *fetch.Image) string {
	if src == nil || src == im.img {
		return "the registry"
	}
	return "index repository " + src.Source()
}

// hasLayer reports whether d is the digest of one of the image's layers.
func (im *Image) hasLayer(d digest.Digest) bool {
	for _, l := range im.layers {
		if l.desc.Digest == d {
			return true
		}
	}
	return false
}

// allIndexed reports whether found has an index for every layer that could
// use one (none is looked for elsewhere then): zstd layers have none.
func (im *Image) allIndexed(found map[digest.Digest]remoteIndex) bool {
	for _, l := range im.layers {
		if _, ok := found[l.desc.Digest]; !ok && l.compression != "zstd" {
			return false
		}
	}
	return true
}

// indexImage is where the layer's registry index (remote) is: its reads go
// there, not necessarily to the image's own repository.
func (l *layer) indexImage() *fetch.Image {
	if l.remoteFrom != nil {
		return l.remoteFrom
	}
	return l.im.img
}

// PushIndexTo is [Image.PushIndex] into another repository ("HOST/REPO"),
// an index repository: the artifact's subject is still this image's
// manifest, so a mount of the image given that repository
// (Options.IndexRepos) finds it by the manifest digest, whatever repository
// the image itself is in. Credentials and mirrors for repo's registry come
// from the client's configuration, as for an image there.
func (im *Image) PushIndexTo(ctx context.Context, repo string) (ocispec.Descriptor, error) {
	dst, err := im.img.InRepository(repo)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return im.pushIndex(ctx, dst)
}

// builtIndexBlobs returns, when Options.PushIndexTo is set, the encoded
// indexes of the layers streamed and indexed here (each verified against
// its digest and DiffID before its table was kept); nil when there are
// none or no push is wanted. It encodes now, while the tables still have
// their entries (before ReleaseEntries).
func (im *Image) builtIndexBlobs() []fetch.Blob {
	if im.opts.PushIndexTo == "" {
		return nil
	}
	var streamed []*layer
	for _, l := range im.layers {
		l.mu.Lock()
		built := l.built && l.table != nil && l.table.Spans != nil
		l.mu.Unlock()
		if built && l.mode == ModeStream && l.chunks() == nil {
			streamed = append(streamed, l)
		}
	}
	if len(streamed) == 0 {
		return nil
	}
	blobs, err := im.indexBlobs(streamed)
	if err != nil {
		im.log.Warn("encoding the indexes built here; not pushed", "source", im.opts.PushIndexTo, "err", err)
		return nil
	}
	return blobs
}

// pushBuilt pushes blobs (builtIndexBlobs) to Options.PushIndexTo as an
// index artifact of this image.
func (im *Image) pushBuilt(ctx context.Context, blobs []fetch.Blob) {
	start := time.Now()
	dst, err := im.img.InRepository(im.opts.PushIndexTo)
	if err == nil {
		var d ocispec.Descriptor
		if d, err = pushIndexBlobs(ctx, dst, blobs); err == nil {
			im.log.Info("pushed the indexes built here", "source", dst.Source(), "digest", d.Digest, "layers", len(blobs),
				"duration", time.Since(start).Round(time.Millisecond))
			return
		}
	}
	if ctx.Err() != nil {
		im.log.Info("push of the indexes built here cancelled", "source", im.opts.PushIndexTo)
		return
	}
	im.log.Warn("pushing the indexes built here; other machines will stream these layers too", "source", im.opts.PushIndexTo,
		"layers", len(blobs), "err", err)
}
