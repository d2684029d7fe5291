// Command stargz-store is stargz-snapshotter v0.15.1's store package behind
// a minimal main (its cmd module is not on the module proxy): plain-HTTP
// registries only, in-memory metadata. For ocifs's timing comparison only.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/stargz-snapshotter/fs/config"
	memorymetadata "github.com/containerd/stargz-snapshotter/metadata/memory"
	"github.com/containerd/stargz-snapshotter/store"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: stargzstore MOUNTPOINT ROOT")
		os.Exit(2)
	}
	ctx := context.Background()
	hosts := func(spec reference.Spec) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{Client: &http.Client{Transport: http.DefaultTransport}, Host: spec.Hostname(), Scheme: "http", Path: "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve}}, nil
	}
	lm, err := store.NewLayerManager(ctx, os.Args[2], hosts, memorymetadata.NewReader, config.Config{NoPrometheus: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := store.Mount(ctx, os.Args[1], lm, false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ok")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	syscall.Unmount(os.Args[1], syscall.MNT_DETACH)
}
