package fusefs_test

import (
	"bytes"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver"
)

// TestHydrate runs every copy-on-write scenario on a mount that hydrates at
// the same time (slowly, so the two interleave), then waits for hydration
// to complete: the view must still match the model, the upper directory
// must hold no overlay and no lower-only entry (a remount shows the same
// view, and so does the upper tree read alone), and the backups must not
// change.
func TestHydrate(t *testing.T) {
	requireFUSE(t)
	c := cowChain(t)
	p := openPoint(t, c.Dirs())
	before := hashTree(t, c.Root)
	initial := pointModel(t, p)
	for _, mode := range []string{"passthrough", "writeback"} {
		for _, sc := range cowScenarios() {
			t.Run(sc.name+"/"+mode, func(t *testing.T) {
				upper := filepath.Join(t.TempDir(), "upper")
				opts := fusefs.Options{UID: testUID, GID: testGID, WritebackCache: mode == "writeback",
					Hydrate: true, HydrateRate: 16 << 20, HydrateJobs: 2}
				opts.Log = func(msg string) { t.Log(msg) }
				mt := mountCoW(t, "", p, upper, opts)
				m := initial.clone()
				sc.run(t, mt.dir, m)
				waitHydrated(t, mt)
				checkView(t, mt.dir, m)
				if st := mt.Stats(); st.IOErrors != 0 || st.Hydration.Done != st.Hydration.Total || st.Cache.Entries != 0 {
					t.Errorf("stats: %+v, hydration %+v; want no errors, all done, the block cache emptied", st, st.Hydration)
				}
				mt.unmount(t)
				checkTmpEmpty(t, upper)
				checkHydratedUpper(t, upper, m)

				// Remounted without hydration: the same view, and the
				// marker keeps a new hydration from doing anything.
				opts.Hydrate = false
				mt2 := mountCoW(t, "", p, upper, opts)
				checkView(t, mt2.dir, m)
				mt2.unmount(t)
			})
		}
	}
	checkUnchanged(t, before, hashTree(t, c.Root))
}

// TestHydrateResume: a hydration stopped by an unmount resumes at the next
// mount and completes.
func TestHydrateResume(t *testing.T) {
	opts := fusefs.Options{UID: testUID, GID: testGID, Hydrate: true, HydrateRate: 1 << 20, HydrateJobs: 1}
	p, m, upper, mt := mountNewUpper(t, opts)
	// Past the first file or two (a whole copy in progress is dropped).
	for mt.Stats().Hydration.Done < 5<<19 {
		time.Sleep(10 * time.Millisecond)
	}
	first := mt.Stats().Hydration
	if first.Complete || first.AtStart != 0 {
		t.Fatalf("hydration at 1 MiB/s of a new upper: %+v", first)
	}
	mt.unmount(t)
	opts.HydrateRate = 0
	mt2 := mountCoW(t, "", p, upper, opts)
	st := mt2.Stats().Hydration
	for st.AtStart < 0 {
		time.Sleep(10 * time.Millisecond)
		st = mt2.Stats().Hydration
	}
	if st.AtStart <= 0 || st.AtStart > first.Done || st.Total != first.Total {
		t.Errorf("remount: %+v; before the unmount %+v", st, first)
	}
	waitHydrated(t, mt2)
	checkView(t, mt2.dir, m)
	mt2.unmount(t)
	checkHydratedUpper(t, upper, m)
}

func waitHydrated(t *testing.T, mt *mounted) {
	t.Helper()
	for {
		h := mt.Stats().Hydration
		if h == nil {
			t.Fatal("no hydration in the stats of a hydrating mount")
		}
		if h.Error != "" {
			t.Fatalf("hydration failed: %s", h.Error)
		}
		if h.Complete {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkHydratedUpper: UPPER/tree alone is the view of model m (but for the
// mount's backup_manifest and whiteouts), with no overlay left, and the
// completion marker is there.
func checkHydratedUpper(t *testing.T, upper string, m model) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(upper, "combinefs-hydrated")); err != nil {
		t.Errorf("no completion marker: %v", err)
	}
	tree := filepath.Join(upper, "tree")
	seen := map[string]bool{}
	filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == tree {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		if isWhiteoutPath(p) {
			return nil
		}
		seen[rel] = true
		if _, ok := getXattr(p, xattrOrigin); ok {
			t.Errorf("upper %s is still an overlay after hydration", rel)
		}
		if d.Type().IsRegular() {
			want := m[rel]
			if want == nil {
				t.Errorf("upper %s is not in the view", rel)
				return nil
			}
			got, err := os.ReadFile(p)
			if err != nil || string(got) != string(want.data) {
				t.Errorf("upper %s: %d bytes (%v), the view has %d: %s", rel, len(got), err, len(want.data), firstDiff(got, want.data))
			}
		}
		return nil
	})
	for rel := range m {
		if rel != "" && rel != "backup_manifest" && !seen[rel] && !strings.HasPrefix(rel, ".") {
			t.Errorf("the view's %s is not in the hydrated upper", rel)
		}
	}
}

// TestTornBlock: a block of an overlay that a kill left half allocated (one
// page written, the other a hole) shows the chain's bytes in the hole, not
// zeros, once remounted.
func TestTornBlock(t *testing.T) {
	requireFUSE(t)
	c := cowChain(t)
	p := openPoint(t, c.Dirs())
	m := pointModel(t, p)
	upper := filepath.Join(t.TempDir(), "upper")
	opts := fusefs.Options{UID: testUID, GID: testGID}
	rel := "base/5/16385"
	mt := mountCoW(t, "", p, upper, opts)
	mustWriteAt(t, filepath.Join(mt.dir, rel), 5*bs+10, []byte("torn"))
	m.writeAt(t, rel, 5*bs+10, []byte("torn"))
	mt.unmount(t)
	f, err := os.OpenFile(filepath.Join(upper, "tree", rel), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The second page of block 5, as a kill between its pages leaves it.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 5*bs+bs/2, bs/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if d := dataBytes(t, filepath.Join(upper, "tree", rel)); d != bs/2 {
		t.Fatalf("the overlay holds %d bytes of data after the punch; want half a block", d)
	}
	mt2 := mountCoW(t, "", p, upper, opts)
	checkView(t, mt2.dir, m)
	mt2.unmount(t)
	if d := dataBytes(t, filepath.Join(upper, "tree", rel)); d != bs {
		t.Errorf("after the repair the overlay holds %d bytes of data; want one block", d)
	}
}

// TestHydrateKeepsReadBlocks: while hydration runs (stalled here by its
// rate), the blocks the server reads from the chain into a file's overlay
// are kept there with the chain's bytes, so hydration need not read them
// again; a block written first is not overwritten by a later read's copy;
// and the hydration that then completes gives the point's files. (The
// overlays are made by a write here: hydration makes them for the files
// the server reads, but it is stalled.)
func TestHydrateKeepsReadBlocks(t *testing.T) {
	opts := fusefs.Options{UID: testUID, GID: testGID, WritebackCache: true, Hydrate: true, HydrateRate: 1, HydrateJobs: 1}
	p, m, upper, mt := mountNewUpper(t, opts)
	const bs = 8192
	reads := map[string][]int64{"base/5/16385": {1, 7, 100}, "base/5/16384": {10}}
	for rel := range reads {
		mine := bytes.Repeat([]byte{0xcd}, bs)
		writeAt(t, filepath.Join(mt.dir, rel), mine, 2*bs)
		copy(m[rel].data[2*bs:], mine)
	}
	for rel, blocks := range reads {
		f, err := os.Open(filepath.Join(mt.dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			got, err := readFull(f, bs, b*bs)
			if err != nil {
				t.Fatal(err)
			}
			if want := slice(m[rel].data, b*bs, bs); !bytes.Equal(got, want) {
				t.Errorf("%s block %d through the mount: %s", rel, b, firstDiff(got, want))
			}
		}
		f.Close()
	}
	// A block written before it is read: the read must not bring the
	// chain's bytes back over it.
	mine := bytes.Repeat([]byte{0xab}, bs)
	writeAt(t, filepath.Join(mt.dir, "base/5/16387"), mine, 5*bs)
	copy(m["base/5/16387"].data[5*bs:], mine)
	f, err := os.Open(filepath.Join(mt.dir, "base/5/16387"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readFull(f, 8*bs, 0); err != nil || !bytes.Equal(got, slice(m["base/5/16387"].data, 0, 8*bs)) {
		t.Errorf("base/5/16387 after a write: %v %s", err, firstDiff(got, slice(m["base/5/16387"].data, 0, 8*bs)))
	}
	f.Close()
	if st := mt.Stats(); st.BlocksKept < 4 || st.Hydration.Complete {
		t.Errorf("stats after the reads: %d blocks kept, hydration %+v", st.BlocksKept, st.Hydration)
	}
	// The overlays hold the blocks read, with the chain's bytes, before
	// hydration got to them.
	for rel, blocks := range reads {
		p := filepath.Join(upper, "tree", rel)
		if _, ok := getXattr(p, xattrOrigin); !ok {
			t.Fatalf("upper %s is not an overlay", rel)
		}
		up, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			if got, want := slice(up, b*bs, bs), slice(m[rel].data, b*bs, bs); !bytes.Equal(got, want) {
				t.Errorf("upper %s block %d: %s", rel, b, firstDiff(got, want))
			}
		}
	}
	checkView(t, mt.dir, m)
	mt.unmount(t)

	opts.HydrateRate = 0
	mt = mountCoW(t, "", p, upper, opts)
	waitHydrated(t, mt)
	checkView(t, mt.dir, m)
	mt.unmount(t)
	checkHydratedUpper(t, upper, m)
}

// TestHydrateRacesWrites: hydration at full speed while the server
// overwrites blocks of the relation files and truncates some. Hydration
// writes a file's blocks under its read lock (the server's reads go on)
// and marks them under its write lock, so no write of the server may be
// lost to a copy of the chain's bytes, and a truncation in between must
// not be undone: the view and the hydrated upper are the model's.
func TestHydrateRacesWrites(t *testing.T) {
	const bs = 8192
	// direct: every file written past the page cache, as the large files
	// of a real point are (the test chain's are below the size for it).
	for _, mode := range []string{"passthrough", "writeback", "direct"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "direct" {
				defer fusefs.SetDirectMin(fusefs.SetDirectMin(0))
			}
			opts := fusefs.Options{UID: testUID, GID: testGID, WritebackCache: mode == "writeback",
				Hydrate: true, HydrateRate: 32 << 20, HydrateJobs: 4}
			_, m, upper, mt := mountNewUpper(t, opts)
			var rels []string
			for rel, n := range m {
				if strings.HasPrefix(rel, "base/") && !n.dir && n.link == "" && len(n.data) >= 16*bs {
					rels = append(rels, rel)
				}
			}
			slices.Sort(rels)
			if len(rels) < 2 {
				t.Fatalf("the test chain has %d relation files of 16 blocks or more", len(rels))
			}
			r := rand.New(rand.NewPCG(7, 7))
			writes := 0
			for ; writes < 300 || !mt.Stats().Hydration.Complete; writes++ {
				rel := rels[r.IntN(len(rels))]
				n := m.file(t, rel)
				if writes%97 == 96 && len(n.data) > 8*bs {
					size := int64(len(n.data)) - int64(r.IntN(4)+1)*bs - 100
					must(t, "truncate", os.Truncate(filepath.Join(mt.dir, rel), size))
					m.truncate(t, rel, size)
					continue
				}
				off := int64(r.IntN(len(n.data)/bs)) * bs
				data := bytes.Repeat([]byte{byte(writes)}, bs)
				writeAt(t, filepath.Join(mt.dir, rel), data, off)
				m.writeAt(t, rel, off, data)
			}
			waitHydrated(t, mt)
			checkView(t, mt.dir, m)
			if st := mt.Stats(); st.IOErrors != 0 {
				t.Errorf("%d I/O errors", st.IOErrors)
			}
			mt.unmount(t)
			checkHydratedUpper(t, upper, m)
			t.Logf("%d writes and truncations while hydrating", writes)
		})
	}
}

// TestHydrateAwaitsOpens: on a passthrough mount while hydrating, an open
// of a file not yet whole that hydration can finish within the open wait
// waits for it (the file put first in line), and is then a passthrough
// open, reading the file's bytes; with no time to wait, it is direct.
func TestHydrateAwaitsOpens(t *testing.T) {
	opts := fusefs.Options{UID: testUID, GID: testGID, Hydrate: true, HydrateRate: 4 << 20, HydrateJobs: 1}
	_, m, _, mt := mountNewUpper(t, opts)
	for mt.Stats().Hydration.Done < 2<<20 { // for a rate to go by
		time.Sleep(10 * time.Millisecond)
	}
	// Last in hydration's path order, and 1.1 MiB: a quarter of a second
	// at the rate.
	rel := fusefs.TablespaceDir + "/16385/" + tsVersionDir + "/5/16500"
	if st := mt.Stats(); st.Hydration.Complete || st.DirectOpens != 0 {
		t.Fatalf("before the open: %+v", st)
	}
	mt.SetOpenWait(0)
	f, err := os.Open(filepath.Join(mt.dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	mt.SetOpenWait(2 * time.Second)
	st := mt.Stats()
	if st.DirectOpens != 1 || st.AwaitedOpens != 0 {
		t.Fatalf("opened with no time to wait: %d direct opens, %d awaited (want 1, 0)", st.DirectOpens, st.AwaitedOpens)
	}
	// Direct opens of the file stay direct for the grace; none here.
	defer fusefs.SetDirectGrace(fusefs.SetDirectGrace(0))
	f, err = os.Open(filepath.Join(mt.dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	got, err := readFull(f, len(m[rel].data), 0)
	f.Close()
	if err != nil || !bytes.Equal(got, m[rel].data) {
		t.Errorf("%s, awaited open: %v %s", rel, err, firstDiff(got, m[rel].data))
	}
	after := mt.Stats()
	if after.AwaitedOpens != 1 || after.PassthroughOpens != st.PassthroughOpens+1 || after.DirectOpens != 1 || after.Hydration.Complete {
		t.Errorf("awaited open: %d awaited, %d passthrough opens (want 1, %d), %d direct (want 1), hydration %+v",
			after.AwaitedOpens, after.PassthroughOpens, st.PassthroughOpens+1, after.DirectOpens, after.Hydration)
	}
	mt.unmount(t)
}

func writeAt(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// mountNewUpper mounts cowChain's point copy-on-write on a new upper
// directory with opts, and returns the point, its model and the upper.
func mountNewUpper(t *testing.T, opts fusefs.Options) (*resolver.Tree, model, string, *mounted) {
	t.Helper()
	requireFUSE(t)
	c := cowChain(t)
	p := openPoint(t, c.Dirs())
	upper := filepath.Join(t.TempDir(), "upper")
	return p, pointModel(t, p), upper, mountCoW(t, "", p, upper, opts)
}

// TestWritebackAuto: Options.WritebackAuto takes the writeback cache on an
// upper whose hydration is neither complete nor running (no passthrough
// open then), and passthrough on one that is hydrating (files not yet
// whole opened direct) or hydrated; an explicit WritebackCache still
// overrides it.
func TestWritebackAuto(t *testing.T) {
	opts := fusefs.Options{UID: testUID, GID: testGID, WritebackAuto: true}
	p, m, upper, mt := mountNewUpper(t, opts)
	checkView(t, mt.dir, m)
	if st := mt.Stats(); !st.WritebackCache || st.PassthroughOpens != 0 {
		t.Errorf("auto on a new upper without hydration: writeback cache %v, %d passthrough opens", st.WritebackCache, st.PassthroughOpens)
	}
	mt.unmount(t)

	// Slow, and no open waits for it (TestHydrateAwaitsOpens), for the
	// view's opens to come while it runs.
	opts.Hydrate, opts.HydrateRate, opts.HydrateOpenWait = true, 4<<20, -1
	mt = mountCoW(t, "", p, upper, opts)
	opts.HydrateRate, opts.HydrateOpenWait = 0, 0
	if st := mt.Stats(); st.WritebackCache {
		t.Error("auto on an upper being hydrated: writeback cache")
	}
	checkView(t, mt.dir, m)
	waitHydrated(t, mt)
	if st := mt.Stats(); st.DirectOpens == 0 {
		t.Errorf("auto, hydrating: %d direct opens of files not yet whole", st.DirectOpens)
	}
	mt.unmount(t)

	for _, hydrate := range []bool{false, true} {
		opts.Hydrate = hydrate
		mt = mountCoW(t, "", p, upper, opts)
		checkView(t, mt.dir, m)
		if st := mt.Stats(); st.WritebackCache || st.PassthroughOpens == 0 {
			t.Errorf("auto on a hydrated upper (hydrate %v): writeback cache %v, %d passthrough opens", hydrate, st.WritebackCache, st.PassthroughOpens)
		}
		mt.unmount(t)
	}

	opts.WritebackAuto, opts.WritebackCache = false, true
	mt = mountCoW(t, "", p, upper, opts)
	checkView(t, mt.dir, m)
	if st := mt.Stats(); !st.WritebackCache || st.PassthroughOpens != 0 {
		t.Errorf("explicit writeback cache on a hydrated upper: writeback cache %v, %d passthrough opens", st.WritebackCache, st.PassthroughOpens)
	}
	mt.unmount(t)
}

// TestHydrateDirectOpens: on a passthrough mount, a file opened while
// hydration has not made it whole yet is opened without the page cache
// (FOPEN_DIRECT_IO), so that once whole its next opens go by passthrough
// while the first open still lasts (a server's checkpointer holds its
// files for its life), for a relation file (filled overlay) and a small one
// (copied whole).
func TestHydrateDirectOpens(t *testing.T) {
	defer fusefs.SetDirectGrace(fusefs.SetDirectGrace(time.Hour))
	// No waiting for hydration at open (TestHydrateAwaitsOpens).
	opts := fusefs.Options{UID: testUID, GID: testGID, Hydrate: true, HydrateRate: 4 << 20, HydrateJobs: 1, HydrateOpenWait: -1}
	_, m, _, mt := mountNewUpper(t, opts)
	// Last in hydration's path order; opened, not read, so not put first.
	rels := []string{fusefs.TablespaceDir + "/16385/" + tsVersionDir + "/5/16500", "postgresql.conf"}
	var open []*os.File
	for _, rel := range rels {
		f, err := os.OpenFile(filepath.Join(mt.dir, rel), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		open = append(open, f)
		if got, err := readFull(f, len(m[rel].data), 0); err != nil || !bytes.Equal(got, m[rel].data) {
			t.Errorf("%s, open during hydration: %v %s", rel, err, firstDiff(got, m[rel].data))
		}
		if n := cachedPages(t, f); n != 0 {
			t.Errorf("%s, open during hydration: %d pages cached under the mount's inode, want none (direct I/O)", rel, n)
		}
	}
	if st := mt.Stats(); st.PassthroughOpens != 0 || st.DirectOpens != uint64(len(rels)) || st.Hydration.Complete {
		t.Fatalf("before hydration: %d passthrough opens, %d direct opens (want 0, %d), hydration %+v", st.PassthroughOpens, st.DirectOpens, len(rels), st.Hydration)
	}
	waitHydrated(t, mt)
	// A direct open just before the file became whole may still be on its
	// way through the kernel: its opens stay direct for the grace.
	for _, rel := range rels {
		f, err := os.Open(filepath.Join(mt.dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if st := mt.Stats(); st.PassthroughOpens != 0 || st.DirectOpens != 2*uint64(len(rels)) {
		t.Errorf("reopened at once after the first direct opens: %d passthrough opens, %d direct (want 0, %d)", st.PassthroughOpens, st.DirectOpens, 2*len(rels))
	}
	fusefs.SetDirectGrace(0)
	reopenAndRead(t, mt.dir, m, rels, open)
	if st := mt.Stats(); st.PassthroughOpens != uint64(len(rels)) || st.Promoted != 0 {
		t.Errorf("reopened after hydration, the first opens still open: %d passthrough opens (want %d), %d promoted", st.PassthroughOpens, len(rels), st.Promoted)
	}
	// A write through the direct open is seen by a passthrough open, and
	// the other way round: both go to the upper file.
	pt, err := os.OpenFile(filepath.Join(mt.dir, rels[0]), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pt.Close()
	a, b := bytes.Repeat([]byte{0xA5}, 8192), bytes.Repeat([]byte{0x5A}, 8192)
	if _, err := pt.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := open[0].WriteAt(b, 8192); err != nil {
		t.Fatal(err)
	}
	if got, err := readFull(open[0], 8192, 0); err != nil || !bytes.Equal(got, a) {
		t.Errorf("the direct open does not read the passthrough open's write: %v", err)
	}
	if got, err := readFull(pt, 8192, 8192); err != nil || !bytes.Equal(got, b) {
		t.Errorf("the passthrough open does not read the direct open's write: %v", err)
	}
	if st := mt.Stats(); st.PassthroughOpens != uint64(len(rels))+1 {
		t.Errorf("%d passthrough opens, want %d", st.PassthroughOpens, len(rels)+1)
	}
	// The direct open closed while the passthrough one lasts: later opens
	// still go by passthrough on the same backing file (go-fuse counts
	// every release of a node against its backing file; see
	// backingGuard).
	open[0].Close()
	time.Sleep(100 * time.Millisecond) // the kernel sends the release after close returns
	for i := range 3 {
		f, err := os.Open(filepath.Join(mt.dir, rels[0]))
		if err != nil {
			t.Fatalf("open %d after the direct open's close, the passthrough one open: %v", i, err)
		}
		if got, err := readFull(f, 8192, 0); err != nil || !bytes.Equal(got, a) {
			t.Errorf("open %d after the direct open's close: %v", i, err)
		}
		f.Close()
	}
}

// TestHydratePromotes: on a mount without passthrough, a file hydration
// completes while it is open through the page cache keeps being served as
// it was while that open lasts (a second open too), and from its whole
// upper file from the first open after it is closed, for a relation file
// (filled overlay) and a small one (copied whole).
func TestHydratePromotes(t *testing.T) {
	opts := fusefs.Options{UID: testUID, GID: testGID, Hydrate: true, HydrateRate: 4 << 20, HydrateJobs: 1, NoPassthrough: true}
	_, m, _, mt := mountNewUpper(t, opts)
	// Last in hydration's path order; opened, not read, so not put first.
	rels := []string{fusefs.TablespaceDir + "/16385/" + tsVersionDir + "/5/16500", "postgresql.conf"}
	var open []*os.File
	for _, rel := range rels {
		f, err := os.Open(filepath.Join(mt.dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		open = append(open, f)
	}
	waitHydrated(t, mt)
	reopenAndRead(t, mt.dir, m, rels, open)
	if st := mt.Stats(); st.PassthroughOpens != 0 || st.DirectOpens != 0 || st.Promoted != 0 {
		t.Errorf("files open since before hydration: %d passthrough opens, %d direct opens, %d promoted", st.PassthroughOpens, st.DirectOpens, st.Promoted)
	}
	if n := cachedPages(t, open[0]); n == 0 {
		t.Fatalf("%s read through the page cache: no page of it cached", rels[0])
	}
	for _, f := range open {
		f.Close()
	}
	// The kernel sends a release after close returns.
	for deadline := time.Now().Add(10 * time.Second); mt.Stats().Promoted < uint64(len(rels)) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if st := mt.Stats(); st.Promoted != uint64(len(rels)) {
		t.Fatalf("after the last close: %d of %d files promoted", st.Promoted, len(rels))
	}
	for _, rel := range rels {
		got, err := os.ReadFile(filepath.Join(mt.dir, rel))
		if err != nil || !bytes.Equal(got, m[rel].data) {
			t.Errorf("%s after promotion: %v %s", rel, err, firstDiff(got, m[rel].data))
		}
	}
	checkView(t, mt.dir, m)
}

// reopenAndRead opens each of rels in mnt again and reads it whole through
// the new open and through the earlier one, open[i]: both must show the
// model's data.
func reopenAndRead(t *testing.T, mnt string, m model, rels []string, open []*os.File) {
	t.Helper()
	for i, rel := range rels {
		f, err := os.Open(filepath.Join(mnt, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range []*os.File{open[i], f} {
			if got, err := readFull(g, len(m[rel].data), 0); err != nil || !bytes.Equal(got, m[rel].data) {
				t.Errorf("%s, reopened once hydration completed: %v %s", rel, err, firstDiff(got, m[rel].data))
			}
		}
		f.Close()
	}
}

// cachedPages is how many pages of f's own mapping (for a file of the
// mount, the mount's inode, whether or not reads pass through) the page
// cache holds.
func cachedPages(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0); err != nil {
		t.Fatalf("cachestat %s: %v", f.Name(), err)
	}
	return st.Cache
}
