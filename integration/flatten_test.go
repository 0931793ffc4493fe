package integration

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// runCombinefs runs combinefs inside the root and returns its stderr and
// exit code.
func runCombinefs(t testing.TB, e *Env, args ...string) (string, int) {
	t.Helper()
	return combinefsAs(t, e, true, nil, args...)
}

// combinefsAs runs combinefs inside the root, as root or as the server
// user, with extra environment, and returns its output and exit code.
func combinefsAs(t testing.TB, e *Env, asRoot bool, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := e.Command(context.Background(), asRoot, e.CombinefsPath(t), args...)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("combinefs %v: %v", args, err)
	}
	return string(out), 0
}

func mustCombinefs(t testing.TB, e *Env, args ...string) string {
	t.Helper()
	out, code := runCombinefs(t, e, args...)
	if code != 0 {
		t.Fatalf("combinefs %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// compareWithReference checks a flatten output against pg_combinebackup's
// for the same point: every file, directory, mode and tablespace link, and
// the manifest up to Last-Modified times.
func compareWithReference(t *testing.T, ch *Chain, k int, ref, out string, withManifest bool) {
	t.Helper()
	e := ch.Env
	mapLink := func(target string) string {
		if strings.HasPrefix(target, ref+"-") {
			return out + "-" + strings.TrimPrefix(target, ref+"-")
		}
		return target
	}
	if d := TreeDiff(e.Host(ref), e.Host(out), mapLink, "backup_manifest"); d != "" {
		t.Fatalf("flatten output %s differs from pg_combinebackup's %s:\n%s", out, ref, d)
	}
	for i, m := range ch.OutputMappings(k, ref) {
		ours := ch.OutputMappings(k, out)[i].New
		if d := TreeDiff(e.Host(m.New), e.Host(ours), nil); d != "" {
			t.Fatalf("tablespace output %s differs from pg_combinebackup's %s:\n%s", ours, m.New, d)
		}
	}
	refM, outM := e.Host(path.Join(ref, "backup_manifest")), e.Host(path.Join(out, "backup_manifest"))
	if !withManifest {
		mustNotExist(t, outM, "--no-manifest")
		return
	}
	if d := ManifestDiff(refM, outM); d != "" {
		t.Fatalf("backup_manifest differs from pg_combinebackup's (ignoring Last-Modified):\n%s", d)
	}
}

// TestFlatten compares combinefs flatten with pg_combinebackup on a rich
// chain (pgbench, drops, truncations, VACUUM FULL, a new database, a
// tablespace, a relation of two segments) at its last and an intermediate
// point, then starts a server on the output.
func TestFlatten(t *testing.T) {
	e := Provision(t)
	ch := BuildChain(t, e, ChainSpec{Rich: true, BigRelation: true})
	last := len(ch.Backups) - 1

	for _, k := range []int{last, 1} {
		t.Run(fmt.Sprintf("point-%d", k), func(t *testing.T) {
			ref := path.Join(ch.Dir, fmt.Sprintf("ref-%d", k))
			timed(t, "pg_combinebackup", func() { ch.Combine(t, k, ref) })
			out := path.Join(ch.Dir, fmt.Sprintf("flat-%d", k))
			timed(t, "combinefs flatten", func() {
				mustCombinefs(t, e, append(append([]string{"flatten", "-o", out}, ch.OutputArgs(k, out)...), ch.Upto(k)...)...)
			})
			compareWithReference(t, ch, k, ref, out, true)
			mustCombinefs(t, e, "verify", out)
			e.ChownTree(t, out) // written by root; the server user reads it from here on
			e.VerifyBackup(t, out)
			srv := e.StartServer(t, out, ServerOptions{})
			if d := ch.Snapshots[k].Diff(srv.Snapshot(t)); d != "" {
				t.Fatalf("server on the flatten of point %d differs from the live server at that backup:\n%s", k, d)
			}
			srv.Stop(t, "fast")
		})
	}

	// The options pg_combinebackup has, each compared with
	// pg_combinebackup run with the same ones. Half of the runs go
	// through the pg_combinebackup link, as a drop-in would.
	variants := [][]string{
		{"--copy-file-range"},
		{"--manifest-checksums=SHA256"},
		{"--manifest-checksums=none"},
		{"--no-manifest", "-N"},
		{"--sync-method=syncfs", "--copy"},
	}
	if e.Major >= 18 {
		variants = append(variants, []string{"--link"})
	}
	for i, opts := range variants {
		t.Run("options"+strings.Join(opts, ""), func(t *testing.T) {
			ref := path.Join(ch.Dir, fmt.Sprintf("ref-opt%d", i))
			out := path.Join(ch.Dir, fmt.Sprintf("flat-opt%d", i))
			ch.Combine(t, last, ref, opts...)
			args := append(append(append([]string{"-o", out}, ch.OutputArgs(last, out)...), opts...), ch.Upto(last)...)
			if i%2 == 0 {
				e.Run(t, true, e.CombinefsAsPgCombinebackup(), args...)
			} else {
				mustCombinefs(t, e, append([]string{"flatten"}, args...)...)
			}
			compareWithReference(t, ch, last, ref, out, !strings.Contains(strings.Join(opts, " "), "--no-manifest"))
			if opts[0] == "--link" {
				compareLinks(t, e, ref, out)
			}
		})
	}

	t.Run("dry-run", func(t *testing.T) {
		out := path.Join(ch.Dir, "flat-dry")
		mustCombinefs(t, e, append(append([]string{"flatten", "-n", "-o", out}, ch.OutputArgs(last, out)...), ch.Upto(last)...)...)
		mustNotExist(t, e.Host(out), "--dry-run")
	})

	t.Run("clone", func(t *testing.T) {
		// FICLONE needs a filesystem with reflinks; where pg_combinebackup
		// --clone fails, combinefs must fail too and leave nothing.
		ref, out := path.Join(ch.Dir, "ref-clone"), path.Join(ch.Dir, "flat-clone")
		refOut, refErr := e.CombineBackupErr(t, ref, ch.Upto(last), append(ch.OutputArgs(last, ref), "--clone")...)
		msg, code := runCombinefs(t, e, append(append([]string{"flatten", "--clone", "-o", out}, ch.OutputArgs(last, out)...), ch.Upto(last)...)...)
		if (refErr == nil) != (code == 0) {
			t.Fatalf("pg_combinebackup --clone: %v %s; combinefs flatten --clone: exit %d %s", refErr, refOut, code, msg)
		}
		if refErr != nil {
			mustNotExist(t, e.Host(out), "a failed --clone")
			t.Logf("both refuse --clone here: %s", strings.TrimSpace(msg))
			return
		}
		compareWithReference(t, ch, last, ref, out, true)
	})
}

// compareLinks checks that the flatten output is hard-linked to the inputs
// exactly where pg_combinebackup --link links it.
func compareLinks(t *testing.T, e *Env, ref, out string) {
	t.Helper()
	n := 0
	filepath.Walk(e.Host(ref), func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(e.Host(ref), p)
		oi, err := os.Stat(filepath.Join(e.Host(out), rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		rs, os_ := info.Sys().(*syscall.Stat_t), oi.Sys().(*syscall.Stat_t)
		if rs.Nlink > 1 {
			n++
			if os_.Ino != rs.Ino {
				t.Errorf("%s: pg_combinebackup links it to inode %d, combinefs to %d", rel, rs.Ino, os_.Ino)
			}
		} else if os_.Nlink != 1 {
			t.Errorf("%s: combinefs made a link (nlink %d) where pg_combinebackup copied", rel, os_.Nlink)
		}
		return nil
	})
	if n == 0 {
		t.Errorf("pg_combinebackup --link made no links: the check is vacuous")
	}
	t.Logf("%d files hard-linked to the inputs, as by pg_combinebackup", n)
}
