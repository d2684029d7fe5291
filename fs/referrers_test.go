package fs

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
)

// fakeReferrers is a referrerFetcher that counts the fetches in flight.
// The first wave (the first wave calls to arrive) is held until all of it
// is in flight at once, then ends in reverse order of arrival, so results
// kept in the order fetches end come out wrong. Each call answers a
// manifest naming the descriptor it was asked for, or fail's error for it.
type fakeReferrers struct {
	wave     int
	fail     map[digest.Digest]error
	full     chan struct{} // closed when wave calls are in flight
	fullOnce sync.Once
	ended    []chan struct{} // ended[a] is closed when arrival a of the wave ends
	arrived  atomic.Int32
	inFlight atomic.Int32
	peak     atomic.Int32
}

func newFakeReferrers(wave int, fail map[digest.Digest]error) *fakeReferrers {
	f := &fakeReferrers{wave: wave, fail: fail, full: make(chan struct{}), ended: make([]chan struct{}, wave)}
	for a := range f.ended {
		f.ended[a] = make(chan struct{})
	}
	return f
}

func (f *fakeReferrers) FetchReferrer(ctx context.Context, desc ocispec.Descriptor) (ocispec.Manifest, error) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
	}
	if a := int(f.arrived.Add(1) - 1); a < f.wave {
		if int(n) >= f.wave {
			// Give any fetch beyond the wave that a helper allowing more
			// at once has started the chance to arrive and show in peak
			// before the wave ends (a correct helper has started none).
			for range 100 {
				runtime.Gosched()
			}
			f.fullOnce.Do(func() { close(f.full) })
		}
		select {
		case <-f.full:
		case <-ctx.Done():
			return ocispec.Manifest{}, fmt.Errorf("waiting for %d fetches at once: %w", f.wave, ctx.Err())
		}
		if a+1 < f.wave {
			select {
			case <-f.ended[a+1]:
			case <-ctx.Done():
				return ocispec.Manifest{}, fmt.Errorf("waiting for the next fetch to end: %w", ctx.Err())
			}
		}
		defer close(f.ended[a])
	}
	if err := f.fail[desc.Digest]; err != nil {
		return ocispec.Manifest{}, err
	}
	return ocispec.Manifest{Annotations: map[string]string{"ref": desc.Digest.String()}}, nil
}

// TestFetchReferrers checks that fetchReferrers keeps each manifest and
// error at its ref's position, fetches each ref once, and runs up to
// maxReferrerFetches fetches at once and no more.
func TestFetchReferrers(t *testing.T) {
	broken := errors.New("invalid input: not a manifest")
	for _, tc := range []struct {
		name string
		refs int
		fail map[int]error // by position in refs
	}{
		{name: "none", refs: 0},
		{name: "one", refs: 1},
		{name: "fewer than the limit", refs: 3},
		{name: "as many as the limit", refs: maxReferrerFetches},
		{name: "more than the limit", refs: 3*maxReferrerFetches + 1},
		{name: "some fail, the rest kept", refs: 10, fail: map[int]error{0: broken, 5: fetch.ErrOffline, 9: broken}},
		{name: "all fail", refs: 5, fail: map[int]error{0: broken, 1: broken, 2: fetch.ErrOffline, 3: broken, 4: broken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refs := make([]ocispec.Descriptor, tc.refs)
			fail := map[digest.Digest]error{}
			for n := range refs {
				refs[n] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(fmt.Sprint("artifact ", n))}
				if err := tc.fail[n]; err != nil {
					fail[refs[n].Digest] = err
				}
			}
			wave := min(tc.refs, maxReferrerFetches)
			f := newFakeReferrers(wave, fail)
			// Only a helper running fewer than wave fetches at once lets
			// this expire: the fake then answers with ctx's error.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			manifests, errs := fetchReferrers(ctx, f, refs)
			if len(manifests) != tc.refs || len(errs) != tc.refs {
				t.Fatalf("fetchReferrers(%d refs) = %d manifests, %d errors, want %d each", tc.refs, len(manifests), len(errs), tc.refs)
			}
			for n, r := range refs {
				want := tc.fail[n]
				if want == nil {
					if errs[n] != nil {
						t.Errorf("ref %d: error %v, want none", n, errs[n])
					}
					if got := manifests[n].Annotations["ref"]; got != r.Digest.String() {
						t.Errorf("ref %d: manifest of %q, want that of %s", n, got, r.Digest)
					}
					continue
				}
				if !errors.Is(errs[n], want) {
					t.Errorf("ref %d: error %v, want %v", n, errs[n], want)
				}
				if manifests[n].Annotations != nil {
					t.Errorf("ref %d failed but has manifest %v, want none", n, manifests[n].Annotations)
				}
			}
			if got := int(f.arrived.Load()); got != tc.refs {
				t.Errorf("%d fetches for %d refs, want one each", got, tc.refs)
			}
			if got := int(f.peak.Load()); got != wave {
				t.Errorf("at most %d fetches ran at once, want %d (the limit is %d)", got, wave, maxReferrerFetches)
			}
		})
	}
}
