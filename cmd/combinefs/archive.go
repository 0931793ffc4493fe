package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/capture"
	"github.com/combinefs/combinefs/repo"
)

func setupArchive(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var repoDir, dbname, host, port, username, slot string
	var createSlot, synchronous bool
	var statusInterval int
	f.StringVar(&repoDir, "repo", "", "archive WAL into repository `DIR` (its wal/ directory) or s3://BUCKET/PREFIX")
	f.StringVarP(&dbname, "dbname", "d", "", "`CONNSTR`: connection string or URL (libpq settings, PG* variables and .pgpass apply)")
	f.StringVarP(&host, "host", "h", "", "database server `HOST` or socket directory")
	f.StringVarP(&port, "port", "p", "", "database server `PORT`")
	f.StringVarP(&username, "username", "U", "", "connect as `USER`")
	f.StringVarP(&slot, "slot", "S", "", "stream from replication slot `NAME`, which keeps the server's WAL until archived")
	f.BoolVar(&createSlot, "create-slot", false, "with --slot: create the slot if it does not exist")
	f.BoolVar(&synchronous, "synchronous", false, "fsync WAL before reporting it, so the server may count the archive as a synchronous standby")
	f.IntVarP(&statusInterval, "status-interval", "s", 10, "`SECONDS` between status packets sent to the server (on S3, also between uploads of the .partial segment)")
	s3o := s3Flags(f)
	return func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Sprintf("too many command-line arguments (first is %q)", args[0])}
		}
		if repoDir == "" {
			return usageError{"no repository specified (--repo DIR)"}
		}
		if createSlot && slot == "" {
			return usageError{"--create-slot needs --slot NAME"}
		}
		if statusInterval <= 0 {
			return usageError{fmt.Sprintf("invalid --status-interval %d: must be positive", statusInterval)}
		}
		cfg, err := capture.ConnConfig(dbname, host, port, username)
		if err != nil {
			return err
		}
		r, err := repo.OpenWith(ctx, repoDir, true, *s3o)
		if err != nil {
			return err
		}
		return capture.Archive(ctx, capture.ArchiveOptions{
			Conn: cfg, Repo: r, Slot: slot, CreateSlot: createSlot, Synchronous: synchronous,
			StatusInterval: time.Duration(statusInterval) * time.Second,
			Log:            func(s string) { fmt.Fprintf(stderr, "combinefs archive: %s\n", s) },
		})
	}
}
