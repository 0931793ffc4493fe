package integration

import (
	"context"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/mountctl"
)

// TestHydrate: copy-on-write mounts with --hydrate of the last point of a
// small chain (pgbench scale 5), against pg_combinebackup's output of the
// same point.
func TestHydrate(t *testing.T) {
	ch, last, ref := smallChainAndReference(t)
	e := ch.Env

	t.Run("no-server", func(t *testing.T) { hydrateNoServer(t, ch, last, ref) })
	t.Run("kill9", func(t *testing.T) { hydrateKill9(t, ch, last, ref) })
	t.Run("server", func(t *testing.T) { hydrateServer(t, ch, last) })
	t.Run("server-kill9", func(t *testing.T) { hydrateServerKill9(t, ch, last) })
	t.Run("umount-bind", func(t *testing.T) { umountRefusesBind(t, e) })
}

// hydrateNoServer: hydrate with no server, status --wait, refusals of
// detach while mounted and of an incomplete upper, then detach: every file
// byte-identical to pg_combinebackup's output.
func hydrateNoServer(t *testing.T, ch *Chain, last int, ref string) {
	e := ch.Env
	dir := e.TempDir(t)
	upper, mp := path.Join(e.PrivateDir(t), "upper"), cowMountPoint(t, e, dir, "mnt")
	m := mountCoWFlags(t, e, []string{"--hydrate"}, upper, mp, ch.Upto(last)...)
	out := mustCombinefs(t, e, "status", "--wait", mp)
	if !strings.Contains(out, "hydration complete") {
		t.Errorf("combinefs status --wait: %s", out)
	}
	if _, err := os.Stat(e.Host(path.Join(upper, "combinefs-hydrated"))); err != nil {
		t.Errorf("no hydration-complete marker: %v", err)
	}
	mountedView := e.Host(mp)
	if d := TreeDiff(e.Host(ref), mountedView, nil, "backup_manifest"); d != "" {
		t.Errorf("the hydrated mount differs from pg_combinebackup's output:\n%s", d)
	}
	detachRefused(t, e, upper, "live mount")
	m.Umount(t)

	// An upper that never hydrated is refused.
	partial := path.Join(e.PrivateDir(t), "partial")
	mp2 := cowMountPoint(t, e, dir, "mnt2")
	m2 := mountCoW(t, e, partial, mp2, ch.Upto(last)...)
	m2.Umount(t)
	detachRefused(t, e, partial, "incomplete")

	// kill -9 of detach after its steps: mount refuses what is left, and
	// detach run again completes it.
	for _, step := range []string{"marked", "cleaned", "moving", "moved", "removed"} {
		cmd := e.Combinefs(context.Background(), "detach", upper)
		cmd.Env = append(cmd.Environ(), "COMBINEFS_TEST_DETACH_CRASH="+step)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(interface{ Sys() any }); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("combinefs detach with a crash after %s: %v %s", step, err, out)
		}
		mp3 := cowMountPoint(t, e, dir, "mnt-"+step)
		out2, code := runCombinefs(t, e, append(append([]string{"mount", "--daemon", "--cow", upper}, ch.Upto(last)...), mp3)...)
		if code == 0 || !strings.Contains(out2, "being detached") {
			t.Fatalf("mount of an upper whose detach was killed after %s: exit %d %s", step, code, out2)
		}
		t.Logf("detach killed after %s; mount refuses: %s", step, strings.TrimSpace(out2))
	}
	out = mustCombinefs(t, e, "detach", upper)
	t.Logf("combinefs detach: %s", out)
	if d := TreeDiff(e.Host(ref), e.Host(upper), nil, "backup_manifest"); d != "" {
		t.Errorf("the detached upper differs from pg_combinebackup's output:\n%s", d)
	}
	noBookkeeping(t, e.Host(upper))
}

// detachRefused: combinefs detach refuses upper with one line containing
// why, and changes nothing in it.
func detachRefused(t *testing.T, e *Env, upper, why string) {
	t.Helper()
	before := upperState(t, e.Host(upper))
	out, code := runCombinefs(t, e, "detach", upper)
	out = strings.TrimSpace(out)
	if code != 1 || strings.Count(out, "\n") != 0 || !strings.Contains(out, why) || !strings.Contains(out, upper) {
		t.Errorf("combinefs detach %s: exit %d, %q; want a one-line refusal naming it, saying %q", upper, code, out, why)
	}
	if d := stateDiff(before, upperState(t, e.Host(upper))); d != "" {
		t.Errorf("a refused detach changed %s:\n%s", upper, d)
	}
}

// upperState is every entry below host with its mode, contents' size and
// mtime, and combinefs xattrs.
func upperState(t *testing.T, host string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(host, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(host, p)
		v := fi.Mode().String() + " " + strconv.FormatInt(fi.Size(), 10) + " " + fi.ModTime().String()
		for _, x := range []string{"user.combinefs.origin", "user.combinefs.limit", "user.combinefs.opaque"} {
			buf := make([]byte, 256)
			if n, err := unix.Lgetxattr(p, x, buf); err == nil {
				v += " " + x + "=" + string(buf[:n])
			}
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func stateDiff(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k+": "+v+" -> "+b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, k+" added")
		}
	}
	return strings.Join(d, "\n")
}

// noBookkeeping: nothing of combinefs's left in a detached directory.
func noBookkeeping(t *testing.T, host string) {
	t.Helper()
	for _, name := range []string{"tree", "tmp", "combinefs-upper.json", "combinefs-hydrated", "combinefs-detaching"} {
		if _, err := os.Lstat(filepath.Join(host, name)); err == nil {
			t.Errorf("detached directory has %s", name)
		}
	}
	for rel, v := range upperState(t, host) {
		if strings.Contains(v, "user.combinefs.") {
			t.Errorf("detached %s keeps an xattr: %s", rel, v)
		}
	}
}

// hydrateKill9: kill -9 of combinefs at random moments during a slow
// hydration, remount, and at last finish: the same result.
func hydrateKill9(t *testing.T, ch *Chain, last int, ref string) {
	e := ch.Env
	dir := e.TempDir(t)
	upper, mp := path.Join(e.PrivateDir(t), "upper"), cowMountPoint(t, e, dir, "mnt")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for i := range 4 {
		m := mountCoWFlags(t, e, []string{"--hydrate", "--hydrate-rate", "24MiB"}, upper, mp, ch.Upto(last)...)
		wait := time.Duration(200+rng.IntN(1500)) * time.Millisecond
		time.Sleep(wait)
		h := m.Stats(t).Hydration
		if h == nil {
			t.Fatal("no hydration in the stats of a mount with --hydrate")
		}
		m.Kill9(t)
		t.Logf("run %d: killed after %v at %d of %d bytes (complete: %v)", i, wait, h.Done, h.Total, h.Complete)
		// The dead mount is still a fuse.combinefs mount: umount clears it.
		if out, code := runCombinefs(t, e, "umount", mp); code != 0 {
			t.Fatalf("combinefs umount of the killed mount: exit %d: %s", code, out)
		}
	}
	m := mountCoWFlags(t, e, []string{"--hydrate"}, upper, mp, ch.Upto(last)...)
	mustCombinefs(t, e, "status", "--wait", mp)
	m.Umount(t)
	mustCombinefs(t, e, "detach", upper)
	if d := TreeDiff(e.Host(ref), e.Host(upper), nil, "backup_manifest"); d != "" {
		t.Errorf("after kills and resumes, the detached upper differs from pg_combinebackup's output:\n%s", d)
	}
	noBookkeeping(t, e.Host(upper))
}

// hydrateServer: a server on a hydrating mount under pgbench -S -n load until
// hydration completes answers as the live server did at the backup (which
// is what a server on pg_combinebackup's output answers); then writes,
// pg_dump, stop, unmount, detach, a server on the detached directory:
// pg_dump equal, the same query results, pg_amcheck clean.
func hydrateServer(t *testing.T, ch *Chain, last int) {
	e := ch.Env
	upper, mp, m, srv := serverOnHydratingMount(t, ch, last, "16MiB")
	sawProgress := false
	for i := 0; ; i++ {
		out := mustCombinefs(t, e, "status", mp)
		if strings.Contains(out, "hydration complete") {
			break
		}
		if regexp.MustCompile(`hydrating, .* of .* \(.*%\), .*/s, ETA `).MatchString(out) {
			sawProgress = true
		} else {
			t.Errorf("combinefs status while hydrating: %q", out)
		}
		if i == 200 {
			t.Fatalf("hydration not complete after 200 pgbench runs: %s", out)
		}
		srv.Pgbench(t, "-n", "-S", "-T", "1", "-c", "2", "-j", "2", "postgres")
	}
	if !sawProgress {
		t.Log("hydration completed before the first pgbench run")
	}
	if d := ch.Snapshots[last].Diff(srv.Snapshot(t)); d != "" {
		t.Fatalf("server on the hydrated mount differs from the live server at the backup:\n%s", d)
	}
	// The default (auto) takes passthrough with --hydrate: files not yet
	// whole were opened direct, or waited for hydration to make them whole
	// and were opened by passthrough; once whole (and 5 s after their last
	// direct open) every new open goes by passthrough, the server's
	// earlier opens still open.
	st := m.Stats(t)
	if st.WritebackCache || st.ReconOpens != 0 || (sawProgress && st.DirectOpens+st.AwaitedOpens == 0) {
		t.Errorf("hydrating mount, default flags: writeback cache %v, %d opens through the page cache, %d direct opens, %d awaited", st.WritebackCache, st.ReconOpens, st.DirectOpens, st.AwaitedOpens)
	}
	t.Logf("opens while hydrating: %d direct, %d awaited", st.DirectOpens, st.AwaitedOpens)
	time.Sleep(6 * time.Second)
	srv.Pgbench(t, "-n", "-S", "-T", "1", "-c", "2", "-j", "2", "postgres")
	if st2 := m.Stats(t); st2.WholeOpens == st.WholeOpens || st2.DirectOpens != st.DirectOpens || st2.ReconOpens != 0 {
		t.Errorf("new backends once hydration completed: %d passthrough opens, %d direct opens, %d through the page cache; want some, none, none",
			st2.WholeOpens-st.WholeOpens, st2.DirectOpens-st.DirectOpens, st2.ReconOpens)
	}
	srv.Pgbench(t, "-T", "3", "-c", "2", "-j", "2", "postgres")
	srv.Psql(t, "postgres", "CREATE TABLE after_hydration AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g; CHECKPOINT")
	want := srv.Snapshot(t)
	dump := pgDump(t, srv)
	srv.Stop(t, "fast")
	m.Umount(t)

	// Remounted on the complete upper, the default --writeback-cache=auto
	// serves it by passthrough, with the same database.
	m = mountCoW(t, e, upper, mp, ch.Upto(last)...)
	srv = startOnMount(t, e, mp)
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("server on the remounted hydrated upper differs from the one before:\n%s", d)
	}
	srv.Pgbench(t, "-n", "-S", "-T", "2", "-c", "2", "-j", "2", "postgres")
	if st := m.Stats(t); st.WritebackCache || st.PassthroughOpens == 0 {
		t.Errorf("default mount of a hydrated upper: writeback cache %v, %d passthrough opens", st.WritebackCache, st.PassthroughOpens)
	}
	srv.Stop(t, "fast")
	m.Umount(t)
	mustCombinefs(t, e, "detach", upper)
	noBookkeeping(t, e.Host(upper))
	srv2 := e.StartServer(t, upper, ServerOptions{Settings: cowServerSettings})
	if d := want.Diff(srv2.Snapshot(t)); d != "" {
		t.Errorf("server on the detached directory differs from the one on the mount before:\n%s", d)
	}
	if got := pgDump(t, srv2); got != dump {
		t.Errorf("pg_dump on the detached directory differs from pg_dump on the mount (%d and %d bytes)", len(got), len(dump))
	}
	cowAmcheck(t, srv2)
	srv2.Stop(t, "fast")
}

// hydrateServerKill9: kill -9 of the server (not of combinefs) while it
// writes on a mount that is hydrating; the mount is unmounted, mounted
// again and finishes hydrating under a server started on it: after crash
// recovery the server has every write the killed one acknowledged (a
// snapshot taken just before the kill), also once hydration is complete,
// and pg_amcheck is clean.
func hydrateServerKill9(t *testing.T, ch *Chain, last int) {
	e := ch.Env
	upper, mp, m, srv := serverOnHydratingMount(t, ch, last, "2MiB")
	srv.Pgbench(t, "-n", "-T", "3", "-c", "2", "-j", "2", "postgres")
	srv.Psql(t, "postgres", "CREATE TABLE before_kill AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g")
	srv.Psql(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 97 = 0")
	want := srv.Snapshot(t)
	if h := m.Stats(t).Hydration; h == nil || h.Complete {
		t.Fatalf("hydration at 2 MiB/s is not in progress when the server is killed: %+v", h)
	}
	srv.Kill9(t)
	m.UmountAfterKill(t)

	m = mountCoWFlags(t, e, []string{"--hydrate"}, upper, mp, ch.Upto(last)...)
	srv = startOnMount(t, e, mp)
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("after kill -9 of the server and a remount, crash recovery lost or changed writes:\n%s", d)
	}
	mustCombinefs(t, e, "status", "--wait", mp)
	if d := want.Diff(srv.Snapshot(t)); d != "" {
		t.Errorf("once hydration completed, the server differs from the killed one:\n%s", d)
	}
	cowAmcheck(t, srv)
	srv.Stop(t, "fast")
	m.Umount(t)
}

// serverOnHydratingMount mounts point last of ch on a new upper with
// --hydrate at rate and starts a server on it.
func serverOnHydratingMount(t *testing.T, ch *Chain, last int, rate string) (upper, mp string, m *cowMount, srv *Cluster) {
	e := ch.Env
	upper, mp = path.Join(e.PrivateDir(t), "upper"), cowMountPoint(t, e, e.TempDir(t), "mnt")
	m = mountCoWFlags(t, e, []string{"--hydrate", "--hydrate-rate", rate}, upper, mp, ch.Upto(last)...)
	return upper, mp, m, startOnMount(t, e, mp)
}

// pgDump is pg_dump of postgres, without the random \restrict key of
// recent minor releases.
func pgDump(t *testing.T, c *Cluster) string {
	t.Helper()
	out, err := c.Command(context.Background(), false, c.Tool("pg_dump"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "postgres").Output()
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, `\restrict`) && !strings.HasPrefix(l, `\unrestrict`) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// umountRefusesBind: combinefs umount of a bind mount refuses with one
// line and leaves it mounted.
func umountRefusesBind(t *testing.T, e *Env) {
	dir := e.TempDir(t)
	src, mp := cowMountPoint(t, e, dir, "src"), cowMountPoint(t, e, dir, "bind")
	if err := syscall.Mount(e.Host(src), e.Host(mp), "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	defer syscall.Unmount(e.Host(mp), syscall.MNT_DETACH)
	out, code := runCombinefs(t, e, "umount", mp)
	out = strings.TrimSpace(out)
	if code != 1 || strings.Count(out, "\n") != 0 || !strings.Contains(out, "not a combinefs mount") || !strings.Contains(out, mp) {
		t.Errorf("combinefs umount of a bind mount: exit %d, %q", code, out)
	}
	if !mountctl.IsMounted(e.Host(mp)) {
		t.Error("combinefs umount unmounted a bind mount")
	}
}
