// Package cache is the block cache shared by all open files of a mount: a
// least-recently-used map from (source file, block) to the block's bytes,
// bounded in bytes. Sources are immutable backup files, so an entry never
// goes stale and a cached block may be handed to the kernel as is.
//
// The blocks live in a fixed arena of block-sized slots, used as the cache
// fills and then reused: a read of a 1.5 GB database allocated 2.8 GB of
// block buffers when each read had its own, and with the heap capped near
// the cache size the garbage collector ran dozens of times and took more
// CPU than the reads. Slots are pinned while a reply uses them, so an
// eviction never reuses a buffer the kernel has yet to copy.
//
// The arena is mapped outside the Go heap, as pebble keeps its block cache:
// in the heap, a full cache left the mount's memory limit (cache plus a
// fixed overhead) no room, and hydrating 6 GB collected every 10 ms, half
// the daemon's CPU. Outside it, the heap is the mount's small working set
// and is collected at the usual pace.
package cache

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
)

// BlockSize is the size of every cached block.
const BlockSize = format.BlockSize

// Key names one block of one source file. Source is an id the caller
// assigns to each (backup, file) it reads from; Block is the block's offset
// in that file divided by the block size.
type Key struct {
	Source uint32
	Block  int64
}

// Ref is a pinned block buffer: a slot of the arena, or NoSlot for a buffer
// of its own (a disabled cache, or every slot pinned).
type Ref int32

// NoSlot is the Ref of a buffer outside the arena.
const NoSlot Ref = -1

// Stats are the cache's counters since it was made.
type Stats struct {
	Hits, Misses, Evictions uint64
	Entries                 int
	Bytes, MaxBytes         int64
}

// HitRate is hits / (hits + misses), 0 when nothing was looked up.
func (s Stats) HitRate() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

// slotsPerChunk slots are allocated at a time (1 MiB).
const slotsPerChunk = 128

// Cache is safe for concurrent use.
type Cache struct {
	mu       sync.Mutex
	maxSlots int32
	maxBytes int64
	arena    []byte // mapped for maxSlots blocks; nil: chunks from the heap
	closed   bool   // Close unmapped the slots' buffers
	chunks   [][]byte
	index    map[Key]int32
	slots    []slot
	free     []int32 // allocated slots holding no block
	head     int32   // most recently used cached slot, -1 if none
	tail     int32   // least recently used

	hits, misses, evictions atomic.Uint64
}

type slot struct {
	key        Key
	pins       int32
	cached     bool  // in index and in the LRU list
	prev, next int32 // LRU list, toward head and toward tail
}

// New makes a cache holding at most maxBytes of block data (at least one
// block unless maxBytes <= 0, which caches nothing).
func New(maxBytes int64) *Cache {
	c := &Cache{maxBytes: maxBytes, index: map[Key]int32{}, head: -1, tail: -1}
	if maxBytes > 0 {
		c.maxSlots = int32(min(max(maxBytes/BlockSize, 1), 1<<30))
		// Address space only: pages are backed as slots are first used.
		a, err := unix.Mmap(-1, 0, int(c.maxSlots)*BlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err == nil {
			c.arena = a
		}
	}
	return c
}

// newChunk returns the buffer of k slots from slot n on.
func (c *Cache) newChunk(n int32, k int) []byte {
	if c.arena == nil {
		return dio.AlignedBuf(k * BlockSize)
	}
	off := int(n) * BlockSize
	return c.arena[off : off+k*BlockSize : off+k*BlockSize]
}

// Close unmaps the arena, unless a block is still pinned (the arena then
// stays until the process exits). Later calls cache nothing; Stats keep
// their last figures, for the mount's final stats.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.slots {
		if c.slots[s].pins > 0 {
			return
		}
	}
	c.closed = true
	c.chunks, c.free = nil, nil
	if c.arena != nil {
		unix.Munmap(c.arena)
		c.arena = nil
	}
}

func (c *Cache) data(s int32) []byte {
	ch := c.chunks[s/slotsPerChunk]
	off := int(s%slotsPerChunk) * BlockSize
	return ch[off : off+BlockSize : off+BlockSize]
}

// Get returns the cached block, pinned until Release, and counts a hit or
// a miss.
func (c *Cache) Get(k Key) (Ref, []byte, bool) {
	c.mu.Lock()
	s, ok := c.index[k]
	ok = ok && !c.closed
	var b []byte
	if ok {
		c.slots[s].pins++
		c.unlink(s)
		c.pushFront(s)
		b = c.data(s)
	}
	c.mu.Unlock()
	if !ok {
		c.misses.Add(1)
		return NoSlot, nil, false
	}
	c.hits.Add(1)
	return Ref(s), b, true
}

// Alloc returns a pinned buffer of BlockSize bytes, aligned for direct I/O,
// to read a block into: a free slot, a new one while the arena is below the
// limit, or the least recently used unpinned block's, evicted.
func (c *Cache) Alloc() (Ref, []byte) {
	c.mu.Lock()
	s := c.takeSlot()
	if s < 0 {
		c.mu.Unlock()
		return NoSlot, dio.AlignedBuf(BlockSize)
	}
	c.slots[s].pins = 1
	b := c.data(s)
	c.mu.Unlock()
	return Ref(s), b
}

func (c *Cache) takeSlot() int32 {
	if c.closed {
		return -1
	}
	if n := len(c.free); n > 0 {
		s := c.free[n-1]
		c.free = c.free[:n-1]
		return s
	}
	if n := int32(len(c.slots)); n < c.maxSlots {
		if int(n) == len(c.chunks)*slotsPerChunk {
			k := min(slotsPerChunk, int(c.maxSlots-n))
			c.chunks = append(c.chunks, c.newChunk(n, k))
		}
		c.slots = append(c.slots, slot{prev: -1, next: -1})
		return n
	}
	for s := c.tail; s >= 0; s = c.slots[s].prev {
		if c.slots[s].pins == 0 {
			c.unlink(s)
			delete(c.index, c.slots[s].key)
			c.slots[s].cached = false
			c.evictions.Add(1)
			return s
		}
	}
	return -1
}

// Publish caches under k the block just read into r's buffer, which must
// not change afterwards. If another reader cached k meanwhile, r's buffer
// is not cached and returns to the free slots on Release.
func (c *Cache) Publish(k Key, r Ref) {
	if r == NoSlot {
		return
	}
	s := int32(r)
	c.mu.Lock()
	if _, ok := c.index[k]; !ok {
		c.index[k] = s
		c.slots[s].key = k
		c.slots[s].cached = true
		c.pushFront(s)
	}
	c.mu.Unlock()
}

// Release unpins r: its buffer may be reused from now on.
func (c *Cache) Release(r Ref) {
	if r == NoSlot {
		return
	}
	s := int32(r)
	c.mu.Lock()
	sl := &c.slots[s]
	sl.pins--
	if sl.pins < 0 {
		c.mu.Unlock()
		panic("cache: Release of an unpinned block")
	}
	if sl.pins == 0 && !sl.cached {
		c.free = append(c.free, s)
	}
	c.mu.Unlock()
}

func (c *Cache) unlink(s int32) {
	sl := &c.slots[s]
	if sl.prev >= 0 {
		c.slots[sl.prev].next = sl.next
	} else {
		c.head = sl.next
	}
	if sl.next >= 0 {
		c.slots[sl.next].prev = sl.prev
	} else {
		c.tail = sl.prev
	}
	sl.prev, sl.next = -1, -1
}

func (c *Cache) pushFront(s int32) {
	sl := &c.slots[s]
	sl.prev, sl.next = -1, c.head
	if c.head >= 0 {
		c.slots[c.head].prev = s
	}
	c.head = s
	if c.tail < 0 {
		c.tail = s
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	entries := len(c.index)
	c.mu.Unlock()
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(),
		Entries: entries, Bytes: int64(entries) * BlockSize, MaxBytes: c.maxBytes}
}

// Trim empties the cache and, when no block is pinned, gives its arena's
// memory back; it fills again as blocks are read. A mount whose
// files have all become local (hydration complete) reads no more blocks,
// and an arena kept full of them would hold memory the server's page cache
// could use. It reports whether the arena went.
func (c *Cache) Trim() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pinned := false
	for s := range c.slots {
		sl := &c.slots[s]
		if sl.pins > 0 {
			pinned = true
			continue
		}
		if sl.cached {
			c.unlink(int32(s))
			delete(c.index, sl.key)
			sl.cached = false
			c.evictions.Add(1)
		}
	}
	if pinned {
		c.free = c.free[:0]
		for s := range c.slots {
			if c.slots[s].pins == 0 {
				c.free = append(c.free, int32(s))
			}
		}
		return false
	}
	c.chunks, c.slots, c.free = nil, nil, nil
	c.index = map[Key]int32{}
	c.head, c.tail = -1, -1
	if c.arena != nil {
		// The mapping stays for the slots to fill again; its pages go.
		unix.Madvise(c.arena, unix.MADV_DONTNEED)
	}
	return true
}
