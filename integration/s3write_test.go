package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/combinefs/combinefs/capture"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// s3Download copies point name of the bucket's repository into the
// in-root directory dir/name through Storage.List and ReadRange (directory
// markers become directories), owned by the server's user as a backup
// pg_basebackup wrote would be, and returns its in-root path.
func s3Download(t *testing.T, e *Env, st repo.Storage, dir, name string) string {
	t.Helper()
	ctx := context.Background()
	objs, err := st.List(ctx, name+"/")
	if err != nil {
		t.Fatal(err)
	}
	root := path.Join(dir, name)
	e.MkdirAll(t, root)
	for _, o := range objs {
		p := e.Host(path.Join(dir, o.Name))
		if strings.HasSuffix(o.Name, repo.DirMarkerSuffix) {
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := st.ReadRange(ctx, o.Name, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.ChownTree(t, root)
	return root
}

// s3Bucket starts a test's S3 server and bucket, and opens the repository
// s3://BUCKET/backups/db1 for the test's own reads and writes.
func s3Bucket(t *testing.T) (*s3test.Server, string, *repo.S3) {
	t.Helper()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	srv.Setenv(t)
	st, err := repo.NewS3(context.Background(), bucket, "backups/db1/", repo.S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	return srv, "s3://" + bucket + "/backups/db1", st
}

// s3PointNames is what list --json calls the points of url, oldest first,
// failing the test unless every one is intact.
func s3PointNames(t *testing.T, e *Env, srv *s3test.Server, url string) []string {
	t.Helper()
	out, code := s3Combinefs(t, e, srv, "list", "--json", "--repo", url)
	if code != 0 {
		t.Fatalf("list --repo %s: exit %d\n%s", url, code, out)
	}
	var names []string
	for _, p := range listPoints(t, out) {
		if p["chain_ok"] != true {
			t.Fatalf("list --repo %s: point %v is not intact\n%s", url, p["name"], out)
		}
		names = append(names, p["name"].(string))
	}
	return names
}

// TestS3WriteCapture: a full and two incremental backups captured from a
// real PostgreSQL straight into a bucket (SeaweedFS), with a table large
// enough for multipart uploads. list shows the chain intact and verify
// --repo passes; the points downloaded pass pg_verifybackup, flatten of
// the downloaded chain is byte-identical to pg_combinebackup's output of
// it, and a server on that output has the rows of the last point.
func TestS3WriteCapture(t *testing.T) {
	e := Provision(t)
	srv, url, st := s3Bucket(t)
	names := s3CaptureChain(t, e, srv, url)
	if got := s3PointNames(t, e, srv, url); strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("list shows %q, want %q", got, names)
	}
	out, code := s3Combinefs(t, e, srv, "verify", "--repo", url)
	if code != 0 || !strings.Contains(out, "all 3 points of "+url+" verified") {
		t.Fatalf("verify --repo %s: exit %d\n%s", url, code, out)
	}

	dl := e.TempDir(t)
	var dirs []string
	for _, n := range names {
		d := s3Download(t, e, st, dl, n)
		e.VerifyBackup(t, d)
		checkHeaderPack(t, e, st, d, n)
		dirs = append(dirs, d)
	}
	ref := path.Join(e.TempDir(t), "ref")
	e.CombineBackup(t, ref, dirs)
	flat := path.Join(e.TempDir(t), "flat")
	mustCombinefs(t, e, append([]string{"flatten", "-o", flat}, dirs...)...)
	if d := TreeDiff(e.Host(ref), e.Host(flat), nil, "backup_manifest"); d != "" {
		t.Fatalf("flatten of the downloaded chain differs from pg_combinebackup's output:\n%s", d)
	}
	srvc := e.StartServer(t, ref, ServerOptions{FixOwnership: true})
	if got := strings.TrimSpace(srvc.Psql(t, "postgres", "SELECT string_agg(point::text, ',' ORDER BY point) FROM marker")); got != "0,1,2" {
		t.Fatalf("server on the downloaded chain: marker rows %q, want 0,1,2", got)
	}
}

// checkHeaderPack checks that point name's marker holds a header pack with
// exactly the header of each INCREMENTAL file of the point (downloaded to
// dir), as the capture streamed them up: none for a full backup.
func checkHeaderPack(t *testing.T, e *Env, st repo.Storage, dir, name string) {
	t.Helper()
	marker, err := st.ReadRange(context.Background(), repo.MarkerName(name), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	pack, err := repo.ParseMarker(name, marker)
	if err != nil || pack == nil {
		t.Fatalf("the marker of %s: %v, or no header pack", name, err)
	}
	want := 0
	err = filepath.WalkDir(e.Host(dir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasPrefix(d.Name(), "INCREMENTAL.") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.Host(dir), p)
		want++
		if h, ok := pack[rel]; !ok || len(h) < 12 || !bytes.Equal(h, data[:len(h)]) || len(h) != 12+4*int(binary.NativeEndian.Uint32(data[4:])) {
			t.Errorf("the marker of %s: the header of %s is %x, the file starts %x", name, rel, h, data[:min(len(data), 64)])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pack) != want {
		t.Errorf("the marker of %s lists %d headers, the point has %d INCREMENTAL files", name, len(pack), want)
	}
}

// s3Uploads lists the incomplete multipart uploads in the bucket.
func s3Uploads(t *testing.T, srv *s3test.Server, bucket string) []string {
	t.Helper()
	res, err := srv.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, u := range res.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}

// TestS3WriteInterrupted: a capture into a bucket killed (kill -9) at each
// phase of its upload, or whose S3 server stops under it, never leaves a
// point: list shows the points it showed before, a failed capture says
// why in one line, and the next capture removes what was left (objects and
// incomplete multipart uploads) and succeeds. Bad input (a missing bucket,
// wrong credentials) is a one-line error.
func TestS3WriteInterrupted(t *testing.T) {
	e := Provision(t)
	srv, url, st := s3Bucket(t)
	bucket := strings.SplitN(url, "/", 4)[2]
	c := e.InitCluster(t, ClusterOptions{})
	c.Pgbench(t, "-i", "-q", "-s", "3", "postgres")
	c.Psql(t, "postgres", "CREATE TABLE marker (point int)")
	names := []string{repoCapturePointEnv(t, e, c, url, srv.Env(), 0, true)}
	args := append([]string{"capture", "--repo", url, "-c", "fast", "--progress=false"}, connArgs(c)...)
	ctx := context.Background()

	// leftOver checks that list shows exactly names and that what a failed
	// capture left is there for the next one to remove.
	leftOver := func(what string, wantUpload bool) {
		t.Helper()
		if got := s3PointNames(t, e, srv, url); strings.Join(got, " ") != strings.Join(names, " ") {
			t.Fatalf("after %s: list shows %q, want %q", what, got, names)
		}
		if up := s3Uploads(t, srv, bucket); wantUpload && len(up) == 0 {
			t.Errorf("after %s: no incomplete multipart upload left, the test shows nothing", what)
		}
	}
	// next captures again and checks that it removed the leftovers.
	next := func(what string, mark int) {
		t.Helper()
		names = append(names, repoCapturePointEnv(t, e, c, url, srv.Env(), mark, false))
		if got := s3PointNames(t, e, srv, url); strings.Join(got, " ") != strings.Join(names, " ") {
			t.Fatalf("capture after %s: list shows %q, want %q", what, got, names)
		}
		if up := s3Uploads(t, srv, bucket); len(up) != 0 {
			t.Errorf("capture after %s left incomplete multipart uploads %q", what, up)
		}
		left, err := st.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range left {
			top, _, _ := strings.Cut(o.Name, "/")
			if repo.IsPointName(top) && !strings.Contains(" "+strings.Join(names, " ")+" ", " "+top+" ") {
				t.Fatalf("capture after %s left %s of an unfinished point", what, o.Name)
			}
		}
	}

	for i, at := range []string{capture.CrashS3Multipart, capture.CrashS3Uploaded, capture.CrashS3Manifest} {
		c.Psql(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 13 = 0")
		c.WaitForWALSummary(t)
		out, code := repoCombinefs(t, e, append(srv.Env(), repo.CrashEnv+"="+at), args...)
		if code == 0 {
			t.Fatalf("capture killed at %s: exit 0\n%s", at, out)
		}
		leftOver("kill -9 at "+at, at == capture.CrashS3Multipart)
		next("kill -9 at "+at, 10+i)
	}

	// The server stops mid-capture: the transfer is slowed (--max-rate) so
	// that it is stopped while files are going up.
	c.Psql(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 11 = 0")
	c.WaitForWALSummary(t)
	cmd := e.Command(ctx, false, e.CombinefsPath(t), append(args, "--max-rate", "4M")...)
	cmd.Env = append(cmd.Env, srv.Env()...)
	var buf lockedBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		objs, err := st.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		started := false
		for _, o := range objs {
			top, _, _ := strings.Cut(o.Name, "/")
			started = started || repo.IsPointName(top) && top > names[len(names)-1]
		}
		if started {
			break
		}
	}
	srv.Kill()
	err := cmd.Wait()
	out := strings.TrimSpace(buf.String())
	if err == nil || strings.Count(out, "\n") != 0 || !strings.Contains(out, "combinefs capture: ") {
		t.Fatalf("capture with the S3 server stopped: %v, want one line:\n%s", err, out)
	}
	t.Logf("capture with the S3 server stopped: %s", out)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	leftOver("the S3 server stopped", false)
	next("the S3 server stopped", 20)

	// Bad input: one line each, non-zero exit, nothing written.
	for _, tc := range []struct {
		url  string
		env  []string
		want string
	}{
		{"s3://" + bucket + "-none/x", nil, "s3://" + bucket + "-none: the bucket does not exist"},
		{url, []string{"AWS_SECRET_ACCESS_KEY=wrong"}, "access denied"},
	} {
		a := append([]string{"capture", "--repo", tc.url, "--progress=false"}, connArgs(c)...)
		out, code := repoCombinefs(t, e, append(srv.Env(), tc.env...), a...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("combinefs %s: exit %d, want one line with %q:\n%s", strings.Join(a, " "), code, tc.want, out)
		}
	}
	if got := s3PointNames(t, e, srv, url); strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("after bad input: list shows %q, want %q", got, names)
	}
}

// s3SwitchAndWait is switchAndWait for an archive in a bucket.
func s3SwitchAndWait(t *testing.T, c *Cluster, st repo.Storage, a *archiveProc) format.LSN {
	t.Helper()
	return switchAndWaitFor(t, c, a, func(tli uint32, seg string) bool {
		name := repo.WALObject(tli, seg)
		objs, err := st.List(context.Background(), name)
		return err == nil && len(objs) == 1 && objs[0].Name == name
	})
}

// TestS3WriteArchive: combinefs archive streams WAL into a bucket under
// pgbench through a kill -9 at each phase of a segment's upload (a test
// hook) and one from outside mid-stream, and resumes each time from the
// bucket's end: list shows a window and no gap, verify --repo reads every
// record. A server on a local flatten of a point downloaded from the
// bucket, with combinefs wal-get --repo s3://... as its restore_command,
// replays to a restore point made after the backup and has exactly the
// rows committed before it, and so does a server on a copy-on-write mount
// from the bucket with --target-name. A second archiver is refused; wal-get
// of a file the archive lacks fails. The S3 server stopped under the
// archiver makes it wait and reconnect, not exit, and it resumes once the
// server is back.
func TestS3WriteArchive(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	srv, url, st := s3Bucket(t)
	c := e.InitCluster(t, ClusterOptions{InitdbArgs: []string{"--wal-segsize=1"}})
	c.Pgbench(t, "-i", "-q", "-s", "1", "postgres")
	c.Psql(t, "postgres", "CREATE TABLE marker (point int); CREATE TABLE marks (id int PRIMARY KEY)")
	stopLoad := startRateLoad(t, c, "")
	env := srv.Env()

	killArchiveAtPhases(t, e, c, url, env)
	point := repoCapturePointEnv(t, e, c, url, env, 1, true)

	a := startArchive(t, e, c, url, env, "--slot", "arch")
	s3SwitchAndWait(t, c, st, a)
	refuseSecondThenKill(t, e, c, url, env, a)

	a = startArchive(t, e, c, url, env, "--slot", "arch")
	s3SwitchAndWait(t, c, st, a)
	storeOutage(t, c, srv, st, a)
	c.Psql(t, "postgres", "INSERT INTO marks VALUES (1)")
	c.Psql(t, "postgres", "SELECT pg_create_restore_point('s3rp')")
	c.Psql(t, "postgres", "INSERT INTO marks VALUES (2)")
	s3SwitchAndWait(t, c, st, a)
	stopLoad()
	c.Psql(t, "postgres", "CHECKPOINT")
	s3SwitchAndWait(t, c, st, a)
	a.stop(t)
	t.Logf("archive log:\n%s", a.out.String())

	list, code := s3Combinefs(t, e, srv, "list", "--repo", url)
	if code != 0 || strings.Contains(list, "gap:") || !strings.Contains(list, "recoverable: timeline 1") {
		t.Fatalf("list --repo %s: exit %d, a gap or no window:\n%s", url, code, list)
	}
	out, code := s3Combinefs(t, e, srv, "verify", "--repo", url)
	if code != 0 || !strings.Contains(out, "WAL archive of timeline 1 is continuous") {
		t.Fatalf("verify --repo %s: exit %d\n%s", url, code, out)
	}

	// PITR from the bucket's archive on a local copy of the point.
	dl := s3Download(t, e, st, e.TempDir(t), point)
	flat := path.Join(e.TempDir(t), "flat")
	mustCombinefs(t, e, "flatten", "-o", flat, dl)
	var restore strings.Builder
	for _, kv := range env {
		if strings.HasPrefix(kv, "AWS_") {
			restore.WriteString(kv + " ")
		}
	}
	fmt.Fprintf(&restore, "%s wal-get --repo %s %%f %%p", e.CombinefsPath(t), url)
	appendFile(t, e.Host(path.Join(flat, "postgresql.auto.conf")), fmt.Sprintf(
		"\nrestore_command = %s\nrecovery_target_name = 's3rp'\nrecovery_target_action = 'pause'\n", confQuote(restore.String())))
	if err := os.WriteFile(e.Host(path.Join(flat, "recovery.signal")), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rec := e.StartServer(t, flat, ServerOptions{FixOwnership: true, Settings: map[string]string{"hot_standby": "on"}})
	waitPaused(t, rec)
	if got := rec.Psql(t, "postgres", "SELECT string_agg(id::text, ',' ORDER BY id) FROM marks"); strings.TrimSpace(got) != "1" {
		t.Errorf("recovered to the restore point from %s: marks %q, want 1", url, got)
	}
	rec.Stop(t, "fast")

	// PITR on a copy-on-write mount from the bucket: mount picks the point
	// from the bucket's archive and writes the recovery settings into
	// UPPER, with wal-get --repo s3://... --s3-endpoint as restore_command;
	// the server has the credentials in its environment, not the endpoint.
	mp := path.Join(e.TempDir(t), "pitr-mnt")
	e.MkdirAll(t, mp)
	upper := path.Join(e.PrivateDir(t), "upper")
	mlog := mp + ".log"
	if out, code := s3RootCombinefs(t, e, srv, "mount", "--daemon", "--cow", upper, "--log", mlog, "--repo", url,
		"--owner", fmt.Sprintf("%d:%d", e.UID, e.GID), "--target-name", "s3rp", mp); code != 0 {
		t.Fatalf("mount --repo %s --target-name s3rp: exit %d\n%s\n%s", url, code, out, readFrom(e.Host(mlog), 0))
	}
	t.Cleanup(func() { runCombinefs(t, e, "umount", "--lazy", "--timeout", "10s", mp) })
	onMount := e.StartServer(t, mp, ServerOptions{Env: s3Credentials(srv), Settings: cowServerSettings})
	waitPaused(t, onMount)
	if got := onMount.Psql(t, "postgres", "SELECT string_agg(id::text, ',' ORDER BY id) FROM marks"); strings.TrimSpace(got) != "1" {
		t.Errorf("recovered on a mount from %s to the restore point: marks %q, want 1", url, got)
	}
	onMount.Stop(t, "fast")
	mustCombinefs(t, e, "umount", mp)
	checkS3Exec(t, e, srv, url, "s3rp", 1)

	// A file the archive lacks: non-zero exit, as restore_command must.
	missing := format.WALSegmentName(1, 0xFFFFF, 1<<20)
	out, code = s3Combinefs(t, e, srv, "wal-get", "--repo", url, missing, path.Join(e.TempDir(t), "x"))
	if code == 0 || !strings.Contains(out, "not in the archive") {
		t.Errorf("wal-get of %s: exit %d\n%s", missing, code, out)
	}
}

// storeOutage stops the S3 server under the running archiver while the
// load goes on and segments end, then starts it again: the archiver logs
// the failed upload and reconnects with backoff instead of exiting, and
// archives again once the store is back (list and verify then check that
// the archive has no gap).
func storeOutage(t *testing.T, c *Cluster, srv *s3test.Server, st repo.Storage, a *archiveProc) {
	t.Helper()
	srv.Stop()
	for range 3 {
		c.Psql(t, "postgres", "SELECT pg_switch_wal()")
		time.Sleep(2 * time.Second)
	}
	select {
	case <-a.done:
		t.Fatalf("archive exited while the S3 server was down:\n%s", a.out.String())
	default:
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	s3SwitchAndWait(t, c, st, a)
	if out := a.out.String(); !strings.Contains(out, "reconnecting in") {
		t.Errorf("archive did not report the outage and its retry:\n%s", out)
	}
}
