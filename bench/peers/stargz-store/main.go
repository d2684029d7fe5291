// Command stargz-store is the bench's build of stargz-snapshotter's
// additional layer store for podman (containers/storage), from the store
// package of stargz-snapshotter's library module at the version go.mod pins.
// Its own cmd module is not on the module proxy, so this small main does
// what that command does with the bench's defaults: an in-memory metadata
// store, docker config credentials, plain HTTP for loopback registries
// (the resolver's rule for localhost), verification off (the store cannot
// verify: podman checks the DiffID itself).
//
// Usage: stargz-store [--root DIR] [--config FILE] [--log-level LEVEL] MOUNTPOINT
// It mounts, prints "ready" on stdout, and unmounts on SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	golog "log"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/fs/config"
	memorymetadata "github.com/containerd/stargz-snapshotter/metadata/memory"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/containerd/stargz-snapshotter/store"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
)

type fileConfig struct {
	config.Config
	Resolver resolver.Config `toml:"resolver"`
}

func main() {
	root := flag.String("root", "/var/lib/stargz-store", "directory for the store's cache")
	cfgPath := flag.String("config", "", "TOML file of stargz-store's config (fs/config.Config and [resolver]); empty: the defaults")
	level := flag.String("log-level", "info", "logrus level")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: stargz-store [--root DIR] [--config FILE] MOUNTPOINT")
		os.Exit(2)
	}
	mnt := flag.Arg(0)
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stargz-store:", err)
		os.Exit(2)
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)
	golog.SetOutput(log.G(ctx).WriterLevel(logrus.DebugLevel))

	var cfg fileConfig
	if *cfgPath != "" {
		tree, err := toml.LoadFile(*cfgPath)
		if err != nil {
			log.G(ctx).WithError(err).Fatalf("load config %s", *cfgPath)
		}
		if err := tree.Unmarshal(&cfg); err != nil {
			log.G(ctx).WithError(err).Fatalf("parse config %s", *cfgPath)
		}
	}
	cfg.Config.DisableVerification = true // what stargz-store itself forces
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		log.G(ctx).WithError(err).Fatal("mount point")
	}
	hosts := resolver.RegistryHostsFromConfig(cfg.Resolver, dockerconfig.NewDockerconfigKeychain(ctx))
	lm, err := store.NewLayerManager(ctx, *root, hosts, memorymetadata.NewReader, cfg.Config)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("layer manager")
	}
	if err := store.Mount(ctx, mnt, lm, cfg.Config.Debug); err != nil {
		log.G(ctx).WithError(err).Fatalf("mount %s", mnt)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	if err := syscall.Unmount(mnt, 0); err != nil {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}
