package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/resolver"
)

// waitNotice is the repo.Waiter of a command: it says what the command is
// about to wait for.
func waitNotice(cmd string) repo.Waiter {
	return func(what string) { fmt.Fprintf(stderr, "combinefs %s: waiting for %s\n", cmd, what) }
}

// repoChainWith turns --repo LOC --point P (a name or a unique prefix) into
// the point's chain, full backup first, and holds a shared lock on each of
// its points until the caller releases it, so that expire and compact leave
// them alone. LOC may be s3://BUCKET/PREFIX; it returns the options to open
// the chain with (for an object store, a source over one listing per point).
func repoChainWith(ctx context.Context, cmd, loc, point string, s3o repo.S3Options) ([]string, resolver.ChainOptions, *repo.Hold, error) {
	c, err := openRepoChain(ctx, cmd, loc, point, s3o)
	if err != nil {
		return nil, resolver.ChainOptions{}, nil, err
	}
	return c.dirs, c.opts, c.hold, nil
}

// repoChainOpen is a point's chain opened from a repository, with what
// opening it cost on an object store.
type repoChainOpen struct {
	repo *repo.Repo
	dirs []string
	opts resolver.ChainOptions
	hold *repo.Hold
	// phases say, for an object store, how long each step took and the
	// requests it sent (a mount logs them).
	phases []string
	// phase records the step since its previous call as what, and returns
	// its line ("" for a local repository).
	phase func(what string) string
}

// openRepoChain opens the repository at loc (once per process, see
// openRepo) and the chain of point in it, timing each step.
func openRepoChain(ctx context.Context, cmd, loc, point string, s3o repo.S3Options) (*repoChainOpen, error) {
	c := &repoChainOpen{}
	c.phase = c.timer()
	phase := c.phase
	r, err := openRepo(ctx, loc, s3o)
	if err != nil {
		return nil, err
	}
	c.repo = r
	if r.Log == nil {
		r.Log = func(msg string) { fmt.Fprintf(stderr, "combinefs %s: %s\n", cmd, msg) }
	}
	phase("open the repository")
	dirs, hold, err := r.ShareChain(ctx, point, waitNotice(cmd))
	if err != nil {
		return nil, err
	}
	phase("find and check the chain")
	opts, err := r.ChainOptions(ctx, dirs)
	if err != nil {
		hold.Release()
		return nil, err
	}
	phase("list the chain's points")
	c.dirs, c.opts, c.hold = dirs, opts, hold
	return c, nil
}

// timer returns a function that records, on an object store, the time and
// the requests since its previous call as the phase what.
func (c *repoChainOpen) timer() func(what string) string {
	last := time.Now()
	var before repo.RequestCounts
	return func(what string) string {
		s, ok := c.repo.Store.(*repo.S3)
		if !ok {
			return ""
		}
		now, counts := time.Now(), s.Requests()
		line := fmt.Sprintf("%s: %.0f ms, %s", what, float64(now.Sub(last).Microseconds())/1000, counts.Sub(before))
		c.phases = append(c.phases, line)
		last, before = now, counts
		s.ResetPeak()
		return line
	}
}

// openRepos are the repositories this process opened, by location: a
// command that reads a repository twice (mount --target-*: the point to
// recover from, then its chain) opens it once, and on an object store
// fetches each small object once.
var openRepos = struct {
	sync.Mutex
	m map[string]*repo.Repo
}{m: map[string]*repo.Repo{}}

// openRepo opens the existing repository at loc, once per process.
func openRepo(ctx context.Context, loc string, s3o repo.S3Options) (*repo.Repo, error) {
	key := loc + "\x00" + s3o.Endpoint
	openRepos.Lock()
	defer openRepos.Unlock()
	if r, ok := openRepos.m[key]; ok {
		return r, nil
	}
	r, err := repo.OpenWith(ctx, loc, false, s3o)
	if err != nil {
		return nil, err
	}
	openRepos.m[key] = r
	return r, nil
}
