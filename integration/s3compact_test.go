package integration

import (
	"context"
	"fmt"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// s3compactRun runs combinefs as root with the S3 server's credentials and
// env added, and --s3-endpoint.
func s3compactRun(t *testing.T, e *Env, srv *s3test.Server, env []string, args ...string) (string, int) {
	t.Helper()
	return combinefsAs(t, e, true, append(s3Credentials(srv), env...), append(args, "--s3-endpoint", srv.Endpoint)...)
}

// s3CaptureChain captures a full and two incremental points of a new
// cluster into the bucket's repository url, with a table large enough for
// multipart uploads, and returns their names.
func s3CaptureChain(t *testing.T, e *Env, srv *s3test.Server, url string) []string {
	t.Helper()
	c := e.InitCluster(t, ClusterOptions{})
	c.Pgbench(t, "-i", "-q", "-s", "3", "postgres") // pgbench_accounts > repo.S3PartSize
	c.Psql(t, "postgres", "CREATE TABLE marker (point int)")
	var names []string
	for i := 0; i < 3; i++ {
		names = append(names, repoCapturePointEnv(t, e, c, url, srv.Env(), i, i == 0))
	}
	return names
}

// s3FlattenSame flattens point of the bucket's repository url and compares
// it with ref (pg_combinebackup's output), manifest aside.
func s3FlattenSame(t *testing.T, e *Env, srv *s3test.Server, url, point, ref string) {
	t.Helper()
	out := path.Join(e.TempDir(t), "flat")
	if msg, code := s3compactRun(t, e, srv, nil, "flatten", "-o", out, "--repo", url, "--point", point); code != 0 {
		t.Fatalf("flatten --repo %s --point %s: exit %d\n%s", url, point, code, msg)
	}
	if d := TreeDiff(e.Host(ref), e.Host(out), nil, "backup_manifest"); d != "" {
		t.Errorf("flatten of %s from %s differs from pg_combinebackup of its original chain:\n%s", point, url, d)
	}
	os.RemoveAll(e.Host(out))
}

// TestS3Compact: a full and two incremental backups captured from a real
// PostgreSQL into a bucket (SeaweedFS), with a table large enough for
// multipart uploads. compact of the last point leaves one full point that
// flattens byte-identical to pg_combinebackup of the original chain
// (downloaded), verify --repo passes, the old chain's objects and the
// staging directory are gone. compact killed at each of its phases (on
// copies of the chain under other prefixes) leaves intact points that
// flatten to the same bytes, never a half point, and the next command
// that takes the lock finishes or undoes it. exec on the bucket, before
// and after the compaction, answers what a server on the local
// pg_combinebackup output answers.
func TestS3Compact(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	srv, url, st := s3Bucket(t)
	names := s3CaptureChain(t, e, srv, url)
	dl := e.TempDir(t)
	var dirs []string
	for _, n := range names {
		dirs = append(dirs, s3Download(t, e, st, dl, n))
	}
	ref1, ref2 := path.Join(e.TempDir(t), "ref1"), path.Join(e.TempDir(t), "ref2")
	e.CombineBackup(t, ref1, dirs[:2])
	e.CombineBackup(t, ref2, dirs)

	t.Run("killed", func(t *testing.T) { s3CompactKilled(t, e, srv, url, names, dirs, ref1, ref2) })

	// exec on the chain of three in the bucket, before it is compacted.
	queries := []string{
		"SELECT string_agg(point::text, ',' ORDER BY point) FROM marker",
		"SELECT sum(abalance), count(*) FROM pgbench_accounts",
	}
	execS3 := func(point string) []string {
		var got []string
		for _, q := range queries {
			got = append(got, strings.TrimSpace(execMust(t, e, s3Credentials(srv), "--repo", url, "--point", point,
				"--s3-endpoint", srv.Endpoint, "--owner", e.User, "--", "psql", "-XAtc", q, "postgres")))
		}
		return got
	}
	before := execS3(names[2])

	// compact the last point: one full point in its place.
	tmp := e.TempDir(t)
	out, code := s3compactRun(t, e, srv, nil, "compact", "--repo", url, "--point", names[2], "--tmp-dir", tmp)
	full := strings.Replace(names[2], "INCREMENTAL", "FULL", 1)
	if code != 0 || !strings.Contains(out, "combinefs compact: "+full+" replaces 3 points") {
		t.Fatalf("compact --repo %s --point %s: exit %d\n%s", url, names[2], code, out)
	}
	t.Logf("compact: %s", strings.TrimSpace(out))
	if got := s3PointNames(t, e, srv, url); fmt.Sprint(got) != fmt.Sprint([]string{full}) {
		t.Fatalf("after compact, list shows %q, want %q", got, full)
	}
	if out, code := s3Combinefs(t, e, srv, "verify", "--repo", url); code != 0 || !strings.Contains(out, "all 1 points of "+url+" verified") {
		t.Fatalf("verify --repo %s after compact: exit %d\n%s", url, code, out)
	}
	s3FlattenSame(t, e, srv, url, full, ref2)
	for _, n := range names {
		if objs, err := st.List(context.Background(), n+"/"); err != nil || len(objs) != 0 {
			t.Errorf("after compact, replaced point %s has %d objects (%v)", n, len(objs), err)
		}
	}
	if ents, _ := os.ReadDir(e.Host(tmp)); len(ents) != 0 {
		t.Errorf("compact left its staging in --tmp-dir: %v", ents)
	}

	// exec on the compacted point, and without --owner a one-line refusal
	// (an object has no owner to run the server as).
	after := execS3(full)
	msg, _, code := execFails(t, e, s3Credentials(srv), "--repo", url, "--point", full, "--s3-endpoint", srv.Endpoint, "--", "true")
	if code != 1 || !strings.Contains(msg, "give --owner USER") {
		t.Errorf("exec on a bucket as root without --owner: exit %d, %q", code, msg)
	}
	execNothingLeft(t, e, nil)
	want := e.StartServer(t, ref2, ServerOptions{FixOwnership: true})
	for i, q := range queries {
		w := strings.TrimSpace(want.Psql(t, "postgres", q))
		if before[i] != w || after[i] != w {
			t.Errorf("%s: %q by exec on %s, %q on %s, %q on pg_combinebackup's output", q, before[i], names[2], after[i], full, w)
		}
	}
	if before[0] != "0,1,2" {
		t.Errorf("marker rows %q, want 0,1,2", before[0])
	}
}

// s3CompactKilled kills compact of the second point at each phase, each
// time on a copy of the chain under a prefix of its own: list shows intact
// points only (the new one only once its marker is written), every point
// flattens as before, and expire (the next holder of the lock) rolls the
// compaction back, or forward once the point was published, leaving no
// leftovers and none of the retired points' objects.
func s3CompactKilled(t *testing.T, e *Env, srv *s3test.Server, url string, names, dirs []string, ref1, ref2 string) {
	full := strings.Replace(names[1], "INCREMENTAL", "FULL", 1)
	bucket, _, _, _ := repo.ParseS3URL(url)
	for i, ph := range []string{"compact-verified", "compact-journaled", repo.CrashCompactUploading, "compact-published"} {
		prefix := fmt.Sprintf("killed/%d/", i)
		st, err := repo.NewS3(context.Background(), bucket, prefix, repo.S3Options{Endpoint: srv.Endpoint})
		if err != nil {
			t.Fatal(err)
		}
		for k, n := range names {
			if err := repo.CopyPoint(context.Background(), st, e.Host(dirs[k]), n, true); err != nil {
				t.Fatal(err)
			}
		}
		u := "s3://" + bucket + "/" + strings.TrimSuffix(prefix, "/")
		out, code := s3compactRun(t, e, srv, []string{repo.CrashEnv + "=" + ph}, "compact", "--repo", u, "--point", names[1], "--tmp-dir", e.TempDir(t))
		if code == 0 {
			t.Fatalf("compact with %s=%s was not killed:\n%s", repo.CrashEnv, ph, out)
		}
		forward := ph == "compact-published"
		got := s3PointNames(t, e, srv, u)
		wantNames := names
		if forward {
			wantNames = []string{names[0], full, names[1], names[2]}
		}
		if fmt.Sprint(got) != fmt.Sprint(wantNames) {
			t.Errorf("killed at %s: points %q, want %q", ph, got, wantNames)
		}
		s3FlattenSame(t, e, srv, u, names[2], ref2)
		if forward {
			s3FlattenSame(t, e, srv, u, full, ref1)
		}
		if out, code := s3compactRun(t, e, srv, nil, "expire", "--repo", u, "--keep-full", "9"); code != 0 {
			t.Fatalf("expire after a kill at %s: exit %d\n%s", ph, code, out)
		}
		wantNames, gone := names, []string{full}
		if forward {
			wantNames, gone = []string{full, names[2]}, names[:2]
		}
		if got := s3PointNames(t, e, srv, u); fmt.Sprint(got) != fmt.Sprint(wantNames) {
			t.Errorf("after a kill at %s and recovery: points %q, want %q", ph, got, wantNames)
		}
		if out, _ := s3compactRun(t, e, srv, nil, "list", "--repo", u); strings.Contains(out, "left by an interrupted command") {
			t.Errorf("leftovers after recovery from a kill at %s:\n%s", ph, out)
		}
		for _, k := range s3Uploads(t, srv, bucket) {
			if strings.HasPrefix(k, prefix) {
				t.Errorf("after recovery from a kill at %s, an incomplete upload of %s is left", ph, k)
			}
		}
		for _, n := range gone {
			if objs, err := st.List(context.Background(), n+"/"); err != nil || len(objs) != 0 {
				t.Errorf("after recovery from a kill at %s, %s has %d objects (%v)", ph, n, len(objs), err)
			}
		}
		s3FlattenSame(t, e, srv, u, names[2], ref2)
		if forward {
			s3FlattenSame(t, e, srv, u, full, ref1)
		} else {
			s3FlattenSame(t, e, srv, u, names[1], ref1)
		}
	}
}
