package fusefs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/resolver"
)

// The upper directory of a copy-on-write mount holds every change, so the
// backups are never written. Its crash consistency comes from the host
// filesystem, with no journal of our own:
//
//	UPPER/combinefs-upper.json  which chain point this upper belongs to
//	UPPER/tree/...              the changed part of the namespace
//	UPPER/tmp/                  files being prepared, renamed into tree/
//
// In tree/, mirroring the mounted paths:
//   - a directory exists where the mount has changes below it; with the
//     xattr user.combinefs.opaque it hides the lower directory of that name
//     (it was removed and made again);
//   - a whiteout (a 0:0 character device as in overlayfs, or, without the
//     right to make one, a symlink to ".combinefs-whiteout") hides a lower
//     entry that was removed or renamed away;
//   - a regular file without xattrs is the whole file ("upper-whole");
//   - a regular file with user.combinefs.origin (a lower path) and
//     user.combinefs.limit (bytes) is a block overlay: a sparse file whose
//     allocated 8 KiB blocks (SEEK_DATA) replace the lower file's, while
//     bytes below limit that it does not hold show the lower file and bytes
//     at or above limit that it does not hold are zeros. A write to a block
//     first copies that one block up; a truncation lowers limit before the
//     file shrinks, so a crash between the two can hide data that was
//     being cut off but never resurrects it.
//
// Every change is made with syscalls on those files before the kernel's
// request is answered, so killing combinefs loses nothing the server was
// told was written; fsync of a file or directory of the mount fsyncs the
// corresponding upper file or directory (and, the first time, the
// directory entry that made the file appear in tree/).
type upper struct {
	dir, tree, tmp string
	// lock is the meta file, flock'ed for the life of the mount: two mounts
	// on one upper would overwrite each other's changes.
	lock *os.File
	// symlinkWhiteouts is set when we may not make character devices.
	symlinkWhiteouts bool
}

const (
	upperMetaName   = "combinefs-upper.json"
	whiteoutTarget  = ".combinefs-whiteout"
	xattrOrigin     = "user.combinefs.origin"
	xattrLimit      = "user.combinefs.limit"
	xattrOpaque     = "user.combinefs.opaque"
	upperMetaFormat = 1
)

// upperMeta identifies the chain point an upper directory was made for.
type upperMeta struct {
	Format           int      `json:"format"`
	SystemIdentifier uint64   `json:"system_identifier"`
	Major            int      `json:"major"`
	StartLSN         string   `json:"start_lsn"`
	StartTimeline    uint32   `json:"start_timeline"`
	Backups          []string `json:"backups"`
	Created          string   `json:"created"`
}

func metaFor(p *resolver.Tree) upperMeta {
	c := p.Chain
	m := upperMeta{Format: upperMetaFormat, SystemIdentifier: c.SystemIdentifier, Major: c.Major,
		StartLSN: c.Final().Label.StartLSN.String(), StartTimeline: c.Final().Label.StartTLI}
	for _, b := range c.Backups {
		m.Backups = append(m.Backups, b.Dir)
	}
	return m
}

// openUpper prepares dir as the upper of point p: a new or empty directory
// is initialised; one made for p is reused; anything else is refused.
func openUpper(dir string, p *resolver.Tree) (*upper, error) {
	u := &upper{dir: dir, tree: filepath.Join(dir, "tree"), tmp: filepath.Join(dir, "tmp")}
	if err := detachingError(dir); err != nil {
		return nil, err
	}
	want := metaFor(p)
	data, err := os.ReadFile(filepath.Join(dir, upperMetaName))
	switch {
	case err == nil:
		var have upperMeta
		if err := json.Unmarshal(data, &have); err != nil {
			return nil, fmt.Errorf("upper directory %s: %s is damaged: %v", dir, upperMetaName, err)
		}
		if have.Format != upperMetaFormat {
			return nil, fmt.Errorf("upper directory %s has format %d; this combinefs writes format %d", dir, have.Format, upperMetaFormat)
		}
		if have.SystemIdentifier != want.SystemIdentifier || have.StartLSN != want.StartLSN || have.StartTimeline != want.StartTimeline {
			return nil, fmt.Errorf("upper directory %s belongs to another chain point (system identifier %d, backup starting at %s on timeline %d, made from %v); this point is system identifier %d, %s on timeline %d: use a new upper directory",
				dir, have.SystemIdentifier, have.StartLSN, have.StartTimeline, have.Backups, want.SystemIdentifier, want.StartLSN, want.StartTimeline)
		}
	case errors.Is(err, fs.ErrNotExist):
		if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
			return nil, fmt.Errorf("upper directory %s is not empty and was not made by combinefs", dir)
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("upper directory %s: %w", dir, err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("upper directory: %w", err)
		}
		if err := checkXattrs(dir); err != nil {
			return nil, err
		}
		for _, d := range []string{u.tree, u.tmp} {
			if err := os.Mkdir(d, 0o700); err != nil {
				return nil, err
			}
		}
		// tree/ is the mount's root directory: its mode is the point's.
		if err := os.Chmod(u.tree, p.DirMode); err != nil {
			return nil, err
		}
		want.Created = time.Now().UTC().Format(time.RFC3339)
		out, _ := json.MarshalIndent(want, "", "  ")
		if err := writeDurably(filepath.Join(dir, upperMetaName), append(out, '\n')); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("upper directory %s: %w", dir, err)
	}
	for _, d := range []string{u.tree, u.tmp} {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("upper directory %s is damaged: %s is missing", dir, d)
		}
	}
	lock, err := os.Open(filepath.Join(dir, upperMetaName))
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("upper directory %s is in use by another mount", dir)
		}
		return nil, fmt.Errorf("upper directory %s: lock: %w", dir, err)
	}
	u.lock = lock
	// Leftovers of operations a crash interrupted.
	if ents, err := os.ReadDir(u.tmp); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(u.tmp, e.Name()))
		}
	}
	u.symlinkWhiteouts = unix.Mknod(filepath.Join(u.tmp, "probe"), syscall.S_IFCHR|0, 0) != nil
	os.Remove(filepath.Join(u.tmp, "probe"))
	return u, nil
}

// checkXattrs refuses a filesystem without user xattrs: overlays need them.
func checkXattrs(dir string) error {
	probe := filepath.Join(dir, ".xattr-probe")
	f, err := os.Create(probe)
	if err != nil {
		return err
	}
	f.Close()
	defer os.Remove(probe)
	if err := unix.Setxattr(probe, xattrLimit, []byte("0"), 0); err != nil {
		return fmt.Errorf("upper directory %s: its filesystem does not support user extended attributes (%v); use ext4, xfs, btrfs or tmpfs", dir, err)
	}
	return nil
}

// writeDurably writes path via a temporary file, fsync and rename, then
// fsyncs the directory.
func writeDurably(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	f.Close()
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// close releases the upper's lock.
func (u *upper) close() {
	if u.lock != nil {
		u.lock.Close()
		u.lock = nil
	}
}

func (u *upper) path(rel string) string {
	if rel == "" {
		return u.tree
	}
	return filepath.Join(u.tree, rel)
}

// tmpName is a fresh name in tmp/.
func (u *upper) tmpName() string {
	return filepath.Join(u.tmp, fmt.Sprintf("t%d-%d", os.Getpid(), tmpCounter.Add(1)))
}

// isWhiteout reports whether st (an lstat of an upper entry) is a whiteout.
func isWhiteout(path string, st *unix.Stat_t) bool {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		return st.Rdev == 0
	case unix.S_IFLNK:
		t, err := os.Readlink(path)
		return err == nil && t == whiteoutTarget
	}
	return false
}

// makeWhiteout creates a whiteout at path, which must not exist.
func (u *upper) makeWhiteout(path string) error {
	if !u.symlinkWhiteouts {
		if err := unix.Mknod(path, unix.S_IFCHR|0, 0); err == nil {
			return nil
		}
	}
	return os.Symlink(whiteoutTarget, path)
}

// replaceWithWhiteout atomically replaces whatever is at path by a whiteout.
func (u *upper) replaceWithWhiteout(path string) error {
	tmp := u.tmpName()
	if err := u.makeWhiteout(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// renameWhiteout renames from to to and leaves a whiteout at from, in one
// step where the kernel allows it (RENAME_WHITEOUT, which needs the right
// to make devices), else in two.
func (u *upper) renameWhiteout(from, to string) error {
	if !u.symlinkWhiteouts {
		if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_WHITEOUT); err == nil {
			return nil
		}
	}
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return u.makeWhiteout(from)
}

// overlayAttrs reads the origin and limit of an upper file; ok is false for
// an upper-whole file.
func overlayAttrs(fd int) (origin string, limit int64, ok bool, err error) {
	buf := make([]byte, 4096)
	n, err := unix.Fgetxattr(fd, xattrOrigin, buf)
	if errors.Is(err, unix.ENODATA) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, err
	}
	origin = string(buf[:n])
	n, err = unix.Fgetxattr(fd, xattrLimit, buf)
	if err != nil {
		return "", 0, false, fmt.Errorf("damaged overlay: no %s (%v)", xattrLimit, err)
	}
	limit, err = strconv.ParseInt(string(buf[:n]), 10, 64)
	if err != nil {
		return "", 0, false, fmt.Errorf("bad %s %q", xattrLimit, buf[:n])
	}
	return origin, limit, true, nil
}

func setLimit(fd int, limit int64) error {
	return unix.Fsetxattr(fd, xattrLimit, []byte(strconv.FormatInt(limit, 10)), 0)
}

func isOpaque(path string) bool {
	_, err := unix.Lgetxattr(path, xattrOpaque, nil)
	return err == nil
}

// tmpCounter makes tmp/ names unique within the process.
var tmpCounter atomic.Uint64
