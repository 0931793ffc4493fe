package integration

import (
	"os"
	"path"
	"testing"
	"time"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/mountctl"
	"github.com/combinefs/combinefs/repo"
)

// s3MountStats are the counters of a mount from an object store: the
// mount's own and its S3 requests by kind.
type s3MountStats struct {
	fusefs.Stats
	S3 *repo.RequestCounts
}

func (ch *s3Chain) stats(t *testing.T, pid int, mp string) s3MountStats {
	t.Helper()
	var s s3MountStats
	if err := mountctl.RequestStats(pid, ch.e.Host(mountctl.StatsPath(mp)), time.Minute, &s); err != nil {
		t.Fatal(err)
	}
	if s.S3 == nil {
		t.Fatalf("the stats of the mount at %s count no S3 requests", mp)
	}
	return s
}

// checkS3CacheDir mounts the last point of the bucket's chain read-only
// with --cache-dir twice. Each time every file reads byte-identical to
// pg_combinebackup's output. The first mount fetches the files' blocks
// from the bucket and fills the directory; the second serves every file
// from the directory: after its open it sends no GET (the INCREMENTAL
// headers a file's extent map needs come with the points' markers).
func checkS3CacheDir(t *testing.T, ch *s3Chain) {
	last := len(ch.names) - 1
	cdir := path.Join(ch.e.PrivateDir(t), "cache")

	mp := cowMountPoint(t, ch.e, ch.e.TempDir(t), "cached1")
	pid := ch.mount(t, last, mp, "--cache-dir", cdir)
	if d := TreeDiff(ch.e.Host(ch.refs[last]), ch.e.Host(mp), nil, "backup_manifest"); d != "" {
		t.Errorf("first mount with --cache-dir of %s from %s differs from pg_combinebackup:\n%s", ch.names[last], ch.url, d)
	}
	var st s3MountStats
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if st = ch.stats(t, pid, mp); st.CacheDirPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache directory fills still pending after 5 minutes: %+v", st.CacheDir)
		}
	}
	if st.CacheDir.Filled == 0 || st.CacheDir.Rejected != 0 || st.IOErrors != 0 {
		t.Errorf("first mount from %s: %+v, %d read errors; want files filled, none rejected, no read errors", ch.url, st.CacheDir, st.IOErrors)
	}
	ch.umount(t, mp)
	if fi, err := os.Stat(ch.e.Host(cdir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the cache directory after the first mount: %v; want mode 0700", err)
	}

	mp = cowMountPoint(t, ch.e, ch.e.TempDir(t), "cached2")
	pid = ch.mount(t, last, mp, "--cache-dir", cdir)
	open := ch.stats(t, pid, mp)
	if d := TreeDiff(ch.e.Host(ch.refs[last]), ch.e.Host(mp), nil, "backup_manifest"); d != "" {
		t.Errorf("second mount with --cache-dir of %s from %s differs from pg_combinebackup:\n%s", ch.names[last], ch.url, d)
	}
	st = ch.stats(t, pid, mp)
	if got := st.S3.Sub(*open.S3); got.Get != 0 || st.ReconOpens != 0 || st.SourceReads != 0 || st.CacheDirOpens == 0 || st.CacheDir.Rejected != 0 {
		t.Errorf("second mount from %s, reading every file: %s after its open, %d reconstructed opens, %d source reads, %d opens from the cache directory, %+v; want no GET, 0, 0, some, none rejected",
			ch.url, got, st.ReconOpens, st.SourceReads, st.CacheDirOpens, st.CacheDir)
	}
	ch.umount(t, mp)
}
