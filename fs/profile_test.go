package fs

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

func TestRecorderMergesInFirstAccessOrder(t *testing.T) {
	r := &recorder{seen: map[int][]index.ProfileRange{}}
	r.add(0, 100, 50) // a file read in order...
	r.add(0, 150, 50)
	r.add(1, 0, 10)   // ...then another layer
	r.add(0, 120, 30) // read again: nothing new
	r.add(0, 0, 10)   // earlier bytes, later: a range of their own
	r.add(1, 5, 20)   // continues layer 1's range, but it is not the last one
	r.add(0, 0, 0)    // nothing
	r.add(0, -5, 10)  // nonsense
	want := []index.ProfileRange{{Layer: 0, Off: 100, Len: 100}, {Layer: 1, Off: 0, Len: 10}, {Layer: 0, Off: 0, Len: 10}, {Layer: 1, Off: 5, Len: 20}}
	if !reflect.DeepEqual(r.ranges, want) {
		t.Errorf("ranges = %v, want %v", r.ranges, want)
	}
	if want := []index.ProfileRange{{Layer: 0, Off: 0, Len: 10}, {Layer: 0, Off: 100, Len: 100}}; !reflect.DeepEqual(r.seen[0], want) {
		t.Errorf("layer 0 covered = %v, want %v", r.seen[0], want)
	}
}

// profileCase is one image format a profile is recorded and replayed on.
type profileCase struct {
	name string
	push func(t *testing.T, host string) (ref string, content map[string][]byte)
	opts func(t *testing.T) Options
}

func profileCases() []profileCase {
	return []profileCase{
		{"indexed gzip", func(t *testing.T, host string) (string, map[string][]byte) {
			layers, content := lazyLayers(7, 200)
			ref, _ := pushIndexed(t, host, layers)
			return ref, content
		}, lazyOpts},
		{"estargz", func(t *testing.T, host string) (string, map[string][]byte) {
			layers, content := lazyLayers(8, 200)
			ref, _ := pushLazy(t, host, "profile/estargz", secondsOnly(layers), fstest.LazyOptions{Format: fstest.Estargz, ChunkSize: 64 << 10})
			return ref, content
		}, lazyOpts},
	}
}

// startupFiles are what the recorded "program" reads, in order.
var startupFiles = []string{"etc/os-release", "data/f0150.txt", "data/f0003.txt", "data/f0100.txt", "data/f0101.txt", "data/f0199.txt"}

// mountNoPassthrough mounts im as a recording mount does.
func mountNoPassthrough(t *testing.T, im *Image) string {
	t.Helper()
	fstest.RequireFUSE(t)
	dir := t.TempDir()
	m, err := im.Mount(t.Context(), dir, MountOptions{NoPassthrough: true})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	unmountAtCleanup(t, m, dir)
	return dir
}

func readFiles(t *testing.T, mnt string, names []string, content map[string][]byte) {
	t.Helper()
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		if !bytes.Equal(got, content[name]) {
			t.Fatalf("read %s: %d bytes differ from the %d written", name, len(got), len(content[name]))
		}
	}
}

// TestProfileRecordPushReplay: a profile recorded while a "program" reads
// some files, pushed to distribution 2.8 (no referrers API: the fallback
// tag), is found and replayed by a mount on a cold cache before anything
// reads: once the replay has ended, reading the same files fetches nothing
// more, and they read right. The profile is then in the local cache too.
func TestProfileRecordPushReplay(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	for _, pc := range profileCases() {
		t.Run(pc.name, func(t *testing.T) {
			ref, content := pc.push(t, host)
			rec := resolveLoad(t, newClient(t, "", nil), ref, pc.opts(t))
			rec.StartRecording()
			readFiles(t, mountNoPassthrough(t, rec), startupFiles, content)
			p := rec.StopRecording()
			var want int64
			for _, name := range startupFiles {
				want += int64(len(content[name]))
			}
			if p == nil || len(p.Ranges) == 0 || p.Bytes() < want {
				t.Fatalf("recorded %+v, want ranges covering at least the %d bytes read", p, want)
			}
			t.Logf("recorded %d ranges, %d bytes, of %d layers", len(p.Ranges), p.Bytes(), len(p.Layers))
			if _, err := rec.PushProfile(t.Context(), p); err != nil {
				t.Fatalf("PushProfile: %v", err)
			}

			// The lookup starts before the load, as the front ends do.
			cache := t.TempDir()
			im, err := Resolve(t.Context(), newClient(t, cache, nil), ref, pc.opts(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { im.Close() })
			im.LookupProfile()
			if err := im.Load(t.Context()); err != nil {
				t.Fatal(err)
			}
			st := replayed(t, im)
			if st.Source != ProfileRegistry || st.Ranges != len(p.Ranges) || st.Dropped != 0 || st.Failed != 0 || st.Bytes < want {
				t.Fatalf("replay = %+v, want %d ranges from the registry, none dropped or failed, at least %d bytes", st, len(p.Ranges), want)
			}
			before := im.Stats()
			readFiles(t, mountImage(t, im), startupFiles, content)
			after := im.Stats()
			if after.Requests != before.Requests || after.BytesFetched != before.BytesFetched {
				t.Errorf("reading the profiled files after the replay sent %d requests for %d bytes, want none",
					after.Requests-before.Requests, after.BytesFetched-before.BytesFetched)
			}
			if after.Profile == nil || !after.Profile.Done {
				t.Errorf("Stats().Profile = %+v, want the finished replay", after.Profile)
			}
			b, err := newClient(t, cache, nil).Cache().ReadProfile(im.Fetched().ManifestDigest)
			if err != nil {
				t.Fatalf("the replayed profile is not in the local cache: %v", err)
			}
			got, err := index.UnmarshalProfile(b)
			if err != nil || !reflect.DeepEqual(got.Layers, p.Layers) || !reflect.DeepEqual(got.Ranges, p.Ranges) {
				t.Errorf("cached profile = %+v (err %v), want the recorded one", got, err)
			}
			// The pack holds the bytes of the layers served by spans.
			if wantPack := pc.name == "indexed gzip"; err == nil && (got.Pack != nil) != wantPack {
				t.Errorf("cached profile's pack: %+v, want one: %v", got.Pack, wantPack)
			}

			// A second mount on that cache replays the local copy.
			again := resolveLoad(t, newClient(t, cache, nil), ref, pc.opts(t))
			again.Replay()
			if st, err := again.WaitReplay(t.Context()); err != nil || st.Source != ProfileLocal {
				t.Errorf("second replay = %+v (err %v), want from the local cache", st, err)
			}
		})
	}
}

// TestProfileHostile: a profile that lies (ranges past a layer's end, of a
// layer the image lacks, enormous lengths, the most ranges the format
// allows) replays within bounds (no more than the image's bytes are
// fetched) and changes nothing that is served: every file reads as
// written.
func TestProfileHostile(t *testing.T) {
	fstest.RequireFUSE(t)
	host := fstest.StartRegistry(t)
	for _, pc := range profileCases() {
		t.Run(pc.name, func(t *testing.T) {
			ref, content := pc.push(t, host)
			cache := t.TempDir()
			im := resolveLoad(t, newClient(t, cache, nil), ref, pc.opts(t))
			var layers []digest.Digest
			var imageBlobs int64
			for _, l := range im.Layers() {
				layers = append(layers, l.Digest)
				imageBlobs += l.Size
			}
			big := im.layers[0].contentSize()
			p := &index.Profile{Layers: append(slices.Clone(layers), digest.FromString("another image's layer"))}
			foreign := len(layers)
			p.Ranges = append(p.Ranges,
				index.ProfileRange{Layer: 0, Off: big, Len: 1},                        // just past the end
				index.ProfileRange{Layer: 0, Off: 1 << 40, Len: 1 << 40},              // far past it
				index.ProfileRange{Layer: foreign, Off: 0, Len: 1 << 20},              // not this image's
				index.ProfileRange{Layer: 0, Off: 0, Len: index.MaxProfileOffset - 1}, // all of it and more
			)
			for len(p.Ranges) < index.MaxProfileRanges {
				off := int64(len(p.Ranges)) * 4099 % big
				p.Ranges = append(p.Ranges, index.ProfileRange{Layer: len(p.Ranges) % len(layers), Off: off, Len: 1})
			}
			b, err := p.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if err := im.client.Cache().WriteProfile(im.Fetched().ManifestDigest, b); err != nil {
				t.Fatal(err)
			}
			st := replayed(t, im)
			var total int64
			for _, l := range im.layers {
				total += l.contentSize()
			}
			t.Logf("hostile replay: %+v; %d blob bytes fetched of an image of %d", st, im.Stats().BytesFetched, imageBlobs)
			if st.Source != ProfileLocal || st.Dropped < 3 || st.Bytes > total {
				t.Errorf("replay = %+v, want from the cache, at least 3 ranges dropped, at most %d bytes read", st, total)
			}
			for _, l := range im.Stats().Layers {
				if l.BytesFetched > l.Size+l.Size/10 {
					t.Errorf("layer %s: replay fetched %d bytes of a %d-byte blob", l.Digest, l.BytesFetched, l.Size)
				}
			}
			names := make([]string, 0, len(content))
			for name := range content {
				names = append(names, name)
			}
			slices.Sort(names)
			readFiles(t, mountImage(t, im), names, content)
			if st := im.Stats(); st.VerifyFailures != 0 {
				t.Errorf("verify_failures = %d, want 0", st.VerifyFailures)
			}
		})
	}
}

// TestProfileOffAndAbsent: with NoProfile nothing is looked for; without a
// profile anywhere the replay ends at once, having done nothing.
func TestProfileOffAndAbsent(t *testing.T) {
	fstest.RequireFUSE(t) // the registry runs as for the other tests
	host := fstest.StartRegistry(t)
	ref, _ := profileCases()[0].push(t, host)
	for _, noProfile := range []bool{true, false} {
		t.Run(fmt.Sprintf("NoProfile=%v", noProfile), func(t *testing.T) {
			opts := Options{Logger: testLogger(t), NoProfile: noProfile}
			im := resolveLoad(t, newClient(t, "", nil), ref, opts)
			before := im.Stats().Requests
			im.LookupProfile()
			st := replayed(t, im)
			if !st.Done || st.Source != "" || st.Ranges != 0 || st.Err != "" {
				t.Errorf("replay = %+v, want done with nothing replayed", st)
			}
			if sent := im.Stats().Requests - before; noProfile && sent != 0 {
				t.Errorf("NoProfile replay sent %d requests, want 0", sent)
			}
		})
	}
}

// replayed replays im's start-up profile and returns what the replay did.
func replayed(t *testing.T, im *Image) ProfileStats {
	t.Helper()
	im.Replay()
	st, err := im.WaitReplay(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// pushedWithProfile pushes pc's image to a new registry, with a profile of
// one 4 KiB range of its first layer beside it, and returns the image's
// reference, its files' content and the image as loaded to push it.
func pushedWithProfile(t *testing.T, pc profileCase) (string, map[string][]byte, *Image) {
	t.Helper()
	fstest.RequireFUSE(t) // the registry runs as for the other tests
	ref, content := pc.push(t, fstest.StartRegistry(t))
	im := resolveLoad(t, newClient(t, "", nil), ref, pc.opts(t))
	p := &index.Profile{Layers: []digest.Digest{im.layers[0].desc.Digest}, Ranges: []index.ProfileRange{{Layer: 0, Off: 0, Len: 4096}}}
	if _, err := im.PushProfile(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	return ref, content, im
}

// TestProfileBadArtifactIgnored: a profile artifact in the registry whose
// blob is not a profile (newer than a good one) is ignored with a warning;
// the good one is replayed, and the mount serves as ever.
func TestProfileBadArtifactIgnored(t *testing.T) {
	pc := profileCases()[0]
	ref, content, im := pushedWithProfile(t, pc)
	junk := []byte("OCIFSPRF\x00\x01\xff\xff\xff\xff\x0f not a profile")
	if _, err := im.Fetched().PushReferrer(t.Context(), fetch.ArtifactTypeProfile,
		map[string]string{ocispec.AnnotationCreated: time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)},
		[]fetch.Blob{{Data: junk, Desc: ocispec.Descriptor{MediaType: fetch.MediaTypeProfile, Digest: digest.FromBytes(junk), Size: int64(len(junk))}}}); err != nil {
		t.Fatal(err)
	}
	fresh := resolveLoad(t, newClient(t, "", nil), ref, pc.opts(t))
	st := replayed(t, fresh)
	if st.Source != ProfileRegistry || st.Ranges != 1 || st.Failed != 0 {
		t.Errorf("replay = %+v, want the good profile's one range", st)
	}
	readFiles(t, mountImage(t, fresh), startupFiles, content)
}

// TestReplayPlan: ranges near each other in a layer are read as one
// segment, due when its first range is; segments keep the profile's
// order; long ones are cut into replayPiece reads; what lies outside the
// image is dropped, and so is what passes the image's size.
func TestReplayPlan(t *testing.T) {
	mk := func(idx int, size int64) *layer {
		l := &layer{idx: idx, table: &index.Table{TarSize: size}}
		l.desc.Digest = digest.FromString(fmt.Sprint("layer ", idx))
		l.rd = &spanReader{l: l}
		return l
	}
	l0, l1 := mk(0, 64<<20), mk(1, 1<<20)
	im := &Image{layers: []*layer{l0, l1}}
	p := &index.Profile{
		Layers: []digest.Digest{l1.desc.Digest, l0.desc.Digest, digest.FromString("elsewhere")},
		Ranges: []index.ProfileRange{
			{Layer: 1, Off: 10 << 20, Len: 100},          // l0 @10M: a segment of its own, first
			{Layer: 0, Off: 0, Len: 4096},                // l1 @0 ...
			{Layer: 1, Off: 1 << 20, Len: 10 << 20},      // l0 @1M, 10 MiB: joins the @10M one, cut in three
			{Layer: 0, Off: 4096 + replayGap, Len: 4096}, // ... joins l1 @0 (exactly replayGap apart)
			{Layer: 0, Off: 1<<20 - 10, Len: 1 << 30},    // cut at l1's end, joins too
			{Layer: 0, Off: 1 << 20, Len: 1},             // past l1's end: dropped
			{Layer: 2, Off: 0, Len: 1},                   // not this image's: dropped
			{Layer: 1, Off: 30 << 20, Len: 100},          // l0 @30M, far: a segment of its own
		},
	}
	plan, dropped := im.replayPlan(p)
	type read struct {
		layer  int
		off, n int64
		ranges int
	}
	var got []read
	for _, r := range plan {
		got = append(got, read{r.l.idx, r.off, r.n, r.ranges})
	}
	want := []read{
		{0, 1 << 20, replayPiece, 2}, {0, 1<<20 + replayPiece, replayPiece, 0}, {0, 1<<20 + 2*replayPiece, 11<<20 - (1<<20 + 2*replayPiece), 0},
		{1, 0, 4096 + replayGap + 4096, 2},
		{1, 1<<20 - 10, 10, 1},
		{0, 30 << 20, 100, 1},
	}
	if !reflect.DeepEqual(got, want) || dropped != 2 {
		t.Errorf("plan = %v, dropped %d; want %v, dropped 2", got, dropped, want)
	}
}

// holdUntil is a transport that holds each request whose path ends with
// hold until one whose path ends with until has been sent, or wait has
// passed (then timedOut is set and the request goes on).
type holdUntil struct {
	hold, until string
	wait        time.Duration
	seen        chan struct{}
	once        sync.Once
	timedOut    atomic.Bool
}

func (h *holdUntil) RoundTrip(req *http.Request) (*http.Response, error) {
	switch {
	case strings.HasSuffix(req.URL.Path, h.until):
		h.once.Do(func() { close(h.seen) })
	case strings.HasSuffix(req.URL.Path, h.hold):
		select {
		case <-h.seen:
		case <-time.After(h.wait):
			h.timedOut.Store(true)
		}
	}
	return http.DefaultTransport.RoundTrip(req)
}

// TestProfileLookupBeforePlan: with StartProfileLookup, Resolve starts
// the search for the profile before it plans the layers. The transport
// holds the plan's fetch of the index artifact's manifest until the
// profile's blob has been asked for: Resolve gets past it only if the
// search runs beside the plan. Without the option (the control) the hold
// times out, so the check tells the two apart.
func TestProfileLookupBeforePlan(t *testing.T) {
	pc := profileCases()[0]
	ref, _, im := pushedWithProfile(t, pc)
	find := func(artifactType string) ocispec.Descriptor {
		refs, err := im.Fetched().Referrers(t.Context(), artifactType)
		if err != nil || len(refs) != 1 {
			t.Fatalf("referrers of type %s: %v, %v", artifactType, refs, err)
		}
		return refs[0]
	}
	idx := find(fetch.ArtifactTypeIndex)
	m, err := im.Fetched().FetchReferrer(t.Context(), find(fetch.ArtifactTypeProfile))
	if err != nil || len(m.Layers) != 2 || m.Layers[0].MediaType != fetch.MediaTypeProfile || m.Layers[1].MediaType != fetch.MediaTypeProfilePack {
		t.Fatalf("profile artifact: %+v, %v", m, err)
	}
	for _, early := range []bool{true, false} {
		t.Run(fmt.Sprintf("StartProfileLookup=%v", early), func(t *testing.T) {
			h := &holdUntil{hold: "/manifests/" + idx.Digest.String(), until: "/blobs/" + m.Layers[0].Digest.String(), seen: make(chan struct{}), wait: 10 * time.Second}
			if !early {
				h.wait = 2 * time.Second
			}
			opts := pc.opts(t)
			opts.StartProfileLookup = early
			fresh := resolveLoad(t, newClient(t, "", h), ref, opts)
			if early && h.timedOut.Load() {
				t.Error("the plan waited for the profile's blob: the search did not start before the plan")
			}
			if !early && !h.timedOut.Load() {
				t.Error("without StartProfileLookup the profile's blob was asked for during the plan")
			}
			st := replayed(t, fresh)
			if st.Source != ProfileRegistry || st.Ranges != 1 || st.Failed != 0 {
				t.Errorf("replay = %+v, want the pushed profile's one range from the registry", st)
			}
		})
	}
}
