package fusefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/cache"
	"github.com/combinefs/combinefs/cachedir"
	"github.com/combinefs/combinefs/resolver"
)

// Options configure a mount.
type Options struct {
	// UID and GID own every presented file (PostgreSQL requires the data
	// directory to belong to the server's user).
	UID, GID uint32
	// AllowOther lets users other than the mounter in; DefaultPermissions
	// makes the kernel enforce the presented owners and modes.
	AllowOther, DefaultPermissions bool
	// CacheBytes bounds the block cache.
	CacheBytes int64
	// CacheDir (read-only mounts) keeps reconstructed files whole on local
	// disk, to serve them by passthrough from their second open on; the
	// caller opens and, after unmount, closes it.
	CacheDir *cachedir.Dir
	// NoPassthrough serves whole files through the daemon even where the
	// kernel could read them directly (for measurements and old kernels).
	NoPassthrough bool
	// WritebackCache (copy-on-write mounts) lets the kernel keep writes in
	// its page cache and send them in batches, as for a local file system,
	// instead of holding the writer for a round trip to us per write. The
	// kernel offers no passthrough with it, so it implies NoPassthrough.
	WritebackCache bool
	// WritebackAuto (copy-on-write mounts) sets WritebackCache at mount by
	// the upper directory (see chooseWriteback): passthrough when its
	// hydration is complete or runs (Hydrate), the writeback cache
	// otherwise.
	WritebackAuto bool
	Debug         bool
	// Log receives read errors and other events worth a line.
	Log func(msg string)
	// FsName is shown by mount(8) and df.
	FsName string
	// ReadAheadKB is the kernel's readahead for the mount (0: 4096). The
	// kernel caps a FUSE mount's readahead at 128 KiB whatever the file
	// system asks for; raising it through sysfs (root only) lets
	// sequential reads arrive as 1 MiB requests, several at a time.
	ReadAheadKB int
	// Hydrate (copy-on-write mounts) copies every block the upper
	// directory lacks from the chain into it in the background (see
	// hydrate.go), HydrateJobs files at a time (0: 4), reading at most
	// HydrateRate bytes per second from the chain (0: no limit).
	Hydrate     bool
	HydrateRate int64
	HydrateJobs int
	// HydrateOpenWait bounds how long an open of a file not yet whole may
	// wait for hydration to finish it, so that it goes by passthrough
	// (see cowNode.awaitWhole; 0: 2 s, negative: never).
	HydrateOpenWait time.Duration
	// WALDir (copy-on-write mounts), an absolute path, holds the server's
	// WAL outside the mount: pg_wal becomes a symlink to it (waldir.go).
	WALDir string
}

// Mount is a running mount.
type Mount struct {
	point  *resolver.Tree
	opts   Options
	server *fuse.Server
	cache  *cache.Cache
	src    *sources
	dir    string
	fills  *filler // with a cache directory

	ino       atomic.Uint64
	stats     counters
	closed    sync.Once
	onRelease func() // what else to release at unmount
	hyd       *hydrator
}

type counters struct {
	wholeOpens, reconOpens, passthroughOpens atomic.Uint64
	bytesServed, ioErrors                    atomic.Uint64
	blocksWritten, writeCalls, blocksKept    atomic.Uint64
	promoted, directOpens, awaitedOpens      atomic.Uint64
	cacheDirOpens                            atomic.Uint64
}

// Stats are a mount's counters.
type Stats struct {
	Cache                  cache.Stats
	WholeOpens, ReconOpens uint64 // opens of whole-file and reconstructed files
	PassthroughOpens       uint64 // whole-file opens offered to the kernel for passthrough
	BytesServed            uint64 // bytes the daemon returned to reads (passthrough reads not included)
	SourceReads            uint64 // preads of backup files on cache misses
	SourceBytes            uint64
	IOErrors               uint64
	BlocksWritten          uint64 // blocks written to overlay files (copy-on-write mounts)
	// WriteCalls are the write requests of copy-on-write mounts (their
	// average size says how well the kernel batched them).
	WriteCalls uint64
	// BlocksKept are blocks read from the chain for the server that
	// hydration then had no need to read again (see cowNode.keep).
	BlocksKept uint64
	// Promoted are files hydration made whole while open through the page
	// cache, served natively from the first open after the last such one
	// was closed (see fileState.promote).
	Promoted uint64
	// DirectOpens are opens without the page cache (FOPEN_DIRECT_IO) of
	// files not yet whole while hydration ran on a passthrough mount (see
	// cowNode.Open).
	DirectOpens uint64
	// AwaitedOpens are opens that waited for hydration to make their file
	// whole, and then went by passthrough (see cowNode.awaitWhole).
	AwaitedOpens uint64
	// WritebackCache: the kernel's writeback cache is on (copy-on-write
	// mounts; no passthrough then).
	WritebackCache bool
	// CacheDirOpens are opens of reconstructed files served from the cache
	// directory; CacheDir its own counters (zero without one).
	CacheDirOpens uint64
	CacheDir      cachedir.Stats
	// CacheDirPending are the fills queued or running.
	CacheDirPending int
	// Remote: where reads of a chain in an object store waited (nil for a
	// local chain).
	Remote *RemoteStats `json:",omitempty"`
	// Hydration is the progress of hydration (mounts with Options.Hydrate).
	Hydration *HydrationStats `json:",omitempty"`
}

// Stats returns the mount's counters.
func (m *Mount) Stats() Stats {
	st := Stats{
		Cache:            m.cache.Stats(),
		WholeOpens:       m.stats.wholeOpens.Load(),
		ReconOpens:       m.stats.reconOpens.Load(),
		PassthroughOpens: m.stats.passthroughOpens.Load(),
		BytesServed:      m.stats.bytesServed.Load(),
		SourceReads:      m.src.readCalls.Load(),
		SourceBytes:      m.src.readBytes.Load(),
		IOErrors:         m.stats.ioErrors.Load(),
		BlocksWritten:    m.stats.blocksWritten.Load(),
		WriteCalls:       m.stats.writeCalls.Load(),
		BlocksKept:       m.stats.blocksKept.Load(),
		Promoted:         m.stats.promoted.Load(),
		DirectOpens:      m.stats.directOpens.Load(),
		AwaitedOpens:     m.stats.awaitedOpens.Load(),
		WritebackCache:   m.opts.WritebackCache,
		Remote:           m.src.remoteStats(),
	}
	if m.hyd != nil {
		st.Hydration = m.hyd.stats()
	}
	if m.fills != nil {
		st.CacheDirOpens = m.stats.cacheDirOpens.Load()
		st.CacheDir = m.fills.dir.Stats()
		st.CacheDirPending = m.fills.pendingFills()
	}
	return st
}

const (
	// roTimeout: nothing in a read-only mount ever changes.
	roTimeout = time.Hour
	maxIO     = 1 << 20
)

// MountReadOnly mounts point p at dir and returns once the kernel serves it.
func MountReadOnly(dir string, p *resolver.Tree, opts Options) (*Mount, error) {
	m := newMount(dir, p, opts)
	if opts.CacheDir != nil {
		m.fills = newFiller(opts.CacheDir)
	}
	root := &roRoot{m: m}
	root.roDir = roDir{m: m, mtime: p.Root.ModTime}
	mopts := m.mountOptions(true)
	timeout := roTimeout
	server, err := fs.Mount(dir, root, &fs.Options{
		MountOptions:    mopts,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
		UID:             opts.UID,
		GID:             opts.GID,
	})
	if err != nil {
		m.release()
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	m.server = server
	m.setReadAhead()
	return m, nil
}

// setReadAhead raises the readahead of the mount's backing device info.
func (m *Mount) setReadAhead() {
	kb := m.opts.ReadAheadKB
	if kb == 0 {
		kb = 4096
	}
	dir, err := m.bdiDir()
	if err != nil {
		return
	}
	if err := os.WriteFile(dir+"/read_ahead_kb", []byte(strconv.Itoa(kb)), 0); err != nil {
		m.logf("readahead stays at the kernel's default: %v", err)
	}
}

func newMount(dir string, p *resolver.Tree, opts Options) *Mount {
	if opts.CacheBytes == 0 {
		opts.CacheBytes = 256 << 20
	}
	c := cache.New(opts.CacheBytes)
	m := &Mount{point: p, opts: opts, cache: c, src: newSources(c, p.Chain.Source), dir: dir}
	m.ino.Store(1)
	return m
}

func (m *Mount) mountOptions(readOnly bool) fuse.MountOptions {
	name := m.opts.FsName
	if name == "" {
		name = "combinefs"
	}
	o := fuse.MountOptions{
		AllowOther:    m.opts.AllowOther,
		FsName:        name,
		Name:          "combinefs",
		MaxWrite:      maxRequest(readOnly),
		MaxReadAhead:  maxIO,
		MaxBackground: maxBackground(readOnly),
		DisableXAttrs: true,
		// Every change to a file reaches the kernel through this mount, so
		// its page cache is never stale: without this go-fuse asks for
		// FUSE_AUTO_INVAL_DATA, and the kernel drops a file's whole page
		// cache whenever its mtime moves (a server writing a block of a
		// 1 GiB segment would make every later read of it miss).
		ExplicitDataCacheControl: true,
		Debug:                    m.opts.Debug,
		// As root, mount(2) directly: no fusermount3 needed.
		DirectMount: os.Geteuid() == 0,
	}
	if readOnly {
		o.Options = append(o.Options, "ro")
	} else if m.opts.WritebackCache {
		o.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	if m.opts.DefaultPermissions {
		o.Options = append(o.Options, "default_permissions")
	}
	return o
}

// maxBackground is how many asynchronous requests (readahead, writeback)
// the kernel keeps in flight to the daemon before a task that starts one
// waits for a slot. A server replaying WAL prefetches the blocks the next
// records touch (posix_fadvise WILLNEED, recovery_prefetch): on a local
// disk that only queues I/O, but on the mount each prefetch is a
// background read, and with 64 slots the startup process itself waited
// for one (fuse_get_req) for about a tenth of its replay of a scale-100
// pgbench minute while the daemon read the blocks one disk read each. The
// kernel lets root raise it (up to 65535); a slot costs the daemon only a
// goroutine while it reads.
func maxBackground(readOnly bool) int {
	if readOnly {
		return 64
	}
	return 512
}

// maxRequest is the largest request the kernel sends (max_write, and
// max_pages for reads). go-fuse reads every request into a buffer of that
// size from a sync.Pool, which each garbage collection empties. Under a
// server's scattered 8 KiB reads and writebacks, 1 MiB buffers made
// allocation and collection about a quarter of the daemon's profile: it
// used 31 s of CPU over a 25 s replay of a pgbench minute (16.7 s with
// 128 KiB), and a promoted server at a target took 2.5x the copy's time
// (2.0x with 128 KiB). A read-only
// mount keeps 1 MiB: its figure is sequential reads, and it has no
// writeback to churn the pool.
func maxRequest(readOnly bool) int {
	if readOnly {
		return maxIO
	}
	return 128 << 10
}

// bdiDir is the sysfs directory of the mount's backing device info.
func (m *Mount) bdiDir() (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(m.dir, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("/sys/class/bdi/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)), nil
}

func (m *Mount) nextIno() uint64 { return m.ino.Add(1) }

func (m *Mount) logf(format string, args ...any) {
	if m.opts.Log != nil {
		m.opts.Log(fmt.Sprintf(format, args...))
	}
}

// errno is the one way an error becomes the kernel's answer: a cancelled
// request is EINTR, a missing file ENOENT, an errno a system call returned
// (ENOSPC, EEXIST, ...) itself; anything else, and EIO itself, is logged
// with what was being done, counted in the stats, and EIO, so that the
// mount stays up and its log says why a read or write failed.
func (m *Mount) errno(err error, what string, args ...any) syscall.Errno {
	var e syscall.Errno
	switch {
	case err == nil || cancelled(err):
	case errors.As(err, &e) && e != syscall.EIO:
		return e
	case errors.Is(err, os.ErrNotExist):
		return syscall.ENOENT
	}
	return m.readErrno(err, what, args...)
}

// readErrno is errno for a failed read of the chain's data: whatever the
// backups' files or the object store answered (a vanished file included),
// the reader of a mounted file gets EIO, logged and counted; only a
// cancelled request is EINTR.
func (m *Mount) readErrno(err error, what string, args ...any) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case cancelled(err):
		return syscall.EINTR
	}
	m.logf("%s: %v", fmt.Sprintf(what, args...), err)
	m.stats.ioErrors.Add(1)
	return syscall.EIO
}

func cancelled(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (m *Mount) fillAttr(a *fuse.Attr, mode uint32, size uint64, mtime time.Time) {
	a.Mode = mode
	a.Size = size
	a.Blocks = (size + 511) / 512
	a.Blksize = 8192
	a.Nlink = 1
	if mode&syscall.S_IFDIR != 0 {
		a.Nlink = 2
	}
	a.Owner = fuse.Owner{Uid: m.opts.UID, Gid: m.opts.GID}
	a.SetTimes(nil, &mtime, &mtime)
}

// statfs reports the filesystem holding the final backup (for one in an
// object store, which has no such figures, an empty one).
func (m *Mount) statfs(out *fuse.StatfsOut) syscall.Errno {
	if !resolver.IsLocal(m.point.Chain.Source) {
		*out = fuse.StatfsOut{Bsize: 8192, Frsize: 8192, NameLen: 255}
		return 0
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.point.Chain.Final().Dir, &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

// Dir is the mount point.
func (m *Mount) Dir() string { return m.dir }

// Wait blocks until the file system is unmounted.
func (m *Mount) Wait() {
	m.server.Wait()
	m.release()
}

// Unmount unmounts (retrying while the mount is busy) and releases sources.
func (m *Mount) Unmount() error {
	var err error
	for i := 0; i < 20; i++ {
		if err = m.server.Unmount(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", m.dir, err)
	}
	m.release()
	return nil
}

func (m *Mount) release() {
	m.closed.Do(func() {
		// onRelease first: it stops hydration, which reads the sources.
		if m.onRelease != nil {
			m.onRelease()
		}
		if m.fills != nil {
			m.fills.close()
		}
		m.src.close()
		m.cache.Close()
	})
}
