package main

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
)

func setupCompact(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var dir, point string
	var progress bool
	o := repo.CompactOptions{}
	f.StringVar(&dir, "repo", "", "the repository `DIR` or s3://BUCKET/PREFIX")
	s3o := s3Flags(f)
	f.StringVar(&o.TmpDir, "tmp-dir", "", "for an s3:// repository: the `DIR` the new point is staged in before its upload, removed afterwards (default: the system's temporary directory)")
	f.StringVar(&point, "point", "", "the incremental point `NAME` (or a unique prefix) to roll its chain up to")
	f.IntVarP(&o.Jobs, "jobs", "j", 2*runtime.NumCPU(), "files written at once")
	f.BoolVarP(&progress, "progress", "P", false, "show a progress bar (default: when stderr is a terminal)")
	return func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Sprintf("too many command-line arguments (first is %q)", args[0])}
		}
		if dir == "" || point == "" {
			return usageError{"give the repository and the point (--repo DIR --point NAME)"}
		}
		r, err := repo.OpenWith(ctx, dir, false, *s3o)
		if err != nil {
			return err
		}
		if err := r.CheckIsRepository(); err != nil {
			return err
		}
		start := time.Now()
		bar := newProgress(stderr, progress || isTerminal(stderr), "compact")
		o.Progress = bar.Set
		res, err := r.Compact(ctx, point, o, waitNotice("compact"))
		bar.Finish()
		if err != nil {
			return err
		}
		for _, n := range res.InUse {
			fmt.Fprintf(stderr, "combinefs compact: kept %s and the points before it: in use by a mount, flatten or verify (expire removes them later)\n", n)
		}
		fmt.Fprintf(stderr, "combinefs compact: %s replaces %d points (%s written, verified) in %.1fs\n",
			res.New.Name, len(res.Replaced), humanBytes(res.Bytes), time.Since(start).Seconds())
		return nil
	}
}
