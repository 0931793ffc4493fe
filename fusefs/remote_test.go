package fusefs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/combinefs/combinefs/cache"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
)

// farSource reads local files as a source that is not the local file
// system, so that the mount takes its remote path (ranged reads through
// SourceFile, the read-ahead, in-flight waits) over real files.
type farSource struct{ resolver.LocalSource }

// TestRemoteRead: a file of a remote chain whose object ends inside a
// block (a whole file of the point, not a relation segment) reads back
// whole, through one read and in pieces, its last block padded with zeros
// in the cache and not past the file's end; a read past the object's end
// fails rather than reading zeros.
func TestRemoteRead(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 5*format.BlockSize+1234)
	for i := range data {
		data[i] = byte(i*31 + i/7)
	}
	obj := filepath.Join(dir, "obj")
	if err := os.WriteFile(obj, data, 0o600); err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	plan := &resolver.Plan{Extents: []resolver.Extent{{Off: 0, Len: size, Layer: 0, Src: obj}}, Source: farSource{}}
	for _, step := range []int64{size, 3000, format.BlockSize} {
		c := cache.New(64 * format.BlockSize)
		s := newSources(c, farSource{})
		if s.from == nil {
			t.Fatal("farSource taken for the local file system")
		}
		var got []byte
		for off := int64(0); off < size; off += step {
			r, err := s.readRange(plan, off, min(step, size-off))
			if err != nil {
				t.Fatalf("reading %d bytes at %d: %v", step, off, err)
			}
			buf := make([]byte, r.Size())
			r.copyTo(buf)
			got = append(got, buf...)
		}
		s.close()
		if !bytes.Equal(got, data) {
			t.Errorf("reads of %d bytes: the file differs from the object's bytes", step)
		}
		_, last, ok := c.Get(cache.Key{Source: 0, Block: 5})
		if !ok || !bytes.Equal(last[:1234], data[5*format.BlockSize:]) || !bytes.Equal(last[1234:], make([]byte, format.BlockSize-1234)) {
			t.Errorf("reads of %d bytes: the partial last block is not cached as its bytes and zeros", step)
		}
	}

	// The plan says more than the object holds: an error, not zeros,
	// for a block past its end and for a span that runs past it.
	long := &resolver.Plan{Extents: []resolver.Extent{{Off: 0, Len: size + 3*format.BlockSize, Layer: 0, Src: obj}}, Source: farSource{}}
	for _, rd := range [][2]int64{{6, 1}, {7, 1}, {4, 4}} {
		s := newSources(cache.New(64*format.BlockSize), farSource{})
		if _, err := s.readBlocks(long, rd[0]*format.BlockSize, rd[1]*format.BlockSize); err == nil {
			t.Errorf("a read of blocks %d to %d of an object of %d bytes succeeded", rd[0], rd[0]+rd[1]-1, size)
		}
		s.close()
	}
}

// TestRemoteSuperseded: a sequential read of a file of a remote chain
// whose full backup has blocks superseded by an incremental, singly (gaps
// of one block between the blocks still needed, fetched with them) and in
// runs longer than maxGap (split there, not fetched), reads the right
// bytes, and fetches the file's bytes plus the single superseded blocks
// only: not the runs, and no block twice.
func TestRemoteSuperseded(t *testing.T) {
	const blocks, runLen = 4096, 40 // runLen > maxGap
	// Runs inside a 1 MiB read and a read-ahead chunk, wherever those start
	// at a multiple of 1 MiB: the span rule splits them, not a chunk's edge.
	runs := []int64{1300, 1812, 2580, 3092, 3604}
	inRun := func(b int64) bool {
		for _, r := range runs {
			if b >= r && b < r+runLen {
				return true
			}
		}
		return false
	}
	dir := t.TempDir()
	full, inc := make([]byte, blocks*format.BlockSize), []byte{}
	for i := range full {
		full[i] = byte(i*7 + i/format.BlockSize)
	}
	want := bytes.Clone(full)
	var ext []resolver.Extent
	singles := 0
	for b := int64(0); b < blocks; b++ {
		layer, src, off := 0, filepath.Join(dir, "full"), b*format.BlockSize
		if b%8 == 5 || inRun(b) {
			blk := bytes.Repeat([]byte{byte(b), byte(b >> 8), 0xA5}, format.BlockSize/3+1)[:format.BlockSize]
			copy(want[b*format.BlockSize:], blk)
			layer, src, off = 1, filepath.Join(dir, "inc"), int64(len(inc))
			inc = append(inc, blk...)
			if !inRun(b) {
				singles++
			}
		}
		if n := len(ext); n > 0 && ext[n-1].Layer == layer && ext[n-1].SrcOff+ext[n-1].Len == off {
			ext[n-1].Len += format.BlockSize
			continue
		}
		ext = append(ext, resolver.Extent{Off: b * format.BlockSize, Len: format.BlockSize, Layer: layer, Src: src, SrcOff: off})
	}
	for name, data := range map[string][]byte{"full": full, "inc": inc} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	plan := &resolver.Plan{Extents: ext, Source: farSource{}}
	size := int64(blocks * format.BlockSize)
	s := newSources(cache.New(int64(blocks)*format.BlockSize), farSource{})
	var got []byte
	for off := int64(0); off < size; off += 1 << 20 {
		r, err := s.readRange(plan, off, min(1<<20, size-off))
		if err != nil {
			t.Fatalf("reading at %d: %v", off, err)
		}
		buf := make([]byte, r.Size())
		r.copyTo(buf)
		got = append(got, buf...)
	}
	s.close() // waits for the read-ahead
	if !bytes.Equal(got, want) {
		t.Fatal("the file read differs from its blocks")
	}
	st := s.remoteStats()
	fetched := int64(st.GetBytes) / format.BlockSize
	// A span may end at a chunk's edge with a superseded block that the
	// next chunk then skips: a few blocks of slack, fewer than a run.
	if most := int64(blocks+singles) + runLen - 1; fetched < blocks || fetched > most {
		t.Errorf("fetched %d blocks for a file of %d (%d superseded singly, %d in runs of %d): want %d to %d", fetched, blocks, singles, len(runs)*runLen, runLen, blocks, most)
	}
	if st.Gets == 0 || st.Reads != uint64(size>>20) {
		t.Errorf("counters: %d GETs for %d reads of 1 MiB", st.Gets, st.Reads)
	}
}
