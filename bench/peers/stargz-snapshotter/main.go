// Command containerd-stargz-grpc is the bench's build of
// stargz-snapshotter's containerd remote snapshotter, from the library
// module at the version go.mod pins (its cmd module is not on the module
// proxy): the snapshotter service of package service, served over gRPC as
// containerd's Snapshots API on a unix socket, with an in-memory metadata
// store and docker config credentials. Loopback registries are reached over
// plain HTTP (the resolver's rule for localhost).
//
// Usage: containerd-stargz-grpc [--address SOCK] [--root DIR] [--config FILE] [--log-level LEVEL]
// It serves until SIGINT (which also unmounts its layers) or SIGTERM.
package main

import (
	"context"
	"flag"
	golog "log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/fs"
	memorymetadata "github.com/containerd/stargz-snapshotter/metadata/memory"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	addr := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket to serve the Snapshots API on")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "directory for snapshots and the cache")
	cfgPath := flag.String("config", "", "TOML file of the snapshotter's config (service.Config); empty: the defaults")
	level := flag.String("log-level", "info", "logrus level")
	flag.Parse()
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		log.L.WithError(err).Fatal("log level")
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)
	golog.SetOutput(log.G(ctx).WriterLevel(logrus.DebugLevel))

	var cfg service.Config
	if *cfgPath != "" {
		tree, err := toml.LoadFile(*cfgPath)
		if err != nil {
			log.G(ctx).WithError(err).Fatalf("load config %s", *cfgPath)
		}
		if err := tree.Unmarshal(&cfg); err != nil {
			log.G(ctx).WithError(err).Fatalf("parse config %s", *cfgPath)
		}
	}
	if err := service.Supported(*root); err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter not supported here")
	}
	creds := []resolver.Credential{dockerconfig.NewDockerconfigKeychain(ctx)}
	fsOpts := []fs.Option{fs.WithMetricsLogLevel(logrus.InfoLevel), fs.WithMetadataStore(memorymetadata.NewReader)}
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &cfg, service.WithCredsFuncs(creds...), service.WithFilesystemOptions(fsOpts...))
	if err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter")
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	if err := os.MkdirAll(filepath.Dir(*addr), 0o700); err != nil {
		log.G(ctx).WithError(err).Fatal("socket directory")
	}
	os.Remove(*addr)
	l, err := net.Listen("unix", *addr)
	if err != nil {
		log.G(ctx).WithError(err).Fatalf("listen %s", *addr)
	}
	errc := make(chan error, 1)
	go func() { errc <- rpc.Serve(l) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		log.G(ctx).Infof("got %v", s)
		rpc.Stop()
		if s == syscall.SIGINT {
			sn.Close()
		}
	case err := <-errc:
		log.G(ctx).WithError(err).Fatal("serve")
	}
}
