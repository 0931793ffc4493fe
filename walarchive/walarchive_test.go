package walarchive

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/format/waltest"
	"github.com/combinefs/combinefs/repo"
)

const segSize = format.WALMinSegmentSize

// synthetic is an archive of timeline 1 written by waltest: segments from
// 0x1000000 on, two points, transactions at known times, a restore point.
type synthetic struct {
	repo   string
	b      *waltest.Builder
	points []*repo.Point
	t0     time.Time
	// where things are
	commits []format.LSN // commit i of xid 100+i at t0+i seconds
	rp      format.LSN
}

func newSynthetic(t *testing.T, segs int) *synthetic {
	t.Helper()
	s := &synthetic{repo: t.TempDir(), t0: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	s.b = waltest.New(17, 42, segSize, 0x1000000)
	i := 0
	// Records go on past the last segment written, as they do past an
	// archive's last whole segment.
	for uint64(s.b.Pos) < 0x1000000+uint64(segs)*segSize+64<<10 {
		s.b.Add(10, 0, 3000, nil)
		s.commits = append(s.commits, s.b.Commit(uint32(100+i), s.t0.Add(time.Duration(i)*time.Second)))
		if i == 20 {
			s.rp = s.b.RestorePoint("rp20", s.t0.Add(20*time.Second+time.Millisecond))
		}
		i++
	}
	dir := repo.WALTimelineDir(s.repo, 1)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range s.b.Segments()[:segs] {
		if err := os.WriteFile(repo.WALSegmentPath(s.repo, 1, n, segSize), s.b.Segment(n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Two points: each "backup" starts at a commit and ends two commits on.
	for k, c := range []int{5, 40} {
		s.points = append(s.points, &repo.Point{Name: []string{"p1", "p2"}[k], Dir: filepath.Join(s.repo, "none"), StartTLI: 1,
			StartLSN: s.commits[c], EndLSN: s.commits[c+2], Time: s.t0})
	}
	return s
}

func (s *synthetic) open(t *testing.T) *Archive {
	t.Helper()
	a, ok, err := Open(s.repo, s.points)
	if err != nil || !ok {
		t.Fatalf("Open: %v, %v", ok, err)
	}
	return a
}

func TestContentsAndGet(t *testing.T) {
	s := newSynthetic(t, 3)
	dir := repo.WALTimelineDir(s.repo, 1)
	partial := repo.WALSegmentPath(s.repo, 1, 0x13, segSize) + repo.WALPartialSuffix
	os.WriteFile(partial, []byte("partial"), 0o600)
	os.WriteFile(filepath.Join(dir, "junk"), nil, 0o600)
	os.MkdirAll(repo.WALTimelineDir(s.repo, 2), 0o700)
	os.WriteFile(repo.WALHistoryPath(s.repo, 2), []byte("1\t0/1800000\tno recovery target specified\n"), 0o600)
	tls, err := repo.WALContents(s.repo, segSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(tls) != 2 || len(tls[0].Segs) != 3 || tls[0].Segs[0] != 0x10 || len(tls[0].Partial) != 1 || tls[0].Partial[0] != 0x13 || !tls[1].History {
		t.Fatalf("Contents: %+v %+v", tls[0], tls[1])
	}
	info, ok, err := repo.ReadWALInfo(s.repo)
	if err != nil || !ok || info != (repo.WALInfo{SystemID: 42, SegSize: segSize, Major: 17}) {
		t.Fatalf("ReadInfo: %+v %v %v", info, ok, err)
	}

	out := t.TempDir()
	name := format.WALSegmentName(1, 0x11, segSize)
	if err := Get(s.repo, name, filepath.Join(out, "RECOVERYXLOG")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(out, "RECOVERYXLOG"))
	if want := s.b.Segment(0x11); string(got) != string(want) {
		t.Error("wal-get copied other bytes than the segment's")
	}
	if err := Get(s.repo, "00000002.history", filepath.Join(out, "h")); err != nil {
		t.Error(err)
	}
	// The segment being received is served by its .partial name only.
	partialName := format.WALSegmentName(1, 0x13, segSize)
	if err := Get(s.repo, partialName, filepath.Join(out, "p")); !errors.Is(err, ErrNotArchived) {
		t.Errorf("the .partial segment was served as the whole one: %v", err)
	}
	if err := Get(s.repo, partialName+repo.WALPartialSuffix, filepath.Join(out, "p")); err != nil {
		t.Error(err)
	}
	for _, missing := range []string{format.WALSegmentName(1, 0x30, segSize), "00000003.history", format.WALSegmentName(2, 0x10, segSize)} {
		if err := Get(s.repo, missing, filepath.Join(out, "m")); !errors.Is(err, ErrNotArchived) {
			t.Errorf("Get(%s): %v, want ErrNotArchived", missing, err)
		}
	}
	if err := Get(s.repo, "../../etc/passwd", filepath.Join(out, "m")); err == nil || errors.Is(err, ErrNotArchived) {
		t.Errorf("a name outside the archive: %v", err)
	}
	ents, _ := os.ReadDir(out)
	if len(ents) != 3 {
		t.Errorf("wal-get left %d files, want 3 (no temporary ones)", len(ents))
	}
}

func TestWindowsAndChoose(t *testing.T) {
	s := newSynthetic(t, 4)
	a := s.open(t)
	ws, err := a.Windows()
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].Start != s.points[0].EndLSN || ws[0].End != 0x1400000 || ws[0].Point.Name != "p1" {
		t.Fatalf("windows %+v", ws)
	}
	// p1's WAL holds commits 5 and 6 (its end is commit 7's start).
	if !ws[0].StartTime.Equal(s.t0.Add(6 * time.Second)) {
		t.Errorf("window starts at %s, want the time of commit 6", ws[0].StartTime)
	}
	last := len(s.commits) - 1
	for uint64(s.commits[last]) >= 0x1400000 {
		last--
	}
	if !ws[0].EndTime.Equal(s.t0.Add(time.Duration(last) * time.Second)) {
		t.Errorf("window ends at %s, want commit %d's time", ws[0].EndTime, last)
	}

	sec := func(i int, extra time.Duration) time.Time { return s.t0.Add(time.Duration(i)*time.Second + extra) }
	for _, tc := range []struct {
		name  string
		t     Target
		point string
	}{
		{"time in p1", Target{Time: sec(20, 0), HasTime: true}, "p1"},
		{"time inside p2's backup", Target{Time: sec(40, 500*time.Millisecond), HasTime: true}, "p1"},
		{"time of p2's last commit", Target{Time: sec(41, 0), HasTime: true}, "p2"},
		{"time late", Target{Time: sec(last-1, 500*time.Millisecond), HasTime: true}, "p2"},
		{"time at the window's start", Target{Time: sec(6, 0), HasTime: true}, "p1"},
		{"xid", Target{XID: 100 + 30, HasXID: true}, "p1"},
		{"xid after p2", Target{XID: 100 + 42, HasXID: true}, "p2"},
		{"name", Target{Name: "rp20"}, "p1"},
		{"lsn", Target{LSN: s.commits[50], HasLSN: true}, "p2"},
		{"lsn at p2's end", Target{LSN: s.points[1].EndLSN, HasLSN: true}, "p2"},
	} {
		p, tli, err := a.Choose(tc.t)
		if err != nil || p.Name != tc.point || tli != 1 {
			t.Errorf("%s: %v on %d, %v; want %s", tc.name, p, tli, err, tc.point)
		}
	}
	for _, tc := range []struct {
		name string
		t    Target
	}{
		{"time before the window", Target{Time: sec(5, 0), HasTime: true}},
		{"time after the last transaction", Target{Time: sec(last, 0), HasTime: true}},
		{"xid before the window", Target{XID: 100 + 6, HasXID: true}},
		{"unknown xid", Target{XID: 99999, HasXID: true}},
		{"unknown name", Target{Name: "nope"}},
		{"lsn before", Target{LSN: s.commits[6], HasLSN: true}},
		{"lsn after", Target{LSN: 0x1400000, HasLSN: true}},
		{"another timeline", Target{LSN: s.commits[50], HasLSN: true, TLI: 2}},
	} {
		if p, _, err := a.Choose(tc.t); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: chose %v, %v; want a one-line error", tc.name, p, err)
		}
	}
}

func TestGapsAndContinuity(t *testing.T) {
	s := newSynthetic(t, 5)
	a := s.open(t)
	if n, end, err := a.Continuity(1, s.points[0].StartLSN); err != nil || n == 0 || end != 0x1500000 {
		t.Fatalf("Continuity: %d records to %s, %v", n, end, err)
	}
	os.Remove(repo.WALSegmentPath(s.repo, 1, 0x12, segSize))
	a = s.open(t)
	if g := a.Gaps(); len(g) != 1 || !strings.Contains(g[0], format.WALSegmentName(1, 0x12, segSize)) {
		t.Errorf("gaps %q", g)
	}
	if _, _, err := a.Continuity(1, s.points[0].StartLSN); err == nil {
		t.Error("continuity over a missing segment")
	}
	ws, err := a.Windows()
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].End != 0x1200000 {
		t.Errorf("with segment 0x12 missing: windows %+v, want one ending at 0/1200000", ws)
	}
	// A whole segment damaged in the middle: a broken link.
	data := s.b.Segment(0x11)
	data[segSize/2] ^= 0xFF
	os.WriteFile(repo.WALSegmentPath(s.repo, 1, 0x11, segSize), data, 0o600)
	if _, _, err := a.Continuity(1, s.points[0].StartLSN); err == nil {
		t.Error("continuity over a damaged segment")
	}
}

func TestRecoverySettings(t *testing.T) {
	got := RecoverySettings("/usr/bin/combinefs", []string{"--repo", "/srv/my repo"}, Target{Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), HasTime: true}, 1, "promote")
	for _, want := range []string{
		`restore_command = '/usr/bin/combinefs wal-get --repo ''/srv/my repo'' %f %p'`,
		`recovery_target_time = '2026-01-02 03:04:05.000006+00'`,
		`recovery_target_action = 'promote'`,
		`recovery_target_timeline = '1'`,
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("settings lack %s:\n%s", want, got)
		}
	}
	s3 := RecoverySettings("/usr/bin/combinefs", []string{"--repo", "s3://b/p", "--s3-endpoint", "http://127.0.0.1:8333"}, Target{Name: "rp"}, 2, "pause")
	if want := `restore_command = '/usr/bin/combinefs wal-get --repo ''s3://b/p'' --s3-endpoint ''http://127.0.0.1:8333'' %f %p'`; !strings.Contains(s3, want+"\n") {
		t.Errorf("settings lack %s:\n%s", want, s3)
	}
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := repo.LockWALArchive(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.LockWALArchive(dir); err == nil || !strings.Contains(err.Error(), "another combinefs archive") {
		t.Errorf("second lock: %v", err)
	}
	unlock()
	unlock2, err := repo.LockWALArchive(dir)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}
