package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
)

func setupExpire(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var dir, within string
	var o repo.ExpireOptions
	f.StringVar(&dir, "repo", "", "the repository `DIR` (or s3://BUCKET/PREFIX)")
	s3o := s3Flags(f)
	f.IntVar(&o.KeepFull, "keep-full", 0, "keep the newest `N` full points and everything chained to them")
	f.StringVar(&within, "keep-within", "", "also keep every chain with a point taken within `DURATION` (e.g. 36h, 14d)")
	f.BoolVarP(&o.DryRun, "dry-run", "n", false, "say what would be removed, remove nothing")
	return func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Sprintf("too many command-line arguments (first is %q)", args[0])}
		}
		if dir == "" {
			return usageError{"no repository specified (--repo DIR)"}
		}
		if o.KeepFull < 1 {
			return usageError{"--keep-full N is required, at least 1"}
		}
		if within != "" {
			d, err := parseDays(within)
			if err != nil || d <= 0 {
				return usageError{fmt.Sprintf("--keep-within: invalid duration %q", within)}
			}
			o.KeepWithin = d
		}
		r, err := repo.OpenWith(ctx, dir, false, *s3o)
		if err != nil {
			return err
		}
		if err := r.CheckIsRepository(); err != nil {
			return err
		}
		o.Now = time.Now()
		res, err := r.Expire(ctx, o, waitNotice("expire"))
		if res != nil {
			printExpire(res, o.DryRun)
		}
		return err
	}
}

// parseDays is time.ParseDuration that also takes whole days ("14d").
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.Atoi(n)
		return time.Duration(d) * 24 * time.Hour, err
	}
	return time.ParseDuration(s)
}

// printExpire says what expire removed and kept, and the space freed.
func printExpire(res *repo.ExpireResult, dry bool) {
	verb := "removed"
	if dry {
		verb = "would remove"
	}
	for _, p := range res.Removed {
		fmt.Fprintf(stderr, "combinefs expire: %s %s (%s)\n", verb, p.Name, humanBytes(p.Size))
	}
	for _, p := range res.InUse {
		fmt.Fprintf(stderr, "combinefs expire: kept %s: in use by a mount, flatten or verify\n", p.Name)
	}
	for _, p := range res.KeptForInUse {
		fmt.Fprintf(stderr, "combinefs expire: kept %s: a later point of its chain is in use\n", p.Name)
	}
	if n := len(res.WALRemoved); n > 0 {
		var size int64
		for _, o := range res.WALRemoved {
			size += o.Size
		}
		fmt.Fprintf(stderr, "combinefs expire: %s %d WAL files (%s) no kept point needs\n", verb, n, humanBytes(size))
	}
	if len(res.Removed) == 0 && len(res.WALRemoved) == 0 {
		fmt.Fprintf(stderr, "combinefs expire: nothing to remove\n")
		return
	}
	if dry {
		fmt.Fprintf(stderr, "combinefs expire: would free %s (dry run: nothing removed)\n", humanBytes(res.Freed))
		return
	}
	fmt.Fprintf(stderr, "combinefs expire: freed %s\n", humanBytes(res.Freed))
}
