package repo

import (
	"bytes"
	"errors"
	"maps"
	"testing"

	"github.com/combinefs/combinefs/format"
)

// testHeader is the header (without padding) of an INCREMENTAL file of
// blocks, and the size of that file.
func testHeader(trunc uint32, blocks ...uint32) ([]byte, int64) {
	h := format.AppendIncrementalHeader(nil, trunc, blocks)[:12+4*len(blocks)]
	return h, format.IncrementalHeaderLength(len(blocks)) + int64(len(blocks))*format.BlockSize
}

func FuzzHeaderPack(f *testing.F) {
	h, size := testHeader(10, 1, 5, 7)
	p := HeaderPack{}
	p.Add("base/5/INCREMENTAL.16384", h, size)
	e, esize := testHeader(3)
	p.Add("base/5/INCREMENTAL.16385", e, esize)
	f.Add(p.Marker("N"), "base/1/INCREMENTAL.1", h)
	f.Add(HeaderPack{}.Marker("N"), "", []byte{})
	f.Add([]byte("N\n"), "x", e)
	f.Add([]byte("N\nCFHP\x01\x05"), "y", []byte{1, 2})
	f.Fuzz(func(t *testing.T, data []byte, path string, hdr []byte) {
		// Any marker: decoding never panics; what decodes encodes to a
		// marker that decodes the same.
		if got, err := ParseMarker("N", data); err == nil && got != nil {
			back, err := ParseMarker("N", got.Marker("N"))
			if err != nil || !maps.EqualFunc(back, got, bytes.Equal) {
				t.Fatalf("round trip of a decoded pack: %v, %v != %v", err, back, got)
			}
		}
		// Any entry within the limits round-trips, beside the seeds'.
		if len(path) > maxPackedPath || len(hdr) > maxPackedHeader {
			return
		}
		in := maps.Clone(p)
		in[path] = hdr
		back, err := ParseMarker("N", in.Marker("N"))
		if err != nil || !maps.EqualFunc(back, in, bytes.Equal) {
			t.Fatalf("round trip: %v, %v != %v", err, back, in)
		}
	})
}

// TestHeaderPack: a pack round-trips; a marker of only the name has none;
// a flipped byte, a cut pack or a later version is refused; Add refuses a
// header that does not fit the file's size.
func TestHeaderPack(t *testing.T) {
	h, size := testHeader(10, 1, 5, 7)
	p := HeaderPack{}
	if !p.Add("base/5/INCREMENTAL.16384", h, size) {
		t.Fatal("Add refused a good header")
	}
	if p.Add("base/5/INCREMENTAL.1", h, size+format.BlockSize) {
		t.Error("Add took a header whose blocks do not end the file")
	}
	if p.Add("base/5/INCREMENTAL.2", append(bytes.Clone(h), 0), size) {
		t.Error("Add took a header with a byte past its block numbers")
	}
	m := p.Marker("P")
	got, err := ParseMarker("P", m)
	if err != nil || len(got) != 1 || !bytes.Equal(got["base/5/INCREMENTAL.16384"], h) {
		t.Fatalf("round trip: %v, %v", err, got)
	}
	if got, err := ParseMarker("P", []byte("P\n")); got != nil || err != nil {
		t.Errorf("a marker of only the name: %v, %v; want no pack", got, err)
	}
	if _, err := ParseMarker("Q", m); err == nil {
		t.Error("a marker of another point's name parsed")
	}
	for i := 2; i < len(m); i++ {
		bad := bytes.Clone(m)
		bad[i] ^= 0x40
		if _, err := ParseMarker("P", bad); err == nil {
			t.Fatalf("byte %d flipped: parsed", i)
		}
	}
	if _, err := ParseMarker("P", m[:len(m)-1]); err == nil {
		t.Error("a cut pack parsed")
	}
	later := bytes.Clone(m)
	later[2+len(headerPackMagic)] = headerPackVersion + 1
	if _, err := ParseMarker("P", later); !errors.Is(err, ErrHeaderPackVersion) {
		t.Errorf("a later version: %v, want ErrHeaderPackVersion", err)
	}
}

// TestHeaderTap: the tap collects exactly the header from writes of any
// size, ignores other files and refuses a block count past a segment.
func TestHeaderTap(t *testing.T) {
	h, size := testHeader(10, 1, 5, 7)
	file := format.AppendIncrementalHeader(nil, 10, []uint32{1, 5, 7})
	file = append(file, make([]byte, size-int64(len(file)))...)
	for _, step := range []int{1, 5, 13, 8192, len(file)} {
		tap := NewHeaderTap("base/5/INCREMENTAL.16384")
		for off := 0; off < len(file); off += step {
			tap.Write(file[off:min(off+step, len(file))])
		}
		if got, ok := tap.Header(); !ok || !bytes.Equal(got, h) {
			t.Errorf("writes of %d bytes: %x, %v; want %x", step, got, ok, h)
		}
	}
	if NewHeaderTap("base/5/16384") != nil {
		t.Error("a tap on a file that is not INCREMENTAL")
	}
	tap := NewHeaderTap("INCREMENTAL.1")
	tap.Write(h[:12])
	if _, ok := tap.Header(); ok {
		t.Error("a header with its block numbers not yet written is whole")
	}
	huge := bytes.Clone(h[:12])
	huge[4], huge[5], huge[6] = 0xff, 0xff, 0xff
	tap = NewHeaderTap("INCREMENTAL.1")
	tap.Write(huge)
	if _, ok := tap.Header(); ok {
		t.Error("a header of more blocks than a segment holds was taken")
	}
}
