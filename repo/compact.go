package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/verify"
)

// Compaction rolls the chain up to an incremental point P into a new full
// point that takes P's place: a flatten of the chain, whose backup_label is
// P's without the INCREMENTAL lines, so it starts at P's LSN on P's
// timeline and the incrementals taken after P chain onto it unchanged. It
// is named P's time with FULL (sorting just before P), and goes through
// these steps, each durable before the next, so that a kill at any moment
// leaves every point restorable, to the same bytes:
//
//  1. flatten into a hidden staged directory, fsynced, each file read back
//     (through the page cache it was written through, before the fsync
//     that makes it durable) and checked against the checksum the flatten
//     computed for it while the others are written;
//  2. verify it against the manifest the flatten wrote (the files read
//     back are compared with their entries, not read again);
//  3. write the journal (.compact.journal: the new name, the staged
//     directory, the replaced points) with write-temp, fsync, rename;
//  4. rename the staged directory to the new name: both the new full point
//     and P now restore P (the incrementals after P link to either);
//  5. retire the replaced points, newest first (P, then its ancestors), each
//     by a rename to a trash name under its exclusive lock; one that a
//     reader holds is kept, with its ancestors;
//  6. remove the journal, then delete the trash.
//
// The next command that takes the repository's lock finishes a killed
// compaction (Recover): with the journal but no new point (killed before
// 4) it rolls back, removing the staged directory; with the new point it
// rolls forward through 5 and 6. On an object store the steps are those of
// compact_s3.go.

// journal is the compaction's journal file.
type journal struct {
	New      string   `json:"new"`
	Staged   string   `json:"staged"`
	Replaces []string `json:"replaces"` // oldest first
}

// CompactOptions tune a compaction.
type CompactOptions struct {
	// Jobs is how many files are written and checksummed at once.
	Jobs int
	// SkipWAL verifies the new point without reading its WAL (for
	// synthetic backups, which have none).
	SkipWAL bool
	// Progress, if set, hears the flatten's bytes written and total.
	Progress func(done, total int64)
	// TmpDir is where a compaction on an object store stages the new
	// point before it uploads it (default: os.TempDir()).
	TmpDir string
}

// CompactResult is what a compaction did.
type CompactResult struct {
	New      *Point
	Replaced []string
	// InUse are replaced points a reader held, kept with their ancestors.
	InUse []string
	Bytes int64
}

// Compact replaces the chain up to the incremental point ref with one full
// point (see above). It holds the repository's lock, waiting through wait.
func (r *Repo) Compact(ctx context.Context, ref string, o CompactOptions, wait Waiter) (*CompactResult, error) {
	// Refuse a bad point before taking the lock (which writes the lock
	// file), so that a refusal changes nothing; then look again under it.
	if _, err := r.compactable(ctx, ref); err != nil {
		return nil, err
	}
	unlock, err := r.Lock(ctx, "compact", wait)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := r.Recover(ctx); err != nil {
		return nil, err
	}
	p, err := r.compactable(ctx, ref)
	if err != nil {
		return nil, err
	}
	j := journal{New: PointName(KindFull, p.Time), Replaces: p.Chain}
	if taken, err := r.hasPoint(ctx, j.New); err != nil || taken {
		if err == nil {
			err = fmt.Errorf("cannot compact %s: the name of its full point, %s, is taken", p.Name, j.New)
		}
		return nil, err
	}
	var bytes int64
	if r.remote() {
		bytes, err = r.compactRemote(ctx, p, &j, o)
	} else {
		bytes, err = r.compactLocal(ctx, p, &j, o)
	}
	if err != nil {
		return nil, err
	}
	phase("compact-published")
	inUse, err := r.finishCompaction(ctx, j)
	if err != nil {
		return nil, err
	}
	np, err := r.Find(ctx, j.New)
	if err != nil {
		return nil, err
	}
	return &CompactResult{New: np, Replaced: j.Replaces, InUse: inUse, Bytes: bytes}, nil
}

// compactLocal writes the compacted point in a staged directory of the
// repository, verifies it, journals the compaction and publishes the point
// by renaming the directory (steps 1 to 4).
func (r *Repo) compactLocal(ctx context.Context, p *Point, j *journal, o CompactOptions) (int64, error) {
	staged, err := r.Stage(j.New)
	if err != nil {
		return 0, err
	}
	j.Staged = filepath.Base(staged)
	bytes, err := r.writeCompacted(ctx, p, staged, o)
	if err != nil {
		os.RemoveAll(staged)
		return 0, err
	}
	phase("compact-verified")
	if err := r.putJournal(ctx, *j); err != nil {
		os.RemoveAll(staged)
		return 0, err
	}
	phase("compact-journaled")
	if _, err := r.Publish(staged, j.New); err != nil {
		return 0, err // the journal rolls it back
	}
	return bytes, nil
}

// putJournal writes the compaction's journal.
func (r *Repo) putJournal(ctx context.Context, j journal) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return r.Store.Put(ctx, journalName, data)
}

// hasPoint reports whether the point name exists: its directory, or on an
// object store its marker.
func (r *Repo) hasPoint(ctx context.Context, name string) (bool, error) {
	var err error
	if r.remote() {
		_, err = r.Store.ReadRange(ctx, MarkerName(name), 0, 1)
	} else {
		_, err = os.Lstat(filepath.Join(r.Dir, name))
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// compactable finds the point ref and checks that it can be compacted.
func (r *Repo) compactable(ctx context.Context, ref string) (*Point, error) {
	p, err := r.Find(ctx, ref)
	switch {
	case err != nil:
		return nil, err
	case p.Kind == KindFull:
		return nil, fmt.Errorf("point %s is a full backup: there is nothing to compact", p.Name)
	case p.Problem != "":
		return nil, fmt.Errorf("point %s of %s cannot be compacted: %s", p.Name, r.Dir, p.Problem)
	}
	return p, nil
}

// testAfterWrite, set by tests, is called with each file of the compacted
// point once it is written and before it is read back: a test damages one.
var testAfterWrite func(file string)

// writeCompacted flattens p's chain into dir (fsynced) and verifies the
// result against the manifest written with it.
func (r *Repo) writeCompacted(ctx context.Context, p *Point, dir string, o CompactOptions) (int64, error) {
	dirs := make([]string, len(p.Chain))
	for i, n := range p.Chain {
		dirs[i] = r.pointDir(n)
	}
	copts, err := r.ChainOptions(ctx, dirs)
	if err != nil {
		return 0, err
	}
	chain, err := resolver.OpenChain(dirs, copts)
	if err != nil {
		return 0, err
	}
	tree, err := resolver.NewTree(chain)
	if err != nil {
		return 0, err
	}
	// Each file is written through the page cache and read back from it by
	// the worker that wrote it, while the others write: a second pass over
	// the disk (direct writes read back direct) made compact move 5.6 GB
	// where flatten moves 4.0, on a disk that bounds both. verify.Backup then checks the
	// manifest (its checksum, its entries against the files on disk and
	// what was read back, the WAL) without reading those files again.
	rb := verify.NewReadBack()
	res, err := flatten.Run(ctx, tree, flatten.Options{Output: dir, Jobs: o.Jobs, Progress: o.Progress,
		ManifestChecksums: format.ChecksumCRC32C, CopyMethod: flatten.Copy, Buffered: true,
		OnFileWritten: func(file string, e format.ManifestFile) error {
			if testAfterWrite != nil {
				testAfterWrite(file)
			}
			problem, err := rb.Check(file, e)
			if err == nil && problem != "" {
				err = fmt.Errorf("reading back the compacted point: %s", problem)
			}
			return err
		}})
	if err != nil {
		return 0, err
	}
	phase("compact-flattened")
	v, err := verify.Backup(ctx, dir, verify.Options{SkipWAL: o.SkipWAL, Jobs: o.Jobs, ReadBack: rb})
	if err != nil {
		return 0, fmt.Errorf("verify the compacted point: %w", err)
	}
	if len(v.Problems) > 0 {
		return 0, fmt.Errorf("the compacted point does not match its manifest: %s", v.Problems[0])
	}
	return res.Bytes, nil
}

// finishCompaction retires the replaced points newest first, skipping one
// a reader holds (and its ancestors), then removes the journal and the
// trash.
func (r *Repo) finishCompaction(ctx context.Context, j journal) (inUse []string, err error) {
	for i := len(j.Replaces) - 1; i >= 0; i-- {
		name := j.Replaces[i]
		if ok, err := r.hasPoint(ctx, name); err != nil {
			return nil, err
		} else if !ok {
			continue // retired before a kill
		}
		unlockPoint, held, err := r.TryExclusive(ctx, name)
		if err != nil {
			return nil, err
		}
		if held {
			inUse = append(inUse, name)
			break
		}
		err = r.retire(name)
		unlockPoint()
		if err != nil {
			return nil, err
		}
		phase("compact-retired")
	}
	if err := r.Store.Delete(ctx, journalName); err != nil {
		return nil, err
	}
	phase("compact-unjournaled")
	return inUse, r.emptyTrashOrRemote(ctx)
}

// recoverCompaction rolls a killed compaction back (its new point was not
// published) or forward (it was). The caller holds the repository's lock.
func (r *Repo) recoverCompaction(ctx context.Context) error {
	data, err := r.Store.ReadRange(ctx, journalName, 0, -1)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var j journal
	if err := json.Unmarshal(data, &j); err != nil || !IsPointName(j.New) || j.Staged == "" || filepath.Base(j.Staged) != j.Staged {
		return fmt.Errorf("the journal of an interrupted compaction, %s, is damaged: remove it after checking the repository with combinefs list", r.Dir+"/"+journalName)
	}
	published, err := r.hasPoint(ctx, j.New)
	if err != nil {
		return err
	}
	if !published {
		// On an object store the staged point is the new point's objects
		// without a marker: a leftover that Recover removes next.
		if !r.remote() {
			if err := os.RemoveAll(filepath.Join(r.Dir, j.Staged)); err != nil {
				return err
			}
		}
		return r.Store.Delete(ctx, journalName)
	}
	_, err = r.finishCompaction(ctx, j)
	return err
}
