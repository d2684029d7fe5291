package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/bench"
)

// benchFlags wires `ocifs bench` to package bench, measuring this binary.
// It is the one import of bench outside bench itself (see bench's package
// doc and TestImportDirection).
func benchFlags(set *pflag.FlagSet) runFunc {
	o := bench.DefineFlags(set)
	return func(ctx context.Context, e *env, args []string) error {
		bench.FinishFlags(set, o)
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("ocifs bench: find this binary: %w", err)
		}
		o.Ocifs, o.Log = self, e.stderr
		res, err := bench.Run(ctx, *o)
		if err != nil {
			return fmt.Errorf("ocifs bench: %w", err)
		}
		fmt.Fprintf(e.stdout, "%s\n%s\n%s\n", res.Artifacts["md"], res.Artifacts["json"], res.Artifacts["svg"])
		return nil
	}
}
