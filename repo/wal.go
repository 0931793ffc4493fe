package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
)

// The WAL archive lives in the repository beside the backups, one
// directory per timeline, as pg_receivewal names its files (capture's
// Archive writes it; package walarchive reads it back):
//
//	DIR/wal/00000001/000000010000000000000003           a whole segment, fsynced
//	DIR/wal/00000001/000000010000000000000004.partial   the segment being received
//	DIR/wal/00000002/00000002.history                   timeline 2's history
//	DIR/wal/.archive.lock                               held by the running archiver
//
// A segment is written as .partial and renamed to its name once it is whole
// and fsynced, so a whole-segment name never holds less than a segment.
const (
	walLockName = ".archive.lock"
	// WALPartialSuffix marks the segment being received.
	WALPartialSuffix = ".partial"
)

var (
	// WALSegmentRe matches the name of a whole or .partial segment: its
	// timeline is the first group.
	WALSegmentRe = regexp.MustCompile(`^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$`)
	// WALHistoryRe matches a timeline history file's name.
	WALHistoryRe = regexp.MustCompile(`^([0-9A-F]{8})\.history$`)
	tliDirRe     = regexp.MustCompile(`^[0-9A-F]{8}$`)
)

// WALArchiveDir is the archive's directory in repository repoDir.
func WALArchiveDir(repoDir string) string { return filepath.Join(repoDir, WALDir) }

// WALTimelineDir is the directory of timeline tli's files.
func WALTimelineDir(repoDir string, tli uint32) string {
	return filepath.Join(WALArchiveDir(repoDir), fmt.Sprintf("%08X", tli))
}

// WALSegmentPath is where segment segNo of timeline tli is kept when whole.
func WALSegmentPath(repoDir string, tli uint32, segNo uint64, segSize int64) string {
	return filepath.Join(WALTimelineDir(repoDir, tli), format.WALSegmentName(tli, segNo, segSize))
}

// WALObject is the name, relative to the repository (a Storage's name), of
// file of timeline tli's archive.
func WALObject(tli uint32, file string) string {
	return fmt.Sprintf("%s/%08X/%s", WALDir, tli, file)
}

// WALHistoryName is the name of timeline tli's history file.
func WALHistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// WALHistoryPath is where timeline tli's history file is kept.
func WALHistoryPath(repoDir string, tli uint32) string {
	return filepath.Join(WALTimelineDir(repoDir, tli), WALHistoryName(tli))
}

// LockWALArchive takes the archive's lock without waiting: one archiver
// per repository.
func LockWALArchive(repoDir string) (unlock func(), err error) {
	if err := os.MkdirAll(WALArchiveDir(repoDir), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(WALArchiveDir(repoDir), walLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another combinefs archive is running on repository %s", repoDir)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// WALTimeline is what the archive holds of one timeline.
type WALTimeline struct {
	TLI     uint32
	Segs    []uint64 // whole segments, ascending
	Partial []uint64 // .partial segments, ascending (at most one is being written)
	History bool     // its history file is archived
}

// LockWALArchive takes the archive's lock without waiting: one archiver
// per repository. On an object store it is the object wal/.archive.lock
// (as the repository's lock object: taken over from a holder killed on
// this machine).
func (r *Repo) LockWALArchive(ctx context.Context) (unlock func(), err error) {
	if !r.remote() {
		return LockWALArchive(r.Dir)
	}
	unlock, err = r.lockObject(ctx, WALDir+"/"+walLockName, "the archive lock of "+r.Dir, "archive", nil)
	if errors.Is(err, ErrLocked) {
		return nil, fmt.Errorf("another combinefs archive is running on repository %s (%w)", r.Dir, err)
	}
	return unlock, err
}

// WALInfo reads WALInfo from the repository's archive (ReadWALInfoOf).
func (r *Repo) WALInfo(ctx context.Context) (WALInfo, bool, error) {
	return ReadWALInfoOf(ctx, r.Store, r.Dir)
}

// WALContents lists the archive of segments of segSize bytes in the local
// repository repoDir (WALContentsOf).
func WALContents(repoDir string, segSize int64) ([]*WALTimeline, error) {
	return WALContentsOf(context.TODO(), Local{Root: repoDir}, segSize)
}

// WALContentsOf lists the archive of segments of segSize bytes in a
// repository's store, timelines ascending; an archive that does not exist
// is empty.
func WALContentsOf(ctx context.Context, st Storage, segSize int64) ([]*WALTimeline, error) {
	objs, err := st.List(ctx, WALDir+"/")
	if err != nil {
		return nil, err
	}
	var out []*WALTimeline
	byDir := map[string]*WALTimeline{}
	for _, o := range objs {
		dir, file, ok := strings.Cut(strings.TrimPrefix(o.Name, WALDir+"/"), "/")
		if !ok || strings.Contains(file, "/") || !tliDirRe.MatchString(dir) {
			continue
		}
		t := byDir[dir]
		if t == nil {
			tli, _ := strconv.ParseUint(dir, 16, 32)
			t = &WALTimeline{TLI: uint32(tli)}
			byDir[dir] = t
			out = append(out, t)
		}
		if m := WALSegmentRe.FindStringSubmatch(file); m != nil && m[1] == dir {
			hi, _ := strconv.ParseUint(m[2], 16, 32)
			lo, _ := strconv.ParseUint(m[3], 16, 32)
			// The name holds the segment number split into the 4 GB
			// unit and the segment within it (XLogFileName).
			n := hi*(0x100000000/uint64(segSize)) + lo
			if m[4] != "" {
				t.Partial = append(t.Partial, n)
			} else {
				t.Segs = append(t.Segs, n)
			}
		} else if file == WALHistoryName(t.TLI) {
			t.History = true
		}
	}
	for _, t := range out {
		slices.Sort(t.Segs)
		slices.Sort(t.Partial)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TLI < out[j].TLI })
	return out, nil
}

// WALInfo is what the archive's segments say about the cluster: read from
// the long header of the first page of a segment.
type WALInfo struct {
	SystemID uint64
	SegSize  int64
	Major    int
}

// ReadWALInfo reads WALInfo from the archive of the local repository
// repoDir (ReadWALInfoOf).
func ReadWALInfo(repoDir string) (info WALInfo, ok bool, err error) {
	return ReadWALInfoOf(context.TODO(), Local{Root: repoDir}, repoDir)
}

// ReadWALInfoOf reads WALInfo from the first archived segment of a
// repository's store (at where, for messages) that has a valid long page
// header; ok is false when the archive has none.
func ReadWALInfoOf(ctx context.Context, st Storage, where string) (info WALInfo, ok bool, err error) {
	objs, err := st.List(ctx, WALDir+"/")
	if err != nil {
		return WALInfo{}, false, err
	}
	for _, o := range objs {
		dir, file, found := strings.Cut(strings.TrimPrefix(o.Name, WALDir+"/"), "/")
		if !found || !tliDirRe.MatchString(dir) || !WALSegmentRe.MatchString(file) {
			continue
		}
		page, err := st.ReadRange(ctx, o.Name, 0, format.WALLongPageHeaderSize)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing (expire): the next one tells
		}
		if err != nil {
			return WALInfo{}, false, err
		}
		if info, err := segmentInfo(page, where+"/"+o.Name); err == nil {
			return info, true, nil
		}
	}
	return WALInfo{}, false, nil
}

// segmentInfo reads WALInfo from the first bytes of a segment.
func segmentInfo(page []byte, path string) (WALInfo, error) {
	if len(page) < format.WALLongPageHeaderSize {
		return WALInfo{}, fmt.Errorf("%s is shorter than a page header", path)
	}
	h, err := format.ParseWALPageHeader(page, path, 0)
	if err != nil || !h.Long() {
		return WALInfo{}, fmt.Errorf("%s does not start with a long page header", path)
	}
	major := 0
	for _, m := range []int{17, 18} {
		if magic, _ := format.WALPageMagic(m); magic == h.Magic {
			major = m
		}
	}
	if major == 0 || !format.ValidWALSegmentSize(int64(h.SegmentSize)) {
		return WALInfo{}, fmt.Errorf("%s: not a segment of PostgreSQL 17 or 18", path)
	}
	return WALInfo{SystemID: h.SystemIdentifier, SegSize: int64(h.SegmentSize), Major: major}, nil
}
