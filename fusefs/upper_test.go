package fusefs_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// TestUpperRefusal: an upper directory belongs to one chain point. Reusing
// it for another point (another final backup, or another cluster with the
// same LSNs), or using a directory combinefs did not make, fails before
// anything is mounted or written, with a message naming the directory.
func TestUpperRefusal(t *testing.T) {
	requireFUSE(t)
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.File("base/5/16384", resolvertest.FillBlock("full", 0))
	inc1 := c.Incremental()
	inc1.Incremental("base/5/16384", 1)
	inc2 := c.Incremental()
	inc2.Incremental("base/5/16384", 1)
	dirs := c.Dirs()
	pointA := openPoint(t, dirs[:2])
	pointB := openPoint(t, dirs)
	pointFull := openPoint(t, dirs[:1])

	// Another cluster whose backups have the same LSNs as pointA's.
	c2 := resolvertest.NewChain(t)
	c2.SystemIdentifier = resolvertest.DefaultSystemIdentifier + 1
	c2.Full().File("base/5/16384", resolvertest.FillBlock("other", 0))
	c2.Incremental().Incremental("base/5/16384", 1)
	pointOther := openPoint(t, c2.Dirs())
	if pointOther.Chain.Final().Label.StartLSN != pointA.Chain.Final().Label.StartLSN {
		t.Fatalf("test setup: the other cluster's point should have the same LSN")
	}

	upper := filepath.Join(t.TempDir(), "upper")
	m := mountCoW(t, "", pointA, upper, fusefs.Options{})
	mustCreate(t, filepath.Join(m.dir, "made-on-A"), []byte("A"), 0o600)
	m.unmount(t)
	if _, err := os.Stat(filepath.Join(upper, "combinefs-upper.json")); err != nil {
		t.Errorf("the upper directory does not record its point: %v", err)
	}
	before := hashTree(t, upper)

	refuse := func(what string, dir string, mk func(mnt string) error) {
		t.Helper()
		mnt := t.TempDir()
		err := mk(mnt)
		if err == nil {
			t.Errorf("%s: mounted; want a refusal", what)
			// Unmount what should not have been mounted.
			unix.Unmount(mnt, 0)
			return
		}
		if !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %q does not name the upper directory %s", what, err, dir)
		}
		if isMounted(mnt) {
			t.Errorf("%s: refused but %s is mounted", what, mnt)
			unix.Unmount(mnt, 0)
		}
		t.Logf("%s: %v", what, err)
	}
	refuse("upper of point A for point B (a newer final backup)", upper, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointB, upper, fusefs.Options{})
		return err
	})
	refuse("upper of point A for the full backup alone", upper, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointFull, upper, fusefs.Options{})
		return err
	})
	refuse("upper of point A for another cluster with the same LSNs", upper, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointOther, upper, fusefs.Options{})
		return err
	})
	checkUnchanged(t, before, hashTree(t, upper))

	// The right point still mounts and shows what was made on it.
	m = mountCoW(t, "", pointA, upper, fusefs.Options{})
	if got, err := os.ReadFile(filepath.Join(m.dir, "made-on-A")); err != nil || string(got) != "A" {
		t.Errorf("point A again: %q, %v", got, err)
	}
	m.unmount(t)

	// A directory combinefs did not make.
	foreign := t.TempDir()
	must(t, "write", os.WriteFile(filepath.Join(foreign, "precious.txt"), []byte("keep me"), 0o600))
	fb := hashTree(t, foreign)
	refuse("a non-empty foreign directory", foreign, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointA, foreign, fusefs.Options{})
		return err
	})
	checkUnchanged(t, fb, hashTree(t, foreign))

	// A damaged record, and one of a future format.
	damaged := filepath.Join(t.TempDir(), "damaged")
	must(t, "copy", os.CopyFS(damaged, os.DirFS(upper)))
	must(t, "write", os.WriteFile(filepath.Join(damaged, "combinefs-upper.json"), []byte("{not json"), 0o600))
	refuse("a damaged combinefs-upper.json", damaged, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointA, damaged, fusefs.Options{})
		return err
	})
	future := filepath.Join(t.TempDir(), "future")
	must(t, "copy", os.CopyFS(future, os.DirFS(upper)))
	meta := map[string]any{}
	data, _ := os.ReadFile(filepath.Join(upper, "combinefs-upper.json"))
	must(t, "unmarshal", json.Unmarshal(data, &meta))
	meta["format"] = 99
	data, _ = json.Marshal(meta)
	must(t, "write", os.WriteFile(filepath.Join(future, "combinefs-upper.json"), data, 0o600))
	refuse("an upper of a future format", future, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointA, future, fusefs.Options{})
		return err
	})
	// An upper whose tree/ is gone.
	broken := filepath.Join(t.TempDir(), "broken")
	must(t, "copy", os.CopyFS(broken, os.DirFS(upper)))
	must(t, "remove", os.RemoveAll(filepath.Join(broken, "tree")))
	refuse("an upper without tree/", broken, func(mnt string) error {
		_, err := fusefs.MountCoW(mnt, pointA, broken, fusefs.Options{})
		return err
	})

	// An empty existing directory is fine, and becomes an upper.
	empty := t.TempDir()
	m = mountCoW(t, "", pointB, empty, fusefs.Options{})
	m.unmount(t)
	for _, name := range []string{"combinefs-upper.json", "tree", "tmp"} {
		if _, err := os.Stat(filepath.Join(empty, name)); err != nil {
			t.Errorf("a new upper lacks %s: %v", name, err)
		}
	}
}

// TestUpperCrashStates prepares upper directories as an interrupted
// operation or a crash leaves them, without a kernel crash, and checks the
// view a mount presents of them.
func TestUpperCrashStates(t *testing.T) {
	requireFUSE(t)
	c := cowChain(t)
	p := openPoint(t, c.Dirs())
	initial := pointModel(t, p)
	opts := fusefs.Options{UID: testUID, GID: testGID}

	// prepare makes an upper in which block 1 of base/5/16385 was written
	// and a new file made, through a mount.
	prepare := func(t *testing.T) (string, model) {
		upper := filepath.Join(t.TempDir(), "upper")
		m := mountCoW(t, "", p, upper, opts)
		mdl := initial.clone()
		mustWriteAt(t, filepath.Join(m.dir, "base/5/16385"), bs+10, []byte("written before the crash"))
		mdl.writeAt(t, "base/5/16385", bs+10, []byte("written before the crash"))
		mustCreate(t, filepath.Join(m.dir, "new"), []byte("new"), 0o600)
		mdl["new"] = &mnode{data: []byte("new"), perm: 0o600}
		m.unmount(t)
		return upper, mdl
	}

	t.Run("limit-lowered-not-truncated", func(t *testing.T) {
		// A truncation of base/5/16385 to 3*8192+100 that lowered the limit
		// (and had brought block 3 up) but did not cut the file.
		upper, mdl := prepare(t)
		ov := filepath.Join(upper, "tree/base/5/16385")
		cut := int64(3*bs + 100)
		// Block 3 as the truncation brings it up first.
		blk3 := bytes.Clone(mdl["base/5/16385"].data[3*bs : 4*bs])
		f, err := os.OpenFile(ov, os.O_WRONLY, 0)
		must(t, "open overlay", err)
		_, err = f.WriteAt(blk3, 3*bs)
		must(t, "write block 3", err)
		f.Close()
		must(t, "setxattr", unix.Setxattr(ov, xattrLimit, []byte(strconv.FormatInt(cut, 10)), 0))

		// The file keeps its length; everything from the cut on that the
		// upper does not hold is zeros, never the chain's old bytes. Block 3
		// (held by the upper) still shows in full.
		data := mdl["base/5/16385"].data
		clear(data[4*bs:])
		m := mountCoW(t, "", p, upper, opts)
		checkView(t, m.dir, mdl)
		// Completing the truncation through the mount.
		must(t, "truncate", os.Truncate(filepath.Join(m.dir, "base/5/16385"), cut))
		mdl.truncate(t, "base/5/16385", cut)
		must(t, "truncate", os.Truncate(filepath.Join(m.dir, "base/5/16385"), 6*bs))
		mdl.truncate(t, "base/5/16385", 6*bs)
		checkView(t, m.dir, mdl)
		m.unmount(t)
		m = mountCoW(t, "", p, upper, opts)
		checkView(t, m.dir, mdl)
		m.unmount(t)
	})

	t.Run("limit-lowered-mid-block", func(t *testing.T) {
		// The same, but the block at the cut was not brought up: the
		// chain's bytes show below the limit only.
		upper, mdl := prepare(t)
		ov := filepath.Join(upper, "tree/base/5/16385")
		cut := int64(5*bs + 1000)
		must(t, "setxattr", unix.Setxattr(ov, xattrLimit, []byte(strconv.FormatInt(cut, 10)), 0))
		clear(mdl["base/5/16385"].data[cut:])
		m := mountCoW(t, "", p, upper, opts)
		checkView(t, m.dir, mdl)
		// A write into the block at the cut keeps the bytes below it.
		mustWriteAt(t, filepath.Join(m.dir, "base/5/16385"), 5*bs+2000, []byte("above the cut"))
		mdl.writeAt(t, "base/5/16385", 5*bs+2000, []byte("above the cut"))
		checkView(t, m.dir, mdl)
		m.unmount(t)
	})

	t.Run("tmp-leftovers", func(t *testing.T) {
		upper, mdl := prepare(t)
		tmp := filepath.Join(upper, "tmp")
		// An overlay being prepared by a copy-up, a whole copy, a
		// directory being made opaque, a whiteout: none was renamed into
		// tree/.
		ov := filepath.Join(tmp, "t999-1")
		must(t, "write", os.WriteFile(ov, nil, 0o600))
		must(t, "truncate", os.Truncate(ov, 144*bs))
		must(t, "xattr", unix.Setxattr(ov, xattrOrigin, []byte("base/5/16385"), 0))
		must(t, "xattr", unix.Setxattr(ov, xattrLimit, []byte("0"), 0))
		must(t, "write", os.WriteFile(filepath.Join(tmp, "t999-2"), []byte("half a copy"), 0o600))
		must(t, "mkdir", os.MkdirAll(filepath.Join(tmp, "t999-3/sub"), 0o700))
		must(t, "write", os.WriteFile(filepath.Join(tmp, "t999-3/sub/f"), []byte("x"), 0o600))
		must(t, "xattr", unix.Setxattr(filepath.Join(tmp, "t999-3"), xattrOpaque, []byte("y"), 0))
		must(t, "mknod", unix.Mknod(filepath.Join(tmp, "t999-4"), unix.S_IFCHR, 0))
		m := mountCoW(t, "", p, upper, opts)
		checkTmpEmpty(t, upper)
		checkView(t, m.dir, mdl)
		m.unmount(t)
	})

	t.Run("hand-made-format", func(t *testing.T) {
		// The documented format, written without combinefs: an overlay
		// holding one block, whiteouts of both kinds, an opaque directory.
		upper, mdl := prepare(t)
		tree := filepath.Join(upper, "tree")
		ov := filepath.Join(tree, "base/5/16387")
		size := int64(len(mdl["base/5/16387"].data))
		must(t, "write", os.WriteFile(ov, nil, 0o600))
		must(t, "truncate", os.Truncate(ov, size))
		blk := bytes.Repeat([]byte("H"), bs)
		f, err := os.OpenFile(ov, os.O_WRONLY, 0)
		must(t, "open", err)
		_, err = f.WriteAt(blk, 4*bs)
		must(t, "write", err)
		f.Close()
		must(t, "xattr", unix.Setxattr(ov, xattrOrigin, []byte("base/5/16387"), 0))
		must(t, "xattr", unix.Setxattr(ov, xattrLimit, []byte(strconv.FormatInt(size, 10)), 0))
		mdl.writeAt(t, "base/5/16387", 4*bs, blk)

		must(t, "mknod", unix.Mknod(filepath.Join(tree, "postgresql.conf"), unix.S_IFCHR, 0))
		mdl.remove("postgresql.conf")
		must(t, "symlink", os.Symlink(".combinefs-whiteout", filepath.Join(tree, "base/5/2601")))
		mdl.remove("base/5/2601")
		must(t, "mkdir", os.Mkdir(filepath.Join(tree, "base/16390"), 0o700))
		must(t, "xattr", unix.Setxattr(filepath.Join(tree, "base/16390"), xattrOpaque, []byte("y"), 0))
		must(t, "write", os.WriteFile(filepath.Join(tree, "base/16390/only"), []byte("only"), 0o600))
		mdl.remove("base/16390")
		mdl["base/16390"] = &mnode{dir: true, perm: 0o700}
		mdl["base/16390/only"] = &mnode{data: []byte("only"), perm: 0o600}
		// A lower directory with an upper twin (not opaque): both show.
		must(t, "mkdir", os.Mkdir(filepath.Join(tree, "base/16391"), 0o700))
		must(t, "write", os.WriteFile(filepath.Join(tree, "base/16391/extra"), []byte("extra"), 0o600))
		mdl["base/16391/extra"] = &mnode{data: []byte("extra"), perm: 0o600}

		m := mountCoW(t, "", p, upper, opts)
		checkView(t, m.dir, mdl)
		// And the mount carries on from there.
		mustWriteAt(t, filepath.Join(m.dir, "base/5/16387"), 4*bs+1, []byte("h"))
		mdl.writeAt(t, "base/5/16387", 4*bs+1, []byte("h"))
		mustCreate(t, filepath.Join(m.dir, "postgresql.conf"), []byte("again"), 0o600)
		mdl["postgresql.conf"] = &mnode{data: []byte("again"), perm: 0o600}
		checkView(t, m.dir, mdl)
		m.unmount(t)
	})

	t.Run("damaged-overlay", func(t *testing.T) {
		// Overlays the code cannot have made: an origin outside the point,
		// a missing limit, a limit that is not a number. Using them is an
		// I/O error; the rest of the mount works.
		upper, mdl := prepare(t)
		tree := filepath.Join(upper, "tree")
		bad := map[string][2]string{
			"base/5/ghost":   {"base/5/not-in-the-chain", "8192"},
			"base/5/nolimit": {"base/5/16384", ""},
			"base/5/badnum":  {"base/5/16384", "12x"},
		}
		for rel, x := range bad {
			p := filepath.Join(tree, rel)
			must(t, "write", os.WriteFile(p, nil, 0o600))
			must(t, "truncate", os.Truncate(p, 8192))
			must(t, "xattr", unix.Setxattr(p, xattrOrigin, []byte(x[0]), 0))
			if x[1] != "" {
				must(t, "xattr", unix.Setxattr(p, xattrLimit, []byte(x[1]), 0))
			}
		}
		m := mountCoW(t, "", p, upper, opts)
		for rel := range bad {
			_, err := os.ReadFile(filepath.Join(m.dir, rel))
			if !isErrno(err, syscall.EIO) {
				t.Errorf("read of damaged overlay %s: %v; want EIO", rel, err)
			}
		}
		for rel := range bad {
			must(t, "remove", os.Remove(filepath.Join(tree, rel)))
		}
		// The kernel may remember the damaged entries for a second; a
		// fresh mount shows the rest intact.
		m.unmount(t)
		m = mountCoW(t, "", p, upper, opts)
		checkView(t, m.dir, mdl)
		m.unmount(t)
	})
}

// TestUpperTrust: the daemon runs as root, so an upper directory another
// user could have made or may change is refused, a new one is private, and
// a symlink found inside it is never followed: an inner directory swapped
// for a symlink to elsewhere neither lets the mount create files there nor
// shows what is there.
func TestUpperTrust(t *testing.T) {
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the upper directory to another user")
	}
	c := resolvertest.NewChain(t)
	c.Full().File("base/5/16384", resolvertest.FillBlock("full", 0))
	c.Incremental().Incremental("base/5/16384", 1)
	point := openPoint(t, c.Dirs())
	base := t.TempDir()

	old := syscall.Umask(0)
	upper := filepath.Join(base, "new", "upper")
	m := mountCoW(t, "", point, upper, fusefs.Options{})
	syscall.Umask(old)
	if fi, err := os.Lstat(upper); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("new upper directory: %v %v, want mode 0700", fi.Mode(), err)
	}
	mustCreate(t, filepath.Join(m.dir, "base/5/new"), []byte("x"), 0o600)
	m.unmount(t)

	refuse := func(what, dir, want string) {
		t.Helper()
		mnt := t.TempDir()
		_, err := fusefs.MountCoW(mnt, point, dir, fusefs.Options{})
		if err == nil {
			unix.Unmount(mnt, 0)
			t.Errorf("%s: mounted; want a refusal", what)
			return
		}
		if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q, want one line naming %s and saying %q", what, err, dir, want)
		}
	}
	mk := func(name string, mode uint32, uid int) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		unix.Chmod(d, mode)
		os.Chown(d, uid, uid)
		return d
	}
	refuse("upper of another user", mk("theirs", 0o700, 65534), "owned by uid 65534")
	refuse("group-writable upper", mk("groupw", 0o770, 0), "writable by group or others")
	refuse("world-writable upper", mk("worldw", 0o777, 0), "writable by group or others")
	open := mk("open", 0o777, 0)
	refuse("upper in a world-writable directory", mk("open/upper", 0o700, 0), open)
	refuse("upper in a directory of another user", mk("open/../theirs/upper", 0o700, 0), filepath.Join(base, "theirs"))
	link := filepath.Join(base, "link")
	os.Symlink(upper, link)
	refuse("upper given as a symlink", link, "symbolic link")

	// Inner directories swapped for symlinks to a directory outside.
	outside := mk("outside", 0o700, 0)
	// Files of the names the mount has in base/5, which it must not touch.
	for _, name := range []string{"secret", "new", "new2"} {
		os.WriteFile(filepath.Join(outside, name), []byte("outside"), 0o600)
	}
	swap := func(rel string) func() {
		p := filepath.Join(upper, rel)
		if err := os.Rename(p, p+".real"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, p); err != nil {
			t.Fatal(err)
		}
		return func() { os.Remove(p); os.Rename(p+".real", p) }
	}
	for _, inner := range []string{"tree", "tmp"} {
		restore := swap(inner)
		refuse("upper whose "+inner+"/ is a symlink", upper, "tampered")
		restore()
	}
	// What another user planted in it (while it was theirs to write, say)
	// is found: the mount makes every entry as the user it runs as.
	planted := filepath.Join(upper, "tree", "postgresql.auto.conf")
	os.WriteFile(planted, []byte("shared_preload_libraries = 'evil'\n"), 0o600)
	os.Chown(planted, 65534, 65534)
	refuse("upper with a file of another user", upper, "postgresql.auto.conf is owned by uid 65534")
	os.Remove(planted)
	plantedLink := filepath.Join(upper, "tree", "base", "5", "16384")
	os.Symlink(outside, plantedLink)
	unix.Lchown(plantedLink, 65534, 65534)
	refuse("upper with a symlink of another user", upper, "tampered")
	os.Remove(plantedLink)

	// Deeper in tree/: a directory swapped while mounted is never followed
	// by the daemon (the kernel still believes it a directory), and after a
	// remount it is shown as the symlink it is.
	m = mountCoW(t, "", point, upper, fusefs.Options{})
	mustCreate(t, filepath.Join(m.dir, "base/5/new2"), []byte("x"), 0o600)
	restore := swap("tree/base/5")
	for _, rel := range []string{"base/5/made", "base/5/16384", "base/5/new"} {
		if f, err := os.OpenFile(filepath.Join(m.dir, rel), os.O_RDWR|os.O_CREATE, 0o600); err == nil {
			f.Write([]byte("through the mount"))
			f.Sync()
			f.Close()
		}
	}
	os.Mkdir(filepath.Join(m.dir, "base/5/dir"), 0o700)
	os.Symlink("x", filepath.Join(m.dir, "base/5/link"))
	os.Remove(filepath.Join(m.dir, "base/5/new2"))
	os.Rename(filepath.Join(m.dir, "base/5/new"), filepath.Join(m.dir, "base/5/renamed"))
	m.unmount(t)
	m = mountCoW(t, "", point, upper, fusefs.Options{})
	if fi, err := os.Lstat(filepath.Join(m.dir, "base/5")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("swapped base/5 shows as %v %v, want the symlink itself", fi, err)
	}
	m.unmount(t)
	restore()
	ents, _ := os.ReadDir(outside)
	if len(ents) != 3 {
		t.Errorf("the mount changed the entries of a directory outside the upper directory: %v", ents)
	}
	for _, name := range []string{"secret", "new", "new2"} {
		if data, err := os.ReadFile(filepath.Join(outside, name)); string(data) != "outside" {
			t.Errorf("the mount changed %s outside the upper directory: %q %v", name, data, err)
		}
	}
}
