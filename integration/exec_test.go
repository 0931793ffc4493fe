package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/combinefs/combinefs/internal/mountctl"
)

// TestExec runs combinefs exec against a 3-point chain and a repository:
// pg_dump of one table of point 1 restores into a fresh server equal to
// that table at point 1; psql -Atc counts what each point had; SIGTERM and
// SIGINT in the middle of a command, a missing point, a missing PostgreSQL
// and a missing command leave no mount, no server process and no
// temporary directory; --keep leaves a server that answers until killed.
// Also the mount an /etc/fstab line makes (fstabMount).
func TestExec(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	e.CombinefsPath(t)
	ch := BuildChain(t, e, ChainSpec{})

	t.Run("pg_dump", func(t *testing.T) { execDump(t, ch) })
	t.Run("psql", func(t *testing.T) {
		for k := range ch.Backups {
			out := execMust(t, e, nil, append(ch.Upto(k), "--", "psql", "-XAtc", "SELECT count(*) FROM sample_table", "postgres")...)
			if want := strconv.Itoa(k + 1); strings.TrimSpace(out) != want {
				t.Errorf("point %d: psql printed %q, want %s (rows of sample_table at that point)", k, out, want)
			}
		}
	})
	repo := path.Join(e.TempDir(t), "repo") // the fstab subtest mounts it too
	var points []string
	t.Run("repo", func(t *testing.T) { points = execRepo(t, ch, repo) })
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) { execSignal(t, ch, sig) })
	}
	t.Run("kill-9", func(t *testing.T) { execKill9(t, ch) })
	t.Run("failures", func(t *testing.T) { execFailures(t, ch) })
	t.Run("keep", func(t *testing.T) { execKeep(t, ch) })
	t.Run("fstab", func(t *testing.T) { fstabMount(t, ch, repo, points) })
}

// execDump: a custom-format dump of pgbench_accounts of point 1, restored
// into a fresh server, equals that table at point 1 (and not at point 2,
// so the comparison can tell points apart).
func execDump(t *testing.T, ch *Chain) {
	e := ch.Env
	const table = "public.pgbench_accounts"
	want, _ := ch.Snapshots[1].Table("postgres", table)
	if later, _ := ch.Snapshots[2].Table("postgres", table); later == want {
		t.Fatalf("%s is the same at points 1 and 2: the test could not tell them apart", table)
	}
	dir := e.TempDir(t)
	dump := path.Join(dir, "accounts.dump")
	execMust(t, e, nil, append(ch.Upto(1), "--", "pg_dump", "-Fc", "-t", table, "-f", dump, "postgres")...)
	if err := os.Chmod(e.Host(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := e.InitCluster(t, ClusterOptions{})
	e.Run(t, false, e.Tool("pg_restore"), "-h", "127.0.0.1", "-p", strconv.Itoa(fresh.Port), "-d", "postgres", dump)
	got, ok := fresh.Snapshot(t).Table("postgres", table)
	if !ok || got != want {
		t.Fatalf("%s restored from exec's pg_dump of point 1: %+v, want %+v (the table at point 1)", table, got, want)
	}
	t.Logf("%s of point 1: %d rows, restored equal", table, got.Rows)
	execNothingLeft(t, e, nil)
}

// execRepo: --repo DIR --point NAME with points of a repository captured
// from the chain's server (which has sample_table's 3 rows by now).
func execRepo(t *testing.T, ch *Chain, repo string) []string {
	e, c := ch.Env, ch.Cluster
	var names []string
	for i := 0; i < 2; i++ {
		if i > 0 {
			c.Psql(t, "postgres", "INSERT INTO sample_table VALUES (100, 'repository point 1')")
			c.WaitForWALSummary(t)
		}
		out := mustCapture(t, e, append([]string{"capture", "--repo", repo, "-c", "fast", "--progress=false"}, connArgs(c)...)...)
		m := regexp.MustCompile(`backup ([0-9_-]+-(FULL|INCREMENTAL)) complete`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("capture printed no backup name:\n%s", out)
		}
		names = append(names, m[1])
	}
	for i, name := range names {
		out := execMust(t, e, nil, "--repo", repo, "--point", name, "psql", "-XAtc", "SELECT count(*) FROM sample_table", "postgres")
		if want := strconv.Itoa(3 + i); strings.TrimSpace(out) != want {
			t.Errorf("point %s: psql printed %q, want %s", name, out, want)
		}
	}
	// A command's own exit status comes back.
	if _, stderr, code := execRun(t, e, nil, "--repo", repo, "--point", names[1], "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec -- sh -c 'exit 7': exit %d, want 7 (%s)", code, stderr)
	}
	msg, _, code := execFails(t, e, nil, "--repo", repo, "--point", "nosuch", "--", "true")
	if code != 1 || !strings.Contains(msg, "nosuch") {
		t.Errorf("exec of a missing point: exit %d, %q; want exit 1 naming the point", code, msg)
	}
	execNothingLeft(t, e, nil)
	return names
}

// execSignal sends sig to exec while its psql waits for pg_sleep(60): the
// signal reaches psql, exec passes psql's status on and leaves nothing.
func execSignal(t *testing.T, ch *Chain, sig syscall.Signal) {
	e := ch.Env
	before := execTempDirs(t, e)
	var stdout, stderr bytes.Buffer
	cmd := e.Combinefs(context.Background(), append(append([]string{"exec"}, ch.Upto(2)...), "--", "psql", "-Xc", "SELECT pg_sleep(60)", "postgres")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pm, backend := waitForQuery(t, cmd.Process.Pid, "SELECT")
	dirs := execDirsOf(t, e, cmd.Process.Pid)
	if len(dirs) != 1 || !cowIsMounted(filepath.Join(dirs[0], "data")) {
		t.Fatalf("while the command runs: temporary directories %v, want one with data/ mounted", dirs)
	}
	t.Logf("psql runs pg_sleep in backend %d of postmaster %d on %s; sending %v to exec", backend, pm, dirs[0], sig)
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	code := cmd.ProcessState.ExitCode()
	// psql dies of SIGTERM (128+15, as a shell says); on SIGINT it cancels
	// the query and exits 1.
	want := map[syscall.Signal]int{syscall.SIGTERM: 128 + 15, syscall.SIGINT: 1}[sig]
	if code != want {
		t.Errorf("exec after %v: %v, exit %d, want %d (psql's)\nstdout: %s\nstderr: %s", sig, err, code, want, stdout.String(), stderr.String())
	}
	if sig == syscall.SIGINT && !strings.Contains(stderr.String(), "canceling statement due to user request") {
		t.Errorf("psql did not report its query cancelled by the SIGINT:\n%s", stderr.String())
	}
	for _, pid := range []int{pm, backend} {
		if mountctl.ProcessAlive(pid) || GroupAlive(pm) {
			t.Errorf("server process %d is still running after exec ended", pid)
		}
	}
	execNothingLeft(t, e, before)
}

// execKill9: exec killed with SIGKILL mid-command cannot clean up, but its
// server dies with it (parent-death signal), and the next exec removes its
// temporary directory and detaches its dead mount.
func execKill9(t *testing.T, ch *Chain) {
	e := ch.Env
	before := execTempDirs(t, e)
	cmd := e.Combinefs(context.Background(), append(append([]string{"exec"}, ch.Upto(1)...), "--", "psql", "-Xc", "SELECT pg_sleep(60)", "postgres")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pm, backend := waitForQuery(t, cmd.Process.Pid, "SELECT")
	dirs := execDirsOf(t, e, cmd.Process.Pid)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for deadline := time.Now().Add(2 * time.Minute); mountctl.ProcessAlive(pm) || mountctl.ProcessAlive(backend); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server (postmaster %d, backend %d) still runs 2 minutes after exec was killed", pm, backend)
		}
	}
	if len(dirs) != 1 || len(mountsBelow(dirs[0])) != 1 {
		t.Fatalf("after kill -9 of exec: temporary directories %v; want one, with its mount (nothing could remove them)", dirs)
	}
	_, stderr, code := execRun(t, e, nil, append(ch.Upto(1), "--", "true")...)
	t.Logf("the next exec: exit %d: %s", code, strings.TrimSpace(stderr))
	if _, err := os.Stat(dirs[0]); code != 0 || err == nil {
		t.Errorf("the next exec: exit %d, and %s is still there (%v); want it removed", code, dirs[0], err)
	}
	execNothingLeft(t, e, before)
}

// execFailures: a missing PostgreSQL, a missing command and a chain that
// is not one: a one-line error naming it, and nothing left.
func execFailures(t *testing.T, ch *Chain) {
	e := ch.Env
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"PG_BINDIR without postgres", []string{"PG_BINDIR=/nonexistent"}, append(ch.Upto(1), "--", "true"),
			[]string{"PG_BINDIR=/nonexistent", "/nonexistent/postgres"}},
		{"missing command", nil, append(ch.Upto(1), "--", "no-such-program"), []string{`"no-such-program" not found`}},
		{"chain with a gap", nil, []string{ch.Backups[0], ch.Backups[2], "--", "true"}, []string{ch.Backups[2]}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := execTempDirs(t, e)
			msg, _, code := execFails(t, e, tt.env, tt.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("the error does not name %q: %s", w, msg)
				}
			}
			execNothingLeft(t, e, before)
		})
	}
}

// execKeep: --keep runs the command, leaves the server and the mount, says
// how to reach and stop them; they answer, and kill stops all of it.
func execKeep(t *testing.T, ch *Chain) {
	e := ch.Env
	before := execTempDirs(t, e)
	stdout, stderr, code := execRun(t, e, nil, append(append([]string{"--keep"}, ch.Upto(1)...), "--", "psql", "-XAtc", "SELECT count(*) FROM sample_table", "postgres")...)
	if code != 0 || strings.TrimSpace(stdout) != "2" {
		t.Fatalf("exec --keep: exit %d, stdout %q, want 2\n%s", code, stdout, stderr)
	}
	m := regexp.MustCompile(`connect: PGHOST=(\S+) PGPORT=(\d+) PGUSER=(\S+) psql\n\s+stop:\s+kill (\d+)`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("exec --keep does not say how to connect and stop:\n%s", stderr)
	}
	pid, _ := strconv.Atoi(m[4])
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	dirs := execDirsOf(t, e, pid)
	if len(dirs) != 1 || !cowIsMounted(filepath.Join(dirs[0], "data")) || !mountctl.ProcessAlive(pid) {
		t.Fatalf("after exec --keep: temporary directories %v, process %d alive %v; want one mounted", dirs, pid, mountctl.ProcessAlive(pid))
	}
	out := e.Run(t, true, e.Tool("psql"), "-h", m[1], "-p", m[2], "-U", m[3], "-XAtqc", "INSERT INTO sample_table VALUES (50, 'kept'); SELECT count(*) FROM sample_table", "postgres")
	if strings.TrimSpace(out) != "3" {
		t.Errorf("the kept server counts %q rows after an insert, want 3", out)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); mountctl.ProcessAlive(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the process keeping the server (%d) still runs 2 minutes after SIGTERM", pid)
		}
	}
	execNothingLeft(t, e, before)
}

// execRun runs combinefs exec ARGS (as root, in the root, env added) and
// returns its stdout, stderr and exit status.
func execRun(t *testing.T, e *Env, env []string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := e.Combinefs(context.Background(), append([]string{"exec"}, args...)...)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("combinefs exec: %v", err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// execMust is execRun that fails the test unless exec exits 0.
func execMust(t *testing.T, e *Env, env []string, args ...string) string {
	t.Helper()
	stdout, stderr, code := execRun(t, e, env, args...)
	if code != 0 {
		t.Fatalf("combinefs exec %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

// execFails is execRun for a refusal: stderr must be one line and stdout
// empty.
func execFails(t *testing.T, e *Env, env []string, args ...string) (msg, stdout string, code int) {
	t.Helper()
	stdout, stderr, code := execRun(t, e, env, args...)
	if strings.Count(stderr, "\n") != 1 || stdout != "" {
		t.Errorf("combinefs exec %s: want one line on stderr and nothing on stdout, got stdout %q, stderr:\n%s", strings.Join(args, " "), stdout, stderr)
	}
	t.Logf("combinefs exec %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(stderr))
	return stderr, stdout, code
}

// execTempDirs lists exec's temporary directories (host paths) in the
// root's /tmp.
func execTempDirs(t *testing.T, e *Env) []string {
	t.Helper()
	m, err := filepath.Glob(e.Host("/tmp/combinefs-exec-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// execDirsOf lists the temporary directories (host paths) of the exec
// process pid.
func execDirsOf(t *testing.T, e *Env, pid int) []string {
	t.Helper()
	var dirs []string
	for _, d := range execTempDirs(t, e) {
		if b, err := os.ReadFile(filepath.Join(d, "exec.pid")); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

func newEntries(before, after []string) []string {
	var n []string
	for _, a := range after {
		if indexOf(before, a) < 0 {
			n = append(n, a)
		}
	}
	return n
}

// execNothingLeft: no temporary directory of exec beyond those in before,
// nothing mounted in one, no server of one running. Another exec running
// at the same time in the root (another test run) is told apart by the
// process id its directory names, which is alive.
func execNothingLeft(t *testing.T, e *Env, before []string) {
	t.Helper()
	for _, d := range newEntries(before, execTempDirs(t, e)) {
		if !execRunning(d) {
			t.Errorf("exec left %s behind", d)
		}
	}
	for _, mp := range mountsBelow(e.Host("/tmp")) {
		if d, ok := strings.CutSuffix(mp, "/data"); ok && strings.Contains(mp, "/combinefs-exec-") && !execRunning(d) {
			t.Errorf("exec left %s mounted", mp)
		}
	}
	for _, pid := range execServers(e) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Errorf("a server of an exec that ended still runs: %d %q", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	}
}

// execRunning reports whether the exec that made the temporary directory
// dir (host path) still runs.
func execRunning(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "exec.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && mountctl.ProcessAlive(pid)
}

// execServers lists the postmasters in the root whose exec ended: their
// data directory is in an exec temporary directory that is gone (exec
// removes it after stopping the server). Another exec running at the same
// time (another test run) still has its directory, so it is not counted.
func execServers(e *Env) []int {
	var pids []int
	dirRe := regexp.MustCompile(`(/tmp/combinefs-exec-[0-9]+)/data\x00`)
	for _, pid := range procPIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		m := dirRe.FindSubmatch(b)
		if err != nil || m == nil || !mountctl.ProcessAlive(pid) {
			continue
		}
		if root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); root != e.Root {
			continue
		}
		if _, err := os.Stat(e.Host(string(m[1]))); err != nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitForQuery waits until the postmaster started by process parent has a
// backend whose title shows it running a statement (its process title ends
// in the command tag), and returns both pids.
func waitForQuery(t *testing.T, parent int, tag string) (pm, backend int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, p := range childrenOf(parent) {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.TrimSpace(string(comm)) != "postgres" {
				continue
			}
			for _, b := range childrenOf(p) {
				title, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", b))
				if bytes.Contains(title, []byte("[local] "+tag)) {
					return p, b
				}
			}
		}
	}
	t.Fatalf("no backend of exec (process %d) ran %s within 5 minutes", parent, tag)
	return 0, 0
}

// childrenOf lists the live children of pid.
func childrenOf(pid int) []int {
	var kids []int
	for _, p := range procPIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if f := strings.Fields(string(b[i+1:])); len(f) >= 2 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			kids = append(kids, p)
		}
	}
	return kids
}

// procPIDs lists the processes in /proc.
func procPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		if pid, err := strconv.Atoi(ent.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// fstabMount mounts as an /etc/fstab line would: mount -t fuse.combinefs
// with a chain joined by colons, copy-on-write, a server on it counting
// point 1's rows; and mount.fuse3 given "combinefs#repo=DIR,point=NAME"
// read-only. mount(8) runs its helpers with PATH set to
// /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, so for it
// the test links combinefs into the root's /usr/local/sbin, and removes the
// link afterwards; mount.fuse3 alone takes our PATH.
func fstabMount(t *testing.T, ch *Chain, repo string, points []string) {
	e := ch.Env
	bin := e.CombinefsPath(t)
	pathEnv := "PATH=" + path.Dir(bin) + ":/usr/sbin:/usr/bin:/sbin:/bin"
	link := e.Host("/usr/local/sbin/combinefs")
	if fi, err := os.Lstat(link); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("%s exists and is not a link a test left: not replacing it", link)
	}
	os.Remove(link)
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	dir := e.TempDir(t)
	mp, upper := cowMountPoint(t, e, dir, "mnt"), path.Join(e.PrivateDir(t), "upper")
	mount := func(args ...string) {
		t.Helper()
		cmd := e.Command(context.Background(), true, args[0], args[1:]...)
		cmd.Env = append(cmd.Env, pathEnv)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Cleanup(func() {
			if cowIsMounted(e.Host(args[2])) {
				runCombinefs(t, e, "umount", "--lazy", args[2])
			}
		})
	}
	mount("mount", "-t", "fuse.combinefs", strings.Join(ch.Upto(1), ":"), mp, "-o", "cow="+upper+",allow_other,noatime,nofail")
	if opts := mountOptionsAt(e.Host(mp)); opts == "" || strings.Contains(","+opts+",", ",ro,") {
		t.Fatalf("after mount -t fuse.combinefs: %s mounted with %q, want a writable mount", mp, opts)
	}
	srv := startOnMount(t, e, mp)
	if got := srv.Psql(t, "postgres", "SELECT count(*) FROM sample_table"); got != "2" {
		t.Errorf("server on the fstab-style mount of point 1: %s rows, want 2", got)
	}
	srv.Stop(t, "fast")
	mustCombinefs(t, e, "umount", mp)

	mp2 := cowMountPoint(t, e, dir, "ro")
	mount("mount.fuse3", "combinefs#repo="+repo+",point="+points[0], mp2, "-o", "ro,dev,suid")
	if opts := mountOptionsAt(e.Host(mp2)); !strings.Contains(","+opts+",", ",ro,") {
		t.Errorf("mount.fuse3 ... -o ro: %s mounted with %q, want read-only", mp2, opts)
	}
	want, err := os.ReadFile(e.Host(path.Join(repo, points[0], "PG_VERSION")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(e.Host(path.Join(mp2, "PG_VERSION"))); err != nil || string(got) != string(want) {
		t.Errorf("PG_VERSION on the mount of %s: %q, %v; want %q", points[0], got, err, want)
	}
	mustCombinefs(t, e, "umount", mp2)
}
