package fusefs

import (
	"errors"
	"hash/crc32"
	"os"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/cachedir"
	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/resolver"
)

// A read-only mount with a cache directory (Options.CacheDir) serves a
// reconstructed file from the blocks of the backups, as without one, until
// its first open has had it written whole to the directory in the
// background; from the next open on, it is served by passthrough from
// there like a file that comes whole from one backup. A file found in the
// directory (from an earlier mount) is checked against its CRC-32C once per
// mount, at its first open, reading it through the page cache its reads
// then hit; one that fails is discarded and filled again.

// fillJobs is how many files are filled at once: each is read and written
// sequentially, and more would only compete with the mount's own reads.
const fillJobs = 2

type cacheState int

const (
	cacheUnknown cacheState = iota // not looked up yet
	cacheFilling                   // queued or being filled
	cacheReady                     // complete in the directory
	cacheNone                      // not cached in this mount (too large, or its fill failed)
)

// fileCache is the cache-directory state of one reconstructed file.
type fileCache struct {
	mu      sync.Mutex
	state   cacheState
	key     cachedir.Key
	entry   cachedir.Entry
	checked bool // entry's content checked in this mount (or written by it)
}

// openCached returns a handle on f's complete file in the cache directory,
// or nil when it has none yet (queueing its fill when that is the first
// time).
func (f *roFile) openCached(plan *resolver.Plan) *wholeHandle {
	fl := f.m.fills
	if fl == nil {
		return nil
	}
	fc := &f.cache
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.state == cacheUnknown {
		fc.key = cachedir.KeyFor(f.m.point, f.f.Path, f.f.Size(), plan)
		e, ok := fl.dir.Lookup(fc.key)
		if !ok {
			f.queueFill(plan)
			return nil
		}
		fc.state, fc.entry, fc.checked = cacheReady, e, false
	}
	if fc.state != cacheReady {
		return nil
	}
	if !fc.checked {
		if err := cachedir.Verify(fc.entry); err != nil {
			f.m.logf("cache directory: %s: %v: discarded, to be filled again", f.f.Path, err)
			fl.dir.Discard(fc.key)
			f.queueFill(plan)
			return nil
		}
		fc.checked = true
	}
	src, err := os.Open(fc.entry.Path)
	if err != nil {
		// Evicted for another file since: look it up again next time.
		fc.state = cacheUnknown
		return nil
	}
	f.m.stats.cacheDirOpens.Add(1)
	return &wholeHandle{m: f.m, src: src, size: f.f.Size()}
}

// queueFill queues the fill of f; fc.mu is held.
func (f *roFile) queueFill(plan *resolver.Plan) {
	f.cache.state = cacheFilling
	key, size := f.cache.key, f.f.Size()
	f.m.fills.add(func() {
		e, err := f.m.fills.dir.Fill(key, size, func(tmp string) (uint32, error) {
			h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
			if err := flatten.WriteReconstructed(plan, tmp, size, 0o600, h); err != nil {
				return 0, err
			}
			return h.Sum32(), nil
		})
		dropPages(plan)
		fc := &f.cache
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if err != nil {
			if !errors.Is(err, cachedir.ErrTooLarge) {
				f.m.logf("cache directory: filling %s: %v", f.f.Path, err)
			}
			fc.state = cacheNone
			return
		}
		fc.state, fc.entry, fc.checked = cacheReady, e, true
	})
}

// dropPages drops the page cache of the backup files a fill read: the mount
// reads backups past the page cache (see preadUncached), so that they do
// not push the mounted files out of memory, and a fill, which reads them
// through it, must not undo that.
func dropPages(plan *resolver.Plan) {
	done := map[string]bool{}
	for _, e := range plan.Extents {
		if e.Layer == resolver.Zeros || done[e.Src] {
			continue
		}
		done[e.Src] = true
		if f, err := os.Open(e.Src); err == nil {
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
	}
}

// filler runs a mount's fills in the background, fillJobs at a time, in
// the order queued.
type filler struct {
	dir *cachedir.Dir

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []func()
	pending int // queued or running
	closed  bool
	done    chan struct{}
}

func newFiller(dir *cachedir.Dir) *filler {
	f := &filler{dir: dir, done: make(chan struct{})}
	f.cond = sync.NewCond(&f.mu)
	go f.run()
	return f
}

func (f *filler) add(job func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.queue = append(f.queue, job)
	f.pending++
	f.cond.Broadcast()
}

func (f *filler) run() {
	var g errgroup.Group
	g.SetLimit(fillJobs)
	for {
		f.mu.Lock()
		for len(f.queue) == 0 && !f.closed {
			f.cond.Wait()
		}
		if f.closed {
			f.mu.Unlock()
			break
		}
		job := f.queue[0]
		f.queue = f.queue[1:]
		f.mu.Unlock()
		g.Go(func() error {
			job()
			f.mu.Lock()
			f.pending--
			f.cond.Broadcast()
			f.mu.Unlock()
			return nil
		})
	}
	g.Wait()
	close(f.done)
}

// idle waits until every fill queued so far is done (or the filler closed).
func (f *filler) idle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.pending > 0 && !f.closed {
		f.cond.Wait()
	}
}

func (f *filler) pendingFills() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pending
}

// close drops the fills not started and waits for the running ones.
func (f *filler) close() {
	f.mu.Lock()
	f.closed = true
	f.queue = nil
	f.cond.Broadcast()
	f.mu.Unlock()
	<-f.done
}

// WaitCacheFills blocks until every cache-directory fill queued so far has
// ended (at once without a cache directory).
func (m *Mount) WaitCacheFills() {
	if m.fills != nil {
		m.fills.idle()
	}
}
