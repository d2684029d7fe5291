package fs

import (
	"bytes"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
	"github.com/ocifs/ocifs/index"
)

// packFixture pushes the indexed gzip image of profileCases, records a
// start-up that reads startupFiles and returns the image's reference, its
// files, the recorded profile and the recording image (loaded).
func packFixture(t *testing.T) (string, map[string][]byte, *index.Profile, *Image) {
	t.Helper()
	fstest.RequireFUSE(t)
	pc := profileCases()[0]
	ref, content := pc.push(t, fstest.StartRegistry(t))
	rec := resolveLoad(t, newClient(t, "", nil), ref, pc.opts(t))
	rec.StartRecording()
	readFiles(t, mountNoPassthrough(t, rec), startupFiles, content)
	p := rec.StopRecording()
	if p == nil || len(p.Ranges) == 0 {
		t.Fatalf("recorded %+v, want ranges", p)
	}
	return ref, content, p, rec
}

// pushPack pushes p with pack bytes blob (a pack that may lie) as the
// image's newest profile artifact.
func pushPack(t *testing.T, im *Image, p *index.Profile, blob []byte) {
	t.Helper()
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Fetched().PushReferrer(t.Context(), fetch.ArtifactTypeProfile, nil, []fetch.Blob{
		{Data: b, Desc: ocispec.Descriptor{MediaType: fetch.MediaTypeProfile, Digest: digest.FromBytes(b), Size: int64(len(b))}},
		{Data: blob, Desc: ocispec.Descriptor{MediaType: fetch.MediaTypeProfilePack, Digest: digest.FromBytes(blob), Size: int64(len(blob))}},
	}); err != nil {
		t.Fatal(err)
	}
}

// TestProfilePackReplay: a pushed profile carries a pack of the bytes its
// start-up read; a mount on a cold cache replays it from the pack, fetching
// fewer bytes than a replay from the layers' spans of the same profile,
// and then reads the start-up's files right without a request. Once the
// layers are complete and verified, the check of the frames used finds
// nothing wrong.
func TestProfilePackReplay(t *testing.T) {
	ref, content, p, rec := packFixture(t)
	if _, err := rec.PushProfile(t.Context(), p); err != nil {
		t.Fatalf("PushProfile: %v", err)
	}
	fetched := map[bool]int64{}
	for _, spans := range []bool{true, false} {
		opts := lazyOpts(t)
		opts.NoProfilePack = spans
		im := resolveLoad(t, newClient(t, t.TempDir(), nil), ref, opts)
		before := im.Stats()
		st := replayed(t, im)
		after := im.Stats()
		fetched[spans] = after.BytesFetched - before.BytesFetched
		if st.Source != ProfileRegistry || st.Failed != 0 || st.Ranges != len(p.Ranges) {
			t.Fatalf("spans %v: replay = %+v, want all %d ranges from the registry, none failed", spans, st, len(p.Ranges))
		}
		if (st.PackFrames > 0) == spans {
			t.Fatalf("spans %v: replay used %d pack frames", spans, st.PackFrames)
		}
		mnt := mountImage(t, im)
		before = im.Stats()
		readFiles(t, mnt, startupFiles, content)
		after = im.Stats()
		if after.Requests != before.Requests {
			t.Errorf("spans %v: reading the profiled files after the replay sent %d requests, want none", spans, after.Requests-before.Requests)
		}
		settleAll(t, im)
		st2 := im.Stats()
		if st2.VerifyFailures != 0 {
			t.Errorf("spans %v: %d verification failures after the layers completed", spans, st2.VerifyFailures)
		}
		for _, l := range im.layers {
			if l.pack.Load() != nil {
				t.Errorf("layer %s still serves the pack once complete", l.desc.Digest)
			}
		}
		readFiles(t, mnt, startupFiles, content)
	}
	t.Logf("replay fetched %d bytes from the pack, %d from the spans", fetched[false], fetched[true])
	if fetched[false] >= fetched[true] {
		t.Errorf("replay from the pack fetched %d bytes, from the spans %d: want fewer from the pack", fetched[false], fetched[true])
	}
}

// lyingPack returns the pack of p built by im with the frame holding
// file victim's first byte decoding to other bytes (its digest that of
// the new stored bytes: the lie is the author's, not the wire's), and the
// pack blob.
func lyingPack(t *testing.T, im *Image, p *index.Profile, victim *Node) (*index.ProfilePack, []byte) {
	t.Helper()
	pk, _, err := im.buildPack(t.Context(), p)
	if err != nil || pk == nil {
		t.Fatalf("buildPack: %v, %v", pk, err)
	}
	var blob []byte
	lied := false
	for i, f := range pk.Frames {
		var l *layer
		for _, o := range im.layers {
			if o.desc.Digest == p.Layers[f.Layer] {
				l = o
			}
		}
		data := make([]byte, f.Len)
		if _, err := l.readAt(t.Context(), data, f.Off, f.Off+f.Len); err != nil {
			t.Fatal(err)
		}
		if l.idx == int(victim.Layer) && f.Off <= victim.Offset && victim.Offset < f.Off+f.Len {
			data[victim.Offset-f.Off] ^= 0x55
			lied = true
		}
		stored, err := index.EncodePackFrame(data)
		if err != nil {
			t.Fatal(err)
		}
		pk.Frames[i].Stored, pk.Frames[i].Digest = int64(len(stored)), digest.FromBytes(stored)
		blob = append(blob, stored...)
	}
	if !lied {
		t.Fatalf("no frame holds %d of layer %d", victim.Offset, victim.Layer)
	}
	pk.Digest, pk.Size = digest.FromBytes(blob), int64(len(blob))
	return pk, blob
}

// TestProfilePackLies: a pack whose author lied about a file's bytes (the
// frame's digest is of the lie) is served as trusted until the layer's
// verified bytes are in hand, as an index from the registry is; then the
// check of the frames finds it, the file is refused (EIO) with one error
// line, and the layer's other files read right from the verified bytes.
func TestProfilePackLies(t *testing.T) {
	ref, content, p, rec := packFixture(t)
	victimName := startupFiles[1]
	victim, err := rec.Tree().Lookup(victimName)
	if err != nil {
		t.Fatal(err)
	}
	lied := *p
	var blob []byte
	lied.Pack, blob = lyingPack(t, rec, p, victim)
	pushPack(t, rec, &lied, blob)

	log, lines := capturingLogger(t)
	opts := lazyOpts(t)
	opts.Logger = log
	im := resolveLoad(t, newClient(t, t.TempDir(), nil), ref, opts)
	if st := replayed(t, im); st.PackFrames == 0 || st.Failed != 0 {
		t.Fatalf("replay = %+v, want it from the pack", st)
	}
	n, err := im.Tree().Lookup(victimName)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := readFile(t, im, victimName); err != nil || bytes.Equal(b, content[victimName]) {
		t.Fatalf("read %s from the lying pack: err %v, right bytes %v; the fixture's lie changes nothing", victimName, err, err == nil)
	}
	l := im.layers[n.Layer]
	if err := l.ensure(t.Context()); err != nil {
		t.Fatalf("background check: %v", err)
	}
	if _, err := readFile(t, im, victimName); err == nil {
		t.Errorf("read %s after the check: no error, want it refused", victimName)
	}
	for _, name := range startupFiles {
		if name == victimName {
			continue
		}
		if b, err := readFile(t, im, name); err != nil || !bytes.Equal(b, content[name]) {
			t.Errorf("read %s after the check: err %v, want its %d bytes", name, err, len(content[name]))
		}
	}
	if st := im.Stats(); st.VerifyFailures != 1 || st.Layers[n.Layer].Refused != 1 {
		t.Errorf("stats: verify_failures %d, layer refused %d; want 1, 1", st.VerifyFailures, st.Layers[n.Layer].Refused)
	}
	if c := lines.count("the start-up profile's pack disagrees with the verified layer"); c != 1 {
		t.Errorf("%d log lines say the pack disagrees, want 1", c)
	}
}

// TestProfilePackBadFrames: a pack blob whose bytes are not what the
// profile's frame digests say (damaged in the registry) is not served: its
// frames fail their digests, one warning says so, and the start-up's files
// read right from the layers' spans.
func TestProfilePackBadFrames(t *testing.T) {
	ref, content, p, rec := packFixture(t)
	pk, blob, err := rec.buildPack(t.Context(), p)
	if err != nil || pk == nil {
		t.Fatalf("buildPack: %v, %v", pk, err)
	}
	for i := range blob {
		blob[i] ^= 0xff
	}
	pk.Digest = digest.FromBytes(blob) // the blob is what the registry holds; its frames are not
	damaged := *p
	damaged.Pack = pk
	pushPack(t, rec, &damaged, blob)

	log, lines := capturingLogger(t)
	opts := lazyOpts(t)
	opts.Logger = log
	im := resolveLoad(t, newClient(t, t.TempDir(), nil), ref, opts)
	replayed(t, im)
	readFiles(t, mountImage(t, im), startupFiles, content)
	if c := lines.count("start-up profile's pack unusable here"); c == 0 || c > len(im.layers) {
		t.Errorf("%d warnings that the pack is unusable, want one per layer with frames", c)
	}
	if st := im.Stats(); st.VerifyFailures == 0 {
		t.Errorf("stats: no verification failure counted for the damaged frames")
	}
}
