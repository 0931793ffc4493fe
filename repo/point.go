package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
)

// Kind is FULL or INCREMENTAL.
type Kind string

// The kinds of backup.
const (
	KindFull        Kind = "FULL"
	KindIncremental Kind = "INCREMENTAL"
)

// Point is one backup of a repository and what list shows of it.
type Point struct {
	Name string
	Dir  string
	Kind Kind
	Time time.Time // from the name

	SystemID uint64
	StartLSN format.LSN
	StartTLI uint32
	// EndLSN is the end of the last WAL range of the manifest: the point in
	// time the backup restores to.
	EndLSN format.LSN
	// PrevLSN and PrevTLI are where an incremental backup's parent started.
	PrevLSN format.LSN
	PrevTLI uint32

	// Parent is the name of the backup this one is incremental from, "" for
	// a full backup or when none matches.
	Parent string
	// Chain lists the names of the backups that restore this point, full
	// backup first, when the point is intact.
	Chain []string
	// Size is the total size of the backup's files.
	Size int64
	// Problem is empty when the point and its chain are intact, and else
	// says what is wrong.
	Problem string
}

// Points reads every point of the repository, oldest first, finds each
// one's parent and checks each chain the way pg_combinebackup would.
func (r *Repo) Points(ctx context.Context) ([]*Point, error) {
	points, err := r.scan(ctx, true)
	if err != nil {
		return nil, err
	}
	linkParents(points)
	r.checkChains(ctx, points)
	return points, nil
}

// scan lists the points, oldest first, with what their backup_labels say.
// With full it also reads each manifest and sums each point's size (what
// list shows); without, it reads the system identifier from pg_control (a
// small file), enough to link parents: the light scan of a lookup.
func (r *Repo) scan(ctx context.Context, full bool) ([]*Point, error) {
	names, err := r.pointNames(ctx)
	if err != nil {
		return nil, err
	}
	var points []*Point
	for _, name := range names {
		m := pointNameRe.FindStringSubmatch(name)
		t, err := time.Parse(nameTimeLayout, m[1])
		if err != nil {
			continue
		}
		points = append(points, &Point{Name: name, Dir: r.pointDir(name), Kind: Kind(m[2]), Time: t})
	}
	// Each point's reads are independent: on an object store each is a
	// round trip, so the points are read in parallel.
	var g errgroup.Group
	g.SetLimit(remoteSmallJobs)
	for _, p := range points {
		g.Go(func() error {
			if r.readLabel(ctx, p); p.Problem != "" {
				return nil
			}
			if !full {
				r.readControl(ctx, p)
				return nil
			}
			objs, err := r.Store.List(ctx, p.Name+"/")
			if err != nil {
				return err
			}
			for _, o := range objs {
				p.Size += o.Size
			}
			r.readManifest(ctx, p)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	sort.Slice(points, func(i, j int) bool { return points[i].Name < points[j].Name })
	return points, nil
}

// readLabel fills in what p's backup_label says, or sets p.Problem.
func (r *Repo) readLabel(ctx context.Context, p *Point) {
	labelPath := p.Dir + "/backup_label"
	data, err := r.readSmall(ctx, p.Name+"/backup_label")
	if err != nil {
		p.Problem = fmt.Sprintf("not a complete backup: %v", pathErr(err))
		return
	}
	l, err := format.ParseBackupLabel(data, labelPath)
	if err != nil {
		p.Problem = err.Error()
		return
	}
	p.StartLSN, p.StartTLI = l.StartLSN, l.StartTLI
	if l.Incremental {
		p.PrevLSN, p.PrevTLI = l.PrevLSN, l.PrevTLI
	}
	if want := l.Incremental; want != (p.Kind == KindIncremental) {
		p.Problem = fmt.Sprintf("named %s, but its backup_label says otherwise", p.Kind)
	}
}

// readControl takes p's system identifier from its pg_control; a damaged
// one is left for the chain check to report.
func (r *Repo) readControl(ctx context.Context, p *Point) {
	name := p.Name + "/global/pg_control"
	data, err := r.readSmall(ctx, name)
	if err != nil {
		return
	}
	if cf, err := format.ParseControlFile(data, r.pointDir(name)); err == nil {
		p.SystemID = cf.SystemIdentifier
	}
}

// readManifest fills in what p's backup_manifest says, or sets p.Problem.
func (r *Repo) readManifest(ctx context.Context, p *Point) {
	manPath := p.Dir + "/backup_manifest"
	data, err := r.readSmall(ctx, p.Name+"/backup_manifest")
	if err != nil {
		p.Problem = fmt.Sprintf("not a complete backup: %v", pathErr(err))
		return
	}
	m, err := format.ParseManifest(data, manPath)
	if err != nil {
		p.Problem = err.Error()
		return
	}
	if m.HasSystemIdentifier {
		p.SystemID = m.SystemIdentifier
	}
	if n := len(m.WALRanges); n > 0 {
		p.EndLSN = m.WALRanges[n-1].End
	}
}

// pathErr shortens a *PathError to "backup_label: no such file or directory".
func pathErr(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return filepath.Base(pe.Path) + ": " + pe.Err.Error()
	}
	return err.Error()
}

// linkParents finds each incremental backup's parent: an older backup that
// started where the incremental says its parent did. Only a compaction
// makes two of them (the incremental it replaced, and the full point that
// takes its place with the same start); either restores the same bytes,
// and the full one is preferred, so that the chains after it no longer
// lean on the points the compaction replaces. Otherwise the newest intact
// match wins.
func linkParents(points []*Point) {
	for i, p := range points {
		if p.Kind != KindIncremental || p.PrevTLI == 0 {
			continue // a full backup, or its label could not be read
		}
		var best *Point
		for j := i - 1; j >= 0; j-- {
			q := points[j]
			if q.StartLSN != p.PrevLSN || q.StartTLI != p.PrevTLI || (q.SystemID != p.SystemID && q.SystemID != 0 && p.SystemID != 0) {
				continue
			}
			if best == nil || best.Problem != "" && q.Problem == "" || q.Kind == KindFull && q.Problem == "" && best.Kind != KindFull {
				best = q
			}
		}
		if best != nil {
			p.Parent = best.Name
		}
		if p.Parent == "" && p.Problem == "" {
			p.Problem = fmt.Sprintf("its parent (the backup that started at %s on timeline %d) is not in the repository", p.PrevLSN, p.PrevTLI)
		}
	}
}

// checkChains sets Chain or Problem on every point.
func (r *Repo) checkChains(ctx context.Context, points []*Point) {
	byName := map[string]*Point{}
	for _, p := range points {
		byName[p.Name] = p
	}
	// The chain of p, full backup first; nil and a problem when an
	// ancestor is missing or damaged.
	chainOf := func(p *Point) ([]*Point, string) {
		var chain []*Point
		for q := p; ; q = byName[q.Parent] {
			chain = append([]*Point{q}, chain...)
			if q != p && q.Problem != "" {
				return nil, fmt.Sprintf("its parent %s is not usable", q.Name)
			}
			if q.Kind == KindFull || q.Parent == "" {
				break
			}
		}
		return chain, ""
	}
	verified := map[string]bool{}
	for _, p := range points {
		if p.Problem != "" {
			continue
		}
		chain, problem := chainOf(p)
		if problem != "" {
			p.Problem = problem
			continue
		}
		if chain[0].Kind != KindFull {
			p.Problem = "its chain does not begin with a full backup"
			continue
		}
		if !verified[p.Name] {
			verifyChain(chain, verified, r.chainOptions(ctx))
		}
		if p.Problem == "" {
			for _, q := range chain {
				p.Chain = append(p.Chain, q.Name)
			}
		}
	}
}

// verifyChain runs pg_combinebackup's chain checks (through the resolver,
// with o reading an object-store repository's files) on chain and marks
// the points it vouches for. A point is intact only if every point before
// it is.
func verifyChain(chain []*Point, verified map[string]bool, o resolver.ChainOptions) {
	dirs := make([]string, len(chain))
	for i, p := range chain {
		dirs[i] = p.Dir
	}
	_, err := resolver.OpenChain(dirs, o)
	if err == nil {
		for _, p := range chain {
			verified[p.Name] = true
		}
		return
	}
	bad := len(chain) - 1
	var ce *resolver.ChainError
	if errors.As(err, &ce) {
		for i, p := range chain {
			if p.Dir == ce.Backup {
				bad = i
			}
		}
	}
	chain[bad].Problem = oneLine(err.Error())
	verified[chain[bad].Name] = true
	for _, p := range chain[bad+1:] {
		p.Problem = fmt.Sprintf("its parent %s is not usable", chain[bad].Name)
		verified[p.Name] = true
	}
	if bad > 0 && !verified[chain[bad-1].Name] {
		verifyChain(chain[:bad], verified, o)
	}
}

// oneLine folds a multi-line message into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
