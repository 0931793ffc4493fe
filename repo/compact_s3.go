package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/combinefs/combinefs/format"
)

// On an object store a compaction takes the same steps with a local
// staging directory, and the point's marker in place of the rename:
//
//  1. flatten the chain from the store into a private directory under
//     CompactOptions.TmpDir, each file read back and checked as above;
//  2. verify it against its manifest;
//  3. write the journal object, whose staged name is the new point's own
//     (its objects without a marker are the staging);
//  4. upload the point's files under its name, check the store's listing
//     and the manifest against what went up, then write its marker: the
//     point is published;
//  5. retire the replaced points newest first by deleting their markers;
//  6. delete the journal, then the retired points' objects.
//
// Recover rolls a killed compaction back (no marker: the new point's
// objects and multipart uploads are a leftover it deletes) or forward, as
// on disk. The staging directory is removed whatever happens; one that a
// killed compaction left behind is removed by the next, its process gone.

// compactStagingPrefix begins the name of a staging directory, followed by
// the pid of the compaction that owns it.
const compactStagingPrefix = "combinefs-compact-"

// CrashCompactUploading is the phase at which half of the new point's bytes
// have been handed to the uploads (some files up, others in flight).
const CrashCompactUploading = "compact-uploading"

// compactRemote writes, verifies, journals, uploads and publishes the
// compacted point (steps 1 to 4 above).
func (r *Repo) compactRemote(ctx context.Context, p *Point, j *journal, o CompactOptions) (int64, error) {
	tmp := o.TmpDir
	if tmp == "" {
		tmp = os.TempDir()
	}
	sweepStaging(tmp)
	staged, err := os.MkdirTemp(tmp, compactStagingPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return 0, fmt.Errorf("the staging directory of the compacted point: %w", err)
	}
	defer os.RemoveAll(staged)
	j.Staged = j.New
	bytes, err := r.writeCompacted(ctx, p, staged, o)
	if err != nil {
		return 0, err
	}
	phase("compact-verified")
	mpath := filepath.Join(staged, "backup_manifest")
	data, err := os.ReadFile(mpath)
	if err != nil {
		return 0, err
	}
	m, err := format.ParseManifest(data, mpath)
	if err != nil {
		return 0, err
	}
	if err := r.putJournal(ctx, *j); err != nil {
		return 0, err
	}
	phase("compact-journaled")
	var half sync.Once
	// The uploads' own parallelism, not Jobs: a small file is one PUT,
	// latency bound, and the store's budget bounds their memory.
	err = UploadPoint(ctx, r.Store, staged, j.New, UploadOptions{Manifest: m, Publish: true,
		Progress: func(done, total int64) {
			if 2*done >= total {
				half.Do(func() { phase(CrashCompactUploading) })
			}
		}})
	if err != nil {
		// The journal rolls back what went up, at the next command that
		// takes the lock (or right now, when the store answers).
		if rerr := r.recoverCompaction(context.WithoutCancel(ctx)); rerr == nil {
			r.removeRemoteLeftovers(context.WithoutCancel(ctx))
		}
		return 0, fmt.Errorf("upload the compacted point to %s: %w", r.Dir, err)
	}
	return bytes, nil
}

// sweepStaging removes the staging directories in tmp of compactions whose
// process is gone (killed: the others remove their own).
func sweepStaging(tmp string) {
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), compactStagingPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			os.RemoveAll(filepath.Join(tmp, e.Name()))
		}
	}
}
