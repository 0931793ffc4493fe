package fusefs

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/cache"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
)

// A mount of a chain in an object store reads the same extent maps through
// the same block cache as a local one; what differs is the cost of a read.
// A ranged GET takes a round trip however few its bytes, so the spans a
// request needs are fetched in parallel (remoteJobs at a time), and a file
// read in sequence has the blocks after the read fetched ahead of it
// (readAheadBytes, in readAheadChunk requests), so that a sequential reader
// finds them in the cache instead of waiting on a GET per kernel request.
//
// The chunks are as large as a GET may be (remoteMaxSpan blocks): a chunk's
// blocks of one backup file are one GET, and on the store measured larger
// GETs were the faster and cheaper ones (see remoteMaxSpan). A cold read
// of a scale-100 point with 2 MiB chunks sent GETs of 640 KiB on average
// and served 72 MiB/s against the download's 200. readAheadJobs chunks in
// flight are 64 MiB, well inside the block cache (256 MiB by default), so
// that what is fetched ahead is not evicted before the reader gets there.
const (
	remoteJobs     = 8
	readAheadChunk = remoteMaxSpan * format.BlockSize
	readAheadJobs  = 8
	readAheadBytes = readAheadJobs * readAheadChunk
)

// RemoteStats say where a sequential reader of a remote chain waits: on
// the GETs its own kernel requests send, on those the read-ahead sent, or
// not at all (every block already cached); and how busy the store was kept.
type RemoteStats struct {
	// Reads are the kernel's read requests; ReadsFetched those that sent a
	// GET themselves, ReadsWaited those that waited for a GET already under
	// way (read-ahead's, or another read's). A request may do both.
	Reads, ReadsFetched, ReadsWaited uint64
	// WaitSeconds is the time the requests that fetched or waited took.
	WaitSeconds float64
	// Gets are the block GETs (each a readSpan), GetBytes what they read,
	// GetSeconds the sum of their durations: over the elapsed time, the
	// mean number in flight. PeakGets is the most in flight at once.
	Gets, GetBytes uint64
	GetSeconds     float64
	PeakGets       int64
	// AheadChunks are the read-ahead fetches started, AheadDropped those
	// given back because every read-ahead job was busy; PrefetchDropped
	// the same for the starts of the next files.
	AheadChunks, AheadDropped, PrefetchDropped uint64
}

// remoteCounters are RemoteStats as they are counted.
type remoteCounters struct {
	reads, readsFetched, readsWaited     atomic.Uint64
	waitNs, getNs                        atomic.Int64
	gets, getBytes                       atomic.Uint64
	inFlight, peak                       atomic.Int64
	aheadChunks, aheadDropped, nextDrops atomic.Uint64
}

// remoteStats returns the counters; nil for a local chain.
func (s *sources) remoteStats() *RemoteStats {
	if s.from == nil {
		return nil
	}
	c := &s.rc
	return &RemoteStats{Reads: c.reads.Load(), ReadsFetched: c.readsFetched.Load(), ReadsWaited: c.readsWaited.Load(),
		WaitSeconds: time.Duration(c.waitNs.Load()).Seconds(), Gets: c.gets.Load(), GetBytes: c.getBytes.Load(),
		GetSeconds: time.Duration(c.getNs.Load()).Seconds(), PeakGets: c.peak.Load(),
		AheadChunks: c.aheadChunks.Load(), AheadDropped: c.aheadDropped.Load(), PrefetchDropped: c.nextDrops.Load()}
}

// getStarted counts a GET under way; the returned func ends it with the
// bytes it read.
func (c *remoteCounters) getStarted() func(n int) {
	t0 := time.Now()
	k := c.inFlight.Add(1)
	for p := c.peak.Load(); k > p && !c.peak.CompareAndSwap(p, k); p = c.peak.Load() {
	}
	return func(n int) {
		c.inFlight.Add(-1)
		c.gets.Add(1)
		c.getBytes.Add(uint64(max(n, 0)))
		c.getNs.Add(int64(time.Since(t0)))
	}
}

// remoteError is a read of an object store that failed after the store
// client's retries. It does not unwrap: whatever errno the connection's
// failure carries, the read gets EIO through the mount's errno helper,
// which logs and counts it, and the mount stays up.
type remoteError struct{ err error }

func (e remoteError) Error() string { return e.err.Error() }

// name is the source's path, for messages.
func (sf *srcFile) name() string {
	if sf.remote != nil {
		return sf.remote.Name()
	}
	return sf.f.Name()
}

// vecReader is a remote SourceFile that reads a range straight into the
// caller's buffers (repo's objects): the blocks go from the response into
// the cache, with no buffer per GET beside it.
type vecReader interface {
	ReadAtInto(bufs [][]byte, off int64) (int, error)
}

// readRemote fills b from off, up to the end of the object, with one
// ranged read.
func (sf *srcFile) readRemote(b []byte, off int64) (int, error) {
	return sf.readRemoteInto([][]byte{b}, off)
}

// readRemoteInto is the one ranged read of the buffers of iov, in order;
// fewer bytes only at the object's end.
func (sf *srcFile) readRemoteInto(iov [][]byte, off int64) (int, error) {
	var n int
	var err error
	if sf.rc != nil {
		done := sf.rc.getStarted()
		defer func() { done(n) }()
	}
	if v, ok := sf.remote.(vecReader); ok {
		n, err = v.ReadAtInto(iov, off)
	} else {
		n, err = readAtInto(sf.remote, iov, off)
	}
	if err == io.EOF {
		err = nil
	}
	if err != nil {
		err = remoteError{err}
	}
	return n, err
}

// readAtInto reads iov with ReadAt, buffer by buffer, up to the end.
func readAtInto(r io.ReaderAt, iov [][]byte, off int64) (int, error) {
	n := 0
	for _, v := range iov {
		k, err := r.ReadAt(v, off+int64(n))
		n += k
		if err != nil || k < len(v) {
			return n, err
		}
	}
	return n, nil
}

// preadRemote is pread's one ranged read into the buffers of iov. The
// object's last block is partial when a file is not a whole number of
// blocks (a whole file of the point): when the object ends inside the last
// buffer, the rest of it reads as zeros, as past the end of a local file,
// and the read counts as whole. Ending anywhere before is a short read.
func (sf *srcFile) preadRemote(iov [][]byte, off int64) (int, error) {
	total := 0
	for _, v := range iov {
		total += len(v)
	}
	n, err := sf.readRemoteInto(iov, off)
	if err != nil || n == total || n <= total-len(iov[len(iov)-1]) || off+int64(n) != sf.remote.Size() {
		return n, err
	}
	rest := n
	for _, v := range iov {
		k := min(rest, len(v))
		clear(v[k:])
		rest -= k
	}
	return total, nil
}

// fetchRemote reads the spans of a request, remoteJobs at a time, ends
// its claims (mine: closed once they are all read or failed), then takes
// the blocks other requests were fetching (waits) from the cache once they
// are in, reading any that did not get there itself.
func (s *sources) fetchRemote(spans []span, waits []flightWait, mine chan struct{}, r *blockRead) error {
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(remoteJobs)
	for _, sp := range spans {
		g.Go(func() error {
			refs, err := s.readSpan(sp.src, sp.idx)
			s.flights.done(sp.src, sp.idx, mine)
			mu.Lock()
			r.refs = append(r.refs, refs...)
			mu.Unlock()
			return err
		})
	}
	err := g.Wait()
	if mine != nil {
		close(mine)
	}
	if err != nil {
		return err
	}
	for _, w := range waits {
		<-w.ch
		if ref, v, ok := s.cache.Get(cache.Key{Source: w.src.id, Block: w.src.need[w.idx]}); ok {
			w.src.got[w.idx] = v
			r.refs = append(r.refs, ref)
			continue
		}
		refs, err := s.readSpan(w.src, []int{w.idx}) // its fetch failed, or it was evicted since
		if err != nil {
			return err
		}
		r.refs = append(r.refs, refs...)
	}
	return nil
}

// flights are the blocks of a remote chain being fetched, so that a read
// needing a block another read (or the read-ahead) is fetching waits for
// that GET instead of sending the same one: a sequential reader would
// otherwise fetch most blocks twice, once ahead and once itself. Each
// block maps to the channel of the request fetching it, one for all the
// blocks it claimed (a read-ahead chunk's are a thousand), closed when the
// request's GETs are all done.
type flights struct {
	mu sync.Mutex
	m  map[cache.Key]chan struct{}
}

// flightWait is a block of a read that another read is fetching.
type flightWait struct {
	src *source
	idx int
	ch  chan struct{}
}

// claim makes k the caller's to fetch (true), under its channel *mine
// (made on its first claim), or returns the channel of the fetch under way.
func (f *flights) claim(k cache.Key, mine *chan struct{}) (chan struct{}, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.m[k]; ok {
		return ch, false
	}
	if f.m == nil {
		f.m = map[cache.Key]chan struct{}{}
	}
	if *mine == nil {
		*mine = make(chan struct{})
	}
	f.m[k] = *mine
	return nil, true
}

// done ends the claims under mine of blocks need[idx...] of src (the
// caller closes mine once all of its claims are done).
func (f *flights) done(src *source, idx []int, mine chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, i := range idx {
		k := cache.Key{Source: src.id, Block: src.need[i]}
		if ch, ok := f.m[k]; ok && ch == mine {
			delete(f.m, k)
		}
	}
}

// readAhead tracks the sequential reads of one file of the point.
type readAhead struct {
	next  int64 // where the next read starts if the reader goes on in sequence
	ahead int64 // end of what was fetched or asked for ahead
}

// readAheadState is the sources' read-ahead bookkeeping: per file (its
// plan, which the resolver keeps for the life of the mount), and the
// background fetches, readAheadJobs at a time (a fetch that finds them all
// busy is dropped, not queued: the reader is ahead of it anyway).
type readAheadState struct {
	mu    sync.Mutex
	files map[*resolver.Plan]*readAhead
	g     errgroup.Group
	next  errgroup.Group // the prefetches of the next files (prefetchNext)
	once  sync.Once
}

// readAhead notes a read of [off, off+n) of the file of plan, and when it
// continues the previous one, fetches the blocks up to readAheadBytes past
// it into the cache in the background.
func (s *sources) readAhead(plan *resolver.Plan, off, n int64) {
	ra := &s.ra
	s.readAheadInit()
	size := planSize(plan)
	ra.mu.Lock()
	st := ra.files[plan]
	if st == nil {
		st = &readAhead{}
		ra.files[plan] = st
	}
	sequential := off == st.next || (off < st.ahead && off >= st.next-readAheadBytes)
	st.next = off + n
	var from, to int64
	if sequential {
		from, to = max(st.ahead, off+n), min(off+n+readAheadBytes, size)
		if to-from >= readAheadChunk || (to == size && to > from) {
			st.ahead = to
		} else {
			to = from // not worth a request yet
		}
	}
	ra.mu.Unlock()
	for lo := from; lo < to; lo = chunkEnd(lo) {
		hi := min(chunkEnd(lo), to)
		s.rc.aheadChunks.Add(1)
		ok := ra.g.TryGo(func() error {
			if r, err := s.readBlocks(plan, lo, hi-lo); err == nil {
				r.release()
			}
			return nil
		})
		if !ok {
			// Every job is busy: give the rest back, to be asked for again.
			s.rc.aheadChunks.Add(^uint64(0))
			s.rc.aheadDropped.Add(1)
			ra.mu.Lock()
			if st.ahead == to {
				st.ahead = lo
			}
			ra.mu.Unlock()
			return
		}
	}
}

// chunkEnd is where the read-ahead chunk holding off ends: chunks are
// aligned to readAheadChunk in the file, so that the GETs of a backup
// file's blocks that sit at the same offsets (a full backup's) start at
// its multiples, as a store's pieces of an object uploaded in parts of a
// power of two (16 MiB for a capture) do: no GET straddles two pieces it
// need not.
func chunkEnd(off int64) int64 { return (off/readAheadChunk + 1) * readAheadChunk }

// readAheadInit sets the read-ahead's state up on first use.
func (s *sources) readAheadInit() {
	s.ra.once.Do(func() {
		s.ra.files = map[*resolver.Plan]*readAhead{}
		s.ra.g.SetLimit(readAheadJobs)
		s.ra.next.SetLimit(prefetchJobs)
	})
}

// planSize is the length of the file a plan describes.
func planSize(p *resolver.Plan) int64 {
	if len(p.Extents) == 0 {
		return 0
	}
	e := p.Extents[len(p.Extents)-1]
	return e.Off + e.Len
}

// waitReadAhead waits for the background fetches (at unmount, before the
// sources close).
func (s *sources) waitReadAhead() {
	s.ra.g.Wait()
	s.ra.next.Wait()
}

// prefetchFiles is how many of the files after one opened in its directory
// an open on a remote chain fetches the start of: a reader that takes a
// directory's files in order (a copy, a backup tool, a checksum pass) finds
// them in the cache instead of paying a round trip for each small file.
// Most files of a point are small (at pgbench scale 100, 800 of 983 are
// under prefetchBytes), so it takes many GETs at once to keep up with a
// reader: prefetchJobs, apart from the read-ahead's jobs, which a large
// file being read keeps busy. What they fetch is in the block cache's
// buffers, pinned only while a GET fills them: at most prefetchJobs times
// prefetchBytes, and prefetchFiles times that cached ahead.
const (
	prefetchFiles = 32
	prefetchJobs  = 16
	prefetchBytes = 2 << 20
)

// prefetchNext fetches the first prefetchBytes of the prefetchFiles
// files after f in its directory, each once per mount, prefetchJobs at a
// time (dropped when they are all busy, to be asked for again at the next
// open).
func (f *roFile) prefetchNext() {
	s := f.m.src
	for n, i := f.next, 0; n != nil && i < prefetchFiles; n, i = n.next, i+1 {
		if n.f.Size() == 0 || n.prefetched.Swap(true) {
			continue
		}
		s.readAheadInit()
		ok := s.ra.next.TryGo(func() error {
			if plan, err := n.f.Plan(); err == nil {
				if r, err := s.readBlocks(plan, 0, min(n.f.Size(), prefetchBytes)); err == nil {
					r.release()
				}
			}
			return nil
		})
		if !ok {
			s.rc.nextDrops.Add(1)
			n.prefetched.Store(false)
			return
		}
	}
}
