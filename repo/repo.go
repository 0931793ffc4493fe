package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// nameTimeLayout is the time part of a point's name.
const nameTimeLayout = "2006-01-02_150405"

var pointNameRe = regexp.MustCompile(`^([0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{6})-(FULL|INCREMENTAL)$`)

// Hidden names of the repository's own files.
const (
	repoLockName = ".combinefs.lock"
	lockDirName  = ".locks"
	partialInfix = ".partial-"
	trashInfix   = ".trash-"
	// WALDir is the WAL archive's directory inside the repository.
	WALDir = "wal"
	// journalName is the journal of a compaction in progress.
	journalName = ".compact.journal"
)

// Repo is a backup repository.
type Repo struct {
	Dir string
	// Store reaches the repository's files. Locks and the renames that
	// publish and retire points stay on the local file system: flock and
	// rename have no object-store equivalent (an object store will use a
	// lease object and a marker object written last instead).
	Store Storage
	// Created: Open made Dir, so a first capture that fails removes it
	// again rather than leave an empty repository behind.
	Created bool
	// Log, if set, hears what a reader of the repository worked around
	// (an object store's header pack it could not use); a command sets it
	// to its log.
	Log func(msg string)
}

// logf reports msg through r.Log, if set.
func (r *Repo) logf(format string, args ...any) {
	if r.Log != nil {
		r.Log(fmt.Sprintf(format, args...))
	}
}

// Open opens the repository in the local directory dir; with create, it
// makes the directory when it does not exist. Every command opens its
// repository with OpenWith, which also takes s3://BUCKET/PREFIX; Open
// refuses such a URL rather than make a directory named after it.
func Open(dir string, create bool) (*Repo, error) {
	if _, _, ok, _ := ParseS3URL(dir); ok {
		return nil, fmt.Errorf("repository %s: an S3 repository is opened with OpenWith", dir)
	}
	return openLocal(dir, create)
}

// openLocal opens the repository in the local directory dir.
func openLocal(dir string, create bool) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	created := false
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, err
		}
		created = true
		fi, err = os.Stat(abs)
	}
	if err != nil {
		return nil, fmt.Errorf("repository: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("repository %s is not a directory", abs)
	}
	return &Repo{Dir: abs, Store: Local{Root: abs}, Created: created}, nil
}

// IsPointName reports whether name is the name of a point.
func IsPointName(name string) bool { return pointNameRe.MatchString(name) }

// PointName is the name of a point of kind taken at t.
func PointName(kind Kind, t time.Time) string {
	return t.UTC().Format(nameTimeLayout) + "-" + string(kind)
}

// NewName is the name of a point of kind taken at t, or "" when a point of
// either kind already has that second or a later one. Points are listed in
// name order, so a new point's second must come after every other's: two
// captures in one second named ...-INCREMENTAL and then ...-FULL would
// otherwise be listed the wrong way round.
func (r *Repo) NewName(kind Kind, t time.Time) string {
	name := PointName(kind, t)
	var taken []string
	if r.remote() {
		// The markers; a capture's leftovers are gone by now (Recover).
		names, err := r.pointNames(context.TODO())
		if err != nil {
			return ""
		}
		taken = names
	} else {
		entries, err := os.ReadDir(r.Dir)
		if err != nil {
			return ""
		}
		for _, e := range entries {
			taken = append(taken, e.Name())
		}
	}
	for _, n := range taken {
		if m := pointNameRe.FindStringSubmatch(n); m != nil && m[1] >= name[:len(m[1])] {
			return ""
		}
	}
	return name
}

// WaitName waits for a second whose name of kind is free and returns it.
func (r *Repo) WaitName(ctx context.Context, kind Kind) (string, error) {
	for {
		if name := r.NewName(kind, time.Now()); name != "" {
			return name, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stage makes the hidden directory a new point called name is written in
// before Publish gives it its name. What a killed writer leaves there is
// a leftover that the next holder of the repository's lock removes.
func (r *Repo) Stage(name string) (string, error) { return StageIn(r.Dir, name) }

// StageIn makes a hidden staging directory for name in dir: the one naming
// of work in progress, in a repository or beside a capture's -D target.
func StageIn(dir, name string) (string, error) {
	return os.MkdirTemp(dir, "."+name+partialInfix)
}

// Publish makes the staged directory tmp the point name: one rename that
// replaces nothing, made durable. Its contents must be durable already.
func (r *Repo) Publish(tmp, name string) (string, error) {
	final := filepath.Join(r.Dir, name)
	if err := renameDurable(tmp, final); err != nil {
		return "", err
	}
	return final, nil
}

// Leftovers lists what killed commands left: hidden partial directories
// of captures and compactions, points half removed, a compaction's
// journal. Only a holder of the repository's lock may remove them.
func (r *Repo) Leftovers() ([]string, error) {
	if r.remote() {
		return r.remoteLeftovers(context.TODO())
	}
	entries, err := os.ReadDir(r.Dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		n := e.Name()
		if isLeftover(n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// isLeftover reports whether a name in the repository's directory is
// something a killed command left: a staged point, a point being removed,
// a compaction's journal or a journal being written.
func isLeftover(n string) bool {
	return strings.HasPrefix(n, ".") && (strings.Contains(n, partialInfix) || strings.Contains(n, trashInfix) ||
		n == journalName || isJournalTemp(n))
}

// isJournalTemp: Local.Put's temporary file of the journal.
func isJournalTemp(n string) bool { return strings.HasPrefix(n, "."+journalName+".tmp-") }

// IsTrash reports whether a leftover is a point being removed.
func IsTrash(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, trashInfix)
}

// RemovePartials removes the staged directories killed writers left. The
// caller holds the repository's lock, so nothing is writing them.
func (r *Repo) RemovePartials() error {
	leftovers, err := r.Leftovers()
	if err != nil {
		return err
	}
	for _, l := range leftovers {
		if !strings.Contains(l, partialInfix) && !isJournalTemp(l) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(r.Dir, l)); err != nil {
			return fmt.Errorf("remove what an interrupted command left: %w", err)
		}
	}
	return nil
}

// CheckIsRepository fails unless Dir looks like a repository: it holds a
// point, the repository's lock file or a leftover of one. Commands that
// change a repository call it first, so that pointing them at some other
// directory changes nothing.
func (r *Repo) CheckIsRepository() error {
	if r.remote() {
		return r.checkRemoteRepository(context.TODO())
	}
	entries, err := os.ReadDir(r.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if n == repoLockName || (e.IsDir() && IsPointName(n)) || isLeftover(n) {
			return nil
		}
	}
	return fmt.Errorf("%s is not a combinefs repository (no backups in it)", r.Dir)
}
