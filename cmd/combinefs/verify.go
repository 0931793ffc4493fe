package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/verify"
)

func setupVerify(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var opts verify.Options
	var progress, chain bool
	f.BoolVarP(&opts.SkipChecksums, "skip-checksums", "s", false, "check file presence and sizes only")
	f.BoolVarP(&opts.SkipWAL, "no-parse-wal", "n", false, "do not check (parse) the WAL the backup needs")
	f.BoolVar(&chain, "chain", false, "also check that the backups, oldest first, form one chain")
	f.IntVarP(&opts.Jobs, "jobs", "j", runtime.NumCPU(), "files checksummed at once")
	f.BoolVarP(&progress, "progress", "P", false, "show a progress bar (default: when stderr is a terminal)")
	return func(ctx context.Context, args []string) error {
		if len(args) == 0 {
			return usageError{"no backup directory specified"}
		}
		failed := 0
		for _, dir := range args {
			bar := newProgress(stderr, progress || isTerminal(stderr), "verify")
			opts.Progress = bar.Set
			res, err := verify.Backup(ctx, dir, opts)
			bar.Finish()
			if err != nil {
				return fmt.Errorf("%s: %w", dir, err)
			}
			for _, p := range res.Problems {
				fmt.Fprintf(stderr, "combinefs verify: %s: %s\n", dir, p)
			}
			if len(res.Problems) > 0 {
				failed++
				continue
			}
			fmt.Fprintf(stderr, "combinefs verify: %s: backup successfully verified (%d files, %s)\n", dir, res.Files, humanBytes(res.Bytes))
		}
		if chain {
			c, err := resolver.OpenChain(args, resolver.ChainOptions{RequireV2Manifests: true})
			if err != nil {
				return err
			}
			for _, w := range c.Warnings {
				fmt.Fprintf(stderr, "combinefs verify: warning: %s\n", w)
			}
			fmt.Fprintf(stderr, "combinefs verify: the %d backups form a valid chain\n", len(args))
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d backups failed verification", failed, len(args))
		}
		return nil
	}
}
