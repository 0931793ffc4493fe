package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/mountctl"
)

// The WAL archive (combinefs archive, wal-get) and point-in-time recovery
// on a mount (mount --target-*), against real servers. Clusters use 1 MB
// WAL segments so that segments complete, and get archived whole, quickly.

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// archiveProc is a running combinefs archive, as the server user (so the
// server's restore_command can read what it writes).
type archiveProc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func startArchive(t *testing.T, e *Env, c *Cluster, repo string, env []string, extra ...string) *archiveProc {
	t.Helper()
	args := append(append([]string{"archive", "--repo", repo, "-s", "1"}, connArgs(c)...), extra...)
	cmd := e.Command(context.Background(), false, e.CombinefsPath(t), args...)
	cmd.Env = append(cmd.Env, env...)
	a := &archiveProc{cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = a.out, a.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("--- combinefs archive %s ---\n%s", strings.Join(args, " "), a.out.String())
		}
	})
	return a
}

// wait waits for the archiver to exit and returns its exit status (-1 for
// a signal).
func (a *archiveProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(d):
		t.Fatalf("combinefs archive still runs after %s:\n%s", d, a.out.String())
	}
	return a.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM and requires exit status 0.
func (a *archiveProc) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	if code := a.wait(t, time.Minute); code != 0 {
		t.Fatalf("combinefs archive exited %d on SIGTERM:\n%s", code, a.out.String())
	}
}

// switchAndWait ends the current segment on c and waits until the archive
// has it whole; it returns the LSN of the switch.
func switchAndWait(t *testing.T, c *Cluster, repo string, a *archiveProc) format.LSN {
	t.Helper()
	return switchAndWaitFor(t, c, a, func(tli uint32, seg string) bool {
		_, err := os.Stat(c.Host(path.Join(repo, "wal", fmt.Sprintf("%08X", tli), seg)))
		return err == nil
	})
}

// switchAndWaitFor is switchAndWait with archived telling whether the
// archive has segment seg of timeline tli whole.
func switchAndWaitFor(t *testing.T, c *Cluster, a *archiveProc, archived func(tli uint32, seg string) bool) format.LSN {
	t.Helper()
	lsn := mustLSN(t, c.Psql(t, "postgres", "SELECT pg_switch_wal()"))
	tli, _ := strconv.Atoi(c.Psql(t, "postgres", "SELECT timeline_id FROM pg_control_checkpoint()"))
	seg := format.WALSegmentName(uint32(tli), uint64(lsn)/(1<<20), 1<<20)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if archived(uint32(tli), seg) {
			return lsn
		}
		if time.Now().After(deadline) {
			t.Fatalf("segment %s (switch at %s) not archived after 2 minutes:\n%s", seg, lsn, a.out.String())
		}
		select {
		case <-a.done:
			t.Fatalf("combinefs archive exited:\n%s", a.out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func mustLSN(t *testing.T, s string) format.LSN {
	t.Helper()
	l, ok := format.ParseLSN(strings.TrimSpace(s))
	if !ok {
		t.Fatalf("not an LSN: %q", s)
	}
	return l
}

// startRateLoad runs pgbench at a steady rate against c until stopped, so
// WAL flows while the test works.
func startRateLoad(t *testing.T, c *Cluster, rate string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-c", "2", "-j", "1", "-T", "3600", "-n"}
	if rate != "" {
		args = append(args, "-R", rate)
	}
	cmd := c.Command(ctx, false, c.Tool("pgbench"), append(args, "postgres")...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); cmd.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// captureAs takes a backup into repo as the server user and returns its name.
func captureAs(t *testing.T, e *Env, c *Cluster, repo string, extra ...string) string {
	t.Helper()
	c.WaitForWALSummary(t)
	args := append(append([]string{"capture", "--repo", repo, "-c", "fast", "--progress=false"}, connArgs(c)...), extra...)
	out, err := e.Command(context.Background(), false, e.CombinefsPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("combinefs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := regexp.MustCompile(`backup ([0-9_-]+-(FULL|INCREMENTAL)) complete`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("capture printed no backup name:\n%s", out)
	}
	return string(m[1])
}

// pitrCase is one recovery target and what a server recovered to it must
// show.
type pitrCase struct {
	name   string
	flags  []string
	point  string // the point mount must pick
	lastID int    // the last marks row committed before the target
}

// recoverOnMount mounts the repository at tc's target (a new upper, mount
// point mnt<i> under dir), checks the mount chose tc.point, starts a server
// that pauses at the target and checks it sees exactly the marks up to
// tc.lastID. With walDir, restore_command's segments and the server's
// WAL go to the WAL directory, none into the upper.
func recoverOnMount(t *testing.T, e *Env, repo, dir string, i int, tc pitrCase, walDir bool) {
	private := e.PrivateDir(t)
	upper, wal := path.Join(private, "upper"), path.Join(private, "wal")
	mp := cowMountPoint(t, e, dir, fmt.Sprintf("mnt%d", i))
	flags := append([]string{"--repo", repo}, tc.flags...)
	if walDir {
		flags = append(flags, "--waldir", wal)
	}
	m := mountCoWFlags(t, e, flags, upper, mp)
	logText, _ := os.ReadFile(e.Host(m.log))
	if !strings.Contains(string(logText), path.Join(repo, tc.point)+" ") {
		t.Errorf("mount picked another point than %s:\n%s", tc.point, logText)
	}
	srv := e.StartServer(t, mp, ServerOptions{Settings: cowServerSettings})
	waitPaused(t, srv)
	if got, want := srv.Psql(t, "postgres", "SELECT coalesce(max(id), 0), count(*) FROM marks"), fmt.Sprintf("%d|%d", tc.lastID, tc.lastID); got != want {
		t.Errorf("recovered to %v: marks max|count %s, want %s", tc.flags, got, want)
	}
	if walDir {
		checkWALLink(t, e, mp, wal)
		if fi, err := os.Lstat(e.Host(path.Join(upper, "tree", "pg_wal"))); err != nil || fi.Mode().IsDir() {
			t.Errorf("upper tree/pg_wal is not the symlink (%v)", err)
		}
		if ents, err := os.ReadDir(e.Host(wal)); err != nil || len(ents) < 2 {
			t.Errorf("the WAL directory holds %d entries (%v)", len(ents), err)
		}
	}
	srv.Stop(t, "fast")
	mustCombinefs(t, e, "umount", mp)
}

func TestArchivePITR(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	c := e.InitCluster(t, ClusterOptions{InitdbArgs: []string{"--wal-segsize=1"}, Settings: map[string]string{"max_prepared_transactions": "2"}})
	dir := e.TempDir(t)
	repo := path.Join(dir, "repo")
	c.Pgbench(t, "-i", "-q", "-s", "1", "postgres")
	c.Psql(t, "postgres", "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	c.Psql(t, "postgres", "CREATE TABLE doomed (x int); INSERT INTO doomed VALUES (1)")
	arch := startArchive(t, e, c, repo, nil, "--slot", "combinefs_archive", "--create-slot")
	stopLoad := startRateLoad(t, c, "200")

	next := 1
	insert := func(n int) int {
		for i := 0; i < n; i++ {
			c.Psql(t, "postgres", fmt.Sprintf("INSERT INTO marks (id) VALUES (%d)", next))
			next++
		}
		return next - 1
	}
	now := func() time.Time {
		s := c.Psql(t, "postgres", `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`)
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the next commit is after it
		return tm
	}
	ts := func(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) }

	insert(3)
	before := now()
	insert(1)
	b1 := captureAs(t, e, c, repo)
	idBetween := insert(3)
	tBetween := now()
	idRP := insert(3)
	c.Psql(t, "postgres", "SELECT pg_create_restore_point('before_b2')")
	insert(2)
	b2 := captureAs(t, e, c, repo)
	insert(2)
	xidOut := c.Psql(t, "postgres", fmt.Sprintf("BEGIN; INSERT INTO marks (id) VALUES (%d); SELECT pg_current_xact_id(); COMMIT;", next))
	idXID := next
	next++
	insert(2)
	// A prepared transaction that drops a table: its COMMIT PREPARED record
	// carries relations, dropped statistics and invalidations before the
	// prepared xid, which recovery_target_xid names (not the xid of the
	// session that commits it).
	preparedOut := c.Psql(t, "postgres", fmt.Sprintf("BEGIN; INSERT INTO marks (id) VALUES (%d); DROP TABLE doomed; SELECT pg_current_xact_id(); PREPARE TRANSACTION 'pitr_2pc';", next))
	idPrepared := next
	next++
	c.Psql(t, "postgres", "COMMIT PREPARED 'pitr_2pc'")
	insert(2)
	b3 := captureAs(t, e, c, repo)
	idAfter := insert(2)
	tAfter := now()
	idLSN := insert(2)
	lsn := c.Psql(t, "postgres", "SELECT pg_current_wal_insert_lsn()")
	insert(2)
	stopLoad()
	switchAndWait(t, c, repo, arch)
	arch.stop(t)

	list := mustCombinefs(t, e, "list", "--repo", repo)
	t.Logf("combinefs list:\n%s", list)
	if !strings.Contains(list, "recoverable") || strings.Contains(list, "missing") {
		t.Errorf("list does not show one recoverable window without gaps:\n%s", list)
	}
	var listed struct {
		WAL struct {
			Windows []struct {
				Timeline uint32 `json:"timeline"`
				Point    string `json:"point"`
				StartLSN string `json:"start_lsn"`
				EndLSN   string `json:"end_lsn"`
			} `json:"windows"`
			Gaps []string `json:"gaps"`
		} `json:"wal"`
	}
	if err := json.Unmarshal([]byte(mustCombinefs(t, e, "list", "--repo", repo, "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	if w := listed.WAL.Windows; len(w) != 1 || w[0].Point != b1 || w[0].Timeline != 1 || len(listed.WAL.Gaps) != 0 {
		t.Errorf("list --json: %+v, want one window on timeline 1 from %s and no gaps", listed.WAL, b1)
	}

	cases := []pitrCase{
		{"time between backups", []string{"--target-time", ts(tBetween)}, b1, idBetween},
		{"restore point", []string{"--target-name", "before_b2"}, b1, idRP},
		{"xid", []string{"--target-xid", strings.TrimSpace(xidOut)}, b2, idXID},
		{"xid of a prepared transaction", []string{"--target-xid", strings.TrimSpace(preparedOut)}, b2, idPrepared},
		{"time after the last backup", []string{"--target-time", ts(tAfter)}, b3, idAfter},
		{"lsn", []string{"--target-lsn", lsn}, b3, idLSN},
	}
	for i, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) { recoverOnMount(t, e, repo, dir, i, tc, false) })
	}
	// Targets on each point again, with the WAL outside the mount
	// (--waldir): the same rows.
	for _, i := range []int{0, 2, 4} {
		tc := cases[i]
		t.Run(strings.ReplaceAll(tc.name, " ", "_")+"_waldir", func(t *testing.T) { recoverOnMount(t, e, repo, dir, len(cases)+i, tc, true) })
	}

	// exec --target-*: the command sees the rows committed before the
	// target, with promote (the default: recovery has ended) and with
	// pause (replay paused there); outside the window, one line and
	// nothing left.
	t.Run("exec", func(t *testing.T) {
		for _, tc := range []struct {
			flags  []string
			lastID int
		}{
			{[]string{"--target-time", ts(tBetween)}, idBetween},
			{[]string{"--target-name", "before_b2", "--target-action", "pause"}, idRP},
		} {
			before := execTempDirs(t, e)
			args := append(append([]string{"--repo", repo}, tc.flags...), "--", "psql", "-XAtc", "SELECT coalesce(max(id), 0), count(*) FROM marks", "postgres")
			if got, want := strings.TrimSpace(execMust(t, e, nil, args...)), fmt.Sprintf("%d|%d", tc.lastID, tc.lastID); got != want {
				t.Errorf("exec %v: marks max|count %s, want %s", tc.flags, got, want)
			}
			execNothingLeft(t, e, before)
		}
		// --keep: the process keeping the server recovers to the target
		// too, and its promoted server takes writes.
		left := execTempDirs(t, e)
		stdout, stderr, code := execRun(t, e, nil, "--keep", "--repo", repo, "--target-name", "before_b2", "--",
			"psql", "-XAtqc", fmt.Sprintf("INSERT INTO marks (id) VALUES (%d); SELECT count(*) FROM marks", next), "postgres")
		if want := strconv.Itoa(idRP + 1); code != 0 || strings.TrimSpace(stdout) != want {
			t.Errorf("exec --keep --target-name: exit %d, count %q, want %s\n%s", code, stdout, want, stderr)
		}
		if m := regexp.MustCompile(`stop:\s+kill (\d+)`).FindStringSubmatch(stderr); m != nil {
			pid, _ := strconv.Atoi(m[1])
			syscall.Kill(pid, syscall.SIGTERM)
			for deadline := time.Now().Add(2 * time.Minute); mountctl.ProcessAlive(pid); time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the process keeping the server (%d) still runs 2 minutes after SIGTERM", pid)
				}
			}
		} else {
			t.Errorf("exec --keep does not say how to stop it:\n%s", stderr)
		}
		execNothingLeft(t, e, left)
		msg, _, code := execFails(t, e, nil, "--repo", repo, "--target-time", ts(before), "--", "true")
		if code != 1 || !strings.Contains(msg, "outside what the archive can recover") {
			t.Errorf("exec to a time before the first backup: exit %d, %q; want exit 1 naming the window", code, msg)
		}
		execNothingLeft(t, e, left)
	})

	// Targets outside the window: refused in one line, nothing mounted.
	for i, flags := range [][]string{
		{"--target-time", ts(before)},
		{"--target-time", ts(time.Now().Add(time.Hour))},
		{"--target-lsn", "FFFF/0"},
		{"--target-name", "no_such_restore_point"},
	} {
		mp := cowMountPoint(t, e, dir, fmt.Sprintf("refused%d", i))
		upper := path.Join(e.PrivateDir(t), "upper")
		args := append(append([]string{"mount", "--daemon", "--cow", upper, "--repo", repo}, flags...), mp)
		out, code := runCombinefs(t, e, args...)
		t.Logf("combinefs %s: exit %d: %s", strings.Join(flags, " "), code, strings.TrimSpace(out))
		if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "outside what the archive can recover") {
			t.Errorf("mount %v: exit %d, output %q; want exit 1 and one line naming the window", flags, code, out)
		}
		if cowIsMounted(e.Host(mp)) {
			t.Errorf("mount %v refused but mounted", flags)
		}
		if _, err := os.Stat(e.Host(upper)); err == nil {
			t.Errorf("mount %v refused but made the upper directory", flags)
		}
	}
}

// waitPaused waits until recovery on srv has reached its target and paused.
func waitPaused(t *testing.T, srv *Cluster) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st, err := srv.Exec("postgres", "SELECT pg_get_wal_replay_pause_state()")
		if err == nil && st == "paused" {
			return
		}
		if time.Now().After(deadline) {
			srv.fatalf(t, "recovery did not pause at the target within 3 minutes (state %q, %v)", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestArchiveResilience runs the archiver under pgbench through a kill -9
// at each phase of writing a segment (a test hook), a kill -9 from outside,
// and a restart of the server, then checks that the archive has no gap and
// that every record in it reads back (combinefs verify --repo, and
// pg_waldump over the archive). A second archiver on the repository and a
// foreign cluster are refused.
func TestArchiveResilience(t *testing.T) {
	e := Provision(t)
	c := e.InitCluster(t, ClusterOptions{InitdbArgs: []string{"--wal-segsize=1"}})
	dir := e.TempDir(t)
	repo := path.Join(dir, "repo")
	c.Pgbench(t, "-i", "-q", "-s", "1", "postgres")
	stopLoad := startRateLoad(t, c, "")

	killArchiveAtPhases(t, e, c, repo, nil)
	captureAs(t, e, c, repo) // after the archive began, so it continues the point

	a := startArchive(t, e, c, repo, nil, "--slot", "arch")
	switchAndWait(t, c, repo, a)
	refuseSecondThenKill(t, e, c, repo, nil, a)
	t.Logf("killed from outside: %s", archiveFiles(t, e, repo))

	a = startArchive(t, e, c, repo, nil, "--slot", "arch")
	switchAndWait(t, c, repo, a)
	c.Restart(t)
	for !strings.Contains(a.out.String(), "reconnecting in") || strings.Count(a.out.String(), "streaming WAL from") < 2 {
		select {
		case <-a.done:
			t.Fatalf("archive exited across the server's restart:\n%s", a.out.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	switchAndWait(t, c, repo, a)
	stopLoad()
	c.Psql(t, "postgres", "CHECKPOINT")
	switchAndWait(t, c, repo, a)
	a.stop(t)
	t.Logf("archive log:\n%s", a.out.String())

	list := mustCombinefs(t, e, "list", "--repo", repo)
	t.Logf("combinefs list:\n%s", list)
	if strings.Contains(list, "gap:") || !strings.Contains(list, "recoverable: timeline 1") {
		t.Errorf("the archive has a gap or no window:\n%s", list)
	}
	out := mustCombinefs(t, e, "verify", "--repo", repo)
	t.Logf("combinefs verify --repo: %s", out)
	if !strings.Contains(out, "WAL archive of timeline 1 is continuous") {
		t.Errorf("verify --repo did not vouch for the archive:\n%s", out)
	}
	// pg_waldump reads every record from the first archived segment to the
	// end of the last one.
	segs := archivedSegments(t, e, repo)
	first, last := segs[0], segs[len(segs)-1]
	start := format.LSN(first * (1 << 20))
	end := format.LSN((last + 1) * (1 << 20))
	wd := e.Command(context.Background(), false, e.Tool("pg_waldump"), "--quiet", "-p", path.Join(repo, "wal", "00000001"),
		"-t", "1", "-s", start.String(), "-e", end.String())
	if b, err := wd.CombinedOutput(); err != nil {
		t.Errorf("pg_waldump over the archive %s to %s: %v\n%s", start, end, err, b)
	}
	if len(segs) != int(last-first+1) {
		t.Errorf("segments %d to %d, but %d files", first, last, len(segs))
	}

	// A foreign cluster is refused at once, in one line.
	other := e.InitCluster(t, ClusterOptions{InitdbArgs: []string{"--wal-segsize=1"}})
	f := startArchive(t, e, other, repo, nil)
	if code := f.wait(t, time.Minute); code != 1 || !strings.Contains(f.out.String(), "system identifier") || strings.Count(strings.TrimSpace(f.out.String()), "\n") != 0 {
		t.Errorf("archive of a foreign cluster: exit %d\n%s", code, f.out.String())
	}
}

// killArchiveAtPhases runs the archiver with the crash hook at each phase
// of writing a segment (creating slot arch) and requires a SIGKILL each time.
func killArchiveAtPhases(t *testing.T, e *Env, c *Cluster, repo string, env []string) {
	t.Helper()
	for _, phase := range []string{"partial", "complete", "renamed"} {
		a := startArchive(t, e, c, repo, append(env, "COMBINEFS_ARCHIVE_CRASH_AT="+phase), "--slot", "arch", "--create-slot")
		if code := a.wait(t, 2*time.Minute); code != -1 || a.cmd.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("archive with the crash hook at %q: exit %d, want SIGKILL\n%s", phase, code, a.out.String())
		}
	}
}

// refuseSecondThenKill checks that a second archiver beside a is refused,
// then kills a (kill -9) while WAL flows.
func refuseSecondThenKill(t *testing.T, e *Env, c *Cluster, repo string, env []string, a *archiveProc) {
	t.Helper()
	second := startArchive(t, e, c, repo, env, "--slot", "arch")
	if code := second.wait(t, time.Minute); code != 1 || !strings.Contains(second.out.String(), "another combinefs archive is running") {
		t.Errorf("a second archiver: exit %d\n%s", code, second.out.String())
	}
	time.Sleep(2 * time.Second) // under load, so the kill lands mid-stream
	a.cmd.Process.Kill()
	a.wait(t, time.Minute)
}

// archivedSegments lists the whole segments of timeline 1, ascending.
func archivedSegments(t *testing.T, e *Env, repo string) []uint64 {
	t.Helper()
	ents, err := os.ReadDir(e.Host(path.Join(repo, "wal", "00000001")))
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, en := range ents {
		if len(en.Name()) == 24 {
			n, err := strconv.ParseUint(en.Name()[8:], 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, n>>32*4096+n&0xFFFFFFFF) // 1 MB segments: 4096 per 4 GB
		}
	}
	return out
}

// archiveFiles names the first and last files of the archive, for the log.
func archiveFiles(t *testing.T, e *Env, repo string) string {
	ents, err := os.ReadDir(e.Host(path.Join(repo, "wal", "00000001")))
	if err != nil || len(ents) == 0 {
		return fmt.Sprintf("no files (%v)", err)
	}
	return fmt.Sprintf("%d files, %s to %s", len(ents), ents[0].Name(), ents[len(ents)-1].Name())
}

// TestArchiveSynchronous: with --synchronous the server counts the archiver
// as a synchronous standby, and a commit that waits for it returns once the
// archive has its WAL flushed.
func TestArchiveSynchronous(t *testing.T) {
	e := Provision(t)
	c := e.InitCluster(t, ClusterOptions{InitdbArgs: []string{"--wal-segsize=1"}})
	dir := e.TempDir(t)
	repo := path.Join(dir, "repo")
	a := startArchive(t, e, c, repo, nil, "--synchronous")
	c.Psql(t, "postgres", "ALTER SYSTEM SET synchronous_standby_names = 'combinefs'; SELECT pg_reload_conf()")
	deadline := time.Now().Add(2 * time.Minute)
	for c.Psql(t, "postgres", "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'combinefs'") != "sync" {
		if time.Now().After(deadline) {
			t.Fatalf("the archiver is not a synchronous standby:\n%s", c.Psql(t, "postgres", "SELECT * FROM pg_stat_replication"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Psql(t, "postgres", "CREATE TABLE t (v int)")
	for i := 0; i < 20; i++ {
		lsn := c.Psql(t, "postgres", fmt.Sprintf("SET synchronous_commit = on; INSERT INTO t VALUES (%d); SELECT pg_current_wal_insert_lsn()", i))
		// The commit returned, so the archiver reported its record flushed.
		if got := c.Psql(t, "postgres", fmt.Sprintf("SELECT flush_lsn >= '%s' FROM pg_stat_replication WHERE application_name = 'combinefs'", lsn)); got != "t" {
			t.Fatalf("commit %d returned before the archiver reported %s flushed", i, lsn)
		}
	}
	// What is reported flushed is in the archive (the segment being
	// received, or a whole one if it just completed).
	flushed := mustLSN(t, c.Psql(t, "postgres", "SELECT flush_lsn FROM pg_stat_replication"))
	seg := path.Join(repo, "wal", "00000001", format.WALSegmentName(1, uint64(flushed-1)/(1<<20), 1<<20))
	_, err1 := os.Stat(e.Host(seg + ".partial"))
	_, err2 := os.Stat(e.Host(seg))
	if err1 != nil && err2 != nil {
		t.Errorf("the segment of the flush position %s is not in the archive: %v", flushed, err1)
	}
	c.Psql(t, "postgres", "ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf()")
	a.stop(t)
}

// TestArchiveTimelines archives from a standby that is then promoted: the
// archiver follows the switch to timeline 2 (its history file, a directory
// of its own), and a mount recovers to a time on each timeline, from a
// point on that timeline.
func TestArchiveTimelines(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	p := e.InitCluster(t, ClusterOptions{InitdbArgs: []string{"--wal-segsize=1"}})
	dir := e.TempDir(t)
	repo := path.Join(dir, "repo")
	p.Pgbench(t, "-i", "-q", "-s", "1", "postgres")
	p.Psql(t, "postgres", "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	sdir := path.Join(dir, "standby")
	p.BaseBackup(t, sdir, "", "-R")
	s := e.StartServer(t, sdir, ServerOptions{FixOwnership: true})
	arch := startArchive(t, e, s, repo, nil)

	next := 1
	insert := func(c *Cluster, n int) int {
		for i := 0; i < n; i++ {
			c.Psql(t, "postgres", fmt.Sprintf("INSERT INTO marks (id) VALUES (%d)", next))
			next++
		}
		return next - 1
	}
	now := func(c *Cluster) time.Time {
		v := c.Psql(t, "postgres", `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`)
		tm, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		return tm
	}
	ts := func(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) }

	insert(p, 2)
	b1 := captureAs(t, e, p, repo)
	id1 := insert(p, 3)
	t1 := now(p)
	insert(p, 3)
	// The standby has everything, and the archive every whole segment of
	// timeline 1 up to here, before the promotion.
	lsn := p.Psql(t, "postgres", "SELECT pg_switch_wal()")
	for s.Psql(t, "postgres", fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'", lsn)) != "t" {
		time.Sleep(50 * time.Millisecond)
	}
	p.Stop(t, "fast")
	s.Psql(t, "postgres", "SELECT pg_promote()")
	for !strings.Contains(arch.out.String(), "timeline 2") {
		select {
		case <-arch.done:
			t.Fatalf("archive exited at the promotion:\n%s", arch.out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	b2 := captureAs(t, e, s, repo, "--full")
	id2 := insert(s, 3)
	t2 := now(s)
	insert(s, 3)
	switchAndWait(t, s, repo, arch)
	arch.stop(t)
	t.Logf("archive log:\n%s", arch.out.String())
	if _, err := os.Stat(e.Host(path.Join(repo, "wal", "00000002", "00000002.history"))); err != nil {
		t.Errorf("timeline 2's history was not archived: %v", err)
	}
	list := mustCombinefs(t, e, "list", "--repo", repo)
	t.Logf("combinefs list:\n%s", list)
	for _, want := range []string{"recoverable: timeline 1 from", "recoverable: timeline 2 from"} {
		if !strings.Contains(list, want) {
			t.Errorf("list lacks %q", want)
		}
	}
	if out := mustCombinefs(t, e, "verify", "--repo", repo); !strings.Contains(out, "WAL archive of timeline 2 is continuous") {
		t.Errorf("verify --repo:\n%s", out)
	}

	for i, tc := range []pitrCase{
		{"timeline 1", []string{"--target-time", ts(t1), "--target-timeline", "1"}, b1, id1},
		{"timeline 2", []string{"--target-time", ts(t2)}, b2, id2},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) { recoverOnMount(t, e, repo, dir, i, tc, false) })
	}
}
