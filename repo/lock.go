package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Locks are flock(2) locks on local files, so they end with the process
// that holds them, kill -9 included. The repository's lock serializes the
// commands that add or remove points (capture, expire, compact). Each point
// has a lock file of its own, outside its directory so that a point stays
// a pure backup: the mounts, flattens and verifies that read it hold it
// shared; expire and compact hold it exclusive while they retire the point.

// ErrLocked means a lock is held by someone else and the caller did not
// want to wait.
var ErrLocked = errors.New("locked")

// Waiter is told what a lock call is about to wait for. A nil Waiter makes
// the call fail with ErrLocked instead of waiting.
type Waiter func(what string)

// lockPoll is how often a waiting lock call tries again (flock cannot be
// interrupted by a context).
const lockPoll = 100 * time.Millisecond

// flockFile takes a flock of how (LOCK_SH or LOCK_EX) on path, waiting
// through wait when it is held, and returns the open file that holds it.
func flockFile(ctx context.Context, path string, how int, what func() string, wait Waiter) (*os.File, error) {
	// flock needs no write access, so a lock file another user created
	// (root's mount, the server user's capture) is opened read-only.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if errors.Is(err, fs.ErrPermission) {
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, err
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if wait == nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", what(), ErrLocked)
		}
		if !told {
			wait(what())
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(lockPoll):
		}
	}
}

// Lock takes the repository's lock for holder (a command name, recorded in
// the lock file so that others can say whom they wait for).
func (r *Repo) Lock(ctx context.Context, holder string, wait Waiter) (unlock func(), err error) {
	if r.remote() {
		return r.lockRemote(ctx, holder, wait)
	}
	path := filepath.Join(r.Dir, repoLockName)
	what := func() string {
		h, _ := os.ReadFile(path)
		if s := strings.TrimSpace(string(h)); s != "" {
			return fmt.Sprintf("the lock of repository %s (held by %s)", r.Dir, s)
		}
		return fmt.Sprintf("the lock of repository %s", r.Dir)
	}
	f, err := flockFile(ctx, path, unix.LOCK_EX, what, wait)
	if err != nil {
		return nil, err
	}
	if f.Truncate(0) == nil { // fails on a read-only open: no holder then
		f.WriteAt([]byte(fmt.Sprintf("%s, pid %d\n", holder, os.Getpid())), 0)
	}
	return func() {
		f.Truncate(0)
		f.Close()
	}, nil
}

// RemoveLockFile removes the repository's lock file; the caller holds the
// lock (so no one else's lock is removed).
func (r *Repo) RemoveLockFile() {
	if !r.remote() {
		os.Remove(filepath.Join(r.Dir, repoLockName))
	}
}

func (r *Repo) pointLockPath(name string) string {
	return filepath.Join(r.Dir, lockDirName, name+".lock")
}

// lockPoint takes the lock of one point.
func (r *Repo) lockPoint(ctx context.Context, name string, how int, wait Waiter) (*os.File, error) {
	if err := r.makeLockDir(); err != nil {
		return nil, err
	}
	what := func() string {
		if how == unix.LOCK_EX {
			return fmt.Sprintf("point %s (in use by a mount, flatten or verify)", name)
		}
		return fmt.Sprintf("point %s (being removed or replaced by expire or compact)", name)
	}
	return flockFile(ctx, r.pointLockPath(name), how, what, wait)
}

// makeLockDir makes the directory of the point locks, writable by all
// with the sticky bit (as /tmp): the users that mount (root) and that
// capture (the server's) both create lock files in it.
func (r *Repo) makeLockDir() error {
	dir := filepath.Join(r.Dir, lockDirName)
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return os.Chmod(dir, 0o777|fs.ModeSticky)
}

// Hold is a set of point locks: flocks, or leases on an object store.
type Hold struct {
	files  []*os.File
	store  Storage
	leases []string
}

// Release drops the locks.
func (h *Hold) Release() {
	if h == nil {
		return
	}
	for _, f := range h.files {
		f.Close()
	}
	for _, l := range h.leases {
		h.store.Delete(context.Background(), l)
	}
	h.files, h.leases = nil, nil
}

// ShareChain takes a shared lock on every point of the point ref's chain
// (a name or a unique prefix of one) for as long as the caller reads it,
// and returns the chain's directories, full backup first. A point that
// expire or compact retired while the locks were being taken makes it look
// the chain up again.
func (r *Repo) ShareChain(ctx context.Context, ref string, wait Waiter) ([]string, *Hold, error) {
	for {
		dirs, p, err := r.ChainDirs(ctx, ref)
		if err != nil {
			return nil, nil, err
		}
		h, gone, err := r.Share(ctx, p.Chain, wait)
		if err != nil {
			return nil, nil, err
		}
		if !gone {
			return dirs, h, nil
		}
	}
}

// Share takes a shared lock on each of the named points. gone is true (and
// nothing is held) when one of them stopped being a point meanwhile.
func (r *Repo) Share(ctx context.Context, names []string, wait Waiter) (h *Hold, gone bool, err error) {
	if r.remote() {
		return r.shareRemote(ctx, names)
	}
	h = &Hold{}
	for _, n := range names {
		f, err := r.lockPoint(ctx, n, unix.LOCK_SH, wait)
		if errors.Is(err, syscall.EROFS) {
			// A repository on a read-only file system: no one can remove
			// its points, so there is nothing to hold them against.
			continue
		}
		if err != nil {
			h.Release()
			return nil, false, err
		}
		h.files = append(h.files, f)
		if _, err := os.Lstat(filepath.Join(r.Dir, n)); err != nil {
			h.Release()
			return nil, true, nil
		}
	}
	return h, false, nil
}

// TryExclusive takes the exclusive lock of a point without waiting; held
// is true when a reader holds it.
func (r *Repo) TryExclusive(ctx context.Context, name string) (unlock func(), held bool, err error) {
	if r.remote() {
		held, err := r.readRemote(ctx, name)
		return func() {}, held, err
	}
	f, err := r.lockPoint(context.Background(), name, unix.LOCK_EX, nil)
	if errors.Is(err, ErrLocked) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return func() { f.Close() }, false, nil
}

// dropPointLock removes a retired point's lock file while its exclusive
// lock is held.
func (r *Repo) dropPointLock(name string) { os.Remove(r.pointLockPath(name)) }
