package fusefs_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

const (
	testUID = 4321
	testGID = 8765
)

// TestReadOnlySynthetic mounts random synthetic chains read-only and checks
// the tree, stat, every byte of every file (whole reads, random preads
// through the page cache and with O_DIRECT, reads past EOF) against both the
// resolver's own Reader and an independent model of pg_combinebackup's
// reconstruction, passthrough against no passthrough, EROFS for every kind
// of write, and concurrent readers.
func TestReadOnlySynthetic(t *testing.T) {
	requireFUSE(t)
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			s := buildSynth(t, seed, 3+int(seed%3), 24)
			p := openPoint(t, s.dirs)
			before := hashTree(t, s.c.Root)
			checkSynthAgainstResolver(t, s, p)

			m := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, CacheBytes: 256 << 10})
			checkROTree(t, s, p, m.dir)
			if st := m.Stats(); st.SourceReads != 0 || st.SourceBytes != 0 || st.Cache.Hits+st.Cache.Misses != 0 || st.WholeOpens+st.ReconOpens != 0 {
				t.Errorf("listing and stat of the tree read data: %+v", st)
			}
			checkROManifest(t, s, p, m.dir)

			t.Run("whole-reads", func(t *testing.T) { checkWholeReads(t, s, m.dir) })
			t.Run("preads", func(t *testing.T) { checkPreads(t, s, p, m.dir, seed, false) })
			st := m.Stats()
			if st.PassthroughOpens == 0 || st.WholeOpens == 0 || st.ReconOpens == 0 || st.IOErrors != 0 {
				t.Errorf("after reading every file: %+v; want whole, reconstructed and passthrough opens, no errors", st)
			}

			// The same point without passthrough: the daemon serves whole
			// files too, so O_DIRECT reads at any offset reach it.
			np := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, NoPassthrough: true, CacheBytes: 256 << 10})
			t.Run("no-passthrough", func(t *testing.T) {
				a, b := snapshot(t, m.dir, true), snapshot(t, np.dir, true)
				if d := diffSnapshots(a, b); len(d) > 0 {
					t.Errorf("passthrough and no-passthrough mounts differ:\n%s", strings.Join(d, "\n"))
				}
				checkPreads(t, s, p, np.dir, seed, true)
				if st := np.Stats(); st.PassthroughOpens != 0 || st.WholeOpens == 0 {
					t.Errorf("NoPassthrough mount: %+v", st)
				}
			})
			t.Run("erofs", func(t *testing.T) { checkEROFS(t, s, m.dir) })
			t.Run("concurrent", func(t *testing.T) { checkConcurrentReads(t, s, np.dir, seed) })
			if st := np.Stats(); st.Cache.Bytes > st.Cache.MaxBytes || st.IOErrors != 0 {
				t.Errorf("after concurrent reads: %+v", st)
			}
			m.unmount(t)
			np.unmount(t)
			checkUnchanged(t, before, hashTree(t, s.c.Root))
		})
	}
}

// checkSynthAgainstResolver compares the model with the resolver's Reader
// for every file of the point, so that a failure through the mount is not a
// model or resolver disagreement.
func checkSynthAgainstResolver(t *testing.T, s *synth, p *resolver.Tree) {
	t.Helper()
	seen := map[string]bool{}
	err := p.Walk(func(rel string, e *resolver.Entry) error {
		if e.Kind != resolver.KindFile {
			return nil
		}
		seen[rel] = true
		got := readResolver(t, e.File)
		want, ok := s.want[rel]
		switch {
		case !ok:
			t.Errorf("the resolver has %s, which the model does not", rel)
		case !bytes.Equal(got, want):
			t.Errorf("model and resolver disagree on %s: %s", rel, firstDiff(got, want))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel := range s.want {
		if !seen[rel] {
			t.Errorf("the model has %s, which the resolver does not", rel)
		}
	}
	// The chain must exercise what the test is about.
	var wholeOld, multi, zeros, tsRecon, odd int
	p.Walk(func(rel string, e *resolver.Entry) error {
		if e.Kind != resolver.KindFile {
			return nil
		}
		plan, err := e.File.Plan()
		if err != nil {
			t.Fatalf("plan %s: %v", rel, err)
		}
		if plan.Whole && plan.WholeLayer < len(s.dirs)-1 {
			wholeOld++
		}
		if e.File.Size()%bs != 0 {
			odd++
		}
		layers := map[int]bool{}
		for _, x := range plan.Extents {
			layers[x.Layer] = true
			if x.Layer == resolver.Zeros {
				zeros++
			}
		}
		if !plan.Whole && len(layers) >= 3 {
			multi++
			if strings.HasPrefix(rel, "pg_tblspc/") {
				tsRecon++
			}
		}
		return nil
	})
	if wholeOld == 0 || multi == 0 || zeros == 0 || tsRecon == 0 || odd == 0 || len(p.Tablespaces) != 2 {
		t.Fatalf("the synthetic chain lacks cases: %d whole from older backups, %d from 3+ sources (%d in tablespaces), %d zero extents, %d odd sizes, %d tablespaces",
			wholeOld, multi, tsRecon, zeros, odd, len(p.Tablespaces))
	}
	t.Logf("%d files: %d whole from older backups, %d from 3+ sources (%d in tablespaces), %d zero extents, %d odd sizes", len(s.want), wholeOld, multi, tsRecon, zeros, odd)
	if !bytes.Equal(p.Label, s.label) {
		t.Errorf("point label %q, want %q", p.Label, s.label)
	}
}

func readResolver(t *testing.T, f *resolver.File) []byte {
	t.Helper()
	r, err := f.Open()
	if err != nil {
		t.Fatalf("resolver Open %s: %v", f.Path, err)
	}
	defer r.Close()
	data := make([]byte, r.Size())
	if n, err := r.ReadAt(data, 0); n != len(data) {
		t.Fatalf("resolver ReadAt %s: %d of %d bytes: %v", f.Path, n, len(data), err)
	}
	return data
}

// checkROTree compares the mounted tree with the point and the model: names,
// kinds, sizes, modes, owners and times; backup_label stripped;
// backup_manifest there (its content: checkROManifest).
func checkROTree(t *testing.T, s *synth, p *resolver.Tree, dir string) {
	t.Helper()
	dirMode, fileMode := fs.FileMode(0o700), fs.FileMode(0o600)
	if s.group {
		dirMode, fileMode = 0o750, 0o640
	}
	if p.DirMode != dirMode || p.FileMode != fileMode {
		t.Errorf("point modes %v/%v, want %v/%v", p.DirMode, p.FileMode, dirMode, fileMode)
	}

	// What the mount must hold, from the model: its files, backup_label and
	// the directories above them (plus those every backup has).
	// Tablespaces are under fusefs.TablespaceDir, linked from pg_tblspc.
	wantFiles := map[string]int64{"backup_label": int64(len(s.label)), "backup_manifest": -1}
	wantDirs := map[string]bool{"": true, "base": true, "global": true, "pg_tblspc": true, "pg_wal": true}
	wantLinks := map[string]string{}
	for _, ts := range p.Tablespaces {
		wantLinks["pg_tblspc/"+ts.Root.Name] = "../" + fusefs.TablespaceDir + "/" + ts.Root.Name
		wantDirs[mrel("pg_tblspc/"+ts.Root.Name)] = true
	}
	for rel, data := range s.want {
		rel = mrel(rel)
		wantFiles[rel] = int64(len(data))
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			wantDirs[d] = true
		}
	}
	// And the point's own view of times.
	mtimes := map[string]time.Time{}
	p.Walk(func(rel string, e *resolver.Entry) error {
		if e.Kind == resolver.KindFile {
			mtimes[mrel(rel)] = e.ModTime
		}
		return nil
	})

	got := map[string]bool{}
	err := filepath.WalkDir(dir, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, full)
		if rel == "." {
			rel = ""
		}
		got[rel] = true
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			return err
		}
		if st.Uid != testUID || st.Gid != testGID {
			t.Errorf("%q: owner %d:%d, want %d:%d", rel, st.Uid, st.Gid, testUID, testGID)
		}
		perm := fs.FileMode(st.Mode & 0o7777)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if !wantDirs[rel] {
				t.Errorf("unexpected directory %q", rel)
			}
			if perm != dirMode {
				t.Errorf("directory %q: mode %v, want %v", rel, perm, dirMode)
			}
		case unix.S_IFREG:
			size, ok := wantFiles[rel]
			if !ok {
				t.Errorf("unexpected file %q", rel)
				return nil
			}
			if st.Size != size && size >= 0 {
				t.Errorf("%q: size %d, want %d", rel, st.Size, size)
			}
			if perm != fileMode {
				t.Errorf("%q: mode %v, want %v", rel, perm, fileMode)
			}
			if mt, ok := mtimes[rel]; ok && !time.Unix(st.Mtim.Unix()).Equal(mt) {
				t.Errorf("%q: mtime %v, want the final backup's %v", rel, time.Unix(st.Mtim.Unix()), mt)
			}
			if st.Blocks*512 < st.Size {
				t.Errorf("%q: %d blocks for %d bytes", rel, st.Blocks, st.Size)
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(full)
			if want, ok := wantLinks[rel]; !ok || err != nil || target != want {
				t.Errorf("symlink %q to %q (%v); want %q", rel, target, err, wantLinks[rel])
			}
		default:
			t.Errorf("%q: unexpected type %o", rel, st.Mode&unix.S_IFMT)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the mount: %v", err)
	}
	for rel := range wantLinks {
		if !got[rel] {
			t.Errorf("symlink %q is missing from the mount", rel)
		}
	}
	for rel := range wantFiles {
		if !got[rel] {
			t.Errorf("file %q is missing from the mount", rel)
		}
	}
	for rel := range wantDirs {
		if !got[rel] {
			t.Errorf("directory %q is missing from the mount", rel)
		}
	}
	for _, name := range []string{"INCREMENTAL.16385", "base/5/INCREMENTAL.16385"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s: %v; want it absent", name, err)
		}
	}
	// Directory listings in the order and with the types of the point.
	checkListing := func(rel string, e *resolver.Entry) {
		ents, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			t.Errorf("readdir %q: %v", rel, err)
			return
		}
		var gotNames, wantNames []string
		for _, de := range ents {
			gotNames = append(gotNames, fmt.Sprintf("%s:%v", de.Name(), de.IsDir()))
		}
		for _, c := range e.Children {
			wantNames = append(wantNames, fmt.Sprintf("%s:%v", c.Name, c.Kind == resolver.KindDir))
		}
		if rel == "" {
			wantNames = append(wantNames, "backup_label:false", "backup_manifest:false")
			if len(p.Tablespaces) > 0 {
				wantNames = append(wantNames, fusefs.TablespaceDir+":true")
			}
		}
		if rel == "pg_tblspc" {
			for _, ts := range p.Tablespaces {
				wantNames = append(wantNames, ts.Root.Name+":false")
			}
		}
		sort.Strings(wantNames)
		if strings.Join(gotNames, " ") != strings.Join(wantNames, " ") {
			t.Errorf("readdir %q:\n got %v\nwant %v", rel, gotNames, wantNames)
		}
	}
	p.Walk(func(rel string, e *resolver.Entry) error {
		if e.Kind == resolver.KindDir {
			checkListing(rel, e)
		}
		return nil
	})
	label, err := os.ReadFile(filepath.Join(dir, "backup_label"))
	if err != nil || !bytes.Equal(label, s.label) {
		t.Errorf("backup_label through the mount: %q, %v; want %q", label, err, s.label)
	}
	if bytes.Contains(label, []byte("INCREMENTAL")) {
		t.Errorf("backup_label keeps INCREMENTAL lines: %q", label)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil || sfs.Blocks == 0 {
		t.Errorf("statfs: %+v, %v", sfs, err)
	}
}

// checkWholeReads reads every file whole, twice (the second time from the
// kernel's page cache, which must not reach the daemon for immutable data).
func checkWholeReads(t *testing.T, s *synth, dir string) {
	for _, rel := range sortedKeys(s.want) {
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Errorf("read %s: %v", rel, err)
			continue
		}
		if !bytes.Equal(got, s.want[rel]) {
			t.Errorf("%s (role %q) through the mount differs from the model: %s", rel, s.roles[rel], firstDiff(got, s.want[rel]))
		}
	}
}

// checkPreads reads random ranges of every file: unaligned, across extent
// boundaries, and past the end. With direct set, files are opened with
// O_DIRECT so that every read reaches the daemon with its own offset and
// length.
func checkPreads(t *testing.T, s *synth, p *resolver.Tree, dir string, seed uint64, direct bool) {
	rng := rand.New(rand.NewPCG(seed, 77))
	files := map[string]*resolver.File{}
	p.Walk(func(rel string, e *resolver.Entry) error {
		if e.Kind == resolver.KindFile {
			files[rel] = e.File
		}
		return nil
	})
	for _, rel := range sortedKeys(s.want) {
		want := s.want[rel]
		size := int64(len(want))
		flags := os.O_RDONLY
		if direct {
			flags |= syscall.O_DIRECT
		}
		f, err := os.OpenFile(filepath.Join(dir, rel), flags, 0)
		if err != nil {
			t.Errorf("open %s: %v", rel, err)
			continue
		}
		type rng2 struct {
			off int64
			n   int
		}
		var ranges []rng2
		// Extent boundaries, from the resolver's plan.
		if rf := files[rel]; rf != nil {
			if plan, err := rf.Plan(); err == nil {
				for _, e := range plan.Extents {
					if e.Off > 0 {
						ranges = append(ranges, rng2{e.Off - 1 - int64(rng.IntN(100)), 2 + rng.IntN(3*bs)})
					}
				}
			}
		}
		for range 12 {
			ranges = append(ranges, rng2{rng.Int64N(size + 1), 1 + rng.IntN(3*bs)})
		}
		ranges = append(ranges, rng2{0, int(size) + 100}, rng2{size, 10}, rng2{size + 5000, 100}, rng2{max(size-7, 0), 4096})
		for _, r := range ranges {
			r.off = max(r.off, 0)
			exp := slice(want, r.off, r.n)
			var got []byte
			if direct {
				got, err = pread(f, r.n, r.off)
				if err == nil && len(got) < len(exp) {
					// One read may be short; the rest must follow.
					more, err2 := readFull(f, r.n-len(got), r.off+int64(len(got)))
					got, err = append(got, more...), err2
				}
			} else {
				got, err = readFull(f, r.n, r.off)
			}
			if err != nil {
				t.Errorf("%s: read %d at %d (direct %v): %v", rel, r.n, r.off, direct, err)
				continue
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("%s: read %d at %d (direct %v): %s", rel, r.n, r.off, direct, firstDiff(got, exp))
			}
		}
		f.Close()
	}
}

// checkEROFS tries every kind of write; each must fail with EROFS and leave
// the tree as it was.
func checkEROFS(t *testing.T, s *synth, dir string) {
	file := filepath.Join(dir, "base/5/16385")
	whole := filepath.Join(dir, "base/5/16384")
	label := filepath.Join(dir, "backup_label")
	before := snapshot(t, dir, true)
	ops := []struct {
		name string
		op   func() error
	}{
		{"open O_WRONLY", func() error { return openClose(file, os.O_WRONLY) }},
		{"open O_RDWR", func() error { return openClose(whole, os.O_RDWR) }},
		{"open O_RDWR backup_label", func() error { return openClose(label, os.O_RDWR) }},
		{"open O_CREAT new", func() error { return openClose(filepath.Join(dir, "base/5/new"), os.O_WRONLY|os.O_CREATE) }},
		{"open O_CREAT existing", func() error { return openClose(file, os.O_WRONLY|os.O_CREATE) }},
		{"open O_TRUNC", func() error { return openClose(whole, os.O_WRONLY|os.O_TRUNC) }},
		{"mkdir", func() error { return os.Mkdir(filepath.Join(dir, "newdir"), 0o700) }},
		{"rmdir", func() error { return unix.Rmdir(filepath.Join(dir, "pg_wal")) }},
		{"unlink", func() error { return unix.Unlink(file) }},
		{"rename", func() error { return os.Rename(file, filepath.Join(dir, "base/5/moved")) }},
		{"rename dir", func() error { return os.Rename(filepath.Join(dir, "base/1"), filepath.Join(dir, "base/2")) }},
		{"truncate", func() error { return os.Truncate(file, 5) }},
		{"truncate grow", func() error { return os.Truncate(whole, 1<<20) }},
		{"chmod", func() error { return os.Chmod(file, 0o644) }},
		{"chmod dir", func() error { return os.Chmod(dir, 0o755) }},
		{"chown", func() error { return os.Chown(file, 0, 0) }},
		{"utimes", func() error { return os.Chtimes(file, time.Now(), time.Now()) }},
		{"symlink", func() error { return os.Symlink("x", filepath.Join(dir, "link")) }},
		{"link", func() error { return os.Link(file, filepath.Join(dir, "hard")) }},
		{"mknod", func() error { return unix.Mknod(filepath.Join(dir, "fifo"), unix.S_IFIFO|0o600, 0) }},
		{"setxattr", func() error { return unix.Setxattr(file, "user.x", []byte("y"), 0) }},
	}
	for _, o := range ops {
		if err := o.op(); !isErrno(err, syscall.EROFS) {
			t.Errorf("%s: %v; want EROFS", o.name, err)
		}
	}
	if d := diffSnapshots(before, snapshot(t, dir, true)); len(d) > 0 {
		t.Errorf("failed writes changed the tree:\n%s", strings.Join(d, "\n"))
	}
}

func openClose(name string, flags int) error {
	f, err := os.OpenFile(name, flags, 0o600)
	if err == nil {
		f.Close()
	}
	return err
}

// checkConcurrentReads has goroutines read random ranges of random files at
// once, each with its own descriptors and some sharing one.
func checkConcurrentReads(t *testing.T, s *synth, dir string, seed uint64) {
	names := sortedKeys(s.want)
	shared := map[string]*os.File{}
	for _, rel := range names {
		f, err := os.OpenFile(filepath.Join(dir, rel), os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		shared[rel] = f
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			for i := range 60 {
				rel := names[rng.IntN(len(names))]
				want := s.want[rel]
				off := rng.Int64N(int64(len(want)) + 1)
				n := 1 + rng.IntN(4*bs)
				f := shared[rel]
				if i%3 == 0 {
					var err error
					if f, err = os.Open(filepath.Join(dir, rel)); err != nil {
						t.Errorf("open %s: %v", rel, err)
						return
					}
				}
				got, err := readFull(f, n, off)
				if i%3 == 0 {
					f.Close()
				}
				if err != nil || !bytes.Equal(got, slice(want, off, n)) {
					t.Errorf("concurrent read of %s, %d at %d: %v, %s", rel, n, off, err, firstDiff(got, slice(want, off, n)))
				}
			}
		}()
	}
	wg.Wait()
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// cacheChain is a full backup and one incremental in which every block of
// base/5/16384 (40 blocks) was rewritten, so all of it comes from the
// incremental's block images through the block cache.
func cacheChain(t *testing.T, blocks int) (*resolvertest.Chain, []byte) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	var orig []byte
	for b := range blocks {
		orig = append(orig, resolvertest.FillBlock("full", uint32(b))...)
	}
	full.File("base/5/16384", orig)
	full.File("base/5/16385", orig[:3*bs])
	inc := c.Incremental()
	var bl []resolvertest.Block
	var want []byte
	for b := range blocks {
		img := resolvertest.FillBlock("inc", uint32(b))
		bl = append(bl, resolvertest.Block{Num: uint32(b), Data: img})
		want = append(want, img...)
	}
	inc.Incremental("base/5/16384", uint32(blocks), bl...)
	inc.Incremental("base/5/16385", 3, resolvertest.Block{Num: 1, Data: resolvertest.FillBlock("inc", 1)})
	return c, want
}

// TestReadOnlyCache follows the block cache's counters through O_DIRECT
// reads (each reaches the daemon): a first read misses, a repeat hits, a
// read bigger than the cache evicts, Bytes stays within the limit, and the
// kernel page cache keeps warm buffered reads away from the daemon.
func TestReadOnlyCache(t *testing.T) {
	requireFUSE(t)
	const blocks = 40
	c, want := cacheChain(t, blocks)
	p := openPoint(t, c.Dirs())
	const limit = 64 << 10 // 8 blocks
	m := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, CacheBytes: limit})
	name := filepath.Join(m.dir, "base/5/16384")
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var prev fusefs.Stats
	step := func(what string, off int64, n int, hits, misses, sourceReads uint64) {
		t.Helper()
		got, err := pread(f, n, off)
		if err != nil || !bytes.Equal(got, slice(want, off, n)) {
			t.Fatalf("%s: read %d at %d: %v, %s", what, n, off, err, firstDiff(got, slice(want, off, n)))
		}
		st := m.Stats()
		dh, dm, dr := st.Cache.Hits-prev.Cache.Hits, st.Cache.Misses-prev.Cache.Misses, st.SourceReads-prev.SourceReads
		if dh != hits || dm != misses || dr != sourceReads {
			t.Errorf("%s (read %d at %d): +%d hits, +%d misses, +%d source reads; want +%d, +%d, +%d",
				what, n, off, dh, dm, dr, hits, misses, sourceReads)
		}
		if st.Cache.Bytes > limit || st.Cache.MaxBytes != limit {
			t.Errorf("%s: cache holds %d bytes, limit %d (MaxBytes %d)", what, st.Cache.Bytes, limit, st.Cache.MaxBytes)
		}
		prev = st
	}
	prev = m.Stats()
	step("first read of block 3", 3*bs, bs, 0, 1, 1)
	step("block 3 again", 3*bs, bs, 1, 0, 0)
	step("unaligned read inside block 3", 3*bs+100, 1000, 1, 0, 0)
	step("blocks 4-5, a run of misses: one pread", 4*bs, 2*bs, 0, 2, 1)
	step("blocks 3-5, all cached", 3*bs, 3*bs, 3, 0, 0)
	// A miss, three hits, a miss: every block is looked up once, and the
	// two misses, close together in the same source, are read with one
	// preadv (the cached blocks between them read into scratch).
	step("blocks 2-6: miss, hits, miss", 2*bs, 5*bs, 3, 2, 1)
	if s := m.Stats().Cache; s.Entries != 5 || s.Bytes != 5*bs || s.Evictions != 0 {
		t.Errorf("after 5 distinct blocks: %+v", s)
	}

	// The whole file in one read, bigger than the cache: the blocks a
	// reply holds stay pinned until the kernel has them, so the ones that
	// do not fit are read into buffers of their own; bytes stay bounded.
	got, err := pread(f, blocks*bs, 0)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("whole read: %v, %s", err, firstDiff(got, want))
	}
	if s := m.Stats().Cache; s.Bytes > limit || s.Entries > limit/bs {
		t.Errorf("after reading %d blocks at once through a %d-byte cache: %+v", blocks, limit, s)
	}
	// The whole file in reads smaller than the cache: evictions, least
	// recently used first.
	for off := int64(0); off < blocks*bs; off += 4 * bs {
		got, err := pread(f, 4*bs, off)
		if err != nil || !bytes.Equal(got, slice(want, off, 4*bs)) {
			t.Fatalf("read 4 blocks at %d: %v, %s", off, err, firstDiff(got, slice(want, off, 4*bs)))
		}
	}
	s := m.Stats().Cache
	if s.Evictions == 0 || s.Bytes > limit || s.Entries > limit/bs {
		t.Errorf("after reading %d blocks through a %d-byte cache: %+v", blocks, limit, s)
	}
	// The last blocks read are the ones kept.
	prev = m.Stats()
	step("last block, still cached", (blocks-1)*bs, bs, 1, 0, 0)
	step("first block, evicted", 0, bs, 0, 1, 1)

	// Readers racing with evictions never see more than the limit.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var over fusefs.Stats
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if st := m.Stats(); st.Cache.Bytes > limit {
				over = st
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	var rwg sync.WaitGroup
	for g := range 4 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 40 {
				off := rng.Int64N(blocks * bs)
				n := 1 + rng.IntN(6*bs)
				got, err := pread(f, n, off)
				if err != nil || !bytes.Equal(got, slice(want, off, n)) {
					t.Errorf("racing read %d at %d: %v", n, off, err)
				}
			}
		}()
	}
	rwg.Wait()
	close(stop)
	wg.Wait()
	if over.Cache.Bytes != 0 {
		t.Errorf("the cache went over its limit: %+v", over.Cache)
	}

	// Buffered reads: the first fills the kernel's page cache, later opens
	// keep it (FOPEN_KEEP_CACHE), so the daemon serves nothing more.
	other := filepath.Join(m.dir, "base/5/16385")
	if _, err := os.ReadFile(other); err != nil {
		t.Fatal(err)
	}
	served := m.Stats().BytesServed
	for range 3 {
		if _, err := os.ReadFile(other); err != nil {
			t.Fatal(err)
		}
	}
	if st := m.Stats(); st.BytesServed != served {
		t.Errorf("warm buffered reads reached the daemon: %d more bytes served", st.BytesServed-served)
	}
}

// TestReadOnlySourceGoesBad truncates backup files under a live mount:
// reads of the damaged files fail with EIO and are counted and logged, the
// other files still read, and the mount stays up.
func TestReadOnlySourceGoesBad(t *testing.T) {
	requireFUSE(t)
	c := resolvertest.NewChain(t)
	full := c.Full()
	var orig []byte
	for b := range 8 {
		orig = append(orig, resolvertest.FillBlock("full", uint32(b))...)
	}
	for _, n := range []string{"16384", "16385", "16386", "16387"} {
		full.File("base/5/"+n, orig)
	}
	full.File("pg_xact/0000", orig[:2*bs+100])
	inc1 := c.Incremental()
	inc2 := c.Incremental()
	for _, n := range []string{"16384", "16385", "16386"} {
		inc1.Incremental("base/5/"+n, 8, resolvertest.Block{Num: 2, Data: resolvertest.FillBlock("inc1", 2)})
		inc2.Incremental("base/5/"+n, 8,
			resolvertest.Block{Num: 0, Data: resolvertest.FillBlock("inc2", 0)},
			resolvertest.Block{Num: 5, Data: resolvertest.FillBlock("inc2", 5)})
	}
	inc2.File("base/5/16387", orig) // a whole file of the final backup
	inc2.File("pg_xact/0000", orig[:2*bs+100])
	p := openPoint(t, c.Dirs())
	var logMu sync.Mutex
	var logs []string
	opts := fusefs.Options{UID: testUID, GID: testGID, NoPassthrough: true, Log: func(msg string) {
		logMu.Lock()
		logs = append(logs, msg)
		logMu.Unlock()
	}}
	m := mountRO(t, p, opts)
	want := func(rel string) []byte {
		d := bytes.Clone(orig)
		if rel != "base/5/16387" {
			copy(d[0:], resolvertest.FillBlock("inc2", 0))
			copy(d[2*bs:], resolvertest.FillBlock("inc1", 2))
			copy(d[5*bs:], resolvertest.FillBlock("inc2", 5))
		}
		return d
	}
	incPath := func(b *resolvertest.Backup, n string) string {
		return filepath.Join(b.Dir, "base/5", format.IncrementalPrefix+n)
	}
	logged := func(sub string) bool {
		logMu.Lock()
		defer logMu.Unlock()
		for _, l := range logs {
			if strings.Contains(l, sub) {
				return true
			}
		}
		return false
	}

	// 1. The final backup's INCREMENTAL.16384 loses its second block image
	// (block 5): block 0 still reads, block 5 fails.
	hdr := format.IncrementalHeaderLength(2)
	if err := os.Truncate(incPath(inc2, "16384"), hdr+bs); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(m.dir, "base/5/16384"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open base/5/16384: %v", err)
	}
	defer f.Close()
	if got, err := pread(f, bs, 0); err != nil || !bytes.Equal(got, want("16384")[:bs]) {
		t.Errorf("block 0 of base/5/16384, still in its source: %v, %s", err, firstDiff(got, want("16384")[:bs]))
	}
	errs := m.Stats().IOErrors
	if _, err := pread(f, bs, 5*bs); !isErrno(err, syscall.EIO) {
		t.Errorf("block 5 of base/5/16384, cut from its source: %v; want EIO", err)
	}
	if _, err := os.ReadFile(filepath.Join(m.dir, "base/5/16384")); !isErrno(err, syscall.EIO) {
		t.Errorf("buffered read of base/5/16384: %v; want EIO", err)
	}
	if st := m.Stats(); st.IOErrors <= errs {
		t.Errorf("IOErrors %d after failed reads, was %d", st.IOErrors, errs)
	}
	if !logged("16384") {
		t.Errorf("the read error was not logged: %q", logs)
	}

	// 2. An older backup's INCREMENTAL.16385, read only on first open, is
	// cut to nothing: the file cannot be resolved.
	if err := os.Truncate(incPath(inc1, "16385"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(m.dir, "base/5/16385")); !isErrno(err, syscall.EIO) {
		t.Errorf("base/5/16385 with a truncated older INCREMENTAL: %v; want EIO", err)
	}
	if !logged("16385") {
		t.Errorf("the open error was not logged: %q", logs)
	}

	// 3. A whole file of the final backup loses its tail: the daemon
	// knows the file's size, so a short source is an error, not a shorter
	// file.
	if err := os.Truncate(filepath.Join(inc2.Dir, "base/5/16387"), 3*bs); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(m.dir, "base/5/16387"))
	if !isErrno(err, syscall.EIO) {
		t.Errorf("whole file base/5/16387 truncated to 3 of 8 blocks in its backup, read through a NoPassthrough mount: %d bytes, err %v; want EIO (the mount presents %d bytes)",
			len(got), err, len(orig))
	}

	// The rest still reads, and the mount is up.
	for _, rel := range []string{"base/5/16386", "pg_xact/0000"} {
		data, err := os.ReadFile(filepath.Join(m.dir, rel))
		exp := want(rel)
		if rel == "pg_xact/0000" {
			exp = orig[:2*bs+100]
		}
		if err != nil || !bytes.Equal(data, exp) {
			t.Errorf("undamaged %s: %v, %s", rel, err, firstDiff(data, exp))
		}
	}
	if _, err := os.ReadDir(m.dir); err != nil || !isMounted(m.dir) {
		t.Errorf("the mount is not up after read errors: %v", err)
	}
	if st := m.Stats(); st.IOErrors == 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestReadOnlyMountOptions: the options reach mount(2), and the owner and
// modes are presented as asked.
func TestReadOnlyMountOptions(t *testing.T) {
	requireFUSE(t)
	s := buildSynth(t, 5, 2, 4) // an odd seed: group access, 0750
	p := openPoint(t, s.dirs)
	m := mountRO(t, p, fusefs.Options{UID: 99, GID: 98, AllowOther: true, DefaultPermissions: true, FsName: "combinefs-test:point"})
	data, err := os.ReadFile("/proc/mounts")
	must(t, "read /proc/mounts", err)
	var line string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[1] == m.dir {
			line = l
		}
	}
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "combinefs-test:point" || !strings.HasPrefix(f[2], "fuse") {
		t.Fatalf("/proc/mounts line for %s: %q", m.dir, line)
	}
	opts := "," + f[3] + ","
	for _, o := range []string{",ro,", ",allow_other,", ",default_permissions,"} {
		if !strings.Contains(opts, o) {
			t.Errorf("mount options %s lack %s", f[3], strings.Trim(o, ","))
		}
	}
	var st unix.Stat_t
	must(t, "stat", unix.Stat(m.dir, &st))
	if st.Uid != 99 || st.Gid != 98 || st.Mode&0o777 != 0o750 || !s.group {
		t.Errorf("root: owner %d:%d mode %o", st.Uid, st.Gid, st.Mode&0o777)
	}
	m.unmount(t)
	if isMounted(m.dir) {
		t.Errorf("%s still mounted", m.dir)
	}
}

// TestBackupPagesNotKept reads every file of a mount and checks that the
// backup files' pages did not stay in the page cache: the data is held by
// the mounted files' pages, and a second copy would halve what fits in
// memory. Needs RWF_DONTCACHE (Linux 6.14+ on ext4, xfs, btrfs).
func TestBackupPagesNotKept(t *testing.T) {
	requireFUSE(t)
	s := buildSynth(t, 5, 4, 64)
	p := openPoint(t, s.dirs)
	probe := filepath.Join(s.dirs[0], "backup_manifest")
	if f, err := os.Open(probe); err == nil {
		_, err = unix.Preadv2(int(f.Fd()), [][]byte{make([]byte, 512)}, 0, unix.RWF_DONTCACHE)
		f.Close()
		if err != nil {
			t.Skipf("this kernel or file system has no uncached reads (RWF_DONTCACHE): %v", err)
		}
	}
	m := mountRO(t, p, fusefs.Options{UID: testUID, GID: testGID, NoPassthrough: true, CacheBytes: 256 << 10})
	// Start from nothing cached (what the test wrote and the mount read
	// while opening the chain).
	backups := dropBackupPages(t, s.c.Root)
	checkWholeReads(t, s, m.dir)
	st := m.Stats()
	if st.SourceBytes < 1<<20 {
		t.Fatalf("reading every file read only %d bytes from the backups", st.SourceBytes)
	}
	got := residentBytes(t, backups)
	t.Logf("read %d bytes of the backups through the mount; %d bytes of their block data stayed cached", st.SourceBytes, got)
	if got > int64(st.SourceBytes)/50 {
		t.Errorf("after the mount read %d bytes of the backups, %d bytes of them are cached", st.SourceBytes, got)
	}
}

// residentBytes sums the page-cache residency of files (mincore) from the
// offset given for each (past the header of an INCREMENTAL file, which is
// read through the cache).
// dropBackupPages writes back and drops from the page cache every file of
// a chain, and returns them, each with the offset its block data starts at
// (what opening the chain may have read before is not counted).
func dropBackupPages(t *testing.T, root string) map[string]int64 {
	t.Helper()
	var sfs unix.Statfs_t
	if err := unix.Statfs(root, &sfs); err == nil && sfs.Type == unix.TMPFS_MAGIC {
		t.Skipf("%s is on tmpfs, whose pages cannot be dropped", root)
	}
	backups := map[string]int64{} // file -> where its block data starts
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			backups[path] = 0
			if strings.HasPrefix(d.Name(), "INCREMENTAL.") {
				fi, _ := f.Stat()
				inc, err := format.ParseIncremental(f, fi.Size(), path)
				if err != nil {
					t.Fatal(err)
				}
				// Opening the chain reads the header, and the kernel's
				// readahead the block after it.
				backups[path] = inc.BlockOffset(min(1, len(inc.Blocks)))
			}
			f.Sync()
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
		return nil
	})
	if got := residentBytes(t, backups); got != 0 {
		t.Fatalf("%d bytes of the backups still cached after dropping them", got)
	}
	return backups
}

func residentBytes(t *testing.T, files map[string]int64) int64 {
	var total int64
	pg := int64(os.Getpagesize())
	for path := range files {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		skip := files[path] / pg
		if fi.Size() > 0 {
			mem, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			vec := make([]byte, (fi.Size()+pg-1)/pg)
			if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
				t.Fatal(e)
			}
			for i, v := range vec {
				if v&1 != 0 && int64(i) >= skip {
					total += pg
				}
			}
			unix.Munmap(mem)
		}
		f.Close()
	}
	return total
}

// checkROManifest reads the mount's backup_manifest: as long as stat said,
// a valid manifest (its own checksum verified), listing backup_label and
// then every file of the model with its size and the CRC32C of the model's
// bytes (none under pg_wal), and the final backup's WAL ranges.
func checkROManifest(t *testing.T, s *synth, p *resolver.Tree, dir string) {
	t.Helper()
	name := filepath.Join(dir, "backup_manifest")
	st, err := os.Stat(name)
	if err != nil {
		t.Fatalf("backup_manifest: %v", err)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("backup_manifest: %v", err)
	}
	if int64(len(data)) != st.Size() {
		t.Errorf("backup_manifest: stat says %d bytes, read %d", st.Size(), len(data))
	}
	m, err := format.ParseManifest(data, name)
	if err != nil {
		t.Fatalf("backup_manifest through the mount: %v", err)
	}
	if m.Version != 2 || m.SystemIdentifier != p.Chain.SystemIdentifier {
		t.Errorf("backup_manifest: version %d, system identifier %d; want 2, %d", m.Version, m.SystemIdentifier, p.Chain.SystemIdentifier)
	}
	want := map[string][]byte{"backup_label": s.label}
	for rel, b := range s.want {
		want[rel] = b
	}
	if len(m.Files) == 0 || m.Files[0].Path != "backup_label" {
		t.Errorf("backup_manifest does not list backup_label first")
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		b, ok := want[f.Path]
		if !ok || seen[f.Path] {
			t.Errorf("backup_manifest lists %q: not a file of the point, or twice", f.Path)
			continue
		}
		seen[f.Path] = true
		if f.Size != int64(len(b)) {
			t.Errorf("backup_manifest: %q has size %d, want %d", f.Path, f.Size, len(b))
		}
		if strings.HasPrefix(f.Path, "pg_wal/") {
			if f.Algorithm != format.ChecksumNone {
				t.Errorf("backup_manifest: %q has a %v checksum; pg_wal files have none", f.Path, f.Algorithm)
			}
			continue
		}
		h := format.ChecksumCRC32C.New()
		h.Write(b)
		if f.Algorithm != format.ChecksumCRC32C || !bytes.Equal(f.Checksum, h.Sum(nil)) {
			t.Errorf("backup_manifest: %q has %v %x, want CRC32C %x", f.Path, f.Algorithm, f.Checksum, h.Sum(nil))
		}
	}
	for rel := range want {
		if !seen[rel] {
			t.Errorf("backup_manifest does not list %q", rel)
		}
	}
	if fmt.Sprint(m.WALRanges) != fmt.Sprint(p.Chain.Final().Manifest.WALRanges) {
		t.Errorf("backup_manifest WAL ranges %v, want the final backup's %v", m.WALRanges, p.Chain.Final().Manifest.WALRanges)
	}
}
