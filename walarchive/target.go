package walarchive

import (
	"fmt"
	"strings"
	"time"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/repo"
)

// Target is a recovery target: exactly one of its kinds is set.
type Target struct {
	Time    time.Time
	HasTime bool
	LSN     format.LSN
	HasLSN  bool
	XID     uint32
	HasXID  bool
	Name    string
	TLI     uint32 // 0: the newest timeline with a window
}

func (t Target) String() string {
	switch {
	case t.HasTime:
		return "recovery target time " + FormatTime(t.Time)
	case t.HasLSN:
		return "recovery target LSN " + t.LSN.String()
	case t.HasXID:
		return fmt.Sprintf("recovery target transaction %d", t.XID)
	}
	return fmt.Sprintf("recovery target name %q", t.Name)
}

// Choose picks the point to recover to t from: the newest point whose
// consistent point comes before where recovery stops, which it finds the
// way recovery does (recoveryStopsBefore/After with
// recovery_target_inclusive on):
//   - an LSN: the stop is at the LSN itself;
//   - a time: at the first commit or abort after the time;
//   - a transaction: at its commit or abort;
//   - a name: at the first restore point of that name.
//
// The last three read the archive's WAL from the window's oldest point up
// to the record. A target that no window holds is an error naming the
// windows, so nothing is mounted for a recovery that would fail. It
// returns the timeline recovery should follow.
func (a *Archive) Choose(t Target) (*repo.Point, uint32, error) {
	windows, err := a.Windows()
	if err != nil {
		return nil, 0, err
	}
	tli := t.TLI
	if tli == 0 {
		for _, w := range windows {
			tli = max(tli, w.TLI)
		}
	}
	var ws []Window
	for _, w := range windows {
		if w.TLI == tli {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return nil, 0, fmt.Errorf("%s: the archive of %s has no recoverable window on timeline %d (see combinefs list --repo %s)", t, a.RepoDir, tli, a.RepoDir)
	}
	for _, w := range ws {
		stop, ok, err := a.stopAt(t, w)
		if err != nil {
			return nil, 0, err
		}
		if !ok || stop < w.Start {
			continue
		}
		best := w.Point
		for _, p := range a.Points {
			if p.StartTLI == w.TLI && p.EndLSN <= stop && p.EndLSN >= w.Start {
				best = p
			}
		}
		return best, tli, nil
	}
	var desc []string
	for _, w := range ws {
		desc = append(desc, w.String())
	}
	return nil, 0, fmt.Errorf("%s is outside what the archive can recover: %s", t, strings.Join(desc, "; "))
}

// stopAt is where recovery to t stops within window w; ok is false when
// it would not stop inside the window.
func (a *Archive) stopAt(t Target, w Window) (format.LSN, bool, error) {
	if t.HasLSN {
		return t.LSN, t.LSN >= w.Start && t.LSN < w.End, nil
	}
	if t.HasTime && t.Time.Before(w.StartTime) {
		return 0, false, nil
	}
	return a.scan(w.TLI, w.Point.StartLSN, w.End, func(_ format.LSN, ev format.WALEvent) bool {
		switch {
		case t.HasTime:
			return (ev.Kind == format.WALCommit || ev.Kind == format.WALAbort) && ev.Time.After(t.Time)
		case t.HasXID:
			return (ev.Kind == format.WALCommit || ev.Kind == format.WALAbort) && ev.XID == t.XID
		}
		return ev.Kind == format.WALRestorePoint && ev.Name == t.Name
	})
}

// RecoverySettings are the lines for postgresql.auto.conf that make a
// server recover to t on timeline tli with wal-get as restore_command
// (bin is the combinefs executable, getArgs wal-get's flags: --repo and
// what reaching the repository takes), then take action.
func RecoverySettings(bin string, getArgs []string, t Target, tli uint32, action string) string {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	var b strings.Builder
	b.WriteString("# point-in-time recovery set up by combinefs mount\n")
	cmd := []string{shellQuote(bin), "wal-get"}
	for _, a := range getArgs {
		cmd = append(cmd, shellQuote(a))
	}
	fmt.Fprintf(&b, "restore_command = %s\n", q(strings.Join(cmd, " ")+" %f %p"))
	switch {
	case t.HasTime:
		fmt.Fprintf(&b, "recovery_target_time = %s\n", q(t.Time.UTC().Format("2006-01-02 15:04:05.999999+00")))
	case t.HasLSN:
		fmt.Fprintf(&b, "recovery_target_lsn = %s\n", q(t.LSN.String()))
	case t.HasXID:
		fmt.Fprintf(&b, "recovery_target_xid = %s\n", q(fmt.Sprint(t.XID)))
	default:
		fmt.Fprintf(&b, "recovery_target_name = %s\n", q(t.Name))
	}
	fmt.Fprintf(&b, "recovery_target_action = %s\n", q(action))
	fmt.Fprintf(&b, "recovery_target_timeline = %s\n", q(fmt.Sprint(tli)))
	return b.String()
}

// shellQuote quotes s for the shell restore_command runs in, unless it
// needs none.
func shellQuote(s string) string {
	if strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
