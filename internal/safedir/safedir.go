// Package safedir guards the directories combinefs writes into as root (a
// copy-on-write mount's upper directory, a cache, hydration state) against
// other local users: such a directory must be one nobody else can change
// under us, and inside it no symlink may lead a root process elsewhere.
//
// The rule for an existing directory is OpenSSH's safe-path rule: the
// directory is the caller's own, not a symlink, and writable only by its
// owner; each parent up to / belongs to the caller or root and is writable
// by nobody else, except that a sticky world-writable parent such as /tmp is
// fine (others may not rename or remove what is ours in it).
package safedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Check returns nil when dir is safe for a process running as uid, else a
// one-line error naming the path at fault and why. dir must exist.
func Check(dir string, uid int) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(abs, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%s is a symbolic link; give the directory itself", dir)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory", dir)
	case int(st.Uid) != uid:
		return fmt.Errorf("%s is owned by uid %d, not by uid %d that runs combinefs", dir, st.Uid, uid)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("%s is writable by group or others (mode %04o); make it 0700", dir, st.Mode&0o7777)
	}
	// The parents as they really are: a symlinked parent (/var/run) is
	// judged by where it leads.
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	for p := parent; ; p = filepath.Dir(p) {
		if err := unix.Stat(p, &st); err != nil {
			return fmt.Errorf("%s: parent %s: %w", dir, p, err)
		}
		switch {
		case st.Uid != 0 && int(st.Uid) != uid:
			return fmt.Errorf("%s: its parent %s is owned by uid %d, neither root nor uid %d that runs combinefs", dir, p, st.Uid, uid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			return fmt.Errorf("%s: its parent %s is writable by group or others (mode %04o) and not sticky", dir, p, st.Mode&0o7777)
		}
		if p == "/" {
			return nil
		}
	}
}

// MkdirPrivate creates dir, whose parent must exist, as a directory only
// its owner may enter (0700, whatever the umask) and checks it as Check
// does (a parent another user controls could swap it at once); on failure
// it leaves nothing.
func MkdirPrivate(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	err := os.Chmod(dir, 0o700)
	if err == nil {
		err = Check(dir, os.Geteuid())
	}
	if err != nil {
		os.Remove(dir)
	}
	return err
}

// OpenBeneath opens rel, a relative path, beneath the directory open as
// dirfd without following any symlink, neither on the way nor at the end,
// and without leaving dirfd's tree: with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS) where the kernel has it (5.6 on), else one
// component at a time with O_NOFOLLOW. A symlink met fails with ELOOP (or
// ENOTDIR); flags O_PATH|O_NOFOLLOW opens a final symlink itself. The
// descriptor is close-on-exec.
func OpenBeneath(dirfd int, rel string, flags int, mode uint32) (int, error) {
	if rel == "" || filepath.IsAbs(rel) {
		return -1, fmt.Errorf("safedir: %q is not a relative path", rel)
	}
	flags |= unix.O_CLOEXEC
	if !noOpenat2.Load() {
		how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS}
		fd, err := unix.Openat2(dirfd, rel, &how)
		if !errors.Is(err, unix.ENOSYS) {
			return fd, err
		}
		noOpenat2.Store(true)
	}
	return openByComponent(dirfd, rel, flags, mode)
}

// noOpenat2 is set once the kernel says it has no openat2.
var noOpenat2 atomic.Bool

// openByComponent is OpenBeneath without openat2.
func openByComponent(dirfd int, rel string, flags int, mode uint32) (int, error) {
	parts := strings.Split(rel, "/")
	cur := dirfd
	defer func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}()
	for i, name := range parts {
		if name == ".." {
			return -1, unix.EXDEV // what RESOLVE_BENEATH says of an escape
		}
		if name == "" || name == "." {
			if i == len(parts)-1 {
				return unix.Openat(cur, ".", flags, mode)
			}
			continue
		}
		if i == len(parts)-1 {
			return unix.Openat(cur, name, flags|unix.O_NOFOLLOW, mode)
		}
		next, err := unix.Openat(cur, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		if cur != dirfd {
			unix.Close(cur)
		}
		cur = next
	}
	return -1, unix.EINVAL // unreachable: parts is never empty
}
