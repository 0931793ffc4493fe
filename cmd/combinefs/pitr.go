package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/walarchive"
)

// pitrOptions are mount's point-in-time recovery flags.
type pitrOptions struct {
	time, lsn, xid, name string
	action               string
	timeline             uint32
	target               walarchive.Target
	tli                  uint32 // the timeline recovery follows, once chosen
	defAction            string // --target-action's default
	s3                   repo.S3Options
}

// addFlags adds the target flags; with names the flags they need (mount:
// --cow --repo), actionHelp says what --target-action does for the command.
func (o *pitrOptions) addFlags(f *pflag.FlagSet, with, defAction, actionHelp string) {
	o.defAction = defAction
	f.StringVar(&o.time, "target-time", "", with+": recover to `TIME` (RFC 3339, or 2006-01-02 15:04:05[.frac][+zone]; UTC without zone)")
	f.StringVar(&o.lsn, "target-lsn", "", with+": recover to `LSN`")
	f.StringVar(&o.xid, "target-xid", "", with+": recover up to the end of transaction `XID`")
	f.StringVar(&o.name, "target-name", "", with+": recover to the restore point `NAME` (pg_create_restore_point)")
	f.StringVar(&o.action, "target-action", defAction, actionHelp)
	f.Uint32Var(&o.timeline, "target-timeline", 0, "recover along timeline `TLI` (default: the newest the archive has a window on)")
}

// set reports whether a target was given.
func (o *pitrOptions) set() bool { return o.time != "" || o.lsn != "" || o.xid != "" || o.name != "" }

// parse checks the flags and fills target.
func (o *pitrOptions) parse() error {
	n := 0
	for _, v := range []string{o.time, o.lsn, o.xid, o.name} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return usageError{"give only one of --target-time, --target-lsn, --target-xid and --target-name"}
	}
	switch o.action {
	case "pause", "promote", "shutdown":
	default:
		return usageError{fmt.Sprintf("invalid --target-action %q: must be pause, promote or shutdown", o.action)}
	}
	t := walarchive.Target{TLI: o.timeline, Name: o.name}
	switch {
	case o.time != "":
		tm, err := parseTargetTime(o.time)
		if err != nil {
			return usageError{fmt.Sprintf("invalid --target-time %q: %v", o.time, err)}
		}
		t.Time, t.HasTime = tm, true
	case o.lsn != "":
		l, ok := format.ParseLSN(o.lsn)
		if !ok {
			return usageError{fmt.Sprintf("invalid --target-lsn %q: want an LSN such as 0/3000028", o.lsn)}
		}
		t.LSN, t.HasLSN = l, true
	case o.xid != "":
		x, err := strconv.ParseUint(o.xid, 10, 32)
		if err != nil || x < 3 {
			return usageError{fmt.Sprintf("invalid --target-xid %q: want a transaction ID (3 to 4294967295)", o.xid)}
		}
		t.XID, t.HasXID = uint32(x), true
	case o.name == "":
		if o.timeline != 0 || o.action != o.defAction {
			return usageError{"--target-action and --target-timeline go with a recovery target (--target-time, --target-lsn, --target-xid or --target-name)"}
		}
		return nil
	}
	if len(o.name) >= 64 {
		return usageError{fmt.Sprintf("invalid --target-name %q: restore point names are shorter than 64 bytes", o.name)}
	}
	o.target = t
	return nil
}

// parseTargetTime reads RFC 3339 or PostgreSQL's timestamp format; a time
// without a zone is UTC.
func parseTargetTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("want e.g. 2026-01-02T15:04:05Z or 2026-01-02 15:04:05.123+00")
}

// choosePoint picks the repository's point to recover from and the
// timeline; it fails, naming the recoverable windows, for a target the
// archive cannot reach.
func (o *pitrOptions) choosePoint(ctx context.Context, dir string) (string, error) {
	r, err := openRepo(ctx, dir, o.s3)
	if err != nil {
		return "", err
	}
	points, err := r.Points(ctx)
	if err != nil {
		return "", err
	}
	a, err := openArchive(ctx, r, points)
	if err != nil {
		return "", err
	}
	p, tli, err := a.Choose(o.target)
	if err != nil {
		return "", err
	}
	o.tli = tli
	return p.Name, nil
}

// openArchive opens the repository's WAL archive with its intact points.
func openArchive(ctx context.Context, r *repo.Repo, points []*repo.Point) (*walarchive.Archive, error) {
	var intact []*repo.Point
	for _, p := range points {
		if p.Problem == "" {
			intact = append(intact, p)
		}
	}
	a, ok, err := walarchive.OpenRepo(ctx, r, intact)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("repository %s has no WAL archive (run combinefs archive --repo %s)", r.Dir, r.Dir)
	}
	return a, nil
}

// writeRecovery makes the server started on the mount mp recover to the
// target: recovery.signal and the settings appended to
// postgresql.auto.conf, written through the copy-on-write layer, so they
// land in the upper directory only.
func (o *pitrOptions) writeRecovery(mp, repoDir string) error {
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	// wal-get reaches an S3 repository as the mount did, with the
	// server's own AWS credentials and configuration.
	getArgs := []string{"--repo", repoDir}
	if _, _, remote, _ := repo.ParseS3URL(repoDir); !remote {
		if getArgs[1], err = filepath.Abs(repoDir); err != nil {
			return err
		}
	} else if o.s3.Endpoint != "" {
		getArgs = append(getArgs, "--s3-endpoint", o.s3.Endpoint)
	}
	conf := walarchive.RecoverySettings(bin, getArgs, o.target, o.tli, o.action)
	f, err := os.OpenFile(filepath.Join(mp, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("\n" + conf); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	sig, err := os.OpenFile(filepath.Join(mp, "recovery.signal"), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := sig.Sync(); err != nil {
		sig.Close()
		return err
	}
	return sig.Close()
}

// describe is the target for the mount's messages.
func (o *pitrOptions) describe() string {
	return strings.TrimPrefix(o.target.String(), "recovery ")
}

// walJSON is list --json's view of the WAL archive.
type walJSON struct {
	Timelines []walTimelineJSON `json:"timelines"`
	Windows   []walWindowJSON   `json:"windows"`
	Gaps      []string          `json:"gaps"`
}

type walTimelineJSON struct {
	Timeline uint32 `json:"timeline"`
	Segments int    `json:"segments"`
	First    string `json:"first,omitempty"`
	Last     string `json:"last,omitempty"`
	Partial  string `json:"partial,omitempty"`
}

type walWindowJSON struct {
	Timeline  uint32     `json:"timeline"`
	Point     string     `json:"point"`
	StartLSN  string     `json:"start_lsn"`
	StartTime time.Time  `json:"start_time"`
	EndLSN    string     `json:"end_lsn"`
	EndTime   *time.Time `json:"end_time,omitempty"`
}

// archiveJSON describes the repository's WAL archive for list --json; nil
// when it has none.
func archiveJSON(ctx context.Context, r *repo.Repo, points []*repo.Point) (*walJSON, error) {
	if _, ok, err := r.WALInfo(ctx); err != nil || !ok {
		return nil, err
	}
	a, err := openArchive(ctx, r, points)
	if err != nil {
		return nil, err
	}
	out := &walJSON{Timelines: []walTimelineJSON{}, Windows: []walWindowJSON{}, Gaps: a.Gaps()}
	if out.Gaps == nil {
		out.Gaps = []string{}
	}
	for _, t := range a.Timelines {
		j := walTimelineJSON{Timeline: t.TLI, Segments: len(t.Segs)}
		if n := len(t.Segs); n > 0 {
			j.First, j.Last = format.WALSegmentName(t.TLI, t.Segs[0], a.Info.SegSize), format.WALSegmentName(t.TLI, t.Segs[n-1], a.Info.SegSize)
		}
		if n := len(t.Partial); n > 0 {
			j.Partial = format.WALSegmentName(t.TLI, t.Partial[n-1], a.Info.SegSize) + repo.WALPartialSuffix
		}
		out.Timelines = append(out.Timelines, j)
	}
	windows, err := a.Windows()
	if err != nil {
		return nil, err
	}
	for _, w := range windows {
		j := walWindowJSON{Timeline: w.TLI, Point: w.Point.Name, StartLSN: w.Start.String(), StartTime: w.StartTime.UTC(), EndLSN: w.End.String()}
		if !w.EndTime.IsZero() {
			end := w.EndTime.UTC()
			j.EndTime = &end
		}
		out.Windows = append(out.Windows, j)
	}
	return out, nil
}

// printArchive adds the WAL archive to list: what each timeline holds, the
// recoverable windows and any gap. A repository without an archive prints
// nothing.
func printArchive(ctx context.Context, w io.Writer, r *repo.Repo, points []*repo.Point) error {
	if _, ok, err := r.WALInfo(ctx); err != nil || !ok {
		return err
	}
	a, err := openArchive(ctx, r, points)
	if err != nil {
		return err
	}
	for _, t := range a.Timelines {
		desc := "no whole segment"
		if n := len(t.Segs); n > 0 {
			desc = fmt.Sprintf("%d segments, %s to %s", n, format.WALSegmentName(t.TLI, t.Segs[0], a.Info.SegSize), format.WALSegmentName(t.TLI, t.Segs[n-1], a.Info.SegSize))
		}
		if len(t.Partial) > 0 {
			desc += fmt.Sprintf(", and %s", format.WALSegmentName(t.TLI, t.Partial[len(t.Partial)-1], a.Info.SegSize)+repo.WALPartialSuffix)
		}
		fmt.Fprintf(w, "WAL archive, timeline %d: %s\n", t.TLI, desc)
	}
	windows, err := a.Windows()
	if err != nil {
		return err
	}
	for _, win := range windows {
		fmt.Fprintf(w, "recoverable: %s\n", win)
	}
	if len(windows) == 0 {
		fmt.Fprintln(w, "recoverable: nothing (no intact point is followed by the archive)")
	}
	for _, g := range a.Gaps() {
		fmt.Fprintf(w, "gap: %s\n", g)
	}
	return nil
}

// verifyArchive checks that the repository's WAL archive is continuous:
// every record from each timeline's oldest intact point to the end of its
// archive reads back with the WAL reader's checks, one line per timeline.
// A repository without an archive passes.
func verifyArchive(ctx context.Context, dir string, s3o repo.S3Options) error {
	r, err := repo.OpenWith(ctx, dir, false, s3o)
	if err != nil {
		return err
	}
	if _, ok, err := r.WALInfo(ctx); err != nil || !ok {
		return err
	}
	points, err := r.Points(ctx)
	if err != nil {
		return err
	}
	a, err := openArchive(ctx, r, points)
	if err != nil {
		return err
	}
	failed := 0
	for _, g := range a.Gaps() {
		failed++
		fmt.Fprintf(stderr, "combinefs verify: WAL archive: %s\n", g)
	}
	for _, t := range a.Timelines {
		var from *repo.Point
		for _, p := range a.Points {
			if p.StartTLI == t.TLI {
				from = p
				break
			}
		}
		if from == nil {
			fmt.Fprintf(stderr, "combinefs verify: WAL archive of timeline %d: no intact point on it to read from\n", t.TLI)
			continue
		}
		n, end, err := a.Continuity(t.TLI, from.StartLSN)
		if err != nil {
			failed++
			fmt.Fprintf(stderr, "combinefs verify: WAL archive of timeline %d: FAILED: %s\n", t.TLI, oneLine(err.Error()))
			continue
		}
		fmt.Fprintf(stderr, "combinefs verify: WAL archive of timeline %d is continuous from point %s (%s) to %s (%d records)\n", t.TLI, from.Name, from.StartLSN, end, n)
	}
	if failed > 0 {
		return fmt.Errorf("the WAL archive of %s is not continuous", r.Dir)
	}
	return nil
}
