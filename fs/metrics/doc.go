// Package metrics exposes what ocifs daemons do as Prometheus metrics: the
// mount daemon, the snapshotter and the store build one [Metrics], hand it
// the fetch clients, images and cache they serve, and serve its Handler on
// --metrics-address.
//
// Most values are read at scrape time from the counters ocifs keeps anyway
// ([fs.Image.Stats], [fs.Image.Layers], [fetch.Client.Stats], the cache's
// listing), so serving metrics costs nothing between scrapes. Counters stay
// monotonic when an image is dropped: its last values are folded into the
// totals. Only the Range-read latency is observed as it happens, through
// [fetch.Options.ObserveRange] (set it to [Metrics.ObserveRange]).
//
// Names follow Prometheus' conventions (ocifs_<what>_<unit>[_total]), and
// labels are few and bounded: a layer's lazy mode, a cache kind, a purpose,
// a fallback reason, a kind of background work.
// No label names a file, an image or a mountpoint.
//
// # Metrics
//
//	ocifs_fetch_requests_total{mode}          HTTP requests sent to registries (each attempt): per layer mode, "metadata" for the rest
//	ocifs_fetch_bytes_total{mode}             body bytes received: per layer mode, "metadata" for manifests, configs, referrers
//	ocifs_fetch_range_reads_total{source}     blob range reads: source="registry" or "cache"
//	ocifs_fetch_range_errors_total            range reads that failed after their retries
//	ocifs_fetch_range_duration_seconds        histogram: a range read from the registry, retries included
//	ocifs_layer_fetch_bytes_total{purpose}    layer bytes received, by why: reader (a read or the mount waits on them),
//	                                          read_ahead (ahead of a sequential reader), background (prefetch)
//	ocifs_served_bytes_total{mode}            bytes read through the mount daemon, by the mode of the file's layer (passthrough reads bypass it)
//	ocifs_passthrough_files_total             files handed to the kernel to read itself
//	ocifs_cache_hits_total{kind}              reads answered from the cache: kind span, chunk, file (extracted), whole (a layer served whole)
//	ocifs_cache_misses_total{kind}            reads that had to fetch: span, chunk, whole (waited for the whole layer)
//	ocifs_verify_failures_total               bytes refused because their digest did not match (EIO)
//	ocifs_fallbacks_total{reason}             layers served otherwise than planned, or refused: remote_index_unusable,
//	                                          cached_index_unusable, toc_unusable, toc_unverified, toc_inexact_names,
//	                                          table_disagrees, quarantine, not_cached, not_extracted (fs.Fallback*);
//	                                          the snapshotter adds runtime_download (layers containerd downloads itself)
//	ocifs_images                              images being served
//	ocifs_layers{mode,state}                  their layers: state complete (verified whole) or partial
//	ocifs_background_layers{mode}             of those, the layers with background work left
//	ocifs_background_pending_bytes            compressed bytes of layers the background has not fetched yet
//	ocifs_background_queue{work}              background work under way: stream (whole-layer fetches), read_ahead (runs
//	                                          in flight), cache_write (fetched spans waiting for the disk)
//	ocifs_mount_ready_seconds                 histogram: from start to a mount answering
//	ocifs_cache_bytes{kind}, ocifs_cache_entries{kind}  the cache's size, scanned at most every CacheScanInterval
//	ocifs_cache_max_bytes, ocifs_cache_bound_bytes,     with --cache-max: the bound, the entries as it counts them now,
//	ocifs_cache_peak_bytes, ocifs_cache_evictions_total the highest count since start, entries removed to make room
//
// plus the Go runtime's and the process's own (go_*, process_*).
package metrics
