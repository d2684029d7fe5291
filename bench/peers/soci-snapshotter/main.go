// Command soci-snapshotter-grpc is the bench's build of the SOCI
// snapshotter, containerd's remote snapshotter for gzip images with a SOCI
// index, from the soci-snapshotter library module at the version go.mod
// pins (its cmd module is not on the module proxy): the snapshotter
// service of package service served over gRPC as containerd's Snapshots
// API on a unix socket, with the bolt metadata store under the root and
// docker config credentials, its configuration defaults otherwise.
//
// Usage: soci-snapshotter-grpc [--address SOCK] [--root DIR] [--config FILE] [--log-level LEVEL]
// It serves until SIGINT (which also unmounts its layers) or SIGTERM.
package main

import (
	"context"
	"flag"
	"io"
	golog "log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/awslabs/soci-snapshotter/config"
	"github.com/awslabs/soci-snapshotter/fs"
	"github.com/awslabs/soci-snapshotter/metadata"
	"github.com/awslabs/soci-snapshotter/service"
	"github.com/awslabs/soci-snapshotter/service/keychain/dockerconfig"
	"github.com/awslabs/soci-snapshotter/service/resolver"
	"github.com/awslabs/soci-snapshotter/ztoc"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
)

func main() {
	addr := flag.String("address", "/run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock", "unix socket to serve the Snapshots API on")
	root := flag.String("root", "/var/lib/soci-snapshotter-grpc", "directory for snapshots, metadata and the cache")
	cfgPath := flag.String("config", config.DefaultConfigPath, "TOML configuration (a missing default file means the defaults)")
	level := flag.String("log-level", "info", "logrus level")
	flag.Parse()
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		log.L.WithError(err).Fatal("log level")
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)
	golog.SetOutput(log.G(ctx).WriterLevel(logrus.DebugLevel))

	cfg, err := config.NewConfigFromToml(*cfgPath)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("config")
	}
	if err := service.Supported(*root); err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter not supported here")
	}
	if err := os.MkdirAll(*root, 0o700); err != nil {
		log.G(ctx).WithError(err).Fatal("root")
	}
	db, err := bolt.Open(filepath.Join(*root, "metadata.db"), 0o600, &bolt.Options{
		NoFreelistSync: true, InitialMmapSize: 64 << 20, FreelistType: bolt.FreelistMapType, NoSync: cfg.MetadataDBNoSync})
	if err != nil {
		log.G(ctx).WithError(err).Fatal("metadata store")
	}
	mt := func(sr *io.SectionReader, toc ztoc.TOC, opts ...metadata.Option) (metadata.Reader, error) {
		return metadata.NewReader(db, sr, toc, opts...)
	}
	creds := []resolver.Credential{dockerconfig.NewDockerConfigKeychain(ctx)}
	sn, err := service.NewSociSnapshotterService(ctx, *root, &cfg.ServiceConfig,
		service.WithCredsFuncs(creds...), service.WithFilesystemOptions(fs.WithMetadataStore(mt)))
	if err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter")
	}
	// containerd's namespace travels in the gRPC metadata; the service
	// reads it from the context, as SOCI's own command arranges.
	rpc := grpc.NewServer(grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if ns, ok := namespaces.Namespace(ctx); ok {
			ctx = namespaces.WithNamespace(ctx, ns)
		}
		return h(ctx, req)
	}))
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
