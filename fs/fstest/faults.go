package fstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// Faults is a fault-injecting front for a registry: an [http.Handler] that
// proxies every request to an upstream registry unless a [Rule] matches it,
// in which case the rule's [Fault] answers instead. Tests serve it with
// httptest.NewServer; bench/faultproxy serves it on a port. It is safe for
// concurrent use: rules may be added and removed while requests run.
//
// A Faults can also demand HTTP basic credentials ([Faults.RequireBasicAuth])
// and records every request it saw, with its Authorization header, so a test
// can check where credentials went.
type Faults struct {
	upstream *url.URL
	proxy    *httputil.ReverseProxy

	// mu guards everything below.
	mu       sync.Mutex
	rules    []*Rule
	seen     []Request
	user     string
	pass     string
	released chan struct{} // closed by Release: stalled answers end
	changed  chan struct{} // closed and replaced when a request arrives
}

// Request is one request as a Faults saw it.
type Request struct {
	Method, Path, Range, Auth string
	// Fault is the kind of the fault that answered it; "" when proxied.
	Fault FaultKind
}

// FaultKind names what a [Fault] does.
type FaultKind string

// The faults a [Faults] can inject.
const (
	// Status answers Fault.Status (429, 500, 503, ...) with an empty body
	// and, for 429 and 503, "Retry-After: 0".
	Status FaultKind = "status"
	// Reset sends the upstream's headers and Fault.N body bytes, then
	// resets the TCP connection.
	Reset FaultKind = "reset"
	// Truncate answers a complete, well-formed response whose body is only
	// the first Fault.N bytes of the upstream's (Content-Length says N).
	Truncate FaultKind = "truncate"
	// Stall sends the headers and Fault.N body bytes, then sends nothing
	// until the client gives up or [Faults.Release] is called.
	Stall FaultKind = "stall"
	// IgnoreRange drops the Range header: the whole blob comes back with
	// 200.
	IgnoreRange FaultKind = "ignore-range"
	// WrongRange answers a Range request for bytes a-b with bytes
	// (a+N)-(b+N) and a Content-Range that says so: not what was asked.
	WrongRange FaultKind = "wrong-range"
	// Flip inverts body byte Fault.N (the middle byte when N < 0 or past
	// the end).
	Flip FaultKind = "flip"
	// Redirect answers 307 to Fault.URL with the request's path and a
	// signed-looking query appended; Fault.URL is normally another host.
	Redirect FaultKind = "redirect"
	// Replace answers 200 with Fault.Body (and the upstream's
	// Content-Type): a manifest of another digest than the one pinned, say.
	Replace FaultKind = "replace"
)

// Fault is what a matching [Rule] does instead of proxying.
type Fault struct {
	Kind   FaultKind
	Status int    // Status: the HTTP status
	N      int64  // Reset, Truncate, Stall: body bytes sent; WrongRange: shift; Flip: byte index
	URL    string // Redirect: the base URL to send the client to
	Body   []byte // Replace: the body
}

// Rule is one fault and the requests it applies to. A zero field matches
// anything.
type Rule struct {
	// Method matches the request method exactly ("GET", "HEAD").
	Method string
	// Path matches when the request path contains it ("/blobs/",
	// "/manifests/v1", a digest).
	Path string
	// Ranged, when set, matches only requests with (true) or without
	// (false) a Range header.
	Ranged *bool
	// Times is how many matching requests the rule takes; 0 means all.
	Times int
	Fault Fault

	used int // matching requests taken so far; guarded by Faults.mu
}

// WithRange and WithoutRange are values for [Rule.Ranged].
var (
	WithRange    = func() *bool { b := true; return &b }()
	WithoutRange = func() *bool { b := false; return &b }()
)

// NewFaults returns a front proxying to the registry at upstream
// ("http://127.0.0.1:5000" or a bare "127.0.0.1:5000").
func NewFaults(upstream string) (*Faults, error) {
	if !strings.Contains(upstream, "://") {
		upstream = "http://" + upstream
	}
	u, err := url.Parse(upstream)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("fault front for %q: not a registry URL", upstream)
	}
	f := &Faults{upstream: u, released: make(chan struct{}), changed: make(chan struct{})}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = u.Host
		},
		// A client that gives up mid-answer is normal here, not news.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	return f, nil
}

// Add appends rules; the first matching rule with requests left answers.
// It returns its arguments so a test can keep them for [Faults.Remove].
func (f *Faults) Add(rules ...*Rule) []*Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, rules...)
	return rules
}

// Clear removes every rule: from now on every request is proxied.
func (f *Faults) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// Release ends every stalled answer, now and later.
func (f *Faults) Release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.released:
	default:
		close(f.released)
	}
}

// RequireBasicAuth makes the front answer 401 with a Basic challenge to
// any request without these credentials (before any rule applies).
func (f *Faults) RequireBasicAuth(user, pass string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.user, f.pass = user, pass
}

// Requests returns the requests seen so far, in order.
func (f *Faults) Requests() []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Request(nil), f.seen...)
}

// Hits returns how many requests rule answered.
func (f *Faults) Hits(rule *Rule) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return rule.used
}

// match returns the rule that answers r, counting the request against it.
func (f *Faults) match(r *http.Request) (*Rule, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	req := Request{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"), Auth: r.Header.Get("Authorization")}
	if f.user != "" {
		u, p, ok := r.BasicAuth()
		if !ok || u != f.user || p != f.pass {
			f.seen = append(f.seen, req)
			f.notify()
			return nil, false
		}
	}
	var hit *Rule
	for _, ru := range f.rules {
		if ru.matches(r) {
			ru.used++
			hit = ru
			req.Fault = ru.Fault.Kind
			break
		}
	}
	f.seen = append(f.seen, req)
	f.notify()
	return hit, true
}

// notify wakes WaitRequest; f.mu is held.
func (f *Faults) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// WaitRequest blocks until a request for which match returns true has
// arrived (or already had), or ctx ends. Tests use it to act while a fault
// is in progress, e.g. to kill a daemon whose read is stalled.
func (f *Faults) WaitRequest(ctx context.Context, match func(Request) bool) (Request, error) {
	for {
		f.mu.Lock()
		for _, r := range f.seen {
			if match(r) {
				f.mu.Unlock()
				return r, nil
			}
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return Request{}, fmt.Errorf("wait for a request at the fault front: %w", ctx.Err())
		}
	}
}

func (ru *Rule) matches(r *http.Request) bool {
	if ru.Times > 0 && ru.used >= ru.Times {
		return false
	}
	if ru.Method != "" && ru.Method != r.Method {
		return false
	}
	if ru.Path != "" && !strings.Contains(r.URL.Path, ru.Path) {
		return false
	}
	if ru.Ranged != nil && *ru.Ranged != (r.Header.Get("Range") != "") {
		return false
	}
	return true
}

func (f *Faults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rule, authorized := f.match(r)
	if !authorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="ocifs-faults"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		return
	}
	if rule == nil {
		f.proxy.ServeHTTP(w, r)
		return
	}
	f.inject(w, r, rule.Fault)
}

// inject answers r with fault.
func (f *Faults) inject(w http.ResponseWriter, r *http.Request, fault Fault) {
	switch fault.Kind {
	case Status:
		if fault.Status == http.StatusTooManyRequests || fault.Status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "0")
		}
		w.WriteHeader(fault.Status)
	case Reset:
		rec := f.record(r)
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", rec.Code, http.StatusText(rec.Code))
		rec.Header().Write(buf)
		buf.WriteString("\r\n")
		buf.Write(prefix(rec.Body.Bytes(), fault.N))
		buf.Flush()
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST
		}
	case Truncate:
		rec := f.record(r)
		body := prefix(rec.Body.Bytes(), fault.N)
		rec.Header().Set("Content-Length", strconv.Itoa(len(body)))
		copyHeader(w, rec)
		w.Write(body)
	case Stall:
		rec := f.record(r)
		copyHeader(w, rec)
		w.Write(prefix(rec.Body.Bytes(), fault.N))
		http.NewResponseController(w).Flush()
		f.mu.Lock()
		released := f.released
		f.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-released:
		}
		// Returning with the declared body incomplete makes the server
		// close the connection.
	case IgnoreRange:
		r.Header.Del("Range")
		f.proxy.ServeHTTP(w, r)
	case WrongRange:
		first, last, ok := parseRange(r.Header.Get("Range"))
		if ok {
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first+fault.N, last+fault.N))
		}
		f.proxy.ServeHTTP(w, r)
	case Flip:
		rec := f.record(r)
		body := bytes.Clone(rec.Body.Bytes())
		if i := fault.N; len(body) > 0 {
			if i < 0 || i >= int64(len(body)) {
				i = int64(len(body)) / 2
			}
			body[i] ^= 0xff
		}
		copyHeader(w, rec)
		w.Write(body)
	case Redirect:
		to := strings.TrimSuffix(fault.URL, "/") + r.URL.Path + "?X-Amz-Signature=faults-signature"
		http.Redirect(w, r, to, http.StatusTemporaryRedirect)
	case Replace:
		rec := f.record(r)
		if ct := rec.Header().Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(fault.Body)))
		w.WriteHeader(http.StatusOK)
		w.Write(fault.Body)
	default:
		http.Error(w, "fault front: unknown fault "+string(fault.Kind), http.StatusInternalServerError)
	}
}

// record proxies r and returns the whole upstream response.
func (f *Faults) record(r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	f.proxy.ServeHTTP(rec, r)
	return rec
}

func copyHeader(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
}

func prefix(b []byte, n int64) []byte {
	if n < 0 {
		n = 0
	}
	return b[:min(int64(len(b)), n)]
}

// parseRange parses "bytes=first-last".
func parseRange(v string) (first, last int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// ParseRule parses the text form of a rule, as bench/faultproxy takes it:
// space-separated key=value fields, e.g.
//
//	method=GET path=/blobs/ range=yes fault=status:503 times=2
//	path=/blobs/ fault=reset:1000
//	path=/manifests/ fault=redirect:http://localhost:5001
//
// Keys: method, path (a substring of the request path), range (yes or no),
// times (0 or absent: every request), fault (kind[:arg], arg being the
// status for status, the byte count or index for reset, truncate, stall,
// wrong-range and flip, and the URL for redirect). Replace takes a body
// and has no text form.
func ParseRule(s string) (*Rule, error) {
	ru := &Rule{}
	for _, field := range strings.Fields(s) {
		key, val, ok := strings.Cut(field, "=")
		if !ok || val == "" {
			return nil, fmt.Errorf("invalid input: fault rule %q: field %q: want key=value", s, field)
		}
		switch key {
		case "method":
			ru.Method = strings.ToUpper(val)
		case "path":
			ru.Path = val
		case "range":
			switch val {
			case "yes":
				ru.Ranged = WithRange
			case "no":
				ru.Ranged = WithoutRange
			default:
				return nil, fmt.Errorf("invalid input: fault rule %q: range=%q: want yes or no", s, val)
			}
		case "times":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("invalid input: fault rule %q: times=%q: want a count", s, val)
			}
			ru.Times = n
		case "fault":
			fault, err := parseFault(val)
			if err != nil {
				return nil, fmt.Errorf("invalid input: fault rule %q: %w", s, err)
			}
			ru.Fault = fault
		default:
			return nil, fmt.Errorf("invalid input: fault rule %q: unknown key %q", s, key)
		}
	}
	if ru.Fault.Kind == "" {
		return nil, fmt.Errorf("invalid input: fault rule %q: no fault=", s)
	}
	return ru, nil
}

func parseFault(v string) (Fault, error) {
	kind, arg, hasArg := strings.Cut(v, ":")
	f := Fault{Kind: FaultKind(kind)}
	num := func(def int64) error {
		f.N = def
		if !hasArg {
			return nil
		}
		n, err := strconv.ParseInt(arg, 10, 64)
		if err != nil {
			return fmt.Errorf("fault %q: %q is not a number", kind, arg)
		}
		f.N = n
		return nil
	}
	switch f.Kind {
	case Status:
		n, err := strconv.Atoi(arg)
		if err != nil || n < 100 || n > 599 {
			return Fault{}, fmt.Errorf("fault status: %q is not an HTTP status", arg)
		}
		f.Status = n
	case Reset, Truncate, Stall:
		return f, num(0)
	case WrongRange:
		return f, num(1)
	case Flip:
		return f, num(-1)
	case IgnoreRange:
		if hasArg {
			return Fault{}, errors.New("fault ignore-range takes no argument")
		}
	case Redirect:
		u, err := url.Parse(arg)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return Fault{}, fmt.Errorf("fault redirect: %q is not an http(s) URL", arg)
		}
		f.URL = arg
	default:
		return Fault{}, fmt.Errorf("unknown fault %q (status, reset, truncate, stall, ignore-range, wrong-range, flip, redirect)", kind)
	}
	return f, nil
}
