package flatten

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A run that dies (kill -9, a crash) must not leave anything that looks like
// a data directory a server could be started on. So a new output directory
// is written under a hidden name beside it and renamed into place once
// complete and durable, as capture does; and global/pg_control, without
// which no server starts, is written under a hidden name too and given its
// name last, which covers the output written in place into an existing
// empty directory (allowed, as by pg_combinebackup). A rerun removes a
// hidden directory an interrupted run left, saying so.

// controlPartial is where global/pg_control is written until the end.
const controlPartial = ".pg_control.combinefs-partial"

// partialName is the hidden directory a new output directory dir is
// written in.
func partialName(dir string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".combinefs-partial")
}

// outDir is one output directory of a run (the output, or a mapped
// tablespace's directory).
type outDir struct {
	final string   // the directory asked for
	tmp   string   // where it is written until commit; "" when in place
	lock  *os.File // the flock on tmp, held for the run
	made  bool     // final is this run's: removed whole on failure, not just emptied
}

// outputs are a run's output directories, in the order prepared.
type outputs struct{ dirs []*outDir }

// prepare checks an output directory as pg_combinebackup's
// create_output_directory does (missing, or an empty directory) and returns
// the directory to write its contents into.
func (o *outputs) prepare(dir string, dryRun bool, mode fs.FileMode, logf func(Level, string, ...any)) (string, error) {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if dryRun {
			logf(Debug, "would create directory %q", dir)
			return dir, nil
		}
		logf(Debug, "creating directory %q", dir)
		clean := filepath.Clean(dir) // "out/" is renamed to from beside out too
		if err := os.MkdirAll(filepath.Dir(clean), mode); err != nil {
			return "", fmt.Errorf("could not create directory %q: %w", filepath.Dir(clean), osErr(err))
		}
		d := &outDir{final: clean, tmp: partialName(clean)}
		if d.lock, err = claim(dir, d.tmp, mode, logf); err != nil {
			return "", err
		}
		o.dirs = append(o.dirs, d)
		return d.tmp, nil
	case err != nil:
		return "", fmt.Errorf("could not access directory %q: %w", dir, osErr(err))
	case len(ents) > 0:
		return "", fmt.Errorf("directory %q exists but is not empty", dir)
	}
	logf(Debug, "using existing directory %q", dir)
	if !dryRun {
		o.dirs = append(o.dirs, &outDir{final: dir})
	}
	return dir, nil
}

// claim makes tmp, the hidden directory that output directory dir is
// written in, and locks it for the run. It appears under its name already
// locked (made under another name and renamed), so a tmp found unlocked was
// left by a run that died: it is removed, with a message. One a live run
// holds is refused.
func claim(dir, tmp string, mode fs.FileMode, logf func(Level, string, ...any)) (*os.File, error) {
	// A run killed between making its directory and renaming it leaves it
	// under its first name, unlocked.
	ents, _ := os.ReadDir(filepath.Dir(tmp))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), filepath.Base(tmp)+"-") {
			removeUnlocked(filepath.Join(filepath.Dir(tmp), e.Name()), logf)
		}
	}
	for attempt := 0; ; attempt++ {
		if f, err := os.Open(tmp); err == nil {
			busy := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
			if busy || attempt > 2 {
				f.Close()
				return nil, fmt.Errorf("directory %q is being written by another run (%q is in use)", dir, tmp)
			}
			logf(Warning, "removing %q, left by an interrupted run", tmp)
			err = os.RemoveAll(tmp)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("could not remove directory %q: %w", tmp, osErr(err))
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("could not access directory %q: %w", tmp, osErr(err))
		}
		fresh, err := os.MkdirTemp(filepath.Dir(tmp), filepath.Base(tmp)+"-")
		if err != nil {
			return nil, fmt.Errorf("could not create directory %q: %w", dir, osErr(err))
		}
		f, err := os.Open(fresh)
		if err == nil {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		}
		if err == nil {
			err = os.Chmod(fresh, mode)
		}
		if err == nil {
			err = unix.Renameat2(unix.AT_FDCWD, fresh, unix.AT_FDCWD, tmp, unix.RENAME_NOREPLACE)
			if errors.Is(err, unix.EINVAL) { // a file system without RENAME_NOREPLACE
				err = unix.Rename(fresh, tmp)
			}
		}
		if err == nil {
			return f, nil
		}
		if f != nil {
			f.Close()
		}
		os.Remove(fresh)
		if !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("could not create directory %q: %w", tmp, osErr(err))
		}
	}
}

// removeUnlocked removes the directory p, with a message, unless a live
// run holds its lock.
func removeUnlocked(p string, logf func(Level, string, ...any)) {
	f, err := os.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		logf(Warning, "removing %q, left by an interrupted run", p)
		os.RemoveAll(p)
	}
}

// commit gives each output written under a hidden name its name, newest
// first, so the output itself (prepared first) appears last, complete.
func (o *outputs) commit(noSync bool) error {
	for i := len(o.dirs) - 1; i >= 0; i-- {
		d := o.dirs[i]
		if d.tmp == "" {
			continue
		}
		// rename(2), unlike os.Rename, replaces an empty directory that
		// appeared meanwhile.
		if err := syscall.Rename(d.tmp, d.final); err != nil {
			return fmt.Errorf("could not rename directory %q to %q: %w", d.tmp, d.final, osErr(err))
		}
		d.tmp, d.made = "", true
		if !noSync {
			if err := syncDir(filepath.Dir(d.final)); err != nil {
				return err
			}
		}
	}
	o.release()
	return nil
}

// abort removes what a failed run wrote, newest first, like
// pg_combinebackup's atexit handler (whose messages it gives).
func (o *outputs) abort(logf func(Level, string, ...any)) {
	for i := len(o.dirs) - 1; i >= 0; i-- {
		d := o.dirs[i]
		switch {
		case d.tmp != "" || d.made:
			logf(Info, "removing output directory %q", d.final)
			p := d.tmp
			if p == "" {
				p = d.final
			}
			if err := os.RemoveAll(p); err != nil {
				logf(Warning, "failed to remove output directory: %v", err)
			}
		default:
			logf(Info, "removing contents of output directory %q", d.final)
			ents, _ := os.ReadDir(d.final)
			for _, e := range ents {
				if err := os.RemoveAll(filepath.Join(d.final, e.Name())); err != nil {
					logf(Warning, "failed to remove contents of output directory: %v", err)
				}
			}
		}
	}
	o.release()
	o.dirs = nil
}

func (o *outputs) release() {
	for _, d := range o.dirs {
		if d.lock != nil {
			d.lock.Close()
			d.lock = nil
		}
	}
}

// placeControl gives global/pg_control, written as controlPartial, its
// name: the last step that makes a directory startable.
func placeControl(j *job, noSync bool) error {
	final := filepath.Join(filepath.Dir(j.out), "pg_control")
	if err := os.Rename(j.out, final); err != nil {
		return fmt.Errorf("could not rename file %q to %q: %w", j.out, final, osErr(err))
	}
	j.out = final
	if noSync {
		return nil
	}
	return syncDir(filepath.Dir(final))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("could not open directory %q: %w", dir, osErr(err))
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("could not fsync file %q: %w", dir, osErr(err))
	}
	return nil
}

// The steps at which the kill -9 tests stop a run (internal/crashpoint):
// output directories made; every file written, no manifest yet; all
// durable, pg_control not yet named; pg_control named, the output not yet
// renamed into place.
const (
	CrashCreated = "flatten-created"
	CrashFiles   = "flatten-files"
	CrashSynced  = "flatten-synced"
	CrashControl = "flatten-control"
)
