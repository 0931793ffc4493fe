package capture

import (
	"errors"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/dio"
)

// syncer makes finished files durable the way pg_basebackup does, in two
// passes: when a file is complete its writeback is started
// (sync_file_range, which does not wait for the data to reach the disk)
// and it is closed; at the end every file is fsynced, a few at a time. By
// then most data is on disk, so the fsyncs are short and the filesystem
// journal commits once for many files instead of once per file while the
// backup is still arriving. The first pass runs in a goroutine of its own:
// starting the writeback of a 1 GiB segment can block until the device
// queue takes it, and the stream must not wait for that. With noSync files
// are only closed.
type syncer struct {
	noSync bool
	queue  chan *os.File
	done   chan struct{}

	qmu    sync.Mutex // guards closed and sending on queue
	closed bool

	mu    sync.Mutex // guards names and err; the worker takes only this one
	names []string
	err   error
}

// syncWorkers is how many files are flushed at once.
const syncWorkers = 8

func newSyncer(noSync bool) *syncer {
	s := &syncer{noSync: noSync}
	if !noSync {
		s.queue = make(chan *os.File, 256)
		s.done = make(chan struct{})
		go func() {
			defer close(s.done)
			for f := range s.queue {
				s.start(f)
			}
		}()
	}
	return s
}

func (s *syncer) record(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

// file takes over f: its writeback is started (unless noSync) and it is
// closed, later; wait fsyncs it.
func (s *syncer) file(f *os.File) {
	if s.noSync {
		s.record(f.Close())
		return
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.closed {
		s.start(f)
		return
	}
	// Sending under qmu keeps wait from closing the queue meanwhile; the
	// worker never takes qmu, so a full queue only waits for it.
	s.queue <- f
}

// start starts f's writeback, remembers its name for wait, and closes it.
func (s *syncer) start(f *os.File) {
	// Only a hint: errors show up in the fsync.
	unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	s.mu.Lock()
	s.names = append(s.names, f.Name())
	s.mu.Unlock()
	s.record(f.Close())
}

// wait fsyncs every file handed over and returns the first error.
func (s *syncer) wait() error {
	s.qmu.Lock()
	if !s.noSync && !s.closed {
		s.closed = true
		close(s.queue)
	}
	s.qmu.Unlock()
	if s.done != nil {
		<-s.done
	}
	s.mu.Lock()
	names := s.names
	s.names = nil
	s.mu.Unlock()
	if len(names) > 0 {
		s.record(syncDirs(names))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// syncDirs fsyncs files or directories by name, a few at a time, and
// reports every one that failed.
func syncDirs(dirs []string) error {
	var (
		g    errgroup.Group
		mu   sync.Mutex
		errs []error
	)
	g.SetLimit(syncWorkers)
	for _, d := range dirs {
		g.Go(func() error {
			if err := dio.Sync(d); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			return nil
		})
	}
	g.Wait()
	return errors.Join(errs...)
}

// durableRename renames oldpath to newpath and fsyncs the directory that
// holds newpath (and oldpath's, when it differs), so that the rename
// survives a crash.
func durableRename(oldpath, newpath string, noSync bool) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	if noSync {
		return nil
	}
	if err := dio.Sync(filepath.Dir(newpath)); err != nil {
		return err
	}
	if od := filepath.Dir(oldpath); od != filepath.Dir(newpath) {
		return dio.Sync(od)
	}
	return nil
}
