package bench

import (
	"bufio"
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// proxy is a TCP proxy on loopback in front of the registry. Every method
// reaches the registry through it, so bytes and requests are counted the
// same way for all of them. With a delay it holds every chunk, in each
// direction, for that long before passing it on (one round trip is twice
// the delay; a new connection pays one extra round trip, as a TCP
// handshake would): this kernel has no netem qdisc.
type proxy struct {
	ln       net.Listener
	upstream string
	delay    atomic.Int64 // time.Duration per direction

	bytesDown atomic.Int64 // registry → client
	bytesUp   atomic.Int64 // client → registry
	requests  atomic.Int64 // HTTP request lines seen client → registry
	conns     atomic.Int64

	wg     sync.WaitGroup
	mu     sync.Mutex
	active map[net.Conn]struct{}
}

// counters is a snapshot of what the proxy has seen.
type counters struct {
	BytesDown, BytesUp, Requests, Conns int64
}

func (c counters) sub(o counters) counters {
	return counters{c.BytesDown - o.BytesDown, c.BytesUp - o.BytesUp, c.Requests - o.Requests, c.Conns - o.Conns}
}

func startProxy(upstream string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, upstream: upstream, active: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) setDelay(d time.Duration) { p.delay.Store(int64(d)) }

func (p *proxy) counters() counters {
	return counters{p.bytesDown.Load(), p.bytesUp.Load(), p.requests.Load(), p.conns.Load()}
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.active {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.active[c] = struct{}{}
	} else {
		delete(p.active, c)
	}
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go p.handle(c)
	}
}

func (p *proxy) handle(client net.Conn) {
	defer p.wg.Done()
	defer client.Close()
	p.track(client, true)
	defer p.track(client, false)
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return
	}
	defer up.Close()
	p.track(up, true)
	defer p.track(up, false)
	d := time.Duration(p.delay.Load())
	if d > 0 {
		time.Sleep(2 * d) // the handshake's round trip
	}
	done := make(chan struct{}, 2)
	go func() {
		p.pipe(up, client, d, &p.bytesUp, true)
		done <- struct{}{}
	}()
	go func() {
		p.pipe(client, up, d, &p.bytesDown, false)
		done <- struct{}{}
	}()
	<-done
	client.Close()
	up.Close()
	<-done
}

type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst, each chunk no earlier than delay after it was
// read. countRequests counts HTTP request lines (the registry clients send
// no request bodies on pull, so every line starting with a method and
// " /v2/" is a request).
func (p *proxy) pipe(dst, src net.Conn, delay time.Duration, n *atomic.Int64, countRequests bool) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		r := bufio.NewReaderSize(src, 64<<10)
		var lineStart = true
		for {
			b := make([]byte, 64<<10)
			k, err := r.Read(b)
			if k > 0 {
				b = b[:k]
				n.Add(int64(k))
				if countRequests {
					p.requests.Add(int64(countRequestLines(b, &lineStart)))
				}
				q <- chunk{b, time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		if delay > 0 {
			if w := time.Until(c.at.Add(delay)); w > 0 {
				time.Sleep(w)
			}
		}
		if _, err := dst.Write(c.b); err != nil {
			for range q { // drain so the reader ends
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

var methods = [][]byte{[]byte("GET /"), []byte("HEAD /"), []byte("POST /"), []byte("PUT /"), []byte("PATCH /"), []byte("DELETE /")}

// countRequestLines counts lines of b that start with an HTTP method; a
// request line split across chunks is counted when its start is seen
// (lineStart carries whether the previous chunk ended a line).
func countRequestLines(b []byte, lineStart *bool) int {
	n := 0
	for len(b) > 0 {
		if *lineStart {
			for _, m := range methods {
				if bytes.HasPrefix(b, m) || (len(b) < len(m) && bytes.HasPrefix(m, b)) {
					n++
					break
				}
			}
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			*lineStart = false
			return n
		}
		b = b[i+1:]
		*lineStart = true
	}
	return n
}
