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
