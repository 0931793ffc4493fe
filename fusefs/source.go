package fusefs

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

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
func (s *sources) appendRange(vecs [][]byte, plan *resolver.Plan, off, n int64) ([][]byte, error) {
	end := off + n
	i := extentIndex(plan, off)
	for off < end {
		if i >= len(plan.Extents) {
			return vecs, fmt.Errorf("read past the extent map at offset %d", off)
		}
		e := plan.Extents[i]
		stop := min(end, e.Off+e.Len)
		if e.Layer == resolver.Zeros {
			for off < stop {
				inBlock := off % format.BlockSize
				m := min(stop-off, format.BlockSize-inBlock)
				vecs = append(vecs, zeroBlock[:m])
				off += m
			}
		} else {
			var err error
			vecs, err = s.appendSource(vecs, e.Src, e.SrcOff+(off-e.Off), stop-off)
			if err != nil {
				return vecs, err
			}
			off = stop
		}
		i++
	}
	return vecs, nil
}

// appendSource appends bytes [pos, pos+n) of source file path. Blocks found
// in the cache are used as they are; each run of missing blocks is read with
// one pread and then cached block by block.
func (s *sources) appendSource(vecs [][]byte, path string, pos, n int64) ([][]byte, error) {
	id, f, err := s.open(path)
	if err != nil {
		return vecs, err
	}
	first := pos / format.BlockSize
	last := (pos + n - 1) / format.BlockSize
	blocks := make([][]byte, last-first+1)
	// Look every block up once (so each counts once as a hit or a miss),
	// then read each run of misses with one pread.
	for b := first; b <= last; b++ {
		if v, ok := s.cache.Get(cache.Key{Source: id, Block: b}); ok {
			blocks[b-first] = v
		}
	}
	for b := first; b <= last; {
		if blocks[b-first] != nil {
			b++
			continue
		}
		runEnd := b + 1
		for runEnd <= last && blocks[runEnd-first] == nil {
			runEnd++
		}
		buf := make([]byte, (runEnd-b)*format.BlockSize)
		m, err := f.ReadAt(buf, b*format.BlockSize)
		s.readCalls.Add(1)
		s.readBytes.Add(uint64(m))
		if m < len(buf) {
			if err == nil || err == io.EOF {
				err = fmt.Errorf("%s: short read at offset %d: %d of %d bytes", path, b*format.BlockSize, m, len(buf))
			}
			return vecs, err
		}
		for k := b; k < runEnd; k++ {
			blk := buf[(k-b)*format.BlockSize : (k-b+1)*format.BlockSize : (k-b+1)*format.BlockSize]
			s.cache.Add(cache.Key{Source: id, Block: k}, blk)
			blocks[k-first] = blk
		}
		b = runEnd
	}
	// Trim the first and last block to the requested range.
	blocks[0] = blocks[0][pos-first*format.BlockSize:]
	tail := (pos + n) - last*format.BlockSize
	if len(blocks) == 1 {
		blocks[0] = blocks[0][:n]
	} else {
		blocks[len(blocks)-1] = blocks[len(blocks)-1][:tail]
	}
	return append(vecs, blocks...), nil
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
