package integration

import (
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"testing"
)

// repoCombinefs runs combinefs as the server user (as capture runs, so
// that every file of the repository has one owner) with extra environment,
// and returns its output and exit status.
func repoCombinefs(t *testing.T, e *Env, env []string, args ...string) (string, int) {
	t.Helper()
	return combinefsAs(t, e, false, env, args...)
}

// repoMust is repoCombinefs that fails the test on a non-zero exit.
func repoMust(t *testing.T, e *Env, args ...string) string {
	t.Helper()
	out, code := repoCombinefs(t, e, nil, args...)
	if code != 0 {
		t.Fatalf("combinefs %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// repoCapturePoint captures into repo (full or incremental) after marking
// the point in the marker table, and returns the new point's name.
func repoCapturePoint(t *testing.T, e *Env, c *Cluster, repo string, mark int, full bool) string {
	t.Helper()
	return repoCapturePointEnv(t, e, c, repo, nil, mark, full)
}

// repoCapturePointEnv is repoCapturePoint with env added to combinefs's
// environment (an S3 server's credentials).
func repoCapturePointEnv(t *testing.T, e *Env, c *Cluster, repo string, env []string, mark int, full bool) string {
	t.Helper()
	c.Psql(t, "postgres", fmt.Sprintf("INSERT INTO marker VALUES (%d); UPDATE pgbench_accounts SET abalance = abalance + %d WHERE aid %% 97 = %d", mark, mark, mark%97))
	args := append([]string{"capture", "--repo", repo, "-c", "fast", "--progress=false"}, connArgs(c)...)
	if full {
		args = append(args, "--full")
	} else {
		c.WaitForWALSummary(t)
	}
	out, code := repoCombinefs(t, e, env, args...)
	if code != 0 {
		t.Fatalf("combinefs %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	m := regexp.MustCompile(`backup ([0-9_-]+-(FULL|INCREMENTAL)) complete`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("capture printed no backup name:\n%s", out)
	}
	return m[1]
}

// repoFlattenSame flattens point of repo and compares it with ref (a
// pg_combinebackup output), manifest aside.
func repoFlattenSame(t *testing.T, e *Env, repo, point, ref string) {
	t.Helper()
	out := path.Join(e.TempDir(t), "flat")
	mustCombinefs(t, e, "flatten", "-o", out, "--repo", repo, "--point", point)
	if d := TreeDiff(e.Host(ref), e.Host(out), nil, "backup_manifest"); d != "" {
		t.Errorf("flatten of %s differs from pg_combinebackup of its original chain:\n%s", point, d)
	}
	os.RemoveAll(e.Host(out))
}

var repoPointRe = regexp.MustCompile(`^\d{4}-\d\d-\d\d_\d{6}-(FULL|INCREMENTAL)$`)

// repoListOK runs list and verify --repo and fails unless both call every
// point intact; it returns the point names list shows.
func repoListOK(t *testing.T, e *Env, repo string) []string {
	t.Helper()
	list := repoMust(t, e, "list", "--repo", repo)
	repoMust(t, e, "verify", "--repo", repo)
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(list), "\n")[1:] {
		if f := strings.Fields(l); len(f) > 0 && repoPointRe.MatchString(f[0]) {
			names = append(names, f[0])
		}
	}
	return names
}

// TestRepoCompactExpire: a repository of two chains of three points each
// (captured by combinefs capture); compact to the second point of the
// newer chain; its third point then flattens byte-identical to
// pg_combinebackup of the original chain, a server on a mount of it
// returns the same rows, and capture adds an incremental to the compacted
// chain. compact killed at each phase (on copies of the older chain)
// leaves a repository list and verify find consistent, in which every
// point flattens as before. expire --keep-full 1 keeps a point a mount
// holds, and removes it after the unmount. Bad input changes nothing.
func TestRepoCompactExpire(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	c := e.InitCluster(t, ClusterOptions{})
	c.Pgbench(t, "-i", "-q", "-s", "2", "postgres")
	c.Psql(t, "postgres", "CREATE TABLE marker (point int)")
	dir := e.TempDir(t)
	repo := path.Join(dir, "repo")

	// The older chain B, then the newer chain A (capture chains onto the
	// newest point, so A is the one that grows after compaction).
	var b, a []string
	for i := 0; i < 3; i++ {
		b = append(b, repoCapturePoint(t, e, c, repo, 10+i, i == 0))
	}
	for i := 0; i < 3; i++ {
		a = append(a, repoCapturePoint(t, e, c, repo, i, i == 0))
	}
	if names := repoListOK(t, e, repo); fmt.Sprint(names) != fmt.Sprint(append(append([]string{}, b...), a...)) {
		t.Fatalf("list shows %q", names)
	}
	ref := func(chain []string, k int) string {
		out := path.Join(e.TempDir(t), "ref")
		var in []string
		for _, n := range chain[:k+1] {
			in = append(in, path.Join(repo, n))
		}
		e.CombineBackup(t, out, in)
		return out
	}
	refA1, refA2, refB1, refB2 := ref(a, 1), ref(a, 2), ref(b, 1), ref(b, 2)

	// Kill -9 of compact at each phase, on a repository holding a copy of
	// chain B.
	t.Run("killed", func(t *testing.T) {
		for _, ph := range []string{"compact-flattened", "compact-verified", "compact-journaled", "compact-published", "compact-retired", "compact-unjournaled"} {
			r2 := path.Join(e.TempDir(t), "repo")
			e.Run(t, false, "mkdir", r2)
			for _, n := range b {
				e.Run(t, false, "cp", "-a", path.Join(repo, n), path.Join(r2, n))
			}
			out, code := repoCombinefs(t, e, []string{"COMBINEFS_CRASH_AT=" + ph}, "compact", "--repo", r2, "--point", b[1])
			if code == 0 {
				t.Fatalf("compact with COMBINEFS_CRASH_AT=%s was not killed:\n%s", ph, out)
			}
			after := repoListOK(t, e, r2)
			t.Logf("killed at %s: points %q", ph, after)
			repoFlattenSame(t, e, r2, b[2], refB2)
			// The next command that takes the repository's lock finishes
			// the compaction or undoes it.
			repoMust(t, e, "expire", "--repo", r2, "--keep-full", "9")
			after = repoListOK(t, e, r2)
			full := strings.Replace(b[1], "INCREMENTAL", "FULL", 1)
			if forward := ph == "compact-published" || ph == "compact-retired" || ph == "compact-unjournaled"; forward && fmt.Sprint(after) != fmt.Sprint([]string{full, b[2]}) ||
				!forward && fmt.Sprint(after) != fmt.Sprint(b) {
				t.Errorf("after a kill at %s and recovery: points %q", ph, after)
			}
			if strings.Contains(repoMust(t, e, "list", "--repo", r2), "left by an interrupted command") {
				t.Errorf("leftovers after recovery from a kill at %s", ph)
			}
			for _, n := range after {
				switch n {
				case b[2]:
					repoFlattenSame(t, e, r2, n, refB2)
				case b[1], full:
					repoFlattenSame(t, e, r2, n, refB1)
				}
			}
		}
	})

	// Bad input: one line, nothing changes.
	before := snapshotNames(t, e.Host(repo))
	for _, tt := range []struct{ args []string }{
		{[]string{"compact", "--repo", repo, "--point", a[0]}},
		{[]string{"compact", "--repo", repo, "--point", "1999-01-01"}},
		{[]string{"compact", "--repo", dir, "--point", a[1]}},
		{[]string{"expire", "--repo", dir, "--keep-full", "1"}},
	} {
		out, code := repoCombinefs(t, e, nil, tt.args...)
		if code != 1 || strings.Count(out, "\n") != 1 {
			t.Errorf("combinefs %q: exit %d, want 1 and one line:\n%s", tt.args, code, out)
		}
	}
	if after := snapshotNames(t, e.Host(repo)); after != before {
		t.Errorf("refused commands changed the repository:\n%s\nwas\n%s", after, before)
	}

	// Compact to the second point of chain A.
	out := repoMust(t, e, "compact", "--repo", repo, "--point", a[1])
	t.Logf("compact: %s", strings.TrimSpace(out))
	a1full := strings.Replace(a[1], "INCREMENTAL", "FULL", 1)
	if names := repoListOK(t, e, repo); fmt.Sprint(names) != fmt.Sprint(append(append([]string{}, b...), a1full, a[2])) {
		t.Fatalf("after compact, list shows %q", names)
	}
	repoFlattenSame(t, e, repo, a[2], refA2)
	repoFlattenSame(t, e, repo, a1full, refA1)

	// A server on a copy-on-write mount of the third point has the rows.
	mp := path.Join(dir, "mnt")
	e.MkdirAll(t, mp)
	m := mountCoWFlags(t, e, []string{"--repo", repo, "--point", a[2]}, path.Join(e.PrivateDir(t), "upper"), mp)
	srv := startOnMount(t, e, mp)
	want := e.StartServer(t, refA2, ServerOptions{FixOwnership: true})
	for _, q := range []string{
		"SELECT string_agg(point::text, ',' ORDER BY point) FROM marker",
		"SELECT sum(abalance), count(*) FROM pgbench_accounts",
		pgbenchConsistent,
	} {
		if g, w := srv.Psql(t, "postgres", q), want.Psql(t, "postgres", q); g != w {
			t.Errorf("%s: %q on the mount, %q on pg_combinebackup's output", q, g, w)
		}
	}
	srv.Stop(t, "fast")
	want.Stop(t, "fast")
	m.Umount(t)

	// capture adds an incremental to the compacted chain.
	a3 := repoCapturePoint(t, e, c, repo, 3, false)
	list := repoMust(t, e, "list", "--repo", repo, "-v")
	if !regexp.MustCompile(regexp.QuoteMeta(a3)+` +incremental +`+regexp.QuoteMeta(a[2])+` .*intact`).MatchString(list) ||
		!strings.Contains(list, "chain: "+a1full+" <- "+a[2]+" <- "+a3) {
		t.Errorf("the new incremental does not chain onto the compacted point:\n%s", list)
	}
	refA3 := path.Join(e.TempDir(t), "ref")
	e.CombineBackup(t, refA3, []string{path.Join(repo, a1full), path.Join(repo, a[2]), path.Join(repo, a3)})
	repoFlattenSame(t, e, repo, a3, refA3)
	restored := e.StartServer(t, refA3, ServerOptions{FixOwnership: true})
	if got := restored.Psql(t, "postgres", "SELECT string_agg(point::text, ',' ORDER BY point) FROM marker"); got != "0,1,2,3,10,11,12" {
		t.Errorf("marker rows after the new incremental: %q", got)
	}
	restored.Stop(t, "fast")

	// expire --keep-full 1 with a mount of an old point running keeps it
	// (and says so); after the unmount, it goes.
	mpB := path.Join(dir, "mntB")
	e.MkdirAll(t, mpB)
	mb := mountDaemon(t, e, mpB, "--repo", repo, "--point", b[0])
	out = repoMust(t, e, "expire", "--repo", repo, "--keep-full", "1")
	t.Logf("expire with %s mounted:\n%s", b[0], out)
	if !strings.Contains(out, "kept "+b[0]+": in use") || !strings.Contains(out, "removed "+b[2]) || !strings.Contains(out, "removed "+b[1]) || !strings.Contains(out, "freed ") {
		t.Errorf("expire with %s mounted said:\n%s", b[0], out)
	}
	if names := repoListOK(t, e, repo); fmt.Sprint(names) != fmt.Sprint([]string{b[0], a1full, a[2], a3}) {
		t.Errorf("after expire with a mount: %q", names)
	}
	if _, err := os.Stat(e.Host(path.Join(mpB, "PG_VERSION"))); err != nil {
		t.Errorf("the mount of the kept point: %v", err)
	}
	mb.Umount(t)
	out = repoMust(t, e, "expire", "--repo", repo, "--keep-full", "1")
	if !strings.Contains(out, "removed "+b[0]) {
		t.Errorf("expire after the unmount said:\n%s", out)
	}
	if names := repoListOK(t, e, repo); fmt.Sprint(names) != fmt.Sprint([]string{a1full, a[2], a3}) {
		t.Errorf("after the second expire: %q", names)
	}
}

// snapshotNames lists the entries of a directory, for "nothing changed".
func snapshotNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, e := range ents {
		fi, _ := e.Info()
		s = append(s, fmt.Sprintf("%s %v %d", e.Name(), fi.Mode(), fi.Size()))
	}
	return strings.Join(s, "\n")
}
