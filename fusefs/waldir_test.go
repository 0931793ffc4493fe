package fusefs_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver"
)

// walPoint is cowChain's point with WAL in both backups' pg_wal: a segment,
// archive_status/ and summaries/ (the final backup's are the point's).
func walPoint(t *testing.T) *resolver.Tree {
	t.Helper()
	requireFUSE(t)
	c := cowChain(t)
	for _, b := range c.Backups {
		b.File("pg_wal/000000010000000000000003", bytes.Repeat([]byte("wal "+b.Name+"\n"), 1<<16))
		b.File("pg_wal/archive_status/000000010000000000000003.done", nil)
		b.File("pg_wal/summaries/0000000100000000030000280000000003000100.summary", []byte("summary "+b.Name))
	}
	c.Backups[0].File("pg_wal/000000010000000000000002", []byte("only in the full backup"))
	return openPoint(t, c.Dirs())
}

// walFiles is the files (and directories, as "/") below dir, by path.
func walFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out[rel] = "/"
			return nil
		}
		data, err := os.ReadFile(p)
		out[rel] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameFiles(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d entries, want %d: %v", what, len(got), len(want), keys(got))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s differs (%d bytes, want %d)", what, k, len(got[k]), len(v))
		}
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestWALDir: with WALDir, pg_wal is a symlink to it in the view and in the
// upper, hiding the lower pg_wal; WALDir holds the point's pg_wal, owned by
// the presented owner; what the server writes there stays out of the upper;
// a remount reuses it; another WALDir is refused.
func TestWALDir(t *testing.T) {
	p := walPoint(t)
	ro := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID})
	want := walFiles(t, filepath.Join(ro.dir, "pg_wal"))
	if want["000000010000000000000002"] != "" || want["archive_status/000000010000000000000003.done"] != "" || len(want) != 5 {
		t.Fatalf("the point's pg_wal is not the final backup's: %v", keys(want))
	}
	ro.unmount(t)

	tmp := t.TempDir()
	upper, walDir := filepath.Join(tmp, "upper"), filepath.Join(tmp, "wal", "dir")
	opts := fusefs.Options{UID: testUID, GID: testGID, WALDir: walDir}
	mt := mountCoW(t, "", p, upper, opts)
	for _, p := range []string{filepath.Join(mt.dir, "pg_wal"), filepath.Join(upper, "tree", "pg_wal")} {
		if tgt, err := os.Readlink(p); err != nil || tgt != walDir {
			t.Fatalf("%s: readlink %q, %v; want %s", p, tgt, err, walDir)
		}
	}
	ents, err := os.ReadDir(mt.dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if e.Name() == "pg_wal" {
			n++
			if e.Type() != fs.ModeSymlink {
				t.Errorf("readdir shows pg_wal as %v", e.Type())
			}
		}
	}
	if n != 1 {
		t.Errorf("readdir lists pg_wal %d times", n)
	}
	sameFiles(t, "WAL directory", walFiles(t, walDir), want)
	var st syscall.Stat_t
	if err := syscall.Lstat(walDir, &st); err != nil || st.Uid != testUID || st.Gid != testGID || st.Mode&0o7777 != 0o700 {
		t.Errorf("WAL directory: uid %d gid %d mode %o (%v)", st.Uid, st.Gid, st.Mode&0o7777, err)
	}
	if err := syscall.Lstat(filepath.Join(walDir, "archive_status/000000010000000000000003.done"), &st); err != nil || st.Uid != testUID {
		t.Errorf("archive_status file: uid %d (%v)", st.Uid, err)
	}
	// The server's writes through the symlink land in WALDir only.
	if err := os.WriteFile(filepath.Join(mt.dir, "pg_wal", "000000010000000000000004"), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	want["000000010000000000000004"] = "new"
	sameFiles(t, "WAL directory after a write", walFiles(t, walDir), want)
	mt.unmount(t)
	if names, _ := os.ReadDir(filepath.Join(upper, "tree")); len(names) != 1 {
		t.Errorf("upper tree/ holds %d entries, want the symlink alone", len(names))
	}
	for _, leftover := range []string{".combinefs-waldir", ".combinefs-staging"} {
		if _, err := os.Lstat(filepath.Join(walDir, leftover)); err == nil {
			t.Errorf("%s left in the WAL directory", leftover)
		}
	}

	// A remount reuses WALDir as it is, with or without the option.
	for _, o := range []fusefs.Options{opts, {UID: testUID, GID: testGID}} {
		mt = mountCoW(t, "", p, upper, o)
		sameFiles(t, "remounted pg_wal", walFiles(t, filepath.Join(mt.dir, "pg_wal")+"/"), want)
		mt.unmount(t)
	}
	// Another WALDir is refused, changing nothing.
	other := filepath.Join(tmp, "other")
	before := hashTree(t, upper)
	if _, err := fusefs.MountCoW(t.TempDir(), p, upper, fusefs.Options{UID: testUID, GID: testGID, WALDir: other}); err == nil || !strings.Contains(err.Error(), "already has its own pg_wal") {
		t.Errorf("another WAL directory: %v", err)
	}
	checkUnchanged(t, before, hashTree(t, upper))
	if _, err := os.Lstat(other); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused WAL directory was made: %v", err)
	}
}

// TestWALDirRefused: a WAL directory that is not empty, not a directory,
// or inside the upper, and an upper with its own pg_wal, are refused in one
// line, with nothing made or changed.
func TestWALDirRefused(t *testing.T) {
	p := walPoint(t)
	tmp := t.TempDir()
	full := filepath.Join(tmp, "full")
	os.Mkdir(full, 0o700)
	os.WriteFile(filepath.Join(full, "x"), []byte("user data"), 0o600)
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, []byte("a file"), 0o600)
	// A leftover marker of another upper: that upper may link to it.
	foreign := filepath.Join(tmp, "foreign")
	os.Mkdir(foreign, 0o700)
	os.WriteFile(filepath.Join(foreign, ".combinefs-waldir"), []byte(`{"upper":"/elsewhere"}`), 0o600)
	upper := filepath.Join(tmp, "upper")
	for _, c := range []struct{ dir, want string }{
		{full, "is not empty"},
		{file, "is not a directory"},
		{filepath.Join(upper, "wal"), "outside the upper directory"},
		{"relative", "not an absolute path"},
		{foreign, "was being set up for upper directory /elsewhere"},
	} {
		before := hashTree(t, tmp)
		_, err := fusefs.MountCoW(t.TempDir(), p, upper, fusefs.Options{UID: testUID, GID: testGID, WALDir: c.dir})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("WALDir %s: %v, want one line with %q", c.dir, err, c.want)
		}
		checkUnchanged(t, before, hashTree(t, tmp))
	}
	// An upper whose server already wrote its own pg_wal.
	mt := mountCoW(t, "", p, upper, fusefs.Options{UID: testUID, GID: testGID})
	if err := os.WriteFile(filepath.Join(mt.dir, "pg_wal", "000000010000000000000004"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	mt.unmount(t)
	before := hashTree(t, tmp)
	_, err := fusefs.MountCoW(t.TempDir(), p, upper, fusefs.Options{UID: testUID, GID: testGID, WALDir: filepath.Join(tmp, "new")})
	if err == nil || !strings.Contains(err.Error(), "already has its own pg_wal (a directory") {
		t.Errorf("upper with its own pg_wal: %v", err)
	}
	checkUnchanged(t, before, hashTree(t, tmp))
}

// TestWALDirLeftover: a WAL directory an interrupted switch left (its
// staging directory, or its marker naming this upper) is emptied and
// filled again.
func TestWALDirLeftover(t *testing.T) {
	p := walPoint(t)
	for _, left := range []string{".combinefs-staging/000000010000000000000003", "000000010000000000000003"} {
		tmp := t.TempDir()
		upper, walDir := filepath.Join(tmp, "upper"), filepath.Join(tmp, "wal")
		os.MkdirAll(filepath.Dir(filepath.Join(walDir, left)), 0o700)
		os.WriteFile(filepath.Join(walDir, left), []byte("half"), 0o600)
		if !strings.HasPrefix(left, ".") {
			os.WriteFile(filepath.Join(walDir, ".combinefs-waldir"), []byte(`{"upper":"`+upper+`"}`), 0o600)
		}
		mt := mountCoW(t, "", p, upper, fusefs.Options{UID: testUID, GID: testGID, WALDir: walDir})
		got := walFiles(t, walDir)
		if len(got) != 5 || got["000000010000000000000003"] == "half" {
			t.Errorf("leftover %s: WAL directory holds %v", left, keys(got))
		}
		mt.unmount(t)
	}
}

// TestWALDirUnlinkRename: removing or renaming the pg_wal symlink through
// the mount leaves a whiteout: the lower pg_wal does not come back.
func TestWALDirUnlinkRename(t *testing.T) {
	p := walPoint(t)
	for _, op := range []string{"unlink", "rename"} {
		tmp := t.TempDir()
		upper, walDir := filepath.Join(tmp, "upper"), filepath.Join(tmp, "wal")
		opts := fusefs.Options{UID: testUID, GID: testGID, WALDir: walDir}
		mt := mountCoW(t, "", p, upper, opts)
		link := filepath.Join(mt.dir, "pg_wal")
		var err error
		if op == "unlink" {
			err = os.Remove(link)
		} else {
			err = os.Rename(link, filepath.Join(mt.dir, "pg_wal.old"))
		}
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		check := func(when string) {
			if _, err := os.Lstat(filepath.Join(mt.dir, "pg_wal")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s %s: pg_wal is still there (%v)", op, when, err)
			}
			if tgt, err := os.Readlink(filepath.Join(mt.dir, "pg_wal.old")); op == "rename" && tgt != walDir {
				t.Errorf("%s %s: pg_wal.old leads to %q (%v)", op, when, tgt, err)
			}
		}
		check("")
		mt.unmount(t)
		// Without WALDir: with it, the missing pg_wal would be switched again.
		mt = mountCoW(t, "", p, upper, fusefs.Options{UID: testUID, GID: testGID})
		check("after a remount")
		mt.unmount(t)
		if len(walFiles(t, walDir)) != 5 {
			t.Errorf("%s: the WAL directory changed", op)
		}
	}
}

// TestWALDirDetach: hydration skips the hidden lower pg_wal, and detach
// leaves a data directory whose pg_wal is the symlink to WALDir.
func TestWALDirDetach(t *testing.T) {
	p := walPoint(t)
	tmp := t.TempDir()
	upper, walDir := filepath.Join(tmp, "upper"), filepath.Join(tmp, "wal")
	mt := mountCoW(t, "", p, upper, fusefs.Options{UID: testUID, GID: testGID, WALDir: walDir, Hydrate: true})
	waitHydrated(t, mt)
	mt.unmount(t)
	if err := fusefs.Detach(upper, fusefs.DetachOptions{UID: testUID, GID: testGID}); err != nil {
		t.Fatal(err)
	}
	if tgt, err := os.Readlink(filepath.Join(upper, "pg_wal")); err != nil || tgt != walDir {
		t.Fatalf("detached pg_wal: %q, %v", tgt, err)
	}
	for _, gone := range []string{"tree", "tmp", "combinefs-upper.json"} {
		if _, err := os.Lstat(filepath.Join(upper, gone)); err == nil {
			t.Errorf("detach left %s", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(upper, "base/5/16385")); err != nil {
		t.Errorf("detached data directory: %v", err)
	}
	if len(walFiles(t, walDir)) != 5 {
		t.Errorf("the WAL directory changed: %v", keys(walFiles(t, walDir)))
	}
}
