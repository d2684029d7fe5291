package fs

import (
	"context"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// referrerFetcher fetches and checks one referrer manifest, as
// [fetch.Image.FetchReferrer] does.
type referrerFetcher interface {
	FetchReferrer(ctx context.Context, desc ocispec.Descriptor) (ocispec.Manifest, error)
}

// maxReferrerFetches is how many referrer manifests fetchReferrers asks
// for at once.
const maxReferrerFetches = 4

// fetchReferrers fetches the manifests of the artifacts refs lists from
// src, maxReferrerFetches at a time: a mount waits for them (an index
// lookup, a profile's replay), and one after the other they cost a round
// trip each. manifests[n] and errs[n] are refs[n]'s, whatever order the
// fetches end in; what a failure means is the caller's to say.
func fetchReferrers(ctx context.Context, src referrerFetcher, refs []ocispec.Descriptor) (manifests []ocispec.Manifest, errs []error) {
	manifests = make([]ocispec.Manifest, len(refs))
	errs = make([]error, len(refs))
	var g errgroup.Group
	g.SetLimit(maxReferrerFetches)
	for n, r := range refs {
		g.Go(func() error { manifests[n], errs[n] = src.FetchReferrer(ctx, r); return nil })
	}
	g.Wait() // each fetch's error is in errs
	return manifests, errs
}
