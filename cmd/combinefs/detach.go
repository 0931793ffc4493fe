package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/fusefs"
)

// detachCrashEnv names a step of detach after which the process kills
// itself (SIGKILL), for the crash tests.
const detachCrashEnv = "COMBINEFS_TEST_DETACH_CRASH"

func setupDetach(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var owner string
	f.StringVar(&owner, "owner", "", "`USER[:GROUP]` (or UID:GID) to own the data directory (default: the owner of the chain's final backup)")
	return func(ctx context.Context, args []string) error {
		if len(args) != 1 {
			return usageError{"give one upper directory"}
		}
		dir, err := filepath.Abs(args[0])
		if err != nil {
			return err
		}
		o := fusefs.DetachOptions{UID: -1, GID: -1}
		if owner != "" {
			uid, gid, err := resolveOwner(owner, "")
			if err != nil {
				return err
			}
			o.UID, o.GID = int(uid), int(gid)
		}
		if step := os.Getenv(detachCrashEnv); step != "" {
			o.AfterStep = func(s string) {
				if s == step {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
			}
		}
		if err := fusefs.Detach(dir, o); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "combinefs detach: %s is now a plain data directory\n", dir)
		return nil
	}
}
