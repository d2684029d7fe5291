package main

import (
	"time"

	"github.com/ocifs/ocifs/fetch"
	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/fs/metrics"
)

// daemonMetrics is a daemon's Prometheus endpoint; the nil value (no
// --metrics-address) does nothing.
type daemonMetrics struct {
	m   *metrics.Metrics
	srv *metrics.Server
}

// startMetrics serves metrics at addr ("" for none) and makes e's fetch
// clients report their range reads to them.
func startMetrics(e *env, addr string) (*daemonMetrics, error) {
	if addr == "" {
		return nil, nil
	}
	cache, err := fetch.OpenCache(e.g.cacheDir)
	if err != nil {
		return nil, err
	}
	m := metrics.New(metrics.Options{Cache: cache})
	srv, err := metrics.Serve(addr, m.Handler())
	if err != nil {
		return nil, withHint(err, "pick a free address for --metrics-address, or leave it out")
	}
	e.onRange = m.ObserveRange
	e.log.Info("serving metrics", "address", "http://"+srv.Addr().String()+"/metrics")
	return &daemonMetrics{m: m, srv: srv}, nil
}

// addClient counts what client fetches (and its cache's bound) before any
// image is loaded with it.
func (d *daemonMetrics) addClient(client *fetch.Client) {
	if d != nil {
		d.m.AddClient(client)
	}
}

// addFallbacks counts a daemon's own fallbacks (Metrics.AddFallbacks).
func (d *daemonMetrics) addFallbacks(reason string, count func() int64) {
	if d != nil {
		d.m.AddFallbacks(reason, count)
	}
}

// add counts what client fetches and im serves; remove folds im's last
// counts into the totals and stops reading it (call it before im.Close).
func (d *daemonMetrics) add(client *fetch.Client, im *fs.Image) (remove func()) {
	if d == nil {
		return func() {}
	}
	d.m.AddClient(client)
	return d.m.AddImage(im, client)
}

func (d *daemonMetrics) ready(took time.Duration) {
	if d != nil {
		d.m.ObserveReady(took)
	}
}

// address is where the metrics are served, "" for nowhere.
func (d *daemonMetrics) address() string {
	if d == nil {
		return ""
	}
	return d.srv.Addr().String()
}

func (d *daemonMetrics) close() {
	if d != nil {
		_ = d.srv.Close()
	}
}
