package fusefs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/internal/safedir"
)

// Detach turns a hydrated upper directory into a plain data directory: its
// tree/ becomes the directory itself, owned by one user, with none of the
// upper's bookkeeping (xattrs, whiteouts, combinefs-upper.json, tmp/, the
// markers). A crash at any point leaves either the old upper, or one marked
// with detachingName, which a mount refuses and Detach run again completes:
//
//  1. checks, changing nothing: no mount holds the upper (the meta file's
//     flock), hydration completed (hydratedName) and left no overlay, and
//     no name of the data directory collides with the bookkeeping's;
//  2. detachingName is written durably, with the owner to give the files:
//     from here on the upper is neither mountable nor a data directory;
//  3. in tree/: whiteouts removed, xattrs removed, every entry chowned;
//     tmp/ emptied; the file system synced;
//  4. UPPER takes tree/'s mode, and tree/'s entries are renamed one by one
//     to UPPER's top level (a rerun moves those left);
//  5. tree/, tmp/, the markers and the meta file removed, the directory
//     fsynced, detachingName removed last.
//
// Steps 3 to 5 can each be run again on what a crash left.
const detachingName = "combinefs-detaching"

// DetachOptions configure Detach.
type DetachOptions struct {
	// UID and GID own the detached files; negative: the owner of the final
	// backup of the upper's chain (what the mount presented by default).
	UID, GID int
	// AfterStep, if set, is called after each step with its name (tests
	// crash there).
	AfterStep func(step string)
}

// detachState is what detachingName records.
type detachState struct {
	UID int `json:"uid"`
	GID int `json:"gid"`
}

// Detach detaches upper directory dir (see detachingName).
func Detach(dir string, o DetachOptions) error {
	after := func(step string) {
		if o.AfterStep != nil {
			o.AfterStep(step)
		}
	}
	marker := filepath.Join(dir, detachingName)
	var ds detachState
	// Detach runs as root on what may be another user's path: UPPER must be
	// ours and writable by no one else, as the mount requires (once
	// cleaned, it belongs to the data directory's owner).
	safe := safedir.Check(dir, os.Geteuid())
	data, err := os.ReadFile(marker)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &ds); err != nil {
			return fmt.Errorf("upper directory %s: %s is damaged: %v", dir, detachingName, err)
		}
		if safe != nil && safedir.Check(dir, ds.UID) != nil {
			return fmt.Errorf("unsafe upper directory: %v", safe)
		}
	case safe != nil:
		return fmt.Errorf("unsafe upper directory: %v", safe)
	case errors.Is(err, fs.ErrNotExist):
		lock, err := checkDetachable(dir)
		if err != nil {
			return err
		}
		defer lock.Close()
		if ds, err = detachOwner(dir, o); err != nil {
			return err
		}
		out, _ := json.Marshal(ds)
		if err := writeDurably(marker, append(out, '\n')); err != nil {
			return err
		}
		after("marked")
	default:
		return fmt.Errorf("upper directory %s: %w", dir, err)
	}
	tree := filepath.Join(dir, "tree")
	if err := cleanTree(dir, tree, ds); err != nil {
		return err
	}
	after("cleaned")
	if err := moveTree(dir, tree, after); err != nil {
		return err
	}
	after("moved")
	for _, name := range []string{"tree", "tmp", hydratedName, upperMetaName, upperMetaName + ".tmp", hydratedName + ".tmp"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("detach %s: %w", dir, err)
		}
	}
	if err := dio.Sync(dir); err != nil {
		return err
	}
	after("removed")
	if err := os.Remove(marker); err != nil {
		return err
	}
	return dio.Sync(dir)
}

// checkDetachable refuses an upper that a mount holds, that is not
// completely hydrated, or whose data directory has a bookkeeping name. It
// returns the meta file, flocked, to hold until the marker is written.
func checkDetachable(dir string) (*os.File, error) {
	lock, err := os.Open(filepath.Join(dir, upperMetaName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a combinefs upper directory (no %s)", dir, upperMetaName)
	}
	if err != nil {
		return nil, fmt.Errorf("upper directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("upper directory %s belongs to a live mount: unmount it first", dir)
		}
		return nil, fmt.Errorf("upper directory %s: lock: %w", dir, err)
	}
	fail := func(err error) (*os.File, error) {
		lock.Close()
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, hydratedName)); err != nil {
		return fail(fmt.Errorf("hydration of upper directory %s is incomplete: mount it with --cow %s --hydrate until combinefs status --wait returns", dir, dir))
	}
	tree := filepath.Join(dir, "tree")
	ents, err := os.ReadDir(tree)
	if err != nil {
		return fail(fmt.Errorf("upper directory %s is damaged: %w", dir, err))
	}
	for _, e := range ents {
		if slices.Contains([]string{"tree", "tmp", upperMetaName, hydratedName, detachingName}, e.Name()) || strings.HasSuffix(e.Name(), ".tmp") && strings.HasPrefix(e.Name(), "combinefs-") {
			return fail(fmt.Errorf("upper directory %s: its data directory has an entry named %s, which detach needs for itself", dir, e.Name()))
		}
	}
	err = filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if _, err := unix.Lgetxattr(p, xattrOrigin, nil); err == nil {
			return fmt.Errorf("hydration of upper directory %s is incomplete: %s still has blocks in the backups", dir, p)
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return lock, nil
}

// detachOwner is the owner the detached files get.
func detachOwner(dir string, o DetachOptions) (detachState, error) {
	if o.UID >= 0 && o.GID >= 0 {
		return detachState{UID: o.UID, GID: o.GID}, nil
	}
	data, err := os.ReadFile(filepath.Join(dir, upperMetaName))
	var meta upperMeta
	if err == nil {
		err = json.Unmarshal(data, &meta)
	}
	if err != nil || len(meta.Backups) == 0 {
		return detachState{}, fmt.Errorf("upper directory %s: cannot tell which backups it came from (%v): give --owner", dir, err)
	}
	var st unix.Stat_t
	final := meta.Backups[len(meta.Backups)-1]
	if err := unix.Stat(final, &st); err != nil {
		return detachState{}, fmt.Errorf("final backup %s of upper directory %s: %v: give --owner", final, dir, err)
	}
	ds := detachState{UID: int(st.Uid), GID: int(st.Gid)}
	if o.UID >= 0 {
		ds.UID = o.UID
	}
	if o.GID >= 0 {
		ds.GID = o.GID
	}
	return ds, nil
}

// cleanTree removes what only the upper needed from tree/ (whiteouts,
// xattrs), chowns every entry and empties tmp/, then syncs the file system.
func cleanTree(dir, tree string, ds detachState) error {
	clean := func(p string) error {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if isWhiteout(p, &st) {
			return os.Remove(p)
		}
		for _, x := range []string{xattrOrigin, xattrLimit, xattrOpaque} {
			if err := unix.Lremovexattr(p, x); err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("%s: remove %s: %w", p, x, err)
			}
		}
		return unix.Lchown(p, ds.UID, ds.GID)
	}
	if _, err := os.Stat(tree); err == nil {
		err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return clean(p)
		})
		if err != nil {
			return fmt.Errorf("detach %s: %w", dir, err)
		}
	}
	// Entries already moved to the top by an interrupted run were cleaned
	// before they moved; the directory itself is chowned here.
	if err := unix.Lchown(dir, ds.UID, ds.GID); err != nil {
		return err
	}
	tmp := filepath.Join(dir, "tmp")
	if ents, err := os.ReadDir(tmp); err == nil {
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
				return err
			}
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}

// moveTree gives dir tree/'s mode and renames tree/'s entries into dir.
func moveTree(dir, tree string, after func(string)) error {
	fi, err := os.Stat(tree)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // moved and removed by an interrupted run
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, fi.Mode().Perm()); err != nil {
		return err
	}
	ents, err := os.ReadDir(tree)
	if err != nil {
		return err
	}
	for i, e := range ents {
		if err := os.Rename(filepath.Join(tree, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("detach %s: %w", dir, err)
		}
		if i == 0 {
			after("moving")
		}
	}
	return dio.Sync(dir)
}

// detachingError is openUpper's refusal of an upper that detach left
// half-way.
func detachingError(dir string) error {
	if _, err := os.Lstat(filepath.Join(dir, detachingName)); err != nil {
		return nil
	}
	return fmt.Errorf("upper directory %s is being detached (an interrupted combinefs detach): run combinefs detach %s again; it cannot be mounted", dir, dir)
}
