package bench

import (
	"strings"

	"github.com/spf13/pflag"
)

// DefineFlags defines the bench flags on set, shared by `ocifs bench` and
// bench/run, and returns the Options they fill (Ocifs and Log are left to
// the caller).
func DefineFlags(set *pflag.FlagSet) *Options {
	o := &Options{}
	set.StringSliceVar(&o.Profiles, "profile", []string{"all"}, "network profile: lan, cloud, slow or all")
	set.StringSliceVar(&o.Images, "images", nil, "images to measure: "+strings.Join(Names["image"], ",")+"")
	set.StringSliceVar(&o.Formats, "formats", nil, "layer formats: "+strings.Join(Names["format"], ",")+" (unsupported ones are reported, not measured)")
	set.StringSliceVar(&o.Methods, "methods", nil, "methods: "+strings.Join(Names["method"], ",")+"")
	set.StringSliceVar(&o.Workloads, "workloads", nil, "workloads: "+strings.Join(Names["workload"], ",")+"")
	set.IntVar(&o.Reps, "reps", 3, "repetitions of each cell (the tables show median, min and max)")
	set.StringVar(&o.Out, "out", "bench/results", "directory for <date>.json, <date>.md and <date>.svg")
	set.StringVar(&o.Cache, "bench-cache", "bench/.cache", "directory keeping built trees, images and the registry storage between runs")
	set.BoolVar(&o.AllCells, "all-cells", false, "run every workload on every format with the cold lazy mount (default: gzip first-file and read-all, eStargz and zstd:chunked first-file and start-up)")
	set.BoolVar(&o.ColdWorkloads, "cold-workloads", true, "drop the page cache before each workload after a full pull too, as before every ocifs workload (like for like; false runs it right after the pull, its pages warm)")
	set.StringVar(&o.Peers, "peers", "bench/peers/bin", "directory of the peers built by `make peers` (stargz-store, containerd-stargz-grpc, soci-snapshotter-grpc, soci)")
	set.StringVar(&o.Containerd2, "containerd2", "/usr/local/lib/ocifs-test/containerd-2.4.2", "directory of containerd 2.x and its runc shim (`make containerd2`) for the cri-* methods")
	set.StringVar(&o.OcifsSnapshotter, "ocifs-snapshotter", DefaultOcifsSnapshotter, "command line of the cri-ocifs method's snapshotter ({ocifs}, {address}, {root}, {cache} are replaced)")
	set.BoolVar(&o.Quick, "quick", false, "a smoke run: one repetition, a 256 MiB model image")
	return o
}

// FinishFlags applies the defaults that depend on other flags: --quick
// means one repetition unless --reps is given. Call it after Parse.
func FinishFlags(set *pflag.FlagSet, o *Options) {
	if o.Quick && !set.Changed("reps") {
		o.Reps = 1
	}
}
