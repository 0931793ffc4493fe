package cache

import (
	"bytes"
	"sync"
	"testing"
)

func block(b byte) []byte { return bytes.Repeat([]byte{b}, 8192) }

func TestHitMissEvict(t *testing.T) {
	c := New(3 * 8192)
	for i := 0; i < 3; i++ {
		c.Add(Key{1, int64(i)}, block(byte(i)))
	}
	if v, ok := c.Get(Key{1, 0}); !ok || v[0] != 0 {
		t.Fatalf("block 0 missing")
	}
	// Block 1 is now the least recently used; adding a fourth evicts it.
	c.Add(Key{1, 3}, block(3))
	if _, ok := c.Get(Key{1, 1}); ok {
		t.Fatalf("block 1 should have been evicted")
	}
	for _, b := range []int64{0, 2, 3} {
		if v, ok := c.Get(Key{1, b}); !ok || v[0] != byte(b) {
			t.Fatalf("block %d missing or wrong", b)
		}
	}
	s := c.Stats()
	if s.Hits != 4 || s.Misses != 1 || s.Evictions != 1 || s.Entries != 3 || s.Bytes != 3*8192 {
		t.Fatalf("stats = %+v", s)
	}
	if r := s.HitRate(); r != 0.8 {
		t.Fatalf("hit rate = %v; want 0.8", r)
	}
}

func TestSourcesAreDistinct(t *testing.T) {
	c := New(1 << 20)
	c.Add(Key{1, 5}, block(1))
	c.Add(Key{2, 5}, block(2))
	if v, _ := c.Get(Key{1, 5}); v[0] != 1 {
		t.Fatal("source 1 overwritten")
	}
	if v, _ := c.Get(Key{2, 5}); v[0] != 2 {
		t.Fatal("source 2 wrong")
	}
}

func TestReplaceKeepsByteCount(t *testing.T) {
	c := New(1 << 20)
	c.Add(Key{1, 1}, block(1))
	c.Add(Key{1, 1}, block(2))
	if s := c.Stats(); s.Bytes != 8192 || s.Entries != 1 {
		t.Fatalf("stats after replace = %+v", s)
	}
}

func TestBoundedUnderConcurrency(t *testing.T) {
	const max = 64 * 8192
	c := New(max)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := Key{uint32(g), int64(i % 100)}
				if v, ok := c.Get(k); ok && v[0] != byte(g) {
					t.Errorf("wrong block for %v", k)
					return
				}
				c.Add(k, block(byte(g)))
				if b := c.Stats().Bytes; b > max {
					t.Errorf("cache holds %d bytes, max %d", b, max)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestZeroSizeCachesNothing(t *testing.T) {
	c := New(0)
	c.Add(Key{1, 1}, block(1))
	if _, ok := c.Get(Key{1, 1}); ok {
		t.Fatal("a zero-size cache kept a block")
	}
}
