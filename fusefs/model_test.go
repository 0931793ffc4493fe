package fusefs_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver"
)

// mnode is what the model says one entry of a copy-on-write mount is.
type mnode struct {
	dir  bool
	link string // a symlink's target
	data []byte // a regular file's contents
	perm fs.FileMode
}

// model is the expected view of a copy-on-write mount, by path.
type model map[string]*mnode

// pointModel is the view of point p (from the resolver, which the
// read-only tests check against an independent model).
func pointModel(t *testing.T, p *resolver.Tree) model {
	t.Helper()
	m := model{}
	err := p.Walk(func(rel string, e *resolver.Entry) error {
		rel = mrel(rel)
		if e.Kind == resolver.KindDir {
			m[rel] = &mnode{dir: true, perm: p.DirMode}
			return nil
		}
		m[rel] = &mnode{data: readResolver(t, e.File), perm: p.FileMode}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m["pg_tblspc"] = &mnode{dir: true, perm: p.DirMode}
	if len(p.Tablespaces) > 0 {
		m[fusefs.TablespaceDir] = &mnode{dir: true, perm: p.DirMode}
		for _, ts := range p.Tablespaces {
			m["pg_tblspc/"+ts.Root.Name] = &mnode{link: "../" + fusefs.TablespaceDir + "/" + ts.Root.Name}
		}
	}
	m["backup_label"] = &mnode{data: bytes.Clone(p.Label), perm: p.FileMode}
	var man bytes.Buffer
	if err := p.WriteManifest(&man, p.Root.ModTime, true, nil); err != nil {
		t.Fatal(err)
	}
	m["backup_manifest"] = &mnode{data: man.Bytes(), perm: p.FileMode}
	return m
}

// mrel maps a point path to the mount's: a tablespace's contents are in
// fusefs.TablespaceDir/<oid>, and pg_tblspc/<oid> links there.
func mrel(rel string) string {
	if rest, ok := strings.CutPrefix(rel, "pg_tblspc/"); ok {
		return fusefs.TablespaceDir + "/" + rest
	}
	return rel
}

func (m model) clone() model {
	out := model{}
	for k, v := range m {
		c := *v
		c.data = bytes.Clone(v.data)
		out[k] = &c
	}
	return out
}

func (m model) file(t *testing.T, rel string) *mnode {
	t.Helper()
	n := m[mrel(rel)]
	if n == nil || n.dir || n.link != "" {
		t.Fatalf("model: %s is not a file", rel)
	}
	return n
}

func (m model) writeAt(t *testing.T, rel string, off int64, data []byte) {
	t.Helper()
	n := m.file(t, rel)
	if end := off + int64(len(data)); end > int64(len(n.data)) {
		n.data = append(n.data, make([]byte, end-int64(len(n.data)))...)
	}
	copy(n.data[off:], data)
}

func (m model) truncate(t *testing.T, rel string, size int64) {
	t.Helper()
	n := m.file(t, rel)
	if size <= int64(len(n.data)) {
		n.data = n.data[:size]
	} else {
		n.data = append(n.data, make([]byte, size-int64(len(n.data)))...)
	}
}

// remove deletes rel and everything below it.
func (m model) remove(rel string) {
	for k := range m {
		if k == rel || strings.HasPrefix(k, rel+"/") {
			delete(m, k)
		}
	}
}

// rename moves from (and everything below it) to to, replacing to.
func (m model) rename(from, to string) {
	m.remove(to)
	moved := model{}
	for k, v := range m {
		if k == from {
			moved[to] = v
			delete(m, k)
		} else if strings.HasPrefix(k, from+"/") {
			moved[to+k[len(from):]] = v
			delete(m, k)
		}
	}
	for k, v := range moved {
		m[k] = v
	}
}

// checkView compares the mount at dir with the model: the same entries,
// kinds, permissions, contents and link targets, every entry owned by the
// mount's owner.
func checkView(t *testing.T, dir string, m model) {
	t.Helper()
	var diffs []string
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			diffs = append(diffs, fmt.Sprintf("walk %s: %v", full, err))
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(dir, full)
		if rel == "." {
			rel = ""
		}
		seen[rel] = true
		want := m[rel]
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			diffs = append(diffs, fmt.Sprintf("lstat %q: %v", rel, err))
			return nil
		}
		if want == nil {
			diffs = append(diffs, fmt.Sprintf("unexpected %q (mode %o, size %d)", rel, st.Mode, st.Size))
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				return fs.SkipDir
			}
			return nil
		}
		if st.Uid != testUID || st.Gid != testGID {
			diffs = append(diffs, fmt.Sprintf("%q: owner %d:%d, want %d:%d", rel, st.Uid, st.Gid, testUID, testGID))
		}
		perm := fs.FileMode(st.Mode & 0o7777)
		switch {
		case want.dir:
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				diffs = append(diffs, fmt.Sprintf("%q: mode %o, want a directory", rel, st.Mode))
			} else if perm != want.perm {
				diffs = append(diffs, fmt.Sprintf("directory %q: permissions %v, want %v", rel, perm, want.perm))
			}
		case want.link != "":
			target, err := os.Readlink(full)
			if st.Mode&unix.S_IFMT != unix.S_IFLNK || err != nil || target != want.link {
				diffs = append(diffs, fmt.Sprintf("%q: mode %o, readlink %q, %v; want a symlink to %q", rel, st.Mode, target, err, want.link))
			}
		default:
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				diffs = append(diffs, fmt.Sprintf("%q: mode %o, want a regular file", rel, st.Mode))
				return nil
			}
			if perm != want.perm {
				diffs = append(diffs, fmt.Sprintf("file %q: permissions %v, want %v", rel, perm, want.perm))
			}
			if st.Size != int64(len(want.data)) {
				diffs = append(diffs, fmt.Sprintf("%q: stat size %d, want %d", rel, st.Size, len(want.data)))
			}
			data, err := os.ReadFile(full)
			if err != nil {
				diffs = append(diffs, fmt.Sprintf("read %q: %v", rel, err))
			} else if !bytes.Equal(data, want.data) {
				diffs = append(diffs, fmt.Sprintf("%q: contents: %s", rel, firstDiff(data, want.data)))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	for rel := range m {
		if !seen[rel] {
			diffs = append(diffs, fmt.Sprintf("%q is missing", rel))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 30 {
			diffs = append(diffs[:30], fmt.Sprintf("... and %d more", len(diffs)-30))
		}
		t.Errorf("the mount at %s differs from the model:\n%s", dir, strings.Join(diffs, "\n"))
	}
}

// ---------------------------------------------------------------------------
// File operations that must succeed.

func mustWriteAt(t *testing.T, name string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open %s for writing: %v", name, err)
	}
	defer f.Close()
	if n, err := f.WriteAt(data, off); err != nil || n != len(data) {
		t.Fatalf("write %d bytes at %d of %s: %d, %v", len(data), off, name, n, err)
	}
}

func mustCreate(t *testing.T, name string, data []byte, perm fs.FileMode) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", name, err)
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return data
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !isErrno(err, want) {
		t.Errorf("%s: %v; want %v", what, err, want)
	}
}

// ---------------------------------------------------------------------------
// The upper directory's format (see upper.go): these names are part of the
// on-disk format and are spelled out here on purpose.

const (
	xattrOrigin = "user.combinefs.origin"
	xattrLimit  = "user.combinefs.limit"
	xattrOpaque = "user.combinefs.opaque"
)

func getXattr(p, name string) (string, bool) {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}

// isWhiteoutPath reports whether p is a whiteout: a 0:0 character device,
// or a symlink to ".combinefs-whiteout".
func isWhiteoutPath(p string) bool {
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil {
		return false
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		return st.Rdev == 0
	case unix.S_IFLNK:
		t, _ := os.Readlink(p)
		return t == ".combinefs-whiteout"
	}
	return false
}

// checkOverlay checks that upper file p is a block overlay of origin with
// the given limit, allocating no more than maxBlocks 8 KiB blocks.
func checkOverlay(t *testing.T, p, origin string, limit int64, maxBlocks int) {
	t.Helper()
	o, ok1 := getXattr(p, xattrOrigin)
	l, ok2 := getXattr(p, xattrLimit)
	if !ok1 || !ok2 || o != origin || l != fmt.Sprint(limit) {
		t.Errorf("upper %s: origin %q (%v), limit %q (%v); want an overlay of %q with limit %d", p, o, ok1, l, ok2, origin, limit)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Errorf("upper %s: %v", p, err)
		return
	}
	// st_blocks also counts an external xattr block (ext4 puts long
	// xattrs in one): allow one 4 KiB block of metadata.
	if st.Blocks*512 > int64(maxBlocks)*bs+4096 {
		t.Errorf("upper overlay %s allocates %d bytes (size %d); want at most %d blocks of 8 KiB", p, st.Blocks*512, st.Size, maxBlocks)
	}
	if d := dataBytes(t, p); d > int64(maxBlocks)*bs {
		t.Errorf("upper overlay %s has %d bytes of data (SEEK_DATA; size %d); want at most %d blocks of 8 KiB", p, d, st.Size, maxBlocks)
	}
}

// dataBytes counts the bytes of p that are data, not holes.
func dataBytes(t *testing.T, p string) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Errorf("open %s: %v", p, err)
		return 0
	}
	defer f.Close()
	fi, _ := f.Stat()
	var n int64
	for off := int64(0); off < fi.Size(); {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			t.Errorf("SEEK_HOLE %s: %v", p, err)
			return n
		}
		n += h - d
		off = h
	}
	return n
}

// checkWholeUpper checks that p is an upper-whole file (no overlay xattrs).
func checkWholeUpper(t *testing.T, p string, size int64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("upper %s: %v, mode %o; want a regular file", p, err, st.Mode)
		return
	}
	if _, ok := getXattr(p, xattrOrigin); ok {
		t.Errorf("upper %s is an overlay; want a whole file", p)
	}
	if size >= 0 && st.Size != size {
		t.Errorf("upper %s: size %d, want %d", p, st.Size, size)
	}
}

func checkWhiteout(t *testing.T, upper, rel string) {
	t.Helper()
	if p := filepath.Join(upper, "tree", rel); !isWhiteoutPath(p) {
		var st unix.Stat_t
		err := unix.Lstat(p, &st)
		t.Errorf("upper has no whiteout for %s (lstat: %v, mode %o)", rel, err, st.Mode)
	}
}

func checkNoUpper(t *testing.T, upper, rel string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(upper, "tree", rel)); !os.IsNotExist(err) {
		t.Errorf("upper has an entry for %s (%v); want none", rel, err)
	}
}

// upperEntries lists everything under UPPER/tree.
func upperEntries(t *testing.T, upper string) []string {
	t.Helper()
	var out []string
	root := filepath.Join(upper, "tree")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func checkTmpEmpty(t *testing.T, upper string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(upper, "tmp"))
	if err != nil || len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("UPPER/tmp: %v, %v; want it empty", names, err)
	}
}
