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
// manifest and returns, per layer digest, the descriptor of its index blob.
// Where several artifacts index one layer, the newest (by its created
// annotation) wins.
func (im *Image) remoteIndexes(ctx context.Context) (map[digest.Digest]ocispec.Descriptor, error) {
	refs, err := im.img.Referrers(ctx, fetch.ArtifactTypeIndex)
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest]ocispec.Descriptor{}
	created := map[digest.Digest]string{}
	for _, r := range refs {
		m, err := im.img.FetchReferrer(ctx, r)
		if err != nil {
			im.log.Warn("index artifact unusable; ignored", "digest", r.Digest, "err", err)
			continue
		}
		when := m.Annotations[ocispec.AnnotationCreated]
		for _, d := range m.Layers {
			if d.MediaType != fetch.MediaTypeIndexLayer {
				continue
			}
			ld := digest.Digest(d.Annotations[fetch.AnnotationLayerDigest])
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
	var blobs []fetch.Blob
	for _, l := range im.layers {
		if l.whole() {
			continue
		}
		b, err := l.tbl().MarshalBinary()
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("layer %s: encoding index: %w", l.desc.Digest, err)
		}
		blobs = append(blobs, fetch.Blob{Data: b, Desc: ocispec.Descriptor{
			MediaType:   fetch.MediaTypeIndexLayer,
			Digest:      digest.FromBytes(b),
			Size:        int64(len(b)),
			Annotations: map[string]string{fetch.AnnotationLayerDigest: l.desc.Digest.String()},
		}})
	}
	if len(blobs) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%s: no gzip or plain tar layer to index", im.img.Ref)
	}
	annotations := map[string]string{ocispec.AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano)}
	return im.img.PushReferrer(ctx, fetch.ArtifactTypeIndex, annotations, blobs)
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
