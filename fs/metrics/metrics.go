package metrics

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
)

// DefaultCacheScanInterval bounds how often a scrape lists the cache.
const DefaultCacheScanInterval = 30 * time.Second

// Options configures a Metrics. The zero value works.
type Options struct {
	// Cache is measured for ocifs_cache_bytes and ocifs_cache_entries;
	// nil leaves them out.
	Cache *fetch.Cache
	// CacheScanInterval: a scrape lists the cache again only when the last
	// listing is older than this; 0 means DefaultCacheScanInterval.
	CacheScanInterval time.Duration
}

// Metrics is one daemon's metrics. It is safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	rangeReads  *prometheus.CounterVec
	rangeErrors prometheus.Counter
	rangeTime   prometheus.Histogram
	ready       prometheus.Histogram

	cache    *fetch.Cache
	scanEach time.Duration

	// mu guards everything below: the sources, what was last read from
	// them, and the totals folded from them.
	mu      sync.Mutex
	clients map[*fetch.Client]*clientSeen
	images  map[*fs.Image]*imageSeen
	tot     totals
	scanned time.Time
	usage   map[string]kindUsage
	scanErr error
	// extra are fallbacks a daemon counts itself (AddFallbacks), by reason.
	extra map[string][]func() int64
}

// totals are the counters summed over every source since New.
type totals struct {
	modeRequests   map[string]int64 // by layer mode, and metadata
	modeBytes      map[string]int64 // by layer mode, and metadata
	served         map[string]int64 // by layer mode
	passthrough    int64
	hits, misses   map[string]int64 // by cache kind (fs.CacheSpan...)
	fetchedFor     map[string]int64 // by purpose (fs.FetchReader...)
	fallbacks      map[string]int64 // by reason (fs.Fallback...)
	verifyFailures int64
}

type clientSeen struct {
	requests, bytes int64
	blobs           map[digest.Digest]int64
	blobRequests    map[digest.Digest]int64
	modes           map[digest.Digest]string // layer digest -> mode, from the images using the client
}

type imageSeen struct {
	client *fetch.Client
	stats  fs.Stats
}

type kindUsage struct {
	n     int
	bytes int64
}

// New returns a Metrics with its collectors registered.
func New(opts Options) *Metrics {
	m := &Metrics{
		reg:      prometheus.NewRegistry(),
		cache:    opts.Cache,
		scanEach: opts.CacheScanInterval,
		clients:  map[*fetch.Client]*clientSeen{},
		images:   map[*fs.Image]*imageSeen{},
		tot: totals{modeBytes: map[string]int64{metadata: 0}, modeRequests: map[string]int64{metadata: 0},
			served: map[string]int64{}, hits: map[string]int64{}, misses: map[string]int64{},
			fetchedFor: map[string]int64{}, fallbacks: map[string]int64{}},
	}
	for _, k := range []string{fs.CacheSpan, fs.CacheChunk, fs.CacheFile, fs.CacheWhole} {
		m.tot.hits[k], m.tot.misses[k] = 0, 0
	}
	for _, p := range []string{fs.FetchReader, fs.FetchReadAhead, fs.FetchBackground} {
		m.tot.fetchedFor[p] = 0
	}
	for _, r := range fs.FallbackReasons() {
		m.tot.fallbacks[r] = 0
	}
	if m.scanEach <= 0 {
		m.scanEach = DefaultCacheScanInterval
	}
	m.rangeReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ocifs_fetch_range_reads_total",
		Help: "Blob range reads (spans, chunks, TOCs), by where the bytes came from: registry or cache.",
	}, []string{"source"})
	m.rangeErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ocifs_fetch_range_errors_total",
		Help: "Blob range reads from a registry that failed after their retries.",
	})
	m.rangeTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ocifs_fetch_range_duration_seconds",
		Help:    "Time of a blob range read from a registry, from the first request to the last byte, retries included.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	m.ready = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ocifs_mount_ready_seconds",
		Help:    "Time from the start of a mount to its answering (manifest, config and file tables known).",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	})
	m.rangeReads.WithLabelValues("registry")
	m.rangeReads.WithLabelValues("cache")
	m.reg.MustRegister(m.rangeReads, m.rangeErrors, m.rangeTime, m.ready, (*collector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where a daemon registers collectors of its own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus' text format (and OpenMetrics
// when asked).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}

// ObserveRange records one range read; it is a [fetch.Options.ObserveRange].
func (m *Metrics) ObserveRange(r fetch.RangeRead) {
	if r.Cached {
		m.rangeReads.WithLabelValues("cache").Inc()
		return
	}
	m.rangeReads.WithLabelValues("registry").Inc()
	if r.Err != nil {
		m.rangeErrors.Inc()
		return
	}
	m.rangeTime.Observe(r.Duration.Seconds())
}

// AddFallbacks counts, under ocifs_fallbacks_total{reason}, the fallbacks
// count reports: what the daemon counts itself, such as the snapshotter's
// layers containerd had to download (reason "runtime_download"). count
// must be monotonic.
func (m *Metrics) AddFallbacks(reason string, count func() int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.extra == nil {
		m.extra = map[string][]func() int64{}
	}
	m.extra[reason] = append(m.extra[reason], count)
}

// ObserveReady records how long a mount took to answer.
func (m *Metrics) ObserveReady(d time.Duration) { m.ready.Observe(d.Seconds()) }

// AddClient counts what c fetches. remove folds its last counts into the
// totals and stops reading it; call it when c is no longer used.
func (m *Metrics) AddClient(c *fetch.Client) (remove func()) {
	m.mu.Lock()
	if m.clients[c] == nil {
		m.clients[c] = &clientSeen{blobs: map[digest.Digest]int64{}, blobRequests: map[digest.Digest]int64{}, modes: map[digest.Digest]string{}}
	}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.readClient(c)
		delete(m.clients, c)
	}
}

// AddImage counts what im serves; c is the client it was resolved with
// (its bytes are counted by layer mode; c must be added with AddClient).
// remove folds im's last counts into the totals; call it before im.Close.
func (m *Metrics) AddImage(im *fs.Image, c *fetch.Client) (remove func()) {
	m.mu.Lock()
	m.images[im] = &imageSeen{client: c}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.readImage(im)
		delete(m.images, im)
	}
}

// readImage adds what im served since the last read to the totals, and
// tells its client which mode each of its layers is in. m.mu is held.
func (m *Metrics) readImage(im *fs.Image) {
	seen := m.images[im]
	if seen == nil {
		return
	}
	s := im.Stats()
	prev := seen.stats
	for i, l := range s.Layers {
		var before int64
		if i < len(prev.Layers) {
			before = prev.Layers[i].BytesServed
		}
		m.tot.served[l.Mode] += l.BytesServed - before
	}
	m.tot.passthrough += s.PassthroughFiles - prev.PassthroughFiles
	for k, c := range s.Cache {
		m.tot.hits[k] += c.Hits - prev.Cache[k].Hits
		m.tot.misses[k] += c.Misses - prev.Cache[k].Misses
	}
	for p, n := range s.FetchedFor {
		m.tot.fetchedFor[p] += n - prev.FetchedFor[p]
	}
	for r, n := range s.Fallbacks {
		m.tot.fallbacks[r] += n - prev.Fallbacks[r]
	}
	m.tot.verifyFailures += s.VerifyFailures - prev.VerifyFailures
	seen.stats = s
	if cs := m.clients[seen.client]; cs != nil {
		for _, l := range s.Layers {
			cs.modes[l.Digest] = l.Mode
		}
	}
}

// readClient adds what c fetched since the last read to the totals, by the
// mode of the layer each blob is: "metadata" for manifests, configs, index
// artifacts, and for a layer's bytes fetched before an image named its mode.
// m.mu is held.
func (m *Metrics) readClient(c *fetch.Client) {
	cs := m.clients[c]
	if cs == nil {
		return
	}
	s := c.Stats()
	var reqDelta int64
	for d, n := range s.BlobRequests {
		mode, ok := cs.modes[d]
		if !ok {
			mode = metadata
		}
		delta := n - cs.blobRequests[d]
		m.tot.modeRequests[mode] += delta
		reqDelta += delta
		cs.blobRequests[d] = n
	}
	m.tot.modeRequests[metadata] += s.Requests - cs.requests - reqDelta
	var blobDelta int64
	for d, n := range s.Blobs {
		mode, ok := cs.modes[d]
		if !ok {
			mode = metadata
		}
		delta := n - cs.blobs[d]
		m.tot.modeBytes[mode] += delta
		blobDelta += delta
		cs.blobs[d] = n
	}
	m.tot.modeBytes[metadata] += s.BytesFetched - cs.bytes - blobDelta
	cs.requests, cs.bytes = s.Requests, s.BytesFetched
}

// metadata is the mode label of bytes that belong to no layer.
const metadata = "metadata"

// refresh reads every source into the totals. m.mu is held.
func (m *Metrics) refresh() {
	for im := range m.images {
		m.readImage(im) // first: the clients learn the layers' modes
	}
	for c := range m.clients {
		m.readClient(c)
	}
}

// scanCache lists the cache when the last listing is too old. m.mu is held.
func (m *Metrics) scanCache(now time.Time) {
	if m.cache == nil || now.Sub(m.scanned) < m.scanEach && m.usage != nil {
		return
	}
	ents, err := m.cache.List()
	m.scanned, m.scanErr = now, err
	if err != nil {
		return
	}
	u := map[string]kindUsage{fetch.KindBlob: {}, fetch.KindIndex: {}, fetch.KindTree: {}}
	for _, e := range ents {
		k := u[e.Kind]
		k.n++
		k.bytes += e.Size
		u[e.Kind] = k
	}
	m.usage = u
}

// collector reads the sources at scrape time.
type collector Metrics

var (
	descRequests    = prometheus.NewDesc("ocifs_fetch_requests_total", "HTTP requests sent to registries (each attempt counts), by the lazy mode of the layer asked for (metadata: manifests, configs, referrers, tokens).", []string{"mode"}, nil)
	descFetchBytes  = prometheus.NewDesc("ocifs_fetch_bytes_total", "Body bytes received from registries and layouts, by the lazy mode of the layer they belong to (metadata: manifests, configs, referrers).", []string{"mode"}, nil)
	descServed      = prometheus.NewDesc("ocifs_served_bytes_total", "Bytes read through the mount daemon (reads the kernel serves by passthrough bypass it), by the lazy mode of the layer holding the file.", []string{"mode"}, nil)
	descPassthrough = prometheus.NewDesc("ocifs_passthrough_files_total", "Files handed to the kernel to read itself (FUSE passthrough).", nil, nil)
	descHits        = prometheus.NewDesc("ocifs_cache_hits_total", "Reads answered from what is cached (memory or disk), by kind: span, chunk, file (extracted from a verified layer), whole (a layer served whole).", []string{"kind"}, nil)
	descMisses      = prometheus.NewDesc("ocifs_cache_misses_total", "Reads that had to fetch, by kind: span, chunk, whole (a read that waited for its whole layer).", []string{"kind"}, nil)
	descFetchedFor  = prometheus.NewDesc("ocifs_layer_fetch_bytes_total", "Layer bytes received from registries and layouts by why they were fetched: reader (a read or the mount waits on them), read_ahead (ahead of a sequential reader), background (prefetch).", []string{"purpose"}, nil)
	descFallbacks   = prometheus.NewDesc("ocifs_fallbacks_total", "Layers served otherwise than planned, or refused, by reason (see 'ocifs stats' and the log for which layer).", []string{"reason"}, nil)
	descQueue       = prometheus.NewDesc("ocifs_background_queue", "Background work under way: stream (whole-layer fetches running), read_ahead (read-ahead runs being fetched), cache_write (runs of fetched spans being written to the disk cache, or waiting to be).", []string{"work"}, nil)
	descVerify      = prometheus.NewDesc("ocifs_verify_failures_total", "Reads refused because bytes did not match their digest (EIO to the reader).", nil, nil)
	descImages      = prometheus.NewDesc("ocifs_images", "Images being served.", nil, nil)
	descLayers      = prometheus.NewDesc("ocifs_layers", "Layers of the images being served, by lazy mode and state (complete: whole and verified; partial: not yet).", []string{"mode", "state"}, nil)
	descBgLayers    = prometheus.NewDesc("ocifs_background_layers", "Layers of the images being served with background work left (fetch, checks, extraction), by lazy mode.", []string{"mode"}, nil)
	descPending     = prometheus.NewDesc("ocifs_background_pending_bytes", "Compressed bytes of layers with background work left that are not fetched yet.", nil, nil)
	descCacheBytes  = prometheus.NewDesc("ocifs_cache_bytes", "Bytes in the cache by kind (blob, index, tree), as of its last scan.", []string{"kind"}, nil)
	descCacheEnts   = prometheus.NewDesc("ocifs_cache_entries", "Entries in the cache by kind, as of its last scan.", []string{"kind"}, nil)
	descCacheErr    = prometheus.NewDesc("ocifs_cache_scan_errors", "1 when the last listing of the cache failed.", nil, nil)
	descBoundMax    = prometheus.NewDesc("ocifs_cache_max_bytes", "The cache's bound (--cache-max), held at write time.", nil, nil)
	descBoundBytes  = prometheus.NewDesc("ocifs_cache_bound_bytes", "The cache's entries as the bound counts them now (what this daemon admitted and removed, recounted at every trim).", nil, nil)
	descBoundPeak   = prometheus.NewDesc("ocifs_cache_peak_bytes", "The highest ocifs_cache_bound_bytes since the daemon started.", nil, nil)
	descEvictions   = prometheus.NewDesc("ocifs_cache_evictions_total", "Cache entries removed to make room for new ones under --cache-max (periodic trims not included).", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descFetchBytes, descServed, descPassthrough, descHits, descMisses,
		descFetchedFor, descFallbacks, descQueue, descBoundMax, descBoundBytes, descBoundPeak, descEvictions,
		descVerify, descImages, descLayers, descBgLayers, descPending, descCacheBytes, descCacheEnts, descCacheErr} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for mode, n := range m.tot.modeRequests {
		counter(descRequests, n, mode)
	}
	for mode, n := range m.tot.modeBytes {
		counter(descFetchBytes, n, mode)
	}
	for mode, n := range m.tot.served {
		counter(descServed, n, mode)
	}
	counter(descPassthrough, m.tot.passthrough)
	for kind, n := range m.tot.hits {
		counter(descHits, n, kind)
	}
	for kind, n := range m.tot.misses {
		if kind != fs.CacheFile { // an extracted file is never missed: it is there or not used
			counter(descMisses, n, kind)
		}
	}
	for p, n := range m.tot.fetchedFor {
		counter(descFetchedFor, n, p)
	}
	fallbacks := maps.Clone(m.tot.fallbacks)
	for r, fns := range m.extra {
		for _, fn := range fns {
			fallbacks[r] += fn()
		}
	}
	for r, n := range fallbacks {
		counter(descFallbacks, n, r)
	}
	counter(descVerify, m.tot.verifyFailures)

	gauge(descImages, float64(len(m.images)))
	type key struct{ mode, state string }
	layers := map[key]int{}
	background := map[string]int{}
	var pending int64
	var queue fs.BackgroundStats
	for _, seen := range m.images {
		b := seen.stats.Background
		queue.Streams += b.Streams
		queue.ReadAhead += b.ReadAhead
		queue.CacheWrites += b.CacheWrites
		for _, l := range seen.stats.Layers {
			state := "partial"
			if l.Complete && l.Verified {
				state = "complete"
			}
			layers[key{l.Mode, state}]++
			if !l.Settled {
				background[l.Mode]++
				if !l.Complete {
					pending += max(l.Size-l.BytesFetched, 0)
				}
			}
		}
	}
	for k, n := range layers {
		gauge(descLayers, float64(n), k.mode, k.state)
	}
	for mode, n := range background {
		gauge(descBgLayers, float64(n), mode)
	}
	gauge(descPending, float64(pending))
	gauge(descQueue, float64(queue.Streams), "stream")
	gauge(descQueue, float64(queue.ReadAhead), "read_ahead")
	gauge(descQueue, float64(queue.CacheWrites), "cache_write")

	// The write-time bound of the clients' caches (one, in every daemon).
	seenCache := map[*fetch.Cache]bool{}
	var bs fetch.BoundStats
	for c := range m.clients {
		cache := c.Cache()
		if seenCache[cache] {
			continue
		}
		seenCache[cache] = true
		if b := cache.Bound(); b.Max > 0 {
			bs.Max += b.Max
			bs.Bytes += b.Bytes
			bs.Peak += b.Peak
			bs.Evicted += b.Evicted
		}
	}
	if bs.Max > 0 {
		gauge(descBoundMax, float64(bs.Max))
		gauge(descBoundBytes, float64(bs.Bytes))
		gauge(descBoundPeak, float64(bs.Peak))
		counter(descEvictions, bs.Evicted)
	}

	if m.cache != nil {
		m.scanCache(time.Now())
		failed := 0.0
		if m.scanErr != nil {
			failed = 1
		}
		gauge(descCacheErr, failed)
		for kind, u := range m.usage {
			gauge(descCacheBytes, float64(u.bytes), kind)
			gauge(descCacheEnts, float64(u.n), kind)
		}
	}
}

// Server serves a Metrics over HTTP.
type Server struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// Serve listens on addr (host:port; ":0" picks a port) and serves h at
// /metrics until Close.
func Serve(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: ln.Addr(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener is gone; Close still works
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Close stops the server and waits for it.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}
