package integration

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// s3Upload copies point name of the local repository dir into the bucket's
// repository: its files, then its marker (last, as a point appears on an
// object store). With marker false it stops before the marker, as a
// capture cut short would.
func s3Upload(t *testing.T, st *repo.S3, dir, name string, marker bool) {
	t.Helper()
	ctx := context.Background()
	root := filepath.Join(dir, name)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		return st.Put(ctx, filepath.ToSlash(rel), data)
	})
	if err != nil {
		t.Fatal(err)
	}
	if marker {
		if err := st.Put(ctx, repo.MarkerName(name), []byte(name+"\n")); err != nil {
			t.Fatal(err)
		}
	}
}

// s3Combinefs runs combinefs as the test's user with the S3 server's
// credentials in its environment (and --s3-endpoint, so that the flag is
// what reaches it).
func s3Combinefs(t *testing.T, e *Env, srv *s3test.Server, args ...string) (string, int) {
	t.Helper()
	return repoCombinefs(t, e, s3Credentials(srv), append(args, "--s3-endpoint", srv.Endpoint)...)
}

// s3RootCombinefs is s3Combinefs as root (mount).
func s3RootCombinefs(t *testing.T, e *Env, srv *s3test.Server, args ...string) (string, int) {
	t.Helper()
	return combinefsAs(t, e, true, s3Credentials(srv), append(args, "--s3-endpoint", srv.Endpoint)...)
}

// s3Credentials is the S3 server's environment without its endpoint.
func s3Credentials(srv *s3test.Server) []string {
	var env []string
	for _, kv := range srv.Env() {
		if !strings.HasPrefix(kv, "AWS_ENDPOINT_URL=") {
			env = append(env, kv)
		}
	}
	return env
}

// listPoints is list --json's points, without the repository's name.
func listPoints(t *testing.T, out string) []map[string]any {
	t.Helper()
	var l struct {
		Points    []map[string]any `json:"points"`
		Leftovers []string         `json:"leftovers"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	return l.Points
}

// TestS3Repository: a repository in a real S3 server (SeaweedFS) holding
// two chains captured from a real PostgreSQL: list shows what it shows of
// the same points on disk, verify --repo reads every object and catches a
// damaged one, an unfinished upload is a leftover and never a point, expire
// removes the older chain's objects, and bad input is a one-line error.
func TestS3Repository(t *testing.T) {
	e := Provision(t)
	srv := s3test.Start(t)
	c := e.InitCluster(t, ClusterOptions{})
	c.Pgbench(t, "-i", "-q", "-s", "2", "postgres")
	c.Psql(t, "postgres", "CREATE TABLE marker (point int)")
	local := path.Join(e.TempDir(t), "repo")
	var names []string
	for i := 0; i < 3; i++ {
		names = append(names, repoCapturePoint(t, e, c, local, i, i != 1))
	}
	bucket := srv.NewBucket(t)
	url := "s3://" + bucket + "/backups/db1"
	srv.Setenv(t)
	st, err := repo.NewS3(context.Background(), bucket, "backups/db1/", repo.S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		s3Upload(t, st, e.Host(local), n, true)
	}

	// list: the same points, chains and sizes as the local copy.
	want := listPoints(t, repoMust(t, e, "list", "--json", "--repo", local))
	out, code := s3Combinefs(t, e, srv, "list", "--json", "--repo", url)
	if code != 0 {
		t.Fatalf("list of %s: exit %d\n%s", url, code, out)
	}
	if got := listPoints(t, out); !jsonEqual(got, want) {
		t.Fatalf("list of %s differs from list of the same points on disk:\n%s\nwant\n%v", url, out, want)
	}

	// verify reads every object of every point.
	out, code = s3Combinefs(t, e, srv, "verify", "--repo", url)
	if code != 0 || !strings.Contains(out, "all 3 points of "+url+" verified") {
		t.Fatalf("verify of %s: exit %d\n%s", url, code, out)
	}

	// An upload without its marker is a leftover, not a point.
	extra := repoCapturePoint(t, e, c, local, 9, true)
	s3Upload(t, st, e.Host(local), extra, false)
	out, code = s3Combinefs(t, e, srv, "list", "--repo", url)
	if code != 0 || strings.Contains(out, extra+"  ") || !strings.Contains(out, extra+": left by an interrupted command") {
		t.Fatalf("list with an unfinished point %s: exit %d\n%s", extra, code, out)
	}

	// A damaged object fails verify (its checksum), naming the point.
	victim := names[1] + "/PG_VERSION"
	ctx := context.Background()
	data, err := st.ReadRange(ctx, victim, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	data[0] ^= 1
	if err := st.Delete(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, victim, data); err != nil {
		t.Fatal(err)
	}
	out, code = s3Combinefs(t, e, srv, "verify", "--repo", url)
	if code == 0 || !strings.Contains(out, names[1]+": FAILED: checksum mismatch for file \"PG_VERSION\"") {
		t.Fatalf("verify of a damaged object: exit %d\n%s", code, out)
	}

	// expire keeps the newest full point. Killed after it retired the
	// newest doomed point (deleted its marker), then killed again before
	// it deleted what it retired, it leaves intact points only, and its
	// lock object, which the next expire takes over (its holder is gone).
	for i, at := range []string{"expire-retired", "expire-before-delete"} {
		out, code = repoCombinefs(t, e, append(srv.Env(), repo.CrashEnv+"="+at), "expire", "--repo", url, "--keep-full", "1")
		if code == 0 {
			t.Fatalf("expire killed at %s: exit 0\n%s", at, out)
		}
		out, code = s3Combinefs(t, e, srv, "list", "--json", "--repo", url)
		var left []string
		for _, p := range listPoints(t, out) {
			left = append(left, p["name"].(string))
		}
		if want := append(names[:1-i:1-i], names[2]); code != 0 || strings.Join(left, " ") != strings.Join(want, " ") {
			t.Fatalf("after expire killed at %s: exit %d, points %q, want %q\n%s", at, code, left, want, out)
		}
	}
	// The next expire finishes: the first chain's objects go, and so does
	// the unfinished upload (under the repository's lock).
	out, code = s3Combinefs(t, e, srv, "expire", "--repo", url, "--keep-full", "1")
	if code != 0 {
		t.Fatalf("expire: exit %d\n%s", code, out)
	}
	for _, n := range append(names[:2:2], extra) {
		objs, err := st.List(ctx, n+"/")
		if err != nil || len(objs) != 0 {
			t.Errorf("after expire, %s still has %d objects (%v)", n, len(objs), err)
		}
	}
	out, code = s3Combinefs(t, e, srv, "list", "--json", "--repo", url)
	if got := listPoints(t, out); code != 0 || len(got) != 1 || got[0]["name"] != names[2] {
		t.Fatalf("list after expire: exit %d\n%s", code, out)
	}
	if _, err := st.ReadRange(ctx, ".combinefs.lock", 0, -1); err == nil {
		t.Error("expire left the repository's lock object behind")
	}

	// Bad input: one line each, non-zero exit.
	ep := []string{"--s3-endpoint", srv.Endpoint}
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{append([]string{"list", "--repo", "s3://" + bucket + "-none/x"}, ep...), nil, "s3://" + bucket + "-none: the bucket does not exist"},
		{append([]string{"list", "--repo", "s3://" + bucket + "/nothing/here"}, ep...), nil, "s3://" + bucket + "/nothing/here holds no combinefs repository"},
		{append([]string{"verify", "--repo", url}, ep...), []string{"AWS_SECRET_ACCESS_KEY=wrong"}, "access denied"},
		{append([]string{"compact", "--repo", url, "--point", names[2]}, ep...), nil, "is a full backup: there is nothing to compact"},
	} {
		out, code := repoCombinefs(t, e, append(srv.Env(), tc.env...), tc.args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("combinefs %s: exit %d, want one line with %q:\n%s", strings.Join(tc.args, " "), code, tc.want, out)
		}
	}
}

// jsonEqual compares two decoded JSON values.
func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
