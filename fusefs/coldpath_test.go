package fusefs_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/cachedir"
	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// BenchmarkColdRead splits a cold 8 KiB random read of a reconstructed file
// on a read-only mount into its parts (a diagnostic; run it with
// `go test -run '^$' -bench ColdRead ./fusefs`):
//
//   - source: one O_DIRECT pread of 8 KiB from a backup file, what the disk
//     costs; source-buffered: a buffered one after dropping the file's page
//     cache, what a server on a copy of the point pays;
//   - hit: an O_DIRECT read through the mount of a block the block cache
//     holds, the FUSE round trip and the daemon's own work;
//   - miss: the same of a block it does not hold, round trip plus source read;
//   - buffered: a buffered read after the mounted file's page cache is
//     dropped, as a server's read is; "served/read" is the bytes the daemon
//     served per 8 KiB asked, the kernel's readahead of a random read;
//   - cache-dir: the same once the file is complete in a cache directory,
//     read by passthrough.
//
// The file is a 64 MiB segment of a full backup and two incrementals that
// each rewrote a random third of its blocks, so neighbouring blocks come
// from different backups as in a real chain.
func BenchmarkColdRead(b *testing.B) {
	requireFUSE(b)
	const blocks = 8192
	c := resolvertest.NewChain(b)
	rng := rand.New(rand.NewPCG(1, 2))
	var data []byte
	for n := range blocks {
		data = append(data, resolvertest.FillBlock("full", uint32(n))...)
	}
	c.Full().File("base/5/16384", data)
	for _, tag := range []string{"inc1", "inc2"} {
		var bl []resolvertest.Block
		for n := range blocks {
			if rng.IntN(3) == 0 {
				bl = append(bl, resolvertest.Block{Num: uint32(n), Data: resolvertest.FillBlock(tag, uint32(n))})
			}
		}
		c.Incremental().Incremental("base/5/16384", blocks, bl...)
	}
	p := openPoint(b, c.Dirs())
	// Written back, or dropping the page cache would keep the dirty pages.
	syscall.Sync()
	src := filepath.Join(c.Backups[0].Dir, "base/5/16384")
	randBlock := func() int64 { return rng.Int64N(blocks) * bs }

	b.Run("source", func(b *testing.B) {
		f, err := os.OpenFile(src, os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		buf := alignedBlock()
		for b.Loop() {
			if _, err := f.ReadAt(buf, randBlock()); err != nil {
				b.Fatal(err)
			}
		}
	})
	// coldReads reads random blocks of f, each after dropping the page
	// cache of f and of drop (the file under a passthrough one).
	coldReads := func(b *testing.B, f *os.File, drop ...*os.File) {
		buf := make([]byte, bs)
		for b.Loop() {
			b.StopTimer()
			for _, d := range append(drop, f) {
				unix.Fadvise(int(d.Fd()), 0, 0, unix.FADV_DONTNEED)
			}
			off := randBlock()
			b.StartTimer()
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("source-buffered", func(b *testing.B) {
		f, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		coldReads(b, f)
	})
	direct := func(b *testing.B, cacheBytes int64, warm bool) {
		m := mountRO(b, p, fusefs.Options{UID: testUID, GID: testGID, CacheBytes: cacheBytes})
		defer m.unmount(b)
		f, err := os.OpenFile(filepath.Join(m.dir, "base/5/16384"), os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		buf := alignedBlock()
		if warm {
			for off := int64(0); off < blocks*bs; off += bs {
				f.ReadAt(buf, off)
			}
		}
		before := m.Stats()
		for b.Loop() {
			if _, err := f.ReadAt(buf, randBlock()); err != nil {
				b.Fatal(err)
			}
		}
		after := m.Stats()
		b.ReportMetric(float64(after.Cache.Misses-before.Cache.Misses)/float64(b.N), "misses/read")
	}
	b.Run("hit", func(b *testing.B) { direct(b, 2*blocks*bs, true) })
	b.Run("miss", func(b *testing.B) { direct(b, 64<<10, false) })
	b.Run("buffered", func(b *testing.B) {
		m := mountRO(b, p, fusefs.Options{UID: testUID, GID: testGID, CacheBytes: 64 << 10})
		defer m.unmount(b)
		f, err := os.Open(filepath.Join(m.dir, "base/5/16384"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		before := m.Stats()
		coldReads(b, f)
		after := m.Stats()
		b.ReportMetric(float64(after.BytesServed-before.BytesServed)/float64(b.N*bs), "served/read")
		b.ReportMetric(float64(after.SourceReads-before.SourceReads)/float64(b.N), "preads/read")
	})
	b.Run("cache-dir", func(b *testing.B) {
		m, d := mountFilled(b, p, "base/5/16384")
		name := filepath.Join(m.dir, "base/5/16384")
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		plan, _ := pointFile(b, p, "base/5/16384").Plan()
		e, ok := d.Lookup(cachedir.KeyFor(p, "base/5/16384", blocks*bs, plan))
		if !ok || m.Stats().CacheDirOpens != 1 {
			b.Fatalf("the file is not served from the cache directory: %+v", m.Stats())
		}
		under, err := os.Open(e.Path)
		if err != nil {
			b.Fatal(err)
		}
		defer under.Close()
		before := m.Stats()
		coldReads(b, f, under)
		if after := m.Stats(); after.BytesServed != before.BytesServed {
			b.Errorf("the daemon served %d bytes: not passthrough", after.BytesServed-before.BytesServed)
		}
	})
}

func alignedBlock() []byte { return dio.AlignedBuf(bs) }

// BenchmarkOpen measures an open and close of a file, the cost a warm read
// of many files pays per file on a mount: native (a backup file), whole (a
// file of one backup, passthrough), whole-direct (the same without
// passthrough) and cache-dir (a reconstructed file complete in a cache
// directory, passthrough).
func BenchmarkOpen(b *testing.B) {
	requireFUSE(b)
	c := cacheDirChain(b)
	p := openPoint(b, c.Dirs())
	m, _ := mountFilled(b, p, cacheDirFiles[0])
	md := mountRO(b, p, fusefs.Options{UID: testUID, GID: testGID, NoPassthrough: true})
	recon := filepath.Join(m.dir, cacheDirFiles[0])
	openClose := func(name string) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				f, err := os.Open(name)
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		}
	}
	b.Run("native", openClose(filepath.Join(c.Backups[len(c.Backups)-1].Dir, "base/5/16390")))
	b.Run("whole", openClose(filepath.Join(m.dir, "base/5/16390")))
	b.Run("whole-direct", openClose(filepath.Join(md.dir, "base/5/16390")))
	b.Run("cache-dir", openClose(recon))
}
