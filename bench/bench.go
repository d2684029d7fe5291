package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ocifs/ocifs/fs/snapshotter/critest"
)

// Options selects what Run measures. Empty lists mean all.
type Options struct {
	// Ocifs is the ocifs binary to measure.
	Ocifs string
	// Profiles: "lan", "cloud", "slow".
	Profiles  []string
	Images    []string // python, go, model
	Formats   []string // gzip, gzip+index, estargz, zstd:chunked
	Methods   []string // ocifs-lazy, ocifs-demand, ocifs-profile, ocifs-warm, ocifs-pull, containerd, the container methods
	Workloads []string // first-file, start-up, walk, read-all
	// Reps is the number of repetitions of each cell (default 3).
	Reps int
	// Out is the directory for <date>.json, .md and .svg.
	Out string
	// Cache holds the trees, blobs, built images and the registry storage
	// between runs (bench/.cache).
	Cache string
	// Quick makes a smaller model image and runs one repetition.
	Quick bool
	// AllCells measures every workload of every format with the cold lazy
	// method. By default plain gzip (streamed whole before the mount
	// answers) runs first-file and read-all only, and eStargz and
	// zstd:chunked first-file and start-up only, to keep the run short.
	AllCells bool
	// ColdWorkloads drops the page cache before each workload of the pull
	// methods too, so the pulled tree is read from disk as a warm ocifs
	// cache is (by default it runs right after the pull, pages warm).
	ColdWorkloads bool
	// Peers is the directory `make peers` builds the peer snapshotters and
	// stores into; Containerd2 the directory of containerd 2.x and its shim
	// (`make containerd2`).
	Peers, Containerd2 string
	// OcifsSnapshotter is the command line the cri-ocifs method starts
	// ({ocifs}, {address}, {root}, {cache} replaced); empty means
	// DefaultOcifsSnapshotter.
	OcifsSnapshotter string
	// Log receives progress lines; nil means os.Stderr.
	Log io.Writer `json:"-"`
}

// Names lists the valid values of each selector, for flag help.
var Names = map[string][]string{
	"profile":  {"lan", "cloud", "slow"},
	"image":    {"python", "go", "model", "files100k"},
	"format":   allFormats,
	"method":   append(slices.Clone(allMethods), containerMethods...),
	"workload": allWorkloads,
}

func pick(sel []string, all []string, what string) ([]string, error) {
	if len(sel) == 0 || (len(sel) == 1 && (sel[0] == "all" || sel[0] == "")) {
		return all, nil
	}
	for _, s := range sel {
		if !slices.Contains(all, s) {
			return nil, fmt.Errorf("invalid input: unknown %s %q (want one of %s)", what, s, strings.Join(all, ", "))
		}
	}
	var out []string // in the canonical order
	for _, a := range all {
		if slices.Contains(sel, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// Result is everything one run measured, as written to <date>.json.
type Result struct {
	Started   time.Time         `json:"started"`
	Seconds   float64           `json:"seconds"`
	Machine   map[string]string `json:"machine"`
	Options   Options           `json:"options"`
	Profiles  []profile         `json:"profiles"`
	Images    []imageInfo       `json:"images"`
	Samples   []sample          `json:"samples"`
	Skipped   []string          `json:"skipped"`
	Artifacts map[string]string `json:"-"`
}

type imageInfo struct {
	Name      string   `json:"name"`
	Format    string   `json:"format"`
	Ref       string   `json:"ref"`
	Size      int64    `json:"compressed_bytes"`
	Unpacked  int64    `json:"tar_bytes"`
	Files     int      `json:"files"`
	Layers    int      `json:"layers"`
	Modes     []string `json:"ocifs_modes"`
	Supported bool     `json:"supported"`
	Note      string   `json:"note,omitempty"`
	built     *builtImage
	spec      imageSpec
}

// Run builds the images, starts the registry in its own network namespace
// and measures every selected cell, then writes the JSON, markdown and SVG
// files into o.Out and returns their paths in Result.Artifacts.
func Run(ctx context.Context, o Options) (*Result, error) {
	var err error
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if o.Reps <= 0 {
		o.Reps = 3
	}
	if o.Ocifs, err = filepath.Abs(o.Ocifs); err != nil {
		return nil, err
	}
	sel := map[string]*[]string{"profile": &o.Profiles, "image": &o.Images, "format": &o.Formats, "method": &o.Methods, "workload": &o.Workloads}
	for k, p := range sel {
		if *p, err = pick(*p, Names[k], k); err != nil {
			return nil, err
		}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("ocifs bench needs root (network namespace, mounts, drop_caches)")
	}
	unlock, err := lockRun()
	if err != nil {
		return nil, err
	}
	defer unlock()
	res := &Result{Started: time.Now(), Options: o, Machine: machineInfo(), Artifacts: map[string]string{}}
	logf := func(format string, a ...any) {
		fmt.Fprintf(o.Log, "[%6.1fs] %s\n", time.Since(res.Started).Seconds(), fmt.Sprintf(format, a...))
	}
	c := &cacheDir{root: o.Cache}
	for _, d := range []string{"blobs/sha256", "images", "trees"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return nil, err
		}
	}
	work, err := os.MkdirTemp("/var/tmp", "ocifs-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	logf("work directory %s, cache %s", work, o.Cache)
	net, err := startNetwork(ctx, work, c.path("registry"))
	if err != nil {
		return nil, err
	}
	defer net.close()
	r := &runner{ocifs: o.Ocifs, work: work, net: net, log: o.Log, coldWorkloads: o.ColdWorkloads,
		peers: o.Peers, containerd2: o.Containerd2, ocifsSnapshotter: o.OcifsSnapshotter, sociRefs: map[*builtImage]string{},
		profiled: map[*builtImage]string{}}
	if r.ocifsSnapshotter == "" {
		r.ocifsSnapshotter = DefaultOcifsSnapshotter
	}
	if r.peers, err = filepath.Abs(r.peers); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(o.Methods, func(m string) bool { return strings.HasPrefix(m, "cri-") }) {
		if _, err := critest.PushPauseImage(ctx, net.PushHost(), "bench/pause", "1"); err != nil {
			return nil, err
		}
		r.pause = net.Host() + "/bench/pause:1"
	}
	notAvailable := map[string]error{}
	if err := net.shape(profiles["lan"]); err != nil {
		return nil, err
	}

	// Build, push and inspect every image.
	unsupported := map[string]string{}
	for _, name := range o.Images {
		spec := imageSpecs[slices.IndexFunc(imageSpecs, func(s imageSpec) bool { return s.Name == name })]
		for _, f := range o.Formats {
			if !spec.allows("format", f) {
				continue
			}
			info := imageInfo{Name: name, Format: f, spec: spec}
			if why, ok := unsupported[f]; ok {
				info.Note = why
				res.Images = append(res.Images, info)
				continue
			}
			logf("image %s as %s: build", name, f)
			b, err := buildImage(ctx, c, spec, f, o.Quick)
			if err != nil {
				return nil, err
			}
			if err := push(ctx, c, net.PushHost(), b); err != nil {
				return nil, err
			}
			if f == fmtGzipIndex && !hasReferrerTag(ctx, net.PushHost(), b) {
				logf("image %s: ocifs index build --push", name)
				if _, _, _, err := r.run(ctx, r.ocifs, "--cache-dir", filepath.Join(work, "index-cache"), "index", "build", "--push", b.ref(net.Host())); err != nil {
					return nil, err
				}
				os.RemoveAll(filepath.Join(work, "index-cache"))
			}
			info.built, info.Ref, info.Size, info.Unpacked, info.Files, info.Layers = b, b.ref(net.Host()), b.Size, b.Unpacked, b.Files, len(b.Layers)
			info.Modes, err = r.inspectModes(ctx, b.ref(net.Host()))
			if err != nil {
				return nil, err
			}
			info.Supported, info.Note = supported(f, info.Modes, b)
			if !info.Supported {
				unsupported[f] = info.Note
			}
			logf("image %s as %s: %d layers, %.1f MB compressed, %.1f MB tar, %d files, modes %v %s", name, f, len(b.Layers),
				float64(b.Size)/1e6, float64(b.Unpacked)/1e6, b.Files, info.Modes, info.Note)
			res.Images = append(res.Images, info)
		}
	}

	for _, pn := range o.Profiles {
		p := profiles[pn]
		res.Profiles = append(res.Profiles, p)
		if err := net.shape(p); err != nil {
			return nil, err
		}
		for _, info := range res.Images {
			if !info.Supported {
				res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s %s: %s", pn, info.Name, info.Format, info.Note))
				continue
			}
			if !info.spec.allows("profile", pn) {
				continue
			}
			base := sample{Profile: pn, Image: info.Name, Format: info.Format}
			for _, m := range o.Methods {
				if !info.spec.allows("method", m) {
					continue
				}
				if isContainerMethod(m) {
					if info.Format != containerFormat[m] || info.spec.Container == nil {
						continue
					}
					if _, seen := notAvailable[m]; !seen {
						notAvailable[m] = r.available(ctx, m)
					}
					if m == mCRIOcifsProf && notAvailable[m] == nil {
						if err := r.recordProfile(ctx, info.built, info.spec.Container); err != nil {
							res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s %s %s: profile record: %v", pn, info.Name, info.Format, m, err))
							logf("  profile record failed: %v", err)
							continue
						}
					}
					if m == mCRISoci && notAvailable[m] == nil && r.sociRefs[info.built] == "" {
						logf("%s %s %s: soci-convert (SOCI index, pushed)", pn, info.Name, info.Format)
						ref, err := r.sociIndex(ctx, c, info.built)
						if err != nil {
							notAvailable[m] = fmt.Errorf("SOCI index: %w", err)
						} else {
							r.sociRefs[info.built] = ref
						}
					}
					if err := notAvailable[m]; err != nil {
						res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s %s %s: %v", pn, info.Name, info.Format, m, err))
						s := base
						s.Method, s.Workload, s.Err = m, wContainer, err.Error()
						res.Samples = append(res.Samples, s)
						logSample(logf, s)
						continue
					}
					for rep := range o.Reps {
						if ctx.Err() != nil {
							return nil, ctx.Err()
						}
						s := base
						s.Method, s.Workload, s.Rep = m, wContainer, rep
						if err := r.container(ctx, &s, info.built, info.spec); err != nil {
							s.Err = err.Error()
						}
						res.Samples = append(res.Samples, s)
						logSample(logf, s)
					}
					continue
				}
				if (m == mPull || m == mContainerd) && info.Format != fmtGzip {
					continue // a full pull reads every byte whatever the format: measured on plain gzip
				}
				if m == mWarm && info.Format != warmFormat(o.Formats) && info.spec.Only == nil {
					continue // a complete cache serves every format alike: measured on one
				}
				if m == mProfile {
					if info.Format != fmtGzipIndex && info.Format != fmtEstargz {
						continue // the lazy formats a start-up reads piece by piece
					}
					if err := r.recordProfile(ctx, info.built, info.spec.Startup); err != nil {
						res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s %s %s: profile record: %v", pn, info.Name, info.Format, m, err))
						logf("  profile record failed: %v", err)
						continue
					}
				}
				if m == mStargzStore {
					if info.Format != fmtEstargz {
						continue // the format stargz-store reads lazily
					}
					if _, seen := notAvailable[m]; !seen {
						notAvailable[m] = r.available(ctx, m)
					}
					if err := notAvailable[m]; err != nil {
						res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s %s %s: %v", pn, info.Name, info.Format, m, err))
						continue
					}
				}
				var warm string
				if m == mWarm {
					warm = filepath.Join(work, "warm-cache")
					os.RemoveAll(warm)
					logf("%s %s %s: filling a warm cache", pn, info.Name, info.Format)
					if err := r.warmCache(ctx, info.built, warm); err != nil {
						res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s %s %s: warm cache: %v", pn, info.Name, info.Format, m, err))
						logf("  warm cache failed: %v", err)
						continue
					}
				}
				for rep := range o.Reps {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					switch m {
					case mLazy, mDemand, mProfile, mStargzStore, mWarm:
						for _, w := range o.Workloads {
							if !info.spec.allows("workload", w) || (m == mLazy && !o.AllCells && !defaultCell(info.Format, w)) {
								continue
							}
							if m == mDemand && ((w != wStartup && w != wFirst) || (info.Format != fmtGzipIndex && info.Format != fmtEstargz)) {
								continue // what a program alone fetches: first file and start-up, on the formats read piece by piece
							}
							if m == mProfile && w != wStartup {
								continue // what the profile was recorded of
							}
							s := base
							s.Method, s.Workload, s.Rep = m, w, rep
							if m == mStargzStore {
								if err := r.stargzStore(ctx, &s, info.built, info.spec); err != nil {
									s.Err = err.Error()
								}
								res.Samples = append(res.Samples, s)
								logSample(logf, s)
								continue
							}
							cache := warm
							if m != mWarm {
								cache = filepath.Join(work, "cold-cache")
								os.RemoveAll(cache)
							}
							if err := r.lazy(ctx, &s, info.built, info.spec, cache); err != nil {
								s.Err = err.Error()
							}
							if m != mWarm {
								os.RemoveAll(cache)
							}
							res.Samples = append(res.Samples, s)
							logSample(logf, s)
						}
					case mPull, mContainerd:
						ss, err := r.fullPull(ctx, m, info.built, info.spec, o.Workloads, sample{Profile: pn, Image: info.Name, Format: info.Format, Rep: rep})
						if err != nil {
							for _, w := range o.Workloads {
								s := base
								s.Method, s.Workload, s.Rep, s.Err = m, w, rep, err.Error()
								ss = append(ss, s)
							}
						}
						for _, s := range ss {
							res.Samples = append(res.Samples, s)
							logSample(logf, s)
						}
					}
				}
				if warm != "" {
					os.RemoveAll(warm)
				}
			}
		}
	}
	res.Seconds = time.Since(res.Started).Seconds()
	if err := writeResults(res, o.Out); err != nil {
		return res, err
	}
	return res, nil
}

// defaultCell says which workloads the cold lazy method runs on a format
// unless Options.AllCells.
func defaultCell(format, w string) bool {
	switch format {
	case fmtGzip:
		return w == wFirst || w == wReadAll
	case fmtEstargz, fmtZstdChunk:
		return w == wFirst || w == wStartup
	}
	return true
}

// warmFormat is the one format the warm-cache method is measured on:
// gzip+index when selected, else the first selected.
func warmFormat(formats []string) string {
	if slices.Contains(formats, fmtGzipIndex) {
		return fmtGzipIndex
	}
	return formats[0]
}

func logSample(logf func(string, ...any), s sample) {
	e := ""
	if s.Err != "" {
		e = " ERROR " + s.Err
	}
	logf("%-5s %-6s %-12s %-10s %-10s #%d ready %7.3fs done %7.3fs %8.1f MB %5d req rss %6.1f MB cpu %6.2fs%s",
		s.Profile, s.Image, s.Format, s.Method, s.Workload, s.Rep, s.ReadyS, s.DoneS, float64(s.Bytes)/1e6, s.Requests,
		float64(s.PeakRSSKB)/1024, s.CPUS, e)
}

func (r *runner) inspectModes(ctx context.Context, ref string) ([]string, error) {
	out, _, _, err := r.run(ctx, r.ocifs, "--cache-dir", filepath.Join(r.work, "inspect-cache"), "inspect", "--json", ref)
	if err != nil {
		return nil, err
	}
	var v struct {
		Layers []struct {
			Mode string `json:"mode"`
			Size int64  `json:"size"`
		} `json:"layers"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("ocifs inspect --json: %w", err)
	}
	var modes []string
	for _, l := range v.Layers {
		modes = append(modes, l.Mode)
	}
	return modes, nil
}

// supported says whether ocifs reads a format the way it is meant to:
// the layers bigger than the whole-fetch threshold must be in the mode the
// format names.
func supported(format string, modes []string, b *builtImage) (bool, string) {
	want := map[string]string{fmtGzip: "stream", fmtGzipIndex: "index", fmtEstargz: "estargz", fmtZstdChunk: "zstd-chunked"}[format]
	for i, m := range modes {
		if i < len(b.Layers) && b.Layers[i].Size < 1<<20 {
			continue
		}
		if m != want {
			return false, fmt.Sprintf("not supported yet: ocifs inspect gives mode %q for a %s layer (want %q)", m, format, want)
		}
	}
	return true, ""
}

func machineInfo() map[string]string {
	m := map[string]string{}
	sh := func(k string, name string, args ...string) {
		if out, err := exec.Command(name, args...).Output(); err == nil {
			m[k] = strings.TrimSpace(string(out))
		}
	}
	sh("nproc", "nproc")
	sh("kernel", "uname", "-r")
	sh("go", "go", "version")
	sh("containerd", "containerd", "--version")
	sh("registry", "dpkg-query", "-W", "-f", "${Version}", "docker-registry")
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m["memory"] = strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:], " ")
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return m
}
