package bench

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCountRequestLines(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   int
	}{
		{"one GET", []string{"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"}, 1},
		{"two pipelined", []string{"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n"}, 2},
		{"split inside the method", []string{"GE", "T /a HTTP/1.1\r\n\r\n"}, 1},
		{"split after a line end", []string{"GET /a HTTP/1.1\r\n\r\n", "POST /b HTTP/1.1\r\n\r\n"}, 2},
		{"method word inside a header", []string{"GET /a HTTP/1.1\r\nX-Note: GET /b\r\n\r\n"}, 1},
		{"not a method", []string{"GETS /a\r\n", "PUTTY\r\n"}, 0},
		{"empty", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, start := 0, true
			for _, c := range tt.chunks {
				got += countRequestLines([]byte(c), &start)
			}
			if got != tt.want {
				t.Errorf("countRequestLines(%q) = %d, want %d", tt.chunks, got, tt.want)
			}
		})
	}
}

// FuzzCountRequestLines checks that however a stream is split into
// chunks, the count is the same as for the whole stream.
func FuzzCountRequestLines(f *testing.F) {
	f.Add([]byte("GET /v2/ HTTP/1.1\r\n\r\nHEAD /x HTTP/1.1\r\n\r\n"), uint8(3))
	f.Add([]byte("GE"), uint8(1))
	f.Add([]byte("\n\nPUT /\nDELETE /"), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, split uint8) {
		start := true
		whole := countRequestLines(b, &start)
		n := int(split)%8 + 1
		got, start := 0, true
		for i := 0; i < len(b); i += n {
			got += countRequestLines(b[i:min(i+n, len(b))], &start)
		}
		// A method cut at a chunk end is counted as soon as its start is
		// seen, so the chunked count can only be larger, and only for
		// prefixes of a method that never completed.
		if got < whole {
			t.Fatalf("chunks of %d: %d requests, whole stream: %d", n, got, whole)
		}
	})
}

func TestProxyCountsAndDelays(t *testing.T) {
	body := strings.Repeat("x", 100<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	defer srv.Close()
	p, err := startProxy(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()

	get := func() {
		t.Helper()
		resp, err := http.Get("http://" + p.addr() + "/v2/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(b, []byte(body)) {
			t.Fatalf("body through the proxy: %d bytes, %v", len(b), err)
		}
	}
	c0 := p.counters()
	get()
	get()
	c := p.counters().sub(c0)
	if c.Requests != 2 {
		t.Errorf("requests = %d, want 2", c.Requests)
	}
	if c.BytesDown < int64(2*len(body)) {
		t.Errorf("bytes down = %d, want at least %d", c.BytesDown, 2*len(body))
	}

	// With a delay, a request on a new connection takes at least the
	// handshake's round trip plus the request's: 4 delays.
	p.setDelay(20 * time.Millisecond)
	http.DefaultClient.CloseIdleConnections()
	start := time.Now()
	conn, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /v2/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatal(err)
	}
	if got := time.Since(start); got < 80*time.Millisecond {
		t.Errorf("a request through a 20 ms-per-direction proxy took %v, want at least 80ms", got)
	}
}
