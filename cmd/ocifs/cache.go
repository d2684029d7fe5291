package main

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fetch"
)

// defaultPruneAge is what `cache prune` removes without flags.
const defaultPruneAge = 30 * 24 * time.Hour

// listCache returns the entries of the cache at e's --cache-dir, oldest
// first; none if the cache was never created (listing must not create it).
func listCache(e *env) (*fetch.Cache, []fetch.CacheEntry, error) {
	if _, err := os.Stat(e.g.cacheDir); errors.Is(err, iofs.ErrNotExist) {
		return nil, nil, nil
	}
	c, err := fetch.OpenCache(e.g.cacheDir)
	if err != nil {
		return nil, nil, err
	}
	ents, err := c.List()
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(ents, func(a, b fetch.CacheEntry) int {
		if c := a.ModTime.Compare(b.ModTime); c != 0 {
			return c
		}
		return strings.Compare(string(a.Digest), string(b.Digest))
	})
	return c, ents, nil
}

func cacheLsFlags(set *pflag.FlagSet) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		_, ents, err := listCache(e)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "KIND\tDIGEST\tSIZE\tMTIME\n")
		for _, en := range ents {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", en.Kind, en.Digest, en.Size, en.ModTime.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	}
}

func cacheDuFlags(set *pflag.FlagSet) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		_, ents, err := listCache(e)
		if err != nil {
			return err
		}
		type usage struct {
			n    int
			size int64
		}
		kinds := map[string]*usage{fetch.KindBlob: {}, fetch.KindIndex: {}}
		var total usage
		for _, en := range ents {
			u := kinds[en.Kind]
			if u == nil {
				u = &usage{}
				kinds[en.Kind] = u
			}
			u.n++
			u.size += en.Size
			total.n++
			total.size += en.Size
		}
		names := make([]string, 0, len(kinds))
		for k := range kinds {
			names = append(names, k)
		}
		slices.Sort(names)
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		for _, k := range names {
			fmt.Fprintf(tw, "%s\t%d entries\t%s\t(%d bytes)\n", k, kinds[k].n, humanBytes(kinds[k].size), kinds[k].size)
		}
		fmt.Fprintf(tw, "total\t%d entries\t%s\t(%d bytes)\n", total.n, humanBytes(total.size), total.size)
		fmt.Fprintf(tw, "cache\t%s\n", e.g.cacheDir)
		return tw.Flush()
	}
}

// durationValue is a pflag.Value for ages: Go durations ("36h", "90m") plus
// whole days ("30d").
type durationValue time.Duration

func (d *durationValue) String() string {
	v := time.Duration(*d)
	if v%(24*time.Hour) == 0 && v > 0 {
		return strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"
	}
	return v.String()
}

func (d *durationValue) Set(s string) error {
	v, err := parseAge(s)
	if err != nil {
		return err
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) Type() string { return "DURATION" }

// parseAge parses "30d", "12h", "1h30m"; negative ages are refused.
func parseAge(s string) (time.Duration, error) {
	var v time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("age %q: want a whole number of days (30d) or a duration (12h)", s)
		}
		v = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if v, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("age %q: want a whole number of days (30d) or a duration (12h)", s)
		}
	}
	if v < 0 {
		return 0, fmt.Errorf("age %q: negative", s)
	}
	return v, nil
}

func cachePruneFlags(set *pflag.FlagSet) runFunc {
	all := set.Bool("all", false, "remove every entry, and the logs of mounts that are gone")
	age := durationValue(defaultPruneAge)
	set.Var(&age, "older-than", "remove entries not used for `DURATION` (30d, 12h), and the logs of gone mounts\nnot written for as long (default 30d, unless --max-size alone is given)")
	var maxSize sizeValue
	set.Var(&maxSize, "max-size", "then remove entries least recently used first until the cache holds at most `SIZE` (500M, 10G)")
	return func(ctx context.Context, e *env, args []string) error {
		a := time.Duration(age)
		if maxSize > 0 && !set.Changed("older-than") {
			a = 0
		}
		return runPrune(e, *all, a, int64(maxSize), time.Now())
	}
}

// runPrune removes entries not used since now-age (every one with all),
// then the least recently used until the cache holds max bytes, never an
// entry a live mount pins (except with all), nor one still being written.
// Removing a file a mount has open is safe: the mount keeps its open file.
func runPrune(e *env, all bool, age time.Duration, max int64, now time.Time) error {
	c, ents, err := listCache(e)
	if err != nil {
		return err
	}
	var res fetch.TrimResult
	var errs []error
	if all {
		res.Entries = len(ents)
		for _, en := range ents {
			if err := c.Remove(en.Kind, en.Digest); err != nil {
				if !errors.Is(err, fetch.ErrNotFound) { // another prune got there first
					errs = append(errs, err)
				}
				continue
			}
			res.Removed++
			res.Freed += en.Size
		}
	} else if c != nil {
		res, err = c.Trim(fetch.TrimOptions{OlderThan: age, MaxBytes: max, Now: now})
		if err != nil {
			errs = append(errs, err)
		}
	}
	var what []string
	switch {
	case all:
		what = append(what, "all entries")
	case age > 0:
		what = append(what, "unused for "+(*durationValue)(&age).String())
	}
	if max > 0 && !all {
		what = append(what, "to "+humanBytes(max))
	}
	fmt.Fprintf(e.stdout, "pruned %s: removed %d of %d entries, freed %s (%d bytes)\n", strings.Join(what, ", then "),
		res.Removed, res.Entries, humanBytes(res.Freed), res.Freed)
	if res.Pinned > 0 {
		fmt.Fprintf(e.stdout, "kept %s (%d bytes) that live mounts use\n", humanBytes(res.Pinned), res.Pinned)
	}
	if max > 0 && res.Left > max {
		fmt.Fprintf(e.stdout, "the cache holds %s, above %s: live mounts use more than that\n", humanBytes(res.Left), humanBytes(max))
	}
	if all || age > 0 {
		logAge := age
		if all {
			logAge = 0
		}
		if n, freed := pruneLogs(e.g.cacheDir, logAge, now); n > 0 {
			fmt.Fprintf(e.stdout, "removed %d logs of mounts that are gone, %s (%d bytes)\n", n, humanBytes(freed), freed)
		}
	}
	return errors.Join(errs...)
}

func cacheVerifyFlags(set *pflag.FlagSet) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		return runVerify(ctx, e)
	}
}

// runVerify hashes every cached blob again and removes the damaged ones.
func runVerify(ctx context.Context, e *env) error {
	c, ents, err := listCache(e)
	if err != nil {
		return err
	}
	var n, bad, trees int
	var size int64
	var errs []error
	var total int64
	nblobs := 0
	for _, en := range ents {
		if en.Kind == fetch.KindBlob {
			total += en.Size
			nblobs++
		}
	}
	var hashed, blobs atomic.Int64
	r := newReporter(e)
	stop := r.track("cache verify", true, func() (int64, int64, string) {
		return hashed.Load(), total, fmt.Sprintf("%d/%d blobs", blobs.Load(), nblobs)
	})
	done := func() {
		stop(ctx.Err() == nil)
		r.wait()
	}
	defer done() // for an early return; once done, again does nothing
	for _, en := range ents {
		if en.Kind == fetch.KindTree {
			// A tree's files have no digests of their own to check: drop it,
			// the next mount extracts it again from its verified blob.
			if err := c.Remove(fetch.KindTree, en.Digest); err != nil && !errors.Is(err, fetch.ErrNotFound) {
				errs = append(errs, err)
			} else {
				trees++
			}
			continue
		}
		if en.Kind != fetch.KindBlob {
			continue // an index file carries its own checksum, checked on every read
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := c.Open(en.Digest)
		if err != nil {
			if !errors.Is(err, fetch.ErrNotFound) { // pruned meanwhile
				errs = append(errs, err)
			}
			continue
		}
		err = c.VerifyAll(f, en.Digest)
		f.Close()
		hashed.Add(en.Size)
		blobs.Add(1)
		var de *fetch.DigestError
		if err == nil || errors.As(err, &de) {
			n++
			size += en.Size
		}
		switch {
		case errors.As(err, &de):
			bad++
			fmt.Fprintf(e.stdout, "damaged: %s (%s): removed, the next mount fetches it again\n", en.Digest, humanBytes(en.Size))
			if err := c.Remove(fetch.KindBlob, en.Digest); err != nil && !errors.Is(err, fetch.ErrNotFound) {
				errs = append(errs, err)
			}
		case err != nil:
			errs = append(errs, err)
		}
	}
	done()
	fmt.Fprintf(e.stdout, "verified %d blobs, %s (%d bytes): %d damaged\n", n, humanBytes(size), size, bad)
	if trees > 0 {
		fmt.Fprintf(e.stdout, "dropped %d extracted layer trees: the next mount extracts them again from their verified blobs\n", trees)
	}
	if bad > 0 {
		errs = append(errs, fmt.Errorf("cache verify: %d damaged blobs removed", bad))
	}
	return errors.Join(errs...)
}
