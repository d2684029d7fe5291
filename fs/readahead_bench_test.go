package fs

import (
	"archive/tar"
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs/fstest"
)

// mixedContent returns size bytes, the same for the same seed: three MiB of
// random bytes (gzip cannot shrink them) for every MiB of repeated words.
func mixedContent(seed uint64, size int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	words := strings.Fields("func return if err != nil { } for range := struct type interface package import var const map string int64 byte")
	b := make([]byte, 0, size)
	for chunk := 0; len(b) < size; chunk++ {
		n := min(1<<20, size-len(b))
		if chunk%4 == 3 {
			for end := len(b) + n; len(b) < end; {
				w := words[rng.IntN(len(words))]
				b = append(b, w[:min(len(w), end-len(b))]...)
				if len(b) < end {
					b = append(b, " \n"[rng.IntN(2)])
				}
			}
			continue
		}
		start := len(b)
		b = b[:start+n]
		for i := start; i+8 <= len(b); i += 8 {
			v := rng.Uint64()
			for k := range 8 {
				b[i+k] = byte(v >> (8 * k))
			}
		}
	}
	return b
}

// linkTransport models a link: one round trip before each request, then
// response bodies of all requests share rate bytes per second, first come
// first served. Unlike shapedTransport, time the link stands idle is not
// saved up for later bursts, so waiting out round trips costs what it costs
// on a real link. A model of the link, not synchronisation.
type linkTransport struct {
	base http.RoundTripper
	rtt  time.Duration
	rate float64 // bytes per second

	// mu guards free.
	mu   sync.Mutex
	free time.Time // when the link has sent everything asked of it so far
}

func (l *linkTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t := time.NewTimer(l.rtt)
	defer t.Stop()
	select {
	case <-t.C:
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	resp, err := l.base.RoundTrip(req)
	if err == nil {
		resp.Body = &linkBody{ReadCloser: resp.Body, l: l}
	}
	return resp, err
}

// linkBurst is how far behind the link's schedule a body may fall and
// still catch up (a tbf bucket of 2 ms).
const linkBurst = 2 * time.Millisecond

type linkBody struct {
	io.ReadCloser
	l *linkTransport
}

func (b *linkBody) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := b.ReadCloser.Read(p)
	l := b.l
	l.mu.Lock()
	// A bucket of linkBurst: what sleeping past the due time lost is made
	// up, idle time beyond that is not.
	if floor := time.Now().Add(-linkBurst); l.free.Before(floor) {
		l.free = floor
	}
	l.free = l.free.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	due := l.free
	l.mu.Unlock()
	time.Sleep(time.Until(due))
	return n, err
}

// rangeCounter counts the Range GETs sent through it.
type rangeCounter struct {
	base   http.RoundTripper
	ranges atomic.Int64
}

func (c *rangeCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Range") != "" {
		c.ranges.Add(1)
	}
	return c.base.RoundTrip(req)
}

// BenchmarkSequentialRead measures a sequential read of one 256 MiB file
// (mixed: mostly incompressible) through the lazy span path, on a fresh
// cache, with the image's index in the registry, over a link modelled as
// 20 ms of round trip per request and 1 Gbit/s (125 MB/s) shared by every
// response (linkTransport). The reader asks for 128 KiB at a time, as FUSE
// does. Goal (issue: sequential read-ahead): close to the link's bandwidth:
// "link-%" is the compressed bytes fetched per second against the link's
// rate (the file's MB/s is higher: part of it compresses).
//
//	go test -run '^$' -bench SequentialRead -benchtime 2x ./fs/
func BenchmarkSequentialRead(b *testing.B) {
	const fileSize = 256 << 20
	const linkRate, rtt = 125e6, 20 * time.Millisecond
	host := fstest.StartRegistry(b)
	mtime := time.Unix(1700000000, 0)
	files := []fstest.File{
		{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: []byte("ID=bench\n")},
		{Header: tar.Header{Name: "data/big.bin", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime}, Data: mixedContent(9, fileSize)},
	}
	img, err := fstest.Build([]fstest.Layer{{Files: files, Compression: fstest.Gzip}}, fstest.Options{BlobDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	want := files[1].Data
	files = nil
	if err := img.Push(b.Context(), host, "bench/seq", "v1"); err != nil {
		b.Fatal(err)
	}
	ref := host + "/bench/seq:v1"
	pushIndexOf(b, ref, Options{})

	var took time.Duration
	var requests, fetched int64
	buf := make([]byte, 128<<10)
	for b.Loop() {
		rc := &rangeCounter{base: &linkTransport{base: http.DefaultTransport, rtt: rtt, rate: linkRate}}
		c, err := fetch.New(fetch.Options{CacheDir: b.TempDir(), Transport: rc})
		if err != nil {
			b.Fatal(err)
		}
		im, err := Resolve(b.Context(), c, ref, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := im.Load(b.Context()); err != nil {
			b.Fatal(err)
		}
		if mode := im.Layers()[0].Mode; mode != ModeIndex {
			b.Fatalf("layer mode %s, want %s: the read must go through spans", mode, ModeIndex)
		}
		n, err := im.Tree().Lookup("data/big.bin")
		if err != nil {
			b.Fatal(err)
		}
		before := im.Stats().BytesFetched
		start := time.Now()
		for off := int64(0); off < n.Size; {
			got, err := im.ReadAt(b.Context(), n, buf, off)
			if err != nil && err != io.EOF {
				b.Fatalf("ReadAt(off=%d): %v", off, err)
			}
			if !bytes.Equal(buf[:got], want[off:off+int64(got)]) {
				b.Fatalf("ReadAt(off=%d): %d bytes differ from the file's", off, got)
			}
			off += int64(got)
		}
		took = time.Since(start)
		requests = rc.ranges.Load()
		fetched = im.Stats().BytesFetched - before
		im.Close()
	}
	b.ReportMetric(float64(fileSize)/took.Seconds()/1e6, "MB/s")
	b.ReportMetric(100*float64(fetched)/took.Seconds()/linkRate, "link-%")
	b.ReportMetric(float64(requests), "range-requests")
	b.ReportMetric(float64(fetched)/float64(requests)/(1<<20), "MiB/request")
	b.Logf("read %d MiB sequentially in %v over %.0f MB/s with %v RTT: %.1f MB/s, %d Range requests, %d bytes fetched",
		fileSize>>20, took.Round(time.Millisecond), linkRate/1e6, rtt, float64(fileSize)/took.Seconds()/1e6, requests, fetched)
}
