package integration

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/internal/crashpoint"
)

// TestHardenUpperTrust: combinefs mount --cow runs as root and presents
// what is in UPPER as the server's own files, so an UPPER another user
// could change is refused: one of the server's user, one group- or
// world-writable, one inside a directory of the server's user, one that
// holds an entry of the server's user, one whose tree/ or inner directory
// was swapped for a symlink after a first mount. Each refusal is one line
// naming UPPER, and none creates a file anywhere. A directory swapped for a
// symlink while mounted is never followed: nothing appears outside UPPER.
func TestHardenUpperTrust(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	e.CombinefsPath(t)
	ch := BuildChain(t, e, ChainSpec{Incrementals: 1})
	last := len(ch.Backups) - 1
	dir := e.TempDir(t)
	priv := e.PrivateDir(t)
	mp := cowMountPoint(t, e, dir, "mnt")
	// A directory of the server's user outside UPPER, which must stay empty.
	outside := path.Join(dir, "outside")
	e.MkdirAll(t, outside)

	refused := func(what, upper, want string) {
		t.Helper()
		before := listTree(t, e.Host(upper))
		args := append(append([]string{"mount", "--daemon", "--cow", upper}, ch.Upto(last)...), mp)
		out, code := runCombinefs(t, e, args...)
		out = strings.TrimSpace(out)
		if cowIsMounted(e.Host(mp)) {
			mustCombinefs(t, e, "umount", "--lazy", mp)
			t.Fatalf("%s: combinefs mounted it", what)
		}
		if code == 0 || strings.Count(out, "\n") != 0 || !strings.Contains(out, upper) || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d:\n%s\nwant one line naming %s and saying %q", what, code, out, upper, want)
		}
		if after := listTree(t, e.Host(upper)); after != before {
			t.Errorf("%s: the refused mount changed %s:\nbefore:\n%s\nafter:\n%s", what, upper, before, after)
		}
		t.Logf("%s: %s", what, out)
	}
	mk := func(name string, mode uint32, uid int) string {
		p := path.Join(priv, name)
		if err := os.Mkdir(e.Host(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Chmod(e.Host(p), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(e.Host(p), uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	refused("UPPER of the server's user", mk("theirs", 0o700, e.UID), fmt.Sprintf("owned by uid %d", e.UID))
	refused("group-writable UPPER", mk("groupw", 0o770, 0), "writable by group or others")
	refused("world-writable UPPER", mk("worldw", 0o777, 0), "writable by group or others")
	inTheirs := path.Join(dir, "upper")
	refused("new UPPER in a directory of the server's user", inTheirs, fmt.Sprintf("owned by uid %d", e.UID))
	mustNotExist(t, e.Host(inTheirs), "a refused mount")

	// A first mount makes UPPER 0700 and, with a server's writes, its
	// inner directories.
	upper := path.Join(priv, "upper")
	m := mountCoW(t, e, upper, mp, ch.Upto(last)...)
	if fi, err := os.Stat(e.Host(upper)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("new UPPER: %v %v, want mode 0700", fi.Mode(), err)
	}
	srv := startOnMount(t, e, mp)
	dbDir := "base/" + srv.Psql(t, "postgres", "SELECT oid FROM pg_database WHERE datname = 'postgres'")
	rel := srv.Psql(t, "postgres", "CREATE TABLE harden AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT; SELECT pg_relation_filepath('harden')")
	srv.Stop(t, "fast")
	m.Umount(t)
	if _, err := os.Stat(e.Host(path.Join(upper, "tree", rel))); err != nil {
		t.Fatalf("the server's new relation is not in UPPER: %v", err)
	}

	// swap replaces rel in UPPER by a symlink to outside, owned by uid;
	// the returned function undoes it.
	swap := func(rel string, uid int) func() {
		t.Helper()
		p := e.Host(path.Join(upper, rel))
		if err := os.Rename(p, p+".real"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, p); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return func() {
			os.Remove(p)
			if err := os.Rename(p+".real", p); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, inner := range []string{"tree", "tmp"} {
		undo := swap(inner, 0)
		refused("UPPER whose "+inner+"/ is a symlink", upper, "tampered")
		undo()
	}
	undo := swap(path.Join("tree", dbDir), e.UID)
	refused("UPPER whose "+dbDir+" is a symlink of the server's user", upper, "tampered")
	undo()
	planted := e.Host(path.Join(upper, "tree", "postgresql.auto.conf"))
	if err := os.WriteFile(planted, []byte("shared_preload_libraries = 'theirs'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(planted, e.UID, e.GID)
	refused("UPPER holding a file of the server's user", upper, "postgresql.auto.conf")
	os.Remove(planted)

	// Swapped while mounted (the kernel still takes it for a directory):
	// creating, writing, removing and renaming there reach nothing outside.
	m = mountCoW(t, e, upper, mp, ch.Upto(last)...)
	h := func(rel string) string { return e.Host(path.Join(mp, rel)) }
	relDir, relName := path.Split(rel)
	if _, err := os.Stat(h(rel)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"made", relName, relName + "_fsm"} {
		os.WriteFile(e.Host(path.Join(outside, name)), []byte("outside"), 0o600)
	}
	undo = swap(path.Join("tree", dbDir), 0)
	if f, err := os.OpenFile(h(path.Join(relDir, "made")), os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		f.Write([]byte("through the mount"))
		f.Close()
		t.Errorf("created %s in a directory of UPPER swapped for a symlink", path.Join(relDir, "made"))
	}
	os.Remove(h(rel))
	os.Rename(h(rel+"_fsm"), h(rel+"_moved"))
	os.Mkdir(h(path.Join(relDir, "newdir")), 0o700)
	m.Umount(t)
	undo()
	ents, _ := os.ReadDir(e.Host(outside))
	if len(ents) != 3 {
		t.Errorf("entries outside UPPER changed: %v", ents)
	}
	for _, ent := range ents {
		if b, err := os.ReadFile(e.Host(path.Join(outside, ent.Name()))); err != nil || string(b) != "outside" {
			t.Errorf("%s outside UPPER changed: %q %v", ent.Name(), b, err)
		}
	}
	// UPPER itself still serves the point with the server's table.
	m = mountCoW(t, e, upper, mp, ch.Upto(last)...)
	srv = startOnMount(t, e, mp)
	if got := srv.Psql(t, "postgres", "SELECT count(*) FROM harden"); got != "1000" {
		t.Errorf("after the refusals the table made on the mount has %s rows, want 1000", got)
	}
	srv.Stop(t, "fast")
	m.Umount(t)
}

// listTree lists the entries under a host directory with their owners and
// modes ("" when it does not exist), to show a refusal touched nothing.
func listTree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil {
			fmt.Fprintf(&b, "%s %o %d\n", strings.TrimPrefix(p, root), st.Mode, st.Uid)
		}
		return nil
	})
	return b.String()
}

// TestHardenMissingFile: a final backup that lacks a file its manifest
// lists (an INCREMENTAL file, a plain one) is refused by flatten, by flatten
// as pg_combinebackup (in PostgreSQL's words for it) and by both kinds of
// mount, each naming the file and leaving nothing behind, where
// pg_combinebackup would write the output without the file.
func TestHardenMissingFile(t *testing.T) {
	e := Provision(t)
	RequireFUSE(t)
	e.CombinefsPath(t)
	ch := BuildChain(t, e, ChainSpec{Incrementals: 1})
	final := ch.Backups[len(ch.Backups)-1]
	var incremental string
	filepath.WalkDir(e.Host(final), func(p string, d fs.DirEntry, err error) error {
		if err == nil && incremental == "" && strings.HasPrefix(d.Name(), "INCREMENTAL.") {
			incremental, _ = filepath.Rel(e.Host(final), p)
		}
		return nil
	})
	if incremental == "" {
		t.Fatal("the final backup has no INCREMENTAL file")
	}
	for _, victim := range []string{incremental, "global/pg_filenode.map"} {
		t.Run(strings.ReplaceAll(victim, "/", "_"), func(t *testing.T) {
			dir := e.TempDir(t)
			damaged := path.Join(dir, "final")
			e.Run(t, true, "cp", "-a", final, damaged)
			if err := os.Remove(e.Host(path.Join(damaged, victim))); err != nil {
				t.Fatal(err)
			}
			missing := path.Join(damaged, victim)
			inputs := append(ch.Upto(len(ch.Backups)-2), damaged)
			oneLine := func(what, msg string, code int) {
				t.Helper()
				msg = strings.TrimSpace(msg)
				if code == 0 || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, missing) {
					t.Errorf("%s: exit %d:\n%s\nwant one line naming %s", what, code, msg, missing)
				}
				t.Logf("%s: %s", what, msg)
			}

			out := path.Join(dir, "out")
			msg, code := runCombinefs(t, e, append([]string{"flatten", "-o", out}, inputs...)...)
			oneLine("flatten", msg, code)
			mustNotExist(t, e.Host(out), "a refused flatten")

			link, err := e.Command(t.Context(), true, e.CombinefsAsPgCombinebackup(), append([]string{"-o", out}, inputs...)...).CombinedOutput()
			want := fmt.Sprintf("pg_combinebackup: error: %q is present in the manifest but not on disk\n", missing)
			if err == nil || string(link) != want {
				t.Errorf("as pg_combinebackup: %v:\n%s\nwant:\n%s", err, link, want)
			}
			mustNotExist(t, e.Host(out), "a refused flatten as pg_combinebackup")
			if refOut, refErr := e.CombineBackupErr(t, path.Join(dir, "ref"), inputs); refErr == nil {
				t.Logf("pg_combinebackup writes the output without %s (what combinefs refuses)", victim)
			} else {
				t.Logf("pg_combinebackup: %s", strings.TrimSpace(refOut))
			}

			mp := cowMountPoint(t, e, dir, "mnt")
			upper := path.Join(e.PrivateDir(t), "upper")
			for _, mode := range [][]string{nil, {"--cow", upper}} {
				what := "mount"
				if mode != nil {
					what = "mount --cow"
				}
				msg, code := runCombinefs(t, e, append(append(append([]string{"mount", "--daemon"}, mode...), inputs...), mp)...)
				if cowIsMounted(e.Host(mp)) {
					mustCombinefs(t, e, "umount", "--lazy", mp)
					t.Fatalf("%s: mounted a chain whose final backup lacks %s", what, victim)
				}
				oneLine(what, msg, code)
			}
			mustNotExist(t, e.Host(upper), "a refused mount --cow")
		})
	}
}

// TestHardenFlattenKill: kill -9 of flatten at each of its phases (output
// directories made; files written; all durable; pg_control named) leaves
// neither the output directory nor the tablespace directories, nothing with
// a global/pg_control until the last phase and that only under the hidden
// name; a rerun removes the leftover, saying so, and writes what
// pg_combinebackup writes.
func TestHardenFlattenKill(t *testing.T) {
	e := Provision(t)
	e.CombinefsPath(t)
	ch := BuildChain(t, e, ChainSpec{Rich: true, Incrementals: 1})
	last := len(ch.Backups) - 1
	dir := e.TempDir(t)
	ref := path.Join(dir, "ref")
	ch.Combine(t, last, ref)
	for _, phase := range []string{flatten.CrashCreated, flatten.CrashFiles, flatten.CrashSynced, flatten.CrashControl} {
		t.Run(phase, func(t *testing.T) {
			sub := path.Join(dir, phase) // made by flatten, as root
			out := path.Join(sub, "out")
			args := append(append([]string{"flatten", "-o", out}, ch.OutputArgs(last, out)...), ch.Upto(last)...)
			cmd := e.Combinefs(t.Context(), args...)
			cmd.Env = append(cmd.Env, crashpoint.Env+"="+phase)
			msg, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("combinefs flatten with %s=%s: %v, want killed by SIGKILL\n%s", crashpoint.Env, phase, err, msg)
			}
			mustNotExist(t, e.Host(out), "a killed flatten")
			for _, m := range ch.OutputMappings(last, out) {
				mustNotExist(t, e.Host(m.New), "a killed flatten")
			}
			partial := path.Join(sub, ".out.combinefs-partial")
			controls := dataDirsUnder(t, e.Host(sub))
			var wantControls []string
			if phase == flatten.CrashControl {
				wantControls = append(wantControls, e.Host(partial))
			}
			if strings.Join(controls, " ") != strings.Join(wantControls, " ") {
				t.Errorf("directories with a global/pg_control after a kill at %s: %v, want %v", phase, controls, wantControls)
			}
			msg2 := mustCombinefs(t, e, args...)
			if !strings.Contains(msg2, fmt.Sprintf("warning: removing %q, left by an interrupted run", partial)) {
				t.Errorf("the rerun does not say it removes %s:\n%s", partial, msg2)
			}
			mustNotExist(t, e.Host(partial), "a rerun")
			compareWithReference(t, ch, last, ref, out, true)
		})
	}
}

// dataDirsUnder lists the directories below root (sorted) that hold a
// global/pg_control, what a server could be started on.
func dataDirsUnder(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "pg_control" && filepath.Base(filepath.Dir(p)) == "global" {
			dirs = append(dirs, filepath.Dir(filepath.Dir(p)))
		}
		return nil
	})
	return dirs
}
