package fusefs_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/combinefs/combinefs/cachedir"
	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// cacheDirFiles are the reconstructed files of cacheDirChain, each
// cacheDirBlocks blocks long.
var cacheDirFiles = []string{"base/5/16384", "base/5/16385", "base/5/16386", "base/5/16387"}

const cacheDirBlocks = 24

// cacheDirChain is a full backup and two incrementals; each incremental
// rewrote some blocks of every file of cacheDirFiles (so each is a
// patchwork of three backups), and base/5/16390 stays whole.
func cacheDirChain(t testing.TB) *resolvertest.Chain {
	c := resolvertest.NewChain(t)
	full := c.Full()
	for i, name := range cacheDirFiles {
		var data []byte
		for b := range cacheDirBlocks {
			data = append(data, resolvertest.FillBlock("full"+name, uint32(b+i))...)
		}
		full.File(name, data)
	}
	full.File("base/5/16390", resolvertest.FillBlock("whole", 1))
	for k, tag := range []string{"inc1", "inc2"} {
		inc := c.Incremental()
		for i, name := range cacheDirFiles {
			var bl []resolvertest.Block
			for b := range cacheDirBlocks {
				if (b+i+k)%3 == 0 {
					bl = append(bl, resolvertest.Block{Num: uint32(b), Data: resolvertest.FillBlock(tag+name, uint32(b))})
				}
			}
			inc.Incremental(name, cacheDirBlocks, bl...)
		}
		inc.File("base/5/16390", resolvertest.FillBlock("whole", 1))
	}
	return c
}

// openCacheDir opens dir (closed at the end of the test, after any mount
// registered later is gone).
func openCacheDir(t testing.TB, dir string, limit int64) *cachedir.Dir {
	t.Helper()
	d, err := cachedir.Open(dir, limit)
	if err != nil {
		t.Fatalf("cachedir.Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// mountFilled mounts p read-only with a new cache directory in which the
// file name is complete.
func mountFilled(tb testing.TB, p *resolver.Tree, name string) (*mounted, *cachedir.Dir) {
	tb.Helper()
	d := openCacheDir(tb, filepath.Join(tb.TempDir(), "cache"), 1<<30)
	m := mountRO(tb, p, fusefs.Options{UID: testUID, GID: testGID, CacheDir: d})
	if _, err := os.ReadFile(filepath.Join(m.dir, name)); err != nil {
		tb.Fatal(err)
	}
	m.WaitCacheFills()
	return m, d
}

// checkCachedReads reads names through the mount and compares each with the
// resolver's content of the point.
func checkCachedReads(t *testing.T, m *mounted, p *resolver.Tree, names ...string) {
	t.Helper()
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(m.dir, name))
		want := readResolver(t, pointFile(t, p, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s through the mount: %v, %s", name, err, firstDiff(got, want))
		}
	}
}

func pointFile(t testing.TB, p *resolver.Tree, name string) *resolver.File {
	t.Helper()
	e := p.Root
	for _, part := range strings.Split(name, "/") {
		if e = e.Child(part); e == nil {
			t.Fatalf("%s is not in the point", name)
		}
	}
	return e.File
}

// cachedContent is the content of name's file in the cache directory, or
// nil when it has none.
func cachedContent(t *testing.T, d *cachedir.Dir, p *resolver.Tree, name string) []byte {
	t.Helper()
	f := pointFile(t, p, name)
	plan, err := f.Plan()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := d.Lookup(cachedir.KeyFor(p, name, f.Size(), plan))
	if !ok {
		return nil
	}
	data, err := os.ReadFile(e.Path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// dirFiles lists files/ of a cache directory, and their total size.
func dirFiles(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "files"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var total int64
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, e.Name())
		total += info.Size()
	}
	return names, total
}

// TestCacheDir follows reconstructed files through a cache directory: the
// first open serves them from the backups and fills the directory in the
// background, the next by passthrough from it; a remount reuses them without
// reading the backups; a corrupted file is detected and rebuilt; another
// point's files are never used; the size bound holds, least recently used
// files going first. Every read equals the resolver's content.
func TestCacheDir(t *testing.T) {
	requireFUSE(t)
	c := cacheDirChain(t)
	p := openPoint(t, c.Dirs())
	cdir := filepath.Join(t.TempDir(), "cache")
	fileSize := int64(cacheDirBlocks * bs)
	mount := func(p *resolver.Tree, limit int64) (*mounted, *cachedir.Dir) {
		d := openCacheDir(t, cdir, limit)
		return mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, CacheDir: d}), d
	}
	closeAll := func(m *mounted, d *cachedir.Dir) {
		m.unmount(t)
		d.Close()
	}

	t.Run("fill", func(t *testing.T) {
		m, d := mount(p, 1<<30)
		defer closeAll(m, d)
		if fi, err := os.Stat(cdir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("cache directory made with %v, %v; want mode 0700", fi.Mode(), err)
		}
		checkCachedReads(t, m, p, append(cacheDirFiles, "base/5/16390")...)
		m.WaitCacheFills()
		st := m.Stats()
		if st.ReconOpens != 4 || st.CacheDirOpens != 0 || st.CacheDir.Filled != 4 || st.CacheDir.Files != 4 || st.CacheDir.Bytes != 4*fileSize {
			t.Errorf("after the first reads: %d reconstructed opens, %d from the cache directory, %+v; want 4, 0, 4 files filled of %d bytes",
				st.ReconOpens, st.CacheDirOpens, st.CacheDir, fileSize)
		}
		for _, name := range cacheDirFiles {
			if got, want := cachedContent(t, d, p, name), readResolver(t, pointFile(t, p, name)); !bytes.Equal(got, want) {
				t.Errorf("%s in the cache directory: %s", name, firstDiff(got, want))
			}
		}
		before := m.Stats()
		checkCachedReads(t, m, p, cacheDirFiles...)
		st = m.Stats()
		if st.CacheDirOpens-before.CacheDirOpens != 4 || st.ReconOpens != before.ReconOpens || st.SourceReads != before.SourceReads {
			t.Errorf("second reads: +%d opens from the cache directory, +%d reconstructed, +%d source reads; want +4, 0, 0",
				st.CacheDirOpens-before.CacheDirOpens, st.ReconOpens-before.ReconOpens, st.SourceReads-before.SourceReads)
		}
		if st.PassthroughOpens-before.PassthroughOpens != 4 {
			t.Errorf("second reads: %d passthrough opens, want 4", st.PassthroughOpens-before.PassthroughOpens)
		}
	})

	t.Run("remount", func(t *testing.T) {
		m, d := mount(p, 1<<30)
		defer closeAll(m, d)
		checkCachedReads(t, m, p, cacheDirFiles...)
		m.WaitCacheFills()
		st := m.Stats()
		if st.CacheDirOpens != 4 || st.ReconOpens != 0 || st.SourceReads != 0 || st.CacheDir.Filled != 0 || st.CacheDir.Rejected != 0 {
			t.Errorf("remount: %d opens from the cache directory, %d reconstructed, %d source reads, %+v; want 4, 0, 0, nothing filled or rejected",
				st.CacheDirOpens, st.ReconOpens, st.SourceReads, st.CacheDir)
		}
	})

	t.Run("corrupted", func(t *testing.T) {
		d := openCacheDir(t, cdir, 1<<30)
		victim := "base/5/16385"
		f := pointFile(t, p, victim)
		plan, _ := f.Plan()
		e, ok := d.Lookup(cachedir.KeyFor(p, victim, f.Size(), plan))
		if !ok {
			t.Fatalf("%s is not in the cache directory", victim)
		}
		flip, err := os.OpenFile(e.Path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := flip.WriteAt([]byte{0xA5}, 5*bs+17); err != nil {
			t.Fatal(err)
		}
		flip.Close()
		d.Close()

		m, d := mount(p, 1<<30)
		defer closeAll(m, d)
		checkCachedReads(t, m, p, cacheDirFiles...)
		m.WaitCacheFills()
		st := m.Stats()
		if st.CacheDir.Rejected != 1 || st.CacheDir.Filled != 1 || st.ReconOpens != 1 || st.CacheDirOpens != 3 {
			t.Errorf("with one corrupted file: %+v, %d reconstructed opens, %d from the cache directory; want 1 rejected and filled again, 1, 3",
				st.CacheDir, st.ReconOpens, st.CacheDirOpens)
		}
		if got, want := cachedContent(t, d, p, victim), readResolver(t, f); !bytes.Equal(got, want) {
			t.Errorf("%s rebuilt in the cache directory: %s", victim, firstDiff(got, want))
		}
		checkCachedReads(t, m, p, victim)
	})

	t.Run("other-point", func(t *testing.T) {
		// The point before the last incremental: same paths, other content.
		prev := openPoint(t, c.Dirs()[:2])
		m, d := mount(prev, 1<<30)
		defer closeAll(m, d)
		checkCachedReads(t, m, prev, cacheDirFiles...)
		m.WaitCacheFills()
		st := m.Stats()
		if st.CacheDirOpens != 0 || st.ReconOpens != 4 || st.CacheDir.Filled != 4 || st.CacheDir.Files != 8 {
			t.Errorf("another point: %d opens from the cache directory, %d reconstructed, %+v; want 0, 4, 4 filled, 8 files",
				st.CacheDirOpens, st.ReconOpens, st.CacheDir)
		}
		checkCachedReads(t, m, prev, cacheDirFiles...)
		if st := m.Stats(); st.CacheDirOpens != 4 {
			t.Errorf("another point, second reads: %d opens from the cache directory, want 4", st.CacheDirOpens)
		}
	})

	t.Run("size-bound", func(t *testing.T) {
		// Reopened with room for two files: the 8 there go down to 2.
		limit := 2 * fileSize
		m, d := mount(p, limit)
		defer closeAll(m, d)
		if names, total := dirFiles(t, cdir); len(names) > 2 || total > limit {
			t.Errorf("opened with a bound of %d bytes: %d files of %d bytes", limit, len(names), total)
		}
		// Fill the four files one after the other: each new one evicts the
		// least recently used.
		for _, name := range cacheDirFiles {
			checkCachedReads(t, m, p, name)
			m.WaitCacheFills()
			if names, total := dirFiles(t, cdir); len(names) > 2 || total > limit {
				t.Errorf("after %s: %d files of %d bytes, bound %d", name, len(names), total, limit)
			}
		}
		for i, name := range cacheDirFiles {
			if got := cachedContent(t, d, p, name); (got != nil) != (i >= 2) {
				t.Errorf("%s cached: %v; want only the last two", name, got != nil)
			}
		}
		st := m.Stats()
		if st.CacheDir.Evicted == 0 || st.CacheDir.Bytes > limit || st.CacheDir.Files != 2 {
			t.Errorf("bounded to %d bytes: %+v", limit, st.CacheDir)
		}
		// Evicted under an open file's feet: the reads still come right.
		checkCachedReads(t, m, p, cacheDirFiles...)
	})

	t.Run("too-large", func(t *testing.T) {
		small := filepath.Join(t.TempDir(), "small")
		d := openCacheDir(t, small, fileSize-1)
		m := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, CacheDir: d})
		checkCachedReads(t, m, p, cacheDirFiles...)
		m.WaitCacheFills()
		checkCachedReads(t, m, p, cacheDirFiles...)
		if st := m.Stats(); st.CacheDir.Filled != 0 || st.CacheDir.Files != 0 || st.ReconOpens != 8 {
			t.Errorf("files larger than the bound: %+v, %d reconstructed opens; want nothing cached, 8", st.CacheDir, st.ReconOpens)
		}
		m.unmount(t)
	})
}

// TestCacheDirFillDropsBackupPages: a fill reads the backups through the
// page cache, and leaves none of their block data there.
func TestCacheDirFillDropsBackupPages(t *testing.T) {
	requireFUSE(t)
	c := cacheDirChain(t)
	p := openPoint(t, c.Dirs())
	backups := dropBackupPages(t, c.Root)
	m, _ := mountFilled(t, p, cacheDirFiles[0])
	if st := m.Stats(); st.CacheDir.Filled != 1 {
		t.Fatalf("no fill: %+v", st.CacheDir)
	}
	if got := residentBytes(t, backups); got != 0 {
		t.Errorf("%d bytes of the backups' block data cached after a fill", got)
	}
}

// TestCacheDirFillKilled kills the mount process (-9) at each phase of a
// fill: when the file is written, when it is synced, and when it has been
// renamed into place. Before the rename nothing is in files/ and tmp/ is
// emptied at the next open; after it the file is complete and right. A
// remount then serves the right content, from the directory or refilled.
func TestCacheDirFillKilled(t *testing.T) {
	requireFUSE(t)
	c := cacheDirChain(t)
	p := openPoint(t, c.Dirs())
	name := cacheDirFiles[0]
	want := readResolver(t, pointFile(t, p, name))
	for _, phase := range []string{"written", "synced", "renamed"} {
		t.Run(phase, func(t *testing.T) {
			cdir := filepath.Join(t.TempDir(), "cache")
			mnt := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestCacheDirFillHelper$", "-test.count=1")
			cmd.Env = append(os.Environ(), "COMBINEFS_CACHEDIR_CRASH="+phase, "COMBINEFS_TEST_CHAIN="+strings.Join(c.Dirs(), ":"),
				"COMBINEFS_TEST_CACHEDIR="+cdir, "COMBINEFS_TEST_MNT="+mnt, "COMBINEFS_TEST_FILE="+name)
			out, err := cmd.CombinedOutput()
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the mount process was not killed at %q: %v\n%s", phase, err, out)
			}
			names, _ := dirFiles(t, cdir)
			tmps, _ := os.ReadDir(filepath.Join(cdir, "tmp"))
			switch {
			case phase == "renamed" && len(names) != 1:
				t.Fatalf("killed after the rename: files/ holds %v, want the one file", names)
			case phase != "renamed" && (len(names) != 0 || len(tmps) != 1):
				t.Fatalf("killed before the rename: files/ holds %v and tmp/ %d entries; want none and the one being filled", names, len(tmps))
			}
			if len(names) == 1 {
				if got, _ := os.ReadFile(filepath.Join(cdir, "files", names[0])); !bytes.Equal(got, want) {
					t.Fatalf("the file renamed into place before the kill: %s", firstDiff(got, want))
				}
			}

			d := openCacheDir(t, cdir, 1<<30)
			if tmps, _ := os.ReadDir(filepath.Join(cdir, "tmp")); len(tmps) != 0 {
				t.Errorf("tmp/ holds %d entries after the directory was opened again", len(tmps))
			}
			m := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, CacheDir: d})
			checkCachedReads(t, m, p, name)
			m.WaitCacheFills()
			st := m.Stats()
			if reused := phase == "renamed"; reused != (st.CacheDirOpens == 1) || reused == (st.CacheDir.Filled == 1) {
				t.Errorf("remount after a kill at %q: %d opens from the cache directory, %d filled", phase, st.CacheDirOpens, st.CacheDir.Filled)
			}
			if got := cachedContent(t, d, p, name); !bytes.Equal(got, want) {
				t.Errorf("the file in the cache directory after the remount: %s", firstDiff(got, want))
			}
			m.unmount(t)
		})
	}
}

// TestCacheDirFillHelper is the mount process of TestCacheDirFillKilled:
// it mounts with the cache directory, reads a file, and waits for its fill
// (during which COMBINEFS_CACHEDIR_CRASH kills it).
func TestCacheDirFillHelper(t *testing.T) {
	chain := os.Getenv("COMBINEFS_TEST_CHAIN")
	if chain == "" {
		t.Skip("run by TestCacheDirFillKilled")
	}
	p := openPoint(t, strings.Split(chain, ":"))
	d, err := cachedir.Open(os.Getenv("COMBINEFS_TEST_CACHEDIR"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	mnt := os.Getenv("COMBINEFS_TEST_MNT")
	m, err := fusefs.MountReadOnly(mnt, p, fusefs.Options{UID: testUID, GID: testGID, CacheDir: d})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, os.Getenv("COMBINEFS_TEST_FILE"))); err != nil {
		t.Error(err)
	}
	m.WaitCacheFills()
	m.Unmount()
	d.Close()
}
