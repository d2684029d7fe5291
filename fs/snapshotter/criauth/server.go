package criauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxMsgSize bounds the messages relayed either way: kubelet's own limit
// for CRI (16 MiB), which a node's ListImages can approach.
const maxMsgSize = 16 << 20

// stopTimeout is how long Stop lets calls in progress (a PullImage can take
// minutes) finish before cutting them off.
const stopTimeout = 10 * time.Second

// Server is the CRI image service proxy started by [Serve].
type Server struct {
	listen string
	store  *Store
	log    *slog.Logger
	grpc   *grpc.Server
	up     *grpc.ClientConn
	done   chan struct{}
	// serveErr is set before done is closed.
	serveErr error

	stopOnce sync.Once
	stopErr  error
}

// Serve listens on the unix socket listen and serves runtime.v1.ImageService
// there, forwarding every call to the CRI socket upstream (containerd's,
// usually /run/containerd/containerd.sock) and recording each PullImage's
// credentials in memory ([Server.Keychain] answers with them). Both may be
// given as a path or as unix:///path. upstream need not answer yet: it is
// dialled on the first call, and calls fail with Unavailable until it
// does. A stale socket file at listen is replaced; one another process
// still answers on is an error. log (nil discards) gets one line per pull
// and never a credential.
func Serve(listen, upstream string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	listen, upstream = strings.TrimPrefix(listen, "unix://"), strings.TrimPrefix(upstream, "unix://")
	if listen == "" || upstream == "" {
		return nil, errors.New("cri image service: needs a socket to listen on and containerd's CRI socket")
	}
	if filepath.Clean(listen) == filepath.Clean(upstream) {
		return nil, fmt.Errorf("cri image service: %s is both the socket to listen on and the one to forward to", listen)
	}
	up, err := grpc.NewClient("unix://"+upstream,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("cri image service: upstream %s: %w", upstream, err)
	}
	l, err := listenUnix(listen)
	if err != nil {
		up.Close()
		return nil, fmt.Errorf("cri image service: %w", err)
	}
	s := &Server{
		listen: listen,
		store:  NewStore(log),
		log:    log,
		grpc:   grpc.NewServer(grpc.MaxRecvMsgSize(maxMsgSize), grpc.MaxSendMsgSize(maxMsgSize)),
		up:     up,
		done:   make(chan struct{}),
	}
	runtimeapi.RegisterImageServiceServer(s.grpc, &imageService{
		up: runtimeapi.NewImageServiceClient(up), store: s.store, log: log,
	})
	go func() {
		defer close(s.done)
		if err := s.grpc.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.serveErr = err
		}
	}()
	log.Info("criauth: CRI image service listening", "address", listen, "upstream", upstream)
	return s, nil
}

// listenUnix listens on the unix socket path (mode 0660, as containerd's),
// creating its directory and replacing a stale socket.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen on %s: a file that is not a socket is there; remove it or choose another path", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: another process serves this socket (a second ocifs snapshotter?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Address is the path of the socket the server listens on.
func (s *Server) Address() string { return s.listen }

// Keychain returns a keychain answering, for a repository, with the
// credentials of its latest PullImage through this server, and otherwise
// with fallback's (nil: none; usually authn.DefaultKeychain); see the
// package documentation for the whole order.
func (s *Server) Keychain(fallback authn.Keychain) authn.Keychain {
	return s.store.Keychain(fallback)
}

// Stop stops serving: calls in progress get stopTimeout to finish, then
// are cut off. The socket is removed and the credentials stay readable
// through keychains already made (they die with the process). It returns
// the error that ended serving early, if one did.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		stopped := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(stopped)
		}()
		timer := time.NewTimer(stopTimeout)
		select {
		case <-stopped:
			timer.Stop()
		case <-timer.C:
			s.log.Warn("criauth: calls still in progress at stop; cutting them off", "after", stopTimeout)
			s.grpc.Stop()
			<-stopped
		}
		<-s.done
		s.stopErr = errors.Join(s.serveErr, s.up.Close())
		if err := os.Remove(s.listen); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.stopErr = errors.Join(s.stopErr, err)
		}
	})
	return s.stopErr
}

// imageService forwards runtime.v1.ImageService to up. Requests and
// answers pass unchanged, errors with their gRPC status; PullImage records
// its credentials on the way.
type imageService struct {
	// An RPC added to CRI after this package was written answers
	// Unimplemented until it is forwarded here too.
	runtimeapi.UnimplementedImageServiceServer
	up    runtimeapi.ImageServiceClient
	store *Store
	log   *slog.Logger
}

func (is *imageService) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	image := req.GetImage().GetImage()
	start := time.Now()
	finish, recorded, why := is.store.Begin(image, req.GetAuth())
	resp, err := is.up.PullImage(ctx, req)
	finish(err == nil)
	attrs := []any{"image", image, "credentials", why, "duration", time.Since(start).Round(time.Millisecond)}
	switch {
	case err != nil && recorded:
		is.log.Info("criauth: pull failed; its credentials are forgotten", append(attrs, "err", err)...)
	case err != nil:
		is.log.Info("criauth: pull failed", append(attrs, "err", err)...)
	default:
		is.log.Info("criauth: pulled", append(attrs, "id", resp.GetImageRef())...)
	}
	return resp, err
}

func (is *imageService) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return is.up.ListImages(ctx, req)
}

func (is *imageService) StreamImages(req *runtimeapi.StreamImagesRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamImagesResponse]) error {
	up, err := is.up.StreamImages(stream.Context(), req)
	if err != nil {
		return err
	}
	for {
		m, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
}

func (is *imageService) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return is.up.ImageStatus(ctx, req)
}

func (is *imageService) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	return is.up.RemoveImage(ctx, req)
}

func (is *imageService) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return is.up.ImageFsInfo(ctx, req)
}
