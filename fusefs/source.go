package fusefs

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/cache"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/resolver"
)

// sources reads blocks of backup files through the block cache. Source
// files stay open for the life of the mount; they never change.
type sources struct {
	cache *cache.Cache
	// from is the chain's Source when it is not the local file system
	// (an object store); nil for local backups, read as files.
	from  resolver.Source
	mu    sync.Mutex
	ids   map[string]uint32
	files []*srcFile

	readBytes, readCalls, errors atomic.Uint64

	ra      readAheadState // for a remote chain
	flights flights        // blocks being fetched from a remote chain
	rc      remoteCounters // for a remote chain
}

// srcFile is an open backup file. It is read with O_DIRECT where the file
// system allows: the blocks go from the device into the block cache's
// buffers, without the kernel copying them out of page cache it allocates
// and drops again for every read. On the 2-CPU test machine that copy and
// churn were the largest part of the daemon's CPU time in a cold read.
type srcFile struct {
	f      *os.File
	direct atomic.Bool
	remote resolver.SourceFile // instead of f, for an object store
	rc     *remoteCounters     // the counters its GETs go to (remote)

	plainOnce sync.Once
	plain     *os.File // for reads at any offset, when f is direct
	plainErr  error
}

// readFull fills b from offset off (any alignment), uncached, up to the end
// of the file.
func (sf *srcFile) readFull(b []byte, off int64) (int, error) {
	if sf.remote != nil {
		return sf.readRemote(b, off)
	}
	if !sf.direct.Load() {
		return readFull(sf.f, b, off)
	}
	sf.plainOnce.Do(func() { sf.plain, sf.plainErr = os.Open(sf.f.Name()) })
	if sf.plainErr != nil {
		return 0, sf.plainErr
	}
	return readFull(sf.plain, b, off)
}

func newSources(c *cache.Cache, from resolver.Source) *sources {
	s := &sources{cache: c, ids: map[string]uint32{}}
	if !resolver.IsLocal(from) {
		s.from = from
	}
	return s
}

func (s *sources) open(path string) (uint32, *srcFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.ids[path]; ok {
		return id, s.files[id], nil
	}
	if s.from != nil {
		f, err := s.from.Open(path)
		if err != nil {
			return 0, nil, remoteError{err}
		}
		sf := &srcFile{remote: f, rc: &s.rc}
		return s.add(path, sf), sf, nil
	}
	f, direct, err := dio.OpenRead(path)
	if err != nil {
		return 0, nil, err
	}
	sf := &srcFile{f: f}
	sf.direct.Store(direct)
	// No readahead (for buffered reads): reads are merged spans of exactly
	// the blocks needed, and readahead would bring in (and leave cached, see
	// preadUncached) blocks that newer backups supersede.
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	return s.add(path, sf), sf, nil
}

// add gives sf the next id; s.mu is held.
func (s *sources) add(path string, sf *srcFile) uint32 {
	id := uint32(len(s.files))
	s.ids[path] = id
	s.files = append(s.files, sf)
	return id
}

// pread reads into iov, whose buffers are dio.AlignedBufs (or slices of
// them at block boundaries), at a block offset.
func (sf *srcFile) pread(iov [][]byte, off int64) (int, error) {
	if sf.remote != nil {
		return sf.preadRemote(iov, off)
	}
	if sf.direct.Load() {
		n, err := unix.Preadv(int(sf.f.Fd()), iov, off)
		if err != unix.EINVAL {
			return n, err
		}
		// The device wants more alignment than a block: buffered from now on.
		sf.direct.Store(false)
		dio.ClearDirect(sf.f)
	}
	return preadUncached(sf.f, iov, off)
}

func (s *sources) close() {
	s.waitReadAhead()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sf := range s.files {
		if sf.remote != nil {
			sf.remote.Close()
			continue
		}
		sf.f.Close()
		if sf.plain != nil {
			sf.plain.Close()
		}
	}
	s.files, s.ids = nil, map[string]uint32{}
}

// zeroBlock backs zero extents; slices of it go to the kernel read-only.
var zeroBlock = make([]byte, format.BlockSize)

// blockRead is the bytes of one read as slices of cached blocks (and zero
// blocks). The blocks stay pinned, so that no eviction reuses their
// buffers, until release; as a fuse.ReadResult it is released once the
// reply has gone to the kernel (Done).
type blockRead struct {
	c    *cache.Cache
	vecs [][]byte
	refs []cache.Ref
	// fetched and waited: the read sent a request itself, and waited for
	// one under way (a remote chain's counters).
	fetched, waited bool
}

func (r *blockRead) release() {
	for _, ref := range r.refs {
		r.c.Release(ref)
	}
	r.refs = nil
}

// copyTo copies the bytes into dest and releases the blocks.
func (r *blockRead) copyTo(dest []byte) int {
	w := 0
	for _, v := range r.vecs {
		w += copy(dest[w:], v)
	}
	r.release()
	return w
}

func (r *blockRead) Size() int {
	n := 0
	for _, v := range r.vecs {
		n += len(v)
	}
	return n
}

func (r *blockRead) Bytes(buf []byte) ([]byte, fuse.Status) {
	buf = buf[:0]
	for _, v := range r.vecs {
		buf = append(buf, v...)
	}
	return buf, fuse.OK
}

// Slices lets go-fuse write the reply with writev, straight from the blocks.
func (r *blockRead) Slices() ([][]byte, fuse.Status) { return r.vecs, fuse.OK }

func (r *blockRead) Done() { r.release() }

// readRange returns the bytes [off, off+n) of the file described by plan.
//
// A reconstructed segment is usually a patchwork of single blocks from
// several backups, so the blocks a request needs are gathered per source
// first: every block is looked up in the cache once, and the missing blocks
// of one source that lie close together are read with a single preadv
// (each into its own block buffer, the gaps between them into scratch),
// instead of one pread per block.
//
// On a remote chain a read that continues the file's previous one also
// starts the read-ahead of the blocks after it.
func (s *sources) readRange(plan *resolver.Plan, off, n int64) (*blockRead, error) {
	if s.from == nil {
		return s.readBlocks(plan, off, n)
	}
	t0 := time.Now()
	r, err := s.readBlocks(plan, off, n)
	s.rc.reads.Add(1)
	if err != nil {
		return r, err
	}
	if r.fetched || r.waited {
		s.rc.waitNs.Add(int64(time.Since(t0)))
		if r.fetched {
			s.rc.readsFetched.Add(1)
		}
		if r.waited {
			s.rc.readsWaited.Add(1)
		}
	}
	s.readAhead(plan, off, n)
	return r, err
}

// readBlocks is readRange without the read-ahead.
func (s *sources) readBlocks(plan *resolver.Plan, off, n int64) (*blockRead, error) {
	type part struct {
		src   *source // nil for zeros
		idx   int     // in src.need
		lo, n int64   // bytes of the block
	}
	r := &blockRead{c: s.cache, vecs: make([][]byte, 0, n/format.BlockSize+2)}
	parts := make([]part, 0, n/format.BlockSize+2)
	var srcs []*source
	end := off + n
	i := extentIndex(plan, off)
	for pos := off; pos < end; {
		if i >= len(plan.Extents) {
			return nil, fmt.Errorf("read past the extent map at offset %d", pos)
		}
		e := plan.Extents[i]
		stop := min(end, e.Off+e.Len)
		var src *source
		if e.Layer != resolver.Zeros {
			id, f, err := s.open(e.Src)
			if err != nil {
				return nil, err
			}
			for _, have := range srcs {
				if have.id == id {
					src = have
					break
				}
			}
			if src == nil {
				src = &source{id: id, f: f}
				srcs = append(srcs, src)
			}
		}
		for pos < stop {
			inBlock := pos % format.BlockSize
			m := min(stop-pos, format.BlockSize-inBlock)
			p := part{lo: inBlock, n: m}
			if src != nil {
				so := e.SrcOff + (pos - e.Off)
				b := so / format.BlockSize
				if k := len(src.need); k == 0 || src.need[k-1] != b {
					src.need = append(src.need, b)
				}
				p.src, p.idx, p.lo = src, len(src.need)-1, so%format.BlockSize
			}
			parts = append(parts, p)
			pos += m
		}
		i++
	}
	if err := s.fetch(srcs, r); err != nil {
		r.release()
		return nil, err
	}
	for _, p := range parts {
		if p.src == nil {
			r.vecs = append(r.vecs, zeroBlock[p.lo:p.lo+p.n])
			continue
		}
		r.vecs = append(r.vecs, p.src.got[p.idx][p.lo:p.lo+p.n])
	}
	return r, nil
}

// source is one backup file a read needs blocks of, in the order needed;
// got[i] holds block need[i] once fetched.
type source struct {
	id   uint32
	f    *srcFile
	need []int64
	got  [][]byte
}

// Reads of missing blocks of one source are merged when the gap between
// them is at most maxGap blocks, up to maxSpan blocks in one preadv. The
// gap is read too, into scratch: on the test machine's virtual disk a
// request costs far more than its bytes (reading only the blocks needed
// was 4 to 7 times slower than reading 1.9 times the bytes in fewer, larger
// requests; gaps of 4, 8 and 16 blocks came out the same).
//
// From an object store a span may be longer, remoteMaxSpan blocks: there a
// request costs more still. On SeaweedFS on loopback a GET cost its store
// about 650 us of CPU besides 1.8 s per GiB (the time of some 370 KiB), and
// 16 GETs at a time read 91 MiB/s in 512 KiB ranges, 221 MiB/s in 2 MiB
// and 234 MiB/s in 8 MiB ones.
const (
	maxGap        = 16
	maxSpan       = 256
	remoteMaxSpan = 1024
)

// scratchPool holds the buffers gaps are read into.
var scratchPool = sync.Pool{New: func() any { b := dio.AlignedBuf(maxGap * format.BlockSize); return &b }}

// fetch fills the got of every source and adds the blocks' pins to r: each
// block from the cache, or read (and then cached). (Reading the spans of a
// request concurrently changed nothing: the kernel already sends several
// requests at once.)
func (s *sources) fetch(srcs []*source, r *blockRead) error {
	var spans []span
	var waits []flightWait
	var mine chan struct{} // closed when this read's claimed blocks are in
	longest := int64(maxSpan)
	if s.from != nil {
		longest = remoteMaxSpan
	}
	for _, src := range srcs {
		src.got = make([][]byte, len(src.need))
		var miss []int // indexes into need
		for i, b := range src.need {
			k := cache.Key{Source: src.id, Block: b}
			if ref, v, ok := s.cache.Get(k); ok {
				src.got[i] = v
				r.refs = append(r.refs, ref)
				continue
			}
			if s.from != nil {
				if ch, ok := s.flights.claim(k, &mine); !ok {
					waits = append(waits, flightWait{src, i, ch})
					continue
				}
			}
			miss = append(miss, i)
		}
		for len(miss) > 0 {
			j := 1
			for j < len(miss) {
				prev, cur := src.need[miss[j-1]], src.need[miss[j]]
				if cur <= prev || cur-prev > maxGap || cur-src.need[miss[0]] >= longest {
					break
				}
				j++
			}
			spans = append(spans, span{src, miss[:j]})
			miss = miss[j:]
		}
	}
	if s.from != nil {
		r.fetched, r.waited = r.fetched || len(spans) > 0, r.waited || len(waits) > 0
		return s.fetchRemote(spans, waits, mine, r)
	}
	for _, sp := range spans {
		refs, err := s.readSpan(sp.src, sp.idx)
		if err != nil {
			return err
		}
		r.refs = append(r.refs, refs...)
	}
	return nil
}

// span is blocks need[idx...] of src, read with one request.
type span struct {
	src *source
	idx []int
}

// readSpan reads the blocks need[idx...] (increasing, close together) of
// src with one preadv: each block into a buffer of the cache (Alloc), the
// gaps between them into scratch. The blocks are then cached, and returned
// pinned (none on an error).
func (s *sources) readSpan(src *source, idx []int) ([]cache.Ref, error) {
	refs := make([]cache.Ref, len(idx))
	bufs := make([][]byte, len(idx))
	iov := make([][]byte, 0, 2*len(idx))
	var scratch *[]byte
	for i, k := range idx {
		if i > 0 {
			if gap := (src.need[k] - src.need[idx[i-1]] - 1) * format.BlockSize; gap > 0 {
				if scratch == nil {
					scratch = scratchPool.Get().(*[]byte)
				}
				iov = append(iov, (*scratch)[:gap])
			}
		}
		refs[i], bufs[i] = s.cache.Alloc()
		iov = append(iov, bufs[i])
	}
	first, last := src.need[idx[0]], src.need[idx[len(idx)-1]]
	want := int(last-first+1) * format.BlockSize
	m, err := src.f.pread(iov, first*format.BlockSize)
	if scratch != nil {
		scratchPool.Put(scratch)
	}
	s.readCalls.Add(1)
	s.readBytes.Add(uint64(max(m, 0)))
	if m < want {
		if err == nil {
			err = fmt.Errorf("%s: short read at offset %d: %d of %d bytes", src.f.name(), first*format.BlockSize, m, want)
		}
		for _, ref := range refs {
			s.cache.Release(ref)
		}
		return nil, err
	}
	for i, k := range idx {
		s.cache.Publish(cache.Key{Source: src.id, Block: src.need[k]}, refs[i])
		src.got[k] = bufs[i]
	}
	return refs, nil
}

func extentIndex(p *resolver.Plan, off int64) int {
	lo, hi := 0, len(p.Extents)
	for lo < hi {
		m := (lo + hi) / 2
		if p.Extents[m].Off+p.Extents[m].Len > off {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// bytesResult is a read reply from a buffer. go-fuse writes a vector with
// writev; a plain data result it first tries to splice through a pipe,
// which fails (and logs) for replies near 1 MiB, the size of our reads.
func bytesResult(b []byte) fuse.ReadResult {
	return fuse.ReadResultVector([][]byte{b})
}

// noDropBehind is set once the kernel refuses RWF_DONTCACHE (before 6.14, or
// a file system without it).
var noDropBehind atomic.Bool

// preadUncached reads a backup file without keeping its pages: the data is
// about to live in the block cache and the kernel's cache of the mounted
// file, and a third copy would push the mounted files out of memory on a
// database near the size of RAM. FADV_DONTNEED after the read does not do
// it: it leaves the large folios that straddle the range's ends, which is
// nearly all of them for single blocks. RWF_DONTCACHE drops the folios the
// read brought in once it is done, and leaves those already cached.
func preadUncached(f *os.File, iov [][]byte, off int64) (int, error) {
	if !noDropBehind.Load() {
		n, err := unix.Preadv2(int(f.Fd()), iov, off, unix.RWF_DONTCACHE)
		if err != unix.EOPNOTSUPP && err != unix.EINVAL {
			return n, err
		}
		noDropBehind.Store(true)
	}
	return unix.Preadv(int(f.Fd()), iov, off)
}

// readFull fills b from f at off, uncached, up to the end of the file.
func readFull(f *os.File, b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		m, err := preadUncached(f, [][]byte{b[n:]}, off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}
