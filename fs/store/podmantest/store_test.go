package podmantest

import (
	"context"
	"testing"
	"time"
)

// TestRunFromStore lays out the small image in a fake store, runs it with
// podman configured to use the store and checks the program's output and
// that no layer blob came from the registry; then removes the image and
// checks podman released every layer (rmdir of its directory).
func TestRunFromStore(t *testing.T) {
	requirePodman(t)
	reg := newRegistry(t)
	im := smallImage(t)
	ref := reg.host + "/podmantest/small:1"
	if err := im.Push(t.Context(), reg.host, "podmantest/small", "1"); err != nil {
		t.Fatal(err)
	}
	backing := t.TempDir()
	layers, err := WriteImage(backing, ref, im)
	if err != nil {
		t.Fatal(err)
	}
	store := mountFakeStore(t, backing)
	p := startPodman(t, Options{Registries: []string{reg.host}, AdditionalLayerStore: store.mnt})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	before := len(reg.front.Requests())
	res, err := p.Run(ctx, RunSpec{Image: ref, Command: smallCommand})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("podman run from the store: first output after %v, done after %v", res.Timings.ToFirstOutput(), res.Timings.Done.Sub(res.Timings.Start))
	if res.ExitCode != 0 || string(res.Stdout) != smallOutput {
		t.Fatalf("podman run = exit %d, stdout %q, stderr %q; want 0, %q", res.ExitCode, res.Stdout, res.Stderr, smallOutput)
	}
	if got := reg.blobGETs(before); len(got) != 1 || got[0] != "/v2/podmantest/small/blobs/"+im.ConfigDesc.Digest.String() {
		t.Errorf("blob GETs = %q, want only the config's", got)
	}
	for _, e := range store.Events(0) {
		t.Logf("store: %s", e)
	}
	for _, l := range layers {
		t.Logf("layer %s: %q", relTo(backing, l.Dir), layerEvents(store.Events(0), relTo(backing, l.Dir)))
	}
	if err := p.Rmi(ctx, ref); err != nil {
		t.Fatal(err)
	}
}
