package fusefs

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/combinefs/combinefs/resolver"
)

// manifest is the point's backup_manifest, so that pg_verifybackup and
// anything else that reads one works on a mount. Its size is known at mount
// time (every checksum is CRC32C, 8 hex digits); its content needs the
// checksum of every file not copied whole, so it is built when first read,
// reading those files once, and kept.
type manifest struct {
	m     *Mount
	size  int64
	mtime time.Time

	mu   sync.Mutex // guards data; held while building
	data []byte
}

// manifestFile presents the manifest in a read-only mount.
type manifestFile struct {
	fs.Inode
	*manifest
}

var (
	_ fs.NodeGetattrer = (*manifestFile)(nil)
	_ fs.NodeOpener    = (*manifestFile)(nil)
	_ fs.NodeReader    = (*manifestFile)(nil)
)

// countWriter counts what is written to it.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// newManifest sizes the manifest of point p, or returns nil when the final
// backup has none (there are no WAL ranges to write then).
func newManifest(m *Mount, p *resolver.Tree) *manifest {
	var cw countWriter
	if err := p.WriteManifest(&cw, p.Root.ModTime, false, nil); err != nil {
		m.logf("no backup_manifest in the mount: %v", err)
		return nil
	}
	return &manifest{m: m, size: cw.n, mtime: p.Root.ModTime}
}

func (f *manifestFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.m.fillAttr(&out.Attr, syscall.S_IFREG|uint32(f.m.point.FileMode), uint64(f.size), f.mtime)
	return 0
}

func (f *manifestFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if _, err := f.content(); err != nil {
		return nil, 0, syscall.EIO
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// content builds the manifest once. A failure (a backup file that cannot
// be read) is logged and returned; the next call tries again.
func (f *manifest) content() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.data != nil {
		return f.data, nil
	}
	start := time.Now()
	files := 0
	var b bytes.Buffer
	b.Grow(int(f.size))
	err := f.m.point.WriteManifest(&b, f.mtime, true, func(string) { files++ })
	if err == nil && int64(b.Len()) != f.size {
		err = fmt.Errorf("BUG: it is %d bytes, but %d were announced", b.Len(), f.size)
	}
	if err != nil {
		f.m.stats.ioErrors.Add(1)
		f.m.logf("backup_manifest: %v", err)
		return nil, err
	}
	f.m.logf("backup_manifest built in %v (%d files checksummed, the others' checksums taken from their backups' manifests)", time.Since(start).Round(time.Millisecond), files)
	f.data = b.Bytes()
	return f.data, nil
}

func (f *manifestFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	data, err := f.content()
	if err != nil {
		return nil, syscall.EIO
	}
	return memResult(data, len(dest), off), 0
}
