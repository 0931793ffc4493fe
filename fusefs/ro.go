package fusefs

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/combinefs/combinefs/resolver"
)

// roRoot is the root of a read-only mount.
type roRoot struct {
	roDir
	m *Mount
}

// roDir is a directory of the point.
type roDir struct {
	fs.Inode
	m     *Mount
	mtime time.Time
}

// roFile is a regular file of the point.
type roFile struct {
	fs.Inode
	m     *Mount
	f     *resolver.File
	mtime time.Time
	cache fileCache // with a cache directory
	// next is the following file of the same directory; on a remote chain
	// an open fetches the start of the next few (see prefetchNext).
	next       *roFile
	prefetched atomic.Bool
}

// labelFile is the rewritten backup_label, held in memory.
type labelFile struct {
	fs.Inode
	m     *Mount
	data  []byte
	mtime time.Time
}

var (
	_ fs.NodeOnAdder         = (*roRoot)(nil)
	_ fs.NodeGetattrer       = (*roDir)(nil)
	_ fs.NodeStatfser        = (*roDir)(nil)
	_ fs.NodeGetattrer       = (*roFile)(nil)
	_ fs.NodeOpener          = (*roFile)(nil)
	_ fs.NodeGetattrer       = (*labelFile)(nil)
	_ fs.NodeOpener          = (*labelFile)(nil)
	_ fs.NodeReader          = (*labelFile)(nil)
	_ fs.FileReader          = (*wholeHandle)(nil)
	_ fs.FileReleaser        = (*wholeHandle)(nil)
	_ fs.FileReader          = (*reconHandle)(nil)
	_ fs.FilePassthroughFder = (*wholeHandle)(nil)
	// Deliberately not implemented: every writing interface. The mount is
	// made with -o ro, so the kernel answers EROFS before asking us.
)

// OnAdd builds the whole tree up front: the resolver already knows it.
func (r *roRoot) OnAdd(ctx context.Context) {
	p := r.m.point
	var add func(parent *fs.Inode, e *resolver.Entry)
	add = func(parent *fs.Inode, e *resolver.Entry) {
		var prev *roFile
		for _, c := range e.Children {
			var ch *fs.Inode
			switch c.Kind {
			case resolver.KindDir:
				ch = parent.NewPersistentInode(ctx, &roDir{m: r.m, mtime: c.ModTime}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: r.m.nextIno()})
				add(ch, c)
			case resolver.KindFile:
				f := &roFile{m: r.m, f: c.File, mtime: c.ModTime}
				if prev != nil {
					prev.next = f
				}
				prev = f
				ch = parent.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.m.nextIno()})
			}
			parent.AddChild(c.Name, ch, true)
		}
	}
	add(&r.Inode, p.Root)
	label := &labelFile{m: r.m, data: p.Label, mtime: p.Root.ModTime}
	r.AddChild("backup_label", r.NewPersistentInode(ctx, label, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.m.nextIno()}), true)
	if mf := newManifest(r.m, p); mf != nil {
		node := &manifestFile{manifest: mf}
		r.AddChild("backup_manifest", r.NewPersistentInode(ctx, node, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.m.nextIno()}), true)
	}
	// Tablespaces live inside the mount, in TablespaceDir, and
	// pg_tblspc/<oid> is a relative symlink there: everything a server needs
	// is in the mount, and pg_tblspc holds only symlinks, as recovery wants
	// (it refuses directories there unless allow_in_place_tablespaces is on).
	if len(p.Tablespaces) > 0 {
		tblspc := r.GetChild("pg_tblspc")
		if tblspc == nil {
			tblspc = r.NewPersistentInode(ctx, &roDir{m: r.m, mtime: p.Root.ModTime}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: r.m.nextIno()})
			r.AddChild("pg_tblspc", tblspc, true)
		}
		data := r.NewPersistentInode(ctx, &roDir{m: r.m, mtime: p.Root.ModTime}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: r.m.nextIno()})
		r.AddChild(TablespaceDir, data, true)
		for _, ts := range p.Tablespaces {
			d := data.NewPersistentInode(ctx, &roDir{m: r.m, mtime: ts.Root.ModTime}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: r.m.nextIno()})
			data.AddChild(ts.Root.Name, d, true)
			add(d, ts.Root)
			link := &roSymlink{m: r.m, target: tablespaceLink(ts.Root.Name), mtime: ts.Root.ModTime}
			tblspc.AddChild(ts.Root.Name, tblspc.NewPersistentInode(ctx, link, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: r.m.nextIno()}), true)
		}
	}
}

// TablespaceDir is the top-level directory of a mount that holds the
// tablespaces; pg_tblspc/<oid> links to TablespaceDir/<oid>.
const TablespaceDir = "combinefs_tablespaces"

// tablespaceLink is the target of pg_tblspc/<oid> in a mount.
func tablespaceLink(oid string) string { return "../" + TablespaceDir + "/" + oid }

// roSymlink is a tablespace link.
type roSymlink struct {
	fs.Inode
	m      *Mount
	target string
	mtime  time.Time
}

var (
	_ fs.NodeReadlinker = (*roSymlink)(nil)
	_ fs.NodeGetattrer  = (*roSymlink)(nil)
)

func (l *roSymlink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(l.target), 0
}

func (l *roSymlink) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.m.fillAttr(&out.Attr, syscall.S_IFLNK|0o777, uint64(len(l.target)), l.mtime)
	return 0
}

func (d *roDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.m.fillAttr(&out.Attr, syscall.S_IFDIR|uint32(d.m.point.DirMode), 4096, d.mtime)
	return 0
}

func (d *roDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return d.m.statfs(out)
}

func (f *roFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.m.fillAttr(&out.Attr, syscall.S_IFREG|uint32(f.m.point.FileMode), uint64(f.f.Size()), f.mtime)
	return 0
}

// Open resolves the file (older INCREMENTAL headers, once) and picks how to
// serve it: passthrough or direct reads for a whole file, and for a
// reconstructed one its complete copy in the cache directory the same way,
// or else the block cache.
func (f *roFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	plan, err := f.f.Plan()
	if err != nil {
		return nil, 0, f.m.errno(err, "open %s", f.f.Path)
	}
	// A whole file of an object store has no descriptor to pass through:
	// it is read through the block cache like a reconstructed one.
	if plan.Whole && resolver.IsLocal(plan.Source) {
		src, err := os.Open(plan.WholeSrc)
		if err != nil {
			return nil, 0, f.m.errno(err, "open %s", f.f.Path)
		}
		f.m.stats.wholeOpens.Add(1)
		return &wholeHandle{m: f.m, src: src, size: f.f.Size()}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	if h := f.openCached(plan); h != nil {
		return h, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	f.m.stats.reconOpens.Add(1)
	if f.m.src.from != nil {
		f.prefetchNext()
	}
	return &reconHandle{m: f.m, f: f.f, plan: plan}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

// wholeHandle serves a file that is one backup file: the kernel reads it
// directly when passthrough is available, otherwise we pread it.
type wholeHandle struct {
	m    *Mount
	src  *os.File
	size int64 // as presented; a shorter source is an error, not EOF
}

func (h *wholeHandle) PassthroughFd() (int, bool) {
	if h.m.opts.NoPassthrough {
		return 0, false
	}
	h.m.stats.passthroughOpens.Add(1)
	return int(h.src.Fd()), true
}

func (h *wholeHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	want := min(int64(len(dest)), max(h.size-off, 0))
	n, err := readFull(h.src, dest[:want], off)
	if int64(n) < want {
		if err == nil {
			err = fmt.Errorf("short read: %d of %d bytes", n, want)
		}
		return nil, h.m.readErrno(err, "read %s at %d", h.src.Name(), off)
	}
	h.m.stats.bytesServed.Add(uint64(n))
	return bytesResult(dest[:n]), 0
}

func (h *wholeHandle) Release(ctx context.Context) syscall.Errno {
	h.src.Close()
	return 0
}

// reconHandle serves a reconstructed file from its extent map.
type reconHandle struct {
	m    *Mount
	f    *resolver.File
	plan *resolver.Plan
}

func (h *reconHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := h.f.Size()
	if off >= size {
		return bytesResult(nil), 0
	}
	n := min(int64(len(dest)), size-off)
	r, err := h.m.src.readRange(h.plan, off, n)
	if err != nil {
		return nil, h.m.readErrno(err, "read %s at %d", h.f.Path, off)
	}
	h.m.stats.bytesServed.Add(uint64(n))
	return r, 0
}

func (l *labelFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.m.fillAttr(&out.Attr, syscall.S_IFREG|uint32(l.m.point.FileMode), uint64(len(l.data)), l.mtime)
	return 0
}

func (l *labelFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (l *labelFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return memResult(l.data, len(dest), off), 0
}

// memResult is a read of n bytes at off from a file held in memory.
func memResult(data []byte, n int, off int64) fuse.ReadResult {
	if off >= int64(len(data)) {
		return bytesResult(nil)
	}
	return bytesResult(data[off:min(int64(len(data)), off+int64(n))])
}
