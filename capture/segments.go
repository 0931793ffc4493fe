package capture

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/repo"
)

// segWriter keeps the segment the archiver is receiving: as NAME.partial,
// padded to a whole segment as pg_receivewal pads it, until it is whole
// and kept under its name. A local repository writes it in place; an
// object store (storeSegs) gets it uploaded whole.
type segWriter interface {
	// open begins segment segno of timeline tli (of size bytes); one left
	// by an earlier run is written over from its start with the same WAL.
	open(tli uint32, segno uint64, size int64) error
	writeAt(p []byte, off int64) error
	// complete makes the whole segment durable under its name.
	complete() error
	// flush makes what was written durable as NAME.partial.
	flush() error
	// close flushes and lets go of the segment.
	close()
	// where names timeline tli's place in the archive, for the log.
	where(tli uint32) string
}

func newSegWriter(r *repo.Repo) segWriter {
	if r.Remote() {
		return &storeSegs{r: r}
	}
	return &localSegs{dir: r.Dir}
}

// localSegs writes segments into the repository's wal/ directory.
type localSegs struct {
	dir  string
	file *os.File
}

func (l *localSegs) where(tli uint32) string { return repo.WALTimelineDir(l.dir, tli) }

func (l *localSegs) open(tli uint32, segno uint64, size int64) error {
	dir := repo.WALTimelineDir(l.dir, tli)
	if err := mkdirDurable(dir); err != nil {
		return fatal(err)
	}
	p := repo.WALSegmentPath(l.dir, tli, segno, size) + repo.WALPartialSuffix
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fatal(err)
	}
	l.file = f
	return nil
}

func (l *localSegs) writeAt(p []byte, off int64) error {
	_, err := l.file.WriteAt(p, off)
	return err
}

// complete fsyncs the segment and renames it from .partial to its name;
// the directory is fsynced so the name survives a crash.
func (l *localSegs) complete() error {
	if err := l.file.Sync(); err != nil {
		return err
	}
	crashAt("complete")
	partial := l.file.Name()
	l.file.Close()
	l.file = nil
	if err := os.Rename(partial, strings.TrimSuffix(partial, repo.WALPartialSuffix)); err != nil {
		return err
	}
	return dio.Sync(filepath.Dir(partial))
}

func (l *localSegs) flush() error { return l.file.Sync() }

func (l *localSegs) close() {
	l.file.Sync()
	l.file.Close()
	l.file = nil
}

// storeSegs keeps the segment being received in memory (one segment's
// worth) and uploads it: as NAME.partial at each flush (each status
// update, a server's request for one, a stop), replacing the one before,
// and as NAME, with the .partial deleted, once whole. A kill leaves the
// last .partial uploaded, or both it and the whole segment: either way the
// next run resumes at the start of the first segment it does not have
// whole, as locally.
type storeSegs struct {
	r        *repo.Repo
	buf      []byte
	name     string // the segment's object name, without .partial
	n        int64  // bytes written
	uploaded int64  // bytes in the .partial uploaded last
}

func (s *storeSegs) where(tli uint32) string {
	return s.r.Dir + "/" + path.Dir(repo.WALObject(tli, "x"))
}

func (s *storeSegs) open(tli uint32, segno uint64, size int64) error {
	if int64(cap(s.buf)) < size {
		s.buf = make([]byte, size)
	}
	s.buf = s.buf[:size]
	clear(s.buf)
	s.name = repo.WALObject(tli, format.WALSegmentName(tli, segno, size))
	s.n, s.uploaded = 0, 0
	return nil
}

func (s *storeSegs) writeAt(p []byte, off int64) error {
	copy(s.buf[off:], p)
	s.n = max(s.n, off+int64(len(p)))
	return nil
}

func (s *storeSegs) complete() error {
	ctx := context.Background()
	// Already there when a run killed between these two steps left it.
	if err := s.r.Store.Put(ctx, s.name, s.buf); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	crashAt("complete")
	s.uploaded = s.n
	return s.r.Store.Delete(ctx, s.name+repo.WALPartialSuffix)
}

// flush replaces the .partial object: a PUT that may not replace is
// preceded by a DELETE; a kill in between leaves the segment as if it had
// not been begun, which the next run streams again from its start.
func (s *storeSegs) flush() error {
	if s.n == s.uploaded {
		return nil
	}
	ctx := context.Background()
	name := s.name + repo.WALPartialSuffix
	if err := s.r.Store.Delete(ctx, name); err != nil {
		return err
	}
	if err := s.r.Store.Put(ctx, name, s.buf); err != nil {
		return err
	}
	s.uploaded = s.n
	return nil
}

func (s *storeSegs) close() { s.flush() }
