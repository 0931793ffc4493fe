package fusefs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/safedir"
)

// cowNode is a directory, file or symlink of a copy-on-write mount. Its
// path is where go-fuse's tree has it now, so a rename moves it for free.
type cowNode struct {
	gofs.Inode
	c *cowFS

	// lowerVisible: a directory whose lower contents show through.
	lowerVisible bool

	mu sync.RWMutex // guards st and the file's data
	st *fileState   // a regular file's storage, loaded on first use

	hydNoted atomic.Bool // hydration was told the server reads it
}

var (
	_ gofs.NodeLookuper    = (*cowNode)(nil)
	_ gofs.NodeReaddirer   = (*cowNode)(nil)
	_ gofs.NodeGetattrer   = (*cowNode)(nil)
	_ gofs.NodeSetattrer   = (*cowNode)(nil)
	_ gofs.NodeOpener      = (*cowNode)(nil)
	_ gofs.NodeCreater     = (*cowNode)(nil)
	_ gofs.NodeMkdirer     = (*cowNode)(nil)
	_ gofs.NodeUnlinker    = (*cowNode)(nil)
	_ gofs.NodeRmdirer     = (*cowNode)(nil)
	_ gofs.NodeRenamer     = (*cowNode)(nil)
	_ gofs.NodeSymlinker   = (*cowNode)(nil)
	_ gofs.NodeReadlinker  = (*cowNode)(nil)
	_ gofs.NodeFsyncer     = (*cowNode)(nil)
	_ gofs.NodeStatfser    = (*cowNode)(nil)
	_ gofs.NodeAllocater   = (*cowNode)(nil)
	_ gofs.NodeOnForgetter = (*cowNode)(nil)
	// Not implemented, deliberately: hard links (ENOTSUP; PostgreSQL does
	// not make them in a data directory), mknod, xattrs.
)

// rel is the node's merged path; ok is false once it was unlinked or
// renamed over.
func (n *cowNode) rel() (string, bool) {
	var parts []string
	var cur *gofs.Inode = &n.Inode
	root := &n.c.root.Inode
	for cur != root {
		name, parent := cur.Parent()
		if parent == nil {
			return "", false
		}
		parts = append(parts, name)
		cur = parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	rel := ""
	for _, p := range parts {
		rel = joinRel(rel, p)
	}
	return rel, true
}

func (n *cowNode) child(ctx context.Context, rel string, e entry) *gofs.Inode {
	ch := &cowNode{c: n.c, lowerVisible: e.lowerVisible}
	return n.NewInode(ctx, ch, gofs.StableAttr{Mode: e.mode, Ino: n.c.ino(rel)})
}

// OnForget closes the upper file when the kernel drops the inode (it has no
// open handles by then); a later lookup loads the state again.
func (n *cowNode) OnForget() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st != nil && n.st.fd != nil {
		n.st.fd.Close()
	}
	n.st = nil
}

func (n *cowNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n.c.ns.RLock()
	defer n.c.ns.RUnlock()
	rel, ok := n.rel()
	if !ok {
		return nil, syscall.ENOENT
	}
	crel := joinRel(rel, name)
	e := n.c.lookup(crel, n.lowerVisible)
	if e.mode == 0 {
		return nil, syscall.ENOENT
	}
	if errno := n.c.attrOf(crel, e, &out.Attr); errno != 0 {
		return nil, errno
	}
	return n.child(ctx, crel, e), 0
}

// attrOf fills the attributes of merged entry e at crel. A new child is not
// attached to the tree yet, so this works from the path, not the node.
func (c *cowFS) attrOf(crel string, e entry, a *fuse.Attr) syscall.Errno {
	m := c.m
	if e.upper {
		var s unix.Stat_t
		if err := c.lstat(crel, &s); err != nil {
			return c.m.errno(err, "%s", crel)
		}
		fillFromStat(m, a, &s)
		return 0
	}
	if e.lower == nil {
		return syscall.ENOENT
	}
	lowerAttr(m, e.lower, a)
	return 0
}

func lowerAttr(m *Mount, le *lowerEntry, a *fuse.Attr) {
	switch {
	case le.dir:
		m.fillAttr(a, syscall.S_IFDIR|uint32(m.point.DirMode), 4096, le.mtime)
	case le.link != "":
		m.fillAttr(a, syscall.S_IFLNK|0o777, uint64(len(le.link)), le.mtime)
	default:
		m.fillAttr(a, syscall.S_IFREG|uint32(m.point.FileMode), uint64(le.size()), le.mtime)
	}
}

func (n *cowNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	n.c.ns.RLock()
	defer n.c.ns.RUnlock()
	rel, ok := n.rel()
	if !ok {
		return nil, syscall.ENOENT
	}
	list, err := n.c.list(rel, n.lowerVisible)
	if err != nil {
		return nil, n.errno(err)
	}
	return gofs.NewListDirStream(list), 0
}

// list is the merged directory: upper entries (without whiteouts), then the
// lower ones not hidden by them.
func (c *cowFS) list(rel string, lowerVisible bool) ([]fuse.DirEntry, error) {
	var out []fuse.DirEntry
	seen := map[string]bool{}
	dirRel := rel
	if dirRel == "" {
		dirRel = "."
	}
	if fd, err := safedir.OpenBeneath(c.up.treeFD, dirRel, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
		f := os.NewFile(uintptr(fd), dirRel)
		defer f.Close()
		dir := fdPath(fd)
		ents, err := f.ReadDir(-1)
		if err != nil {
			return nil, err
		}
		for _, de := range ents {
			name := de.Name()
			seen[name] = true
			t := de.Type()
			if t&(fs.ModeCharDevice|fs.ModeSymlink) != 0 {
				var st unix.Stat_t
				p := path.Join(dir, name)
				if unix.Lstat(p, &st) == nil && isWhiteout(p, &st) {
					continue
				}
			}
			mode := uint32(syscall.S_IFREG)
			switch {
			case t.IsDir():
				mode = syscall.S_IFDIR
			case t&fs.ModeSymlink != 0:
				mode = syscall.S_IFLNK
			}
			out = append(out, fuse.DirEntry{Name: name, Mode: mode, Ino: c.ino(joinRel(rel, name))})
		}
	} else if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
		return nil, err
	}
	if le := c.lower[rel]; lowerVisible && le != nil {
		for _, name := range le.names {
			if seen[name] {
				continue
			}
			mode := uint32(syscall.S_IFREG)
			switch le := c.lower[joinRel(rel, name)]; {
			case le.dir:
				mode = syscall.S_IFDIR
			case le.link != "":
				mode = syscall.S_IFLNK
			}
			out = append(out, fuse.DirEntry{Name: name, Mode: mode, Ino: c.ino(joinRel(rel, name))})
		}
	}
	return out, nil
}

func (n *cowNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return n.getattr(&out.Attr)
}

func (n *cowNode) getattr(a *fuse.Attr) syscall.Errno {
	m := n.c.m
	switch n.Mode() & syscall.S_IFMT {
	case syscall.S_IFREG:
		st, errno := n.state()
		if errno != 0 {
			return errno
		}
		n.mu.RLock()
		defer n.mu.RUnlock()
		if st.fd == nil {
			m.fillAttr(a, syscall.S_IFREG|uint32(m.point.FileMode), uint64(st.lower.size()), st.lower.mtime)
			return 0
		}
		var s unix.Stat_t
		if err := unix.Fstat(int(st.fd.Fd()), &s); err != nil {
			return n.errno(err)
		}
		fillFromStat(m, a, &s)
		if st.kind == kindOverlay {
			// Its blocks are spread over the upper file and the chain.
			a.Blocks = (a.Size + 511) / 512
		}
		return 0
	}
	rel, ok := n.rel()
	var s unix.Stat_t
	if ok && n.c.lstat(rel, &s) == nil {
		fillFromStat(m, a, &s)
		return 0
	}
	if le := n.c.lower[rel]; ok && le != nil {
		lowerAttr(m, le, a)
		return 0
	}
	return syscall.ENOENT
}

// lstat stats upper entry rel, not following it.
func (c *cowFS) lstat(rel string, s *unix.Stat_t) error {
	p, done, err := c.up.at(rel)
	defer done()
	if err != nil {
		return err
	}
	return unix.Lstat(p, s)
}

func fillFromStat(m *Mount, a *fuse.Attr, s *unix.Stat_t) {
	a.Size = uint64(s.Size)
	a.Blocks = uint64(s.Blocks)
	a.Blksize = uint32(s.Blksize)
	a.Mode = s.Mode
	a.Nlink = uint32(s.Nlink)
	a.Owner = fuse.Owner{Uid: m.opts.UID, Gid: m.opts.GID}
	a.Atime, a.Atimensec = uint64(s.Atim.Sec), uint32(s.Atim.Nsec)
	a.Mtime, a.Mtimensec = uint64(s.Mtim.Sec), uint32(s.Mtim.Nsec)
	a.Ctime, a.Ctimensec = uint64(s.Ctim.Sec), uint32(s.Ctim.Nsec)
}

func (n *cowNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.c.up.dir, &st); err != nil {
		return n.errno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

func (n *cowNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return nil, syscall.ENOENT
	}
	p, done, err := n.c.up.at(rel)
	defer done()
	var t string
	if err == nil {
		t, err = os.Readlink(p)
	}
	if errors.Is(err, fs.ErrNotExist) {
		if le := n.c.lower[rel]; le != nil && le.link != "" {
			return []byte(le.link), 0
		}
	}
	if err != nil {
		return nil, n.errno(err)
	}
	return []byte(t), 0
}

// Fsync of a directory (go-fuse falls back to it for FSYNCDIR) makes its
// upper directory durable; of a file, the file's upper data.
func (n *cowNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if n.IsDir() {
		rel, ok := n.rel()
		if !ok {
			return 0
		}
		if err := n.c.up.syncDir(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n.errno(err)
		}
		return 0
	}
	return n.fsync(flags&1 != 0)
}

func (n *cowNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok {
		if n.IsDir() {
			return syscall.EISDIR
		}
		if errno := n.truncate(int64(sz)); errno != 0 {
			return errno
		}
	}
	mode, hasMode := in.GetMode()
	atime, hasA := in.GetATime()
	mtime, hasM := in.GetMTime()
	if hasMode || hasA || hasM {
		p, follow, done, errno := n.upperPath()
		defer done()
		if errno != 0 {
			return errno
		}
		statFn, flags, chmod := unix.Lstat, unix.AT_SYMLINK_NOFOLLOW, lchmod
		if follow {
			statFn, flags, chmod = unix.Stat, 0, unix.Chmod
		}
		if hasMode {
			if err := chmod(p, mode&0o7777); err != nil {
				return n.errno(err)
			}
		}
		if hasA || hasM {
			var st unix.Stat_t
			if err := statFn(p, &st); err != nil {
				return n.errno(err)
			}
			ts := []unix.Timespec{st.Atim, st.Mtim}
			if hasA {
				ts[0] = unix.NsecToTimespec(atime.UnixNano())
			}
			if hasM {
				ts[1] = unix.NsecToTimespec(mtime.UnixNano())
			}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, flags); err != nil {
				return n.errno(err)
			}
		}
	}
	// Owners are presented, not stored: chown is accepted and ignored.
	return n.getattr(&out.Attr)
}

// upperPath returns the upper path of the node (from upper.at, so not to
// be followed), copying it up first; for a regular file it is its open
// descriptor's /proc path, to be followed (follow), since the file may have
// been unlinked. done releases the path.
func (n *cowNode) upperPath() (p string, follow bool, done func(), errno syscall.Errno) {
	done = func() {}
	if n.IsDir() {
		n.c.ns.Lock()
		defer n.c.ns.Unlock()
		rel, ok := n.rel()
		if !ok {
			return "", false, done, syscall.ENOENT
		}
		if err := n.c.ensureUpperDir(rel); err != nil {
			return "", false, done, n.errno(err)
		}
		p, done, err := n.c.up.at(rel)
		return p, false, done, n.errno(err)
	}
	if n.Mode()&syscall.S_IFMT == syscall.S_IFLNK {
		rel, ok := n.rel()
		if !ok {
			return "", false, done, syscall.ENOENT
		}
		p, done, err := n.c.up.at(rel)
		return p, false, done, n.errno(err)
	}
	if errno := n.ensureUpper(); errno != 0 {
		return "", false, done, errno
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	return fdPath(int(n.st.fd.Fd())), true, done, 0
}

// newName checks that name is free in directory n and makes n's upper
// directory, for a create, mkdir or symlink. Caller holds ns.
func (n *cowNode) newName(name string) (rel, crel string, errno syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return "", "", syscall.ENOENT
	}
	crel = joinRel(rel, name)
	if n.c.lookup(crel, n.lowerVisible).mode != 0 {
		return "", "", syscall.EEXIST
	}
	if err := n.c.ensureUpperDir(rel); err != nil {
		return "", "", n.errno(err)
	}
	return rel, crel, 0
}

func (n *cowNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	c := n.c
	c.ns.Lock()
	defer c.ns.Unlock()
	rel, crel, errno := n.newName(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	f, err := c.createUpper(crel, func(p string) (*os.File, error) {
		return os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, os.FileMode(mode&0o7777))
	})
	if err != nil {
		return nil, nil, 0, n.errno(err)
	}
	f.Chmod(os.FileMode(mode & 0o7777))
	ch := n.child(ctx, crel, entry{mode: syscall.S_IFREG})
	cn := ch.Operations().(*cowNode)
	cn.mu.Lock()
	cn.st = &fileState{kind: kindWhole, fd: f, dirSync: rel, dirSyncDue: true}
	cn.mu.Unlock()
	if errno := c.attrOf(crel, entry{upper: true}, &out.Attr); errno != 0 {
		return nil, nil, 0, errno
	}
	h, fl := cn.newHandle()
	return ch, h, fl, 0
}

// createUpper creates the upper entry for merged path rel with mk: in place,
// or, where a whiteout holds the name, in tmp/ and then renamed over it.
func (c *cowFS) createUpper(rel string, mk func(p string) (*os.File, error)) (*os.File, error) {
	p, done, err := c.up.at(rel)
	defer done()
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil {
		return mk(p)
	}
	tmp := c.up.tmpName()
	f, err := mk(tmp)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, p); err != nil {
		if f != nil {
			f.Close()
		}
		os.Remove(tmp)
		return nil, err
	}
	return f, nil
}

func (n *cowNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	c := n.c
	c.ns.Lock()
	defer c.ns.Unlock()
	_, crel, errno := n.newName(name)
	if errno != 0 {
		return nil, errno
	}
	p, done, err := c.up.at(crel)
	defer done()
	if err != nil {
		return nil, n.errno(err)
	}
	var st unix.Stat_t
	if unix.Lstat(p, &st) == nil {
		// A whiteout holds the name: a lower directory was removed. Make
		// the new one opaque in tmp/ and swap it in atomically.
		tmp := c.up.tmpName()
		if err := os.Mkdir(tmp, os.FileMode(mode&0o7777)); err != nil {
			return nil, n.errno(err)
		}
		if err := unix.Lsetxattr(tmp, xattrOpaque, []byte("y"), 0); err != nil {
			return nil, n.errno(err)
		}
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, p, unix.RENAME_EXCHANGE); err != nil {
			return nil, n.errno(err)
		}
		os.Remove(tmp) // the whiteout, now there
	} else if err := os.Mkdir(p, os.FileMode(mode&0o7777)); err != nil {
		return nil, n.errno(err)
	}
	lchmod(p, mode&0o7777)
	if errno := c.attrOf(crel, entry{upper: true}, &out.Attr); errno != 0 {
		return nil, errno
	}
	return n.child(ctx, crel, entry{mode: syscall.S_IFDIR}), 0
}

func (n *cowNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if target == whiteoutTarget {
		return nil, syscall.EINVAL
	}
	c := n.c
	c.ns.Lock()
	defer c.ns.Unlock()
	_, crel, errno := n.newName(name)
	if errno != 0 {
		return nil, errno
	}
	if _, err := c.createUpper(crel, func(p string) (*os.File, error) { return nil, os.Symlink(target, p) }); err != nil {
		return nil, n.errno(err)
	}
	if errno := c.attrOf(crel, entry{upper: true}, &out.Attr); errno != 0 {
		return nil, errno
	}
	return n.child(ctx, crel, entry{mode: syscall.S_IFLNK}), 0
}

// existing finds name in directory n for an unlink or rmdir. Caller holds
// ns.
func (n *cowNode) existing(name string) (rel, crel string, e entry, errno syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return "", "", entry{}, syscall.ENOENT
	}
	crel = joinRel(rel, name)
	if e = n.c.lookup(crel, n.lowerVisible); e.mode == 0 {
		return "", "", entry{}, syscall.ENOENT
	}
	return rel, crel, e, 0
}

func (n *cowNode) Unlink(ctx context.Context, name string) syscall.Errno {
	c := n.c
	c.ns.Lock()
	defer c.ns.Unlock()
	rel, crel, e, errno := n.existing(name)
	if errno != 0 {
		return errno
	}
	if e.mode == syscall.S_IFDIR {
		return syscall.EISDIR
	}
	if err := c.remove(rel, crel, e); err != nil {
		return n.errno(err)
	}
	c.forgetIno(crel)
	return 0
}

// removalPath is the upper path of merged entry e at crel, in directory
// rel, made first where only a whiteout will be there.
func (c *cowFS) removalPath(rel, crel string, e entry) (string, func(), error) {
	if !e.upper {
		if err := c.ensureUpperDir(rel); err != nil {
			return "", func() {}, err
		}
	}
	return c.up.at(crel)
}

// remove takes away the merged entry e at crel (in directory rel): the
// upper entry goes, and a whiteout hides a lower one.
func (c *cowFS) remove(rel, crel string, e entry) error {
	p, done, err := c.removalPath(rel, crel, e)
	defer done()
	if err != nil {
		return err
	}
	switch {
	case e.upper && e.lower != nil:
		return c.up.replaceWithWhiteout(p)
	case e.upper:
		return os.Remove(p)
	default:
		return c.up.makeWhiteout(p)
	}
}

func (n *cowNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	c := n.c
	c.ns.Lock()
	defer c.ns.Unlock()
	rel, crel, e, errno := n.existing(name)
	if errno != 0 {
		return errno
	}
	if e.mode != syscall.S_IFDIR {
		return syscall.ENOTDIR
	}
	if errno := c.checkEmpty(crel, e); errno != 0 {
		return errno
	}
	if err := c.removeDir(rel, crel, e); err != nil {
		return n.errno(err)
	}
	c.forgetIno(crel)
	return 0
}

// removeDir takes away the empty merged directory e at crel. An upper
// directory may still hold whiteouts of the lower entries removed from it;
// it is swapped for a whiteout in one step where a lower directory must stay
// hidden, so a crash never brings those entries back.
func (c *cowFS) removeDir(rel, crel string, e entry) error {
	p, done, err := c.removalPath(rel, crel, e)
	defer done()
	if err != nil {
		return err
	}
	switch {
	case e.upper && e.lower != nil:
		tmp := c.up.tmpName()
		if err := c.up.makeWhiteout(tmp); err != nil {
			return err
		}
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, p, unix.RENAME_EXCHANGE); err != nil {
			os.Remove(tmp)
			return err
		}
		return os.RemoveAll(tmp)
	case e.upper:
		return os.RemoveAll(p)
	default:
		return c.up.makeWhiteout(p)
	}
}

// checkEmpty checks that merged directory crel is empty.
func (c *cowFS) checkEmpty(crel string, e entry) syscall.Errno {
	list, err := c.list(crel, e.lowerVisible)
	if err != nil {
		return c.m.errno(err, "%s", crel)
	}
	if len(list) > 0 {
		return syscall.ENOTEMPTY
	}
	return 0
}

func (n *cowNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if flags&^unix.RENAME_NOREPLACE != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE and RENAME_WHITEOUT are not offered
	}
	c := n.c
	np := newParent.(*cowNode)
	c.ns.Lock()
	defer c.ns.Unlock()
	rel, ok1 := n.rel()
	nrel, ok2 := np.rel()
	if !ok1 || !ok2 {
		return syscall.ENOENT
	}
	from, to := joinRel(rel, name), joinRel(nrel, newName)
	src := c.lookup(from, n.lowerVisible)
	dst := c.lookup(to, np.lowerVisible)
	if src.mode == 0 {
		return syscall.ENOENT
	}
	if from == to {
		return 0
	}
	if dst.mode != 0 && flags&unix.RENAME_NOREPLACE != 0 {
		return syscall.EEXIST
	}
	if src.mode == syscall.S_IFDIR {
		if src.lowerVisible {
			return syscall.EXDEV // moving lower contents would mean copying them: let the caller do it
		}
		if dst.mode != 0 {
			if dst.mode != syscall.S_IFDIR {
				return syscall.ENOTDIR
			}
			if errno := c.checkEmpty(to, dst); errno != 0 {
				return errno
			}
		}
	} else {
		if dst.mode == syscall.S_IFDIR {
			return syscall.EISDIR
		}
		// The source needs an upper entry to move.
		if !src.upper && src.mode == syscall.S_IFLNK {
			if err := c.ensureUpperDir(rel); err != nil {
				return n.errno(err)
			}
			p, done, err := c.up.at(from)
			if err == nil {
				err = os.Symlink(src.lower.link, p)
			}
			done()
			if err != nil {
				return n.errno(err)
			}
		} else if !src.upper {
			chIno := n.GetChild(name)
			if chIno == nil {
				return syscall.ENOENT
			}
			if errno := chIno.Operations().(*cowNode).ensureUpperLocked(); errno != 0 {
				return errno
			}
		}
	}
	if err := c.ensureUpperDir(nrel); err != nil {
		return n.errno(err)
	}
	fromP, doneFrom, err := c.up.at(from)
	defer doneFrom()
	if err != nil {
		return n.errno(err)
	}
	toP, doneTo, err := c.up.at(to)
	defer doneTo()
	if err != nil {
		return n.errno(err)
	}
	if err := c.renameUpper(src, fromP, toP); err != nil {
		return n.errno(err)
	}
	if lt := c.lower[to]; src.mode == syscall.S_IFDIR && np.lowerVisible && lt != nil && lt.dir {
		// A lower directory of the target's name must not show through.
		if err := unix.Lsetxattr(toP, xattrOpaque, []byte("y"), 0); err != nil {
			return n.errno(err)
		}
	}
	if ch := n.GetChild(name); ch != nil {
		cn := ch.Operations().(*cowNode)
		cn.mu.Lock()
		if cn.st != nil {
			cn.st.dirSync, cn.st.dirSyncDue = nrel, true
		}
		cn.mu.Unlock()
	}
	c.moveIno(from, to)
	return 0
}

// renameUpper moves the upper entry of src from fromP to toP, leaving a
// whiteout at fromP when a lower entry of that name must stay hidden. A
// directory cannot replace the whiteout or empty upper directory a name may
// hold, so it is swapped with it (RENAME_EXCHANGE) and what comes back is
// turned into the whiteout or removed.
func (c *cowFS) renameUpper(src entry, fromP, toP string) error {
	var st unix.Stat_t
	if src.mode != syscall.S_IFDIR || unix.Lstat(toP, &st) != nil {
		if src.lower != nil {
			return c.up.renameWhiteout(fromP, toP)
		}
		return os.Rename(fromP, toP)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, fromP, unix.AT_FDCWD, toP, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	if src.lower == nil {
		return os.RemoveAll(fromP)
	}
	if isWhiteout(fromP, &st) {
		return nil // what came back is a whiteout already
	}
	tmp := c.up.tmpName()
	if err := c.up.makeWhiteout(tmp); err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, fromP, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}
