package fs

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
)

// referrerAnnotation is set, on our copy of an index blob's descriptor, to
// the digest of the artifact manifest that listed it, for logs and inspect.
const referrerAnnotation = "io.ocifs.referrer"

// remoteIndexes finds the ocifs index artifacts that refer to this image's
// manifest, in the image's own repository and then in each index
// repository (Options.IndexRepos), and returns, per layer digest, the
// descriptor of its index blob and where it is. A layer indexed in an
// earlier repository is not looked for in a later one; within one, where
// several artifacts index one layer, the newest (by its created annotation)
// wins. A repository that cannot be asked is logged and skipped: the error
// is only the context's.
func (im *Image) remoteIndexes(ctx context.Context) (map[digest.Digest]remoteIndex, error) {
	out := map[digest.Digest]remoteIndex{}
	for _, src := range im.indexSources() {
		if im.allIndexed(out) {
			break
		}
		found, err := im.remoteIndexesIn(ctx, src)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			im.log.Warn("looking for index artifacts", "source", src.Source(), "err", err)
			continue
		}
		for ld, d := range found {
			if _, seen := out[ld]; !seen {
				out[ld] = remoteIndex{desc: d, from: src}
			}
		}
	}
	return out, nil
}

// remoteIndexesIn is remoteIndexes for one repository, src.
func (im *Image) remoteIndexesIn(ctx context.Context, src *fetch.Image) (map[digest.Digest]ocispec.Descriptor, error) {
	refs, err := src.Referrers(ctx, fetch.ArtifactTypeIndex)
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest]ocispec.Descriptor{}
	created := map[digest.Digest]string{}
	for _, r := range refs {
		m, err := src.FetchReferrer(ctx, r)
		if err != nil {
			im.log.Warn("index artifact unusable; ignored", "source", src.Source(), "digest", r.Digest, "err", err)
			continue
		}
		when := m.Annotations[ocispec.AnnotationCreated]
		for _, d := range m.Layers {
			if d.MediaType != fetch.MediaTypeIndexLayer {
				continue
			}
			ld := digest.Digest(d.Annotations[fetch.AnnotationLayerDigest])
			if !im.hasLayer(ld) {
				im.log.Warn("index artifact indexes a layer the image does not have; that index ignored",
					"source", src.Source(), "digest", r.Digest, "layer", ld)
				continue
			}
			if _, seen := out[ld]; seen && when <= created[ld] {
				continue
			}
			d.Annotations = maps.Clone(d.Annotations)
			d.Annotations[referrerAnnotation] = r.Digest.String()
			out[ld], created[ld] = d, when
		}
	}
	return out, nil
}

// PushIndex stores the index of every layer that has one (gzip and plain
// tar layers) in the registry, as an artifact whose subject is the image's
// manifest, so that a mount anywhere finds it and reads lazily from the
// first read. The image must be loaded.
func (im *Image) PushIndex(ctx context.Context) (ocispec.Descriptor, error) {
	return im.pushIndex(ctx, im.img)
}

// pushIndex stores the indexes as an artifact in dst's repository.
func (im *Image) pushIndex(ctx context.Context, dst *fetch.Image) (ocispec.Descriptor, error) {
	blobs, err := im.indexBlobs(im.layers)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return pushIndexBlobs(ctx, dst, blobs)
}

// indexBlobs encodes the index of each of layers that has one (gzip and
// plain tar layers) as an index blob.
func (im *Image) indexBlobs(layers []*layer) ([]fetch.Blob, error) {
	var blobs []fetch.Blob
	for _, l := range layers {
		if l.whole() {
			continue
		}
		b, err := l.tbl().MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("layer %s: encoding index: %w", l.desc.Digest, err)
		}
		blobs = append(blobs, fetch.Blob{Data: b, Desc: ocispec.Descriptor{
			MediaType:   fetch.MediaTypeIndexLayer,
			Digest:      digest.FromBytes(b),
			Size:        int64(len(b)),
			Annotations: map[string]string{fetch.AnnotationLayerDigest: l.desc.Digest.String()},
		}})
	}
	if len(blobs) == 0 {
		return nil, fmt.Errorf("%s: no gzip or plain tar layer to index", im.img.Ref)
	}
	return blobs, nil
}

// pushIndexBlobs pushes blobs as an index artifact referring to dst's
// manifest, in dst's repository.
func pushIndexBlobs(ctx context.Context, dst *fetch.Image, blobs []fetch.Blob) (ocispec.Descriptor, error) {
	annotations := map[string]string{ocispec.AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano)}
	return dst.PushReferrer(ctx, fetch.ArtifactTypeIndex, annotations, blobs)
}

// IndexSizes returns, per layer with an index, the encoded index size and
// the layer's uncompressed size, for `ocifs index build` to report.
func (im *Image) IndexSizes() (indexBytes, tarBytes map[digest.Digest]int64, err error) {
	indexBytes, tarBytes = map[digest.Digest]int64{}, map[digest.Digest]int64{}
	for _, l := range im.layers {
		if l.whole() {
			continue
		}
		t := l.tbl()
		b, err := t.MarshalBinary()
		if err != nil {
			return nil, nil, err
		}
		indexBytes[l.desc.Digest], tarBytes[l.desc.Digest] = int64(len(b)), t.TarSize
	}
	return indexBytes, tarBytes, nil
}
