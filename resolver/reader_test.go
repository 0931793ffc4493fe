package resolver_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// patchwork builds a file whose blocks come from every backup of a
// four-backup chain, and zeros: many extents.
func patchwork(t *testing.T) (*resolver.File, []byte) {
	t.Helper()
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 20))
	var want [][]byte
	for b := range uint32(20) {
		want = append(want, resolvertest.FillBlock("full", b))
	}
	for k, tag := range []string{"inc1", "inc2", "inc3"} {
		var bl []resolvertest.Block
		for b := uint32(k); b < 24; b += 3 + uint32(k) {
			bl = append(bl, blk(tag, b))
		}
		c.Incremental().Incremental(rel, 22, bl...)
	}
	// Expected: newest wins; blocks 20, 21 zero unless listed; 22, 23 only
	// if the final backup lists them.
	want = append(want, zeroBlock, zeroBlock, zeroBlock, zeroBlock)
	for k, tag := range []string{"inc1", "inc2", "inc3"} {
		for b := uint32(k); b < 24; b += 3 + uint32(k) {
			if b < 22 || k == 2 {
				want[b] = resolvertest.FillBlock(tag, b)
			}
		}
	}
	pt := openPoint(t, c)
	f := fileOf(t, pt, rel)
	length := 22
	for b := uint32(2); b < 24; b += 5 {
		length = max(length, int(b)+1)
	}
	return f, bytes.Join(want[:length], nil)
}

func TestReaderParallel(t *testing.T) {
	f, want := patchwork(t)
	rd, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	plan, _ := f.Plan()
	if len(plan.Extents) < 10 {
		t.Fatalf("only %d extents", len(plan.Extents))
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 99))
			for range 200 {
				off := r.Int64N(int64(len(want)) + bs)
				n := r.IntN(4 * bs)
				checkReadAt(t, f.Path, rd, want, off, n)
			}
		}()
	}
	wg.Wait()
}

func TestReaderEdges(t *testing.T) {
	f, want := patchwork(t)
	rd, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	size := int64(len(want))
	for _, tt := range []struct {
		off int64
		n   int
	}{
		{0, 0}, {0, 1}, {0, len(want)}, {0, len(want) + 1}, {size - 1, 1}, {size - 1, 2}, {size, 0}, {size, 1},
		{size + 1, 1}, {size + 1<<40, 10}, {bs - 1, 2}, {bs, bs}, {3*bs - 7, 5 * bs}, {size - bs, bs},
	} {
		checkReadAt(t, f.Path, rd, want, tt.off, tt.n)
	}
	if n, err := rd.ReadAt(make([]byte, 1), size); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := rd.ReadAt(make([]byte, 4), -1); n != 0 || err == nil || err == io.EOF {
		t.Errorf("ReadAt(-1) = %d, %v; want an error", n, err)
	}
	if n, err := rd.ReadAt(nil, 5); n != 0 || err != nil {
		t.Errorf("ReadAt(nil, 5) = %d, %v; want 0, nil", n, err)
	}
	if rd.Plan() == nil || rd.Size() != size {
		t.Errorf("Plan %v, Size %d", rd.Plan(), rd.Size())
	}
	// Several readers of one file at once.
	rd2, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	checkReadAt(t, f.Path, rd2, want, 100, 3*bs)
	if err := rd2.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	checkReadAt(t, f.Path, rd, want, 100, 3*bs)
}

func TestReaderEmptyFiles(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File("base/5/1", nil)
	final := c.Incremental()
	final.Incremental("base/5/1", 0)
	final.File("base/5/2", nil)
	pt := openPoint(t, c)
	for _, p := range []string{"base/5/1", "base/5/2"} {
		f := fileOf(t, pt, p)
		rd, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		if n, err := rd.ReadAt(make([]byte, 10), 0); n != 0 || err != io.EOF {
			t.Errorf("%s: ReadAt = %d, %v", p, n, err)
		}
		plan, _ := f.Plan()
		if len(plan.Extents) != 0 || f.Size() != 0 {
			t.Errorf("%s: %+v, size %d", p, plan, f.Size())
		}
		rd.Close()
	}
}

// A source that shrank after planning is an error, never silent zeros or a
// short read without an error.
func TestReaderSourceShrank(t *testing.T) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.File(rel, blocks("full", 0, 4))
	c.Incremental().Incremental(rel, 4, blk("inc", 0))
	pt := openPoint(t, c)
	f := fileOf(t, pt, rel)
	rd, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := os.Truncate(filepath.Join(full.Dir, rel), 2*bs); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4*bs)
	n, err := rd.ReadAt(p, 0)
	if err == nil || err == io.EOF {
		t.Errorf("ReadAt after the source shrank = %d, %v; want an error", n, err)
	}
	if n >= len(p) {
		t.Errorf("ReadAt reported %d bytes", n)
	}
}

// readFixture reads ../format/testdata/name (or name.gz).
func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	p := filepath.Join("..", "format", "testdata", name)
	if data, err := os.ReadFile(p); err == nil {
		return data
	}
	gz, err := os.ReadFile(p + ".gz")
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestRealChains rebuilds files of real PostgreSQL chains (fixtures in
// format/testdata) and compares them with pg_combinebackup's output.
func TestRealChains(t *testing.T) {
	t.Run("pg17", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		full, inc1, inc2 := c.Full(), c.Incremental(), c.Incremental()
		full.File("base/5/2619", readFixture(t, "pg17/2619.full"))
		full.File("base/5/1249", readFixture(t, "pg17/1249.full"))
		full.File("global/6002", make([]byte, bs)) // not compared
		inc1.File("base/5/INCREMENTAL.2619", readFixture(t, "pg17/INCREMENTAL.2619.inc1"))
		inc1.File("base/5/INCREMENTAL.1249", readFixture(t, "pg17/INCREMENTAL.1249.inc1"))
		inc1.File("global/INCREMENTAL.6002", readFixture(t, "pg17/INCREMENTAL.6002"))
		inc2.File("base/5/INCREMENTAL.2619", readFixture(t, "pg17/INCREMENTAL.2619.inc2"))
		inc2.File("base/5/INCREMENTAL.1249", readFixture(t, "pg17/INCREMENTAL.1249.inc2"))
		inc2.File("global/INCREMENTAL.6002", readFixture(t, "pg17/INCREMENTAL.6002"))
		pt := openPoint(t, c)
		expect(t, pt, "base/5/2619", readFixture(t, "pg17/2619.comb2"), -1)
		expect(t, pt, "base/5/1249", readFixture(t, "pg17/1249.comb2"), -1)
		expect(t, pt, "global/6002", make([]byte, bs), 0)
		// 1249: block 63 from inc1 (inc2 lists none), the rest from full.
		plan, _ := fileOf(t, pt, "base/5/1249").Plan()
		if len(plan.Extents) != 2 || plan.Extents[0].Layer != 0 || plan.Extents[1].Layer != 1 || plan.Extents[1].Off != 63*bs || plan.Extents[1].SrcOff != bs {
			t.Errorf("1249 extents %+v", plan.Extents)
		}
	})
	t.Run("pg18", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Major = 18
		full, inc1 := c.Full(), c.Incremental()
		full.File("base/5/16384", readFixture(t, "pg18/16384.full"))
		inc1.File("base/5/INCREMENTAL.16384", readFixture(t, "pg18/INCREMENTAL.16384.inc1"))
		pt := openPoint(t, c)
		if pt.Chain.Major != 18 {
			t.Errorf("Major %d", pt.Chain.Major)
		}
		expect(t, pt, "base/5/16384", readFixture(t, "pg18/16384.comb1"), -1)
	})
}

// TestPlanRetry: a plan that failed (an older backup's INCREMENTAL header
// unreadable for a while: on an object store, the store down) is resolved
// again on the next call, and then kept.
func TestPlanRetry(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 8))
	c.Incremental().Incremental(rel, 8, blk("inc1", 1))
	c.Incremental().Incremental(rel, 8, blk("inc2", 2))
	dirs := c.Dirs()
	pt := openPoint(t, c)
	f := fileOf(t, pt, rel)
	older := filepath.Join(dirs[1], resolvertest.IncrementalPath(rel))
	good, err := os.ReadFile(older)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(older, []byte("not a header"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Plan(); err == nil {
		t.Fatal("a plan over a damaged header succeeded")
	}
	if err := os.WriteFile(older, good, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := f.Plan()
	if err != nil {
		t.Fatalf("the plan once the header reads again: %v", err)
	}
	if p2, _ := f.Plan(); p2 != p {
		t.Error("a resolved plan is not kept")
	}
	got := readFile(t, f)
	if !bytes.Equal(got[format.BlockSize:2*format.BlockSize], resolvertest.FillBlock("inc1", 1)) {
		t.Error("block 1 is not inc1's")
	}
}
