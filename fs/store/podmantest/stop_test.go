package podmantest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// TestStop runs a detached container from the store and stops the
// instance two ways: Stop of a working podman must remove the container
// through podman and force nothing; with podman unusable (its binary
// swapped for /bin/false, as if it crashed on every call) Stop must kill
// conmon and the container itself and end the namespace, which takes the
// container's overlay mount with it.
func TestStop(t *testing.T) {
	requirePodman(t)
	f := newStoreFixture(t, smallImage(t), "podmantest/stop")
	for _, broken := range []bool{false, true} {
		name := "healthy"
		if broken {
			name = "podman broken"
		}
		t.Run(name, func(t *testing.T) {
			p := startPodman(t, Options{Registries: []string{f.reg.host}, AdditionalLayerStore: f.store.mnt})
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			id, err := p.RunDetached(ctx, RunSpec{Image: f.ref, Command: []string{critest.BusyboxPath, "sleep", "3600"}})
			if err != nil {
				t.Fatal(err)
			}
			pid, err := p.ContainerPID(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			mounts, err := p.NamespaceMounts(p.Root)
			if err != nil {
				t.Fatal(err)
			}
			if len(mounts) == 0 {
				t.Fatalf("no mount under %s in the namespace while a container runs", p.Root)
			}
			procs, err := p.Processes()
			if err != nil {
				t.Fatal(err)
			}
			var conmon int
			for _, q := range procs {
				if comm(q) == "conmon" {
					conmon = q
				}
			}
			if conmon == 0 {
				t.Fatalf("no conmon among the instance's processes %v", procs)
			}
			holder := p.NamespacePID()
			if broken {
				p.Binary = "/bin/false"
			}
			if err := p.Stop(); err != nil {
				t.Fatal(err)
			}
			t.Logf("Leftovers: %q", p.Leftovers)
			for _, q := range []int{pid, conmon, holder} {
				if processAlive(q) {
					t.Errorf("pid %d (%s) alive after Stop", q, comm(q))
				}
			}
			forced := strings.Join(p.Leftovers, "\n")
			switch {
			case !broken && forced != "":
				t.Errorf("Stop of a working podman had to force:\n%s", forced)
			case broken && (!strings.Contains(forced, "containers not removed through podman") || !strings.Contains(forced, "(conmon) killed")):
				t.Errorf("Stop with podman broken should have killed conmon; it forced:\n%s", forced)
			}
			// t.Cleanup's checkNothingLeft checks processes, cgroups and
			// host mounts.
		})
	}
}
