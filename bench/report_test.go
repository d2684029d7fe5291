package bench

import (
	"math"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		in   []float64
		want stat
	}{
		{[]float64{3, 1, 2}, stat{2, 1, 3}},
		{[]float64{4, 1, 2, 3}, stat{2.5, 1, 4}},
		{[]float64{5}, stat{5, 5, 5}},
	}
	for _, tt := range tests {
		if got := summarize(tt.in); got != tt.want {
			t.Errorf("summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	if got := summarize(nil); !math.IsNaN(got.med) {
		t.Errorf("summarize(nil).med = %v, want NaN", got.med)
	}
}

func TestPick(t *testing.T) {
	all := []string{"a", "b", "c"}
	tests := []struct {
		sel     []string
		want    []string
		wantErr bool
	}{
		{nil, all, false},
		{[]string{"all"}, all, false},
		{[]string{"c", "a"}, []string{"a", "c"}, false},
		{[]string{"d"}, nil, true},
	}
	for _, tt := range tests {
		got, err := pick(tt.sel, all, "thing")
		if (err != nil) != tt.wantErr || len(got) != len(tt.want) {
			t.Errorf("pick(%v) = %v, %v; want %v (error %v)", tt.sel, got, err, tt.want, tt.wantErr)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("pick(%v) = %v, want %v", tt.sel, got, tt.want)
			}
		}
	}
}

func TestMarkdownRatios(t *testing.T) {
	res := &Result{
		Options:  Options{Images: []string{"go"}, Workloads: []string{wFirst}, Formats: allFormats, Reps: 3},
		Profiles: []profile{profiles["cloud"]},
	}
	add := func(format, method string, done ...float64) {
		for i, d := range done {
			res.Samples = append(res.Samples, sample{Profile: "cloud", Image: "go", Format: format, Method: method, Workload: wFirst, Rep: i, DoneS: d, ReadyS: d / 2})
		}
	}
	add(fmtGzip, mPull, 10, 11, 12)
	add(fmtGzip, mContainerd, 20, 21, 22)
	add(fmtGzipIndex, mLazy, 0.5, 0.4, 0.6)
	md := writeMarkdown(res)
	for _, want := range []string{
		"| go | gzip+index | ocifs-lazy | 500 ms [400 ms–600 ms] · 0.045× pull · 0.024× ctr |",
		"| first file ≥ 20× faster than containerd pull (300+ MB image) | cloud, go | 42.0× — met: yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// The start-up goals of issue 16: the profile method against its floor
// (mount + layer bytes at the link's rate) and against stargz-store.
func TestMarkdownProfileGoals(t *testing.T) {
	res := &Result{
		Options:  Options{Images: []string{"python"}, Workloads: []string{wStartup}, Formats: allFormats, Reps: 1},
		Profiles: []profile{profiles["slow"]},
	}
	res.Samples = []sample{
		{Profile: "slow", Image: "python", Format: fmtEstargz, Method: mProfile, Workload: wStartup, ReadyS: 0.25, DoneS: 1.2, OcifsLayerBytes: 8_750_000},
		{Profile: "slow", Image: "python", Format: fmtEstargz, Method: mStargzStore, Workload: wStartup, ReadyS: 0.2, DoneS: 1.8},
	}
	md := writeMarkdown(res)
	for _, want := range []string{
		"| slow, python, estargz | 1.26× — met: yes (1.20 s for a floor of 250 ms + 8.8 MB) |",
		"| slow, python | 1.50× — met: no (1.20 s against 1.80 s) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if r := linkRate(profiles["slow"]); r != 12.5e6 {
		t.Errorf("linkRate(slow) = %v, want 12.5e6", r)
	}
}

// The container-start goals of issue 14: ocifs against containerd's
// overlayfs and against the fastest peer, with cri-warm as the floor.
func TestMarkdownContainerGoals(t *testing.T) {
	res := &Result{
		Options:  Options{Images: []string{"python"}, Workloads: []string{wContainer}, Formats: allFormats, Reps: 1},
		Profiles: []profile{profiles["slow"]},
	}
	add := func(method string, done float64) {
		res.Samples = append(res.Samples, sample{Profile: "slow", Image: "python", Format: containerFormat[method], Method: method, Workload: wContainer, ReadyS: 0.1, DoneS: done})
	}
	add(mCRIWarm, 0.25)
	add(mCRIOverlay, 6.5)
	add(mCRIStargz, 1.0)
	add(mCRISoci, 1.8)
	add(mCRIOcifsProf, 0.8)
	md := writeMarkdown(res)
	for _, want := range []string{
		"| container start (CRI) ≥ 5× faster than containerd's overlayfs | slow, python, cri-ocifs-profile | 8.1× — met: yes (800 ms against 6.50 s) |",
		"| container start (CRI) ≥ 1.5× faster than the best peer | slow, python, cri-ocifs-profile | 1.25× — met: no (800 ms against cri-stargz's 1.00 s); with no layer byte to fetch a start takes 250 ms (cri-warm), so the most any method can be is 4.00× the best peer |",
		"| python | cri-warm | gzip | 250 ms [250 ms–250 ms] |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "slow, python, cri-ocifs |") {
		t.Errorf("goal rows for cri-ocifs, which was not measured:\n%s", md)
	}
}
