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

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
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
// For a whole segment it also has the kernel read the next ones ahead
// (prefetch), while it copies.
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		if fi, err := in.Stat(); err == nil {
			prefetch(NextSegments(repoDir, name, fi.Size(), PrefetchSegments))
		}
	}()
	defer func() { <-done }()
	return writeNew(dest, in, src)
}

// PrefetchSegments is how many segments after the one restored Get has
// read ahead. Recovery asks for the segments of a timeline one after the
// other, each a new restore_command process that read its segment from
// disk before copying it, a wait in the startup process of the order of
// the disk's time to read 16 MiB (the replay stands still meanwhile),
// tens of ms per segment on a busy disk: with the next ones read ahead,
// as pgBackRest's asynchronous archive-get does, the disk reads overlap
// the replay of the segments before them and the copy finds its segment
// in the page cache. Four segments of 16 MiB are 64 MiB of page cache,
// read at most once each (a segment already cached costs no I/O).
const PrefetchSegments = 4

// NextSegments are the archive's paths of the n segments after name (a
// whole segment of size bytes) on its timeline, up to the first the
// archive lacks; none for a history file, a .partial segment or a size
// that is no WAL segment size.
func NextSegments(repoDir, name string, size int64, n int) []string {
	m := repo.WALSegmentRe.FindStringSubmatch(name)
	if m == nil || m[4] != "" || !format.ValidWALSegmentSize(size) {
		return nil
	}
	tli, _ := strconv.ParseUint(m[1], 16, 32)
	log, _ := strconv.ParseUint(m[2], 16, 32)
	seg, _ := strconv.ParseUint(m[3], 16, 32)
	segNo := log*(0x100000000/uint64(size)) + seg
	var paths []string
	for i := uint64(1); i <= uint64(n); i++ {
		p := repo.WALSegmentPath(repoDir, uint32(tli), segNo+i, size)
		if _, err := os.Stat(p); err != nil {
			break
		}
		paths = append(paths, p)
	}
	return paths
}

// prefetch has the kernel read paths into the page cache in the
// background (POSIX_FADV_WILLNEED queues the reads and returns); it is
// only a hint, so it reports nothing.
func prefetch(paths []string) {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return
		}
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED)
		f.Close()
	}
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
