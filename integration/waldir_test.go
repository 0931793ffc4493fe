package integration

import (
	"os"
	"path"
	"strings"
	"testing"
)

// TestWALDir: copy-on-write mounts with --waldir of the last point of a
// small chain, against pg_combinebackup's output of the same point: the
// server's pg_wal is a symlink to the WAL directory, which holds the
// point's pg_wal byte for byte and then the server's WAL.
func TestWALDir(t *testing.T) {
	ch, last, ref := smallChainAndReference(t)

	t.Run("server", func(t *testing.T) { walDirServer(t, ch, last, ref) })
	t.Run("detach", func(t *testing.T) { walDirDetach(t, ch, last) })
	t.Run("kill9", func(t *testing.T) { walDirKill9(t, ch, last, ref) })
	t.Run("refused", func(t *testing.T) { walDirRefused(t, ch, last) })
}

// smallChainAndReference builds a small chain (pgbench scale 5) for tests
// of copy-on-write mounts and pg_combinebackup's output of its last point.
func smallChainAndReference(t *testing.T) (ch *Chain, last int, ref string) {
	e := Provision(t)
	RequireFUSE(t)
	e.CombinefsPath(t)
	ch = BuildChain(t, e, ChainSpec{})
	last = len(ch.Backups) - 1
	ref = path.Join(e.TempDir(t), "combined")
	ch.Combine(t, last, ref)
	return ch, last, ref
}

// walDirMount mounts point last on a new upper with a new --waldir and
// returns the upper, the WAL directory, the mount point and the mount.
func walDirMount(t *testing.T, ch *Chain, last int, extra ...string) (upper, wal, mp string, m *cowMount) {
	e := ch.Env
	private := e.PrivateDir(t)
	upper, wal, mp = path.Join(private, "upper"), path.Join(private, "wal"), cowMountPoint(t, e, e.TempDir(t), "mnt")
	m = mountCoWFlags(t, e, append([]string{"--waldir", wal}, extra...), upper, mp, ch.Upto(last)...)
	return upper, wal, mp, m
}

// checkWALLink: pg_wal of dir (in-root) is a symlink to wal.
func checkWALLink(t *testing.T, e *Env, dir, wal string) {
	t.Helper()
	if got, err := os.Readlink(e.Host(path.Join(dir, "pg_wal"))); err != nil || got != wal {
		t.Errorf("%s/pg_wal: readlink %q, %v; want a symlink to %s", dir, got, err, wal)
	}
}

// walDirServer: before any write the WAL directory equals
// pg_combinebackup's pg_wal; a server on the mount has the backup's data,
// writes its WAL into the WAL directory (not the upper), survives a
// restart and a remount with the same data, and pg_amcheck is clean.
func walDirServer(t *testing.T, ch *Chain, last int, ref string) {
	e := ch.Env
	upper, wal, mp, m := walDirMount(t, ch, last)
	if d := TreeDiff(e.Host(path.Join(ref, "pg_wal")), e.Host(wal), nil); d != "" {
		t.Errorf("the WAL directory differs from pg_combinebackup's pg_wal:\n%s", d)
	}
	checkWALLink(t, e, mp, wal)
	checkWALLink(t, e, path.Join(upper, "tree"), wal)
	if log := readFrom(e.Host(m.log), 0); !strings.Contains(log, "WAL in "+wal) {
		t.Errorf("the mount log does not say where the WAL is:\n%s", lastLines(log, 5))
	}
	srv := startOnMount(t, e, mp)
	if d := ch.Snapshots[last].Diff(srv.Snapshot(t)); d != "" {
		t.Fatalf("server on the --waldir mount differs from the live server at the backup:\n%s", d)
	}
	srv.Pgbench(t, "-T", "5", "-c", "2", "-j", "2", "postgres")
	srv.Psql(t, "postgres", "CREATE TABLE waldir_t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g; CHECKPOINT")
	seg := srv.Psql(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
	if _, err := os.Stat(e.Host(path.Join(wal, seg))); err != nil {
		t.Errorf("the server's current WAL segment is not in the WAL directory: %v", err)
	}
	if fi, err := os.Lstat(e.Host(path.Join(upper, "tree", "pg_wal"))); err != nil || fi.Mode().IsDir() {
		t.Errorf("upper tree/pg_wal became a directory (%v)", err)
	}
	want := srv.Snapshot(t)
	srv.Restart(t)
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("after a restart the server differs:\n%s", d)
	}
	cowAmcheck(t, srv)
	srv.Stop(t, "fast")
	m.Umount(t)
	m = mountCoWFlags(t, e, []string{"--waldir", wal}, upper, mp, ch.Upto(last)...)
	srv = startOnMount(t, e, mp)
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("after a remount with the same --waldir the server differs:\n%s", d)
	}
	srv.Stop(t, "fast")
	m.Umount(t)
}

// walDirDetach: a hydrated --waldir upper detaches into a data directory
// whose pg_wal is the symlink to the WAL directory, and a server starts on
// it without combinefs with the data of the server on the mount.
func walDirDetach(t *testing.T, ch *Chain, last int) {
	e := ch.Env
	upper, wal, mp, m := walDirMount(t, ch, last, "--hydrate")
	srv := startOnMount(t, e, mp)
	srv.Pgbench(t, "-T", "3", "-c", "2", "-j", "2", "postgres")
	want := srv.Snapshot(t)
	mustCombinefs(t, e, "status", "--wait", mp)
	srv.Stop(t, "fast")
	m.Umount(t)
	mustCombinefs(t, e, "detach", upper)
	noBookkeeping(t, e.Host(upper))
	checkWALLink(t, e, upper, wal)
	srv = e.StartServer(t, upper, ServerOptions{Settings: cowServerSettings})
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("server on the detached directory differs from the one on the mount:\n%s", d)
	}
	srv.Psql(t, "postgres", "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1); CHECKPOINT")
	seg := srv.Psql(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
	if _, err := os.Stat(e.Host(path.Join(wal, seg))); err != nil {
		t.Errorf("the detached server's WAL is not in the WAL directory: %v", err)
	}
	srv.Stop(t, "fast")
}

// walDirKill9: a mount killed (kill -9, a test hook) after each step of
// the switch leaves the upper without pg_wal, or with the symlink, and a
// WAL directory the next mount with the same --waldir completes: the WAL
// directory then equals pg_combinebackup's pg_wal, with nothing of the
// switch's left, and a server starts on it.
func walDirKill9(t *testing.T, ch *Chain, last int, ref string) {
	e := ch.Env
	for _, phase := range []string{"waldir-filled", "waldir-marked", "waldir-moved", "waldir-linked"} {
		private := e.PrivateDir(t)
		upper, wal, mp := path.Join(private, "upper"), path.Join(private, "wal"), cowMountPoint(t, e, e.TempDir(t), "mnt")
		args := append(append([]string{"mount", "--cow", upper, "--waldir", wal}, ch.Upto(last)...), mp)
		out, code := combinefsAs(t, e, true, []string{"COMBINEFS_CRASH_AT=" + phase}, args...)
		if code != -1 || cowIsMounted(e.Host(mp)) {
			t.Fatalf("mount with a crash at %s: exit %d, mounted %v: %s", phase, code, cowIsMounted(e.Host(mp)), out)
		}
		link := e.Host(path.Join(upper, "tree", "pg_wal"))
		_, err := os.Lstat(link)
		if linked := err == nil; linked != (phase == "waldir-linked") {
			t.Errorf("crash at %s: upper tree/pg_wal exists: %v", phase, linked)
		}
		m := mountCoWFlags(t, e, []string{"--waldir", wal}, upper, mp, ch.Upto(last)...)
		if d := TreeDiff(e.Host(path.Join(ref, "pg_wal")), e.Host(wal), nil); d != "" {
			t.Errorf("crash at %s, then a mount: the WAL directory differs from pg_combinebackup's pg_wal:\n%s", phase, d)
		}
		checkWALLink(t, e, mp, wal)
		if phase == "waldir-marked" {
			srv := startOnMount(t, e, mp)
			if d := ch.Snapshots[last].Diff(srv.Snapshot(t)); d != "" {
				t.Errorf("crash at %s: the server differs from the live one at the backup:\n%s", phase, d)
			}
			srv.Stop(t, "fast")
		}
		m.Umount(t)
		t.Logf("crash at %s: completed by the next mount", phase)
	}
}

// walDirRefused: a WAL directory that is not empty or not a directory, an
// upper that has its own pg_wal, and --waldir without --cow are refused in
// one line naming the directory, with nothing mounted or changed.
func walDirRefused(t *testing.T, ch *Chain, last int) {
	e := ch.Env
	private := e.PrivateDir(t)
	full, file := path.Join(private, "full"), path.Join(private, "file")
	e.MkdirAll(t, full)
	if err := os.WriteFile(e.Host(path.Join(full, "precious")), []byte("mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.Host(file), []byte("a file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mp := cowMountPoint(t, e, e.TempDir(t), "mnt")
	refused := func(what, upper, wal, want string, cow bool) {
		t.Helper()
		before := cowUpperSnapshot(t, e.Host(private))
		args := []string{"mount", "--daemon", "--waldir", wal}
		if cow {
			args = append(args, "--cow", upper)
		}
		out, code := runCombinefs(t, e, append(append(args, ch.Upto(last)...), mp)...)
		// A usage error adds the usual pointer to --help.
		out, _, _ = strings.Cut(strings.TrimSpace(out), "\nTry \"combinefs mount --help\".")
		if cowIsMounted(e.Host(mp)) {
			mustCombinefs(t, e, "umount", "--lazy", mp)
			t.Fatalf("%s: mounted", what)
		}
		if code == 0 || strings.Count(out, "\n") != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d, %q; want a one-line error with %q", what, code, out, want)
		}
		if d := cowUpperDiff(before, cowUpperSnapshot(t, e.Host(private))); d != "" {
			t.Errorf("%s: the refused mount changed things:\n%s", what, d)
		}
		t.Logf("%s: exit %d: %s", what, code, out)
	}
	upper := path.Join(private, "upper")
	refused("a non-empty WAL directory", upper, full, full+" is not empty", true)
	refused("a WAL directory that is a file", upper, file, file+" is not a directory", true)
	refused("--waldir without --cow", upper, path.Join(private, "wal"), "--waldir needs --cow", false)
	// An upper whose server wrote its own pg_wal.
	m := mountCoW(t, e, upper, mp, ch.Upto(last)...)
	if err := os.WriteFile(e.Host(path.Join(mp, "pg_wal", "written")), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Umount(t)
	refused("an upper with its own pg_wal", upper, path.Join(private, "wal"), "upper directory "+upper+" already has its own pg_wal", true)
}
