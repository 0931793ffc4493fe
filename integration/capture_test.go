package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runCapture runs combinefs with args inside the root as the server user,
// the way pg_basebackup is run, and returns its combined output.
func runCapture(t *testing.T, e *Env, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := e.Command(context.Background(), false, e.CombinefsPath(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// mustCapture is runCapture that fails the test on error.
func mustCapture(t *testing.T, e *Env, args ...string) string {
	t.Helper()
	out, err := runCapture(t, e, args...)
	if err != nil {
		t.Fatalf("combinefs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// connArgs are the connection flags that reach c.
func connArgs(c *Cluster) []string {
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", c.User}
}

// startLoad runs pgbench against c until stop is called.
func startLoad(t *testing.T, c *Cluster) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := c.Command(ctx, false, c.Tool("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port),
		"-c", "4", "-j", "2", "-T", "3600", "-n", "postgres")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		cmd.Wait()
	}
	t.Cleanup(stop)
	// Let it get going, so that backups really run under load.
	time.Sleep(500 * time.Millisecond)
	if cmd.ProcessState != nil {
		t.Fatalf("pgbench exited at once:\n%s", out.String())
	}
	return stop
}

// pgbenchConsistent is true on a server whose pgbench tables hold together:
// every transaction moves the same delta through accounts, tellers and
// branches and logs it in history, so a transaction-consistent copy has
// equal sums.
const pgbenchConsistent = `SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches)
   AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(tbalance) FROM pgbench_tellers)
   AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)`

// TestCaptureRepoUnderLoad takes a full and two incremental backups into a
// repository while pgbench runs, and checks that each is a backup
// pg_verifybackup accepts, that list sees one intact chain, and that
// pg_combinebackup (and flatten, byte for byte) of the chain gives a data
// directory a server starts on, with the data of the last point.
func TestCaptureRepoUnderLoad(t *testing.T) {
	e := Provision(t)
	c := e.InitCluster(t, ClusterOptions{})
	dir := e.TempDir(t)
	c.Pgbench(t, "-i", "-q", "-s", "10", "postgres")
	ts := path.Join(dir, "ts1")
	e.MkdirAll(t, ts)
	c.Psql(t, "postgres", fmt.Sprintf(`
CREATE TABLESPACE ts1 LOCATION %s;
CREATE TABLE ts_tab (id int PRIMARY KEY, v text) TABLESPACE ts1;
INSERT INTO ts_tab SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE TABLE marker (point int);`, sqlString(ts)))
	repo := path.Join(dir, "repo")

	stop := startLoad(t, c)
	var names []string
	for i := 0; i < 3; i++ {
		c.Psql(t, "postgres", fmt.Sprintf("INSERT INTO marker VALUES (%d); UPDATE ts_tab SET v = 'point %d' WHERE id %% 100 = %d", i, i, i))
		if i > 0 {
			c.WaitForWALSummary(t)
		}
		args := append([]string{"capture", "--repo", repo, "-c", "fast", "--progress=false"}, connArgs(c)...)
		t0 := time.Now()
		out := mustCapture(t, e, args...)
		t.Logf("capture %d: %v: %s", i, time.Since(t0).Round(time.Millisecond), strings.TrimSpace(out))
		m := regexp.MustCompile(`backup ([0-9_-]+-(FULL|INCREMENTAL)) complete`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("capture printed no backup name:\n%s", out)
		}
		if want := map[bool]string{true: "FULL", false: "INCREMENTAL"}[i == 0]; m[2] != want {
			t.Fatalf("backup %d is %s, want %s", i, m[2], want)
		}
		names = append(names, m[1])
		e.VerifyBackup(t, path.Join(repo, m[1]))
	}
	stop()

	list := mustCapture(t, e, "list", "--repo", repo)
	t.Logf("combinefs list:\n%s", list)
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 4 {
		t.Fatalf("list printed %d lines, want a header and 3 points", len(lines))
	}
	for i, name := range names {
		f := strings.Fields(lines[i+1])
		parent := "-"
		if i > 0 {
			parent = names[i-1]
		}
		if f[0] != name || f[2] != parent || f[len(f)-1] != "intact" {
			t.Errorf("list line %q, want %s with parent %s, intact", lines[i+1], name, parent)
		}
	}

	// The backups keep their tablespace inside (in place), so no -T is needed.
	if fi, err := os.Lstat(e.Host(path.Join(repo, names[2], "pg_tblspc"))); err != nil || !fi.IsDir() {
		t.Fatal("no pg_tblspc in the last backup")
	}
	chain := []string{path.Join(repo, names[0]), path.Join(repo, names[1]), path.Join(repo, names[2])}
	combined := path.Join(dir, "combined")
	e.CombineBackup(t, combined, chain)
	flat := path.Join(dir, "flattened")
	if out, err := e.Combinefs(context.Background(), append([]string{"flatten", "-o", flat}, chain...)...).CombinedOutput(); err != nil {
		t.Fatalf("combinefs flatten: %v\n%s", err, out)
	}
	if d := TreeDiff(e.Host(combined), e.Host(flat), nil, "backup_manifest"); d != "" {
		t.Errorf("combinefs flatten differs from pg_combinebackup:\n%s", d)
	}

	// The tablespace is an in-place one (a directory in pg_tblspc), which
	// recovery accepts only with allow_in_place_tablespaces; once recovered,
	// the server runs without it.
	srv := e.StartServer(t, combined, ServerOptions{FixOwnership: true, Settings: map[string]string{"allow_in_place_tablespaces": "on"}})
	if got := srv.Psql(t, "postgres", "SELECT string_agg(point::text, ',' ORDER BY point) FROM marker"); got != "0,1,2" {
		t.Errorf("restored marker rows %q, want 0,1,2", got)
	}
	if got := srv.Psql(t, "postgres", pgbenchConsistent); got != "t" {
		t.Errorf("restored pgbench tables are not consistent")
	}
	if got := srv.Psql(t, "postgres", "SELECT count(*), count(*) FILTER (WHERE v = 'point 2') FROM ts_tab"); got != "20000|200" {
		t.Errorf("restored tablespace table: %s, want 20000|200", got)
	}
	srv.Psql(t, "postgres", "CREATE EXTENSION IF NOT EXISTS amcheck; SELECT bt_index_check(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence = 'p'")

	// A damaged backup makes list fail and name it, and the backup after it.
	m := e.Host(path.Join(repo, names[1], "backup_manifest"))
	if err := os.Rename(m, m+".moved"); err != nil {
		t.Fatal(err)
	}
	out, err := runCapture(t, e, "list", "--repo", repo)
	t.Logf("combinefs list, %s damaged:\n%s", names[1], out)
	if err == nil {
		t.Error("list succeeded on a repository with a damaged backup")
	}
	for i, want := range []string{"intact", "BROKEN: not a complete backup: backup_manifest", "BROKEN: its parent " + names[1] + " is not usable"} {
		if !strings.Contains(out, names[i]) || !regexp.MustCompile(regexp.QuoteMeta(names[i])+`\s.*`+regexp.QuoteMeta(want)).MatchString(out) {
			t.Errorf("list does not show %s as %q", names[i], want)
		}
	}
	if !strings.Contains(out, "2 of 3 backups cannot be restored") {
		t.Errorf("list did not sum up the damage")
	}
	os.Rename(m+".moved", m)
}

// relationFiles lists the files of a data directory outside pg_wal, with
// their sizes, for comparing two restores of the same moment.
func relationFiles(t *testing.T, root string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && (rel == "pg_wal" || rel == "pg_tblspc") {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() && (strings.HasPrefix(rel, "base/") || strings.HasPrefix(rel, "global/")) && !strings.HasPrefix(filepath.Base(rel), "pg_") {
			fi, _ := d.Info()
			m[rel] = fi.Size()
		}
		return nil
	})
	return m
}

// TestCaptureMatchesPgBasebackup takes, at the same moments (nothing
// changes between the two), a full and an incremental backup with combinefs
// capture (-D, -i, -T) and with pg_basebackup, combines each chain with
// pg_combinebackup, and checks that servers started on both results return
// exactly what the live server did at that moment, from the same relation
// files. It logs the times of both tools.
func TestCaptureMatchesPgBasebackup(t *testing.T) {
	e := Provision(t)
	c := e.InitCluster(t, ClusterOptions{})
	dir := e.TempDir(t)
	c.Pgbench(t, "-i", "-q", "-s", "20", "postgres")
	ts := path.Join(dir, "ts-live")
	e.MkdirAll(t, ts)
	c.Psql(t, "postgres", fmt.Sprintf(`
CREATE TABLESPACE ts1 LOCATION %s;
CREATE TABLE ts_tab TABLESPACE ts1 AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g;`, sqlString(ts)))

	type backup struct{ dir, ts string }
	take := func(tool, name, prior string) backup {
		b := backup{dir: path.Join(dir, name), ts: path.Join(dir, name+"-ts")}
		var d time.Duration
		if tool == "capture" {
			args := append([]string{"capture", "-D", b.dir, "-c", "fast", "-T", ts + "=" + b.ts, "--progress=false"}, connArgs(c)...)
			if prior != "" {
				args = append(args, "-i", path.Join(prior, "backup_manifest"))
			}
			t0 := time.Now()
			mustCapture(t, e, args...)
			d = time.Since(t0)
		} else {
			manifest := ""
			if prior != "" {
				manifest = path.Join(prior, "backup_manifest")
			}
			t0 := time.Now()
			c.BaseBackup(t, b.dir, manifest, "-T", ts+"="+b.ts)
			d = time.Since(t0)
		}
		t.Logf("%s %s: %v", tool, name, d.Round(time.Millisecond))
		e.VerifyBackup(t, b.dir)
		return b
	}

	var snaps []Snapshot
	var ours, theirs []backup
	for i := 0; i < 2; i++ {
		if i > 0 {
			c.Pgbench(t, "-T", "3", "-c", "2", "-j", "2", "postgres")
			c.Psql(t, "postgres", "UPDATE ts_tab SET v = 'changed' WHERE id % 7 = 0")
			c.WaitForWALSummary(t)
		}
		snaps = append(snaps, c.Snapshot(t))
		priorOurs, priorTheirs := "", ""
		if i > 0 {
			priorOurs, priorTheirs = ours[i-1].dir, theirs[i-1].dir
		}
		name := backupName(i)
		ours = append(ours, take("capture", "ours-"+name, priorOurs))
		theirs = append(theirs, take("pg_basebackup", "theirs-"+name, priorTheirs))
		if fi, err := os.Lstat(e.Host(path.Join(ours[i].dir, "pg_tblspc"))); err != nil || !fi.IsDir() {
			t.Fatalf("no pg_tblspc in %s", ours[i].dir)
		}
	}

	combine := func(bs []backup, out string) {
		var inputs []string
		for _, b := range bs {
			inputs = append(inputs, b.dir)
		}
		e.CombineBackup(t, out, inputs, "-T", bs[len(bs)-1].ts+"="+out+"-ts")
	}
	for k := range ours {
		outOurs, outTheirs := path.Join(dir, fmt.Sprintf("combined-ours-%d", k)), path.Join(dir, fmt.Sprintf("combined-theirs-%d", k))
		combine(ours[:k+1], outOurs)
		combine(theirs[:k+1], outTheirs)
		fo, ft := relationFiles(t, e.Host(outOurs)), relationFiles(t, e.Host(outTheirs))
		var diffs []string
		for f, n := range ft {
			if m, ok := fo[f]; !ok {
				diffs = append(diffs, f+": missing from ours")
			} else if m != n {
				diffs = append(diffs, fmt.Sprintf("%s: %d bytes, pg_basebackup's %d", f, m, n))
			}
		}
		for f := range fo {
			if _, ok := ft[f]; !ok {
				diffs = append(diffs, f+": only in ours")
			}
		}
		if len(diffs) > 0 {
			sort.Strings(diffs)
			t.Errorf("point %d: relation files differ from pg_basebackup's:\n%s", k, strings.Join(diffs, "\n"))
		}
		for _, out := range []string{outOurs, outTheirs} {
			srv := e.StartServer(t, out, ServerOptions{FixOwnership: true})
			if d := snaps[k].Diff(srv.Snapshot(t)); d != "" {
				t.Errorf("point %d restored from %s differs from the live server:\n%s", k, out, d)
			}
			srv.Stop(t, "fast")
		}
	}
}

// captureFails runs a capture that must fail and checks that it says why
// and leaves nothing behind in dir but the entries in keep.
func captureFails(t *testing.T, e *Env, dir string, keep []string, want string, args ...string) string {
	t.Helper()
	out, err := runCapture(t, e, args...)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("combinefs %s: %v, want exit status 1\n%s", strings.Join(args, " "), err, out)
	}
	if !strings.Contains(out, want) {
		t.Errorf("combinefs %s said %q, want it to mention %q", strings.Join(args, " "), out, want)
	}
	if n := strings.Count(strings.TrimSpace(out), "\n"); n > 0 {
		t.Errorf("error is %d lines, want one:\n%s", n+1, out)
	}
	checkLeftovers(t, e, dir, keep)
	return out
}

// checkLeftovers fails if dir holds anything but keep.
func checkLeftovers(t *testing.T, e *Env, dir string, keep []string) {
	t.Helper()
	entries, err := os.ReadDir(e.Host(dir))
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if !slices.Contains(keep, en.Name()) {
			t.Errorf("%s left in %s", en.Name(), dir)
		}
	}
}

// TestCaptureErrors checks the failures a user meets: a server without
// summarize_wal, WAL summaries that do not reach back to the prior backup,
// a prior manifest from another cluster, a connection killed mid-backup, an
// interrupt. Each ends with one clear line, exit status 1 (130 for the
// interrupt), and no backup directory.
func TestCaptureErrors(t *testing.T) {
	e := Provision(t)
	dir := e.TempDir(t)
	off := e.InitCluster(t, ClusterOptions{Dir: path.Join(dir, "off"), Settings: map[string]string{"summarize_wal": "off"}})
	on := e.InitCluster(t, ClusterOptions{Dir: path.Join(dir, "on")})
	on.Pgbench(t, "-i", "-q", "-s", "5", "postgres")
	out := path.Join(dir, "out")
	e.MkdirAll(t, out)

	offFull := path.Join(out, "off-full")
	mustCapture(t, e, append([]string{"capture", "-D", offFull, "-c", "fast", "--progress=false"}, connArgs(off)...)...)
	onFull := path.Join(out, "on-full")
	mustCapture(t, e, append([]string{"capture", "-D", onFull, "-c", "fast", "--progress=false"}, connArgs(on)...)...)
	keep := []string{"off-full", "on-full"}

	t.Run("summarize_wal off", func(t *testing.T) {
		captureFails(t, e, out, keep, "summarize_wal = off",
			append([]string{"capture", "-D", path.Join(out, "x"), "-i", path.Join(offFull, "backup_manifest"), "--progress=false"}, connArgs(off)...)...)
	})
	t.Run("prior manifest of another cluster", func(t *testing.T) {
		captureFails(t, e, out, keep, "another cluster",
			append([]string{"capture", "-D", path.Join(out, "x"), "-i", path.Join(offFull, "backup_manifest"), "--progress=false"}, connArgs(on)...)...)
	})
	t.Run("repository of another cluster", func(t *testing.T) {
		repo := path.Join(out, "repo")
		mustCapture(t, e, append([]string{"capture", "--repo", repo, "-c", "fast", "--progress=false"}, connArgs(off)...)...)
		captureFails(t, e, out, append(keep, "repo"), "another cluster",
			append([]string{"capture", "--repo", repo, "--progress=false"}, connArgs(on)...)...)
		entries, _ := os.ReadDir(e.Host(repo))
		n := 0
		for _, en := range entries {
			if !strings.HasPrefix(en.Name(), ".") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("repository holds %d backups after a refused capture, want 1", n)
		}
		os.RemoveAll(e.Host(repo))
	})
	t.Run("missing WAL summaries", func(t *testing.T) {
		// Summaries start when summarize_wal is switched on, from the oldest
		// WAL still there: once the WAL since the full backup (taken while it
		// was off) is recycled, no summaries can cover that time.
		for i := 0; i < 3; i++ {
			off.Psql(t, "postgres", fmt.Sprintf("CREATE TABLE churn%d AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal(); CHECKPOINT;", i))
		}
		off.Psql(t, "postgres", "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();")
		time.Sleep(time.Second)
		off.Pgbench(t, "-i", "-q", "-s", "1", "postgres")
		off.WaitForWALSummary(t)
		captureFails(t, e, out, keep, "WAL summaries",
			append([]string{"capture", "-D", path.Join(out, "x"), "-c", "fast", "-i", path.Join(offFull, "backup_manifest"), "--progress=false"}, connArgs(off)...)...)
	})
	t.Run("connection killed", func(t *testing.T) {
		done := make(chan string)
		go func() {
			// --max-rate 32 kB/s: the backup takes minutes, time enough to kill it.
			o, _ := runCapture(t, e, append([]string{"capture", "-D", path.Join(out, "x"), "-c", "fast", "-r", "32", "--progress=false"}, connArgs(on)...)...)
			done <- o
		}()
		deadline := time.Now().Add(30 * time.Second)
		for {
			n := on.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND query LIKE 'BASE_BACKUP%'")
			if n == "1" {
				break
			}
			select {
			case o := <-done:
				t.Fatalf("capture ended before it could be killed:\n%s", o)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the capture never started its BASE_BACKUP")
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(time.Second) // well into the data
		on.Psql(t, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender' AND query LIKE 'BASE_BACKUP%'")
		var o string
		select {
		case o = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("capture did not end after its connection was killed")
		}
		if !strings.Contains(o, "terminating connection") && !strings.Contains(o, "lost connection") {
			t.Errorf("capture said %q, want it to report the lost connection", o)
		}
		if strings.Count(strings.TrimSpace(o), "\n") > 0 {
			t.Errorf("error is more than one line:\n%s", o)
		}
		checkLeftovers(t, e, out, keep)
	})
	t.Run("interrupted", func(t *testing.T) {
		var buf bytes.Buffer
		cmd := e.Command(context.Background(), false, e.CombinefsPath(t),
			append([]string{"capture", "-D", path.Join(out, "x"), "-c", "fast", "-r", "32", "--progress=false"}, connArgs(on)...)...)
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		cmd.Process.Signal(os.Interrupt)
		err := cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 130 {
			t.Errorf("interrupted capture: %v, want exit status 130\n%s", err, buf.String())
		}
		if !strings.Contains(buf.String(), "interrupted") {
			t.Errorf("interrupted capture said %q", buf.String())
		}
		checkLeftovers(t, e, out, keep)
		// The server is soon left without a running backup (a throttled
		// walsender notices the closed connection when it next sends).
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			n := on.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_progress_basebackup")
			if n == "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s base backups still running on the server 15s after the interrupt", n)
				break
			}
		}
	})
}

// TestCaptureFetchWAL takes a full and an incremental backup with the WAL
// in the backup stream (-X fetch) instead of a second connection, and
// restores the chain.
func TestCaptureFetchWAL(t *testing.T) {
	e := Provision(t)
	c := e.InitCluster(t, ClusterOptions{})
	dir := e.TempDir(t)
	c.Pgbench(t, "-i", "-q", "-s", "2", "postgres")
	full, inc := path.Join(dir, "full"), path.Join(dir, "inc")
	mustCapture(t, e, append([]string{"capture", "-D", full, "-X", "fetch", "-c", "fast", "--progress=false"}, connArgs(c)...)...)
	c.Pgbench(t, "-T", "2", "-n", "postgres")
	c.WaitForWALSummary(t)
	want := c.Snapshot(t)
	mustCapture(t, e, append([]string{"capture", "-D", inc, "-X", "fetch", "-c", "fast", "-i", path.Join(full, "backup_manifest"), "--progress=false"}, connArgs(c)...)...)
	for _, b := range []string{full, inc} {
		e.VerifyBackup(t, b)
		if _, err := os.Stat(e.Host(path.Join(b, "pg_wal", "archive_status"))); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	out := path.Join(dir, "combined")
	e.CombineBackup(t, out, []string{full, inc})
	srv := e.StartServer(t, out, ServerOptions{FixOwnership: true})
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("restored fetch-mode chain differs:\n%s", d)
	}
}
