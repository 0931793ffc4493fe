package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/combinefs/combinefs/internal/mountctl"
	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// s3Chain is a chain captured locally and pushed into a bucket.
type s3Chain struct {
	e      *Env
	srv    *s3test.Server
	local  string   // the local repository (in-root)
	url    string   // s3://BUCKET/PREFIX of its copy
	names  []string // its points, oldest first
	refs   []string // pg_combinebackup of the local chain up to each point
	inputs []string // the local chain's backups (in-root)
	server *Cluster // where the backups came from
	store  *repo.S3 // the bucket's repository
}

// newS3Chain captures a full backup and two incrementals of a pgbench
// database into a local repository, copies the repository into a new
// bucket (each point's objects, its empty directories' markers, then its
// marker object, as a capture to S3 leaves them), and combines each point
// with pg_combinebackup for reference.
func newS3Chain(t *testing.T, e *Env, srv *s3test.Server) *s3Chain {
	t.Helper()
	c := e.InitCluster(t, ClusterOptions{})
	c.Pgbench(t, "-i", "-q", "-s", "3", "postgres")
	c.Psql(t, "postgres", "CREATE TABLE marker (point int)")
	ch := &s3Chain{e: e, srv: srv, local: path.Join(e.TempDir(t), "repo"), server: c}
	for i := 0; i < 3; i++ {
		ch.names = append(ch.names, repoCapturePoint(t, e, c, ch.local, i, i == 0))
	}
	bucket := srv.NewBucket(t)
	ch.url = "s3://" + bucket + "/backups/db1"
	srv.Setenv(t)
	st, err := repo.NewS3(context.Background(), bucket, "backups/db1/", repo.S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	ch.store = st
	for _, n := range ch.names {
		if err := repo.CopyPoint(context.Background(), st, e.Host(path.Join(ch.local, n)), n, true); err != nil {
			t.Fatal(err)
		}
	}
	refRoot := e.TempDir(t)
	for k, n := range ch.names {
		ch.inputs = append(ch.inputs, path.Join(ch.local, n))
		ref := path.Join(refRoot, fmt.Sprintf("ref%d", k))
		e.CombineBackup(t, ref, ch.inputs)
		ch.refs = append(ch.refs, ref)
	}
	return ch
}

// run runs combinefs as root (as runCombinefs does) with the S3 server's
// credentials and --s3-endpoint.
func (ch *s3Chain) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return s3RootCombinefs(t, ch.e, ch.srv, args...)
}

// manifestLinesDiff is ManifestDiff up to the order of the files: a
// bucket lists a backup's files sorted, where pg_combinebackup follows the
// readdir order of the final backup's directories.
func manifestLinesDiff(want, got string) string {
	w, err1 := os.ReadFile(want)
	g, err2 := os.ReadFile(got)
	if err1 != nil || err2 != nil {
		return fmt.Sprintf("read manifests: %v %v", err1, err2)
	}
	norm := func(b []byte) string {
		lines := strings.Split(string(lastModified.ReplaceAll(b, []byte(`"Last-Modified": "*"`))), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, `"Manifest-Checksum": `) {
				lines[i] = ""
			}
			lines[i] = strings.TrimSuffix(lines[i], ",")
		}
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	if a, b := norm(w), norm(g); a != b {
		return fmt.Sprintf("got:\n%s\nwant:\n%s", abbreviate(b, 2000), abbreviate(a, 2000))
	}
	return ""
}

// mount mounts point k with --daemon and extra flags, and returns the
// serving process's id. At cleanup a mount still there is unmounted.
func (ch *s3Chain) mount(t *testing.T, k int, mp string, flags ...string) int {
	t.Helper()
	args := append([]string{"mount", "--daemon", "--repo", ch.url, "--point", ch.names[k],
		"--owner", fmt.Sprintf("%d:%d", ch.e.UID, ch.e.GID), "--log", mp + ".log"}, flags...)
	out, code := ch.run(t, append(args, mp)...)
	t.Cleanup(func() {
		if isMountedHost(ch.e.Host(mp)) {
			out, code := runCombinefs(t, ch.e, "umount", "--lazy", "--timeout", "10s", mp)
			t.Logf("cleanup: combinefs umount --lazy %s: exit %d %s", mp, code, strings.TrimSpace(out))
		}
	})
	if code != 0 || !isMountedHost(ch.e.Host(mp)) {
		t.Fatalf("combinefs %s: exit %d\n%s\n--- log ---\n%s", strings.Join(args, " "), code, out, readFrom(ch.e.Host(mp+".log"), 0))
	}
	st := stateFileOf(t, ch.e, mp)
	if st == nil || !mountctl.ProcessAlive(st.PID) {
		t.Fatalf("no running mount process for %s", mp)
	}
	return st.PID
}

// checkOpenRequests checks the requests the mount of point k (process pid
// at mp) sent before it served: three listings of the repository (its
// probe, its markers, their check once the chain is held) and one of each
// point of the chain; one GET of the label and control file of every point
// of the repository (the lookup links parents through them), one of
// PG_VERSION, backup_manifest and the marker of each point of the chain,
// and none of an INCREMENTAL header (the markers' header packs hold them
// all, the older backups' too); a lease PUT on each point of the chain;
// nothing else. None of it grows with the size of the relation files or
// with the number of INCREMENTAL files.
func (ch *s3Chain) checkOpenRequests(t *testing.T, k, pid int, mp string) {
	t.Helper()
	var s struct{ S3 *repo.RequestCounts }
	if err := mountctl.RequestStats(pid, ch.e.Host(mountctl.StatsPath(mp)), time.Minute, &s); err != nil {
		t.Fatal(err)
	}
	points, headers := uint64(k+1), uint64(0)
	for _, n := range ch.names[1 : k+1] {
		objs, err := ch.store.List(context.Background(), n+"/")
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if strings.HasPrefix(path.Base(o.Name), "INCREMENTAL.") {
				headers++
			}
		}
	}
	got := s.S3
	if got == nil {
		t.Fatalf("the stats of the mount of %s from %s count no S3 requests", ch.names[k], ch.url)
	}
	wantGet := 2*uint64(len(ch.names)) + 3*points
	if got.List != 3+points || got.Get != wantGet || got.Put != points || got.Delete+got.Other != 0 {
		t.Errorf("the mount of %s (%d points, %d INCREMENTAL files) sent before serving %s; want %d LIST, %d GET (no header's), %d PUT (the leases), nothing else\n--- log ---\n%s",
			ch.names[k], points, headers, got, 3+points, wantGet, points, readFrom(ch.e.Host(mp+".log"), 0))
	}
}

// tamperPack replaces the marker of point k with one whose header pack
// change altered, runs check with what change returned, and puts the
// marker back.
func (ch *s3Chain) tamperPack(t *testing.T, k int, change func(repo.HeaderPack) string, check func(string)) {
	t.Helper()
	ctx := context.Background()
	name := repo.MarkerName(ch.names[k])
	orig, err := ch.store.ReadRange(ctx, name, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	pack, err := repo.ParseMarker(ch.names[k], orig)
	if err != nil || pack == nil {
		t.Fatalf("the marker of %s: %v, or no header pack", ch.names[k], err)
	}
	what := change(pack)
	replace := func(data []byte) {
		if err := ch.store.Delete(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := ch.store.Put(ctx, name, data); err != nil {
			t.Fatal(err)
		}
	}
	replace(pack.Marker(ch.names[k]))
	defer replace(orig)
	check(what)
}

func (ch *s3Chain) umount(t *testing.T, mp string) {
	t.Helper()
	if out, code := runCombinefs(t, ch.e, "umount", mp); code != 0 {
		t.Fatalf("combinefs umount %s: exit %d\n%s", mp, code, out)
	}
}

// waitServing waits until the restarted S3 server serves every object of
// the repository again: it answers requests some seconds before its
// volumes are loaded, and answers reads of their objects with 500 until
// then.
func (ch *s3Chain) waitServing(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		objs, err := ch.store.List(ctx, "")
		for _, o := range objs {
			if err == nil {
				_, err = ch.store.ReadRange(ctx, o.Name, 0, 1)
			}
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted S3 server does not serve the repository: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// TestS3Read: a chain captured from a real PostgreSQL and copied into a
// real S3 server (SeaweedFS), read from the bucket: a read-only mount of
// each point is byte-identical to pg_combinebackup of the local chain; a
// server on a copy-on-write mount of the last point answers as one on the
// local combined backup; flatten from the bucket is identical to
// pg_combinebackup's output (manifest up to its timestamps); verify --repo
// passes; and with the S3 server stopped under a mount, reads fail with
// EIO while the mount stays up, and work again once the server is back.
func TestS3Read(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	srv := s3test.Start(t)
	ch := newS3Chain(t, e, srv)
	last := len(ch.names) - 1

	t.Run("mount", func(t *testing.T) {
		for k := range ch.names {
			mp := cowMountPoint(t, e, e.TempDir(t), "mnt")
			ch.checkOpenRequests(t, k, ch.mount(t, k, mp), mp)
			if d := TreeDiff(e.Host(ch.refs[k]), e.Host(mp), nil, "backup_manifest"); d != "" {
				t.Errorf("mount of %s from %s differs from pg_combinebackup of the local chain:\n%s", ch.names[k], ch.url, d)
			}
			ch.umount(t, mp)
		}
	})

	t.Run("flatten", func(t *testing.T) {
		out := path.Join(e.TempDir(t), "flat")
		if msg, code := ch.run(t, "flatten", "-o", out, "--repo", ch.url, "--point", ch.names[last]); code != 0 {
			t.Fatalf("flatten from %s: exit %d\n%s", ch.url, code, msg)
		}
		if d := TreeDiff(e.Host(ch.refs[last]), e.Host(out), nil, "backup_manifest"); d != "" {
			t.Errorf("flatten from %s differs from pg_combinebackup:\n%s", ch.url, d)
		}
		if d := manifestLinesDiff(e.Host(path.Join(ch.refs[last], "backup_manifest")), e.Host(path.Join(out, "backup_manifest"))); d != "" {
			t.Errorf("flatten's manifest differs from pg_combinebackup's:\n%s", d)
		}
		if msg, code := ch.run(t, "flatten", "--link", "-o", out+"2", "--repo", ch.url, "--point", ch.names[last]); code == 0 || !strings.HasPrefix(msg, "combinefs flatten: --link needs the backups on a local file system") {
			t.Errorf("flatten --link from a bucket: exit %d, want a refusal naming --link:\n%s", code, msg)
		}
		mustNotExist(t, e.Host(out+"2"), "a refused flatten")
	})

	t.Run("verify", func(t *testing.T) {
		if msg, code := ch.run(t, "verify", "--repo", ch.url); code != 0 {
			t.Fatalf("verify --repo %s: exit %d\n%s", ch.url, code, msg)
		}
		// A header in the last point's marker that fits its object's size
		// but names other blocks (a mount would trust it): verify says
		// which point and file.
		ch.tamperPack(t, last, func(pack repo.HeaderPack) string {
			for p, h := range pack {
				if len(h) > 12 {
					h[12] ^= 1
					return p
				}
			}
			t.Fatalf("no INCREMENTAL file of %s lists a block", ch.names[last])
			return ""
		}, func(rel string) {
			msg, code := ch.run(t, "verify", "--repo", ch.url)
			want := fmt.Sprintf("%s: FAILED: %q: its header differs from the one in the point's marker", ch.names[last], rel)
			if code == 0 || !strings.Contains(msg, want) || strings.Count(msg, "FAILED") != 1 {
				t.Errorf("verify --repo with a wrong header in the marker of %s: exit %d, want a failure of that point only, naming %s:\n%s", ch.names[last], code, rel, msg)
			}
		})
	})

	t.Run("cow", func(t *testing.T) {
		mp := cowMountPoint(t, e, e.TempDir(t), "cow")
		ch.mount(t, last, mp, "--cow", path.Join(e.PrivateDir(t), "upper"))
		srvOnMount := startOnMount(t, e, mp)
		got := srvOnMount.Snapshot(t)
		srvOnMount.Psql(t, "postgres", "INSERT INTO marker VALUES (100)")
		srvOnMount.Stop(t, "fast")
		// The reference server runs on a combine of its own: recovery
		// changes the pages of the directory it runs on.
		refDir := path.Join(e.TempDir(t), "ref")
		e.CombineBackup(t, refDir, ch.inputs)
		ref := e.StartServer(t, refDir, ServerOptions{Settings: cowServerSettings})
		want := ref.Snapshot(t)
		ref.Stop(t, "fast")
		if d := want.Diff(got); d != "" {
			t.Errorf("a server on a copy-on-write mount of %s from %s answers differently from one on pg_combinebackup's output:\n%s", ch.names[last], ch.url, d)
		}
		if _, ok := got.Table("postgres", "public.pgbench_accounts"); !ok {
			t.Errorf("the server on the mount has no pgbench_accounts")
		}
		ch.umount(t, mp)
	})

	t.Run("cachedir", func(t *testing.T) { checkS3CacheDir(t, ch) })

	t.Run("server down", func(t *testing.T) {
		rel := strings.TrimSpace(ch.server.Psql(t, "postgres", "SELECT pg_relation_filepath('pgbench_accounts')"))
		want, err := os.ReadFile(e.Host(path.Join(ch.refs[last], rel)))
		if err != nil {
			t.Fatal(err)
		}
		mp := cowMountPoint(t, e, e.TempDir(t), "down")
		pid := ch.mount(t, last, mp)
		srv.Kill()
		_, err = os.ReadFile(e.Host(path.Join(mp, rel)))
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("a read of %s with the S3 server down: %v, want EIO", rel, err)
		}
		if !isMountedHost(e.Host(mp)) || !mountctl.ProcessAlive(pid) {
			t.Fatalf("the mount went away when the S3 server stopped")
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		ch.waitServing(t)
		got, err := os.ReadFile(e.Host(path.Join(mp, rel)))
		if err != nil || string(got) != string(want) {
			t.Errorf("a read of %s once the server is back: %v (%d bytes, want %d, equal %v)\n--- mount log ---\n%s", rel, err, len(got), len(want), string(got) == string(want), lastLines(readFrom(e.Host(mp+".log"), 0), 30))
		}
		// The open fails instead when the store went down before the
		// mount read the file's older headers (in the background).
		log := readFrom(e.Host(mp+".log"), 0)
		if !strings.Contains(log, "read "+rel) && !strings.Contains(log, "open "+rel) {
			t.Errorf("the mount logged no failed read:\n%s", lastLines(log, 20))
		}
		ch.umount(t, mp)
	})
}
