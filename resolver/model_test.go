package resolver_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// The reference model: a deliberately simple, block-by-block transcription
// of pg-incremental.md section 2.2 (reconstruct_from_incremental_file),
// working on an in-memory description of the chain, not on the disk.

const bs = format.BlockSize

// rep is one backup's copy of one file.
type rep struct {
	kind   repKind
	data   []byte   // repWhole: the file
	tbl    uint32   // repInc
	blocks []uint32 // repInc, in file order
	imgs   [][]byte // repInc, one image per entry of blocks
}

type repKind int

const (
	repAbsent repKind = iota
	repWhole
	repInc
)

// modelResult is what the model says about one output file.
type modelResult struct {
	data       []byte
	whole      bool // a verbatim copy of one source file
	wholeLayer int
	err        string // "missing <k>" or "incremental in full"
}

// model reconstructs the output of one file from its copies in backups
// 0..n-1 (the last one must not be absent).
func model(reps []rep) modelResult {
	last := len(reps) - 1
	latest := reps[last]
	if latest.kind == repWhole {
		return modelResult{data: latest.data, whole: true, wholeLayer: last}
	}
	// Step 1: the output length.
	length := latest.tbl
	for _, b := range latest.blocks {
		if b+1 > length {
			length = b + 1
		}
	}
	out := make([][]byte, length) // nil: no source yet
	fullCopyPossible := true
	// Step 2: the latest incremental's blocks (a repeated number: the later
	// entry wins, as the C loop overwrites).
	for i, b := range latest.blocks {
		out[b] = latest.imgs[i]
		fullCopyPossible = false
	}
	// Step 3: older backups, newest first.
	for k := last - 1; k >= 0; k-- {
		r := reps[k]
		switch r.kind {
		case repAbsent:
			return modelResult{err: fmt.Sprintf("missing %d", k)}
		case repWhole:
			n := uint32(len(r.data) / bs)
			for b := uint32(0); b < latest.tbl; b++ {
				if out[b] == nil && b < n {
					out[b] = r.data[b*bs : (b+1)*bs]
				}
			}
			if fullCopyPossible && len(r.data) == int(latest.tbl)*bs {
				return modelResult{data: r.data, whole: true, wholeLayer: k}
			}
			return modelResult{data: assemble(out)}
		case repInc:
			for i, b := range r.blocks {
				if b < latest.tbl && out[b] == nil {
					out[b] = r.imgs[i]
					fullCopyPossible = false
				}
			}
			if k == 0 {
				return modelResult{err: "incremental in full"}
			}
		}
	}
	panic("unreachable: backup 0 is whole or incremental")
}

// assemble concatenates the blocks; unsourced ones are zeros (step 4).
func assemble(out [][]byte) []byte {
	data := make([]byte, 0, len(out)*bs)
	for _, b := range out {
		if b == nil {
			b = make([]byte, bs)
		}
		data = append(data, b...)
	}
	return data
}

// TestModelItself pins the model on hand-made cases, so that a bug in it
// cannot hide one in the resolver.
func TestModelItself(t *testing.T) {
	blk := func(tag string, n uint32) []byte { return resolvertest.FillBlock(tag, n) }
	full := func(n int) rep {
		var d []byte
		for b := range n {
			d = append(d, blk("f", uint32(b))...)
		}
		return rep{kind: repWhole, data: d}
	}
	inc := func(tbl uint32, blocks ...uint32) rep {
		r := rep{kind: repInc, tbl: tbl, blocks: blocks}
		for _, b := range blocks {
			r.imgs = append(r.imgs, blk("i", b))
		}
		return r
	}
	cat := func(bl ...[]byte) []byte { return bytes.Join(bl, nil) }
	zero := make([]byte, bs)
	tests := []struct {
		name string
		reps []rep
		want modelResult
	}{
		{"final whole", []rep{full(2), full(3)}, modelResult{data: full(3).data, whole: true, wholeLayer: 1}},
		{"unchanged", []rep{full(3), inc(3)}, modelResult{data: full(3).data, whole: true}},
		{"grown, zero tail", []rep{full(2), inc(3)}, modelResult{data: cat(blk("f", 0), blk("f", 1), zero)}},
		{"shrunk", []rep{full(3), inc(1)}, modelResult{data: blk("f", 0)}},
		{"block beyond tbl", []rep{full(3), inc(1, 2)}, modelResult{data: cat(blk("f", 0), zero, blk("i", 2))}},
		{"intermediate tbl ignored", []rep{full(3), inc(1), inc(3)}, modelResult{data: full(3).data, whole: true}},
		{"intermediate block used", []rep{full(3), inc(1, 2), inc(3)}, modelResult{data: cat(blk("f", 0), blk("f", 1), blk("i", 2))}},
		{"missing", []rep{full(1), {}, inc(1)}, modelResult{err: "missing 1"}},
		{"incremental in full", []rep{inc(1), inc(1)}, modelResult{err: "incremental in full"}},
		{"partial block ignored", []rep{{kind: repWhole, data: append(full(1).data, 1, 2, 3)}, inc(2)}, modelResult{data: cat(blk("f", 0), zero)}},
	}
	for _, tt := range tests {
		got := model(tt.reps)
		if got.err != tt.want.err || got.whole != tt.want.whole || got.wholeLayer != tt.want.wholeLayer || !bytes.Equal(got.data, tt.want.data) {
			t.Errorf("%s: model = {err %q whole %v/%d, %d bytes}, want {err %q whole %v/%d, %d bytes}", tt.name,
				got.err, got.whole, got.wholeLayer, len(got.data), tt.want.err, tt.want.whole, tt.want.wholeLayer, len(tt.want.data))
		}
	}
}

// randomChain is a chain described in memory and written with resolvertest.
type randomChain struct {
	c     *resolvertest.Chain
	files map[string][]rep // output path -> one rep per backup
	order []string
}

// relNames are the relation files a random chain may hold.
var relNames = []string{"16384", "16384_vm", "16384_fsm", "16384.1", "16385", "16386_init", "2619", "1249", "16390.12"}

func newRandomChain(t *testing.T, r *rand.Rand) *randomChain {
	n := 2 + r.IntN(4) // 2..5 backups
	rc := &randomChain{c: resolvertest.NewChain(t), files: map[string][]rep{}}
	backups := []*resolvertest.Backup{rc.c.Full()}
	for range n - 1 {
		backups = append(backups, rc.c.Incremental())
	}
	// Relation files in base/5 and global, plus a new file in the last
	// backup only and a file dropped in the last backup.
	var paths []string
	for _, name := range relNames {
		if r.IntN(3) > 0 {
			dir := "base/5/"
			if r.IntN(5) == 0 {
				dir = "global/"
			}
			paths = append(paths, dir+name)
		}
	}
	for i, path := range paths {
		reps := make([]rep, n)
		born := 0
		if r.IntN(6) == 0 {
			born = r.IntN(n) // created after the full backup
		}
		for k := born; k < n; k++ {
			tag := fmt.Sprintf("%s@%d", path, k)
			switch {
			case k == born || r.IntN(5) == 0:
				reps[k] = wholeRep(r, tag)
			default:
				reps[k] = incRep(r, tag)
			}
		}
		if i == 0 && r.IntN(2) == 0 {
			reps[n-1] = rep{} // dropped in the final backup
		}
		rc.files[path] = reps
		rc.order = append(rc.order, path)
	}
	for k, b := range backups {
		for _, path := range rc.order {
			switch r := rc.files[path][k]; r.kind {
			case repWhole:
				b.File(path, r.data)
			case repInc:
				var blocks []resolvertest.Block
				for i, num := range r.blocks {
					blocks = append(blocks, resolvertest.Block{Num: num, Data: r.imgs[i]})
				}
				b.Incremental(path, r.tbl, blocks...)
			}
		}
		// Non-relation files are always whole.
		b.File("postgresql.auto.conf", []byte(fmt.Sprintf("# backup %d\n", k)))
		b.Mkdir("pg_wal/archive_status")
	}
	return rc
}

// wholeRep is a whole file of 0..12 blocks, sometimes with a partial last
// block.
func wholeRep(r *rand.Rand, tag string) rep {
	n := r.IntN(13)
	var d []byte
	for b := range n {
		d = append(d, resolvertest.FillBlock(tag, uint32(b))...)
	}
	if r.IntN(5) == 0 {
		d = append(d, bytes.Repeat([]byte{0xAA}, 1+r.IntN(bs-1))...)
	}
	return rep{kind: repWhole, data: d}
}

// incRep is an INCREMENTAL file: truncation length 0..14 (so shrinking and
// growing), 0..6 blocks from 0..15 (some beyond the truncation length),
// sometimes unsorted or repeated.
func incRep(r *rand.Rand, tag string) rep {
	rp := rep{kind: repInc, tbl: uint32(r.IntN(15))}
	nb := r.IntN(7)
	if r.IntN(4) == 0 {
		nb = 0
	}
	for range nb {
		b := uint32(r.IntN(16))
		if r.IntN(3) > 0 && rp.tbl > 0 {
			b = uint32(r.IntN(int(rp.tbl)))
		}
		rp.blocks = append(rp.blocks, b)
	}
	if r.IntN(3) > 0 {
		slices.Sort(rp.blocks)
		rp.blocks = slices.Compact(rp.blocks) // what the server writes
	}
	for i, b := range rp.blocks {
		rp.imgs = append(rp.imgs, resolvertest.FillBlock(fmt.Sprintf("%s#%d", tag, i), b))
	}
	return rp
}

// TestResolverAgainstModel builds random chains on disk and compares every
// file of the resolved point with the model: bytes (read whole, with random
// ReadAt calls and with iotest.TestReader), size, and the whole-file
// decision of Plan.
func TestResolverAgainstModel(t *testing.T) {
	seeds := 200
	if testing.Short() || raceEnabled {
		seeds = 40
	}
	// COMBINEFS_MODEL_SEEDS=N runs more (or fewer) random chains.
	if n, err := strconv.Atoi(os.Getenv("COMBINEFS_MODEL_SEEDS")); err == nil {
		seeds = n
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(seed), 0xc0b1))
			rc := newRandomChain(t, r)
			chain, err := resolver.OpenChain(rc.c.Dirs(), resolver.ChainOptions{RequireV2Manifests: true})
			if err != nil {
				t.Fatal(err)
			}
			pt, err := resolver.NewTree(chain)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]*resolver.File{}
			if err := pt.Walk(func(path string, e *resolver.Entry) error {
				if e.Kind == resolver.KindFile {
					if e.File.Path != path {
						t.Errorf("Walk path %q, File.Path %q", path, e.File.Path)
					}
					got[path] = e.File
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			// The tree has exactly the final backup's files.
			for _, path := range rc.order {
				reps := rc.files[path]
				f, ok := got[path]
				delete(got, path)
				if reps[len(reps)-1].kind == repAbsent {
					if ok {
						t.Errorf("%s: dropped in the final backup but present", path)
					}
					continue
				}
				if !ok {
					t.Errorf("%s: missing from the point", path)
					continue
				}
				checkFile(t, r, f, model(reps), chain)
			}
			for path := range got {
				switch path {
				case "postgresql.auto.conf", "PG_VERSION", "global/pg_control":
				default:
					t.Errorf("unexpected file %q in the point", path)
				}
			}
		})
	}
}

// checkFile compares one resolved file with the model's answer.
func checkFile(t *testing.T, r *rand.Rand, f *resolver.File, want modelResult, chain *resolver.Chain) {
	t.Helper()
	plan, err := f.Plan()
	if want.err != "" {
		if err == nil {
			t.Errorf("%s: no error, model says %s", f.Path, want.err)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: %v", f.Path, err)
		return
	}
	if f.Size() != int64(len(want.data)) {
		t.Errorf("%s: Size() = %d, want %d", f.Path, f.Size(), len(want.data))
	}
	if plan.Whole != want.whole || (want.whole && plan.WholeLayer != want.wholeLayer) {
		t.Errorf("%s: Plan Whole %v layer %d, model says %v layer %d", f.Path, plan.Whole, plan.WholeLayer, want.whole, want.wholeLayer)
	}
	if plan.Whole {
		if !strings.HasPrefix(plan.WholeSrc, chain.Backups[plan.WholeLayer].Dir+string(filepath.Separator)) {
			t.Errorf("%s: WholeSrc %q not in backup %d", f.Path, plan.WholeSrc, plan.WholeLayer)
		}
		if src, err := os.ReadFile(plan.WholeSrc); err != nil || !bytes.Equal(src, want.data) {
			t.Errorf("%s: WholeSrc %s does not hold the output (%v)", f.Path, plan.WholeSrc, err)
		}
	}
	checkExtents(t, f.Path, plan, int64(len(want.data)), chain)

	rd, err := f.Open()
	if err != nil {
		t.Errorf("%s: Open: %v", f.Path, err)
		return
	}
	defer rd.Close()
	if rd.Size() != int64(len(want.data)) {
		t.Errorf("%s: Reader.Size() = %d", f.Path, rd.Size())
	}
	all, err := io.ReadAll(io.NewSectionReader(rd, 0, rd.Size()))
	if err != nil || !bytes.Equal(all, want.data) {
		t.Errorf("%s: ReadAll: %v; %s", f.Path, err, diffBlocks(all, want.data))
		return
	}
	for range 20 {
		off := r.Int64N(int64(len(want.data)) + 2*bs + 1)
		n := r.IntN(3*bs + 1)
		checkReadAt(t, f.Path, rd, want.data, off, n)
	}
	// iotest.TestReader reads byte by byte too: give it a window of at most
	// three blocks (crossing extents) to keep the test fast.
	off := int64(0)
	if len(want.data) > 3*bs {
		off = r.Int64N(int64(len(want.data)) - 3*bs)
	}
	end := min(off+3*bs, int64(len(want.data)))
	if err := iotest.TestReader(io.NewSectionReader(rd, off, end-off), want.data[off:end]); err != nil {
		t.Errorf("%s: iotest.TestReader [%d,%d): %v", f.Path, off, end, err)
	}
}

// checkExtents: the extents cover [0,size) in order, zero extents have no
// source, the others point into a backup of the chain.
func checkExtents(t *testing.T, path string, plan *resolver.Plan, size int64, chain *resolver.Chain) {
	t.Helper()
	var off int64
	for i, e := range plan.Extents {
		if e.Off != off || e.Len <= 0 {
			t.Errorf("%s: extent %d %+v does not follow offset %d", path, i, e, off)
			return
		}
		off += e.Len
		switch {
		case e.Layer == resolver.Zeros:
			if e.Src != "" {
				t.Errorf("%s: zero extent %d has a source %q", path, i, e.Src)
			}
		case e.Layer < 0 || e.Layer >= len(chain.Backups):
			t.Errorf("%s: extent %d layer %d", path, i, e.Layer)
		case !strings.HasPrefix(e.Src, chain.Backups[e.Layer].Dir+string(filepath.Separator)):
			t.Errorf("%s: extent %d source %q not in backup %d", path, i, e.Src, e.Layer)
		}
	}
	if off != size {
		t.Errorf("%s: extents cover %d bytes, size is %d", path, off, size)
	}
}

// checkReadAt makes one ReadAt call and checks it against the io.ReaderAt
// contract and the expected bytes.
func checkReadAt(t *testing.T, path string, rd io.ReaderAt, want []byte, off int64, n int) {
	t.Helper()
	p := make([]byte, n)
	for i := range p {
		p[i] = 0x5a // so untouched bytes are noticed
	}
	got, err := rd.ReadAt(p, off)
	size := int64(len(want))
	wantN := 0
	if off < size {
		wantN = int(min(int64(n), size-off))
	}
	if got != wantN {
		t.Errorf("%s: ReadAt(%d bytes, off %d) = %d, want %d (size %d)", path, n, off, got, wantN, size)
		return
	}
	if got < n && err != io.EOF {
		t.Errorf("%s: ReadAt(%d bytes, off %d) short (%d) with err %v, want io.EOF", path, n, off, got, err)
	}
	if got == n && err != nil && !(err == io.EOF && off+int64(n) >= size) {
		t.Errorf("%s: ReadAt(%d bytes, off %d) full read with err %v", path, n, off, err)
	}
	if wantN > 0 && !bytes.Equal(p[:got], want[off:off+int64(got)]) {
		t.Errorf("%s: ReadAt(%d bytes, off %d): wrong bytes: %s", path, n, off, diffBlocks(p[:got], want[off:off+int64(got)]))
	}
}

// diffBlocks describes the first difference between two outputs.
func diffBlocks(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("length %d, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d (block %d): got %q, want %q", i, i/bs,
				got[i:min(len(got), i+32)], want[i:min(len(want), i+32)])
		}
	}
	return "equal"
}

// TestResolverAgainstModelErrors makes random chains broken the two ways
// the model predicts (a file missing in an intermediate backup, an
// INCREMENTAL file in the full backup) and checks that Plan fails.
func TestResolverAgainstModelErrors(t *testing.T) {
	for seed := range 40 {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		c := resolvertest.NewChain(t)
		n := 2 + r.IntN(3)
		full := c.Full()
		bk := []*resolvertest.Backup{full}
		for range n - 1 {
			bk = append(bk, c.Incremental())
		}
		reps := make([]rep, n)
		for k := range reps {
			reps[k] = incRep(r, fmt.Sprint(k))
		}
		reps[0] = wholeRep(r, "f")
		broken := 1 + r.IntN(n-1)
		if broken == n-1 || r.IntN(2) == 0 {
			reps[0] = incRep(r, "bad full") // an INCREMENTAL file in the full backup
			broken = -1
		} else {
			reps[broken] = rep{}
		}
		for k, b := range bk {
			switch rp := reps[k]; rp.kind {
			case repWhole:
				b.File("base/5/16384", rp.data)
			case repInc:
				var blocks []resolvertest.Block
				for i, num := range rp.blocks {
					blocks = append(blocks, resolvertest.Block{Num: num, Data: rp.imgs[i]})
				}
				b.Incremental("base/5/16384", rp.tbl, blocks...)
			}
		}
		want := model(reps)
		if want.err == "" {
			t.Fatalf("seed %d: the model sees no error", seed)
		}
		chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pt, err := resolver.NewTree(chain)
		if err != nil {
			t.Fatal(err)
		}
		f := pt.Root.Child("base").Child("5").Child("16384").File
		_, err = f.Plan()
		var ce *resolver.ChainError
		if !errors.As(err, &ce) {
			t.Errorf("seed %d (%s): Plan error %v, want a ChainError", seed, want.err, err)
			continue
		}
		switch {
		case strings.HasPrefix(want.err, "missing"):
			k := 0
			fmt.Sscanf(want.err, "missing %d", &k)
			if ce.Backup != chain.Backups[k].Dir {
				t.Errorf("seed %d: error names backup %q, want %q", seed, ce.Backup, chain.Backups[k].Dir)
			}
		default:
			if !strings.HasPrefix(ce.PgMessage(), "full backup contains unexpected incremental file") {
				t.Errorf("seed %d: %q", seed, ce.PgMessage())
			}
		}
	}
}
