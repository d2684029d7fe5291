package main

import (
	"context"
	"fmt"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fs"
)

// indexBuildFlags is `ocifs index build [--push] [--span-size N] IMAGE...`.
func indexBuildFlags(set *pflag.FlagSet) runFunc {
	push := set.Bool("push", false, "store the indexes in the registry as a referrer of the image manifest\n(in the first --index-repo when one is given, else in the image's repository)")
	spanSize := set.Int64("span-size", 0, "uncompressed `BYTES` per random-access span (default 1 MiB)")
	return func(ctx context.Context, e *env, args []string) error {
		if *spanSize < 0 || (*spanSize > 0 && *spanSize < 64<<10) {
			return &usageError{msg: fmt.Sprintf("--span-size: %d is below 64 KiB", *spanSize)}
		}
		for _, ref := range args {
			if err := indexBuild(ctx, e, ref, *push, *spanSize); err != nil {
				return err
			}
		}
		return nil
	}
}

func indexBuild(ctx context.Context, e *env, ref string, push bool, spanSize int64) error {
	start := time.Now()
	im, err := resolveImageWith(ctx, e, ref, func(o *fs.Options) { o.SpanSize = spanSize; o.NoRemoteIndex = true })
	if err != nil {
		return err
	}
	defer im.Close()
	r := newReporter(e)
	stop := r.track("index "+im.Ref(), true, imageWork(im, nil))
	err = im.Load(ctx)
	stop(err == nil)
	r.wait()
	if err != nil {
		return fmt.Errorf("index %s: %w", im.Ref(), err)
	}
	idx, tar, err := im.IndexSizes()
	if err != nil {
		return err
	}
	for _, l := range im.Layers() {
		n, ok := idx[l.Digest]
		if !ok {
			fmt.Fprintf(e.stdout, "%s  %-6s  no index (%s)\n", l.Digest, l.Mode, l.Why)
			continue
		}
		fmt.Fprintf(e.stdout, "%s  index %s for %s of tar (%.2f%%)\n", l.Digest, humanBytes(n), humanBytes(tar[l.Digest]),
			100*float64(n)/float64(max(tar[l.Digest], 1)))
	}
	if push {
		// With index repositories, the first is where this machine keeps
		// indexes: the image's own repository may not take pushes.
		to := im.Fetched().Source()
		var d ocispec.Descriptor
		if len(e.g.indexRepos) > 0 {
			to = e.g.indexRepos[0]
			d, err = im.PushIndexTo(ctx, to)
		} else {
			d, err = im.PushIndex(ctx)
		}
		if err != nil {
			return fmt.Errorf("push index of %s to %s: %w", im.Ref(), to, err)
		}
		fmt.Fprintf(e.stdout, "pushed index artifact %s as a referrer of %s to %s\n", d.Digest, im.Fetched().ManifestDigest, to)
	}
	fmt.Fprintf(e.stderr, "indexed %s in %s\n", im.Ref(), time.Since(start).Round(time.Millisecond))
	return nil
}
