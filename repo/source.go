package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/resolver"
)

// An object store has no directories, so a backup's empty directories
// (pg_notify, pg_replslot, pg_wal/archive_status, ... which a server needs)
// are kept as directory marker objects: an empty object whose name ends in
// "/", as the S3 console and most S3 tools make them. Every other directory
// is implied by the names of the files in it.

// DirMarker is the marker object of the directory dir (a name relative to
// the repository's root, without a trailing slash).
func DirMarker(dir string) string { return dir + DirMarkerSuffix }

// ChainOptions are the resolver's options to read the chain whose
// directories dirs ShareChain or ChainDirs returned: the defaults for a
// local repository; on an object store a resolver.Source over one listing
// of each point, taken now, through which the chain's small files,
// directory tree, INCREMENTAL headers (by range) and blocks (by range) are
// read. Every entry's modification time is the final point's, from its
// name (objects keep none that a backup set).
func (r *Repo) ChainOptions(ctx context.Context, dirs []string) (resolver.ChainOptions, error) {
	o := resolver.ChainOptions{RequireV2Manifests: true}
	if !r.remote() || len(dirs) == 0 {
		return o, nil
	}
	s := &remoteSource{repo: r, root: r.Dir, points: map[string]*StorageFS{}, small: map[string][]byte{},
		packs: map[string]HeaderPack{}, packErrs: map[string]error{}, logged: map[string]bool{}}
	if m := pointNameRe.FindStringSubmatch(path.Base(dirs[len(dirs)-1])); m != nil {
		s.mtime, _ = time.Parse(nameTimeLayout, m[1])
	}
	var names []string
	for _, d := range dirs {
		name, ok := s.name(d)
		if !ok || name == "" || strings.Contains(name, "/") {
			return o, fmt.Errorf("%s is not a point of repository %s", d, r.Dir)
		}
		names = append(names, name)
	}
	// One listing per point, the small files every chain check reads and
	// the marker, all in parallel (each is a round trip), unless a lookup
	// of the point fetched them already (prefetchChain).
	fss := make([]*StorageFS, len(names))
	data := make([][][]byte, len(names))
	var g errgroup.Group
	g.SetLimit(remoteSmallJobs)
	for i, name := range names {
		g.Go(func() (err error) {
			fss[i], err = r.pointFS(ctx, name)
			return err
		})
		objs := chainObjects(name)
		data[i] = make([][]byte, len(objs))
		for j, obj := range objs {
			g.Go(func() (err error) {
				data[i][j], err = r.readSmall(ctx, obj)
				if errors.Is(err, fs.ErrNotExist) {
					err = nil // OpenChain names what is missing
				}
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		return o, err
	}
	for i, name := range names {
		s.points[name] = fss[i]
		for j, f := range chainFiles {
			if _, ok := fss[i].files[f]; ok && data[i][j] != nil {
				s.small[name+"/"+f] = data[i][j]
			}
		}
		s.setPack(name, data[i][len(chainFiles)])
	}
	if st, ok := r.Store.(*S3); ok {
		st.memo.forget() // s.small holds the chain's now; the rest is not needed
	}
	o.Source = s
	return o, nil
}

// chainObjects are the objects of point name that opening its chain reads
// whole: its chainFiles, then its marker (for its header pack).
func chainObjects(name string) []string {
	objs := make([]string, 0, len(chainFiles)+1)
	for _, f := range chainFiles {
		objs = append(objs, name+"/"+f)
	}
	return append(objs, MarkerName(name))
}

// pointFS is the StorageFS of point name, from the listing a lookup
// fetched ahead (prefetchChain) if there is one.
func (r *Repo) pointFS(ctx context.Context, name string) (*StorageFS, error) {
	if st, ok := r.Store.(*S3); ok {
		if objs, ok := st.memo.takeList(name + "/"); ok {
			return newStorageFS(ctx, r.Store, name, objs), nil
		}
	}
	return NewStorageFS(ctx, r.Store, name)
}

// remoteSource is a resolver.Source over the listed points of a repository
// in an object store: a StorageFS per point.
type remoteSource struct {
	repo   *Repo
	root   string // the repository's URL, which the chain's Dirs start with
	mtime  time.Time
	points map[string]*StorageFS
	small  map[string][]byte // the chainFiles of each point, by object name
	// packs are the header packs of the points whose markers have one;
	// packErrs say why a point's could not be used.
	packs    map[string]HeaderPack
	packErrs map[string]error

	mu     sync.Mutex
	logged map[string]bool // the points whose pack problems were logged
}

// setPack decodes the marker of point name, if fetched, for its pack.
func (s *remoteSource) setPack(name string, marker []byte) {
	if marker == nil {
		return // retired meanwhile: the chain check says so
	}
	pack, err := ParseMarker(name, marker)
	switch {
	case err != nil:
		s.packErrs[name] = err
	case pack != nil:
		s.packs[name] = pack
	}
}

// HeaderOf is the header of the INCREMENTAL file p from its point's
// header pack, if the pack holds one that fits the object's listed size.
// Otherwise the resolver reads the header from the object; why, when the
// pack should have had it, is logged once per point.
func (s *remoteSource) HeaderOf(p string) ([]byte, bool) {
	fsys, rel, err := s.lookup("open", p)
	if err != nil {
		return nil, false
	}
	name, _ := s.name(p)
	point, _, _ := strings.Cut(name, "/")
	pack := s.packs[point]
	if pack == nil {
		if err := s.packErrs[point]; err != nil {
			s.logOnce(point, "%s: the header pack of its marker is not used (%v): INCREMENTAL headers are read from the objects", p, err)
		}
		return nil, false
	}
	h, ok := pack[rel]
	if !ok {
		s.logOnce(point, "%s: not in the header pack of its point's marker: its header is read from the object", p)
		return nil, false
	}
	if err := checkPackedHeader(h, fsys.files[rel], p); err != nil {
		s.logOnce(point, "%v: the header is read from the object", err)
		return nil, false
	}
	return h, true
}

// logOnce logs the first pack problem of each point.
func (s *remoteSource) logOnce(point, format string, args ...any) {
	s.mu.Lock()
	first := !s.logged[point]
	s.logged[point] = true
	s.mu.Unlock()
	if first {
		s.repo.logf(format, args...)
	}
}

// chainFiles are the files of each backup that opening a chain reads
// whole (resolver.OpenChain): fetched together when the source is made.
var chainFiles = []string{"PG_VERSION", "global/pg_control", "backup_label", "backup_manifest"}

// remoteSmallJobs is how many listings and small files are fetched at once.
const remoteSmallJobs = 16

// name is the object name of a path the resolver made: a Dir of the chain
// (the repository's URL and a point's name) joined with filepath.Join,
// which makes s3://b/p/NAME/f into s3:/b/p/NAME/f.
func (s *remoteSource) name(p string) (string, bool) {
	for _, root := range []string{s.root, filepath.Clean(s.root)} {
		if p == root {
			return "", true
		}
		if rest, ok := strings.CutPrefix(p, root+"/"); ok {
			return rest, true
		}
	}
	return "", false
}

// lookup finds the point of path p and p's name in its StorageFS.
func (s *remoteSource) lookup(op, p string) (*StorageFS, string, error) {
	name, ok := s.name(p)
	point, rel, _ := strings.Cut(name, "/")
	fsys := s.points[point]
	if !ok || fsys == nil {
		return nil, "", &fs.PathError{Op: op, Path: p, Err: fs.ErrNotExist}
	}
	if rel == "" {
		rel = "."
	}
	return fsys, rel, nil
}

// info is what the resolver sees of an entry: owner-only modes, the
// point's time.
func (s *remoteSource) info(fi fs.FileInfo) fs.FileInfo {
	mode := fs.FileMode(0o600)
	if fi.IsDir() {
		mode = fs.ModeDir | 0o700
	}
	return remoteInfo{FileInfo: fi, mode: mode, mtime: s.mtime}
}

// ReadDir lists a directory, sorted by name (an object listing's order).
func (s *remoteSource) ReadDir(dir string) ([]fs.FileInfo, error) {
	fsys, rel, err := s.lookup("open", dir)
	if err != nil {
		return nil, err
	}
	ents, err := fsys.ReadDir(rel)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: fs.ErrNotExist}
	}
	out := make([]fs.FileInfo, len(ents))
	for i, e := range ents {
		fi, _ := e.Info()
		out[i] = s.info(fi)
	}
	return out, nil
}

// Stat describes a listed object or directory.
func (s *remoteSource) Stat(p string) (fs.FileInfo, error) {
	fsys, rel, err := s.lookup("stat", p)
	if err != nil {
		return nil, err
	}
	fi, err := fsys.Stat(rel)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
	}
	return s.info(fi), nil
}

// Readlink fails: an object store has no symbolic links.
func (s *remoteSource) Readlink(p string) (string, error) {
	return "", &fs.PathError{Op: "readlink", Path: p, Err: syscall.EINVAL}
}

// Open opens a listed object; nothing is read until ReadAt.
func (s *remoteSource) Open(p string) (resolver.SourceFile, error) {
	fsys, rel, err := s.lookup("open", p)
	if err != nil {
		return nil, err
	}
	size, ok := fsys.files[rel]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	if data, ok := s.small[fsys.key(rel)]; ok {
		return memFile{Reader: bytes.NewReader(data), path: p}, nil
	}
	return &remoteFile{storageFile: storageFile{fs: fsys, name: rel, size: size}, path: p}, nil
}

// remoteFile is an object of a point, read by ranged reads (the store
// retries each as it does): storageFile's ReadAt, and ReadAtInto, which a
// mount reads blocks with straight into its cache.
type remoteFile struct {
	storageFile
	path string
}

func (f *remoteFile) Name() string { return f.path }
func (f *remoteFile) Size() int64  { return f.size }

// memFile is a small file fetched when the source was made.
type memFile struct {
	*bytes.Reader
	path string
}

func (f memFile) Name() string { return f.path }
func (f memFile) Close() error { return nil }

// remoteInfo is an entry of a StorageFS as the resolver sees it.
type remoteInfo struct {
	fs.FileInfo
	mode  fs.FileMode
	mtime time.Time
}

func (i remoteInfo) Mode() fs.FileMode  { return i.mode }
func (i remoteInfo) ModTime() time.Time { return i.mtime }
