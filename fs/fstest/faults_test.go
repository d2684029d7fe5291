package fstest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// blobServer serves blob at every path, with Range support.
func blobServer(t *testing.T, blob []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// get fetches path through front with an optional Range and returns the
// status, Content-Range and body (and the body's read error).
func get(t *testing.T, url, rng string) (int, string, []byte, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Range"), b, err
}

// TestFaultsEachKind checks what each fault does to a Range GET of a
// 1000-byte blob, and that a rule with Times stops after its count.
func TestFaultsEachKind(t *testing.T) {
	blob := make([]byte, 1000)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	up := blobServer(t, blob)
	flipped := bytes.Clone(blob[100:200])
	flipped[50] ^= 0xff
	for _, tc := range []struct {
		fault      Fault
		wantStatus int
		wantRange  string
		wantBody   []byte
		wantErr    bool
	}{
		{Fault{Kind: Status, Status: 503}, 503, "", []byte{}, false},
		{Fault{Kind: Reset, N: 10}, 206, "bytes 100-199/1000", blob[100:110], true},
		{Fault{Kind: Truncate, N: 10}, 206, "bytes 100-199/1000", blob[100:110], false},
		{Fault{Kind: IgnoreRange}, 200, "", blob, false},
		{Fault{Kind: WrongRange, N: 7}, 206, "bytes 107-206/1000", blob[107:207], false},
		{Fault{Kind: Flip, N: -1}, 206, "bytes 100-199/1000", flipped, false},
		{Fault{Kind: Redirect, URL: "http://elsewhere.example"}, 307, "", nil, false},
		{Fault{Kind: Replace, Body: []byte("other")}, 200, "", []byte("other"), false},
	} {
		t.Run(string(tc.fault.Kind), func(t *testing.T) {
			f, err := NewFaults(up)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(f)
			defer srv.Close()
			rule := f.Add(&Rule{Method: "GET", Path: "/blobs/", Ranged: WithRange, Times: 1, Fault: tc.fault})[0]
			status, cr, body, err := get(t, srv.URL+"/v2/x/blobs/sha256:ab", "bytes=100-199")
			if (err != nil) != tc.wantErr {
				t.Fatalf("body error %v, want error %v", err, tc.wantErr)
			}
			if status != tc.wantStatus || cr != tc.wantRange || (tc.wantBody != nil && !bytes.Equal(body, tc.wantBody)) {
				t.Errorf("got %d %q %d bytes, want %d %q %d bytes", status, cr, len(body), tc.wantStatus, tc.wantRange, len(tc.wantBody))
			}
			if f.Hits(rule) != 1 {
				t.Errorf("Hits = %d, want 1", f.Hits(rule))
			}
			// Used up: the next request is proxied unchanged.
			status, cr, body, err = get(t, srv.URL+"/v2/x/blobs/sha256:ab", "bytes=100-199")
			if err != nil || status != 206 || cr != "bytes 100-199/1000" || !bytes.Equal(body, blob[100:200]) {
				t.Errorf("after Times: %d %q %d bytes %v; want the upstream's answer", status, cr, len(body), err)
			}
			if reqs := f.Requests(); len(reqs) != 2 || reqs[0].Fault != tc.fault.Kind || reqs[1].Fault != "" {
				t.Errorf("Requests = %+v", reqs)
			}
		})
	}
}

// TestFaultsStallAndAuth: a stalled answer ends on Release, WaitRequest
// sees it, and RequireBasicAuth refuses requests without the credentials.
func TestFaultsStallAndAuth(t *testing.T) {
	f, err := NewFaults(blobServer(t, make([]byte, 100)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	f.Add(&Rule{Path: "/blobs/", Fault: Fault{Kind: Stall, N: 5}})
	done := make(chan error, 1)
	go func() {
		_, _, _, err := get(t, srv.URL+"/v2/x/blobs/d", "")
		done <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := f.WaitRequest(ctx, func(r Request) bool { return r.Fault == Stall }); err != nil {
		t.Fatal(err)
	}
	f.Release()
	if err := <-done; err == nil {
		t.Errorf("a stalled answer ended cleanly; want a short body error")
	}

	f.Clear()
	f.RequireBasicAuth("u", "p")
	if status, _, _, _ := get(t, srv.URL+"/v2/", ""); status != http.StatusUnauthorized {
		t.Errorf("without credentials: %d, want 401", status)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/x/blobs/d", nil)
	req.SetBasicAuth("u", "p")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("with credentials: %d, want 200", resp.StatusCode)
	}
	reqs := f.Requests()
	if last := reqs[len(reqs)-1]; !strings.HasPrefix(last.Auth, "Basic ") {
		t.Errorf("last request's Auth = %q, want the Basic header recorded", last.Auth)
	}
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	if _, err := f.WaitRequest(ctx, func(Request) bool { return false }); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitRequest on a cancelled context: %v", err)
	}
}

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    *Rule
		wantErr string
	}{
		{"method=get path=/blobs/ range=yes fault=status:503 times=2",
			&Rule{Method: "GET", Path: "/blobs/", Ranged: WithRange, Times: 2, Fault: Fault{Kind: Status, Status: 503}}, ""},
		{"path=/manifests/ range=no fault=reset:100", &Rule{Path: "/manifests/", Ranged: WithoutRange, Fault: Fault{Kind: Reset, N: 100}}, ""},
		{"fault=flip", &Rule{Fault: Fault{Kind: Flip, N: -1}}, ""},
		{"fault=wrong-range", &Rule{Fault: Fault{Kind: WrongRange, N: 1}}, ""},
		{"fault=ignore-range", &Rule{Fault: Fault{Kind: IgnoreRange}}, ""},
		{"fault=redirect:http://h:1", &Rule{Fault: Fault{Kind: Redirect, URL: "http://h:1"}}, ""},
		{"", nil, "no fault="},
		{"path=/x", nil, "no fault="},
		{"fault=status:42", nil, "not an HTTP status"},
		{"fault=explode", nil, `unknown fault "explode"`},
		{"fault=reset:x", nil, "not a number"},
		{"fault=redirect:ftp://h", nil, "not an http(s) URL"},
		{"fault=ignore-range:3", nil, "takes no argument"},
		{"times=-1 fault=flip", nil, "want a count"},
		{"range=maybe fault=flip", nil, "want yes or no"},
		{"color=red fault=flip", nil, `unknown key "color"`},
		{"path fault=flip", nil, "want key=value"},
	} {
		got, err := ParseRule(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "invalid input: ") {
				t.Errorf("ParseRule(%q) = %v; want an invalid-input error with %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseRule(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// FuzzParseRule: any text parses or fails with an invalid-input error, and
// a parsed rule always has a fault.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"method=GET path=/blobs/ range=yes fault=status:503 times=2", "fault=redirect:http://h:1",
		"fault=flip:-3", "fault=wrong-range:9999999999999", "path== fault=reset:", "range=no fault=stall:1 times=0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ru, err := ParseRule(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid input: ") {
				t.Fatalf("error without the invalid-input prefix: %v", err)
			}
			return
		}
		if ru.Fault.Kind == "" || ru.Times < 0 {
			t.Fatalf("ParseRule(%q) = %+v", s, ru)
		}
	})
}
