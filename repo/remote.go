package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/resolver"
)

// On an object store a repository has no directories and no rename, so a
// point is published by a marker object written after all of its files:
//
//	s3://BUCKET/PREFIX/2025-02-20_161530-FULL/...   the backup's files
//	s3://BUCKET/PREFIX/.points/2025-02-20_161530-FULL   its marker, written last
//
// A point's files without a marker are a capture that did not finish (a
// leftover, never a point); deleting the marker first retires a point.
const markerDir = ".points"

// MarkerName is the marker object of the point name on an object store.
func MarkerName(name string) string { return markerDir + "/" + name }

// OpenWith opens the repository at loc: a local directory (as Open), or
// s3://BUCKET/PREFIX with o's S3 settings. Every command's --repo comes
// through here, so this is the one place that tells the two apart. Without
// create, an S3 prefix that holds nothing is an error, as a missing
// directory is.
func OpenWith(ctx context.Context, loc string, create bool, o S3Options) (*Repo, error) {
	bucket, prefix, ok, err := ParseS3URL(loc)
	if err != nil {
		return nil, err
	}
	if !ok {
		return openLocal(loc, create)
	}
	st, err := NewS3(ctx, bucket, prefix, o)
	if err != nil {
		return nil, err
	}
	r := &Repo{Dir: strings.TrimSuffix(st.String(), "/"), Store: st}
	found, err := st.Probe(ctx)
	if err != nil {
		return nil, err
	}
	if !found && !create {
		return nil, fmt.Errorf("%s holds no combinefs repository (nothing is stored under it)", r.Dir)
	}
	r.Created = !found
	return r, nil
}

// Remote reports whether the repository is in an object store.
func (r *Repo) Remote() bool {
	_, local := r.Store.(Local)
	return !local
}

func (r *Repo) remote() bool { return r.Remote() }

// PointFS is the fs.FS that verify reads point name through on an object
// store, or nil for a local repository (whose points are directories).
func (r *Repo) PointFS(ctx context.Context, name string) (fs.FS, error) {
	if !r.remote() {
		return nil, nil
	}
	return NewStorageFS(ctx, r.Store, name)
}

// pointDir is where a point's files are: a local directory, or its URL.
func (r *Repo) pointDir(name string) string {
	if r.remote() {
		return r.Dir + "/" + name
	}
	return filepath.Join(r.Dir, name)
}

// pointNames lists the names of the repository's points, sorted: the
// directories with a point's name, or on an object store the markers.
func (r *Repo) pointNames(ctx context.Context) ([]string, error) {
	var names []string
	if !r.remote() {
		entries, err := os.ReadDir(r.Dir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() && IsPointName(e.Name()) {
				names = append(names, e.Name())
			}
		}
		return names, nil
	}
	objs, err := r.Store.List(ctx, markerDir+"/")
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if n := strings.TrimPrefix(o.Name, markerDir+"/"); IsPointName(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// remoteLeftovers lists, on an object store, the top-level names that are
// not points: the files of a point whose marker was never written (a
// capture cut short) or was deleted (a point being removed).
func (r *Repo) remoteLeftovers(ctx context.Context) ([]string, error) {
	points, err := r.pointNames(ctx)
	if err != nil {
		return nil, err
	}
	isPoint := map[string]bool{}
	for _, n := range points {
		isPoint[n] = true
	}
	objs, err := r.Store.List(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	for _, o := range objs {
		top, _, _ := strings.Cut(o.Name, "/")
		if IsPointName(top) && !isPoint[top] && !seen[top] {
			seen[top] = true
			out = append(out, top)
		}
	}
	return out, nil
}

// chainOptions are the resolver's options for a chain of this repository:
// on an object store its small files are read through the Storage.
func (r *Repo) chainOptions(ctx context.Context) resolver.ChainOptions {
	o := resolver.ChainOptions{RequireV2Manifests: true}
	if r.remote() {
		o.ReadFile = func(p string) ([]byte, error) {
			// The resolver joins names with filepath.Join, which makes
			// s3://b/p/NAME/f s3:/b/p/NAME/f.
			name, ok := strings.CutPrefix(p, r.Dir+"/")
			if !ok {
				name, ok = strings.CutPrefix(p, filepath.Clean(r.Dir)+"/")
			}
			if !ok {
				return nil, fmt.Errorf("%s is not in repository %s", p, r.Dir)
			}
			data, err := r.readSmall(ctx, name)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
			}
			return data, err
		}
	}
	return o
}

// checkRemoteRepository fails unless the prefix holds a point, a point's
// marker or files a capture left: what CheckIsRepository asks of a
// directory. It lists only the prefix's top level where the store can.
func (r *Repo) checkRemoteRepository(ctx context.Context) error {
	var tops []string
	if s, ok := r.Store.(*S3); ok {
		var err error
		if tops, err = s.TopNames(ctx); err != nil {
			return err
		}
	} else {
		objs, err := r.Store.List(ctx, "")
		if err != nil {
			return err
		}
		for _, o := range objs {
			top, _, _ := strings.Cut(o.Name, "/")
			tops = append(tops, top)
		}
	}
	for _, top := range tops {
		if IsPointName(top) || top == markerDir {
			return nil
		}
	}
	return fmt.Errorf("%s is not a combinefs repository (no backups in it)", r.Dir)
}

// lockRemote takes the repository's lock on an object store: the object
// .combinefs.lock, created only if absent (a conditional PUT) and deleted
// to unlock. Unlike a flock it outlives a killed holder: one whose process
// is gone from this machine is taken over; for a holder on another
// machine, the message of a waiting command names it and the object to
// delete by hand once it is gone.
func (r *Repo) lockRemote(ctx context.Context, holder string, wait Waiter) (unlock func(), err error) {
	return r.lockObject(ctx, repoLockName, "the lock of repository "+r.Dir, holder, wait)
}

// lockObject takes the lock object name (lockRemote) for holder; what
// names the lock in messages.
func (r *Repo) lockObject(ctx context.Context, name, what, holder string, wait Waiter) (unlock func(), err error) {
	host, _ := os.Hostname()
	me := fmt.Sprintf("%s, pid %d on %s, since %s\n", holder, os.Getpid(), host, time.Now().UTC().Format(time.RFC3339))
	told := false
	for {
		err := r.Store.Put(ctx, name, []byte(me))
		if err == nil {
			return func() { r.Store.Delete(context.WithoutCancel(ctx), name) }, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		h, err := r.Store.ReadRange(ctx, name, 0, 4096)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released since the Put: try again
		}
		if err != nil {
			return nil, err
		}
		if deadHolder(string(h), host) {
			// Killed on this machine: its lock is void, as a flock would be.
			if err := r.Store.Delete(ctx, name); err != nil {
				return nil, err
			}
			continue
		}
		what := fmt.Sprintf("%s (held by %s; if that command is gone, delete %s/%s)",
			what, strings.TrimSpace(string(h)), r.Dir, name)
		if wait == nil {
			return nil, fmt.Errorf("%s: %w", what, ErrLocked)
		}
		if !told {
			wait(what)
			told = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// On an object store a reader's shared lock of a point is a lease object,
// .readers/POINT/HOST-PID-NANOS, naming its holder as a lock object does;
// Release deletes it. A reader puts its leases before it checks that the
// points are still points, and retiring a point deletes its marker before
// it looks for leases, so one of the two always sees the other (the
// store's listings are strongly consistent). A lease whose process is gone
// from this machine is void; one from another machine is kept until it is
// deleted, by its reader or by hand.
const readerDir = ".readers"

func leasePrefix(point string) string { return readerDir + "/" + point + "/" }

// shareRemote puts a lease on each of the named points; gone is true (and
// nothing is held) when one of them is no longer a point.
func (r *Repo) shareRemote(ctx context.Context, names []string) (h *Hold, gone bool, err error) {
	host, _ := os.Hostname()
	me := fmt.Sprintf("reader, pid %d on %s, since %s\n", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339))
	id := fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano())
	h = &Hold{store: r.Store}
	for _, n := range names {
		if err := r.Store.Put(ctx, leasePrefix(n)+id, []byte(me)); err != nil {
			h.Release()
			return nil, false, err
		}
		h.leases = append(h.leases, leasePrefix(n)+id)
	}
	points, err := r.pointNames(ctx)
	if err != nil {
		h.Release()
		return nil, false, err
	}
	for _, n := range names {
		if _, ok := slices.BinarySearch(points, n); !ok {
			h.Release()
			return nil, true, nil
		}
	}
	return h, false, nil
}

// readRemote reports whether a live reader holds a lease on point; the
// leases of readers gone from this machine are deleted on the way.
func (r *Repo) readRemote(ctx context.Context, point string) (bool, error) {
	objs, err := r.Store.List(ctx, leasePrefix(point))
	if err != nil {
		return false, err
	}
	host, _ := os.Hostname()
	for _, o := range objs {
		who, err := r.Store.ReadRange(ctx, o.Name, 0, 4096)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return false, err
		}
		if !deadHolder(string(who), host) {
			return true, nil
		}
		if err := r.Store.Delete(ctx, o.Name); err != nil {
			return false, err
		}
	}
	return false, nil
}

// removeRemoteLeftovers deletes the files of every point without a marker
// (a capture cut short, or a point retired by deleting its marker). The
// caller holds the repository's lock, so nothing is writing them.
func (r *Repo) removeRemoteLeftovers(ctx context.Context) error {
	leftovers, err := r.remoteLeftovers(ctx)
	if err != nil {
		return err
	}
	for _, l := range leftovers {
		// A retired point's files stay while a reader that took its lease
		// before the retirement still reads them; a later command removes
		// them.
		if read, err := r.readRemote(ctx, l); err != nil || read {
			if err != nil {
				return err
			}
			continue
		}
		objs, err := r.Store.List(ctx, l+"/")
		if err != nil {
			return err
		}
		names := make([]string, len(objs))
		for i, o := range objs {
			names[i] = o.Name
		}
		if err := deleteAll(ctx, r.Store, names); err != nil {
			return fmt.Errorf("remove what an interrupted command left: %w", err)
		}
	}
	s, ok := r.Store.(*S3)
	if !ok {
		return nil
	}
	// A capture killed mid-file also leaves its multipart uploads, which
	// no listing shows: those of a point without a marker go too.
	points, err := r.pointNames(ctx)
	if err != nil {
		return err
	}
	err = s.AbortUploads(ctx, func(name string) bool {
		top, _, _ := strings.Cut(name, "/")
		_, isPoint := slices.BinarySearch(points, top)
		return IsPointName(top) && !isPoint
	})
	if err != nil {
		return fmt.Errorf("remove what an interrupted command left: %w", err)
	}
	return nil
}

// emptyTrashOrRemote deletes the retired points: the trash directories, or
// on an object store the files of points whose markers are gone.
func (r *Repo) emptyTrashOrRemote(ctx context.Context) error {
	if r.remote() {
		return r.removeRemoteLeftovers(ctx)
	}
	return r.emptyTrash()
}

// deadHolder reports whether a lock object's holder ran on host and its
// process is gone. A holder on another machine cannot be checked.
func deadHolder(lock, host string) bool {
	_, rest, ok := strings.Cut(lock, ", pid ")
	if !ok {
		return false
	}
	var pid int
	var on string
	if n, _ := fmt.Sscanf(rest, "%d on %s", &pid, &on); n != 2 || pid <= 0 {
		return false
	}
	return strings.TrimSuffix(on, ",") == host && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// readSmall reads the object name (a label, a control file, a manifest)
// whole. On S3 it is fetched once: the chain check of a lookup, the
// source that mount and flatten read through and a scan all want the same
// few objects, and each GET is a round trip. ChainOptions takes them out
// of the store's memo again, so that it does not grow for the life of a
// mount.
func (r *Repo) readSmall(ctx context.Context, name string) ([]byte, error) {
	s, ok := r.Store.(*S3)
	if !ok {
		return r.Store.ReadRange(ctx, name, 0, -1)
	}
	return s.memo.get(name, func() ([]byte, error) { return s.ReadRange(ctx, name, 0, -1) })
}

// smallMemo holds the small objects an S3 Storage fetched for a chain
// (readSmall) and the listings of points fetched ahead of their use
// (prefetchChain), until they are taken.
type smallMemo struct {
	mu    sync.Mutex
	data  map[string][]byte
	lists map[string][]Object
}

// get returns the object name, fetched by fetch unless held.
func (m *smallMemo) get(name string, fetch func() ([]byte, error)) ([]byte, error) {
	m.mu.Lock()
	data, ok := m.data[name]
	m.mu.Unlock()
	if ok {
		return data, nil
	}
	data, err := fetch()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.data == nil {
		m.data = map[string][]byte{}
	}
	m.data[name] = data
	m.mu.Unlock()
	return data, nil
}

// putList holds the listing of prefix.
func (m *smallMemo) putList(prefix string, objs []Object) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lists == nil {
		m.lists = map[string][]Object{}
	}
	m.lists[prefix] = objs
}

// takeList returns and forgets the held listing of prefix.
func (m *smallMemo) takeList(prefix string) ([]Object, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	objs, ok := m.lists[prefix]
	delete(m.lists, prefix)
	return objs, ok
}

// forget drops everything held.
func (m *smallMemo) forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data, m.lists = nil, nil
}

// prefetchChain fetches, on S3, what opening the chain of points reads,
// all in parallel: each point's listing, its small files (chainFiles)
// that no scan fetched yet, and its marker, whose header pack holds its
// INCREMENTAL headers. The chain check and ChainOptions then find
// them in the memo instead of fetching them one after another.
func (r *Repo) prefetchChain(ctx context.Context, points []string) error {
	s, ok := r.Store.(*S3)
	if !ok {
		return nil
	}
	var g errgroup.Group
	g.SetLimit(remoteSmallJobs)
	for _, p := range points {
		g.Go(func() error {
			objs, err := s.List(ctx, p+"/")
			if err == nil {
				s.memo.putList(p+"/", objs)
			}
			return err
		})
		for _, obj := range chainObjects(p) {
			g.Go(func() error {
				_, err := r.readSmall(ctx, obj)
				if errors.Is(err, fs.ErrNotExist) {
					return nil // the chain check says so, with its own message
				}
				return err
			})
		}
	}
	return g.Wait()
}
