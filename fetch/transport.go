package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// Backoff parameters for retried requests.
const (
	backoffBase     = 100 * time.Millisecond
	backoffCap      = 5 * time.Second
	maxRetryAfter   = 30 * time.Second
	maxDrainOnRetry = 64 << 10 // bytes read from a failed response so its connection can be reused
)

// counters are the numbers behind [Client.Stats], shared by the transport
// and the readers.
type counters struct {
	requests atomic.Int64
	bytes    atomic.Int64

	// mu guards blobs and blobRequests.
	mu           sync.Mutex
	blobs        map[digest.Digest]int64
	blobRequests map[digest.Digest]int64
}

// addRequest counts one request sent for path: per blob too when it is a
// blob's ("/v2/<name>/blobs/<digest>").
func (c *counters) addRequest(path string) {
	c.requests.Add(1)
	i := strings.LastIndex(path, "/blobs/")
	if i < 0 {
		return
	}
	d := digest.Digest(path[i+len("/blobs/"):])
	if d.Validate() != nil {
		return
	}
	c.mu.Lock()
	if c.blobRequests == nil {
		c.blobRequests = make(map[digest.Digest]int64)
	}
	c.blobRequests[d]++
	c.mu.Unlock()
}

// addBlob counts n body bytes received for blob d.
func (c *counters) addBlob(d digest.Digest, n int64) {
	if n <= 0 {
		return
	}
	c.bytes.Add(n)
	c.mu.Lock()
	if c.blobs == nil {
		c.blobs = make(map[digest.Digest]int64)
	}
	c.blobs[d] += n
	c.mu.Unlock()
}

// retryTransport retries GET and HEAD requests that fail with a transient
// status or a connection error, limits each attempt's wait for response
// headers, and watches the body for stalls. It sits below the
// authenticating transport, so every attempt (pings and token requests
// included) is counted once.
type retryTransport struct {
	base           http.RoundTripper
	maxAttempts    int
	attemptTimeout time.Duration
	log            *slog.Logger
	stats          *counters
	// sleep waits d or until ctx is done; tests replace it to record delays.
	sleep func(ctx context.Context, d time.Duration) error
}

// stallError reports an attempt that got no response headers, or no body
// bytes, within the attempt timeout. It is a net.Error with Timeout() true,
// so it is retried and resumed like other timeouts.
type stallError struct {
	url     string
	timeout time.Duration
	body    bool
}

func (e *stallError) Error() string {
	if e.body {
		return fmt.Sprintf("GET %s: body stalled: no data for %s", e.url, e.timeout)
	}
	return fmt.Sprintf("%s: no response headers within %s", e.url, e.timeout)
}
func (e *stallError) Timeout() bool   { return true }
func (e *stallError) Temporary() bool { return true }

var _ net.Error = (*stallError)(nil)

// redactURL returns u without its query string and user info, so signed
// storage URLs and credentials never reach a log line or error message.
func redactURL(r *http.Request) string {
	u := *r.URL
	u.RawQuery = ""
	u.ForceQuery = false
	u.User = nil
	u.Fragment = ""
	return u.String()
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	retriable := (req.Method == http.MethodGet || req.Method == http.MethodHead) &&
		(req.Body == nil || req.Body == http.NoBody)
	maxAttempts := t.maxAttempts
	if n, ok := ctx.Value(attemptsKey{}).(int); ok && n > 0 && n < maxAttempts {
		maxAttempts = n // a mirror: the next host is asked instead
	}
	for attempt := 1; ; attempt++ {
		resp, err := t.once(req)
		if !retriable || attempt >= maxAttempts || ctx.Err() != nil {
			return resp, err
		}
		var delay time.Duration
		var reason string
		switch {
		case err != nil:
			if !retryableError(err) {
				return nil, err
			}
			delay = backoff(attempt)
			reason = err.Error()
		case retryableStatus(resp.StatusCode):
			delay = backoff(attempt)
			if ra, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
				delay = ra
			}
			reason = resp.Status
			io.CopyN(io.Discard, resp.Body, maxDrainOnRetry)
			resp.Body.Close()
		default:
			return resp, nil
		}
		t.log.Warn("retrying request", "url", redactURL(req), "attempt", attempt, "err", reason, "delay", delay)
		if err := t.sleep(ctx, delay); err != nil {
			return nil, err
		}
	}
}

// once sends one attempt with its own header deadline and body watchdog.
func (t *retryTransport) once(req *http.Request) (*http.Response, error) {
	t.stats.addRequest(req.URL.Path)
	ctx, cancel := context.WithCancel(req.Context())
	var headerTimeout atomic.Bool
	timer := time.AfterFunc(t.attemptTimeout, func() {
		headerTimeout.Store(true)
		cancel()
	})
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	timer.Stop()
	if headerTimeout.Load() {
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, &stallError{url: redactURL(req), timeout: t.attemptTimeout}
	}
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = newWatchdog(resp.Body, cancel, t.attemptTimeout, redactURL(req))
	return resp, nil
}

// watchdog cancels an attempt whose body read blocks longer than timeout and
// turns the resulting error into a *stallError. Only time spent inside Read
// counts: a slow consumer is not a stalled server.
type watchdog struct {
	body    io.ReadCloser
	cancel  context.CancelFunc
	timeout time.Duration
	url     string
	timer   *time.Timer
	fired   atomic.Bool
}

func newWatchdog(body io.ReadCloser, cancel context.CancelFunc, timeout time.Duration, url string) *watchdog {
	w := &watchdog{body: body, cancel: cancel, timeout: timeout, url: url}
	w.timer = time.AfterFunc(timeout, func() {
		w.fired.Store(true)
		cancel()
	})
	w.timer.Stop()
	return w
}

func (w *watchdog) Read(p []byte) (int, error) {
	if w.fired.Load() {
		return 0, &stallError{url: w.url, timeout: w.timeout, body: true}
	}
	w.timer.Reset(w.timeout)
	n, err := w.body.Read(p)
	w.timer.Stop()
	if err != nil && err != io.EOF && w.fired.Load() {
		err = &stallError{url: w.url, timeout: w.timeout, body: true}
	}
	return n, err
}

func (w *watchdog) Close() error {
	w.timer.Stop()
	err := w.body.Close()
	w.cancel()
	return err
}

// retryableStatus reports whether a response status is worth another attempt.
func retryableStatus(code int) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryableError reports whether a transport or body-read error is a
// connection problem that another attempt may not have. Caller
// cancellation is never retryable.
func retryableError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return false
}

// backoff returns the delay before attempt+1: exponential from backoffBase,
// capped at backoffCap, with the upper half jittered.
func backoff(attempt int) time.Duration {
	d := backoffCap
	if attempt < 16 {
		d = min(backoffBase<<(attempt-1), backoffCap)
	}
	return d/2 + rand.N(d/2+1)
}

// retryAfter parses a Retry-After header (delay seconds or an HTTP date),
// capped at maxRetryAfter.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	when, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(when.Sub(now), 0), maxRetryAfter), true
}

// sleepCtx waits d, returning early with ctx's error when ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
