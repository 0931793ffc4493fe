package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/dio"
)

// Storage is what a repository needs of the place that keeps its files,
// in object-store terms so that an S3 bucket can implement it as well as a
// local directory. Names are slash-separated and relative to the
// repository's root.
type Storage interface {
	// List returns the objects whose names start with prefix, sorted by
	// name.
	List(ctx context.Context, prefix string) ([]Object, error)
	// ReadRange reads n bytes of the object from off on (fewer at its end);
	// n < 0 reads to the end.
	ReadRange(ctx context.Context, name string, off, n int64) ([]byte, error)
	// Put writes a new object atomically: readers see all of data or no
	// object. It fails with fs.ErrExist when the object exists.
	Put(ctx context.Context, name string, data []byte) error
	// Delete removes an object; a missing one is not an error.
	Delete(ctx context.Context, name string) error
	// Create starts a new object written in sequence, for data too large
	// to hold whole (a backup's files as they arrive). Nothing of it is
	// visible until Commit returns nil; Abort, or a process killed first,
	// leaves no object (on S3 perhaps an incomplete multipart upload, which
	// AbortUploads removes).
	Create(ctx context.Context, name string) (Writer, error)
}

// Writer is an object being written by Storage.Create. It is not safe for
// concurrent use.
type Writer interface {
	io.Writer
	// Commit makes the object whole and visible. It fails with
	// fs.ErrExist when the object exists, where the store can tell.
	Commit() error
	// Abort drops what was written; after Commit it does nothing.
	Abort()
}

// DirMarkerSuffix ends the name of an empty object that stands for a
// directory (the usual S3 "folder" object): a backup's empty directories
// (pg_notify, pg_wal/archive_status, ...) must exist in a restored data
// directory, and an object store keeps only files.
const DirMarkerSuffix = "/"

// Object is one entry of a listing.
type Object struct {
	Name string
	Size int64
}

// Local is a Storage over a local directory.
type Local struct{ Root string }

func (l Local) path(name string) string { return filepath.Join(l.Root, filepath.FromSlash(name)) }

// List walks the directory tree under the prefix's directory and keeps the
// regular files whose names start with prefix.
func (l Local) List(ctx context.Context, prefix string) ([]Object, error) {
	dir := path.Dir(prefix)
	if strings.HasSuffix(prefix, "/") {
		dir = strings.TrimSuffix(prefix, "/")
	}
	if dir == "." {
		dir = ""
	}
	var out []Object
	err := filepath.WalkDir(l.path(dir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == l.path(dir) {
				return fs.SkipAll
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(l.Root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we listed
			}
			return err
		}
		out = append(out, Object{Name: name, Size: fi.Size()})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// ReadRange reads part of a file with one pread.
func (l Local) ReadRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	f, err := os.Open(l.path(name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if n < 0 {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		n = max(fi.Size()-off, 0)
	}
	buf := make([]byte, n)
	m, err := f.ReadAt(buf, off)
	if err == io.EOF {
		err = nil
	}
	return buf[:m], err
}

// Put writes a hidden temporary file beside the object, fsyncs it, links it
// into place without replacing anything (RENAME_NOREPLACE) and fsyncs the
// directory.
func (l Local) Put(ctx context.Context, name string, data []byte) error {
	final := l.path(name)
	if strings.HasSuffix(name, DirMarkerSuffix) && len(data) == 0 {
		return os.MkdirAll(final, 0o700)
	}
	w, err := l.Create(ctx, name)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		w.Abort()
		return err
	}
	return w.Commit()
}

// Create writes a hidden temporary file beside the object; Commit fsyncs
// it and links it into place as Put does.
func (l Local) Create(ctx context.Context, name string) (Writer, error) {
	final := l.path(name)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(final)+".tmp-")
	if err != nil {
		return nil, err
	}
	return &localWriter{f: f, name: name, final: final}, nil
}

// localWriter is Local's Writer.
type localWriter struct {
	f           *os.File
	name, final string
	done        bool
}

func (w *localWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

func (w *localWriter) Commit() error {
	if w.done {
		return errors.New("commit of a finished object " + w.name)
	}
	w.done = true
	tmp := w.f.Name()
	defer os.Remove(tmp) // gone already when the rename succeeded
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, w.final, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", w.name, fs.ErrExist)
		}
		return &os.LinkError{Op: "rename", Old: tmp, New: w.final, Err: err}
	}
	return dio.Sync(filepath.Dir(w.final))
}

func (w *localWriter) Abort() {
	if !w.done {
		w.done = true
		w.f.Close()
		os.Remove(w.f.Name())
	}
}

// Delete removes a file and fsyncs its directory.
func (l Local) Delete(ctx context.Context, name string) error {
	p := l.path(name)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return dio.Sync(filepath.Dir(p))
}

// renameDurable renames oldpath to newpath within one directory, refusing
// to replace anything, and fsyncs that directory.
func renameDurable(oldpath, newpath string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE); err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	if err := dio.Sync(filepath.Dir(newpath)); err != nil {
		return err
	}
	if od := filepath.Dir(oldpath); od != filepath.Dir(newpath) {
		return dio.Sync(od)
	}
	return nil
}
