package fusefs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/crashpoint"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/resolver"
)

// A copy-on-write mount with Options.WALDir keeps the server's WAL out of
// FUSE: tree/pg_wal in the upper is a symlink to WALDir, a plain local
// directory, as initdb --waldir makes, so restore_command's copies, the
// replay's reads and every WAL write of the server go to the local file
// system, never through the mount. The symlink is an upper entry like any
// other: it hides the lower pg_wal directory (lookup shows a symlink, whose
// lower contents are no longer visible, so hydration skips them), unlink
// and rename of it leave a whiteout, detach moves it to the data directory
// as it is.
//
// The switch is made in the upper, before the mount serves, in steps a
// crash can interrupt anywhere:
//
//  1. WALDir is made (or taken empty), owned by the presented owner, 0700;
//  2. the point's pg_wal (segments, archive_status/, summaries/) is copied
//     from the chain into WALDir/walStagingName and fsynced;
//  3. walMarkerName is written durably in WALDir, naming the upper;
//  4. the staged entries are renamed into WALDir, the staging directory is
//     removed, WALDir fsynced;
//  5. a symlink to WALDir is made in tmp/ and renamed to tree/pg_wal;
//     tree/ is fsynced;
//  6. the marker is removed.
//
// Until step 5 the upper is unchanged, and WALDir holds the staging
// directory or the marker: a later run with the same WALDir recognises it
// as its own leftover (a marker must name the same upper: another upper's
// may already link to it), empties it (the marker last) and starts again.
// After step 5 the upper's symlink says the switch is done; a remount with
// the same WALDir reuses it as it is (removing a marker step 6 left).
const (
	walMarkerName  = ".combinefs-waldir"
	walStagingName = ".combinefs-staging"
	walName        = "pg_wal"
)

// walMarker is what walMarkerName records.
type walMarker struct {
	Upper string `json:"upper"`
}

// walDirState is what checkWALDir found.
type walDirState int

const (
	walDirFresh    walDirState = iota // missing or empty: fill it
	walDirLeftover                    // an interrupted switch's: empty it, then fill it
	walDirInUse                       // the upper already links to it: reuse it
)

// checkWALDir decides what to do with walDir for the upper at upperDir
// (mount point mp), changing nothing; a refusal is one line naming the
// directory.
func checkWALDir(upperDir, mp, walDir string) (walDirState, error) {
	if !filepath.IsAbs(walDir) {
		return 0, fmt.Errorf("WAL directory %s: not an absolute path", walDir)
	}
	for _, d := range []string{upperDir, mp} {
		if walDir == d || strings.HasPrefix(walDir, d+"/") || strings.HasPrefix(d, walDir+"/") {
			return 0, fmt.Errorf("WAL directory %s must lie outside the upper directory and the mount point %s", walDir, d)
		}
	}
	link := filepath.Join(upperDir, "tree", walName)
	if fi, err := os.Lstat(link); err == nil {
		t, _ := os.Readlink(link)
		if fi.Mode()&fs.ModeSymlink == 0 || t != walDir {
			what := "a directory of the server's WAL"
			if fi.Mode()&fs.ModeSymlink != 0 {
				what = "a symlink to " + t
			}
			return 0, fmt.Errorf("upper directory %s already has its own pg_wal (%s): --waldir %s works only on an upper made with it", upperDir, what, walDir)
		}
		if fi, err := os.Lstat(walDir); err != nil || !fi.IsDir() {
			return 0, fmt.Errorf("WAL directory %s of upper directory %s is missing or not a directory", walDir, upperDir)
		}
		return walDirInUse, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("upper directory %s: %w", upperDir, err)
	}
	fi, err := os.Lstat(walDir)
	if errors.Is(err, fs.ErrNotExist) {
		return walDirFresh, nil
	}
	if err != nil {
		return 0, fmt.Errorf("WAL directory %s: %w", walDir, err)
	}
	if !fi.IsDir() {
		return 0, fmt.Errorf("WAL directory %s is not a directory", walDir)
	}
	names, err := readNames(walDir)
	if err != nil {
		return 0, fmt.Errorf("WAL directory %s: %w", walDir, err)
	}
	if len(names) == 0 {
		return walDirFresh, nil
	}
	for _, n := range names {
		if n == walStagingName {
			return walDirLeftover, nil
		}
	}
	data, err := readNoFollow(filepath.Join(walDir, walMarkerName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("WAL directory %s is not empty: give a new or empty directory", walDir)
	}
	var mk walMarker
	if err == nil {
		err = json.Unmarshal(data, &mk)
	}
	if err != nil {
		return 0, fmt.Errorf("WAL directory %s: %s: %v", walDir, walMarkerName, err)
	}
	// The marker of another upper may be one whose symlink is in (a crash
	// before step 6): its WAL must stay.
	if mk.Upper != upperDir {
		return 0, fmt.Errorf("WAL directory %s was being set up for upper directory %s: mount that one again, or give another directory", walDir, mk.Upper)
	}
	return walDirLeftover, nil
}

// readNames lists a directory.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// openUpperWAL is openUpper, which with opts.WALDir also switches the
// upper's pg_wal to it; a WALDir refused leaves the upper untouched.
func openUpperWAL(upperDir, mp string, p *resolver.Tree, opts Options) (*upper, error) {
	if opts.WALDir == "" {
		return openUpper(upperDir, p)
	}
	state, err := checkWALDir(upperDir, mp, opts.WALDir)
	if err != nil {
		return nil, err
	}
	u, err := openUpper(upperDir, p)
	if err != nil {
		return nil, err
	}
	if err := u.switchWAL(p, opts.WALDir, state, opts.UID, opts.GID); err != nil {
		u.close()
		return nil, err
	}
	return u, nil
}

// switchWAL makes tree/pg_wal of u a symlink to walDir, filled with p's
// pg_wal and owned by uid:gid, as the steps above say; state is
// checkWALDir's finding, taken before u was opened.
func (u *upper) switchWAL(p *resolver.Tree, walDir string, state walDirState, uid, gid uint32) error {
	if state == walDirInUse {
		return removeDurably(walDir, walMarkerName)
	}
	if state == walDirLeftover {
		if err := emptyWALDir(walDir); err != nil {
			return fmt.Errorf("WAL directory %s: emptying what an interrupted mount left: %w", walDir, err)
		}
	}
	if err := makeWALDir(walDir, uid, gid); err != nil {
		return fmt.Errorf("WAL directory %s: %w", walDir, err)
	}
	if err := fillWALDir(p, walDir, uid, gid); err != nil {
		return fmt.Errorf("WAL directory %s: copying the point's pg_wal: %w", walDir, err)
	}
	crashpoint.At("waldir-filled")
	out, _ := json.Marshal(walMarker{Upper: u.dir})
	if err := writeDurably(filepath.Join(walDir, walMarkerName), append(out, '\n')); err != nil {
		return fmt.Errorf("WAL directory %s: %w", walDir, err)
	}
	crashpoint.At("waldir-marked")
	if err := unstageWALDir(walDir); err != nil {
		return fmt.Errorf("WAL directory %s: %w", walDir, err)
	}
	crashpoint.At("waldir-moved")
	tmp := u.tmpName()
	if err := os.Symlink(walDir, tmp); err != nil {
		return fmt.Errorf("upper directory %s: %w", u.dir, err)
	}
	if err := os.Rename(tmp, u.tree+"/"+walName); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("upper directory %s: %w", u.dir, err)
	}
	if err := u.syncDir(""); err != nil {
		return fmt.Errorf("upper directory %s: %w", u.dir, err)
	}
	crashpoint.At("waldir-linked")
	return removeDurably(walDir, walMarkerName)
}

// emptyWALDir removes an interrupted switch's files from walDir, the
// marker last, so that a crash here leaves it recognisable.
func emptyWALDir(walDir string) error {
	names, err := readNames(walDir)
	if err != nil {
		return err
	}
	for _, n := range names {
		if n != walMarkerName {
			if err := os.RemoveAll(filepath.Join(walDir, n)); err != nil {
				return err
			}
		}
	}
	if err := dio.Sync(walDir); err != nil {
		return err
	}
	return removeDurably(walDir, walMarkerName)
}

// removeDurably removes dir/name if it is there and fsyncs dir.
func removeDurably(dir, name string) error {
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return dio.Sync(dir)
}

// makeWALDir makes walDir (and its parents) if missing, and gives it to
// the server's user, private to it.
func makeWALDir(walDir string, uid, gid uint32) error {
	if err := os.MkdirAll(filepath.Dir(walDir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(walDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := unix.Lchown(walDir, int(uid), int(gid)); err != nil {
		return err
	}
	if err := lchmod(walDir, 0o700); err != nil {
		return err
	}
	return dio.Sync(filepath.Dir(walDir))
}

// fillWALDir copies p's pg_wal into walDir's staging directory, every file
// and directory fsynced and owned by uid:gid.
func fillWALDir(p *resolver.Tree, walDir string, uid, gid uint32) error {
	src := p.Root.Child(walName)
	if src == nil || src.Kind != resolver.KindDir {
		return fmt.Errorf("the point has no %s directory", walName)
	}
	var copyDir func(e *resolver.Entry, to string) error
	copyDir = func(e *resolver.Entry, to string) error {
		if err := os.Mkdir(to, 0o700); err != nil {
			return err
		}
		if err := unix.Lchown(to, int(uid), int(gid)); err != nil {
			return err
		}
		for _, c := range e.Children {
			var err error
			if c.Kind == resolver.KindDir {
				err = copyDir(c, filepath.Join(to, c.Name))
			} else {
				err = copyWALFile(c.File, filepath.Join(to, c.Name), p.FileMode, uid, gid)
			}
			if err != nil {
				return err
			}
		}
		return dio.Sync(to)
	}
	if err := copyDir(src, filepath.Join(walDir, walStagingName)); err != nil {
		return err
	}
	return dio.Sync(walDir)
}

// copyWALFile writes a file of the chain to path, which must not exist.
func copyWALFile(f *resolver.File, path string, mode fs.FileMode, uid, gid uint32) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, mode.Perm())
	if err != nil {
		return err
	}
	defer out.Close()
	r, err := f.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := io.Copy(out, io.NewSectionReader(r, 0, r.Size())); err != nil {
		return err
	}
	if err := out.Chown(int(uid), int(gid)); err != nil {
		return err
	}
	if err := out.Chmod(mode.Perm()); err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

// unstageWALDir renames the staged entries into walDir and removes the
// staging directory.
func unstageWALDir(walDir string) error {
	staging := filepath.Join(walDir, walStagingName)
	names, err := readNames(staging)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := os.Rename(filepath.Join(staging, n), filepath.Join(walDir, n)); err != nil {
			return err
		}
	}
	if err := os.Remove(staging); err != nil {
		return err
	}
	return dio.Sync(walDir)
}
