package snapshotter

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/index"
)

// TestRemoteReplaysProfile: an image the Remote loads for a Prepare has its
// start-up profile (here in the cache) replayed, as a mount's is.
func TestRemoteReplaysProfile(t *testing.T) {
	f := newRemoteFixture(t)
	c, err := fetch.New(fetch.Options{CacheDir: f.cache, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := &index.Profile{
		Layers: []digest.Digest{f.im.LayerDescs[0].Digest, digest.FromString("not this image's")},
		Ranges: []index.ProfileRange{{Layer: 0, Off: 0, Len: 1024}, {Layer: 1, Off: 0, Len: 1 << 20}},
	}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cache().WriteProfile(f.im.ManifestDesc.Digest, b); err != nil {
		t.Fatal(err)
	}
	loaded := make(chan *fs.Image, 1)
	r, err := NewRemote(t.Context(), RemoteOptions{Client: c, FS: f.lfs, OnLoad: func(im *fs.Image, _ time.Duration) {
		loaded <- im
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close remote: %v", err)
		}
	})
	if _, err := r.Prepare(t.Context(), "p0", f.labels(0)); err != nil {
		t.Fatal(err)
	}
	im := <-loaded
	st, err := im.WaitReplay(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Source != fs.ProfileLocal || st.Ranges != 1 || st.Dropped != 1 || st.Failed != 0 || !st.Done {
		t.Errorf("replay = %+v, want the cache's profile: one range replayed, the other layer's dropped", st)
	}
	if err := r.Release(t.Context(), "p0"); err != nil {
		t.Fatal(err)
	}
}
