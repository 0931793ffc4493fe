package fusefs

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/cache"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
)

// sources reads blocks of backup files through the block cache. Source
// files stay open for the life of the mount; they never change.
type sources struct {
	cache *cache.Cache
	mu    sync.Mutex
	ids   map[string]uint32
	files []*os.File

	readBytes, readCalls, errors atomic.Uint64
}

func newSources(c *cache.Cache) *sources {
	return &sources{cache: c, ids: map[string]uint32{}}
}

func (s *sources) open(path string) (uint32, *os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.ids[path]; ok {
		return id, s.files[id], nil
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	// No readahead: reads are merged spans of exactly the blocks needed,
	// and readahead would bring in (and leave cached, see preadUncached)
	// blocks that newer backups supersede.
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	id := uint32(len(s.files))
	s.ids[path] = id
	s.files = append(s.files, f)
	return id, f, nil
}

func (s *sources) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.Close()
	}
	s.files, s.ids = nil, map[string]uint32{}
}

// zeroBlock backs zero extents; slices of it go to the kernel read-only.
var zeroBlock = make([]byte, format.BlockSize)

// appendRange appends to vecs the bytes [off, off+n) of the file described
// by plan, as slices of cached blocks (and zero blocks).
//
// A reconstructed segment is usually a patchwork of single blocks from
// several backups, so the blocks a request needs are gathered per source
// first: every block is looked up in the cache once, and the missing blocks
// of one source that lie close together are read with a single preadv
// (each into its own block buffer, the gaps between them into scratch),
// instead of one pread per block.
func (s *sources) appendRange(vecs [][]byte, plan *resolver.Plan, off, n int64) ([][]byte, error) {
	type part struct {
		src   *source // nil for zeros
		idx   int     // in src.need
		lo, n int64   // bytes of the block
	}
	var parts []part
	var srcs []*source
	byID := map[uint32]*source{}
	end := off + n
	i := extentIndex(plan, off)
	for pos := off; pos < end; {
		if i >= len(plan.Extents) {
			return vecs, fmt.Errorf("read past the extent map at offset %d", pos)
		}
		e := plan.Extents[i]
		stop := min(end, e.Off+e.Len)
		var src *source
		if e.Layer != resolver.Zeros {
			id, f, err := s.open(e.Src)
			if err != nil {
				return vecs, err
			}
			if src = byID[id]; src == nil {
				src = &source{id: id, f: f}
				byID[id] = src
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
	for _, src := range srcs {
		if err := s.fetch(src); err != nil {
			return vecs, err
		}
	}
	for _, p := range parts {
		if p.src == nil {
			vecs = append(vecs, zeroBlock[p.lo:p.lo+p.n])
			continue
		}
		vecs = append(vecs, p.src.got[p.idx][p.lo:p.lo+p.n])
	}
	return vecs, nil
}

// source is one backup file a read needs blocks of, in the order needed;
// got[i] holds block need[i] once fetched.
type source struct {
	id   uint32
	f    *os.File
	need []int64
	got  [][]byte
}

// Reads of missing blocks of one source are merged when the gap between
// them is at most maxGap blocks, up to maxSpan blocks in one preadv.
const (
	maxGap  = 16
	maxSpan = 256
)

// fetch fills src.got: each block from the cache, or read (and then
// cached).
func (s *sources) fetch(src *source) error {
	src.got = make([][]byte, len(src.need))
	var miss []int // indexes into need
	for i, b := range src.need {
		if v, ok := s.cache.Get(cache.Key{Source: src.id, Block: b}); ok {
			src.got[i] = v
		} else {
			miss = append(miss, i)
		}
	}
	for len(miss) > 0 {
		j := 1
		for j < len(miss) {
			prev, cur := src.need[miss[j-1]], src.need[miss[j]]
			if cur <= prev || cur-prev > maxGap || cur-src.need[miss[0]] >= maxSpan {
				break
			}
			j++
		}
		if err := s.readSpan(src, miss[:j]); err != nil {
			return err
		}
		miss = miss[j:]
	}
	return nil
}

// readSpan reads the blocks need[idx...] (increasing, close together) of
// src with one preadv: the blocks into consecutive slices of one buffer, the
// gaps between them into scratch. The blocks are then cached (a cached block
// keeps its span's buffer alive; blocks of one span are evicted at about the
// same time).
func (s *sources) readSpan(src *source, idx []int) error {
	buf := make([]byte, len(idx)*format.BlockSize)
	iov := make([][]byte, 0, 2*len(idx))
	var scratch []byte
	for i, k := range idx {
		if i > 0 {
			if gap := (src.need[k] - src.need[idx[i-1]] - 1) * format.BlockSize; gap > 0 {
				if scratch == nil {
					scratch = make([]byte, maxGap*format.BlockSize)
				}
				iov = append(iov, scratch[:gap])
			}
		}
		iov = append(iov, buf[i*format.BlockSize:(i+1)*format.BlockSize:(i+1)*format.BlockSize])
	}
	first, last := src.need[idx[0]], src.need[idx[len(idx)-1]]
	want := int(last-first+1) * format.BlockSize
	m, err := preadUncached(src.f, iov, first*format.BlockSize)
	s.readCalls.Add(1)
	s.readBytes.Add(uint64(max(m, 0)))
	if m < want {
		if err == nil {
			err = fmt.Errorf("%s: short read at offset %d: %d of %d bytes", src.f.Name(), first*format.BlockSize, m, want)
		}
		return err
	}
	for i, k := range idx {
		blk := buf[i*format.BlockSize : (i+1)*format.BlockSize : (i+1)*format.BlockSize]
		s.cache.Add(cache.Key{Source: src.id, Block: src.need[k]}, blk)
		src.got[k] = blk
	}
	return nil
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
