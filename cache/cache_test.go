package cache

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"github.com/combinefs/combinefs/internal/dio"
)

// put reads a block "into" the cache the way a reader does: Alloc, fill,
// Publish, Release.
func put(c *Cache, k Key, fill byte) {
	r, b := c.Alloc()
	for i := range b {
		b[i] = fill
	}
	c.Publish(k, r)
	c.Release(r)
}

// get returns a copy of the cached block and releases it.
func get(c *Cache, k Key) ([]byte, bool) {
	r, b, ok := c.Get(k)
	if !ok {
		return nil, false
	}
	out := bytes.Clone(b)
	c.Release(r)
	return out, true
}

func TestHitMissEvict(t *testing.T) {
	c := New(3 * BlockSize)
	for i := 0; i < 3; i++ {
		put(c, Key{1, int64(i)}, byte(i))
	}
	if v, ok := get(c, Key{1, 0}); !ok || v[0] != 0 || v[BlockSize-1] != 0 {
		t.Fatalf("block 0 missing")
	}
	// Block 1 is now the least recently used; adding a fourth evicts it.
	put(c, Key{1, 3}, 3)
	if _, ok := get(c, Key{1, 1}); ok {
		t.Fatalf("block 1 should have been evicted")
	}
	for _, b := range []int64{0, 2, 3} {
		if v, ok := get(c, Key{1, b}); !ok || !bytes.Equal(v, bytes.Repeat([]byte{byte(b)}, BlockSize)) {
			t.Fatalf("block %d missing or wrong", b)
		}
	}
	s := c.Stats()
	if s.Hits != 4 || s.Misses != 1 || s.Evictions != 1 || s.Entries != 3 || s.Bytes != 3*BlockSize {
		t.Fatalf("stats = %+v", s)
	}
	if r := s.HitRate(); r != 0.8 {
		t.Fatalf("hit rate = %v; want 0.8", r)
	}
}

func TestSourcesAreDistinct(t *testing.T) {
	c := New(1 << 20)
	put(c, Key{1, 5}, 1)
	put(c, Key{2, 5}, 2)
	if v, _ := get(c, Key{1, 5}); v[0] != 1 {
		t.Fatal("source 1 overwritten")
	}
	if v, _ := get(c, Key{2, 5}); v[0] != 2 {
		t.Fatal("source 2 wrong")
	}
}

// Two readers that missed the same block both read it; the first to
// publish is cached, the other's buffer goes back to the free slots.
func TestPublishTwiceKeepsOne(t *testing.T) {
	c := New(4 * BlockSize)
	r1, b1 := c.Alloc()
	r2, b2 := c.Alloc()
	b1[0], b2[0] = 1, 2
	c.Publish(Key{1, 1}, r1)
	c.Publish(Key{1, 1}, r2)
	c.Release(r1)
	c.Release(r2)
	if s := c.Stats(); s.Bytes != BlockSize || s.Entries != 1 {
		t.Fatalf("stats after a second publish = %+v", s)
	}
	if v, _ := get(c, Key{1, 1}); v[0] != 1 {
		t.Fatalf("cached block %d, want the first published", v[0])
	}
	// The second buffer is reused before any eviction.
	put(c, Key{1, 2}, 3)
	put(c, Key{1, 3}, 4)
	put(c, Key{1, 4}, 5)
	if s := c.Stats(); s.Evictions != 0 || s.Entries != 4 {
		t.Fatalf("stats = %+v; want 4 blocks and no eviction", s)
	}
}

// A pinned block is never evicted nor its buffer reused: the kernel may
// still be copying it. With every slot pinned, Alloc hands out a buffer of
// its own.
func TestPinnedBlocksStay(t *testing.T) {
	c := New(2 * BlockSize)
	put(c, Key{1, 0}, 7)
	r0, b0, ok := c.Get(Key{1, 0}) // pinned from here
	if !ok {
		t.Fatal("block 0 missing")
	}
	for i := int64(1); i < 10; i++ {
		put(c, Key{1, i}, byte(i))
	}
	if b0[0] != 7 || b0[BlockSize-1] != 7 {
		t.Fatalf("a pinned block's buffer was reused")
	}
	if _, ok := get(c, Key{1, 0}); !ok {
		t.Fatalf("a pinned block was evicted")
	}
	r1, _ := c.Alloc()
	r2, b2 := c.Alloc()
	if r1 == NoSlot || r2 != NoSlot || len(b2) != BlockSize {
		t.Fatalf("with every slot pinned: refs %d, %d", r1, r2)
	}
	c.Publish(Key{9, 9}, r2) // no slot: nothing cached
	c.Release(r2)
	c.Release(r1)
	c.Release(r0)
	if _, ok := get(c, Key{9, 9}); ok {
		t.Fatalf("a buffer outside the arena was cached")
	}
}

func TestBuffersAreAligned(t *testing.T) {
	c := New(300 * BlockSize)
	for i := 0; i < 300; i++ {
		r, b := c.Alloc()
		if p := uintptr(unsafe.Pointer(unsafe.SliceData(b))); p%dio.Align != 0 || len(b) != BlockSize || cap(b) != BlockSize {
			t.Fatalf("slot %d: address %#x, len %d, cap %d", r, p, len(b), cap(b))
		}
	}
	for _, n := range []int{1, 100, BlockSize, 3 * BlockSize} {
		if p := uintptr(unsafe.Pointer(unsafe.SliceData(dio.AlignedBuf(n)))); p%dio.Align != 0 {
			t.Fatalf("AlignedBuf(%d) at %#x", n, p)
		}
	}
}

func TestBoundedUnderConcurrency(t *testing.T) {
	const max = 64 * BlockSize
	c := New(max)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := 0; i < 2000; i++ {
				k := Key{uint32(g), int64(i % 100)}
				if r, v, ok := c.Get(k); ok {
					bad := v[0] != byte(g) || v[BlockSize-1] != byte(i%100)
					c.Release(r)
					if bad {
						t.Errorf("wrong block for %v", k)
						return
					}
					continue
				}
				r, b := c.Alloc()
				for j := range b {
					b[j] = byte(g)
				}
				b[BlockSize-1] = byte(i % 100)
				c.Publish(k, r)
				c.Release(r)
				if b := c.Stats().Bytes; b > max {
					t.Errorf("cache holds %d bytes, max %d", b, max)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestZeroSizeCachesNothing(t *testing.T) {
	c := New(0)
	put(c, Key{1, 1}, 1)
	if _, ok := get(c, Key{1, 1}); ok {
		t.Fatal("a zero-size cache kept a block")
	}
}

func TestReleaseOfUnpinnedPanics(t *testing.T) {
	c := New(BlockSize)
	r, _ := c.Alloc()
	c.Release(r)
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	c.Release(r)
}

// TestTrim: Trim empties the cache but keeps a pinned block's buffer (and
// entry) intact; once nothing is pinned it drops the arena, and the cache
// fills again afterwards.
func TestTrim(t *testing.T) {
	c := New(4 * BlockSize)
	for i := 0; i < 4; i++ {
		put(c, Key{1, int64(i)}, byte(i+1))
	}
	r, b, ok := c.Get(Key{1, 2})
	if !ok {
		t.Fatal("block 2 missing")
	}
	if c.Trim() {
		t.Errorf("Trim with a pinned block dropped the arena")
	}
	if b[0] != 3 || b[BlockSize-1] != 3 {
		t.Errorf("pinned block changed by Trim: %d", b[0])
	}
	if _, ok := get(c, Key{1, 0}); ok {
		t.Errorf("unpinned block 0 still cached after Trim")
	}
	// The freed slots are reused, the pinned one is not.
	for i := 10; i < 13; i++ {
		put(c, Key{1, int64(i)}, 9)
	}
	if b[0] != 3 {
		t.Errorf("pinned block overwritten after Trim")
	}
	c.Release(r)
	if !c.Trim() {
		t.Errorf("Trim with nothing pinned kept the arena")
	}
	if s := c.Stats(); s.Entries != 0 || len(c.chunks) != 0 {
		t.Errorf("after Trim: %d entries, %d chunks; want none", s.Entries, len(c.chunks))
	}
	for i := 0; i < 6; i++ {
		put(c, Key{2, int64(i)}, byte(i+1))
	}
	for i := 2; i < 6; i++ {
		if v, ok := get(c, Key{2, int64(i)}); !ok || v[0] != byte(i+1) {
			t.Errorf("block %d after refilling: %v %v", i, ok, v[:1])
		}
	}
	if s := c.Stats(); s.Entries != 4 {
		t.Errorf("refilled cache holds %d blocks, want its bound 4", s.Entries)
	}
}

// TestArenaOutsideHeap: a full cache adds next to nothing to the Go heap,
// whose collector would otherwise count it against the mount's memory
// limit and run without end once the cache filled.
func TestArenaOutsideHeap(t *testing.T) {
	const size = 64 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := New(size)
	if c.arena == nil {
		t.Fatal("the arena was not mapped")
	}
	for i := range size / BlockSize {
		put(c, Key{1, int64(i)}, byte(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if s := c.Stats(); s.Bytes != size {
		t.Fatalf("cache holds %d bytes, want %d", s.Bytes, size)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > size/8 {
		t.Errorf("the heap grew by %d bytes for a %d-byte cache", grew, size)
	}
	for _, i := range []int{0, 4097, size/BlockSize - 1} {
		if v, ok := get(c, Key{1, int64(i)}); !ok || v[0] != byte(i) || v[BlockSize-1] != byte(i) {
			t.Errorf("block %d: cached %v, first byte %v", i, ok, v)
		}
	}
	runtime.KeepAlive(c)
}

// TestClose: Close unmaps the arena only with nothing pinned; a closed
// cache caches nothing and still hands out buffers.
func TestClose(t *testing.T) {
	c := New(4 * BlockSize)
	put(c, Key{1, 0}, 7)
	r, b, ok := c.Get(Key{1, 0})
	if !ok {
		t.Fatal("block 0 missing")
	}
	c.Close()
	if c.arena == nil || b[0] != 7 {
		t.Fatalf("Close with a pinned block unmapped the arena or changed the block")
	}
	c.Release(r)
	c.Close()
	if c.arena != nil {
		t.Fatal("Close with nothing pinned kept the arena")
	}
	if s := c.Stats(); s.Entries != 1 {
		t.Errorf("after Close, Stats report %d entries, want the last figure, 1", s.Entries)
	}
	if _, ok := get(c, Key{1, 0}); ok {
		t.Error("a closed cache still returned a block")
	}
	r, b = c.Alloc()
	if r != NoSlot || len(b) != BlockSize {
		t.Errorf("a closed cache's Alloc: ref %d, %d bytes; want NoSlot, one block", r, len(b))
	}
	c.Publish(Key{1, 1}, r)
	if _, ok := get(c, Key{1, 1}); ok {
		t.Error("a closed cache cached a block published after Close")
	}
}
