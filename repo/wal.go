package repo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
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

// WALContents lists the archive of segments of segSize bytes, timelines
// ascending; an archive that does not exist is empty.
func WALContents(repoDir string, segSize int64) ([]*WALTimeline, error) {
	dirs, err := os.ReadDir(WALArchiveDir(repoDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*WALTimeline
	for _, d := range dirs {
		if !d.IsDir() || !tliDirRe.MatchString(d.Name()) {
			continue
		}
		tli, _ := strconv.ParseUint(d.Name(), 16, 32)
		t := &WALTimeline{TLI: uint32(tli)}
		ents, err := os.ReadDir(filepath.Join(WALArchiveDir(repoDir), d.Name()))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if m := WALSegmentRe.FindStringSubmatch(e.Name()); m != nil && m[1] == d.Name() {
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
			} else if WALHistoryRe.MatchString(e.Name()) && e.Name() == WALHistoryName(t.TLI) {
				t.History = true
			}
		}
		slices.Sort(t.Segs)
		slices.Sort(t.Partial)
		out = append(out, t)
	}
	return out, nil
}

// WALInfo is what the archive's segments say about the cluster: read from
// the long header of the first page of a segment.
type WALInfo struct {
	SystemID uint64
	SegSize  int64
	Major    int
}

// ReadWALInfo reads WALInfo from the first archived segment that has a valid
// long page header; ok is false when the archive has none.
func ReadWALInfo(repoDir string) (info WALInfo, ok bool, err error) {
	dirs, err := os.ReadDir(WALArchiveDir(repoDir))
	if errors.Is(err, fs.ErrNotExist) {
		return WALInfo{}, false, nil
	}
	if err != nil {
		return WALInfo{}, false, err
	}
	for _, d := range dirs {
		if !d.IsDir() || !tliDirRe.MatchString(d.Name()) {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(WALArchiveDir(repoDir), d.Name()))
		if err != nil {
			return WALInfo{}, false, err
		}
		for _, e := range ents {
			if WALSegmentRe.MatchString(e.Name()) {
				if info, err := readSegmentInfo(filepath.Join(WALArchiveDir(repoDir), d.Name(), e.Name())); err == nil {
					return info, true, nil
				}
			}
		}
	}
	return WALInfo{}, false, nil
}

func readSegmentInfo(path string) (WALInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return WALInfo{}, err
	}
	defer f.Close()
	var page [format.WALLongPageHeaderSize]byte
	if _, err := f.ReadAt(page[:], 0); err != nil {
		return WALInfo{}, err
	}
	h, err := format.ParseWALPageHeader(page[:], path, 0)
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
