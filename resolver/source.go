package resolver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/combinefs/combinefs/format"
)

// Source is where the files of a chain's backups are read from: the local
// file system (LocalSource), or an object store (implemented in package
// repo, which knows the store). Paths are the backups' Dirs joined with
// filepath.Join and file names, as the resolver builds them.
//
// Everything the resolver reads goes through it: the directory walk of the
// final backup, the stat of an older backup's copy of a file, the
// INCREMENTAL headers and the blocks.
type Source interface {
	// ReadDir lists the directory dir, each entry described as Lstat
	// would (a symbolic link is fs.ModeSymlink), in the order the tree
	// presents them (readdir order on a local file system).
	ReadDir(dir string) ([]fs.FileInfo, error)
	// Stat describes path, following symbolic links; an error matching
	// fs.ErrNotExist when it does not exist.
	Stat(path string) (fs.FileInfo, error)
	// Readlink returns a symbolic link's target.
	Readlink(path string) (string, error)
	// Open opens a regular file for reads at any offset.
	Open(path string) (SourceFile, error)
}

// SourceFile is an open file of a Source. ReadAt follows io.ReaderAt's
// contract and is safe for parallel use.
type SourceFile interface {
	io.ReaderAt
	io.Closer
	Size() int64
	Name() string
}

// LocalSource is the local file system: the backups are directories.
type LocalSource struct{}

// IsLocal reports whether src reads the local file system (where a file's
// path can be opened directly, passed to the kernel for passthrough, or
// copied with copy_file_range).
func IsLocal(src Source) bool {
	if src == nil {
		return true
	}
	_, ok := src.(LocalSource)
	return ok
}

// ReadDir reads the entries in directory order (unlike os.ReadDir, which
// sorts) and lstats each.
func (LocalSource) ReadDir(dir string) ([]fs.FileInfo, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	out := make([]fs.FileInfo, len(ents))
	for i, de := range ents {
		if out[i], err = os.Lstat(filepath.Join(dir, de.Name())); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Stat is os.Stat.
func (LocalSource) Stat(path string) (fs.FileInfo, error) { return os.Stat(path) }

// Readlink is os.Readlink.
func (LocalSource) Readlink(path string) (string, error) { return os.Readlink(path) }

// Open opens the file; its Size is taken once, at open (backups never
// change).
func (LocalSource) Open(path string) (SourceFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &localFile{File: f, size: st.Size()}, nil
}

type localFile struct {
	*os.File
	size int64
}

func (f *localFile) Size() int64 { return f.size }

// source is the chain's Source (local when none was given).
func (c *Chain) source() Source {
	if c.Source == nil {
		return LocalSource{}
	}
	return c.Source
}

// HeaderSource is a Source that may hold INCREMENTAL headers already
// (an object store's point lists them in its marker): each one is a
// ranged GET saved.
type HeaderSource interface {
	// HeaderOf returns the header of the INCREMENTAL file path (its
	// magic, block count, truncation length and block numbers, without
	// the padding) if the source holds one that fits the file's size.
	HeaderOf(path string) ([]byte, bool)
}

// headerPrefetch is how much of an INCREMENTAL file of an object store the
// first read of its header takes: the header of up to 2045 blocks in one
// ranged GET instead of two. (Locally the header is read as the format
// parser asks: a larger first read makes the kernel read ahead, and leave
// cached, block data of the backups.)
const headerPrefetch = format.BlockSize

// parseIncrementalFile reads the header of an INCREMENTAL file of src.
func parseIncrementalFile(src Source, path string) (*format.Incremental, error) {
	f, err := src.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if IsLocal(src) {
		return format.ParseIncremental(f, f.Size(), path)
	}
	if hs, ok := src.(HeaderSource); ok {
		if h, ok := hs.HeaderOf(path); ok {
			// The source checked it; a header that still does not parse,
			// or whose blocks do not end the file, is read from the file.
			if inc, err := format.ParseIncremental(bytes.NewReader(h), f.Size(), path); err == nil && inc.FileSize() == f.Size() {
				return inc, nil
			}
		}
	}
	head := make([]byte, min(f.Size(), headerPrefetch))
	if n, err := f.ReadAt(head, 0); n < len(head) {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("%s: read %d of %d bytes of its header", path, n, len(head))
		}
		return nil, err
	}
	return format.ParseIncremental(&prefixReader{head: head, rest: f}, f.Size(), path)
}

// prefixReader serves reads from head, the first bytes of rest, when it
// holds them.
type prefixReader struct {
	head []byte
	rest io.ReaderAt
}

func (r *prefixReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= int64(len(r.head)) {
		return copy(p, r.head[off:]), nil
	}
	return r.rest.ReadAt(p, off)
}
