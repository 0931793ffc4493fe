package repo

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/combinefs/combinefs/format"
)

// ExpireOptions say which chains expire keeps: the newest KeepFull full
// points with everything chained to them, and every chain with a point
// taken within KeepWithin of Now.
type ExpireOptions struct {
	KeepFull   int
	KeepWithin time.Duration
	Now        time.Time
	DryRun     bool
}

// ExpireResult is what expire removed (or, dry, would remove) and kept.
type ExpireResult struct {
	Removed []*Point
	// InUse are points expire would have removed but a reader holds.
	InUse []*Point
	// KeptForInUse are older points of those chains, which the held ones
	// need.
	KeptForInUse []*Point
	WALRemoved   []Object
	// Freed is the size of what was removed, WAL included.
	Freed int64
}

// Expire removes the chains older than what o keeps, and the archived WAL
// no kept point needs. It holds the repository's lock (waiting through
// wait), and each removed point's exclusive lock while it renames it to a
// hidden trash name (the one step that makes it stop being a point) before
// deleting it; a point a reader holds is kept, with the points before it in
// its chain. What a killed expire leaves is finished by the next command
// that holds the repository's lock.
func (r *Repo) Expire(ctx context.Context, o ExpireOptions, wait Waiter) (*ExpireResult, error) {
	if o.KeepFull < 1 {
		return nil, fmt.Errorf("keep at least one full point (got %d)", o.KeepFull)
	}
	unlock, err := r.Lock(ctx, "expire", wait)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !o.DryRun {
		if err := r.Recover(ctx); err != nil {
			return nil, err
		}
	}
	points, err := r.Points(ctx)
	if err != nil {
		return nil, err
	}
	doomed := expirePlan(points, o)
	res := &ExpireResult{}
	kept := map[string]bool{}
	byName := map[string]*Point{}
	for _, p := range points {
		byName[p.Name] = p
	}
	// Newest first, so that a chain cut short by a held point or a crash
	// still restores every point left.
	for i := len(doomed) - 1; i >= 0; i-- {
		p := doomed[i]
		if kept[p.Name] {
			res.KeptForInUse = append(res.KeptForInUse, p)
			continue
		}
		unlockPoint, held, err := r.TryExclusive(ctx, p.Name)
		if err != nil {
			return res, err
		}
		if held {
			res.InUse = append(res.InUse, p)
			for q := byName[p.Parent]; q != nil; q = byName[q.Parent] {
				kept[q.Name] = true
			}
			continue
		}
		if !o.DryRun {
			err = r.retire(p.Name)
			phase("expire-retired")
		}
		unlockPoint()
		if err != nil {
			return res, err
		}
		res.Removed = append(res.Removed, p)
		res.Freed += p.Size
	}
	if !o.DryRun {
		phase("expire-before-delete")
		if err := r.emptyTrashOrRemote(ctx); err != nil {
			return res, err
		}
	}
	removed := map[string]bool{}
	for _, p := range res.Removed {
		removed[p.Name] = true
	}
	var left []*Point
	for _, p := range points {
		if !removed[p.Name] {
			left = append(left, p)
		}
	}
	if err := r.expireWAL(ctx, left, o.DryRun, res); err != nil {
		return res, err
	}
	sort.Slice(res.Removed, func(i, j int) bool { return res.Removed[i].Name < res.Removed[j].Name })
	return res, nil
}

// expirePlan picks the points to remove, oldest first: every point of a
// chain that begins before the oldest kept chain (a replaced point a
// compaction had to keep sorts after the full point that replaced it, but
// its chain begins before). A repository without a full point keeps
// everything.
func expirePlan(points []*Point, o ExpireOptions) []*Point {
	byName := map[string]*Point{}
	for _, p := range points {
		byName[p.Name] = p
	}
	// root is the oldest ancestor reachable through parent links.
	root := func(p *Point) *Point {
		for p.Parent != "" && byName[p.Parent] != nil {
			p = byName[p.Parent]
		}
		return p
	}
	keepRoot := map[string]bool{}
	fulls := 0
	for i := len(points) - 1; i >= 0; i-- {
		if p := points[i]; p.Kind == KindFull && p.Problem == "" && fulls < o.KeepFull {
			keepRoot[p.Name] = true
			fulls++
		}
	}
	if fulls == 0 {
		return nil
	}
	if o.KeepWithin > 0 {
		for _, p := range points {
			if !p.Time.Before(o.Now.Add(-o.KeepWithin)) {
				keepRoot[root(p).Name] = true
			}
		}
	}
	oldest := ""
	for n := range keepRoot {
		if oldest == "" || n < oldest {
			oldest = n
		}
	}
	var doomed []*Point
	for _, p := range points {
		if r := root(p).Name; r < oldest && !keepRoot[r] {
			doomed = append(doomed, p)
		}
	}
	return doomed
}

// retire renames a point to a hidden trash name: from that rename on it is
// no longer a point. The caller holds the point's exclusive lock.
func (r *Repo) retire(name string) error {
	if r.remote() {
		return r.Store.Delete(context.TODO(), MarkerName(name))
	}
	trash := filepath.Join(r.Dir, fmt.Sprintf(".%s%s%d", name, trashInfix, time.Now().UnixNano()))
	if err := renameDurable(filepath.Join(r.Dir, name), trash); err != nil {
		return err
	}
	r.dropPointLock(name)
	return nil
}

// WALToRemove applies the WAL archive's retention rule: keep the WAL from
// the oldest kept point's start LSN on. It returns the segments (of any
// timeline) that end at or before keepFrom's segment begins; history files
// and anything else are kept.
func WALToRemove(objs []Object, segSize int64, keepFrom format.LSN) []Object {
	if !format.ValidWALSegmentSize(segSize) {
		return nil
	}
	perID := uint64(0x100000000) / uint64(segSize)
	first := uint64(keepFrom) / uint64(segSize)
	var out []Object
	for _, o := range objs {
		m := WALSegmentRe.FindStringSubmatch(path.Base(o.Name))
		if m == nil {
			continue
		}
		var log, seg uint64
		fmt.Sscanf(m[2], "%X", &log)
		fmt.Sscanf(m[3], "%X", &seg)
		if log*perID+seg < first {
			out = append(out, o)
		}
	}
	return out
}

// walSegmentSize is the size of the archive's complete segments, or 0.
func walSegmentSize(objs []Object) int64 {
	for _, o := range objs {
		if m := WALSegmentRe.FindStringSubmatch(path.Base(o.Name)); m != nil && m[4] == "" && format.ValidWALSegmentSize(o.Size) {
			return o.Size
		}
	}
	return 0
}

// expireWAL removes the archived WAL (under wal/, when there is one) that
// none of the points left needs.
func (r *Repo) expireWAL(ctx context.Context, left []*Point, dry bool, res *ExpireResult) error {
	if _, err := os.Stat(filepath.Join(r.Dir, WALDir)); err != nil && !r.remote() {
		return nil
	}
	var keepFrom format.LSN
	found := false
	for _, p := range left {
		if p.StartTLI != 0 && (!found || p.StartLSN < keepFrom) {
			keepFrom, found = p.StartLSN, true
		}
	}
	if !found {
		return nil // no point says what it needs: keep it all
	}
	objs, err := r.Store.List(ctx, WALDir+"/")
	if err != nil {
		return err
	}
	gone := WALToRemove(objs, walSegmentSize(objs), keepFrom)
	var names []string
	for _, o := range gone {
		names = append(names, o.Name)
		res.Freed += o.Size
	}
	res.WALRemoved = append(res.WALRemoved, gone...)
	if dry {
		return nil
	}
	return deleteAll(ctx, r.Store, names)
}
