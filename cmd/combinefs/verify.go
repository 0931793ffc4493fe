package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/verify"
)

func setupVerify(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var opts verify.Options
	var progress, chain bool
	var repoDir string
	f.BoolVarP(&opts.SkipChecksums, "skip-checksums", "s", false, "check file presence and sizes only")
	f.BoolVarP(&opts.SkipWAL, "no-parse-wal", "n", false, "do not check (parse) the WAL the backup needs")
	f.BoolVar(&chain, "chain", false, "also check that the backups, oldest first, form one chain")
	f.StringVar(&repoDir, "repo", "", "check every point of the repository `DIR` (or s3://BUCKET/PREFIX), every chain's links and the continuity of its WAL archive")
	s3o := s3Flags(f)
	f.IntVarP(&opts.Jobs, "jobs", "j", runtime.NumCPU(), "files checksummed at once")
	f.BoolVarP(&progress, "progress", "P", false, "show a progress bar (default: when stderr is a terminal)")
	return func(ctx context.Context, args []string) error {
		if repoDir != "" {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("with --repo, give no backup directories (first is %q)", args[0])}
			}
			perr := verifyRepo(ctx, repoDir, *s3o, opts, progress)
			aerr := verifyArchive(ctx, repoDir, *s3o)
			if perr != nil {
				return perr
			}
			return aerr
		}
		if len(args) == 0 {
			return usageError{"no backup directory specified"}
		}
		failed := 0
		for _, dir := range args {
			res, err := verifyOne(ctx, dir, opts, progress)
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

// verifyOne checks one backup against its manifest, with a progress bar.
func verifyOne(ctx context.Context, dir string, opts verify.Options, progress bool) (*verify.Result, error) {
	bar := newProgress(stderr, progress || isTerminal(stderr), "verify")
	opts.Progress = bar.Set
	defer bar.Finish()
	return verify.Backup(ctx, dir, opts)
}

// verifyRepo checks every point of a repository against its manifest and
// every chain's links (list's checks), one line per point, holding each
// point's shared lock while it reads it so that expire and compact leave it
// alone.
func verifyRepo(ctx context.Context, dir string, s3o repo.S3Options, opts verify.Options, progress bool) error {
	r, err := repo.OpenWith(ctx, dir, false, s3o)
	if err != nil {
		return err
	}
	points, err := r.Points(ctx)
	if err != nil {
		return err
	}
	if len(points) == 0 {
		return fmt.Errorf("repository %s has no points", r.Dir)
	}
	failed, checked := 0, 0
	bad := map[string]bool{}
	for _, p := range points {
		hold, gone, err := r.Share(ctx, []string{p.Name}, waitNotice("verify"))
		if err != nil {
			return err
		}
		if gone {
			fmt.Fprintf(stderr, "combinefs verify: %s: removed while the repository was verified\n", p.Name)
			continue
		}
		checked++
		var res *verify.Result
		opts.FS, err = r.PointFS(ctx, p.Name)
		if err == nil {
			opts.Headers, err = r.PointHeaders(ctx, p.Name)
		}
		if err == nil {
			res, err = verifyOne(ctx, p.Dir, opts, progress)
		}
		hold.Release()
		var verdict string
		switch {
		case err != nil:
			verdict = "FAILED: " + err.Error()
		case len(res.Problems) > 0:
			verdict = "FAILED: " + res.Problems[0]
			if n := len(res.Problems) - 1; n > 0 {
				verdict += fmt.Sprintf(" (and %d more problems)", n)
			}
		case badAncestor(p, bad) != "":
			verdict = fmt.Sprintf("FAILED: matches its manifest (%d files, %s), but its chain's point %s failed", res.Files, humanBytes(res.Bytes), badAncestor(p, bad))
		case p.Problem != "":
			verdict = fmt.Sprintf("FAILED: matches its manifest (%d files, %s), but cannot be restored: %s", res.Files, humanBytes(res.Bytes), p.Problem)
		default:
			verdict = fmt.Sprintf("ok: %d files, %s match the manifest; chain of %d intact", res.Files, humanBytes(res.Bytes), len(p.Chain))
		}
		if verdict[0] == 'F' {
			failed++
			bad[p.Name] = true
		}
		fmt.Fprintf(stderr, "combinefs verify: %s: %s\n", p.Name, oneLine(verdict))
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d points of %s failed verification", failed, checked, r.Dir)
	}
	fmt.Fprintf(stderr, "combinefs verify: all %d points of %s verified\n", checked, r.Dir)
	return nil
}

// badAncestor is the first point of p's chain before p that failed, or "".
func badAncestor(p *repo.Point, bad map[string]bool) string {
	for _, n := range p.Chain {
		if n != p.Name && bad[n] {
			return n
		}
	}
	return ""
}
