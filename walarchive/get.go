package walarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/combinefs/combinefs/repo"
)

// ErrNotArchived means the archive does not hold the file restore_command
// asked for, which recovery takes as the end of the archive.
var ErrNotArchived = errors.New("not in the archive")

// Path is where the archive keeps the file restore_command names %f: a
// whole segment, a .partial segment (only when asked for by that name) or
// a timeline history file. A .partial segment is never served under its
// segment's name: PostgreSQL takes what restore_command returns as the
// whole segment (pg_receivewal's documentation: a .partial file must be
// renamed before use), so a target in the segment still being received
// waits for it to complete.
func Path(repoDir, name string) (string, error) {
	if m := repo.WALHistoryRe.FindStringSubmatch(name); m != nil {
		return filepath.Join(repo.WALArchiveDir(repoDir), m[1], name), nil
	}
	if m := repo.WALSegmentRe.FindStringSubmatch(name); m != nil {
		return filepath.Join(repo.WALArchiveDir(repoDir), m[1], name), nil
	}
	return "", fmt.Errorf("%q is neither a WAL segment nor a timeline history file", name)
}

// GetFrom is Get from a repository that may be in an object store, where
// the file is read whole with one GET.
func GetFrom(ctx context.Context, r *repo.Repo, name, dest string) error {
	if !r.Remote() {
		return Get(r.Dir, name, dest)
	}
	if _, err := Path(r.Dir, name); err != nil {
		return err
	}
	tli, _ := strconv.ParseUint(name[:8], 16, 32)
	data, err := r.Store.ReadRange(ctx, repo.WALObject(uint32(tli), name), 0, -1)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w of %s", name, ErrNotArchived, r.Dir)
	}
	if err != nil {
		return err
	}
	return writeNew(dest, bytes.NewReader(data), name)
}

// Get copies the archived file name to dest as restore_command does: into
// a temporary name beside dest, renamed onto it once complete, so recovery
// never sees a short file. A file the archive lacks is ErrNotArchived.
func Get(repoDir, name, dest string) (err error) {
	src, err := Path(repoDir, name)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w of %s", name, ErrNotArchived, repoDir)
	}
	if err != nil {
		return err
	}
	defer in.Close()
	return writeNew(dest, in, src)
}

// writeNew writes what in holds (the file src) to dest through a
// temporary file renamed onto it.
func writeNew(dest string, in io.Reader, src string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".combinefs-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dest)
}
