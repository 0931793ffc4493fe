package capture

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
)

// syncer fsyncs and closes finished files on a few goroutines, so that the
// flushing of one file overlaps the receiving of the next. With noSync it
// only closes them.
type syncer struct {
	noSync bool
	ch     chan *os.File
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

// syncWorkers is how many files are flushed at once.
const syncWorkers = 8

func newSyncer(noSync bool) *syncer {
	s := &syncer{noSync: noSync, ch: make(chan *os.File, 64)}
	if !noSync {
		for range syncWorkers {
			s.wg.Go(func() {
				for f := range s.ch {
					s.record(f.Sync())
					s.record(f.Close())
				}
			})
		}
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

// file takes over f: it is synced (unless noSync) and closed.
func (s *syncer) file(f *os.File) {
	if s.noSync {
		s.record(f.Close())
		return
	}
	s.ch <- f
}

// wait waits for every file handed over and returns the first error.
func (s *syncer) wait() error {
	if !s.noSync {
		close(s.ch)
		s.wg.Wait()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// syncDirs fsyncs directories, a few at a time.
func syncDirs(dirs []string) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	ch := make(chan string)
	for range syncWorkers {
		wg.Go(func() {
			for d := range ch {
				if err := syncPath(d); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, d := range dirs {
		ch <- d
	}
	close(ch)
	wg.Wait()
	return errors.Join(errs...)
}

// syncPath fsyncs one file or directory by name.
func syncPath(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
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
	if err := syncPath(filepath.Dir(newpath)); err != nil {
		return err
	}
	if od := filepath.Dir(oldpath); od != filepath.Dir(newpath) {
		return syncPath(od)
	}
	return nil
}
