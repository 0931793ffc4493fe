package fusefs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/internal/safedir"
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
//     being cut off but never resurrects it;
//   - a symlink is the mount's symlink, never followed by us; tree/pg_wal
//     may be one to a directory outside UPPER that holds the server's WAL
//     (Options.WALDir, see waldir.go), made before the mount serves, which
//     hides the lower pg_wal as any upper entry hides a lower one.
//
// Every change is made with syscalls on those files before the kernel's
// request is answered, so killing combinefs loses nothing the server was
// told was written; fsync of a file or directory of the mount fsyncs the
// corresponding upper file or directory (and, the first time, the
// directory entry that made the file appear in tree/).
//
// UPPER is the mounting user's own (safedir.Check) and tree/ and tmp/ are
// used only through descriptors opened without following symlinks: a
// symlink found inside UPPER is shown or removed, never followed (see at).
type upper struct {
	dir string
	// treeFD and tmpFD are O_PATH descriptors of tree/ and tmp/; tree and
	// tmp are their /proc/self/fd paths.
	treeFD, tmpFD int
	tree, tmp     string
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
// is initialised; one made for p is reused; anything else is refused, as is
// a directory another user could change (safedir.Check).
func openUpper(dir string, p *resolver.Tree) (*upper, error) {
	u := &upper{dir: dir, treeFD: -1, tmpFD: -1}
	if err := detachingError(dir); err != nil {
		return nil, err
	}
	if err := prepareUpper(dir, p); err != nil {
		return nil, err
	}
	dirFD, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("upper directory %s: %w", dir, err)
	}
	defer unix.Close(dirFD)
	for _, d := range []struct {
		name string
		fd   *int
	}{{"tree", &u.treeFD}, {"tmp", &u.tmpFD}} {
		fd, err := safedir.OpenBeneath(dirFD, d.name, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			u.close()
			return nil, fmt.Errorf("upper directory %s is damaged or was tampered with: %s is not a directory (%v)", dir, filepath.Join(dir, d.name), err)
		}
		*d.fd = fd
	}
	u.tree, u.tmp = fdPath(u.treeFD), fdPath(u.tmpFD)
	if err := checkOwners(u.treeFD, "tree", os.Geteuid()); err != nil {
		u.close()
		return nil, fmt.Errorf("upper directory %s was tampered with: %v", dir, err)
	}
	lockFD, err := safedir.OpenBeneath(dirFD, upperMetaName, unix.O_RDONLY, 0)
	if err != nil {
		u.close()
		return nil, fmt.Errorf("upper directory %s: %s: %w", dir, upperMetaName, err)
	}
	u.lock = os.NewFile(uintptr(lockFD), filepath.Join(dir, upperMetaName))
	if err := unix.Flock(lockFD, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		u.close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("upper directory %s is in use by another mount", dir)
		}
		return nil, fmt.Errorf("upper directory %s: lock: %w", dir, err)
	}
	// Leftovers of operations a crash interrupted.
	if f, err := os.Open(u.tmp); err == nil {
		names, _ := f.Readdirnames(-1)
		f.Close()
		for _, name := range names {
			os.RemoveAll(u.tmp + "/" + name)
		}
	}
	u.symlinkWhiteouts = unix.Mknod(u.tmp+"/probe", syscall.S_IFCHR|0, 0) != nil
	os.Remove(u.tmp + "/probe")
	return u, nil
}

// prepareUpper checks an existing dir (its owner and mode, and its meta
// file against p) or makes a new one, private, for p.
func prepareUpper(dir string, p *resolver.Tree) error {
	want := metaFor(p)
	if _, err := os.Lstat(dir); err == nil {
		if err := safedir.Check(dir, os.Geteuid()); err != nil {
			return fmt.Errorf("unsafe upper directory: %v", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("upper directory %s: %w", dir, err)
	}
	data, err := readNoFollow(filepath.Join(dir, upperMetaName))
	switch {
	case err == nil:
		var have upperMeta
		if err := json.Unmarshal(data, &have); err != nil {
			return fmt.Errorf("upper directory %s: %s is damaged: %v", dir, upperMetaName, err)
		}
		if have.Format != upperMetaFormat {
			return fmt.Errorf("upper directory %s has format %d; this combinefs writes format %d", dir, have.Format, upperMetaFormat)
		}
		if have.SystemIdentifier != want.SystemIdentifier || have.StartLSN != want.StartLSN || have.StartTimeline != want.StartTimeline {
			return fmt.Errorf("upper directory %s belongs to another chain point (system identifier %d, backup starting at %s on timeline %d, made from %v); this point is system identifier %d, %s on timeline %d: use a new upper directory",
				dir, have.SystemIdentifier, have.StartLSN, have.StartTimeline, have.Backups, want.SystemIdentifier, want.StartLSN, want.StartTimeline)
		}
		return nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("upper directory %s: %w", dir, err)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("upper directory %s is not empty and was not made by combinefs", dir)
	} else if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("upper directory: %w", err)
		}
		if err := safedir.MkdirPrivate(dir); err != nil {
			return fmt.Errorf("upper directory: %v", err)
		}
	} else if err != nil {
		return fmt.Errorf("upper directory %s: %w", dir, err)
	}
	if err := checkXattrs(dir); err != nil {
		return err
	}
	for _, d := range []string{"tree", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	// tree/ is the mount's root directory: its mode is the point's.
	if err := os.Chmod(filepath.Join(dir, "tree"), p.DirMode); err != nil {
		return err
	}
	want.Created = time.Now().UTC().Format(time.RFC3339)
	out, _ := json.MarshalIndent(want, "", "  ")
	return writeDurably(filepath.Join(dir, upperMetaName), append(out, '\n'))
}

// checkOwners walks the directory open as fd (named rel, for messages)
// without following symlinks and refuses any entry not owned by uid: the
// mount makes every entry of tree/ as the user it runs as (owners are
// presented, never stored), so another owner means someone else put it
// there, as a user who could write into the directory before it was made
// safe could have (a file for the server to load, a symlink to elsewhere).
func checkOwners(fd int, rel string, uid int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if int(st.Uid) != uid {
		return fmt.Errorf("%s is owned by uid %d, not %d", rel, st.Uid, uid)
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(dfd), rel)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		crel := rel + "/" + name
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if int(st.Uid) != uid {
			return fmt.Errorf("%s is owned by uid %d, not %d", crel, st.Uid, uid)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		cfd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = checkOwners(cfd, crel, uid)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

// readNoFollow reads a small file that must not be a symlink.
func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

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
	return dio.Sync(filepath.Dir(path))
}

// close releases the upper's lock and descriptors.
func (u *upper) close() {
	if u.lock != nil {
		u.lock.Close()
		u.lock = nil
	}
	for _, fd := range []*int{&u.treeFD, &u.tmpFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// at returns a path for rel in tree/ that cannot lead out of it: rel's
// parent directory is opened beneath tree/ following no symlink
// (safedir.OpenBeneath) and the path goes through that descriptor,
// /proc/self/fd/N/NAME. Use it only with calls that do not follow a final
// symlink (lstat, mkdir, unlink, rename, symlink, readlink, mknod, l*xattr,
// O_NOFOLLOW or O_CREAT|O_EXCL opens, lchmod). done closes the descriptor;
// it is set even when err is not nil.
func (u *upper) at(rel string) (p string, done func(), err error) {
	done = func() {}
	if rel == "" {
		return u.tree + "/.", done, nil
	}
	dir, name := path.Split(rel)
	if dir == "" {
		return u.tree + "/" + name, done, nil
	}
	fd, err := safedir.OpenBeneath(u.treeFD, strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return "", done, err
	}
	return fdPath(fd) + "/" + name, func() { unix.Close(fd) }, nil
}

// syncDir fsyncs directory rel of tree/.
func (u *upper) syncDir(rel string) error {
	if rel == "" {
		rel = "."
	}
	fd, err := safedir.OpenBeneath(u.treeFD, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// lchmod sets the mode of p itself, never of what a symlink at p leads to
// (Linux has no lchmod; a symlink gets EOPNOTSUPP).
func lchmod(p string, mode uint32) error {
	fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Chmod(fdPath(fd), mode)
}

// parentRel is the merged path of rel's directory ("" for the root).
func parentRel(rel string) string {
	if d := path.Dir(rel); d != "." {
		return d
	}
	return ""
}

// tmpName is a fresh name in tmp/.
func (u *upper) tmpName() string {
	return fmt.Sprintf("%s/t%d-%d", u.tmp, os.Getpid(), tmpCounter.Add(1))
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
