package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"
)

// StorageFS is a read-only fs.FS of the objects under a prefix of a
// Storage, from one listing taken when it is made: the seam through which
// code written for a local directory (verify) reads a point in an object
// store. Its files read by ranged reads, in chunks when read in sequence.
type StorageFS struct {
	ctx   context.Context
	store Storage
	root  string
	files map[string]int64    // name below root -> size
	dirs  map[string][]string // directory -> its entries' names, sorted
}

// fsChunk is how much a sequential Read fetches at once.
const fsChunk = 8 << 20

// NewStorageFS lists the objects under root (a directory name of the
// Storage, without a trailing slash) and makes their fs.FS.
func NewStorageFS(ctx context.Context, store Storage, root string) (*StorageFS, error) {
	objs, err := store.List(ctx, root+"/")
	if err != nil {
		return nil, err
	}
	return newStorageFS(ctx, store, root, objs), nil
}

// newStorageFS makes the fs.FS of objs, the listing of root.
func newStorageFS(ctx context.Context, store Storage, root string, objs []Object) *StorageFS {
	s := &StorageFS{ctx: ctx, store: store, root: root, files: map[string]int64{}, dirs: map[string][]string{".": nil}}
	for _, o := range objs {
		s.add(strings.TrimPrefix(o.Name, root+"/"), o.Size)
	}
	for d := range s.dirs {
		sort.Strings(s.dirs[d])
	}
	return s
}

// add records the object name (below root), and its directory and every
// directory above it. A name ending in "/" is a directory marker (see
// DirMarker): an empty directory.
func (s *StorageFS) add(name string, size int64) {
	if dir, ok := strings.CutSuffix(name, "/"); ok {
		if _, known := s.dirs[dir]; known || dir == "" {
			return
		}
		s.dirs[dir] = nil
		name = dir
	} else {
		s.files[name] = size
	}
	for child := name; child != "."; {
		dir := path.Dir(child)
		_, known := s.dirs[dir]
		s.dirs[dir] = append(s.dirs[dir], path.Base(child))
		if known {
			break
		}
		child = dir
	}
}

// pathOf is the file name as messages name it: its URL on S3.
func (s *StorageFS) pathOf(name string) string {
	if st, ok := s.store.(fmt.Stringer); ok {
		return st.String() + s.key(name)
	}
	return s.key(name)
}

// key is the Storage's name of the file name.
func (s *StorageFS) key(name string) string {
	if s.root == "" {
		return name
	}
	return s.root + "/" + name
}

// Open opens a file or a directory.
func (s *StorageFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if size, ok := s.files[name]; ok {
		return &storageFile{fs: s, name: name, size: size}, nil
	}
	if _, ok := s.dirs[name]; ok {
		return &storageDir{fs: s, name: name}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// ReadDir lists a directory, sorted by name.
func (s *StorageFS) ReadDir(name string) ([]fs.DirEntry, error) {
	names, ok := s.dirs[name]
	if !ok {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
	}
	out := make([]fs.DirEntry, len(names))
	for i, n := range names {
		out[i] = fs.FileInfoToDirEntry(s.info(path.Join(name, n)))
	}
	return out, nil
}

// Stat describes a file or a directory.
func (s *StorageFS) Stat(name string) (fs.FileInfo, error) {
	if _, ok := s.files[name]; !ok {
		if _, ok := s.dirs[name]; !ok {
			return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
		}
	}
	return s.info(name), nil
}

func (s *StorageFS) info(name string) objInfo {
	size, isFile := s.files[name]
	return objInfo{name: path.Base(name), size: size, dir: !isFile}
}

type objInfo struct {
	name string
	size int64
	dir  bool
}

func (i objInfo) Name() string { return i.name }
func (i objInfo) Size() int64  { return i.size }
func (i objInfo) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | 0o555
	}
	return 0o444
}
func (i objInfo) ModTime() time.Time { return time.Time{} }
func (i objInfo) IsDir() bool        { return i.dir }
func (i objInfo) Sys() any           { return nil }

// storageFile reads an object: ReadAt by one ranged read, Read by chunks.
type storageFile struct {
	fs   *StorageFS
	name string
	size int64
	off  int64
	buf  []byte // read ahead of off
}

func (f *storageFile) Stat() (fs.FileInfo, error) { return f.fs.info(f.name), nil }
func (f *storageFile) Close() error               { return nil }

// ReadAt is one ranged read. A short object is an error naming it rather
// than an early EOF, and so is an answer longer than the range asked for
// (a store that ignored the Range header and sent the object from its
// start), which would otherwise pass for the range's bytes.
func (f *storageFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	n, err := f.ReadAtInto([][]byte{p}, off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// rangeIntoReader is a Storage that reads a range straight into the
// caller's buffers (S3).
type rangeIntoReader interface {
	ReadRangeInto(ctx context.Context, name string, off int64, bufs [][]byte) (int, error)
}

// ReadAtInto fills bufs in order from off with one ranged read, up to the
// object's end as listed: fewer bytes only there, and an error naming the
// object when the store answers with fewer or more.
func (f *storageFile) ReadAtInto(bufs [][]byte, off int64) (int, error) {
	var total int64
	for _, b := range bufs {
		total += int64(len(b))
	}
	want := max(min(total, f.size-off), 0)
	if want == 0 {
		return 0, nil
	}
	key := f.fs.key(f.name)
	var n int
	var err error
	if r, ok := f.fs.store.(rangeIntoReader); ok {
		n, err = r.ReadRangeInto(f.fs.ctx, key, off, bufs)
	} else {
		var data []byte
		data, err = f.fs.store.ReadRange(f.fs.ctx, key, off, want)
		rest := data
		for _, b := range bufs {
			k := copy(b, rest)
			rest, n = rest[k:], n+k
		}
		if len(data) > int(want) {
			n = len(data)
		}
	}
	if err != nil {
		return n, err
	}
	if int64(n) != want {
		return n, fmt.Errorf("%s: a read of %d bytes at %d got %d (the object is listed with %d)", f.fs.pathOf(f.name), want, off, n, f.size)
	}
	return n, nil
}

func (f *storageFile) Read(p []byte) (int, error) {
	if len(f.buf) == 0 {
		if f.off >= f.size {
			return 0, io.EOF
		}
		data, err := f.fs.store.ReadRange(f.fs.ctx, f.fs.key(f.name), f.off, min(fsChunk, f.size-f.off))
		if err != nil {
			return 0, err
		}
		if len(data) == 0 {
			return 0, io.ErrUnexpectedEOF // the object shrank since the listing
		}
		f.buf = data
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	f.off += int64(n)
	return n, nil
}

// storageDir is an open directory.
type storageDir struct {
	fs   *StorageFS
	name string
	read int
}

func (d *storageDir) Stat() (fs.FileInfo, error) { return d.fs.info(d.name), nil }
func (d *storageDir) Close() error               { return nil }
func (d *storageDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: errors.New("is a directory")}
}

func (d *storageDir) ReadDir(n int) ([]fs.DirEntry, error) {
	all, _ := d.fs.ReadDir(d.name)
	rest := all[d.read:]
	if n <= 0 {
		d.read = len(all)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	rest = rest[:min(n, len(rest))]
	d.read += len(rest)
	return rest, nil
}
