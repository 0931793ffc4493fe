package main

import (
	"context"
	"fmt"

	"github.com/combinefs/combinefs/repo"
)

// waitNotice is the repo.Waiter of a command: it says what the command is
// about to wait for.
func waitNotice(cmd string) repo.Waiter {
	return func(what string) { fmt.Fprintf(stderr, "combinefs %s: waiting for %s\n", cmd, what) }
}

// repoChain turns --repo DIR --point P (a name or a unique prefix) into the
// point's chain, full backup first, and holds a shared lock on each of its
// points until the caller releases it, so that expire and compact leave
// them alone. mount, flatten and verify all come through here.
func repoChain(ctx context.Context, cmd, dir, point string) ([]string, *repo.Hold, error) {
	r, err := repo.Open(dir, false)
	if err != nil {
		return nil, nil, err
	}
	return r.ShareChain(ctx, point, waitNotice(cmd))
}
