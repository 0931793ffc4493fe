package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/mountctl"
)

// TestMountReadOnly checks combinefs mount (read-only) against
// pg_combinebackup on a rich chain (drops, truncations, VACUUM FULL, a new
// database, tablespaces, a relation of two segments): the whole tree at
// three points byte for byte, names, sizes, modes and owner by stat alone
// (no data read), EROFS for every kind of write, a clean umount; then
// concurrent readers of random ranges, the block cache across a dropped page
// cache, whole files without passthrough, a block that fails at read time
// (EIO, logged, the mount stays up), umount(8), bad chains refused before
// mounting, and a foreground mount stopped by SIGTERM.
//
// Starting a server on the read-only mount is not tried: it needs to write.
func TestMountReadOnly(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	e.CombinefsPath(t)
	ch := BuildChain(t, e, ChainSpec{Rich: true, BigRelation: true})
	last := len(ch.Backups) - 1

	// pg_combinebackup's output for each point, made once.
	refs := map[int]string{}
	ref := func(t *testing.T, k int) string {
		t.Helper()
		if r, ok := refs[k]; ok {
			return r
		}
		r := path.Join(ch.Dir, fmt.Sprintf("ref-%d", k))
		// No manifest (the mount has none) and no fsync: only the data
		// files matter here, and they do not depend on either option.
		timed(t, fmt.Sprintf("pg_combinebackup of point %d", k), func() { ch.Combine(t, k, r, "-N") })
		refs[k] = r
		return r
	}

	for _, k := range []int{last, 1, 0} {
		t.Run(fmt.Sprintf("point-%d", k), func(t *testing.T) {
			r := ref(t, k)
			mp := mountPoint(t, ch, fmt.Sprintf("mnt-%d", k))
			var m *roMount
			timed(t, "mount", func() { m = mountDaemon(t, e, mp, ch.Upto(k)...) })
			if opts := mountOptionsOf(e.Host(mp)); !strings.Contains(","+opts+",", ",ro,") {
				t.Errorf("mount options %q lack ro", opts)
			}

			timed(t, "stat of the whole tree", func() { checkMountAttrs(t, ch, k, r, mp) })
			s := m.Stats(t)
			if s.SourceReads != 0 || s.SourceBytes != 0 || s.Cache.Misses != 0 || s.Cache.Hits != 0 || s.WholeOpens != 0 || s.ReconOpens != 0 || s.BytesServed != 0 {
				t.Errorf("listing and stat of the tree read data: %+v", s)
			}

			timed(t, "byte comparison through the mount", func() { compareMountWithReference(t, ch, k, r, mp) })
			s = m.Stats(t)
			t.Logf("stats after reading everything: %+v", s)
			if s.WholeOpens == 0 || s.IOErrors != 0 {
				t.Errorf("after reading every file: %d whole-file opens, %d read errors", s.WholeOpens, s.IOErrors)
			}
			if k > 0 && (s.ReconOpens == 0 || s.SourceBytes == 0) {
				t.Errorf("point %d: no reconstructed file was served (%d reconstructed opens, %d source bytes)", k, s.ReconOpens, s.SourceBytes)
			}
			if k == 0 && s.ReconOpens != 0 {
				t.Errorf("a full backup alone has %d reconstructed opens, want 0", s.ReconOpens)
			}

			checkReadOnly(t, e, mp, reconstructedOrAny(t, ch, k))
			timed(t, "umount", func() { m.Umount(t) })
		})
	}

	t.Run("concurrent-readers", func(t *testing.T) {
		r := ref(t, last)
		files := pickReconstructed(t, ch, last, r)
		mp := mountPoint(t, ch, "mnt-concurrent")
		// A small cache: the readers also race with evictions.
		m := mountDaemon(t, e, mp, append([]string{"--cache-size", "4MiB"}, ch.Upto(last)...)...)
		timed(t, "8 concurrent readers", func() { concurrentReads(t, e, mp, r, files) })
		s := m.Stats(t)
		t.Logf("stats: %+v", s)
		if s.ReconOpens == 0 || s.Cache.Misses == 0 || s.IOErrors != 0 {
			t.Errorf("concurrent readers: %d reconstructed opens, %d cache misses, %d read errors", s.ReconOpens, s.Cache.Misses, s.IOErrors)
		}
		if s.Cache.Evictions == 0 {
			t.Errorf("a 4 MiB cache had no evictions: the readers did not stress it")
		}
		m.Umount(t)
	})

	t.Run("cache", func(t *testing.T) {
		r := ref(t, last)
		var file string
		var size int64
		for _, f := range pickReconstructed(t, ch, last, r) {
			fi, _ := os.Stat(refHost(e, r, f))
			if fi.Size() <= 128<<20 && fi.Size() > size {
				file, size = f, fi.Size()
			}
		}
		if file == "" {
			t.Fatal("no reconstructed file of at most 128 MiB")
		}
		mp := mountPoint(t, ch, "mnt-cache")
		m := mountDaemon(t, e, mp, ch.Upto(last)...)
		target := e.Host(path.Join(mp, file))
		mustSameFile(t, refHost(e, r, file), target)
		s1 := m.Stats(t)
		dropPageCache(t, target)
		mustSameFile(t, refHost(e, r, file), target)
		s2 := m.Stats(t)
		t.Logf("%s (%d bytes): first read %d hits, %d misses, %d source bytes; second read %d hits, %d misses, %d source bytes",
			file, size, s1.Cache.Hits, s1.Cache.Misses, s1.SourceBytes, s2.Cache.Hits-s1.Cache.Hits, s2.Cache.Misses-s1.Cache.Misses, s2.SourceBytes-s1.SourceBytes)
		if s2.BytesServed == s1.BytesServed {
			t.Fatalf("the second read never reached combinefs: the page cache was not dropped")
		}
		if s2.Cache.Hits <= s1.Cache.Hits {
			t.Errorf("second read of %s after dropping the page cache: no cache hits (%+v then %+v)", file, s1.Cache, s2.Cache)
		}
		if s2.Cache.Misses != s1.Cache.Misses || s2.SourceBytes != s1.SourceBytes {
			t.Errorf("second read of %s (%d bytes, cache %d bytes) missed the cache: misses %d -> %d, source bytes %d -> %d",
				file, size, s2.Cache.MaxBytes, s1.Cache.Misses, s2.Cache.Misses, s1.SourceBytes, s2.SourceBytes)
		}
		m.Umount(t)
	})

	t.Run("read-error", func(t *testing.T) {
		r := ref(t, last)
		copyDir := path.Join(ch.Dir, "inc-copy")
		e.Run(t, true, "cp", "-a", ch.Backups[last], copyDir)
		victim, header := "", int64(0) // output path and its INCREMENTAL's header size
		var victimBlocks int
		filepath.WalkDir(e.Host(copyDir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), "INCREMENTAL.") {
				return err
			}
			h := readIncremental(t, p)
			if len(h.Blocks) > victimBlocks && len(h.Blocks) < 1000 {
				rel, _ := filepath.Rel(e.Host(copyDir), p)
				victim = filepath.Join(filepath.Dir(rel), strings.TrimPrefix(d.Name(), "INCREMENTAL."))
				victimBlocks = len(h.Blocks)
				header = h.Size - int64(len(h.Blocks))*8192
			}
			return nil
		})
		if victim == "" {
			t.Fatal("the last backup has no INCREMENTAL file with blocks")
		}
		logFile := path.Join(ch.Dir, "mnt-error.log")
		mp := mountPoint(t, ch, "mnt-error")
		m := mountDaemon(t, e, mp, append([]string{"--log", logFile}, append(ch.Upto(last-1), copyDir)...)...)

		// Now the blocks of one source go away under the mount.
		src := filepath.Join(e.Host(copyDir), filepath.Dir(victim), "INCREMENTAL."+filepath.Base(victim))
		if err := os.Truncate(src, header); err != nil {
			t.Fatal(err)
		}
		t.Logf("truncated %s to its %d-byte header (%d blocks gone)", src, header, victimBlocks)
		for i := 0; i < 2; i++ {
			_, err := os.ReadFile(e.Host(path.Join(mp, victim)))
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("reading %s with its blocks gone: %v, want EIO", victim, err)
			}
		}
		if fi, err := os.Stat(e.Host(path.Join(mp, victim))); err != nil {
			t.Errorf("stat %s after the read error: %v", victim, err)
		} else if want, _ := os.Stat(refHost(e, r, victim)); fi.Size() != want.Size() {
			t.Errorf("%s: size %d after the read error, want %d", victim, fi.Size(), want.Size())
		}
		// Everything else still reads fine.
		others := 0
		for _, f := range append(pickReconstructed(t, ch, last, r), "PG_VERSION", "global/pg_control", "backup_label") {
			if fi, err := os.Stat(refHost(e, r, f)); err == nil && f != victim && fi.Size() <= 128<<20 {
				mustSameFile(t, refHost(e, r, f), e.Host(path.Join(mp, f)))
				others++
			}
		}
		if !isMountedHost(e.Host(mp)) || !mountctl.ProcessAlive(m.pid) {
			t.Fatalf("the mount did not stay up after a read error")
		}
		s := m.Stats(t)
		if s.IOErrors == 0 {
			t.Errorf("stats count no read error: %+v", s)
		}
		log, _ := os.ReadFile(e.Host(logFile))
		var line string
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, victim) && strings.Contains(l, "read") {
				line = l
				break
			}
		}
		if line == "" {
			t.Errorf("the log %s does not name %s:\n%s", logFile, victim, log)
		} else {
			t.Logf("EIO for %s, %d other files read fine; logged: %s", victim, others, line)
		}
		m.Umount(t)
	})

	t.Run("no-passthrough", func(t *testing.T) {
		// Whole files served by combinefs itself, as on kernels without
		// FUSE passthrough.
		r := ref(t, last)
		recon := map[string]bool{}
		for _, f := range reconstructedFiles(t, ch, last) {
			recon[f.rel] = true
		}
		mp := mountPoint(t, ch, "mnt-nopt")
		m := mountDaemon(t, e, mp, append([]string{"--no-passthrough"}, ch.Upto(last)...)...)
		n := 0
		for rel, ent := range dataDirEntries(t, e, e.Host(r)) {
			if ent.info.Mode().IsRegular() && !recon[rel] {
				mustSameFile(t, ent.host, e.Host(path.Join(mp, rel)))
				n++
			}
		}
		s := m.Stats(t)
		t.Logf("%d files not reconstructed read through combinefs: %+v", n, s)
		if s.PassthroughOpens != 0 || s.WholeOpens == 0 || s.BytesServed == 0 || s.IOErrors != 0 {
			t.Errorf("--no-passthrough: %d passthrough opens, %d whole-file opens, %d bytes served, %d read errors",
				s.PassthroughOpens, s.WholeOpens, s.BytesServed, s.IOErrors)
		}
		m.Umount(t)
	})

	t.Run("umount(8)", func(t *testing.T) {
		// Unmounted by umount(8) rather than combinefs umount, the
		// serving process exits and leaves nothing behind.
		mp := mountPoint(t, ch, "mnt-umount8")
		m := mountDaemon(t, e, mp, ch.Upto(last)...)
		t.Cleanup(func() { os.Remove(m.stats) })
		if err := syscall.Unmount(e.Host(mp), 0); err != nil {
			t.Fatalf("umount %s: %v", mp, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for mountctl.ProcessAlive(m.pid) {
			if time.Now().After(deadline) {
				t.Fatalf("the mount's process %d still runs 10 s after umount(8)", m.pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
		mustNotExist(t, m.state, "umount(8)")
		mustNotExist(t, m.stats, "umount(8)")
	})

	t.Run("bad-input", func(t *testing.T) { mountBadInput(t, ch) })

	t.Run("foreground", func(t *testing.T) {
		// Without --daemon the mount serves in the foreground until
		// SIGTERM, then unmounts cleanly; --owner sets the presented owner.
		r := ref(t, last)
		mp := mountPoint(t, ch, "mnt-fg")
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		cmd := e.Combinefs(ctx, append(append([]string{"mount", "--owner", "1234:4321"}, ch.Upto(last)...), mp)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Ready: mounted, and its state file (for combinefs umount) written
		// just after the kernel serves the mount.
		deadline := time.Now().Add(30 * time.Second)
		for !isMountedHost(e.Host(mp)) || stateFileOf(t, e, mp) == nil {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the foreground mount is not ready after 30 s:\n%s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		fi, err := os.Stat(e.Host(mp))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1234 || st.Gid != 4321 {
			t.Errorf("--owner 1234:4321: the root is owned by %d:%d", st.Uid, st.Gid)
		}
		mustSameFile(t, refHost(e, r, "PG_VERSION"), e.Host(path.Join(mp, "PG_VERSION")))
		state := stateFileOf(t, e, mp)
		if state == nil {
			t.Fatalf("no state file for the foreground mount %s", mp)
		}
		stats := e.Host(state.Stats)
		t.Cleanup(func() { os.Remove(stats) })
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("foreground mount after SIGTERM: %v\n%s", err, out.String())
		}
		if isMountedHost(e.Host(mp)) {
			t.Errorf("%s still mounted after SIGTERM", mp)
		}
		mustNotExist(t, e.Host(mountctl.StatePath(mp)), "SIGTERM of the foreground mount")
		// Nothing else is left either: combinefs umount removes the
		// stats file of a daemon mount; a foreground mount has no one
		// else to do it.
		mustNotExist(t, stats, "SIGTERM of the foreground mount")
		t.Logf("foreground mount output:\n%s", strings.TrimSpace(out.String()))
	})
}

// mountBadInput: a bad chain is refused before anything is mounted, with
// one line naming the culprit and a non-zero exit, in daemon and foreground
// mode.
func mountBadInput(t *testing.T, ch *Chain) {
	e := ch.Env
	full, inc1, inc2 := ch.Backups[0], ch.Backups[1], ch.Backups[2]
	// damaged copies backup of and damages its first INCREMENTAL file with
	// blocks that inc2 also has as an INCREMENTAL file: then every
	// reconstruction of the chain's last point needs it.
	damaged := func(name, of string, damage func(file string)) (string, string) {
		dir := path.Join(ch.Dir, name)
		e.Run(t, true, "cp", "-a", of, dir)
		victim := ""
		filepath.WalkDir(e.Host(dir), func(p string, d fs.DirEntry, err error) error {
			if err == nil && victim == "" && strings.HasPrefix(d.Name(), "INCREMENTAL.") {
				rel, _ := filepath.Rel(e.Host(dir), p)
				_, errInc2 := os.Stat(e.Host(path.Join(inc2, rel)))
				if fi, _ := d.Info(); fi != nil && fi.Size() > 3*8192 && errInc2 == nil {
					victim = rel
				}
			}
			return err
		})
		if victim == "" {
			t.Fatalf("%s has no INCREMENTAL file with blocks to damage", of)
		}
		damage(filepath.Join(e.Host(dir), victim))
		return dir, path.Join(dir, victim)
	}
	badMagic := func(file string) {
		f, err := os.OpenFile(file, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, 0)
		f.Close()
	}
	truncate := func(file string) {
		st, _ := os.Stat(file)
		if err := os.Truncate(file, st.Size()-8192-100); err != nil {
			t.Fatal(err)
		}
	}
	badFinal, badFinalFile := damaged("bad-magic-inc2", inc2, badMagic)
	truncFinal, truncFinalFile := damaged("truncated-inc2", inc2, truncate)
	badMiddle, badMiddleFile := damaged("bad-magic-inc1", inc1, badMagic)

	cases := []struct {
		name    string
		inputs  []string
		final   int // the backup of the chain the last input is (or copies)
		culprit string
	}{
		{"missing-middle", []string{full, inc2}, 2, full},
		{"reordered", []string{full, inc2, inc1}, 1, inc2},
		{"incremental-first", []string{inc1, inc2}, 2, inc1},
		{"corrupt-incremental", []string{full, inc1, badFinal}, 2, badFinalFile},
		{"truncated-incremental", []string{full, inc1, truncFinal}, 2, truncFinalFile},
		{"corrupt-incremental-in-middle", []string{full, badMiddle, inc2}, 2, badMiddleFile},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The chain is bad for pg_combinebackup too (a dry run reads
			// every INCREMENTAL header it needs).
			out := path.Join(ch.Dir, "ref-"+c.name)
			refOut, refErr := e.CombineBackupErr(t, out, c.inputs, append(ch.OutputArgs(c.final, out), "-n")...)
			if refErr == nil || !strings.Contains(refOut, c.culprit) {
				t.Fatalf("pg_combinebackup -n does not refuse the chain because of %s (the case is wrong): %v\n%s", c.culprit, refErr, refOut)
			}
			t.Logf("pg_combinebackup: %s", errorLine(refOut))
			mp := mountPoint(t, ch, "mnt-"+c.name)
			for _, daemon := range []bool{true, false} {
				args := []string{"mount"}
				if daemon {
					args = append(args, "--daemon")
				}
				args = append(append(args, c.inputs...), mp)
				msg, code, mounted := tryMount(t, e, mp, args)
				if mounted {
					t.Fatalf("combinefs %s mounted a bad chain", strings.Join(args, " "))
				}
				if code == 0 {
					t.Errorf("combinefs %s: exit 0 on a bad chain:\n%s", strings.Join(args, " "), msg)
				}
				if strings.Count(msg, "\n") != 0 {
					t.Errorf("want a one-line error, got:\n%s", msg)
				}
				if !strings.Contains(msg, c.culprit) {
					t.Errorf("error does not name the culprit %s:\n%s", c.culprit, msg)
				}
				if st := stateFileOf(t, e, mp); st != nil {
					t.Errorf("a refused mount left its state file %s", mountctl.StatePath(mp))
				}
				if daemon {
					t.Logf("combinefs: %s", msg)
				}
			}
		})
	}

	t.Run("mountpoint-busy", func(t *testing.T) {
		mp := mountPoint(t, ch, "mnt-busy")
		m := mountDaemon(t, e, mp, full)
		msg, code := runCombinefs(t, e, "mount", "--daemon", full, inc1, mp)
		msg = strings.TrimSpace(msg)
		t.Logf("combinefs: %s", msg)
		if code == 0 || !strings.Contains(msg, mp) {
			t.Errorf("mounting over a mount: exit %d: %s", code, msg)
		}
		if !mountctl.ProcessAlive(m.pid) || !isMountedHost(e.Host(mp)) {
			t.Errorf("a refused second mount disturbed the first")
		}
		m.Umount(t)
	})
}

// tryMount runs a mount that should fail. If it mounts after all, it is
// unmounted again and mounted is true. msg is the trimmed output.
func tryMount(t *testing.T, e *Env, mp string, args []string) (msg string, code int, mounted bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := e.Combinefs(ctx, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	wasMounted := false
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		case <-time.After(50 * time.Millisecond):
			if !wasMounted && isMountedHost(e.Host(mp)) && !slices.Contains(args, "--daemon") {
				// A foreground mount that came up: stop it, and
				// remove the stats file it leaves.
				wasMounted = true
				if st := stateFileOf(t, e, mp); st != nil {
					defer os.Remove(e.Host(st.Stats))
				}
				cmd.Process.Signal(syscall.SIGTERM)
			}
		}
	}
	if isMountedHost(e.Host(mp)) {
		wasMounted = true
		runCombinefs(t, e, "umount", mp)
	}
	code = 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("combinefs %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return strings.TrimSpace(out.String()), code, wasMounted
}

// roMount is a combinefs mount started with --daemon.
type roMount struct {
	e     *Env
	dir   string // in-root mount point
	pid   int    // the serving process
	state string // host path of its state file
	stats string // host path of the stats file SIGUSR1 writes
}

// stateFileOf reads the state file of the mount at mp (in-root) from the
// root, or returns nil.
func stateFileOf(t testing.TB, e *Env, mp string) *mountctl.State {
	t.Helper()
	st, err := mountctl.ReadFile(e.Host(mountctl.StatePath(mp)))
	if err != nil || st.Mountpoint != mp {
		return nil
	}
	return st
}

// mountPoint makes an empty in-root directory to mount on.
func mountPoint(t *testing.T, ch *Chain, name string) string {
	t.Helper()
	mp := path.Join(ch.Dir, name)
	ch.Env.MkdirAll(t, mp)
	return mp
}

// mountDaemon runs combinefs mount --daemon args... mp, which returns once
// the mount is ready, and finds the serving process. At cleanup anything
// still mounted is unmounted.
func mountDaemon(t *testing.T, e *Env, mp string, args ...string) *roMount {
	t.Helper()
	mustCombinefs(t, e, append(append([]string{"mount", "--daemon"}, args...), mp)...)
	t.Cleanup(func() {
		if isMountedHost(e.Host(mp)) {
			out, code := runCombinefs(t, e, "umount", "--lazy", mp)
			t.Logf("cleanup: combinefs umount --lazy %s: exit %d %s", mp, code, strings.TrimSpace(out))
		}
	})
	if !isMountedHost(e.Host(mp)) {
		t.Fatalf("combinefs mount --daemon returned, but %s is not mounted", mp)
	}
	st := stateFileOf(t, e, mp)
	if st == nil {
		t.Fatalf("no state file for %s in %s", mp, e.Host("/run/combinefs"))
	}
	if !mountctl.ProcessAlive(st.PID) {
		t.Fatalf("the mount's process %d is not running", st.PID)
	}
	return &roMount{e: e, dir: mp, pid: st.PID, state: e.Host(mountctl.StatePath(mp)), stats: e.Host(st.Stats)}
}

// Stats asks the mount for its counters (SIGUSR1) and reads them.
func (m *roMount) Stats(t testing.TB) fusefs.Stats {
	t.Helper()
	return MountStats(t, m.pid, m.stats)
}

// Umount runs combinefs umount and checks that nothing is left: no mount,
// no process, no state or stats file.
func (m *roMount) Umount(t testing.TB) {
	t.Helper()
	mustCombinefs(t, m.e, "umount", m.dir)
	if isMountedHost(m.e.Host(m.dir)) {
		t.Errorf("%s still mounted after combinefs umount", m.dir)
	}
	deadline := time.Now().Add(5 * time.Second)
	for mountctl.ProcessAlive(m.pid) {
		if time.Now().After(deadline) {
			t.Errorf("the mount's process %d is still running after combinefs umount", m.pid)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mustNotExist(t, m.state, "combinefs umount")
	mustNotExist(t, m.stats, "combinefs umount")
	if out, code := runCombinefs(t, m.e, "umount", m.dir); code == 0 || !strings.Contains(out, "not mounted") {
		t.Errorf("a second combinefs umount %s: exit %d: %s", m.dir, code, strings.TrimSpace(out))
	}
	if ents, err := os.ReadDir(m.e.Host(m.dir)); err != nil || len(ents) != 0 {
		t.Errorf("mount point after umount: %d entries, %v; want an empty directory", len(ents), err)
	}
}

// isMountedHost reports whether the host path is a mount point.
func isMountedHost(host string) bool { return mountOptionsOf(host) != "" }

// mountOptionsOf returns the options of the mount at host (from
// /proc/self/mounts), "" when nothing is mounted there.
func mountOptionsOf(host string) string {
	data, _ := os.ReadFile("/proc/self/mounts")
	opts := ""
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && mountctl.Unescape(f[1]) == host {
			opts = f[3] // the last mount there is the visible one
		}
	}
	return opts
}

// treeEntry is one entry of a data directory, with tablespaces followed.
type treeEntry struct {
	info fs.FileInfo
	host string
}

// dataDirEntries lists a data directory (host path) by relative path,
// following the tablespace symlinks of pg_tblspc into their targets (in-root
// paths, so resolved with e.Host): pg_combinebackup's layout then reads like
// the mount's. backup_manifest is left out.
func dataDirEntries(t *testing.T, e *Env, root string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		err := filepath.Walk(dir, func(p string, info fs.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if prefix != "" {
				rel = filepath.Join(prefix, rel)
			}
			if rel == "." || rel == "backup_manifest" {
				return nil
			}
			if rel == fusefs.TablespaceDir && prefix == "" {
				return filepath.SkipDir // the mount's tablespaces, reached through pg_tblspc
			}
			if info.Mode()&fs.ModeSymlink != 0 && filepath.Dir(rel) == "pg_tblspc" {
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				// pg_combinebackup links to an in-root absolute path, the
				// mount to a relative one inside itself.
				host := e.Host(target)
				if !filepath.IsAbs(target) {
					host = filepath.Join(filepath.Dir(p), target)
				}
				ti, err := os.Stat(host)
				if err != nil {
					return err
				}
				out[rel] = treeEntry{ti, host}
				walk(host, rel)
				return nil
			}
			out[rel] = treeEntry{info, p}
			return nil
		})
		if err != nil {
			t.Fatalf("walk %s: %v", dir, err)
		}
	}
	walk(root, "")
	return out
}

// checkMountAttrs compares names, kinds, sizes and modes of the mount with
// pg_combinebackup's output, and checks the presented owner: stat only.
func checkMountAttrs(t *testing.T, ch *Chain, k int, ref, mp string) {
	t.Helper()
	e := ch.Env
	want := dataDirEntries(t, e, e.Host(ref))
	got := dataDirEntries(t, e, e.Host(mp))
	root, err := os.Stat(e.Host(mp))
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	add := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	checkOwner := func(rel string, fi fs.FileInfo) {
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != e.UID || int(st.Gid) != e.GID {
			add("%s: owner %d:%d, want %d:%d", rel, st.Uid, st.Gid, e.UID, e.GID)
		}
	}
	checkOwner(".", root)
	if root.Mode() != fs.ModeDir|0o700 {
		add(".: mode %v, want drwx------", root.Mode())
	}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	files := 0
	for _, n := range names {
		w, inW := want[n]
		g, inG := got[n]
		switch {
		case !inG:
			add("%s: missing", n)
			continue
		case !inW:
			add("%s: unexpected", n)
			continue
		}
		checkOwner(n, g.info)
		wantMode := fs.FileMode(0o600)
		if w.info.IsDir() {
			wantMode = fs.ModeDir | 0o700
		}
		if g.info.Mode() != wantMode {
			add("%s: mode %v, want %v", n, g.info.Mode(), wantMode)
		}
		if w.info.Mode() != wantMode && !strings.HasPrefix(n, "pg_tblspc/") {
			add("%s: pg_combinebackup wrote mode %v, the test expects %v", n, w.info.Mode(), wantMode)
		}
		if w.info.Mode().IsRegular() {
			files++
			if w.info.Size() != g.info.Size() {
				add("%s: size %d, want %d", n, g.info.Size(), w.info.Size())
			}
		}
	}
	if len(problems) > 0 {
		t.Fatalf("point %d: the mount's tree differs from pg_combinebackup's:\n%s", k, strings.Join(problems, "\n"))
	}
	t.Logf("point %d: %d entries (%d files) with pg_combinebackup's names, sizes and modes, owned by %d:%d", k, len(names), files, e.UID, e.GID)
}

// compareMountWithReference reads every file through the mount and compares
// it with pg_combinebackup's output: the main tree with TreeDiff (the
// tablespace links of pg_tblspc skipped), each tablespace directory of the
// mount with pg_combinebackup's tablespace output.
func compareMountWithReference(t *testing.T, ch *Chain, k int, ref, mp string) {
	t.Helper()
	e := ch.Env
	// backup_manifest: pg_combinebackup's but for the Last-Modified times,
	// and pg_verifybackup accepts the mount (the tablespaces' directory is
	// reached through pg_tblspc).
	if d := ManifestDiff(e.Host(path.Join(ref, "backup_manifest")), e.Host(path.Join(mp, "backup_manifest"))); d != "" {
		t.Errorf("point %d: the mount's backup_manifest differs from pg_combinebackup's (ignoring Last-Modified):\n%s", k, d)
	}
	t.Logf("point %d: backup_manifest equals pg_combinebackup's but for Last-Modified; pg_verifybackup on the mount: %s", k, strings.TrimSpace(e.VerifyBackup(t, mp, "-i", fusefs.TablespaceDir)))
	label, err := os.ReadFile(e.Host(path.Join(mp, "backup_label")))
	if err != nil || bytes.Contains(label, []byte("INCREMENTAL")) {
		t.Errorf("backup_label through the mount: %v\n%s", err, label)
	}
	skip := []string{"backup_manifest"}
	tsDirs, _ := os.ReadDir(e.Host(path.Join(ref, "pg_tblspc")))
	type pair struct{ want, got string }
	var tablespaces []pair
	for _, d := range tsDirs {
		rel := path.Join("pg_tblspc", d.Name())
		target, err := os.Readlink(e.Host(path.Join(ref, rel)))
		if err != nil {
			t.Fatalf("%s in pg_combinebackup's output: %v", rel, err)
		}
		known := false
		for _, m := range ch.OutputMappings(k, ref) {
			known = known || m.New == target
		}
		if !known {
			t.Fatalf("%s links to %s, not to one of the -T directories %v", rel, target, ch.OutputMappings(k, ref))
		}
		// The mount's pg_tblspc/<oid> links to TablespaceDir/<oid>.
		tablespaces = append(tablespaces, pair{e.Host(target), e.Host(path.Join(mp, fusefs.TablespaceDir, d.Name()))})
		// Skip the tablespace and everything in it in the main comparison.
		filepath.Walk(e.Host(path.Join(mp, rel)), func(p string, _ fs.FileInfo, err error) error {
			r, _ := filepath.Rel(e.Host(mp), p)
			skip = append(skip, r)
			return nil
		})
	}
	// The mount keeps the tablespaces' contents in fusefs.TablespaceDir.
	filepath.Walk(e.Host(path.Join(mp, fusefs.TablespaceDir)), func(p string, _ fs.FileInfo, err error) error {
		r, _ := filepath.Rel(e.Host(mp), p)
		skip = append(skip, r)
		return nil
	})
	if len(tablespaces) != len(ch.Mappings[k]) {
		t.Fatalf("pg_combinebackup's output has %d tablespaces, the chain %d", len(tablespaces), len(ch.Mappings[k]))
	}
	if d := TreeDiff(e.Host(ref), e.Host(mp), nil, skip...); d != "" {
		t.Fatalf("point %d: the mount differs from pg_combinebackup's output %s:\n%s", k, ref, d)
	}
	for _, ts := range tablespaces {
		if d := TreeDiff(ts.want, ts.got, nil); d != "" {
			t.Fatalf("point %d: tablespace %s differs from pg_combinebackup's %s:\n%s", k, ts.got, ts.want, d)
		}
	}
	if ch.BigRelationPath != "" {
		if _, err := os.Stat(e.Host(path.Join(mp, ch.BigRelationPath+".1"))); err != nil {
			t.Errorf("the big relation's second segment: %v", err)
		}
		checkBigSegment(t, ch, k, mp)
	}
	t.Logf("point %d: every file byte-identical to pg_combinebackup's, %d tablespaces", k, len(tablespaces))
}

// checkReadOnly tries every kind of write on the mount: each must fail with
// EROFS and change nothing.
func checkReadOnly(t *testing.T, e *Env, mp, file string) {
	t.Helper()
	h := func(p string) string { return e.Host(path.Join(mp, p)) }
	before, err := os.Stat(h(file))
	if err != nil {
		t.Fatal(err)
	}
	dir := path.Dir(file)
	ops := []struct {
		name string
		fn   func() error
	}{
		{"open O_WRONLY", func() error { return openClose(h(file), os.O_WRONLY) }},
		{"open O_RDWR", func() error { return openClose(h(file), os.O_RDWR) }},
		{"open O_TRUNC", func() error { return openClose(h(file), os.O_WRONLY|os.O_TRUNC) }},
		{"open O_APPEND", func() error { return openClose(h(file), os.O_WRONLY|os.O_APPEND) }},
		{"create", func() error { return openClose(h(path.Join(dir, "new")), os.O_WRONLY|os.O_CREATE|os.O_EXCL) }},
		{"create in root", func() error { return openClose(h("postmaster.pid"), os.O_WRONLY|os.O_CREATE) }},
		{"mkdir", func() error { return os.Mkdir(h("newdir"), 0o700) }},
		{"unlink", func() error { return os.Remove(h(file)) }},
		{"rmdir", func() error { return syscall.Rmdir(h(dir)) }},
		{"rename", func() error { return os.Rename(h(file), h(file+".moved")) }},
		{"rename dir", func() error { return os.Rename(h(dir), h(dir+".moved")) }},
		{"truncate", func() error { return os.Truncate(h(file), 0) }},
		{"chmod", func() error { return os.Chmod(h(file), 0o644) }},
		{"chown", func() error { return os.Chown(h(file), 0, 0) }},
		{"utimes", func() error { return os.Chtimes(h(file), time.Now(), time.Now()) }},
		{"symlink", func() error { return os.Symlink("PG_VERSION", h("link")) }},
		{"link", func() error { return os.Link(h(file), h("hardlink")) }},
		{"mknod", func() error { return syscall.Mkfifo(h("fifo"), 0o600) }},
	}
	for _, op := range ops {
		if err := op.fn(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on the read-only mount: %v, want EROFS", op.name, err)
		}
	}
	after, err := os.Stat(h(file))
	if err != nil || after.Size() != before.Size() || after.Mode() != before.Mode() || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("%s changed under the failed writes: %v %v -> %v", file, err, before, after)
	}
	for _, p := range []string{path.Join(dir, "new"), "postmaster.pid", "newdir", file + ".moved", dir + ".moved", "link", "hardlink", "fifo"} {
		mustNotExist(t, h(p), "a refused write")
	}
}

func openClose(name string, flag int) error {
	f, err := os.OpenFile(name, flag, 0o600)
	if err == nil {
		f.Close()
	}
	return err
}

// reconstructedOrAny is a reconstructed file of point k, or
// global/pg_control for the full backup: a file in a subdirectory.
func reconstructedOrAny(t *testing.T, ch *Chain, k int) string {
	if k == 0 {
		return "global/pg_control"
	}
	return reconstructedFiles(t, ch, k)[0].rel
}

type reconFile struct {
	rel    string // path in the data directory (mount), tablespaces under pg_tblspc/<oid>
	blocks int    // blocks the final backup holds
}

// reconstructedFiles lists the files of point k that are reconstructed
// block by block: INCREMENTAL files of backup k holding blocks (with no
// blocks the file may come whole from an older backup).
func reconstructedFiles(t *testing.T, ch *Chain, k int) []reconFile {
	t.Helper()
	e := ch.Env
	var out []reconFile
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatalf("walk %s: %v", dir, err)
			}
			rel, _ := filepath.Rel(dir, p)
			if prefix != "" {
				rel = filepath.Join(prefix, rel)
			}
			if d.Type()&fs.ModeSymlink != 0 && filepath.Dir(rel) == "pg_tblspc" {
				target, _ := os.Readlink(p)
				walk(e.Host(target), rel)
				return nil
			}
			if name, ok := strings.CutPrefix(d.Name(), "INCREMENTAL."); ok {
				if h := readIncremental(t, p); len(h.Blocks) > 0 {
					out = append(out, reconFile{filepath.Join(filepath.Dir(rel), name), len(h.Blocks)})
				}
			}
			return nil
		})
	}
	walk(e.Host(ch.Backups[k]), "")
	if len(out) == 0 {
		t.Fatalf("backup %d has no INCREMENTAL file with blocks", k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out
}

// pickReconstructed picks a few reconstructed files of point k: the largest
// ones, one in a tablespace, and a small one.
func pickReconstructed(t *testing.T, ch *Chain, k int, ref string) []string {
	t.Helper()
	all := reconstructedFiles(t, ch, k)
	size := func(rel string) int64 {
		fi, err := os.Stat(refHost(ch.Env, ref, rel))
		if err != nil {
			t.Fatalf("%s in pg_combinebackup's output: %v", rel, err)
		}
		return fi.Size()
	}
	sort.Slice(all, func(i, j int) bool { return size(all[i].rel) > size(all[j].rel) })
	picked := map[string]bool{}
	var out []string
	pick := func(rel string) {
		if !picked[rel] {
			picked[rel] = true
			out = append(out, rel)
		}
	}
	for i := 0; i < len(all) && i < 4; i++ {
		pick(all[i].rel)
	}
	for _, f := range all {
		if strings.HasPrefix(f.rel, "pg_tblspc/") {
			pick(f.rel)
			break
		}
	}
	pick(all[len(all)-1].rel)
	return out
}

// concurrentReads runs 8 readers of random ranges (offsets and sizes up to
// 1 MiB, aligned or not, some past the end) of files through the mount,
// each compared with the same range of pg_combinebackup's output. Readers
// now and then drop a file's page cache so reads keep reaching combinefs.
func concurrentReads(t *testing.T, e *Env, mp, ref string, files []string) {
	t.Helper()
	type pair struct {
		mnt, ref *os.File
		size     int64
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("files %v, seed %d", files, seed)
	const readers, reads = 8, 150
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var total int64
	for g := 0; g < readers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			fail := func(format string, args ...any) {
				mu.Lock()
				defer mu.Unlock()
				if len(failures) < 20 {
					failures = append(failures, fmt.Sprintf("reader %d: ", g)+fmt.Sprintf(format, args...))
				}
			}
			var ps []pair
			for _, f := range files {
				mf, err1 := os.Open(e.Host(path.Join(mp, f)))
				rf, err2 := os.Open(refHost(e, ref, f))
				if err1 != nil || err2 != nil {
					fail("open %s: %v %v", f, err1, err2)
					return
				}
				defer mf.Close()
				defer rf.Close()
				fi, _ := rf.Stat()
				ps = append(ps, pair{mf, rf, fi.Size()})
			}
			bm, br := make([]byte, 1<<20), make([]byte, 1<<20)
			var n int64
			for i := 0; i < reads; i++ {
				fi := rng.IntN(len(ps))
				p := ps[fi]
				var off int64
				var size int
				switch rng.IntN(4) {
				case 0: // block-aligned
					off = rng.Int64N(max(p.size/8192, 1)) * 8192
					size = (1 + rng.IntN(128)) * 8192
				case 1: // across the end of the file
					off = max(p.size-int64(rng.IntN(3*8192)), 0)
					size = 1 + rng.IntN(1<<20)
				default: // anywhere, any size
					off = rng.Int64N(p.size + 1)
					size = 1 + rng.IntN(1<<20)
				}
				nm, em := p.mnt.ReadAt(bm[:size], off)
				nr, er := p.ref.ReadAt(br[:size], off)
				if em != nil && em != io.EOF {
					fail("%s: read %d at %d: %v", files[fi], size, off, em)
					continue
				}
				if nm != nr || (em == io.EOF) != (er == io.EOF) || !bytes.Equal(bm[:nm], br[:nr]) {
					at := 0
					for at < min(nm, nr) && bm[at] == br[at] {
						at++
					}
					fail("%s: read %d at %d: %d bytes (%v), want %d (%v); first difference at byte %d", files[fi], size, off, nm, em, nr, er, off+int64(at))
				}
				n += int64(nm)
				if rng.IntN(10) == 0 {
					unix.Fadvise(int(p.mnt.Fd()), 0, 0, unix.FADV_DONTNEED)
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("concurrent readers got wrong data (seed %d):\n%s", seed, strings.Join(failures, "\n"))
	}
	t.Logf("%d readers, %d reads each, %d MiB compared", readers, reads, total>>20)
}

// refHost is the host path of file rel of pg_combinebackup's output ref
// (in-root): a path below a tablespace link of pg_tblspc goes through the
// link's in-root target.
func refHost(e *Env, ref, rel string) string {
	if rest, ok := strings.CutPrefix(rel, "pg_tblspc/"); ok {
		oid, inTs, _ := strings.Cut(rest, "/")
		if target, err := os.Readlink(e.Host(path.Join(ref, "pg_tblspc", oid))); err == nil {
			return e.Host(path.Join(target, inTs))
		}
	}
	return e.Host(path.Join(ref, rel))
}

// mustSameFile reads both files whole and fails at the first difference.
func mustSameFile(t *testing.T, want, got string) {
	t.Helper()
	wi, err1 := os.Stat(want)
	gi, err2 := os.Stat(got)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat: %v %v", err1, err2)
	}
	if wi.Size() != gi.Size() {
		t.Fatalf("%s: size %d, want %d", got, gi.Size(), wi.Size())
	}
	off, err := firstDifference(want, got)
	if err != nil {
		t.Fatalf("compare %s: %v", got, err)
	}
	if off >= 0 {
		t.Fatalf("%s differs from %s at byte %d", got, want, off)
	}
}

// dropPageCache drops the kernel page cache (all of it, as
// echo 3 > /proc/sys/vm/drop_caches does) so the next read of file reaches
// the mount; where that is not permitted, it drops file's pages with
// posix_fadvise(DONTNEED).
func dropPageCache(t *testing.T, file string) {
	t.Helper()
	err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
	if err == nil {
		return
	}
	t.Logf("echo 3 > /proc/sys/vm/drop_caches is not permitted (%v); dropping %s's pages with posix_fadvise instead", err, file)
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("posix_fadvise DONTNEED: %v", err)
	}
}
