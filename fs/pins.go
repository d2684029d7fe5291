package fs

import "github.com/ocifs/ocifs/fetch"

// CacheEntries are the cache entries a mount of im cannot do without: its
// manifest, config and image index, each layer's index, and the blob and
// uncompressed tar of a layer served whole. A daemon pins them
// ([fetch.Cache.Pin]) while it serves im. What a mount can fetch again and
// check against the digests it holds is not among them, so that a cache
// bound smaller than the image can hold: the compressed blob of a layer
// read by spans or chunks (a read goes to the registry, checked against
// the span or chunk digest), cached spans and chunks, and extracted trees
// (an open file stays readable; a tree that is gone is read through the
// layer again).
func (im *Image) CacheEntries() []fetch.PinEntry {
	fi := im.Fetched()
	pins := []fetch.PinEntry{{Digest: fi.ManifestDigest}, {Digest: fi.ConfigDigest}}
	if fi.IndexDigest != "" {
		pins = append(pins, fetch.PinEntry{Digest: fi.IndexDigest})
	}
	for _, l := range im.Layers() {
		pins = append(pins, fetch.PinEntry{Kind: fetch.KindIndex, Digest: l.Digest})
		if l.Mode == ModeWhole {
			pins = append(pins, fetch.PinEntry{Kind: fetch.KindBlob, Digest: l.Digest})
			if l.DiffID != "" {
				pins = append(pins, fetch.PinEntry{Kind: fetch.KindBlob, Digest: l.DiffID})
			}
		}
	}
	return pins
}
