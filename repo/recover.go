package repo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// Recover finishes or undoes what killed commands left, holding the
// repository's lock: a compaction's journal is rolled forward or back,
// staged directories are removed, and points renamed to trash are deleted.
func (r *Repo) Recover(ctx context.Context) error {
	if err := r.recoverCompaction(ctx); err != nil {
		return err
	}
	if r.remote() {
		return r.removeRemoteLeftovers(ctx)
	}
	if err := r.RemovePartials(); err != nil {
		return err
	}
	return r.emptyTrash()
}

// emptyTrash deletes the points that were renamed to trash: they stopped
// being points at that rename, so a delete cut short harms nothing.
func (r *Repo) emptyTrash() error {
	leftovers, err := r.Leftovers()
	if err != nil {
		return err
	}
	for _, l := range leftovers {
		if !IsTrash(l) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(r.Dir, l)); err != nil {
			return fmt.Errorf("remove a point an interrupted command retired: %w", err)
		}
	}
	return nil
}
