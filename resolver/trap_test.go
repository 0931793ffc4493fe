package resolver_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// Tests of each trap of pg-incremental.md ("Traps for a byte-identical
// reimplementation") and of the tree rules of its section 4.

func openPoint(t *testing.T, c *resolvertest.Chain) *resolver.Tree {
	t.Helper()
	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{RequireV2Manifests: true})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := resolver.NewTree(chain)
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

// lookup finds the entry of a path of the point (tablespace files too).
func lookup(t *testing.T, pt *resolver.Tree, path string) *resolver.Entry {
	t.Helper()
	var found *resolver.Entry
	pt.Walk(func(p string, e *resolver.Entry) error {
		if p == path {
			found = e
		}
		return nil
	})
	return found
}

func fileOf(t *testing.T, pt *resolver.Tree, path string) *resolver.File {
	t.Helper()
	e := lookup(t, pt, path)
	if e == nil || e.Kind != resolver.KindFile {
		t.Fatalf("no file %q in the point", path)
	}
	return e.File
}

func readFile(t *testing.T, f *resolver.File) []byte {
	t.Helper()
	rd, err := f.Open()
	if err != nil {
		t.Fatalf("%s: %v", f.Path, err)
	}
	defer rd.Close()
	data, err := io.ReadAll(io.NewSectionReader(rd, 0, rd.Size()))
	if err != nil {
		t.Fatalf("%s: %v", f.Path, err)
	}
	return data
}

func blocks(tag string, from, n uint32) []byte {
	var d []byte
	for b := from; b < from+n; b++ {
		d = append(d, resolvertest.FillBlock(tag, b)...)
	}
	return d
}

func blk(tag string, n uint32) resolvertest.Block {
	return resolvertest.Block{Num: n, Data: resolvertest.FillBlock(tag, n)}
}

var zeroBlock = make([]byte, bs)

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// expect checks the bytes of path and whether Plan makes it a whole copy of
// backup wholeLayer (-1: not whole).
func expect(t *testing.T, pt *resolver.Tree, path string, want []byte, wholeLayer int) {
	t.Helper()
	f := fileOf(t, pt, path)
	plan, err := f.Plan()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if got := readFile(t, f); !bytes.Equal(got, want) {
		t.Errorf("%s: %s", path, diffBlocks(got, want))
	}
	if f.Size() != int64(len(want)) {
		t.Errorf("%s: Size %d, want %d", path, f.Size(), len(want))
	}
	switch {
	case wholeLayer < 0 && plan.Whole:
		t.Errorf("%s: Plan.Whole (layer %d), want block-wise reconstruction", path, plan.WholeLayer)
	case wholeLayer >= 0 && (!plan.Whole || plan.WholeLayer != wholeLayer):
		t.Errorf("%s: Plan.Whole %v layer %d, want a whole copy of backup %d", path, plan.Whole, plan.WholeLayer, wholeLayer)
	}
}

const rel = "base/5/16384"

// Trap 2: only the final incremental's truncation_block_length bounds the
// blocks older backups supply.
func TestTrapOnlyFinalTruncationLength(t *testing.T) {
	t.Run("intermediate shrink ignored", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, blocks("full", 0, 10))
		c.Incremental().Incremental(rel, 2) // shrank to 2 blocks
		c.Incremental().Incremental(rel, 10)
		expect(t, openPoint(t, c), rel, blocks("full", 0, 10), 0)
	})
	t.Run("intermediate block beyond its own tbl used", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, blocks("full", 0, 10))
		c.Incremental().Incremental(rel, 5, blk("inc1", 7))
		c.Incremental().Incremental(rel, 10)
		expect(t, openPoint(t, c), rel, cat(blocks("full", 0, 7), resolvertest.FillBlock("inc1", 7), blocks("full", 8, 2)), -1)
	})
	t.Run("intermediate block beyond final tbl dropped", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, blocks("full", 0, 10))
		c.Incremental().Incremental(rel, 10, blk("inc1", 5), blk("inc1", 1))
		c.Incremental().Incremental(rel, 3)
		expect(t, openPoint(t, c), rel, cat(blocks("full", 0, 1), resolvertest.FillBlock("inc1", 1), blocks("full", 2, 1)), -1)
	})
	t.Run("intermediate grow does not extend", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, blocks("full", 0, 2))
		c.Incremental().Incremental(rel, 50)
		c.Incremental().Incremental(rel, 2)
		expect(t, openPoint(t, c), rel, blocks("full", 0, 2), 0)
	})
}

// Trap 2: blocks listed beyond the final tbl extend the output; the gap
// between is zeros, even where an older backup has data.
func TestTrapBlocksBeyondTruncationLength(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 8))
	c.Incremental().Incremental(rel, 2, blk("inc", 5))
	expect(t, openPoint(t, c), rel, cat(blocks("full", 0, 2), zeroBlock, zeroBlock, zeroBlock, resolvertest.FillBlock("inc", 5)), -1)
}

// Trap 3: the newest backup holding a block wins.
func TestTrapNewestWins(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 4))
	c.Incremental().Incremental(rel, 4, blk("inc1", 1), blk("inc1", 2))
	c.Incremental().Incremental(rel, 4, blk("inc2", 2), blk("inc2", 3))
	c.Incremental().Incremental(rel, 4, blk("inc3", 3))
	expect(t, openPoint(t, c), rel, cat(resolvertest.FillBlock("full", 0), resolvertest.FillBlock("inc1", 1), resolvertest.FillBlock("inc2", 2), resolvertest.FillBlock("inc3", 3)), -1)
}

// A block number repeated in one INCREMENTAL file: in the final one the
// later image wins (the C loop overwrites), in an older one the first.
func TestTrapRepeatedBlockNumbers(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 3))
	c.Incremental().Incremental(rel, 3, resolvertest.Block{Num: 0, Data: resolvertest.FillBlock("old-first", 0)}, resolvertest.Block{Num: 0, Data: resolvertest.FillBlock("old-second", 0)})
	c.Incremental().Incremental(rel, 3, resolvertest.Block{Num: 2, Data: resolvertest.FillBlock("new-first", 2)}, resolvertest.Block{Num: 2, Data: resolvertest.FillBlock("new-second", 2)})
	expect(t, openPoint(t, c), rel, cat(resolvertest.FillBlock("old-first", 0), resolvertest.FillBlock("full", 1), resolvertest.FillBlock("new-second", 2)), -1)
}

// Trap 3: the walk stops at the first older whole file.
func TestTrapWalkStopsAtOlderFullFile(t *testing.T) {
	t.Run("blocks from the nearer full file only", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, blocks("full", 0, 6))
		c.Incremental().File(rel, blocks("inc1", 0, 3)) // re-sent whole, shorter
		c.Incremental().Incremental(rel, 5, blk("inc2", 1))
		// Blocks 3 and 4 are zeros: the full backup's are never looked at.
		expect(t, openPoint(t, c), rel, cat(resolvertest.FillBlock("inc1", 0), resolvertest.FillBlock("inc2", 1), resolvertest.FillBlock("inc1", 2), zeroBlock, zeroBlock), -1)
	})
	t.Run("older backups need not have the file", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full() // no such file yet
		c.Incremental().File(rel, blocks("inc1", 0, 2))
		c.Incremental().Incremental(rel, 2)
		expect(t, openPoint(t, c), rel, blocks("inc1", 0, 2), 1)
	})
}

// Trap 3: a shorter older full file gives a zero tail; its trailing
// partial block is ignored.
func TestTrapShortOlderFullFile(t *testing.T) {
	t.Run("zero tail", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, blocks("full", 0, 3))
		c.Incremental().Incremental(rel, 5)
		expect(t, openPoint(t, c), rel, cat(blocks("full", 0, 3), zeroBlock, zeroBlock), -1)
	})
	t.Run("partial block ignored", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, cat(blocks("full", 0, 3), []byte("partial")))
		c.Incremental().Incremental(rel, 4)
		expect(t, openPoint(t, c), rel, cat(blocks("full", 0, 3), zeroBlock), -1)
	})
	t.Run("partial block, same block count", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, cat(blocks("full", 0, 3), []byte("partial")))
		c.Incremental().Incremental(rel, 3)
		expect(t, openPoint(t, c), rel, blocks("full", 0, 3), -1)
	})
	t.Run("empty full file", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, nil)
		c.Incremental().Incremental(rel, 0)
		expect(t, openPoint(t, c), rel, []byte{}, 0)
	})
	t.Run("empty full file grown", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		c.Full().File(rel, nil)
		c.Incremental().Incremental(rel, 2, blk("inc", 0))
		expect(t, openPoint(t, c), rel, cat(resolvertest.FillBlock("inc", 0), zeroBlock), -1)
	})
}

// Trap 4: a whole copy of an older file only when no incremental supplied a
// block and the older file is exactly tbl blocks long.
func TestTrapWholeCopy(t *testing.T) {
	tests := []struct {
		name  string
		build func(c *resolvertest.Chain)
		want  []byte
		whole int
	}{
		{"unchanged", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().Incremental(rel, 4)
			c.Incremental().Incremental(rel, 4)
		}, blocks("full", 0, 4), 0},
		{"from a middle backup", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().File(rel, blocks("inc1", 0, 4))
			c.Incremental().Incremental(rel, 4)
		}, blocks("inc1", 0, 4), 1},
		{"final lists a block", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().Incremental(rel, 4, blk("inc1", 0))
		}, cat(resolvertest.FillBlock("inc1", 0), blocks("full", 1, 3)), -1},
		{"final lists an image identical to the old one", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().Incremental(rel, 4, blk("full", 2))
		}, blocks("full", 0, 4), -1},
		{"middle supplies a block", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().Incremental(rel, 4, blk("inc1", 3))
			c.Incremental().Incremental(rel, 4)
		}, cat(blocks("full", 0, 3), resolvertest.FillBlock("inc1", 3)), -1},
		{"middle block beyond tbl does not count", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().Incremental(rel, 9, blk("inc1", 6))
			c.Incremental().Incremental(rel, 4)
		}, blocks("full", 0, 4), 0},
		{"older file longer", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 5))
			c.Incremental().Incremental(rel, 4)
		}, blocks("full", 0, 4), -1},
		{"older file shorter", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 3))
			c.Incremental().Incremental(rel, 4)
		}, cat(blocks("full", 0, 3), zeroBlock), -1},
		{"older file has a partial block", func(c *resolvertest.Chain) {
			c.Full().File(rel, cat(blocks("full", 0, 4), []byte{1}))
			c.Incremental().Incremental(rel, 4)
		}, blocks("full", 0, 4), -1},
		{"final whole file", func(c *resolvertest.Chain) {
			c.Full().File(rel, blocks("full", 0, 4))
			c.Incremental().File(rel, cat(blocks("inc1", 0, 1), []byte("tail")))
		}, cat(blocks("inc1", 0, 1), []byte("tail")), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := resolvertest.NewChain(t)
			tt.build(c)
			expect(t, openPoint(t, c), rel, tt.want, tt.whole)
		})
	}
}

// Trap 5: a file missing from an intermediate backup (neither plain nor
// INCREMENTAL.) is an error naming that backup and the file.
func TestTrapMissingInIntermediate(t *testing.T) {
	for _, where := range []string{"file", "directory"} {
		t.Run(where, func(t *testing.T) {
			c := resolvertest.NewChain(t)
			c.Full().File(rel, blocks("full", 0, 2))
			inc1 := c.Incremental()
			if where == "file" {
				inc1.File("base/5/16385", nil) // base/5 exists, the file does not
			}
			c.Incremental().Incremental(rel, 2)
			pt := openPoint(t, c)
			f := fileOf(t, pt, rel)
			_, err := f.Plan()
			var ce *resolver.ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("Plan error %v (%T), want a ChainError", err, err)
			}
			if ce.Backup != inc1.Dir {
				t.Errorf("ChainError.Backup = %q, want %q", ce.Backup, inc1.Dir)
			}
			if !strings.Contains(err.Error(), inc1.Dir) || !strings.Contains(err.Error(), "16384") {
				t.Errorf("Error() = %q: must name %q and the file", err, inc1.Dir)
			}
			want := fmt.Sprintf(`could not open file "%s/base/5/INCREMENTAL.16384": No such file or directory`, inc1.Dir)
			if ce.PgMessage() != want || resolver.PgMessage(err) != want {
				t.Errorf("PgMessage() = %q\nwant          %q", ce.PgMessage(), want)
			}
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("errors.Is(err, ErrNotExist) = false")
			}
			// Open fails the same way.
			if _, err := f.Open(); !errors.As(err, &ce) {
				t.Errorf("Open: %v", err)
			}
		})
	}
}

// Trap 5: only ENOENT on the plain name falls back to INCREMENTAL.: an
// older plain name that cannot be opened for another reason is an error,
// not a fallback.
func TestTrapOnlyENOENTFallsBack(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 2))
	inc1 := c.Incremental()
	inc1.Incremental(rel, 2, blk("inc1", 0))
	inc1.Symlink(rel, "16384") // a symlink loop where the plain file would be
	c.Incremental().Incremental(rel, 2)
	pt := openPoint(t, c)
	_, err := fileOf(t, pt, rel).Plan()
	if err == nil || !errors.Is(err, syscall.ELOOP) {
		t.Errorf("Plan = %v, want the ELOOP of the plain name", err)
	}
}

// The full backup holding an INCREMENTAL file is refused (PostgreSQL 18's
// check, t/009_no_full_file.pl).
func TestTrapIncrementalInFullBackup(t *testing.T) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.Incremental(rel, 2, blk("full", 0))
	c.Incremental().Incremental(rel, 2)
	pt := openPoint(t, c)
	_, err := fileOf(t, pt, rel).Plan()
	var ce *resolver.ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("Plan error %v, want a ChainError", err)
	}
	want := fmt.Sprintf(`full backup contains unexpected incremental file "%s/base/5/INCREMENTAL.16384"`, full.Dir)
	if ce.PgMessage() != want {
		t.Errorf("PgMessage() = %q\nwant          %q", ce.PgMessage(), want)
	}
	if ce.Backup != full.Dir || !strings.Contains(err.Error(), full.Dir) {
		t.Errorf("error %q (backup %q) must name %q", err, ce.Backup, full.Dir)
	}
}

// A corrupt INCREMENTAL header in an older backup is an error naming it;
// in the final backup, NewTree fails.
func TestCorruptIncrementalHeader(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 2))
	inc1 := c.Incremental()
	inc1.File(resolvertest.IncrementalPath(rel), []byte("not an incremental file"))
	c.Incremental().Incremental(rel, 2)
	pt := openPoint(t, c)
	_, err := fileOf(t, pt, rel).Plan()
	if !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), inc1.Dir) || !strings.Contains(resolver.PgMessage(err), "has bad incremental magic number") {
		t.Errorf("Plan = %v (pg: %q)", err, resolver.PgMessage(err))
	}

	c = resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 2))
	final := c.Incremental()
	hdr := resolvertest.IncrementalFile(2, blk("x", 0))
	final.File(resolvertest.IncrementalPath(rel), hdr[:len(hdr)-1]) // one byte short
	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = resolver.NewTree(chain)
	if !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), final.Dir) || !strings.Contains(err.Error(), "is too short") {
		t.Errorf("NewTree = %v", err)
	}
}

// Trap 6: INCREMENTAL.* outside base/, global and pg_tblspc/ is an ordinary
// file copied under its own name; files absent from the final backup are
// absent.
func TestTrapIncrementalOutsideRelationDirs(t *testing.T) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.File("dropped", []byte("old"))
	full.File("base/5/16390", blocks("full", 0, 1))
	final := c.Incremental()
	verbatim := map[string][]byte{
		"INCREMENTAL.config":            []byte("top level"),
		"pg_stat/INCREMENTAL.x":         []byte("pg_stat"),
		"base/INCREMENTAL.1":            []byte("base itself is not a relation dir"),
		"pg_tblspc/INCREMENTAL.2":       []byte("pg_tblspc itself neither"),
		"pg_wal/INCREMENTAL.00000001":   []byte("wal"),
		"pg_logical/INCREMENTAL.16384":  []byte("logical"),
		"global_x/INCREMENTAL.16384":    []byte("not global"),
		"baseball/5/INCREMENTAL.16384":  []byte("not base/"),
		"pg_xact/INCREMENTAL.0000":      resolvertest.IncrementalFile(1),
		"postgresql.conf.INCREMENTAL.x": []byte("suffix"),
	}
	for p, d := range verbatim {
		final.File(p, d)
	}
	final.Incremental("base/5/16390", 1)
	final.Incremental("global/1262", 0)
	final.Incremental("pg_tblspc/archive/5/16391", 0) // a non-OID dir under pg_tblspc
	pt := openPoint(t, c)
	for p, d := range verbatim {
		f := fileOf(t, pt, p)
		if f.Incremental() {
			t.Errorf("%s treated as incremental", p)
		}
		if got := readFile(t, f); !bytes.Equal(got, d) {
			t.Errorf("%s: %q, want %q", p, got, d)
		}
	}
	for _, p := range []string{"base/5/16390", "global/1262", "pg_tblspc/archive/5/16391"} {
		f := lookup(t, pt, p)
		if f == nil || f.Kind != resolver.KindFile || !f.File.Incremental() {
			t.Errorf("%s: not an incremental file of the point", p)
		}
		if lookup(t, pt, resolvertest.IncrementalPath(p)) != nil {
			t.Errorf("%s listed under its INCREMENTAL name", p)
		}
	}
	if lookup(t, pt, "dropped") != nil {
		t.Errorf("a file absent from the final backup is in the point")
	}
}

// backup_label and backup_manifest are skipped at the top level only; the
// point's label is the final one without INCREMENTAL lines.
func TestTopLevelLabelAndManifest(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full()
	final := c.Incremental()
	final.File("base/backup_label", []byte("not skipped"))
	final.File("global/backup_manifest", []byte("not skipped"))
	pt := openPoint(t, c)
	for _, p := range []string{"backup_label", "backup_manifest"} {
		if lookup(t, pt, p) != nil {
			t.Errorf("top-level %s is in the tree", p)
		}
	}
	for _, p := range []string{"base/backup_label", "global/backup_manifest"} {
		if e := lookup(t, pt, p); e == nil || e.Kind != resolver.KindFile {
			t.Errorf("%s missing", p)
		}
	}
	label, _ := os.ReadFile(filepath.Join(final.Dir, "backup_label"))
	if want := format.StripIncrementalLines(label); !bytes.Equal(pt.Label, want) || bytes.Contains(pt.Label, []byte("INCREMENTAL")) {
		t.Errorf("Tree.Label = %q, want %q", pt.Label, want)
	}
}

// Symbolic links and special files of the final backup are skipped with
// pg_combinebackup's warnings.
func TestSymlinksAndSpecialFilesSkipped(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full()
	final := c.Incremental()
	final.File("pg_stat/real", []byte("x"))
	final.Symlink("pg_stat/link", "real")
	final.Symlink("base/dirlink", final.Dir+"/pg_stat")
	final.Symlink("pg_tblspc/notanoid", final.Dir+"/base")
	if err := syscall.Mkfifo(filepath.Join(final.Dir, "pg_stat/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	pt := openPoint(t, c)
	for _, p := range []string{"pg_stat/link", "base/dirlink", "pg_tblspc/notanoid", "pg_stat/fifo"} {
		if lookup(t, pt, p) != nil {
			t.Errorf("%s is in the tree", p)
		}
	}
	if lookup(t, pt, "pg_stat/real") == nil {
		t.Errorf("pg_stat/real missing")
	}
	want := []string{
		fmt.Sprintf(`skipping symbolic link "%s/pg_stat/link"`, final.Dir),
		fmt.Sprintf(`skipping symbolic link "%s/base/dirlink"`, final.Dir),
		fmt.Sprintf(`skipping symbolic link "%s/pg_tblspc/notanoid"`, final.Dir),
		fmt.Sprintf(`skipping special file "%s/pg_stat/fifo"`, final.Dir),
	}
	for _, w := range want {
		found := false
		for _, g := range pt.Warnings {
			found = found || g == w
		}
		if !found {
			t.Errorf("warning %q missing from %q", w, pt.Warnings)
		}
	}
	if len(pt.Warnings) != len(want) {
		t.Errorf("warnings %q", pt.Warnings)
	}
}

// Trap 7: children are in the final backup's raw readdir order, empty
// directories included.
func TestReaddirOrder(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full()
	final := c.Incremental()
	for i := range 300 {
		name := fmt.Sprintf("%d", (i*7919)%100000+1)
		if i%3 == 0 {
			final.Incremental("base/5/"+name, 0)
		} else {
			final.File("base/5/"+name, nil)
		}
	}
	for _, d := range []string{"pg_wal/archive_status", "pg_wal/summaries", "pg_notify", "zz", "aa", "mm"} {
		final.Mkdir(d)
	}
	pt := openPoint(t, c)
	var check func(dir string, e *resolver.Entry)
	check = func(dir string, e *resolver.Entry) {
		f, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		ents, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, de := range ents {
			name := de.Name()
			if dir == final.Dir && (name == "backup_label" || name == "backup_manifest") {
				continue
			}
			if base, ok := format.IsIncrementalName(name); ok && strings.Contains(dir, "/base/") {
				name = base
			}
			want = append(want, name)
		}
		var got []string
		for _, ch := range e.Children {
			got = append(got, ch.Name)
		}
		if strings.Join(got, "/") != strings.Join(want, "/") {
			t.Errorf("%s: children %v\nreaddir order %v", dir, got, want)
		}
		for _, ch := range e.Children {
			if ch.Kind == resolver.KindDir {
				check(filepath.Join(dir, ch.Name), ch)
			}
		}
	}
	check(final.Dir, pt.Root)
	if e := lookup(t, pt, "pg_wal/summaries"); e == nil || e.Kind != resolver.KindDir || len(e.Children) != 0 {
		t.Errorf("empty directory pg_wal/summaries missing")
	}
}

// Tablespaces: symlinked and in-place ones of the final backup, in reverse
// readdir order of pg_tblspc, with pg_tblspc/<oid>/ manifest paths, rebuilt
// through each older backup's own pg_tblspc/<oid>.
func TestTablespaces(t *testing.T) {
	c := resolvertest.NewChain(t)
	const tsrel = "PG_17_202406281/5/16400"
	oids := []uint32{16385, 16386, 16387, 16388}
	full := c.Full()
	for i, oid := range oids {
		ts := full.Tablespace(oid, i%2 == 1)
		full.File(ts+"/"+tsrel, blocks(fmt.Sprint("full", oid), 0, 3))
		full.File(ts+"/PG_17_202406281/5/x.y", nil)
	}
	final := c.Incremental()
	for i, oid := range oids {
		ts := final.Tablespace(oid, i%2 == 1)
		final.Incremental(ts+"/"+tsrel, 3, blk(fmt.Sprint("inc", oid), 1))
		final.File(ts+"/PG_17_202406281/5/INCREMENTAL.x.y", resolvertest.IncrementalFile(0))
	}
	final.File("pg_tblspc/16389", []byte("a file named like an OID is not a tablespace"))
	pt := openPoint(t, c)

	f, err := os.Open(filepath.Join(final.Dir, "pg_tblspc"))
	if err != nil {
		t.Fatal(err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, n := range names {
		if n != "16389" {
			want = append([]string{n}, want...)
		}
	}
	var got []string
	for _, ts := range pt.Tablespaces {
		got = append(got, fmt.Sprint(ts.OID))
		inPlace := ts.OID == 16386 || ts.OID == 16388
		if ts.InPlace != inPlace {
			t.Errorf("tablespace %d: InPlace %v", ts.OID, ts.InPlace)
		}
		if !inPlace && ts.Target != final.TablespaceTarget(ts.OID) {
			t.Errorf("tablespace %d: Target %q, want %q", ts.OID, ts.Target, final.TablespaceTarget(ts.OID))
		}
		if ts.Root.Name != fmt.Sprint(ts.OID) {
			t.Errorf("tablespace %d: root named %q", ts.OID, ts.Root.Name)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("tablespace order %v, want reverse readdir order %v", got, want)
	}
	// The main tree has pg_tblspc with only the non-tablespace entry.
	if e := lookup(t, pt, "pg_tblspc"); e == nil || len(e.Children) != 1 || e.Children[0].Name != "16389" {
		t.Errorf("pg_tblspc in the main tree: %+v", e)
	}
	for _, oid := range oids {
		p := fmt.Sprintf("pg_tblspc/%d/%s", oid, tsrel)
		f := fileOf(t, pt, p)
		if f.Path != p {
			t.Errorf("File.Path %q, want %q", f.Path, p)
		}
		want := cat(resolvertest.FillBlock(fmt.Sprint("full", oid), 0), resolvertest.FillBlock(fmt.Sprint("inc", oid), 1), resolvertest.FillBlock(fmt.Sprint("full", oid), 2))
		expect(t, pt, p, want, -1)
		plan, _ := f.Plan()
		for _, e := range plan.Extents {
			if e.Layer == 0 && !strings.HasPrefix(e.Src, full.Dir+"/pg_tblspc/") {
				t.Errorf("%s: older blocks read from %q, want through %s/pg_tblspc/%d", p, e.Src, full.Dir, oid)
			}
		}
		v := fileOf(t, pt, fmt.Sprintf("pg_tblspc/%d/PG_17_202406281/5/x.y", oid))
		if !v.Incremental() {
			t.Errorf("INCREMENTAL.x.y in a tablespace is reconstructed by pg_combinebackup (any name in a tablespace dir)")
		}
	}
	// Walk visits the main tree first, then the tablespaces in order.
	var order []string
	pt.Walk(func(p string, e *resolver.Entry) error {
		if strings.Count(p, "/") == 1 && strings.HasPrefix(p, "pg_tblspc/") && e.Kind == resolver.KindDir {
			order = append(order, strings.TrimPrefix(p, "pg_tblspc/"))
		}
		return nil
	})
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("Walk tablespace order %v, want %v", order, want)
	}
}

// A tablespace symlink with a relative target is refused.
func TestTablespaceRelativeTarget(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full()
	final := c.Incremental()
	final.Symlink("pg_tblspc/16385", "../somewhere")
	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = resolver.NewTree(chain)
	want := fmt.Sprintf(`target of symbolic link "%s/pg_tblspc/16385" is relative`, final.Dir)
	if err == nil || resolver.PgMessage(err) != want {
		t.Errorf("NewTree = %v (pg: %q), want %q", err, resolver.PgMessage(err), want)
	}
}

// Permissions follow the final backup directory (trap 15).
func TestModes(t *testing.T) {
	for _, tt := range []struct {
		mode          os.FileMode
		dir, file     os.FileMode
		wantGroupRead bool
	}{
		{0o700, 0o700, 0o600, false},
		{0o750, 0o750, 0o640, true},
		{0o755, 0o750, 0o640, true},
		{0o710, 0o700, 0o600, false},
	} {
		c := resolvertest.NewChain(t)
		c.Full()
		final := c.Incremental()
		c.Dirs()
		if err := os.Chmod(final.Dir, tt.mode); err != nil {
			t.Fatal(err)
		}
		pt := openPoint(t, c)
		if pt.DirMode != tt.dir || pt.FileMode != tt.file {
			t.Errorf("final dir %o: DirMode %o FileMode %o, want %o %o", tt.mode, pt.DirMode, pt.FileMode, tt.dir, tt.file)
		}
	}
}

// A final backup holding both 16384 and INCREMENTAL.16384 (never written by
// a server, but possible in a damaged or hand-edited backup) has two output
// files of the same name: pg_combinebackup fails on the second (its output
// is created with O_EXCL). The point must not present a directory with two
// entries of one name.
func TestFinalHasPlainAndIncrementalOfOneFile(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.Full().File(rel, blocks("full", 0, 2))
	final := c.Incremental()
	final.File(rel, blocks("inc", 0, 2))
	final.Incremental(rel, 2)
	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := resolver.NewTree(chain)
	if err != nil {
		return // refusing the tree is fine
	}
	seen := map[string]bool{}
	for _, ch := range pt.Root.Child("base").Child("5").Children {
		if seen[ch.Name] {
			t.Errorf("BUG: NewTree accepts a final backup with both %s and %s: directory base/5 lists %q twice (pg_combinebackup fails: the second output file exists)",
				rel, resolvertest.IncrementalPath(rel), ch.Name)
		}
		seen[ch.Name] = true
	}
}

// ResolveAll finds a broken file anywhere in the point before any read.
func TestResolveAll(t *testing.T) {
	for _, broken := range []bool{false, true} {
		c := resolvertest.NewChain(t)
		full := c.Full()
		inc1 := c.Incremental()
		final := c.Incremental()
		for i := range 20 {
			p := fmt.Sprintf("base/5/%d", 16384+i)
			full.File(p, blocks("full", 0, 2))
			if !(broken && i == 13) {
				inc1.Incremental(p, 2)
			}
			final.Incremental(p, 2)
		}
		pt := openPoint(t, c)
		err := pt.ResolveAll(4)
		var ce *resolver.ChainError
		switch {
		case !broken && err != nil:
			t.Errorf("ResolveAll: %v", err)
		case broken && (!errors.As(err, &ce) || ce.Backup != inc1.Dir || !strings.Contains(err.Error(), "16397")):
			t.Errorf("ResolveAll = %v, want a ChainError naming %s and 16397", err, inc1.Dir)
		}
	}
}
