package capture

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/combinefs/combinefs/internal/dio"
)

// output is where a capture writes its files: a directory tree on a local
// file system (localOut), or the objects of a point in a repository's
// object store (storeOut, output_store.go). Paths are absolute, below the
// backup's root directory, as the layout makes them.
type output interface {
	// mkdirAll makes dir and its missing parents.
	mkdirAll(dir string) error
	// mkdir makes the directory an archive names, with perm; one that was
	// made already (pg_wal, an in-place tablespace) is fine.
	mkdir(dir string, perm fs.FileMode) error
	// create makes a new file for size bytes, written front to back.
	create(path string, perm fs.FileMode, size int64) (outFile, error)
	// createSegment makes a WAL segment file of size bytes, written front
	// to back; what is not written reads as zeros.
	createSegment(path string, size int64) (outFile, error)
	// writeFile writes a small file whole.
	writeFile(path string, data []byte) error
}

// outFile is a file being written by an output.
type outFile interface {
	// WriteAt writes p at off, which is where the last write ended.
	WriteAt(p []byte, off int64) (int, error)
	// close completes the file; it is durable once the capture finishes.
	close() error
	// abort drops the file after a failure.
	abort()
}

// localOut writes files into a local directory tree: large ones direct
// (package dio), each made durable by the syncer, and every directory
// made remembered to be fsynced at the end.
type localOut struct {
	sync *syncer
	dio  dio.Creator

	mu   sync.Mutex
	dirs []string // every directory made, to fsync at the end
}

// mkdirAll makes dir and its missing parents and remembers them for fsync.
func (l *localOut) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := l.mkdirAll(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	l.addDir(dir)
	return nil
}

func (l *localOut) addDir(dir string) {
	l.mu.Lock()
	l.dirs = append(l.dirs, dir)
	l.mu.Unlock()
}

func (l *localOut) mkdir(dir string, perm fs.FileMode) error {
	if err := l.mkdirAll(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, perm|0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
			return errDirCollides
		}
	} else {
		l.addDir(dir)
	}
	return os.Chmod(dir, perm|0o700)
}

func (l *localOut) create(path string, perm fs.FileMode, size int64) (outFile, error) {
	f, err := l.dio.Create(path, perm, size)
	if err != nil {
		return nil, err
	}
	return &localFile{w: f, f: f.File, sync: l.sync}, nil
}

// createSegment makes the file at full size, like the preallocated file
// pg_basebackup writes.
func (l *localOut) createSegment(path string, size int64) (outFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return &localFile{w: f, f: f, sync: l.sync}, nil
}

func (l *localOut) writeFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	l.sync.file(f)
	return nil
}

// localFile is a file of localOut.
type localFile struct {
	w interface {
		WriteAt([]byte, int64) (int, error)
	}
	f    *os.File
	sync *syncer
}

func (f *localFile) WriteAt(p []byte, off int64) (int, error) { return f.w.WriteAt(p, off) }

// close hands the file to the syncer.
func (f *localFile) close() error {
	f.sync.file(f.f)
	return nil
}

func (f *localFile) abort() { f.f.Close() }

// errDirCollides: a directory to make exists as something else.
var errDirCollides = errors.New("a directory collides with a file")

// errOutOfOrder is a write that does not follow the last one.
func errOutOfOrder(path string, off, want int64) error {
	return fmt.Errorf("%s: write at %d, expected %d", path, off, want)
}
