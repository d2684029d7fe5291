package store

import (
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// TestStoreReplaysProfile: an image the store loads has its start-up
// profile (here in the cache) replayed, as a mount's is.
func TestStoreReplaysProfile(t *testing.T) {
	fstest.RequireFUSE(t)
	im, err := fstest.Build(fstest.Corners(), fstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	if err := im.Push(t.Context(), reg.host, "store/profile", "1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/store/profile:1"
	s := mountStore(t, filepath.Join(shortDir(t), "store"))
	p := &index.Profile{Layers: []digest.Digest{im.LayerDescs[0].Digest}, Ranges: []index.ProfileRange{{Layer: 0, Off: 0, Len: 512}}}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.client.Cache().WriteProfile(im.ManifestDesc.Digest, b); err != nil {
		t.Fatal(err)
	}
	img, err := s.acquire(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	st, err := img.im.WaitReplay(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Source != fs.ProfileLocal || st.Ranges != 1 || st.Failed != 0 || !st.Done {
		t.Errorf("replay = %+v, want the cache's profile's one range", st)
	}
}
