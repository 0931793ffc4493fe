package flatten_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// Paths of the rich chain.
const (
	tsOID     = 16385 // symlinked tablespace, in every backup
	inPlace   = 16386 // in-place tablespace, from inc1 on
	tsFile    = "pg_tblspc/16385/PG_17_202406281/5/16390"
	inPlaceTS = "pg_tblspc/16386/PG_17_202406281/5/16400"
	bigWAL    = 1<<20 + 4097 // a WAL file: no checksum, odd size
	bigInit   = 3<<19 + 123  // a big non-relation file, odd size
	twoChunks = 300          // blocks of base/5/2000: several copy chunks
	mixed     = 400          // blocks of base/5/3000
	zeroSized = "base/5/1005"
)

func block(tag string, n uint32) resolvertest.Block {
	return resolvertest.Block{Num: n, Data: resolvertest.FillBlock(tag, n)}
}

// blocks is a relation file of n recognisable blocks.
func blocks(tag string, n int) []byte {
	var b bytes.Buffer
	for i := range n {
		b.Write(resolvertest.FillBlock(tag, uint32(i)))
	}
	return b.Bytes()
}

// text is a non-relation file of size bytes that says which backup it is in.
func text(tag string, size int) []byte {
	return bytes.Repeat([]byte(tag+"|"), size/(len(tag)+1)+1)[:size]
}

// richChain is a full backup and three incrementals holding every kind of
// file flatten handles; each comment says what the point makes of it.
func richChain(t *testing.T) *model {
	m := newModel(t)

	full := m.full()
	full.Tablespace(tsOID, false)
	m.whole("base/5/1000", blocks("full:1000", 3))
	m.whole("base/5/1001", blocks("full:1001", 5))
	m.whole("base/5/1002", blocks("full:1002", 4))
	m.whole("base/5/1004", blocks("full:1004", 2))
	m.whole(zeroSized, []byte{})
	m.whole("base/5/1006", blocks("full:1006", 2))
	m.whole("base/5/2000", blocks("full:2000", twoChunks))
	m.whole("base/5/3000", blocks("full:3000", mixed))
	m.whole("base/5/pg_filenode.map", text("full map", 512))
	m.whole("global/1260", blocks("full:1260", 2))
	m.whole("global/pg_internal.init", text("full init", bigInit))
	m.whole("postmaster.opts", []byte{})
	m.whole("pg_logical/INCREMENTAL.note", []byte("outside base/ and global/: not an incremental file\n"))
	m.whole("pg_wal/000000010000000000000002", text("full wal", bigWAL))
	m.whole(tsFile, blocks("full:16390", 3))

	inc1 := m.incremental()
	inc1.Tablespace(tsOID, false)
	inc1.Tablespace(inPlace, true)
	m.inc("base/5/1000", 3, block("inc1:1000", 1))                                                           // blocks from two backups
	m.inc("base/5/1001", 2)                                                                                  // truncated to 2 blocks
	m.inc("base/5/1002", 4)                                                                                  // unchanged: whole from the full
	m.inc("base/5/1004", 1, block("inc1:1004", 0))                                                           // removed in inc2
	m.inc(zeroSized, 0)                                                                                      // empty, whole from the full
	m.inc("base/5/1006", 4)                                                                                  // extended: blocks 2, 3 are zeros
	m.inc("base/5/2000", twoChunks, block("inc1:2000", 0), block("inc1:2000", 150), block("inc1:2000", 299)) // long runs
	var every2 []resolvertest.Block
	for n := uint32(0); n < 260; n += 2 {
		every2 = append(every2, block("inc1:3000", n))
	}
	m.inc("base/5/3000", mixed, every2...) // a chunk of 1-block runs, then a long run
	m.whole("base/5/pg_filenode.map", text("inc1 map", 512))
	m.inc("global/1260", 2, block("inc1:1260", 1))
	m.whole("global/pg_internal.init", text("inc1 init", bigInit))
	m.whole("postmaster.opts", []byte{})
	m.whole("pg_logical/INCREMENTAL.note", []byte("still not incremental\n"))
	m.whole("pg_wal/000000010000000000000004", text("inc1 wal", bigWAL))
	m.inc(tsFile, 3, block("inc1:16390", 2))
	m.whole(inPlaceTS, blocks("inc1:16400", 2))

	inc2 := m.incremental()
	inc2.Tablespace(tsOID, false)
	inc2.Tablespace(inPlace, true)
	m.inc("base/5/1000", 3, block("inc2:1000", 2)) // blocks from three backups
	m.inc("base/5/1001", 2, block("inc2:1001", 3)) // block 2 zeros, 3 past the truncation
	m.inc("base/5/1002", 4)                        // still whole from the full
	m.whole("base/5/1003", blocks("inc2:1003", 2)) // a new relation
	m.inc(zeroSized, 0)
	m.inc("base/5/1006", 4)
	m.inc("base/5/2000", 200, block("inc2:2000", 10)) // truncated below inc1's blocks 150 and 299
	m.inc("base/5/3000", mixed)
	m.whole("base/5/pg_filenode.map", text("inc2 map", 512))
	m.inc("global/1260", 2) // block 1 from inc1, 0 from the full
	m.whole("global/pg_internal.init", text("inc2 init", bigInit))
	m.whole("postmaster.opts", []byte{})
	m.whole("pg_logical/INCREMENTAL.note", []byte("inc2\n"))
	m.whole("pg_wal/000000010000000000000006", text("inc2 wal", bigWAL))
	m.inc(tsFile, 3)
	m.inc(inPlaceTS, 2, block("inc2:16400", 0))

	inc3 := m.incremental()
	inc3.Tablespace(tsOID, false)
	inc3.Tablespace(inPlace, true)
	m.inc("base/5/1000", 4, block("inc3:1000", 0), block("inc3:1000", 3)) // four backups
	m.inc("base/5/1001", 1)                                               // truncated to the full's block 0
	m.inc("base/5/1002", 4)
	m.inc("base/5/1003", 2, block("inc3:1003", 1)) // older copy is inc2's whole file
	m.inc(zeroSized, 0)
	m.inc("base/5/1006", 4)
	m.inc("base/5/2000", 200)
	m.inc("base/5/3000", mixed, block("inc3:3000", 399))
	m.whole("base/5/pg_filenode.map", text("inc3 map", 512))
	m.inc("global/1260", 2)
	m.whole("global/pg_internal.init", text("inc3 init", bigInit))
	m.whole("postmaster.opts", []byte{})
	m.whole("pg_logical/INCREMENTAL.note", []byte("inc3\n"))
	m.whole("pg_wal/000000010000000000000008", text("inc3 wal", bigWAL))
	m.inc(tsFile, 3, block("inc3:16390", 0))
	m.inc(inPlaceTS, 2)
	m.c.Dirs()
	return m
}

// tsTarget is where point k's symlinked tablespace goes in the output.
func tsTarget(t *testing.T) string { return filepath.Join(t.TempDir(), "ts16385") }

// setup returns the point k of m, options writing it to a new directory
// (with the tablespace mapped) and the check of that output.
func setup(t *testing.T, m *model, k int, opts flatten.Options) (*resolver.Tree, flatten.Options, check) {
	t.Helper()
	p := m.point(k)
	newTS := tsTarget(t)
	opts.Output = filepath.Join(t.TempDir(), "out")
	opts.Mappings = append(opts.Mappings, flatten.Mapping{Old: m.c.Backups[k].TablespaceTarget(tsOID), New: newTS})
	b := m.c.Backups[k]
	return p, opts, check{
		out:      opts.Output,
		files:    m.want(k),
		label:    wantLabel(t, b),
		tsLinks:  map[string]string{"pg_tblspc/16385": newTS},
		opts:     opts,
		dirMode:  0o700,
		fileMode: 0o600,
		walRange: format.WALRange{TLI: b.Label.StartTLI, Start: b.Label.StartLSN, End: b.Label.StartLSN + 0x100},
	}
}

// wantResult is the Result a flatten of want must report.
func wantResult(want map[string]expected) flatten.Result {
	var r flatten.Result
	for _, w := range want {
		r.Files++
		r.Bytes += int64(len(w.data))
		switch w.from {
		case reconstructed:
			r.Reconstructed++
		case wholeOlder:
			r.WholeFromOlder++
		}
	}
	return r
}

// TestRichChainModel checks that the chain exercises what the tests claim,
// so that a change to it cannot make them vacuous.
func TestRichChainModel(t *testing.T) {
	m := richChain(t)
	want := m.want(3)
	for rel, from := range map[string]origin{
		"base/5/1000": reconstructed, "base/5/1001": reconstructed, "base/5/1002": wholeOlder,
		"base/5/1003": reconstructed, zeroSized: wholeOlder, "base/5/2000": reconstructed,
		"global/1260": reconstructed, tsFile: reconstructed, inPlaceTS: reconstructed,
		"global/pg_internal.init": plain,
	} {
		if want[rel].from != from {
			t.Errorf("%s: origin %d, want %d", rel, want[rel].from, from)
		}
	}
	if _, ok := want["base/5/1004"]; ok {
		t.Errorf("base/5/1004 is removed in inc2")
	}
	if n := len(want["base/5/2000"].data); n != 200*blk {
		t.Errorf("base/5/2000 is %d bytes", n)
	}
	if d := want["base/5/1001"].data; len(d) != blk {
		t.Errorf("base/5/1001 is %d bytes", len(d))
	}
	w2 := m.want(2)
	if d := w2["base/5/1001"].data; len(d) != 4*blk || !bytes.Equal(d[2*blk:3*blk], make([]byte, blk)) {
		t.Errorf("point 2: base/5/1001 should be 4 blocks with block 2 zero")
	}
	if _, ok := m.want(1)["base/5/1003"]; ok {
		t.Errorf("base/5/1003 is new in inc2")
	}
	if n := len(m.want(0)); n < 10 {
		t.Errorf("the full backup has only %d files", n)
	}
}
