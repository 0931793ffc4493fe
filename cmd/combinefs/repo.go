package main

import (
	"context"
	"fmt"

	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/resolver"
)

// waitNotice is the repo.Waiter of a command: it says what the command is
// about to wait for.
func waitNotice(cmd string) repo.Waiter {
	return func(what string) { fmt.Fprintf(stderr, "combinefs %s: waiting for %s\n", cmd, what) }
}

// repoChain turns --repo DIR --point P (a name or a unique prefix) into the
// point's chain, full backup first, and holds a shared lock on each of its
// points until the caller releases it, so that expire and compact leave
// them alone. exec comes through here.
func repoChain(ctx context.Context, cmd, dir, point string) ([]string, *repo.Hold, error) {
	r, err := repo.Open(dir, false)
	if err != nil {
		return nil, nil, err
	}
	return r.ShareChain(ctx, point, waitNotice(cmd))
}

// repoChainWith is repoChain for the commands that also read a repository
// in an object store (mount, flatten): loc may be s3://BUCKET/PREFIX, and
// it returns the options to open the chain with (for an object store, a
// source over one listing per point).
func repoChainWith(ctx context.Context, cmd, loc, point string, s3o repo.S3Options) ([]string, resolver.ChainOptions, *repo.Hold, error) {
	r, err := repo.OpenWith(ctx, loc, false, s3o)
	if err != nil {
		return nil, resolver.ChainOptions{}, nil, err
	}
	dirs, hold, err := r.ShareChain(ctx, point, waitNotice(cmd))
	if err != nil {
		return nil, resolver.ChainOptions{}, nil, err
	}
	opts, err := r.ChainOptions(ctx, dirs)
	if err != nil {
		hold.Release()
		return nil, resolver.ChainOptions{}, nil, err
	}
	return dirs, opts, hold, nil
}
