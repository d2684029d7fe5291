// Command run is `make bench`: it runs the ocifs benchmark (package bench)
// with the ocifs binary given by --ocifs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/bench"
)

func main() {
	set := pflag.NewFlagSet("bench", pflag.ExitOnError)
	o := bench.DefineFlags(set)
	set.StringVar(&o.Ocifs, "ocifs", "bin/ocifs", "the ocifs binary to measure")
	report := set.String("report", "", "only write the .md and .svg of an earlier run again from its .json")
	set.Parse(os.Args[1:])
	if *report != "" {
		md, svg, err := bench.Render(*report)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s\n      %s\n", md, svg)
		return
	}
	bench.FinishFlags(set, o)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	res, err := bench.Run(ctx, *o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s\n      %s\n      %s\n(run took %.0f s)\n", res.Artifacts["md"], res.Artifacts["json"], res.Artifacts["svg"], res.Seconds)
}
