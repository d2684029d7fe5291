package criauth

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeImages is an upstream ImageService that keeps the requests it got
// and answers canned responses; PullImage succeeds only with user/secret.
type fakeImages struct {
	runtimeapi.UnimplementedImageServiceServer

	// duringPull, when set, runs inside PullImage before it answers.
	duringPull func(*runtimeapi.PullImageRequest)

	// mu guards got.
	mu  sync.Mutex
	got []proto.Message
}

func (f *fakeImages) record(m proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, m)
}

func (f *fakeImages) last() proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got[len(f.got)-1]
}

var (
	fakeImage = &runtimeapi.Image{Id: "sha256:1234", RepoTags: []string{"reg.example/app:1"}, Size: 42,
		Spec: &runtimeapi.ImageSpec{Image: "reg.example/app:1", Annotations: map[string]string{"a": "b"}}}
	fakeFs = &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{
		Timestamp: 7, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/x"}, UsedBytes: &runtimeapi.UInt64Value{Value: 99}}}}
)

func (f *fakeImages) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	f.record(req)
	if f.duringPull != nil {
		f.duringPull(req)
	}
	if req.GetAuth().GetUsername() != "user" || req.GetAuth().GetPassword() != "secret" {
		return nil, status.Error(codes.Unknown, "pull: unexpected status: 401 Unauthorized")
	}
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:1234"}, nil
}

func (f *fakeImages) ListImages(_ context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	f.record(req)
	return &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{fakeImage, fakeImage}}, nil
}

func (f *fakeImages) StreamImages(req *runtimeapi.StreamImagesRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamImagesResponse]) error {
	f.record(req)
	for range 3 {
		if err := stream.Send(&runtimeapi.StreamImagesResponse{Images: []*runtimeapi.Image{fakeImage}}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeImages) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	f.record(req)
	if req.GetImage().GetImage() == "missing" {
		return nil, status.Error(codes.NotFound, "image \"missing\" not found")
	}
	return &runtimeapi.ImageStatusResponse{Image: fakeImage, Info: map[string]string{"k": "v"}}, nil
}

func (f *fakeImages) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	f.record(req)
	return &runtimeapi.RemoveImageResponse{}, nil
}

func (f *fakeImages) ImageFsInfo(_ context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	f.record(req)
	return fakeFs, nil
}

// socketDir is a temporary directory short enough for unix socket paths.
func socketDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "criauth-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startFake serves f on a socket in dir and returns its path.
func startFake(t *testing.T, dir string, f *fakeImages) string {
	t.Helper()
	p := filepath.Join(dir, "upstream.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return p
}

// dial returns an ImageService client of the socket at p.
func dial(t *testing.T, p string) runtimeapi.ImageServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+p, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewImageServiceClient(conn)
}

func startProxy(t *testing.T, f *fakeImages) (*Server, runtimeapi.ImageServiceClient, *logBuffer) {
	t.Helper()
	dir := socketDir(t)
	up := startFake(t, dir, f)
	log, logs := newLog()
	s, err := Serve("unix://"+filepath.Join(dir, "sub", "proxy.sock"), up, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return s, dial(t, s.Address()), logs
}

func TestServerForwardsEveryCall(t *testing.T) {
	f := &fakeImages{}
	_, cl, _ := startProxy(t, f)
	ctx := t.Context()
	check := func(what string, req, resp, wantResp proto.Message, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := f.last(); !proto.Equal(got, req) {
			t.Errorf("%s: upstream got %v, sent %v", what, got, req)
		}
		if !proto.Equal(resp, wantResp) {
			t.Errorf("%s: answered %v, upstream said %v", what, resp, wantResp)
		}
	}
	listReq := &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: "reg.example/app"}}}
	list, err := cl.ListImages(ctx, listReq)
	check("ListImages", listReq, list, &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{fakeImage, fakeImage}}, err)

	statusReq := &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example/app:1"}, Verbose: true}
	st, err := cl.ImageStatus(ctx, statusReq)
	check("ImageStatus", statusReq, st, &runtimeapi.ImageStatusResponse{Image: fakeImage, Info: map[string]string{"k": "v"}}, err)

	rmReq := &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example/app:1"}}
	rm, err := cl.RemoveImage(ctx, rmReq)
	check("RemoveImage", rmReq, rm, &runtimeapi.RemoveImageResponse{}, err)

	fsReq := &runtimeapi.ImageFsInfoRequest{}
	fsInfo, err := cl.ImageFsInfo(ctx, fsReq)
	check("ImageFsInfo", fsReq, fsInfo, fakeFs, err)

	pullReq := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example/app:1"},
		Auth:          &runtimeapi.AuthConfig{Username: "user", Password: "secret", ServerAddress: "https://reg.example"},
		SandboxConfig: &runtimeapi.PodSandboxConfig{Hostname: "h"}}
	pulled, err := cl.PullImage(ctx, pullReq)
	check("PullImage", pullReq, pulled, &runtimeapi.PullImageResponse{ImageRef: "sha256:1234"}, err)

	streamReq := &runtimeapi.StreamImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: "x"}}}
	stream, err := cl.StreamImages(ctx, streamReq)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("StreamImages: %v", err)
		}
		if !proto.Equal(m, &runtimeapi.StreamImagesResponse{Images: []*runtimeapi.Image{fakeImage}}) {
			t.Errorf("StreamImages: message %v", m)
		}
		n++
	}
	if n != 3 {
		t.Errorf("StreamImages: %d messages, upstream sent 3", n)
	}
	if got := f.last(); !proto.Equal(got, streamReq) {
		t.Errorf("StreamImages: upstream got %v", got)
	}
}

// Upstream errors come back with their code and message.
func TestServerPassesErrorsThrough(t *testing.T) {
	f := &fakeImages{}
	_, cl, logs := startProxy(t, f)
	_, err := cl.ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "missing"}})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != `image "missing" not found` {
		t.Errorf("ImageStatus of a missing image: %v, want upstream's NotFound", err)
	}
	_, err = cl.PullImage(t.Context(), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "reg.example/app:1"},
		Auth: basic("user", "wrong-password")})
	if st := status.Convert(err); st.Code() != codes.Unknown || !strings.Contains(st.Message(), "401 Unauthorized") {
		t.Errorf("PullImage with wrong credentials: %v, want upstream's 401", err)
	}
	if !strings.Contains(logs.String(), "pull failed; its credentials are forgotten") {
		t.Errorf("no log line for the failed pull:\n%s", logs)
	}
	if strings.Contains(logs.String(), "wrong-password") {
		t.Errorf("the password is in the log:\n%s", logs)
	}
}

// Credentials of a pull answer while it runs (the snapshotter fetches its
// layers during PullImage), stay after it succeeded, and are gone after it
// failed; none reach the log.
func TestServerKeychain(t *testing.T) {
	f := &fakeImages{}
	s, cl, logs := startProxy(t, f)
	kc := s.Keychain(nil)
	const repo = "reg.example:5000/team/app"
	var during string
	f.duringPull = func(*runtimeapi.PullImageRequest) { during = resolve(t, kc, repo).Password }

	_, err := cl.PullImage(t.Context(), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: repo + ":1"},
		Auth: basic("user", "wrong-password")})
	if err == nil {
		t.Fatal("pull with the wrong password succeeded")
	}
	if during != "wrong-password" {
		t.Errorf("during the failing pull the keychain said %q, want the pull's own password", during)
	}
	if got := resolve(t, kc, repo); got.Username != "" {
		t.Errorf("after the failed pull: %+v, want anonymous", got)
	}

	if _, err := cl.PullImage(t.Context(), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: repo + ":1"},
		Auth: basic("user", "secret")}); err != nil {
		t.Fatal(err)
	}
	if during != "secret" {
		t.Errorf("during the pull the keychain said %q, want its password", during)
	}
	if got := resolve(t, kc, repo); got.Username != "user" || got.Password != "secret" {
		t.Errorf("after the pull: %+v, want user/secret", got)
	}
	for _, secret := range []string{"wrong-password", "secret"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds %q:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs.String(), "criauth: pulled") {
		t.Errorf("no log line for the pull:\n%s", logs)
	}
}

func TestServeSocket(t *testing.T) {
	dir := socketDir(t)
	up := startFake(t, dir, &fakeImages{})
	p := filepath.Join(dir, "proxy.sock")

	// A stale socket (nothing listens) is replaced.
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	s, err := Serve(p, up, nil)
	if err != nil {
		t.Fatalf("serve over a stale socket: %v", err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	// A socket a server answers on is not taken over.
	if s2, err := Serve(p, up, nil); err == nil {
		s2.Stop()
		t.Error("a second Serve on a live socket succeeded")
	} else if !strings.Contains(err.Error(), "another process serves") {
		t.Errorf("second Serve: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Stop: %v", err)
	}
	// Not a socket: refused, left alone.
	if err := os.WriteFile(p, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Serve(p, up, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "keep" {
		t.Error("the regular file was changed")
	}
	if _, err := Serve(up, up, nil); err == nil {
		t.Error("Serve forwarding to its own socket succeeded")
	}
}

// With containerd not there yet, calls fail with Unavailable and the
// proxy stays up.
func TestServerUpstreamMissing(t *testing.T) {
	dir := socketDir(t)
	s, err := Serve(filepath.Join(dir, "proxy.sock"), filepath.Join(dir, "nothing.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	cl := dial(t, s.Address())
	_, err = cl.ImageFsInfo(t.Context(), &runtimeapi.ImageFsInfoRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("ImageFsInfo without upstream: %v, want Unavailable", err)
	}
}
