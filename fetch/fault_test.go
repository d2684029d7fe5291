package fetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// seen is one request as a fault handler saw it.
type seen struct {
	Method, Path, Range, Auth string
}

// rule is one fault: when match accepts a request and times is not used
// up, do answers it instead of the registry.
type rule struct {
	match func(r *http.Request) bool
	times int // how many requests it takes; < 0 for all
	do    func(w http.ResponseWriter, r *http.Request, next http.Handler)
}

// faultHandler wraps a registry handler and injects faults.
type faultHandler struct {
	next http.Handler

	// mu guards rules and log.
	mu    sync.Mutex
	rules []*rule
	log   []seen
}

func (f *faultHandler) add(r *rule) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, r)
}

func (f *faultHandler) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.log...)
}

func (f *faultHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.log = append(f.log, seen{r.Method, r.URL.Path, r.Header.Get("Range"), r.Header.Get("Authorization")})
	var hit *rule
	for _, ru := range f.rules {
		if ru.times != 0 && ru.match(r) {
			if ru.times > 0 {
				ru.times--
			}
			hit = ru
			break
		}
	}
	f.mu.Unlock()
	if hit != nil {
		hit.do(w, r, f.next)
		return
	}
	f.next.ServeHTTP(w, r)
}

// blobGET matches GETs of blob d.
func blobGET(d digest.Digest) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+d.String())
	}
}

// manifestGET matches GETs of manifests whose reference ends with ref.
func manifestGET(ref string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/"+ref)
	}
}

// status answers code with the given headers.
func status(code int, hdr ...string) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.WriteHeader(code)
	}
}

// record runs next on r and returns its response.
func record(next http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	return rec
}

// copyHeader sends rec's headers and status.
func copyHeader(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
}

// resetAfter sends the registry's headers and the first n body bytes, then
// resets the TCP connection.
func resetAfter(n int) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := record(next, r)
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", rec.Code, http.StatusText(rec.Code))
		rec.Header().Write(buf)
		buf.WriteString("\r\n")
		buf.Write(rec.Body.Bytes()[:n])
		buf.Flush()
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST
		}
	}
}

// closeConn closes the connection without answering.
func closeConn(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	conn.Close()
}

// truncateTo answers with a complete response whose body is only the first
// n bytes (Content-Length says n): a body cut short.
func truncateTo(n int) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := record(next, r)
		body := rec.Body.Bytes()[:n]
		rec.Header().Set("Content-Length", strconv.Itoa(len(body)))
		copyHeader(w, rec)
		w.Write(body)
	}
}

// flipByte answers with the registry's body with byte i inverted.
func flipByte(i int) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := record(next, r)
		body := bytes.Clone(rec.Body.Bytes())
		if i < len(body) {
			body[i] ^= 0xff
		}
		copyHeader(w, rec)
		w.Write(body)
	}
}

// ignoreRange serves the whole blob with 200, whatever Range asked.
func ignoreRange(w http.ResponseWriter, r *http.Request, next http.Handler) {
	r.Header.Del("Range")
	next.ServeHTTP(w, r)
}

// stallAfter sends the headers and n body bytes, then blocks until the
// client goes away or release is closed.
func stallAfter(n int, release <-chan struct{}) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := record(next, r)
		copyHeader(w, rec)
		w.Write(rec.Body.Bytes()[:n])
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
}

// basicAuth demands user:pass on every request.
func basicAuth(next http.Handler, user, pass string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// staticKeychain returns fixed credentials for every registry.
type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// testRegistry is an in-process registry behind a fault handler.
type testRegistry struct {
	host   string // "127.0.0.1:port"
	faults *faultHandler
	reg    http.Handler
}

// newTestRegistry starts a registry (with opts, e.g.
// registry.WithReferrersSupport); wrap (optional) goes outside the fault
// handler, e.g. to demand auth.
func newTestRegistry(t testing.TB, wrap func(http.Handler) http.Handler, opts ...registry.Option) *testRegistry {
	t.Helper()
	reg := registry.New(append([]registry.Option{registry.Logger(nopLogger())}, opts...)...)
	fh := &faultHandler{next: reg}
	var h http.Handler = fh
	if wrap != nil {
		h = wrap(fh)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &testRegistry{host: strings.TrimPrefix(srv.URL, "http://"), faults: fh, reg: reg}
}

// push writes img to the registry as repoTag (e.g. "app:v1") and returns
// its manifest digest.
func (tr *testRegistry) push(t testing.TB, repoTag string, img v1.Image, opts ...remote.Option) digest.Digest {
	t.Helper()
	ref, err := name.ParseReference(tr.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String())
}

// putManifest stores raw bytes under ref with the given Content-Type.
func (tr *testRegistry) putManifest(t testing.TB, repo, ref, mediaType string, b []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v2/%s/manifests/%s", tr.host, repo, ref), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	rec := httptest.NewRecorder()
	tr.reg.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Fatalf("PUT manifest %s: %d %s", ref, rec.Code, rec.Body)
	}
}

// randomBytes returns n random bytes.
func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// testImage builds an image whose layers hold the given bytes (as opaque
// blobs: fetch does not look inside), with mediaType for the manifest.
func testImage(t testing.TB, mt types.MediaType, layers ...[]byte) v1.Image {
	t.Helper()
	img := empty.Image
	if mt != "" {
		img = mutate.MediaType(img, mt)
		if mt == types.OCIManifestSchema1 {
			img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		}
	}
	layerType := types.DockerLayer
	if mt == types.OCIManifestSchema1 {
		layerType = types.OCILayer
	}
	for _, b := range layers {
		var err error
		img, err = mutate.AppendLayers(img, static.NewLayer(b, layerType))
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// testClient returns a client with a fresh cache that never really sleeps
// between attempts; delays returns the waits it was asked for.
func testClient(t testing.TB, opts Options) (c *Client, delays func() []time.Duration) {
	t.Helper()
	if opts.CacheDir == "" {
		opts.CacheDir = t.TempDir()
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var ds []time.Duration
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		ds = append(ds, d)
		mu.Unlock()
		return ctx.Err()
	}
	return c, func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Duration(nil), ds...)
	}
}

// layerDesc returns the descriptor of layer i of img.
func layerDesc(t testing.TB, img v1.Image, i int) ocispec.Descriptor {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	l := m.Layers[i]
	return ocispec.Descriptor{MediaType: string(l.MediaType), Digest: digest.Digest(l.Digest.String()), Size: l.Size}
}

// readAll reads a whole blob through OpenBlob.
func readAll(t testing.TB, im *Image, desc ocispec.Descriptor) ([]byte, error) {
	t.Helper()
	rc, err := im.OpenBlob(t.Context(), desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// nopLogger silences the registry's log.
func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// logBuffer is a slog.Logger writing text into a buffer safe for
// concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// remoteAuth pushes with basic credentials.
func remoteAuth(user, pass string) remote.Option {
	return remote.WithAuth(&authn.Basic{Username: user, Password: pass})
}

// remoteWriteIndex pushes an image index and its images.
func remoteWriteIndex(ref string, ix v1.ImageIndex) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	return remote.WriteIndex(r, ix)
}
