package capture

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/combinefs/combinefs/repo"
)

// intoRepo is the repository point a capture becomes.
type intoRepo struct {
	r    *repo.Repo
	name string
}

// RepoCapture takes a backup into the repository: an incremental one from
// the newest point, or a full one when there is none or full is set. o.Dir
// is ignored. The repository names, stages and publishes the point under
// its lock; wait, if set, hears what the capture waits for (nil fails at
// once when another command holds the lock). It returns the point's name.
func RepoCapture(ctx context.Context, r *repo.Repo, o Options, full bool, wait repo.Waiter) (name string, res *Result, err error) {
	unlock, err := r.Lock(ctx, "capture", wait)
	if err != nil {
		if r.Created && !r.Remote() {
			os.Remove(r.Dir) // only if empty: another capture may hold it now
		}
		return "", nil, err
	}
	defer func() {
		// A first capture into a repository Open made leaves nothing when
		// it fails: the lock file goes while this capture still holds it
		// (so no one else's lock is removed), then the directory, if
		// nothing else came into it.
		drop := err != nil && r.Created && !r.Remote()
		if drop {
			r.RemoveLockFile()
		}
		unlock()
		if drop {
			os.Remove(r.Dir)
		}
	}()
	// Holding the lock, nothing else writes here: what killed commands
	// left is finished or removed first.
	if err := r.Recover(ctx); err != nil {
		return "", nil, err
	}
	o.PriorManifest = nil
	kind := repo.KindFull
	if !full {
		points, err := r.Points(ctx)
		if err != nil {
			return "", nil, err
		}
		if len(points) > 0 {
			parent := points[len(points)-1]
			if parent.Problem != "" {
				return "", nil, fmt.Errorf("cannot take an incremental backup from the newest backup %s: %s (use --full to start a new chain)", parent.Name, parent.Problem)
			}
			m, err := r.Store.ReadRange(ctx, parent.Name+"/backup_manifest", 0, -1)
			if err != nil {
				return "", nil, err
			}
			o.PriorManifest = m
			kind = repo.KindIncremental
		}
	}
	if name, err = r.WaitName(ctx, kind); err != nil {
		return "", nil, err
	}
	o.into = &intoRepo{r: r, name: name}
	o.InPlaceTablespaces = true
	o.TablespaceMap = nil
	res, err = Capture(ctx, o)
	if errors.Is(err, ErrOtherCluster) {
		err = fmt.Errorf("%w (the repository's newest backup is of another cluster; use a separate repository, or --full)", err)
	}
	if err != nil {
		return "", nil, err
	}
	return name, res, nil
}
