package safedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const otherUID = 65534 // nobody

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
}

func mkdir(t *testing.T, p string, mode os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(p, uint32(mode)); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	uid := os.Geteuid()
	base := t.TempDir()
	good := mkdir(t, filepath.Join(base, "good"), 0o700)
	if err := Check(good, uid); err != nil {
		t.Fatalf("Check(%s): %v", good, err)
	}
	// Group read is fine; group or other write is not.
	readable := mkdir(t, filepath.Join(base, "readable"), 0o750)
	if err := Check(readable, uid); err != nil {
		t.Fatalf("Check(%s): %v", readable, err)
	}
	for name, mode := range map[string]os.FileMode{"groupw": 0o770, "worldw": 0o707, "sticky": 0o1777} {
		d := mkdir(t, filepath.Join(base, name), mode)
		err := Check(d, uid)
		if err == nil || !strings.Contains(err.Error(), d) || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("Check(%s mode %o) = %v, want refusal naming it", d, mode, err)
		}
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if err := Check(link, uid); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("Check(symlink) = %v, want refusal", err)
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	if err := Check(file, uid); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Check(file) = %v, want refusal", err)
	}
	if err := Check(filepath.Join(base, "absent"), uid); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Check(absent) = %v, want ErrNotExist", err)
	}
	// A parent writable by others: fine when sticky (as /tmp), not else.
	sticky := mkdir(t, filepath.Join(base, "tmplike"), 0o1777)
	if err := Check(mkdir(t, filepath.Join(sticky, "d"), 0o700), uid); err != nil {
		t.Errorf("under a sticky parent: %v", err)
	}
	open := mkdir(t, filepath.Join(base, "open"), 0o777)
	d := mkdir(t, filepath.Join(open, "d"), 0o700)
	if err := Check(d, uid); err == nil || !strings.Contains(err.Error(), open) || !strings.Contains(err.Error(), "not sticky") {
		t.Errorf("under a world-writable parent: %v, want refusal naming %s", err, open)
	}
	// A symlinked parent is judged by where it leads.
	via := filepath.Join(base, "via")
	os.Symlink(open, via)
	if err := Check(filepath.Join(via, "d"), uid); err == nil || !strings.Contains(err.Error(), open) {
		t.Errorf("through a symlinked parent: %v, want refusal naming %s", err, open)
	}
}

func TestCheckOwners(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	theirs := mkdir(t, filepath.Join(base, "theirs"), 0o700)
	os.Chown(theirs, otherUID, otherUID)
	if err := Check(theirs, 0); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("Check(dir of another user) = %v, want refusal", err)
	}
	mine := mkdir(t, filepath.Join(theirs, "mine"), 0o700)
	if err := Check(mine, 0); err == nil || !strings.Contains(err.Error(), theirs) {
		t.Errorf("Check(under a parent of another user) = %v, want refusal naming %s", err, theirs)
	}
	// That user's own directory is safe for them.
	os.Chown(mine, otherUID, otherUID)
	if err := Check(mine, otherUID); err != nil {
		t.Errorf("Check(%s, owner): %v", mine, err)
	}
}

func TestMkdirPrivate(t *testing.T) {
	base := t.TempDir()
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	d := filepath.Join(base, "new")
	if err := MkdirPrivate(d); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(d); err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Fatalf("made %v %v, want a 0700 directory", fi.Mode(), err)
	}
	if err := MkdirPrivate(d); !errors.Is(err, os.ErrExist) {
		t.Errorf("MkdirPrivate(existing) = %v, want ErrExist", err)
	}
	open := mkdir(t, filepath.Join(base, "open"), 0o777)
	if err := MkdirPrivate(filepath.Join(open, "d")); err == nil {
		t.Error("MkdirPrivate under a world-writable parent succeeded")
	}
	if _, err := os.Lstat(filepath.Join(open, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused MkdirPrivate left its directory: %v", err)
	}
}

func TestOpenBeneath(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "by component"
		}
		t.Run(name, func(t *testing.T) {
			noOpenat2.Store(fallback)
			defer noOpenat2.Store(false)
			testOpenBeneath(t)
		})
	}
}

func testOpenBeneath(t *testing.T) {
	base := t.TempDir()
	root := mkdir(t, filepath.Join(base, "root"), 0o700)
	outside := mkdir(t, filepath.Join(base, "outside"), 0o700)
	mkdir(t, filepath.Join(root, "a"), 0o700)
	os.WriteFile(filepath.Join(root, "a", "f"), []byte("x"), 0o600)
	os.Symlink(outside, filepath.Join(root, "out"))
	os.Symlink("a", filepath.Join(root, "in"))
	os.Symlink("f", filepath.Join(root, "a", "lf"))
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)

	fd, err := OpenBeneath(rfd, "a/f", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("a/f: %v", err)
	}
	buf := make([]byte, 4)
	if n, _ := unix.Read(fd, buf); string(buf[:n]) != "x" {
		t.Errorf("a/f read %q", buf[:n])
	}
	unix.Close(fd)
	for _, rel := range []string{"out/new", "in/f", "a/lf", "../outside/x", "a/../../outside/x", "out"} {
		fd, err := OpenBeneath(rfd, rel, unix.O_RDWR|unix.O_CREAT, 0o600)
		if err == nil {
			unix.Close(fd)
			t.Errorf("%s: opened, want refusal", rel)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files created outside the root: %v", ents)
	}
	// O_PATH|O_NOFOLLOW gives the final symlink itself.
	fd, err = OpenBeneath(rfd, "a/lf", unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatalf("a/lf O_PATH: %v", err)
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	unix.Close(fd)
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("a/lf O_PATH|O_NOFOLLOW opened mode %o, want the symlink", st.Mode)
	}
	if _, err := OpenBeneath(rfd, "/etc", unix.O_RDONLY, 0); err == nil {
		t.Error("an absolute path was opened")
	}
}
