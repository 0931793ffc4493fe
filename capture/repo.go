package capture

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A repository is a directory of backups of one cluster, named by the time
// they were taken (UTC) and their kind, oldest first when sorted by name:
//
//	2025-02-20_161530-FULL
//	2025-02-20_171502-INCREMENTAL
//
// Each incremental backup is taken from the newest backup before it, so the
// chain of a point is found by following each incremental's INCREMENTAL FROM
// LSN back to the backup that started there, down to a full backup. A
// capture in progress lives in a hidden directory (".NAME.partial-XXXX")
// and a lock file keeps two captures from chaining to the same parent.

// Kind is FULL or INCREMENTAL.
type Kind string

// The kinds of backup.
const (
	KindFull        Kind = "FULL"
	KindIncremental Kind = "INCREMENTAL"
)

// nameTimeLayout is the time part of a backup name.
const nameTimeLayout = "2006-01-02_150405"

var pointNameRe = regexp.MustCompile(`^([0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{6})-(FULL|INCREMENTAL)$`)

// repoLockName is the lock file in a repository.
const repoLockName = ".combinefs.lock"

// Repo is a backup repository.
type Repo struct {
	Dir string
	// created: OpenRepo made Dir, so a first capture that fails removes it
	// again rather than leave an empty repository behind.
	created bool
}

// OpenRepo opens the repository in dir; with create, it makes the
// directory when it does not exist.
func OpenRepo(dir string, create bool) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	created := false
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, err
		}
		created = true
		fi, err = os.Stat(abs)
	}
	if err != nil {
		return nil, fmt.Errorf("repository: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("repository %s is not a directory", abs)
	}
	return &Repo{Dir: abs, created: created}, nil
}

// ErrRepoLocked means another capture holds the repository's lock.
var ErrRepoLocked = errors.New("repository is locked by another capture")

// Lock takes the repository's lock without waiting; unlock releases it.
func (r *Repo) Lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(r.Dir, repoLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrRepoLocked, r.Dir)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Leftovers lists the hidden directories of captures that were killed
// before they could clean up.
func (r *Repo) Leftovers() ([]string, error) {
	entries, err := os.ReadDir(r.Dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".partial-") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// NewName is the name of a backup of kind taken at t that does not exist
// yet, or "" when that second's name is taken.
func (r *Repo) NewName(kind Kind, t time.Time) string {
	name := t.UTC().Format(nameTimeLayout) + "-" + string(kind)
	if _, err := os.Lstat(filepath.Join(r.Dir, name)); err == nil {
		return ""
	}
	return name
}

// RepoCapture takes a backup into the repository: an incremental one from
// the newest backup, or a full one when there is none or full is set. o.Dir
// is ignored. It returns the new point's name.
func RepoCapture(ctx context.Context, r *Repo, o Options, full bool) (name string, res *Result, err error) {
	unlock, err := r.Lock()
	if err != nil {
		if r.created {
			os.Remove(r.Dir) // only if empty: another capture may hold it now
		}
		return "", nil, err
	}
	defer func() {
		// A first capture into a repository OpenRepo made leaves nothing
		// when it fails: the lock file goes while this capture still holds
		// it (so no one else's lock is removed), then the directory, if
		// nothing else came into it.
		drop := err != nil && r.created
		if drop {
			os.Remove(filepath.Join(r.Dir, repoLockName))
		}
		unlock()
		if drop {
			os.Remove(r.Dir)
		}
	}()
	// Holding the lock, nothing else writes here: hidden partial
	// directories are what killed captures left behind.
	leftovers, err := r.Leftovers()
	if err != nil {
		return "", nil, err
	}
	for _, l := range leftovers {
		if err := os.RemoveAll(filepath.Join(r.Dir, l)); err != nil {
			return "", nil, fmt.Errorf("remove what an interrupted capture left: %w", err)
		}
	}
	o.PriorManifest = nil
	kind := KindFull
	if !full {
		points, err := r.Points()
		if err != nil {
			return "", nil, err
		}
		if len(points) > 0 {
			parent := points[len(points)-1]
			if parent.Problem != "" {
				return "", nil, fmt.Errorf("cannot take an incremental backup from the newest backup %s: %s (use --full to start a new chain)", parent.Name, parent.Problem)
			}
			m, err := os.ReadFile(filepath.Join(parent.Dir, "backup_manifest"))
			if err != nil {
				return "", nil, err
			}
			o.PriorManifest = m
			kind = KindIncremental
		}
	}
	for {
		if name = r.NewName(kind, time.Now()); name != "" {
			break
		}
		select {
		case <-ctx.Done():
			return "", nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	o.Dir = filepath.Join(r.Dir, name)
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

// Point is one backup of a repository and what list shows of it.
type Point struct {
	Name string
	Dir  string
	Kind Kind
	Time time.Time // from the name

	SystemID uint64
	StartLSN LSN
	StartTLI uint32
	// EndLSN is the end of the last WAL range of the manifest: the point in
	// time the backup restores to.
	EndLSN LSN
	// PrevLSN and PrevTLI are where an incremental backup's parent started.
	PrevLSN LSN
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

// Points reads every backup in the repository, oldest first, finds each
// one's parent and checks each chain the way pg_combinebackup would.
func (r *Repo) Points() ([]*Point, error) {
	entries, err := os.ReadDir(r.Dir)
	if err != nil {
		return nil, err
	}
	var points []*Point
	for _, e := range entries {
		m := pointNameRe.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		t, err := time.Parse(nameTimeLayout, m[1])
		if err != nil {
			continue
		}
		p := &Point{Name: e.Name(), Dir: filepath.Join(r.Dir, e.Name()), Kind: Kind(m[2]), Time: t}
		p.Size = dirSize(p.Dir)
		readPoint(p)
		points = append(points, p)
	}
	sort.Slice(points, func(i, j int) bool { return points[i].Name < points[j].Name })
	linkParents(points)
	checkChains(points)
	return points, nil
}

// dirSize sums the sizes of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// linkParents finds each incremental backup's parent: the newest older
// backup that started where the incremental says its parent did.
func linkParents(points []*Point) {
	for i, p := range points {
		if p.Kind != KindIncremental || p.PrevTLI == 0 {
			continue // a full backup, or its label could not be read
		}
		for j := i - 1; j >= 0; j-- {
			q := points[j]
			if q.StartLSN == p.PrevLSN && q.StartTLI == p.PrevTLI && (q.SystemID == p.SystemID || q.SystemID == 0 || p.SystemID == 0) {
				p.Parent = q.Name
				break
			}
		}
		if p.Parent == "" && p.Problem == "" {
			p.Problem = fmt.Sprintf("its parent (the backup that started at %s on timeline %d) is not in the repository", p.PrevLSN, p.PrevTLI)
		}
	}
}

// checkChains sets Chain or Problem on every point.
func checkChains(points []*Point) {
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
			verifyChain(chain, verified)
		}
		if p.Problem == "" {
			for _, q := range chain {
				p.Chain = append(p.Chain, q.Name)
			}
		}
	}
}

// verifyChain runs the chain checks on chain and marks the points it
// vouches for. A point is intact only if every point before it is.
func verifyChain(chain []*Point, verified map[string]bool) {
	dirs := make([]string, len(chain))
	for i, p := range chain {
		dirs[i] = p.Dir
	}
	err := checkChain(dirs)
	if err == nil {
		for _, p := range chain {
			verified[p.Name] = true
		}
		return
	}
	bad := len(chain) - 1
	if dir := chainErrorBackup(err); dir != "" {
		for i, p := range chain {
			if p.Dir == dir {
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
		verifyChain(chain[:bad], verified)
	}
}
