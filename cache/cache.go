// Package cache is the block cache shared by all open files of a mount: a
// least-recently-used map from (source file, block) to the block's bytes,
// bounded in bytes. Sources are immutable backup files, so an entry never
// goes stale and a cached slice may be handed to the kernel as is.
package cache

import (
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2/simplelru"
)

// Key names one block of one source file. Source is an id the caller
// assigns to each (backup, file) it reads from; Block is the block's offset
// in that file divided by the block size.
type Key struct {
	Source uint32
	Block  int64
}

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

// Cache is safe for concurrent use.
type Cache struct {
	mu       sync.Mutex
	lru      *lru.LRU[Key, []byte]
	bytes    int64
	maxBytes int64

	hits, misses, evictions atomic.Uint64
}

// New makes a cache holding at most maxBytes of block data (at least one
// block is always kept).
func New(maxBytes int64) *Cache {
	c := &Cache{maxBytes: maxBytes}
	// The entry count is bounded by bytes, not by simplelru; give it a
	// size it never reaches and evict by bytes ourselves.
	l, err := lru.NewLRU[Key, []byte](1<<30, func(_ Key, v []byte) {
		c.bytes -= int64(len(v))
		c.evictions.Add(1)
	})
	if err != nil {
		panic(err) // only for a non-positive size
	}
	c.lru = l
	return c
}

// Get returns the cached block and counts a hit or a miss.
func (c *Cache) Get(k Key) ([]byte, bool) {
	c.mu.Lock()
	v, ok := c.lru.Get(k)
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return v, ok
}

// Add stores a block; b must not be modified afterwards.
func (c *Cache) Add(k Key, b []byte) {
	if c.maxBytes <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(k); ok {
		c.bytes -= int64(len(old))
	}
	c.lru.Add(k, b)
	c.bytes += int64(len(b))
	for c.bytes > c.maxBytes && c.lru.Len() > 1 {
		c.lru.RemoveOldest()
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	entries, bytes := c.lru.Len(), c.bytes
	c.mu.Unlock()
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(),
		Entries: entries, Bytes: bytes, MaxBytes: c.maxBytes}
}
