package integration

import (
	"os"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/combinefs/combinefs/fusefs"
)

// TestMountReadOnlyCacheDir mounts the last point of a real chain read-only
// with --cache-dir twice. Each time every file reads byte-identical to
// pg_combinebackup's output. The first mount fills the directory from the
// reconstructed files' first opens (and refuses a second mount of the same
// directory meanwhile); once its fills are done, the files read the same
// again, now from the directory. The second mount serves every
// reconstructed file from the directory, reading no block of the backups.
func TestMountReadOnlyCacheDir(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	e.CombinefsPath(t)
	ch := BuildChain(t, e, ChainSpec{Rich: true})
	last := len(ch.Backups) - 1
	ref := path.Join(ch.Dir, "ref")
	ch.Combine(t, last, ref, "-N")
	recon := reconstructedFiles(t, ch, last)
	// In a directory of root's own: the cache refuses a parent the server's
	// user (who owns the chain's directory) could change.
	cdir := path.Join(e.PrivateDir(t), "cache")
	args := append([]string{"--cache-dir", cdir}, ch.Upto(last)...)

	// First mount: fills.
	mp := mountPoint(t, ch, "mnt-first")
	m := mountDaemon(t, e, mp, args...)
	compareMountWithReference(t, ch, last, ref, mp)
	other := mountPoint(t, ch, "mnt-other")
	out, code := runCombinefs(t, e, append(append([]string{"mount", "--daemon"}, args...), other)...)
	if code != 1 || !strings.Contains(out, "is in use by another combinefs mount") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("a second mount with the same --cache-dir: exit %d: %s", code, out)
	}
	st := waitFills(t, m)
	if st.CacheDir.Filled < uint64(len(recon)) || st.CacheDir.Rejected != 0 || st.IOErrors != 0 {
		t.Errorf("first mount: %+v after its fills; want at least the %d reconstructed files filled, none rejected, no read errors", st.CacheDir, len(recon))
	}
	compareMountWithReference(t, ch, last, ref, mp)
	if st := m.Stats(t); st.CacheDirOpens < uint64(len(recon)) {
		t.Errorf("first mount, after its fills: %d opens from the cache directory, want at least %d", st.CacheDirOpens, len(recon))
	}
	m.Umount(t)
	if fi, err := os.Stat(e.Host(cdir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the cache directory: %v, %v; want mode 0700", fi.Mode(), err)
	}

	// Second mount: everything reconstructed comes from the directory.
	mp = mountPoint(t, ch, "mnt-second")
	m = mountDaemon(t, e, mp, args...)
	compareMountWithReference(t, ch, last, ref, mp)
	st = waitFills(t, m)
	t.Logf("second mount: %+v", st)
	if st.ReconOpens != 0 || st.SourceReads != 0 || st.CacheDirOpens < uint64(len(recon)) || st.CacheDir.Filled != 0 || st.CacheDir.Rejected != 0 {
		t.Errorf("second mount: %d reconstructed opens, %d source reads, %d opens from the cache directory, %+v; want 0, 0, at least %d, nothing filled or rejected",
			st.ReconOpens, st.SourceReads, st.CacheDirOpens, st.CacheDir, len(recon))
	}
	m.Umount(t)
}

// waitFills waits until the mount has no cache-directory fill queued or
// running, and returns its stats then.
func waitFills(t *testing.T, m *roMount) fusefs.Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st := m.Stats(t)
		if st.CacheDirPending == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache directory fills still pending after 5 minutes: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
