package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/walarchive"
)

// setupWALGet is combinefs wal-get, the restore_command of a server
// recovering from the repository's archive (local or on S3).
func setupWALGet(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var dir string
	f.StringVar(&dir, "repo", "", "the repository `DIR` (or s3://BUCKET/PREFIX) whose archive to read")
	s3o := s3Flags(f)
	return func(ctx context.Context, args []string) error {
		if dir == "" {
			return usageError{"no repository specified (--repo DIR)"}
		}
		if len(args) != 2 {
			return usageError{"give the file's name and where to put it (restore_command = 'combinefs wal-get --repo DIR %f %p')"}
		}
		r, err := repo.OpenWith(ctx, dir, false, *s3o)
		if err != nil {
			return err
		}
		return walarchive.GetFrom(ctx, r, args[0], args[1])
	}
}
