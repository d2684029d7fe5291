package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"

	"github.com/ocifs/ocifs/fs"
)

// Progress of long work (pull, index build, cache verify, a mount waiting
// for its layers' streams) goes to stderr: bars on a terminal, a plain line
// every few seconds otherwise (a log, a pipe, CI), or nothing, as
// --progress=auto|plain|none says.
const (
	progressAuto  = "auto"
	progressPlain = "plain"
	progressNone  = "none"

	// defaultProgressEvery is how often plain progress prints a line.
	defaultProgressEvery = 5 * time.Second
	// barRefresh is how often bars poll their work.
	barRefresh = 100 * time.Millisecond
)

// checkProgress validates --progress.
func checkProgress(s string) error {
	switch s {
	case progressAuto, progressPlain, progressNone:
		return nil
	}
	return fmt.Errorf("--progress: %q is not one of auto, plain, none", s)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// reporter shows the progress of one command's work on its stderr.
type reporter struct {
	mode  string // progressPlain, progressNone, or "bars"
	w     io.Writer
	every time.Duration
	bars  *mpb.Progress // bars mode only, made on first use

	mu sync.Mutex // serializes plain lines from several tracks
}

func newReporter(e *env) *reporter {
	r := &reporter{mode: e.g.progress, w: e.stderr, every: e.g.progressEvery}
	if r.every <= 0 {
		r.every = defaultProgressEvery
	}
	if r.mode == progressAuto || r.mode == "" {
		r.mode = progressPlain
		if isTerminal(e.stderr) {
			r.mode = "bars"
		}
	}
	return r
}

// work is what a track polls: done and total units (bytes when the track
// counts bytes) and a short note ("2/5 layers").
type work func() (done, total int64, note string)

// track shows one piece of work until the returned stop is called with
// whether it succeeded; stop prints the final state.
func (r *reporter) track(name string, bytes bool, poll work) (stop func(ok bool)) {
	switch r.mode {
	case progressNone:
		return func(bool) {}
	case progressPlain:
		return r.plain(name, bytes, poll)
	}
	return r.bar(name, bytes, poll)
}

// wait lets the bars finish drawing; call it before printing after them.
func (r *reporter) wait() {
	if r.bars != nil {
		r.bars.Wait()
		r.bars = nil
	}
}

func (r *reporter) bar(name string, bytes bool, poll work) func(bool) {
	if r.bars == nil {
		r.bars = mpb.New(mpb.WithOutput(r.w), mpb.WithRefreshRate(barRefresh), mpb.WithWidth(32))
	}
	var note atomic.Value
	note.Store("")
	counters := decor.CountersNoUnit("%d / %d", decor.WCSyncSpace)
	if bytes {
		counters = decor.Counters(decor.SizeB1024(0), "% .1f / % .1f", decor.WCSyncSpace)
	}
	// Made with total 0, the bar completes only when stop says so, not
	// when the bytes reach the total while the last check still runs.
	b := r.bars.AddBar(0,
		mpb.PrependDecorators(decor.Name(barName(name), decor.WCSyncSpaceR), counters),
		mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace),
			decor.Any(func(decor.Statistics) string { return " " + note.Load().(string) })),
	)
	update := func() int64 {
		done, total, n := poll()
		note.Store(n)
		if total > 0 {
			b.SetTotal(total, false)
		}
		b.SetCurrent(min(done, max(total, 1)))
		return total
	}
	update()
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(barRefresh)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				update()
			}
		}
	})
	var once sync.Once
	return func(ok bool) {
		once.Do(func() {
			close(quit)
			wg.Wait()
			total := update()
			if ok {
				b.SetTotal(max(total, 1), true)
			} else {
				b.Abort(false)
			}
		})
	}
}

func (r *reporter) plain(name string, bytes bool, poll work) func(bool) {
	start := time.Now()
	line := func(prefix string) {
		done, total, note := poll()
		var s string
		switch {
		case bytes && total > 0:
			s = fmt.Sprintf("%s of %s (%d%%)", humanBytes(done), humanBytes(total), 100*done/total)
		case bytes:
			s = humanBytes(done)
		case total > 0:
			s = fmt.Sprintf("%d of %d (%d%%)", done, total, 100*done/total)
		default:
			s = fmt.Sprint(done)
		}
		if note != "" {
			s += ", " + note
		}
		r.mu.Lock()
		fmt.Fprintf(r.w, "%s: %s%s, %s\n", name, prefix, s, time.Since(start).Round(100*time.Millisecond))
		r.mu.Unlock()
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.every)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				line("")
			}
		}
	})
	var once sync.Once
	return func(ok bool) {
		once.Do(func() {
			close(quit)
			wg.Wait()
			if ok {
				line("done, ")
			} else {
				line("stopped at ")
			}
		})
	}
}

// imageWork polls how much of im's layers is in hand: a complete layer
// counts whole (fetched now or cached before), others by bytes fetched.
func imageWork(im *fs.Image, phase *atomic.Value) work {
	return func() (int64, int64, string) {
		var done, total int64
		complete := 0
		ls := im.Layers()
		for _, l := range ls {
			total += l.Size
			if l.Complete {
				done += l.Size
				complete++
			} else {
				done += min(l.BytesFetched, l.Size)
			}
		}
		note := fmt.Sprintf("%d/%d layers", complete, len(ls))
		if phase != nil {
			if p, _ := phase.Load().(string); p != "" {
				note += ", " + p
			}
		}
		return done, total, note
	}
}

// pullWithProgress loads im and unpacks it into dir, showing progress.
func pullWithProgress(ctx context.Context, e *env, im *fs.Image, dir string) error {
	r := newReporter(e)
	var phase atomic.Value
	phase.Store("fetching")
	stop := r.track("pull "+im.Ref(), true, imageWork(im, &phase))
	err := im.Load(ctx)
	if err != nil {
		err = fmt.Errorf("load %s: %w", im.Ref(), err)
	} else {
		phase.Store("unpacking")
		err = im.Pull(ctx, dir)
	}
	phase.Store("")
	stop(err == nil)
	r.wait()
	return err
}

// A mount daemon reports how far its layers' streams have come on its ready
// pipe while it loads: "progress DONE TOTAL NOTE" lines, every
// loadProgressEvery, before the final "ok" or "error: ...". The parent shows
// them (a mount that answers at once sends none).
const loadProgressEvery = 500 * time.Millisecond

// sendLoadProgress starts sending im's load progress on ready (nil: a
// foreground mount, nothing to send); the returned func stops it, and
// returns once no more is written.
func sendLoadProgress(ready *os.File, im *fs.Image) (stop func()) {
	if ready == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	poll := imageWork(im, nil)
	send := func() error {
		done, total, note := poll()
		_, err := fmt.Fprintf(ready, "progress %d %d %s\n", done, total, note)
		return err
	}
	wg.Go(func() {
		t := time.NewTicker(loadProgressEvery)
		defer t.Stop()
		sent := false
		for {
			select {
			case <-quit:
				if sent {
					_ = send() // where loading ended, for the last line shown
				}
				return
			case <-t.C:
				if send() != nil {
					return
				}
				sent = true
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
	}
}

// loadProgress is the parent's side: it shows the daemon's progress lines.
type loadProgress struct {
	r    *reporter
	name string

	// mu guards the fields below, set by read's goroutine.
	mu          sync.Mutex
	done, total int64
	note        string
	started     bool
	stopTrack   func(bool)
	stopped     bool
}

func newLoadProgress(e *env, what string) *loadProgress {
	return &loadProgress{r: newReporter(e), name: what}
}

// read consumes progress lines from the daemon's ready pipe and returns
// what follows them: "ok\n", "error: ...", or nothing if the daemon died.
func (lp *loadProgress) read(pipe io.Reader) []byte {
	br := bufio.NewReader(pipe)
	for {
		line, err := br.ReadString('\n')
		if rest, ok := strings.CutPrefix(line, "progress "); ok && err == nil {
			lp.update(strings.TrimSuffix(rest, "\n"))
			continue
		}
		tail, _ := io.ReadAll(io.LimitReader(br, 64<<10))
		return append([]byte(line), tail...)
	}
}

func (lp *loadProgress) update(s string) {
	f := strings.SplitN(s, " ", 3)
	if len(f) < 2 {
		return
	}
	done, err1 := strconv.ParseInt(f[0], 10, 64)
	total, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	lp.mu.Lock()
	lp.done, lp.total = done, total
	if len(f) == 3 {
		lp.note = f[2]
	}
	start := !lp.started && !lp.stopped
	lp.started = true
	lp.mu.Unlock()
	if !start {
		return
	}
	// The track polls under lp.mu: start it without holding it.
	stop := lp.r.track(lp.name, true, func() (int64, int64, string) {
		lp.mu.Lock()
		defer lp.mu.Unlock()
		return lp.done, lp.total, lp.note
	})
	lp.mu.Lock()
	if lp.stopped {
		lp.mu.Unlock()
		stop(false) // the mount finished meanwhile
		lp.r.wait()
		return
	}
	lp.stopTrack = stop
	lp.mu.Unlock()
}

// stop ends the display, if any; later calls do nothing.
func (lp *loadProgress) stop(ok bool) {
	lp.mu.Lock()
	stop := lp.stopTrack
	lp.stopTrack, lp.stopped = nil, true
	lp.mu.Unlock()
	if stop != nil {
		stop(ok)
		lp.r.wait()
	}
}

// barNameMax is the most of a bar's line its name takes, so that the
// counters and the bar still fit an 80- or 100-column terminal.
const barNameMax = 40

// barName shortens a bar's name ("pull HOST/REPO@sha256:<64 hex>"): a
// digest to its first 12 hex digits, then, if it is still long, its end,
// where the repository's name is. Plain lines keep the whole name.
func barName(name string) string {
	if i := strings.Index(name, "@sha256:"); i >= 0 && len(name) >= i+8+64 {
		name = name[:i+8+12] + name[i+8+64:]
	}
	if r := []rune(name); len(r) > barNameMax {
		name = "…" + string(r[len(r)-barNameMax+1:])
	}
	return name
}
