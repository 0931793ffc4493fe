package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/internal/safedir"
)

// Hydration (Options.Hydrate) copies into the upper directory every block
// it does not hold yet, while the mount serves, until the upper alone is
// the data directory. It uses the upper's own layout (upper.go), so a
// hydrated block is just the newest layer holding it:
//
//   - a small or non-relation file (wholeCopy) is copied into tmp/,
//     fsynced and renamed into tree/: the lower file, or the whole upper one;
//   - a relation file gets an empty overlay first, as a first write would
//     (made in tmp/ before ns is taken), then every block below its limit
//     that the overlay lacks is read from the chain and written with
//     pwrite into the overlay, only where the upper has no block (a block
//     the server wrote is never overwritten): under the file's read lock,
//     so that the server's reads go on (fillBlocks); a block torn by a
//     kill in the middle of its pwrite is completed from the chain at the
//     next load (repairTorn);
//   - once every block below the limit is held, the overlay is fsynced and
//     its origin and limit xattrs removed, the fsyncs made without the
//     file's lock (makeWhole): from then on it is a whole
//     upper file, served natively (passthrough where the mount allows it).
//     On a passthrough mount, an open of a file not yet whole waits for
//     hydration to finish it if that is quick (cowNode.awaitWhole), else
//     it is opened direct (no page cache; cowNode.Open), so nothing stops
//     its next opens from going by passthrough. A file open through the page cache (a mount
//     with the writeback cache) keeps being served by the daemon (from the
//     upper file alone) until the last such open is closed
//     (fileState.promote): the kernel refuses passthrough opens of an
//     inode with cached opens (EIO).
//     A crash between the fsync and the removal leaves a complete overlay,
//     which the next hydration makes whole.
//
// Files the server reads from the chain go first (note), all of a file's
// ranges at once, then the rest in path order; the chain is read by a bounded number of workers at no more
// than Options.HydrateRate bytes per second. Hydration does not pause for
// the server's own reads of the chain: the sooner a file is whole, the
// sooner the server's opens of it go by passthrough. Paused after each of
// the server's reads, it copied 3% of a 5.9 GiB point in the first 15 s of
// pgbench -S on a cold server and took 105 s in all; the server ran at
// 0.65x of one on the combined copy in those first 15 s (0.09x unpaused)
// but did 8 times less work over two minutes (BENCHMARKS.md, "Direct opens
// while hydrating"). When nothing is left, tree/'s
// directories are fsynced and hydratedName written (durably): detach
// requires it. Nothing of hydration's progress is kept but the upper's
// files, so a remount resumes where a kill stopped it.
//
// What the server waits for while hydration runs: timed inside the daemon
// in the first 4 s of pgbench -S on a cold server at 1.5 GiB, its reads
// spent about a quarter of their time waiting to keep what they had read
// (the file's write lock, behind hydration's pwrites), another quarter
// copying the file up for keeping (ns, behind hydration's fsyncs under it;
// one read waited 1.3 s), and the rest reading the chain. So keeping is
// skipped while the file's lock is busy (hydration copies those blocks
// itself), a read no longer copies a file up (hydration makes the overlay
// of a file the read put first in line), and hydration makes its tmp files
// and fsyncs without holding ns or the file's lock. What is left is the
// disk the two share.
const hydratedName = "combinefs-hydrated"

// hydrated: the upper's hydration completed (every file of the point is
// whole in it; the server's later writes keep them whole).
func (u *upper) hydrated() bool {
	_, err := os.Stat(filepath.Join(u.dir, hydratedName))
	return err == nil
}

// chooseWriteback is Options.WritebackAuto's choice, made once per mount
// (the kernel fixes it at FUSE init). On a hydrated upper every file is
// served by passthrough, at native speed for reads and writes alike, which
// beat the writeback cache there by 1.1x to 1.4x in pgbench -S and TPC-B,
// cold and warm (BENCHMARKS.md, "writeback cache against passthrough").
// A hydrating mount takes passthrough too: it outlives its hydration, and
// its files not yet whole are opened without the page cache meanwhile
// (cowNode.Open), so a server running through hydration gets passthrough
// for every file it opens afterwards. In a memory cgroup of a third of
// the point that lifted pgbench -S from 0.57x to 0.88x of a server on the
// combined copy (BENCHMARKS.md, "Direct opens while hydrating"). Without
// hydration, files remain that only the daemon can serve (overlays, the
// chain's) for the mount's life, and the writeback cache spares the
// server a round trip per page it writes to those (warm TPC-B: 1.2x).
func chooseWriteback(hydrated, hydrating bool) bool { return !hydrated && !hydrating }

// hydrateChunk is the most blocks read from the chain in one go;
// hydrateRange the blocks of a relation file one worker fills, so that the
// workers share a large file.
const (
	hydrateChunk = 128
	hydrateRange = 2048
)

// HydrationStats is the progress of hydration.
type HydrationStats struct {
	Done, Total int64   // bytes of the point's files held by the upper, of all
	AtStart     int64   // bytes the upper held when this mount started (-1 until known)
	BytesPerSec float64 // since this mount started hydrating
	Complete    bool
	Error       string `json:",omitempty"` // why hydration stopped, if it failed
}

type hydrator struct {
	c       *cowFS
	jobs    int
	wait    atomic.Int64 // Options.HydrateOpenWait resolved (time.Duration; 0: never)
	lim     rateLimiter
	prio    chan string
	started time.Time

	total, done, doneAtStart atomic.Int64
	complete                 atomic.Bool
	errMsg                   atomic.Pointer[string]

	ctx      context.Context
	cancel   context.CancelFunc
	finished chan struct{}

	// bufs holds the workers' chunk buffers, reused rather than made for
	// each range: garbage made at the copy rate runs the collector (which
	// also empties a sync.Pool).
	bufs chan []byte
}

// buf returns a chunk buffer; putBuf gives it back.
func (h *hydrator) buf() []byte {
	select {
	case b := <-h.bufs:
		return b
	default:
		return dio.AlignedBuf(hydrateChunk * format.BlockSize)
	}
}

func (h *hydrator) putBuf(b []byte) {
	select {
	case h.bufs <- b:
	default:
	}
}

// newHydrator prepares the hydration of c's upper, before the mount serves
// (run starts it); it stops at unmount, before the upper is released.
func (m *Mount) newHydrator(c *cowFS) {
	ctx, cancel := context.WithCancel(context.Background())
	jobs := m.opts.HydrateJobs
	if jobs <= 0 {
		jobs = 4
	}
	h := &hydrator{c: c, jobs: jobs, lim: rateLimiter{rate: m.opts.HydrateRate}, prio: make(chan string, 256),
		started: time.Now(), ctx: ctx, cancel: cancel, finished: make(chan struct{}), bufs: make(chan []byte, jobs)}
	h.doneAtStart.Store(-1)
	switch w := m.opts.HydrateOpenWait; {
	case w == 0:
		h.wait.Store(int64(defaultOpenWait))
	case w > 0:
		h.wait.Store(int64(w))
	}
	c.hyd = h
	m.hyd = h
	release := m.onRelease
	m.onRelease = func() {
		h.cancel()
		<-h.finished
		release()
	}
}

func (h *hydrator) stats() *HydrationStats {
	s := &HydrationStats{Done: h.done.Load(), Total: h.total.Load(), AtStart: h.doneAtStart.Load(), Complete: h.complete.Load()}
	if e := h.errMsg.Load(); e != nil {
		s.Error = *e
	}
	if d := time.Since(h.started).Seconds(); d > 0 {
		s.BytesPerSec = float64(s.Done-max(s.AtStart, 0)) / d
	}
	return s
}

// note puts the file of node n first in line: the server reads it from the
// chain. Once per node; never blocks.
func (h *hydrator) note(n *cowNode) {
	if h == nil || h.complete.Load() || !n.hydNoted.CompareAndSwap(false, true) {
		return
	}
	if rel, ok := n.rel(); ok {
		select {
		case h.prio <- rel:
		default:
		}
	}
}

// defaultOpenWait is Options.HydrateOpenWait's default. At 1.5 GiB the
// opens that waited took a cold server's start from 0.3-0.4 s to 0.7-2.3 s.
const defaultOpenWait = 2 * time.Second

// openWait is how long an open may wait for hydration (0: not at all).
func (h *hydrator) openWait() time.Duration { return time.Duration(h.wait.Load()) }

// active reports whether hydration is still running (h may be nil).
func (h *hydrator) active() bool {
	return h != nil && !h.complete.Load() && h.errMsg.Load() == nil && h.ctx.Err() == nil
}

func (h *hydrator) fail(err error) {
	msg := err.Error()
	h.errMsg.Store(&msg)
	h.c.m.logf("hydration stopped: %v", err)
}

// run hydrates round after round until a plan finds nothing left (a round
// can leave work when the server changed a file under it).
func (h *hydrator) run() {
	defer close(h.finished)
	ctx := h.ctx
	c := h.c
	var total int64
	for rel, le := range c.lower {
		if hydratable(rel, le) && !le.dir && le.link == "" {
			total += le.size()
		}
	}
	h.total.Store(total)
	if c.up.hydrated() {
		h.done.Store(total)
		h.doneAtStart.Store(total)
		h.complete.Store(true)
		return
	}
	for round := 0; ctx.Err() == nil; round++ {
		items, remaining, err := h.plan()
		if err != nil {
			h.fail(err)
			return
		}
		h.done.Store(max(total-remaining, 0))
		if round == 0 {
			h.doneAtStart.Store(h.done.Load())
			c.m.logf("hydrating: %d of %d bytes to copy, %d entries", remaining, total, len(items))
		}
		if len(items) == 0 {
			if err := h.finish(); err != nil {
				h.fail(err)
			}
			return
		}
		if err := h.round(ctx, items); err != nil {
			if ctx.Err() == nil {
				h.fail(err)
			}
			return
		}
	}
}

// round works through items, those the server reads first: every range
// of a file the server reads goes ahead of the rest, so that all workers
// fill it.
func (h *hydrator) round(ctx context.Context, items []*hydItem) error {
	byRel := make(map[string][]*hydItem, len(items))
	for _, it := range items {
		byRel[it.rel] = append(byRel[it.rel], it)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(h.jobs)
	taken := map[*hydItem]bool{}
	var front []*hydItem
	for i := 0; (i < len(items) || len(front) > 0) && gctx.Err() == nil; {
		var it *hydItem
		select {
		case rel := <-h.prio:
			front = append(front, byRel[rel]...)
			continue
		default:
		}
		if len(front) > 0 {
			it, front = front[0], front[1:]
		} else {
			it = items[i]
			i++
		}
		if taken[it] {
			continue
		}
		taken[it] = true
		g.Go(func() error { return h.do(gctx, it) })
	}
	return g.Wait()
}

// finish records completion, every change durable first: the files
// hydration wrote were fsynced before their rename or their xattrs'
// removal, so what is left is the directories holding those renames, this
// mount's or a killed one's. (Not syncfs: it would flush every other user
// of the file system too, for seconds on a busy disk.)
func (h *hydrator) finish() error {
	c := h.c
	err := filepath.WalkDir(c.up.tree+"/.", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return dio.Sync(p)
	})
	if err != nil {
		return err
	}
	if err := writeDurably(filepath.Join(c.up.dir, hydratedName), []byte(time.Now().UTC().Format(time.RFC3339)+"\n")); err != nil {
		return err
	}
	// Every file is local now: the block cache's memory goes back to the
	// machine, where the server's page cache can use it (in a 512 MiB
	// memory cgroup the idle 256 MiB arena was half the server's room).
	if c.m.cache.Trim() {
		debug.FreeOSMemory()
	}
	h.done.Store(h.total.Load())
	h.complete.Store(true)
	c.m.logf("hydration complete: %d bytes in %s", h.total.Load()-max(h.doneAtStart.Load(), 0), time.Since(h.started).Round(time.Millisecond))
	return nil
}

// hydratable: the entries a detached data directory has. The mount's
// backup_manifest is built from the chain on demand and is not part of the
// data directory a server needs, so it is left out (as detach's
// byte-identity with pg_combinebackup sets backup_manifest aside).
func hydratable(rel string, le *lowerEntry) bool {
	return rel != "" && le.man == nil
}

type hydKind int

const (
	hydDir     hydKind = iota // a lower directory with no upper one
	hydLink                   // a lower symlink (tablespace)
	hydWhole                  // a lower file copied whole
	hydOverlay                // a lower relation file, or an overlay to fill
)

type hydItem struct {
	rel  string
	kind hydKind
	le   *lowerEntry // hydDir, hydLink, hydWhole, and hydOverlay of a lower-only file
	// from and to are the blocks [from, to) of a hydOverlay item to fill.
	from, to int64
}

// overlayItems are the items filling a relation file of size bytes, a
// range of blocks each.
func overlayItems(rel string, le *lowerEntry, size int64) []*hydItem {
	var out []*hydItem
	blocks := (size + format.BlockSize - 1) / format.BlockSize
	for from := int64(0); from < blocks || from == 0; from += hydrateRange {
		out = append(out, &hydItem{rel: rel, kind: hydOverlay, le: le, from: from, to: min(from+hydrateRange, blocks)})
	}
	return out
}

// plan lists what is left: lower entries the merged view still shows from
// the chain, and overlays in tree/ lacking blocks; remaining is the bytes
// to copy.
func (h *hydrator) plan() (items []*hydItem, remaining int64, err error) {
	c := h.c
	c.ns.RLock()
	defer c.ns.RUnlock()
	rels := make([]string, 0, len(c.lower))
	for rel, le := range c.lower {
		if hydratable(rel, le) {
			rels = append(rels, rel)
		}
	}
	slices.Sort(rels)
	for _, rel := range rels {
		e := c.resolve(rel)
		if e.mode == 0 || e.upper {
			continue
		}
		le := e.lower
		switch {
		case le.dir:
			items = append(items, &hydItem{rel: rel, kind: hydDir, le: le})
		case le.link != "":
			items = append(items, &hydItem{rel: rel, kind: hydLink, le: le})
		case le.wholeCopy():
			items = append(items, &hydItem{rel: rel, kind: hydWhole, le: le})
			remaining += le.size()
		default:
			items = append(items, overlayItems(rel, le, le.size())...)
			remaining += le.size()
		}
	}
	// tree/ through its descriptor ("/." so that the walk starts at the
	// directory, not at the /proc link); WalkDir follows no symlink.
	err = filepath.WalkDir(c.up.tree+"/.", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(c.up.tree, p)
		// Only looked at: a node may be writing the file.
		st, err := c.loadAt(rel, false)
		if err != nil {
			return fmt.Errorf("upper file %s: %w", p, err)
		}
		defer st.fd.Close()
		if st.kind != kindOverlay {
			return nil
		}
		items = append(items, overlayItems(rel, nil, min(st.size, st.limit))...)
		remaining += int64(len(st.missing())) * format.BlockSize
		return nil
	})
	return items, remaining, err
}

// resolve is the merged entry at rel, its parents followed from the root.
// Caller holds ns.
func (c *cowFS) resolve(rel string) entry {
	parts := strings.Split(rel, "/")
	visible := true
	var e entry
	for i := range parts {
		e = c.lookup(strings.Join(parts[:i+1], "/"), visible)
		if e.mode == 0 || (i < len(parts)-1 && e.mode != syscall.S_IFDIR) {
			return entry{}
		}
		visible = e.lowerVisible
	}
	return e
}

// nodeAt is the node the kernel knows at merged path rel, if any. A node
// whose file state is loaded is always in the tree where its path says,
// since loading and every rename take ns. Caller holds ns.
func (c *cowFS) nodeAt(rel string) *cowNode {
	cur := &c.root.Inode
	for _, name := range strings.Split(rel, "/") {
		if cur = cur.GetChild(name); cur == nil {
			return nil
		}
	}
	n, _ := cur.Operations().(*cowNode)
	return n
}

// stillLower reports whether rel still shows lower entry le from the chain.
// Caller holds ns.
func (c *cowFS) stillLower(rel string, le *lowerEntry) bool {
	e := c.resolve(rel)
	return e.mode != 0 && !e.upper && e.lower == le
}

func (h *hydrator) do(ctx context.Context, it *hydItem) error {
	c := h.c
	switch it.kind {
	case hydDir:
		c.ns.Lock()
		defer c.ns.Unlock()
		if c.stillLower(it.rel, it.le) {
			return c.ensureUpperDir(it.rel)
		}
		return nil
	case hydLink:
		c.ns.Lock()
		defer c.ns.Unlock()
		if !c.stillLower(it.rel, it.le) {
			return nil
		}
		if err := c.ensureUpperDir(parentRel(it.rel)); err != nil {
			return err
		}
		p, done, err := c.up.at(it.rel)
		defer done()
		if err != nil {
			return err
		}
		return os.Symlink(it.le.link, p)
	case hydWhole:
		return h.copyWhole(ctx, it)
	}
	if it.le != nil {
		if err := h.makeOverlay(it); err != nil {
			return err
		}
	}
	return h.fill(ctx, it)
}

// copyWhole copies a lower file into tmp/ and renames it into place if the
// merged view still shows the lower file; an open node of it switches to
// the upper file.
func (h *hydrator) copyWhole(ctx context.Context, it *hydItem) error {
	c := h.c
	tmp, f, err := c.newUpperTmp(it.le, func(f *os.File) error { return h.copyThrottled(ctx, it.le, f) })
	if err != nil {
		return fmt.Errorf("copying %s: %w", it.rel, err)
	}
	c.ns.Lock()
	defer c.ns.Unlock()
	if !c.stillLower(it.rel, it.le) {
		f.Close()
		os.Remove(tmp)
		return nil
	}
	dirSync, err := c.installUpper(it.rel, tmp)
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if n := c.nodeAt(it.rel); n != nil {
		n.mu.Lock()
		if st := n.st; st != nil && st.kind == kindLower && st.pending == nil {
			// Open through the page cache: the copy takes over when
			// the last such open is closed (promote).
			st.pending, st.pendingDirSync = f, dirSync
			if st.cachedOpens == 0 {
				st.promote()
			}
			f = nil
		}
		n.mu.Unlock()
	}
	if f != nil {
		f.Close()
	}
	return nil
}

// copyThrottled writes all of lower file le to f at the hydration rate.
func (h *hydrator) copyThrottled(ctx context.Context, le *lowerEntry, f *os.File) error {
	size := le.size()
	buf := make([]byte, min(size, hydrateChunk*format.BlockSize))
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		if err := h.lim.wait(ctx, n); err != nil {
			return err
		}
		m, err := h.c.readLower(le, buf[:n], off)
		if err != nil {
			return err
		}
		if int64(m) < n {
			return fmt.Errorf("%s: short read at %d", le.rel, off+int64(m))
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
		h.done.Add(n)
	}
	return nil
}

// makeOverlay gives a lower relation file its empty overlay, as its first
// write would, unless the path no longer shows it (another range's worker
// made it, or the server changed it).
func (h *hydrator) makeOverlay(it *hydItem) error {
	c := h.c
	c.ns.RLock()
	todo := c.stillLower(it.rel, it.le)
	c.ns.RUnlock()
	if !todo {
		return nil
	}
	// Made (and fsynced) before taking ns, which the server's lookups
	// and reads wait for.
	tmp, f, err := c.newUpperTmp(it.le, nil)
	if err != nil {
		return err
	}
	p := &preparedUpper{le: it.le, tmp: tmp, f: f}
	c.ns.Lock()
	defer c.ns.Unlock()
	if !c.stillLower(it.rel, it.le) {
		p.discard()
		return nil
	}
	if n := c.nodeAt(it.rel); n != nil {
		if errno := n.ensureUpperWith(p); errno != 0 {
			return fmt.Errorf("copy-up of %s: %w", it.rel, errno)
		}
		return nil
	}
	defer f.Close()
	if _, err := c.installUpper(it.rel, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// withState runs fn on the state of the upper file at rel under the file's
// lock: the loaded state of its node, else one loaded for the call.
func (c *cowFS) withState(rel string, fn func(st *fileState) error) error {
	c.ns.Lock()
	defer c.ns.Unlock()
	if e := c.resolve(rel); e.mode != syscall.S_IFREG || !e.upper {
		return errChanged // removed, or replaced by something else
	}
	if n := c.nodeAt(rel); n != nil {
		if n.Mode()&syscall.S_IFMT != syscall.S_IFREG {
			return errChanged
		}
		st, errno := n.stateNS()
		if errno != 0 {
			return fmt.Errorf("%s: %w", rel, errno)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		return fn(st)
	}
	st, err := c.loadAt(rel, true) // no node: nothing else writes it
	if err != nil {
		return err
	}
	if st.fd != nil {
		defer st.fd.Close()
	}
	return fn(st)
}

// errChanged: the file at a path is no longer the overlay being filled; the
// next round's plan sees what it became.
var errChanged = errors.New("changed under hydration")

// fill copies the blocks of it's range the overlay at it.rel lacks from
// its origin, then makes it whole if no block is missing anywhere.
func (h *hydrator) fill(ctx context.Context, it *hydItem) error {
	c := h.c
	rel := it.rel
	var missing []int64
	var origin *lowerEntry
	err := c.withState(rel, func(st *fileState) error {
		if st.kind != kindOverlay {
			return errChanged
		}
		origin = st.lower
		missing = st.missingIn(it.from, it.to)
		return nil
	})
	if errors.Is(err, errChanged) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	buf := h.buf()
	defer h.putBuf(buf)
	direct := c.openDirect(rel, origin.size())
	if direct >= 0 {
		defer unix.Close(direct)
	}
	for len(missing) > 0 {
		// A run of consecutive missing blocks, read from the chain
		// without any lock (the chain never changes).
		run := 1
		for run < len(missing) && run < hydrateChunk && missing[run] == missing[0]+int64(run) {
			run++
		}
		first := missing[0]
		missing = missing[run:]
		off := first * format.BlockSize
		n := min(int64(run)*format.BlockSize, origin.size()-off)
		if n <= 0 {
			continue
		}
		if err := h.lim.wait(ctx, n); err != nil {
			return err
		}
		m, err := c.readLower(origin, buf[:n], off)
		if err != nil {
			return err
		}
		err = c.fillBlocks(rel, origin, first, buf[:m], direct)
		if errors.Is(err, errChanged) || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		h.done.Add(n)
	}
	return h.makeWhole(rel)
}

// fillBlocks writes the chain's bytes data of the blocks from first on into
// the overlay at rel, where it still lacks them. The server's reads of the
// file go on meanwhile: the writes are made under the node's read lock,
// which keeps out the server's writes and truncations (a block the server
// writes is newer and must not be overwritten), and an unmarked block reads
// the same bytes from the chain. The blocks are marked afterwards under the
// write lock, unless a truncation came in between (gen). A file without a
// node is written under ns, which keeps one from being made.
func (c *cowFS) fillBlocks(rel string, origin *lowerEntry, first int64, data []byte, direct int) error {
	c.ns.Lock()
	n := c.nodeAt(rel)
	if e := c.resolve(rel); e.mode != syscall.S_IFREG || !e.upper || n == nil || n.Mode()&syscall.S_IFMT != syscall.S_IFREG {
		c.ns.Unlock()
		return c.withState(rel, func(st *fileState) error {
			if st.kind != kindOverlay || st.lower != origin {
				return errChanged
			}
			runs, err := st.writeMissing(first, data, direct)
			st.markRuns(runs)
			return err
		})
	}
	st, errno := n.stateNS()
	if errno != 0 {
		c.ns.Unlock()
		return fmt.Errorf("%s: %w", rel, errno)
	}
	n.mu.RLock()
	c.ns.Unlock()
	if n.st != st || st.kind != kindOverlay || st.lower != origin {
		n.mu.RUnlock()
		return errChanged
	}
	gen := st.gen
	runs, err := st.writeMissing(first, data, direct)
	n.mu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st == st && st.kind == kindOverlay && st.gen == gen {
		st.markRuns(runs)
	}
	return err
}

// openDirect opens the upper file at rel for direct writes, for hydration
// to write a file of size bytes past the page cache: -1 for a small file
// or where the file system refuses it. Buffered, each write copies into
// fresh page cache that must then be written back (package dio): a 6 GB
// point hydrated in 19.7 s that way and in 13.2 s direct (flatten, which
// writes direct, 12.6 s). The page cache is also left to the server's own
// reads.
func (c *cowFS) openDirect(rel string, size int64) int {
	if size < directMin.Load() {
		return -1
	}
	fd, err := safedir.OpenBeneath(c.up.treeFD, rel, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1
	}
	return fd
}

// directMin is the size from which hydration writes a file direct: a direct
// write waits for the device, which the many small files of a data
// directory would pay once each (a variable for the tests).
var directMin atomic.Int64

func init() { directMin.Store(dio.MinSize) }

// sameFile reports whether two descriptors are of one inode: the direct
// descriptor hydration opened by name, and the state's, which a rename may
// have parted since.
func sameFile(a, b int) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// writeRun writes p at off: through direct where p and off allow it.
func writeRun(f *os.File, direct int, p []byte, off int64) error {
	if direct >= 0 && len(p)%dio.Align == 0 && off%dio.Align == 0 {
		for len(p) > 0 {
			n, err := unix.Pwrite(direct, p, off)
			if err == unix.EINVAL && n <= 0 {
				break // the device wants more alignment: buffered
			}
			if err != nil {
				return &os.PathError{Op: "write", Path: f.Name(), Err: err}
			}
			p, off = p[n:], off+int64(n)
		}
		if len(p) == 0 {
			return nil
		}
	}
	_, err := f.WriteAt(p, off)
	return err
}

// markRuns marks the runs [from, to) that writeMissing wrote.
func (s *fileState) markRuns(runs [][2]int64) {
	for _, r := range runs {
		s.markRange(r[0], r[1])
	}
}

// writeMissing writes data, the chain's bytes of the blocks from first on,
// into the overlay where it lacks blocks, a run of them per pwrite, within
// the file and the limit (the bytes past the limit that materialize would
// write are zeros, as a hole reads). It returns the runs [from, to) it
// wrote, for the caller to mark. Caller holds the node's mu, for reading
// at least.
func (s *fileState) writeMissing(first int64, data []byte, direct int) (runs [][2]int64, err error) {
	if direct >= 0 && !sameFile(direct, int(s.fd.Fd())) {
		direct = -1
	}
	off := first * format.BlockSize
	last := first + (int64(len(data))+format.BlockSize-1)/format.BlockSize
	end := min(s.size, s.limit, off+int64(len(data)))
	for b := first; b < last; {
		if s.has(b) || b*format.BlockSize >= end {
			b++
			continue
		}
		e := b + 1
		for e < last && !s.has(e) && e*format.BlockSize < end {
			e++
		}
		start, stop := b*format.BlockSize, min(e*format.BlockSize, end)
		if err := writeRun(s.fd, direct, data[start-off:stop-off], start); err != nil {
			return runs, err
		}
		runs = append(runs, [2]int64{b, e})
		b = e
	}
	return runs, nil
}

// makeWhole turns the overlay at rel, holding every block below its limit,
// into a whole upper file: its data durable first, then the origin and
// limit xattrs removed, durably. The fsyncs are made without the file's
// lock or ns, which the server's reads and lookups wait for (one took over
// a second while hydration wrote): through a duplicate of the file's
// descriptor, and the first is made again if a block came into the overlay
// meanwhile (fileState.added).
func (h *hydrator) makeWhole(rel string) error {
	for try := 0; ; try++ {
		var fd int = -1
		var added uint64
		err := h.c.withState(rel, func(st *fileState) error {
			if st.kind != kindOverlay || !st.holdsAll() {
				return errChanged
			}
			var err error
			fd, err = unix.Dup(int(st.fd.Fd()))
			added = st.added
			return err
		})
		if errors.Is(err, errChanged) || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		done, err := h.wholeAfterSync(rel, fd, added, try >= 2)
		unix.Close(fd)
		if err != nil || done {
			return err
		}
	}
}

// wholeAfterSync fsyncs fd, then removes the overlay's xattrs if no block
// came in since added was read (or, with underLock, after a second fsync
// under the lock), and fsyncs again. done is false if it must be tried
// again.
func (h *hydrator) wholeAfterSync(rel string, fd int, added uint64, underLock bool) (done bool, err error) {
	if err := unix.Fsync(fd); err != nil {
		return false, err
	}
	err = h.c.withState(rel, func(st *fileState) error {
		if st.kind != kindOverlay || !st.holdsAll() {
			return errChanged
		}
		if st.added != added {
			if !underLock {
				return nil
			}
			if err := st.fd.Sync(); err != nil {
				return err
			}
		}
		fd := int(st.fd.Fd())
		// ENODATA: the worker of another range of the file made it whole
		// first, and a cached open kept this state an overlay (below).
		if err := unix.Fremovexattr(fd, xattrOrigin); err != nil && !errors.Is(err, unix.ENODATA) {
			return err
		}
		if err := unix.Fremovexattr(fd, xattrLimit); err != nil && !errors.Is(err, unix.ENODATA) {
			return err
		}
		st.whole = true
		if st.cachedOpens == 0 {
			st.promote()
		}
		done = true
		return nil
	})
	if errors.Is(err, errChanged) || errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil || !done {
		return false, err
	}
	return true, unix.Fsync(fd)
}

// holdsAll reports whether an overlay holds every block below its limit:
// missing() would be empty.
func (s *fileState) holdsAll() bool {
	end := min(s.limit, s.size)
	for b := int64(0); b*format.BlockSize < end; b++ {
		if !s.has(b) {
			return false
		}
	}
	return true
}

// missing lists the blocks below the limit an overlay does not hold: those
// still read from the chain.
func (s *fileState) missing() []int64 { return s.missingIn(0, math.MaxInt64) }

// missingIn lists those of blocks [from, to): a range's, without going
// over the whole file under the locks for each of its ranges.
func (s *fileState) missingIn(from, to int64) []int64 {
	var out []int64
	end := min(s.limit, s.size)
	for b := from; b < to && b*format.BlockSize < end; b++ {
		if !s.has(b) {
			out = append(out, b)
		}
	}
	return out
}

// rateLimiter spaces reads so that they average at most rate bytes per
// second (0: no limit).
type rateLimiter struct {
	rate int64
	mu   sync.Mutex
	next time.Time
}

func (l *rateLimiter) wait(ctx context.Context, n int64) error {
	if l.rate <= 0 {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	at := l.next
	if at.Before(now) {
		at = now
	}
	l.next = at.Add(time.Duration(float64(n) / float64(l.rate) * float64(time.Second)))
	l.mu.Unlock()
	select {
	case <-time.After(time.Until(at)):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
