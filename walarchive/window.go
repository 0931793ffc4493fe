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
	"slices"
	"strings"
	"time"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/repo"
)

// Archive is an opened archive and the points it serves.
type Archive struct {
	RepoDir   string
	Info      repo.WALInfo
	Timelines []*repo.WALTimeline
	Points    []*repo.Point // intact points, oldest first

	// On an object store, segments are read whole through its Storage.
	ctx   context.Context
	store repo.Storage
}

// Open reads the archive of repoDir; points are the repository's intact
// points (a point's EndLSN is its consistent point, before which recovery
// may not stop; Time serves a point whose WAL holds no transaction). An archive with no segment is ok=false.
func Open(repoDir string, points []*repo.Point) (a *Archive, ok bool, err error) {
	info, ok, err := repo.ReadWALInfo(repoDir)
	if err != nil || !ok {
		return nil, false, err
	}
	tls, err := repo.WALContents(repoDir, info.SegSize)
	if err != nil {
		return nil, false, err
	}
	return &Archive{RepoDir: repoDir, Info: info, Timelines: tls, Points: points}, true, nil
}

// OpenRepo is Open for a repository that may be in an object store.
func OpenRepo(ctx context.Context, r *repo.Repo, points []*repo.Point) (a *Archive, ok bool, err error) {
	if !r.Remote() {
		return Open(r.Dir, points)
	}
	info, ok, err := r.WALInfo(ctx)
	if err != nil || !ok {
		return nil, false, err
	}
	tls, err := repo.WALContentsOf(ctx, r.Store, info.SegSize)
	if err != nil {
		return nil, false, err
	}
	return &Archive{RepoDir: r.Dir, Info: info, Timelines: tls, Points: points, ctx: ctx, store: r.Store}, true, nil
}

// Window is a stretch of one timeline that recovery can reach: from the
// consistent point of the oldest point that the archive continues (Start)
// to the end of the last whole segment after it with no segment missing
// between (End). StartTime is the time of the last transaction before
// Start (or the point's time when its WAL has none): a time target must
// not be before it. EndTime is the time of the last transaction before End:
// a time target must be before it, for recovery to find where to stop.
type Window struct {
	TLI       uint32
	Point     *repo.Point // the oldest point the window starts from
	Start     format.LSN
	StartTime time.Time
	End       format.LSN
	EndTime   time.Time // zero when the window holds no transaction
	first     uint64    // its run of segments
	last      uint64
}

func (w Window) String() string {
	end := w.End.String()
	if !w.EndTime.IsZero() {
		end += " (last transaction " + FormatTime(w.EndTime) + ")"
	}
	return fmt.Sprintf("timeline %d from %s (%s, point %s) to %s", w.TLI, w.Start, FormatTime(w.StartTime), w.Point.Name, end)
}

// FormatTime shows a time as PostgreSQL reads recovery_target_time.
func FormatTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.999999Z07:00") }

// Gaps names the segments missing inside each timeline's archive.
func (a *Archive) Gaps() []string {
	var out []string
	for _, t := range a.Timelines {
		for i := 1; i < len(t.Segs); i++ {
			if t.Segs[i] != t.Segs[i-1]+1 {
				out = append(out, fmt.Sprintf("timeline %d is missing segments %s to %s",
					t.TLI, format.WALSegmentName(t.TLI, t.Segs[i-1]+1, a.Info.SegSize), format.WALSegmentName(t.TLI, t.Segs[i]-1, a.Info.SegSize)))
			}
		}
	}
	return out
}

// runs splits a timeline's whole segments into runs with no gap.
func runs(segs []uint64) [][2]uint64 {
	var out [][2]uint64
	for i, s := range segs {
		if i == 0 || s != segs[i-1]+1 {
			out = append(out, [2]uint64{s, s})
		} else {
			out[len(out)-1][1] = s
		}
	}
	return out
}

// Windows lists the recoverable windows, by timeline and then LSN.
func (a *Archive) Windows() ([]Window, error) {
	var out []Window
	seg := uint64(a.Info.SegSize)
	for _, t := range a.Timelines {
		for _, r := range runs(t.Segs) {
			var w *Window
			for _, p := range a.Points {
				if p.StartTLI == t.TLI && uint64(p.EndLSN)/seg >= r[0] && uint64(p.EndLSN)/seg <= r[1] {
					w = &Window{TLI: t.TLI, Point: p, Start: p.EndLSN, End: format.LSN((r[1] + 1) * seg), first: r[0], last: r[1]}
					break
				}
			}
			if w == nil {
				continue
			}
			var err error
			if w.StartTime, err = a.lastEventTime(t.TLI, w.Point.StartLSN, w.Start); err != nil {
				return nil, err
			}
			if w.StartTime.IsZero() {
				w.StartTime = w.Point.Time
			}
			for s := r[1]; s >= r[0] && w.EndTime.IsZero(); s-- {
				from := max(format.LSN(s*seg), w.Start)
				if w.EndTime, err = a.lastEventTime(t.TLI, from, w.End); err != nil {
					return nil, err
				}
				if format.LSN(s*seg) <= w.Start || s == 0 {
					break
				}
			}
			out = append(out, *w)
		}
	}
	return out, nil
}

// reader reads timeline tli from the archive's whole segments or, for WAL
// before the archive began, the pg_wal of a point's backup.
func (a *Archive) reader(tli uint32, keepData bool) (*format.WALReader, func(), error) {
	var open []*os.File
	r, err := format.NewWALReader(format.WALReaderOptions{
		Major: a.Info.Major, TLI: tli, SegmentSize: a.Info.SegSize, SystemIdentifier: a.Info.SystemID, KeepData: keepData,
		Open: func(segNo uint64) (io.ReaderAt, error) {
			if a.store != nil {
				return a.readObject(tli, segNo)
			}
			cands := []string{repo.WALSegmentPath(a.RepoDir, tli, segNo, a.Info.SegSize)}
			for _, p := range slices.Backward(a.Points) {
				cands = append(cands, filepath.Join(p.Dir, "pg_wal", format.WALSegmentName(tli, segNo, a.Info.SegSize)))
			}
			for _, c := range cands {
				f, err := os.Open(c)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return nil, err
				}
				open = append(open, f)
				return f, nil
			}
			return nil, fmt.Errorf("%w", fs.ErrNotExist)
		},
	})
	closeAll := func() {
		for _, f := range open {
			f.Close()
		}
	}
	return r, closeAll, err
}

// readObject reads segment segNo of timeline tli whole from the object
// store: the archive's, else a point's pg_wal. Only the reader holds it,
// so a scan keeps one segment in memory at a time.
func (a *Archive) readObject(tli uint32, segNo uint64) (io.ReaderAt, error) {
	name := format.WALSegmentName(tli, segNo, a.Info.SegSize)
	cands := []string{repo.WALObject(tli, name)}
	for _, p := range slices.Backward(a.Points) {
		cands = append(cands, p.Name+"/pg_wal/"+name)
	}
	for _, c := range cands {
		data, err := a.store.ReadRange(a.ctx, c, 0, -1)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return bytes.NewReader(data), nil
	}
	return nil, fmt.Errorf("%w", fs.ErrNotExist)
}

// scan reads the records of timeline tli from start to end and calls fn for
// each transaction or restore point until fn returns true; it returns that
// record's LSN, or ok=false when none.
func (a *Archive) scan(tli uint32, start, end format.LSN, fn func(format.LSN, format.WALEvent) bool) (at format.LSN, ok bool, err error) {
	r, closeAll, err := a.reader(tli, true)
	if err != nil {
		return 0, false, err
	}
	defer closeAll()
	rec, err := r.Start(start, end)
	for ; err == nil; rec, err = r.Next() {
		ev, derr := format.WALRecordEvent(rec.Data, a.Info.Major)
		if derr != nil {
			return 0, false, fmt.Errorf("WAL record at %s: %w", rec.LSN, derr)
		}
		if ev.Kind != format.WALNone && fn(rec.LSN, ev) {
			return rec.LSN, true, nil
		}
	}
	if err == io.EOF || strings.Contains(err.Error(), "could not find a valid record after") {
		return 0, false, nil
	}
	return 0, false, err
}

// lastEventTime is the time of the last commit or abort in [start, end).
func (a *Archive) lastEventTime(tli uint32, start, end format.LSN) (time.Time, error) {
	var last time.Time
	_, _, err := a.scan(tli, start, end, func(_ format.LSN, ev format.WALEvent) bool {
		if ev.Kind == format.WALCommit || ev.Kind == format.WALAbort {
			last = ev.Time
		}
		return false
	})
	return last, err
}

// Continuity reads every record of timeline tli from start to the end of
// its archive, with every check of the WAL reader: a missing segment or a
// broken link is an error. It returns how many records it read.
func (a *Archive) Continuity(tli uint32, start format.LSN) (int, format.LSN, error) {
	var end format.LSN
	for _, t := range a.Timelines {
		if t.TLI == tli && len(t.Segs) > 0 {
			end = format.LSN((t.Segs[len(t.Segs)-1] + 1) * uint64(a.Info.SegSize))
		}
	}
	if end <= start {
		return 0, end, nil
	}
	r, closeAll, err := a.reader(tli, false)
	if err != nil {
		return 0, end, err
	}
	defer closeAll()
	n, err := r.Scan(start, end)
	return n, end, err
}
