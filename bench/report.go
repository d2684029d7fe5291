package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// stat is the median, min and max of one figure over a cell's repetitions.
type stat struct{ med, min, max float64 }

func summarize(v []float64) stat {
	if len(v) == 0 {
		return stat{math.NaN(), math.NaN(), math.NaN()}
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med, s[0], s[len(s)-1]}
}

type cellKey struct{ profile, image, format, method, workload string }

// cells groups the successful samples by cell.
func cells(res *Result) (map[cellKey][]sample, map[cellKey]string) {
	ok, errs := map[cellKey][]sample{}, map[cellKey]string{}
	for _, s := range res.Samples {
		k := cellKey{s.Profile, s.Image, s.Format, s.Method, s.Workload}
		if s.Err != "" {
			errs[k] = s.Err
			continue
		}
		ok[k] = append(ok[k], s)
	}
	return ok, errs
}

func figure(ss []sample, f func(sample) float64) stat {
	var v []float64
	for _, s := range ss {
		v = append(v, f(s))
	}
	return summarize(v)
}

func secs(v float64) string {
	switch {
	case math.IsNaN(v):
		return "–"
	case v < 1:
		return fmt.Sprintf("%.0f ms", v*1000)
	case v < 10:
		return fmt.Sprintf("%.2f s", v)
	}
	return fmt.Sprintf("%.1f s", v)
}

func mb(v float64) string {
	switch {
	case v < 1e6:
		return fmt.Sprintf("%.0f kB", v/1e3)
	case v < 1e9:
		return fmt.Sprintf("%.1f MB", v/1e6)
	}
	return fmt.Sprintf("%.2f GB", v/1e9)
}

// rows is the order of table rows: (image, format, method) that have data.
func rows(res *Result, ok map[cellKey][]sample, errs map[cellKey]string, profile string) [][3]string {
	var out [][3]string
	for _, im := range res.Options.Images {
		for _, f := range allFormats {
			for _, m := range allMethods {
				for _, w := range allWorkloads {
					k := cellKey{profile, im, f, m, w}
					if len(ok[k]) > 0 || errs[k] != "" {
						out = append(out, [3]string{im, f, m})
						break
					}
				}
			}
		}
	}
	return out
}

func ratio(v, base float64, what string) string {
	if math.IsNaN(v) || math.IsNaN(base) || base == 0 {
		return ""
	}
	return fmt.Sprintf(" · %.2g× %s", v/base, what)
}

func writeMarkdown(res *Result) string {
	ok, errs := cells(res)
	var b strings.Builder
	fmt.Fprintf(&b, "# ocifs bench %s\n\n", res.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Machine: %s CPUs (%s), %s memory, kernel %s, %s, containerd %s, docker-registry %s. Run took %.0f s, %d repetitions per cell.\n\n",
		res.Machine["nproc"], res.Machine["cpu"], res.Machine["memory"], res.Machine["kernel"], res.Machine["go"], res.Machine["containerd"], res.Machine["registry"], res.Seconds, res.Options.Reps)
	b.WriteString("Images (built on this machine):\n\n| image | format | layers | compressed | tar | files | ocifs modes | note |\n|---|---|---|---|---|---|---|---|\n")
	for _, im := range res.Images {
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %d | %s | %s |\n", im.Name, im.Format, im.Layers, mb(float64(im.Size)), mb(float64(im.Unpacked)), im.Files, strings.Join(im.Modes, ","), im.Note)
	}
	b.WriteString("\nCells: median [min–max] over the repetitions; `N× pull` is the ratio of the median to that of `ocifs pull` + overlayfs of the same image, workload and profile (plain gzip), `N× ctr` the ratio to containerd's (below 1: smaller or faster). Bytes and requests are counted by the proxy every method goes through (HTTP headers included). For the pull methods the pull is done once per repetition and each workload runs after it on the same tree (its page cache warm from the unpack, as right after a pull); ready is the pull, done adds the workload.\n")
	type fig struct {
		title string
		f     func(sample) float64
		fmt   func(float64) string
	}
	figs := []fig{
		{"time to done (start → workload finished)", func(s sample) float64 { return s.DoneS }, secs},
		{"time to ready (start → mount answers / pulled tree mounted)", func(s sample) float64 { return s.ReadyS }, secs},
		{"bytes fetched", func(s sample) float64 { return float64(s.Bytes) }, mb},
		{"HTTP requests", func(s sample) float64 { return float64(s.Requests) }, func(v float64) string { return fmt.Sprintf("%.0f", v) }},
		{"peak RSS of the daemon (ocifs daemon, containerd; `ocifs pull` itself)", func(s sample) float64 { return float64(s.PeakRSSKB) * 1024 }, mb},
		{"CPU seconds (daemon + commands + workload)", func(s sample) float64 { return s.CPUS }, func(v float64) string { return fmt.Sprintf("%.2f", v) }},
	}
	for _, p := range res.Profiles {
		fmt.Fprintf(&b, "\n## Profile %s: %s\n", p.Name, p.Note)
		rs := rows(res, ok, errs, p.Name)
		for _, fg := range figs {
			fmt.Fprintf(&b, "\n### %s\n\n| image | format | method |", fg.title)
			for _, w := range res.Options.Workloads {
				fmt.Fprintf(&b, " %s |", w)
			}
			b.WriteString("\n|---|---|---|" + strings.Repeat("---|", len(res.Options.Workloads)) + "\n")
			for _, r := range rs {
				fmt.Fprintf(&b, "| %s | %s | %s |", r[0], r[1], r[2])
				for _, w := range res.Options.Workloads {
					k := cellKey{p.Name, r[0], r[1], r[2], w}
					ss := ok[k]
					if len(ss) == 0 {
						if e := errs[k]; e != "" {
							fmt.Fprintf(&b, " error: %s |", mdEscape(firstLine(e, 80)))
						} else {
							b.WriteString(" |")
						}
						continue
					}
					st := figure(ss, fg.f)
					cell := fg.fmt(st.med)
					if len(ss) > 1 {
						cell += fmt.Sprintf(" [%s–%s]", fg.fmt(st.min), fg.fmt(st.max))
					}
					if r[2] != mPull {
						if base := ok[cellKey{p.Name, r[0], fmtGzip, mPull, w}]; len(base) > 0 {
							cell += ratio(st.med, figure(base, fg.f).med, "pull")
						}
					}
					if r[2] != mContainerd {
						if base := ok[cellKey{p.Name, r[0], fmtGzip, mContainerd, w}]; len(base) > 0 {
							cell += ratio(st.med, figure(base, fg.f).med, "ctr")
						}
					}
					if n := len(res.Samples); n > 0 && len(ss) < res.Options.Reps {
						cell += fmt.Sprintf(" (%d of %d ok: %s)", len(ss), res.Options.Reps, mdEscape(firstLine(errs[k], 60)))
					}
					fmt.Fprintf(&b, " %s |", cell)
				}
				b.WriteString("\n")
			}
		}
	}
	writeContainerStart(&b, res, ok, errs)
	writeGoals(&b, res, ok)
	if len(res.Skipped) > 0 {
		b.WriteString("\nNot measured:\n\n")
		for _, s := range res.Skipped {
			fmt.Fprintf(&b, "- %s\n", s)
		}
	}
	return b.String()
}

func firstLine(s string, n int) string {
	s = strings.SplitN(s, "\n", 2)[0]
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// writeSVG draws, per profile, a grouped bar chart of the median time to
// done (log scale): one group per image and workload, one bar per method
// (lazy and warm on gzip+index when measured, else on gzip).
func writeSVG(res *Result) string {
	ok, _ := cells(res)
	type bar struct {
		label string
		key   func(p, im, w string) cellKey
		color string
	}
	lazyFmt := fmtGzipIndex
	if !slices.Contains(res.Options.Formats, fmtGzipIndex) {
		lazyFmt = fmtGzip
	}
	bars := []bar{
		{"ocifs lazy, cold (" + lazyFmt + ")", func(p, im, w string) cellKey { return cellKey{p, im, lazyFmt, mLazy, w} }, "#2b8cbe"},
		{"ocifs lazy, cold (gzip, streamed)", func(p, im, w string) cellKey { return cellKey{p, im, fmtGzip, mLazy, w} }, "#a6bddb"},
		{"ocifs warm cache (" + lazyFmt + ")", func(p, im, w string) cellKey { return cellKey{p, im, lazyFmt, mWarm, w} }, "#31a354"},
		{"ocifs pull + overlayfs", func(p, im, w string) cellKey { return cellKey{p, im, fmtGzip, mPull, w} }, "#fdae6b"},
		{"containerd pull + snapshot", func(p, im, w string) cellKey { return cellKey{p, im, fmtGzip, mContainerd, w} }, "#e6550d"},
	}
	const bw, gap, chartH, left, top = 9.0, 14.0, 220.0, 60.0, 40.0
	groups := len(res.Options.Images) * len(res.Options.Workloads)
	groupW := float64(len(bars))*bw + gap
	width := left + float64(groups)*groupW + 20
	panelH := chartH + 90
	height := top + float64(len(res.Profiles))*panelH + 30
	lo, hi := 0.01, 100.0
	for _, ss := range ok {
		for _, s := range ss {
			hi = math.Max(hi, s.DoneS)
		}
	}
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	y := func(base, v float64) float64 {
		v = math.Max(v, lo)
		return base + chartH - chartH*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="10">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="18" font-size="14">ocifs bench %s: median time to done (log scale, seconds)</text>`+"\n", left, res.Started.UTC().Format("2006-01-02"))
	for i, br := range bars {
		x := left + float64(i)*170
		fmt.Fprintf(&b, `<rect x="%.0f" y="26" width="10" height="10" fill="%s"/><text x="%.0f" y="35">%s</text>`+"\n", x, br.color, x+14, br.label)
	}
	for pi, p := range res.Profiles {
		base := top + 20 + float64(pi)*panelH
		fmt.Fprintf(&b, `<text x="4" y="%.0f" font-size="12" font-weight="bold">%s</text>`+"\n", base-4, p.Name)
		for d := lo; d <= hi*1.0001; d *= 10 {
			yy := y(base, d)
			fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%g</text>`+"\n", left, width-20, yy, yy, left-4, yy+3, d)
		}
		g := 0
		for _, im := range res.Options.Images {
			for _, w := range res.Options.Workloads {
				x0 := left + float64(g)*groupW + gap/2
				for i, br := range bars {
					ss := ok[br.key(p.Name, im, w)]
					if len(ss) == 0 {
						continue
					}
					st := figure(ss, func(s sample) float64 { return s.DoneS })
					yy := y(base, st.med)
					fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s %s: %.3f s [%.3f–%.3f]</title></rect>`+"\n",
						x0+float64(i)*bw, yy, bw-1, base+chartH-yy, br.color, im, w, br.label, st.med, st.min, st.max)
				}
				fmt.Fprintf(&b, `<text transform="translate(%.1f,%.1f) rotate(40)">%s %s</text>`+"\n", x0, base+chartH+10, im, w)
				g++
			}
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func writeResults(res *Result, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stem := filepath.Join(dir, res.Started.UTC().Format("2006-01-02T150405Z"))
	j, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	files := map[string][]byte{stem + ".json": j, stem + ".md": []byte(writeMarkdown(res)), stem + ".svg": []byte(writeSVG(res))}
	for p, data := range files {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		res.Artifacts[filepath.Ext(p)[1:]] = p
	}
	return nil
}

// Render writes the markdown and SVG of a run again from its JSON file
// (next to it, same stem), e.g. after the report format changed.
func Render(jsonPath string) (mdPath, svgPath string, err error) {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return "", "", err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return "", "", fmt.Errorf("invalid input: %s: %w", jsonPath, err)
	}
	var opts map[string]json.RawMessage
	if err := json.Unmarshal(raw["options"], &opts); err == nil {
		delete(opts, "Log") // written by runs before Log was json:"-"
		raw["options"], _ = json.Marshal(opts)
	}
	b, _ = json.Marshal(raw)
	var res Result
	if err := json.Unmarshal(b, &res); err != nil {
		return "", "", fmt.Errorf("invalid input: %s: %w", jsonPath, err)
	}
	stem := strings.TrimSuffix(jsonPath, ".json")
	mdPath, svgPath = stem+".md", stem+".svg"
	if err := os.WriteFile(mdPath, []byte(writeMarkdown(&res)), 0o644); err != nil {
		return "", "", err
	}
	return mdPath, svgPath, os.WriteFile(svgPath, []byte(writeSVG(&res)), 0o644)
}

// goalRow is one line of the goals table: the goal, where it was measured
// and what was measured, with the verdict.
type goalRow struct{ goal, where, got string }

// containerGoals checks issue 14's container-start goals (ocifs on the
// gzip image ≥ 5× faster than containerd's overlayfs and ≥ 1.5× faster
// than the best peer) and says what the second can come to: no method
// starts faster than cri-warm, which fetches no layer byte.
func containerGoals(profile, im, where string, med func(cellKey, func(sample) float64) float64, verdict func(float64, bool, string) string) []goalRow {
	done := func(s sample) float64 { return s.DoneS }
	at := func(m string) float64 { return med(cellKey{profile, im, containerFormat[m], m, wContainer}, done) }
	overlay, floor := at(mCRIOverlay), at(mCRIWarm)
	peer, peerName := math.NaN(), ""
	for _, m := range []string{mCRIStargz, mCRISoci} {
		if v := at(m); !math.IsNaN(v) && (math.IsNaN(peer) || v < peer) {
			peer, peerName = v, m
		}
	}
	var rows []goalRow
	for _, m := range []string{mCRIOcifs, mCRIOcifsProf} {
		o := at(m)
		if math.IsNaN(o) {
			continue
		}
		if !math.IsNaN(overlay) {
			v := overlay / o
			rows = append(rows, goalRow{"container start (CRI) ≥ 5× faster than containerd's overlayfs", where + ", " + m,
				verdict(v, v >= 5, "%.1f×") + fmt.Sprintf(" (%s against %s)", secs(o), secs(overlay))})
		}
		if !math.IsNaN(peer) {
			v := peer / o
			got := verdict(v, v >= 1.5, "%.2f×") + fmt.Sprintf(" (%s against %s's %s)", secs(o), peerName, secs(peer))
			if !math.IsNaN(floor) {
				got += fmt.Sprintf("; with no layer byte to fetch a start takes %s (cri-warm), so the most any method can be is %.2f× the best peer", secs(floor), peer/floor)
			}
			rows = append(rows, goalRow{"container start (CRI) ≥ 1.5× faster than the best peer", where + ", " + m, got})
		}
	}
	return rows
}

// writeGoals checks the targets of issue 6 against the medians measured.
func writeGoals(b *strings.Builder, res *Result, ok map[cellKey][]sample) {
	med := func(k cellKey, f func(sample) float64) float64 {
		if len(ok[k]) == 0 {
			return math.NaN()
		}
		return figure(ok[k], f).med
	}
	done := func(s sample) float64 { return s.DoneS }
	ready := func(s sample) float64 { return s.ReadyS }
	work := func(s sample) float64 { return s.DoneS - s.ReadyS }
	rss := func(s sample) float64 { return float64(s.PeakRSSKB) / 1024 }
	var rows []goalRow
	verdict := func(v float64, good bool, f string) string {
		if math.IsNaN(v) {
			return "not measured"
		}
		m := "no"
		if good {
			m = "yes"
		}
		return fmt.Sprintf(f, v) + " — met: " + m
	}
	for _, p := range res.Profiles {
		for _, im := range res.Options.Images {
			lazy := cellKey{p.Name, im, fmtGzipIndex, mLazy, ""}
			warm := cellKey{p.Name, im, fmtGzipIndex, mWarm, ""}
			pull := cellKey{p.Name, im, fmtGzip, mPull, ""}
			ctr := cellKey{p.Name, im, fmtGzip, mContainerd, ""}
			at := func(k cellKey, w string) cellKey { k.workload = w; return k }
			where := p.Name + ", " + im
			demand := cellKey{p.Name, im, fmtGzipIndex, mDemand, wStartup}
			if len(ok[demand]) > 0 {
				layer := med(demand, func(s sample) float64 { return float64(s.OcifsLayerBytes) })
				served := med(demand, func(s sample) float64 { return float64(s.OcifsServed) })
				v := layer / served
				rows = append(rows, goalRow{"start-up bytes ≤ 1.5× what the program read, plus indexes (layer bytes fetched / bytes served, --prefetch=none)", where,
					verdict(v, v <= 1.5, "%.2f×") + fmt.Sprintf(" (%.1f MB of layers for %.1f MB read)", layer/1e6, served/1e6)})
			}
			for _, f := range []string{fmtGzipIndex, fmtEstargz} {
				for _, w := range []string{wFirst, wStartup} {
					def, none := cellKey{p.Name, im, f, mLazy, w}, cellKey{p.Name, im, f, mDemand, w}
					if len(ok[def]) == 0 || len(ok[none]) == 0 {
						continue
					}
					v := med(def, done) / med(none, done)
					rows = append(rows, goalRow{"the background never delays a foreground read: defaults within 1.1× of --prefetch=none", where + ", " + f + ", " + w,
						verdict(v, v <= 1.1, "%.2f×") + fmt.Sprintf(" (%s against %s)", secs(med(def, done)), secs(med(none, done)))})
				}
			}
			if idx, esg := (cellKey{p.Name, im, fmtGzipIndex, mDemand, wStartup}), (cellKey{p.Name, im, fmtEstargz, mDemand, wStartup}); len(ok[idx]) > 0 && len(ok[esg]) > 0 {
				a := med(idx, func(s sample) float64 { return float64(s.Bytes) })
				e := med(esg, func(s sample) float64 { return float64(s.Bytes) })
				v := a / e
				rows = append(rows, goalRow{"start-up with an index fetches ≤ 1.3× the bytes of the eStargz image (--prefetch=none, all bytes from the registry)", where,
					verdict(v, v <= 1.3, "%.2f×") + fmt.Sprintf(" (%.1f MB against %.1f MB)", a/1e6, e/1e6)})
			}
			if first := at(lazy, wFirst); p.Name == "slow" && len(ok[first]) > 0 && len(ok[at(ctr, wFirst)]) > 0 {
				v := med(at(ctr, wFirst), done) / med(first, done)
				rows = append(rows, goalRow{"first file with an index ≥ 50× faster than containerd pull (10 ms / 100 Mbit)", where,
					verdict(v, v >= 50, "%.1f×") + fmt.Sprintf(" (%s against %s)", secs(med(first, done)), secs(med(at(ctr, wFirst), done)))})
			}
			if rate := linkRate(p); rate > 0 {
				for _, f := range []string{fmtEstargz, fmtGzipIndex} {
					prof := cellKey{p.Name, im, f, mProfile, wStartup}
					if len(ok[prof]) == 0 {
						continue
					}
					layer := med(prof, func(s sample) float64 { return float64(s.OcifsLayerBytes) })
					floor := med(prof, ready) + layer/rate
					v := med(prof, done) / floor
					rows = append(rows, goalRow{"start-up with a recorded profile within 1.3× of the floor (mount + the layer bytes it fetched at the link's rate)", where + ", " + f,
						verdict(v, v <= 1.3, "%.2f×") + fmt.Sprintf(" (%s for a floor of %s + %.1f MB)", secs(med(prof, done)), secs(med(prof, ready)), layer/1e6)})
					if sgz := (cellKey{p.Name, im, fmtEstargz, mStargzStore, wStartup}); f == fmtEstargz && len(ok[sgz]) > 0 {
						v := med(sgz, done) / med(prof, done)
						rows = append(rows, goalRow{"start-up with a recorded profile ≥ 2× faster than stargz-store's defaults (eStargz)", where,
							verdict(v, v >= 2, "%.2f×") + fmt.Sprintf(" (%s against %s)", secs(med(prof, done)), secs(med(sgz, done)))})
					}
				}
			}
			rows = append(rows, containerGoals(p.Name, im, where, med, verdict)...)
			if p.Name == "cloud" {
				v := med(at(ctr, wFirst), done) / med(at(lazy, wFirst), done)
				rows = append(rows, goalRow{"first file ≥ 20× faster than containerd pull (300+ MB image)", where, verdict(v, v >= 20, "%.1f×")})
				v = med(at(ctr, wStartup), done) / med(at(lazy, wStartup), done)
				rows = append(rows, goalRow{"start-up ≥ 5× faster than containerd pull", where, verdict(v, v >= 5, "%.1f×")})
			}
			v := med(at(warm, wReadAll), work) / med(at(pull, wReadAll), work)
			rows = append(rows, goalRow{"read-all within 1.1× of overlayfs after background fetch (workload time, warm cache vs pulled tree)", where, verdict(v, v <= 1.1, "%.2f×")})
			v = med(at(warm, wWalk), work) / med(at(pull, wWalk), work)
			rows = append(rows, goalRow{"walk within 1.5× of overlayfs (same)", where, verdict(v, v <= 1.5, "%.2f×")})
			v = med(at(pull, wFirst), ready) / med(at(ctr, wFirst), ready)
			rows = append(rows, goalRow{"ocifs pull no slower than containerd (time to ready)", where, verdict(v, v <= 1, "%.2f×")})
			worst := math.NaN()
			for _, w := range res.Options.Workloads {
				if v := med(at(warm, w), ready); !math.IsNaN(v) && (math.IsNaN(worst) || v > worst) {
					worst = v
				}
			}
			rows = append(rows, goalRow{"mount from a warm cache/index < 1 s (slowest median ready)", where, verdict(worst, worst < 1, "%.3f s")})
			if im == "files100k" {
				peak := math.NaN()
				for _, m := range []string{mLazy, mWarm} {
					for _, w := range res.Options.Workloads {
						k := cellKey{p.Name, im, fmtGzipIndex, m, w}
						if v := med(k, rss); !math.IsNaN(v) && (math.IsNaN(peak) || v > peak) {
							peak = v
						}
					}
				}
				rows = append(rows, goalRow{"daemon RSS < 100 MB with a 100k-file image (largest median VmHWM)", where, verdict(peak, peak < 100, "%.0f MB")})
			}
		}
	}
	b.WriteString("\n## Goals of issues 6, 14 and 16\n\nLazy figures use gzip+index (the index pushed to the registry) unless a format is named, full pulls plain gzip.\n\n| goal | profile, image | measured |\n|---|---|---|\n")
	for _, r := range rows {
		if strings.HasPrefix(r.got, "not measured") {
			continue
		}
		fmt.Fprintf(b, "| %s | %s | %s |\n", r.goal, r.where, r.got)
	}
}

// linkRate is the bytes per second of a profile's shaped link (tc's
// "100mbit", "1gbit"); 0 when unshaped or unknown.
func linkRate(p profile) float64 {
	units := map[string]float64{"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
	for u, m := range units {
		if n, ok := strings.CutSuffix(p.Rate, u); ok {
			if v, err := strconv.ParseFloat(n, 64); err == nil {
				return v * m / 8
			}
		}
	}
	return 0
}
