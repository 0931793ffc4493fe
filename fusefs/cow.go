package fusefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/resolver"
)

// overlayMin is the size from which a lower file is copied up block by
// block (relation segments); smaller files are copied whole on their first
// change. WAL segments are copied whole whatever their size: the server
// writes them sequentially anyway, and whole they are served by
// passthrough once reopened, so WAL writes do not pass through us.
const overlayMin = 1 << 20

// wholeCopy reports whether a lower file is copied up whole rather than
// block by block.
func (le *lowerEntry) wholeCopy() bool {
	return le.file == nil || le.size() < overlayMin || strings.HasPrefix(le.rel, "pg_wal/")
}

// lowerEntry is an entry of the chain point under a copy-on-write mount.
type lowerEntry struct {
	rel   string // its path in the mount, the key of cowFS.lower
	dir   bool
	file  *resolver.File // a file of the chain
	label []byte         // or the rewritten backup_label
	man   *manifest      // or the point's backup_manifest
	link  string         // or a tablespace symlink's target
	mtime time.Time
	names []string // a directory's children
}

// inMemory is the content of a lower file that is not a file of the chain:
// backup_label, or backup_manifest (built on first use).
func (le *lowerEntry) inMemory() ([]byte, error) {
	if le.man != nil {
		return le.man.content()
	}
	return le.label, nil
}

func (le *lowerEntry) size() int64 {
	if le.file != nil {
		return le.file.Size()
	}
	if le.man != nil {
		return le.man.size
	}
	return int64(len(le.label))
}

// cowFS is the state of a copy-on-write mount.
type cowFS struct {
	m     *Mount
	up    *upper
	lower map[string]*lowerEntry
	root  *cowNode

	// ns serialises namespace changes (and copy-ups, which add upper
	// entries) against lookups; it is taken before any node lock.
	ns sync.RWMutex

	hyd *hydrator // when hydrating

	inoMu   sync.Mutex
	inos    map[string]uint64 // merged path -> inode number, for the mount's life
	nextIno uint64
}

// newCowFS indexes the point's tree by path.
func newCowFS(m *Mount, up *upper) *cowFS {
	c := &cowFS{m: m, up: up, lower: map[string]*lowerEntry{}, inos: map[string]uint64{"": 1}, nextIno: 1}
	p := m.point
	var add func(rel string, e *resolver.Entry) *lowerEntry
	add = func(rel string, e *resolver.Entry) *lowerEntry {
		le := &lowerEntry{rel: rel, dir: e.Kind == resolver.KindDir, file: e.File, mtime: e.ModTime}
		c.lower[rel] = le
		for _, ch := range e.Children {
			add(joinRel(rel, ch.Name), ch)
			le.names = append(le.names, ch.Name)
		}
		return le
	}
	root := add("", p.Root)
	c.lower["backup_label"] = &lowerEntry{rel: "backup_label", label: p.Label, mtime: p.Root.ModTime}
	root.names = append(root.names, "backup_label")
	if man := newManifest(m, p); man != nil {
		c.lower["backup_manifest"] = &lowerEntry{rel: "backup_manifest", man: man, mtime: man.mtime}
		root.names = append(root.names, "backup_manifest")
	}
	// Tablespaces as in the read-only mount (see TablespaceDir).
	if len(p.Tablespaces) > 0 {
		tblspc := c.lower["pg_tblspc"]
		if tblspc == nil {
			tblspc = &lowerEntry{rel: "pg_tblspc", dir: true, mtime: p.Root.ModTime}
			c.lower["pg_tblspc"] = tblspc
			root.names = append(root.names, "pg_tblspc")
		}
		data := &lowerEntry{rel: TablespaceDir, dir: true, mtime: p.Root.ModTime}
		c.lower[TablespaceDir] = data
		root.names = append(root.names, TablespaceDir)
		for _, ts := range p.Tablespaces {
			name := ts.Root.Name
			add(TablespaceDir+"/"+name, ts.Root)
			data.names = append(data.names, name)
			c.lower["pg_tblspc/"+name] = &lowerEntry{rel: "pg_tblspc/" + name, link: tablespaceLink(name), mtime: ts.Root.ModTime}
			tblspc.names = append(tblspc.names, name)
		}
	}
	return c
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// ino returns the inode number of a merged path, stable for the mount's life
// and following the file through renames.
func (c *cowFS) ino(rel string) uint64 {
	c.inoMu.Lock()
	defer c.inoMu.Unlock()
	if n, ok := c.inos[rel]; ok {
		return n
	}
	c.nextIno++
	c.inos[rel] = c.nextIno
	return c.nextIno
}

func (c *cowFS) forgetIno(rel string) {
	c.inoMu.Lock()
	defer c.inoMu.Unlock()
	for k := range c.inos {
		if k == rel || strings.HasPrefix(k, rel+"/") {
			delete(c.inos, k)
		}
	}
}

func (c *cowFS) moveIno(from, to string) {
	c.inoMu.Lock()
	defer c.inoMu.Unlock()
	for k := range c.inos {
		if k == to || strings.HasPrefix(k, to+"/") {
			delete(c.inos, k)
		}
	}
	for k, v := range c.inos {
		if k == from {
			c.inos[to] = v
			delete(c.inos, k)
		} else if strings.HasPrefix(k, from+"/") {
			c.inos[to+k[len(from):]] = v
			delete(c.inos, k)
		}
	}
}

// entry describes what is at a merged path.
type entry struct {
	mode         uint32 // S_IFDIR, S_IFREG or S_IFLNK; 0 when nothing is there
	upper        bool   // the upper directory has it
	lowerVisible bool   // a directory whose lower contents show through
	lower        *lowerEntry
}

// lookup finds rel in the merged view; parentLowerVisible says whether the
// parent directory lets lower entries through.
func (c *cowFS) lookup(rel string, parentLowerVisible bool) entry {
	var e entry
	if parentLowerVisible {
		e.lower = c.lower[rel]
	}
	var st unix.Stat_t
	p, done, err := c.up.at(rel)
	defer done()
	if err == nil && unix.Lstat(p, &st) == nil {
		if isWhiteout(p, &st) {
			return entry{}
		}
		e.upper = true
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.mode = syscall.S_IFDIR
			e.lowerVisible = e.lower != nil && e.lower.dir && !isOpaque(p)
		case unix.S_IFLNK:
			e.mode = syscall.S_IFLNK
		default:
			e.mode = syscall.S_IFREG
		}
		return e
	}
	switch {
	case e.lower == nil:
		return entry{}
	case e.lower.dir:
		e.mode, e.lowerVisible = syscall.S_IFDIR, true
	case e.lower.link != "":
		e.mode = syscall.S_IFLNK
	default:
		e.mode = syscall.S_IFREG
	}
	return e
}

// ensureUpperDir makes the upper directory of merged directory rel and its
// parents, with the modes and times of the merged ones. Caller holds ns.
func (c *cowFS) ensureUpperDir(rel string) error {
	if rel == "" {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		if err := c.ensureUpperDirOne(strings.Join(parts[:i+1], "/")); err != nil {
			return err
		}
	}
	return nil
}

// ensureUpperDirOne makes upper directory r whose parent exists.
func (c *cowFS) ensureUpperDirOne(r string) error {
	p, done, err := c.up.at(r)
	defer done()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil
		}
		return fmt.Errorf("upper %s is not a directory", r)
	}
	if err := os.Mkdir(p, c.m.point.DirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if le := c.lower[r]; le != nil {
		ts := []unix.Timespec{unix.NsecToTimespec(le.mtime.UnixNano()), unix.NsecToTimespec(le.mtime.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	// The new directory must survive a crash once anything in it is
	// fsynced.
	return c.up.syncDir(parentRel(r))
}

// MountCoW mounts point p at dir as a writable view whose changes go to
// upperDir.
func MountCoW(dir string, p *resolver.Tree, upperDir string, opts Options) (*Mount, error) {
	// The server's pg_wal moves out of the mount before it serves.
	up, err := openUpperWAL(upperDir, dir, p, opts)
	if err != nil {
		return nil, err
	}
	if opts.WritebackAuto {
		opts.WritebackCache = chooseWriteback(up.hydrated(), opts.Hydrate)
	}
	if opts.WritebackCache {
		// The kernel offers no passthrough alongside the writeback cache.
		opts.NoPassthrough = true
	}
	m := newMount(dir, p, opts)
	m.onRelease = up.close
	c := newCowFS(m, up)
	c.root = &cowNode{c: c, lowerVisible: true}
	if opts.Hydrate {
		m.newHydrator(c)
	}
	// Every change goes through this mount, and the kernel keeps its own
	// caches of names and attributes right for what passes through it:
	// long timeouts spare the server a round trip per lseek(SEEK_END).
	timeout := time.Minute
	server, err := mountGuarded(dir, c.root, &gofs.Options{
		MountOptions:    m.mountOptions(false),
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
		UID:             opts.UID,
		GID:             opts.GID,
	})
	if err != nil {
		up.close()
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	m.server = server
	m.setReadAhead()
	if c.hyd != nil {
		go c.hyd.run()
	}
	return m, nil
}
