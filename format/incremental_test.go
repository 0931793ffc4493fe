package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/combinefs/combinefs/format"
)

// incFile builds an INCREMENTAL file: header, then for each block an image
// filled with a byte derived from its block number.
func incFile(tbl uint32, blocks []uint32) []byte {
	b := format.AppendIncrementalHeader(nil, tbl, blocks)
	for _, n := range blocks {
		b = append(b, bytes.Repeat([]byte{byte(n*7 + 1)}, format.BlockSize)...)
	}
	return b
}

// rawHeader writes the three fixed fields and the block numbers with no
// padding and no validation, for malformed inputs.
func rawHeader(magic, n, tbl uint32, blocks ...uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, magic)
	b = binary.LittleEndian.AppendUint32(b, n)
	b = binary.LittleEndian.AppendUint32(b, tbl)
	for _, x := range blocks {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

func seq(from, n uint32) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = from + uint32(i)
	}
	return s
}

func TestParseIncremental(t *testing.T) {
	tests := []struct {
		name       string
		data       []byte
		size       int64 // -1: len(data)
		tbl        uint32
		blocks     []uint32
		headerLen  int64
		blockLen   uint32
		wantErr    string
		wantErrOff int64
	}{
		{name: "no blocks is 12 bytes", data: incFile(7, nil), size: -1, tbl: 7, headerLen: 12, blockLen: 7},
		{name: "no blocks zero length", data: incFile(0, nil), size: -1, tbl: 0, headerLen: 12, blockLen: 0},
		{name: "one block", data: incFile(64, []uint32{63}), size: -1, tbl: 64, blocks: []uint32{63}, headerLen: 8192, blockLen: 64},
		{name: "blocks beyond tbl", data: incFile(3, []uint32{1, 9}), size: -1, tbl: 3, blocks: []uint32{1, 9}, headerLen: 8192, blockLen: 10},
		{name: "unsorted duplicate blocks accepted", data: incFile(5, []uint32{4, 2, 4}), size: -1, tbl: 5, blocks: []uint32{4, 2, 4}, headerLen: 8192, blockLen: 5},
		{name: "2045 blocks: header exactly 8192", data: incFile(2045, seq(0, 2045)), size: -1, tbl: 2045, blocks: seq(0, 2045), headerLen: 8192, blockLen: 2045},
		{name: "2046 blocks: header 16384", data: incFile(4000, seq(10, 2046)), size: -1, tbl: 4000, blocks: seq(10, 2046), headerLen: 16384, blockLen: 4000},
		{name: "tbl at segment size", data: incFile(format.RelSegSize, nil), size: -1, tbl: format.RelSegSize, headerLen: 12, blockLen: format.RelSegSize},
		{name: "last block of a segment", data: incFile(0, []uint32{format.RelSegSize - 1}), size: -1, tbl: 0, blocks: []uint32{format.RelSegSize - 1}, headerLen: 8192, blockLen: format.RelSegSize},
		{name: "trailing bytes ignored", data: append(incFile(2, []uint32{0}), 1, 2, 3), size: -1, tbl: 2, blocks: []uint32{0}, headerLen: 8192, blockLen: 2},

		{name: "bad magic", data: rawHeader(0xd3ae1f0e, 0, 0), size: -1, wantErr: "has bad incremental magic number (0xd3ae1f0e, expected 0xd3ae1f0d)", wantErrOff: 0},
		{name: "big-endian magic", data: append(binary.BigEndian.AppendUint32(nil, format.IncrementalMagic), make([]byte, 8)...), size: -1, wantErr: "bad incremental magic number (0xd1faed3, expected 0xd3ae1f0d)"},
		{name: "block count over segment", data: rawHeader(format.IncrementalMagic, format.RelSegSize+1, 0), size: 1 << 40, wantErr: "has block count 131073 in excess of segment size 131072", wantErrOff: 4},
		{name: "block count huge", data: rawHeader(format.IncrementalMagic, 0xffffffff, 0), size: 1 << 40, wantErr: "has block count 4294967295 in excess of segment size 131072", wantErrOff: 4},
		{name: "truncation length over segment", data: rawHeader(format.IncrementalMagic, 0, format.RelSegSize+1), size: -1, wantErr: "has truncation block length 131073 in excess of segment size 131072", wantErrOff: 8},
		{name: "block number at segment size", data: padTo(rawHeader(format.IncrementalMagic, 2, 0, 1, format.RelSegSize), 8192+2*8192), size: -1, wantErr: "has block number 131072 in excess of segment size 131072", wantErrOff: 16},
		{name: "truncated by one byte", data: incFile(4, []uint32{0, 3})[:8192+2*8192-1], size: -1, wantErr: "is too short: expected 24576, found 24575"},
		{name: "truncated by a whole block", data: incFile(4, []uint32{0, 3})[:8192+8192], size: -1, wantErr: "is too short: expected 24576, found 16384"},
		{name: "header only", data: incFile(4, []uint32{0, 3})[:8192], size: -1, wantErr: "is too short: expected 24576, found 8192"},
		{name: "block array cut", data: rawHeader(format.IncrementalMagic, 3, 9, 1), size: -1, wantErr: "is too short"},
		{name: "11 bytes", data: incFile(7, nil)[:11], size: -1, wantErr: "could not read file", wantErrOff: 11},
		{name: "4 bytes", data: incFile(7, nil)[:4], size: -1, wantErr: "read 4 of 12"},
		{name: "empty", data: nil, size: -1, wantErr: "read 0 of 12", wantErrOff: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const path = "base/5/INCREMENTAL.16384"
			size := tt.size
			if size < 0 {
				size = int64(len(tt.data))
			}
			inc, err := format.ParseIncremental(bytes.NewReader(tt.data), size, path)
			if tt.wantErr != "" {
				checkFormatError(t, err, path, tt.wantErr)
				var fe *format.Error
				if errors.As(err, &fe) && tt.wantErrOff != 0 && fe.Off != tt.wantErrOff {
					t.Errorf("Off = %d, want %d", fe.Off, tt.wantErrOff)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if inc.TruncationBlockLength != tt.tbl {
				t.Errorf("TruncationBlockLength = %d, want %d", inc.TruncationBlockLength, tt.tbl)
			}
			if !slices.Equal(inc.Blocks, tt.blocks) {
				t.Errorf("Blocks = %v, want %v", inc.Blocks, tt.blocks)
			}
			if inc.HeaderLength != tt.headerLen {
				t.Errorf("HeaderLength = %d, want %d", inc.HeaderLength, tt.headerLen)
			}
			if got := inc.BlockLength(); got != tt.blockLen {
				t.Errorf("BlockLength = %d, want %d", got, tt.blockLen)
			}
			if want := tt.headerLen + int64(len(tt.blocks))*format.BlockSize; inc.FileSize() != want {
				t.Errorf("FileSize = %d, want %d", inc.FileSize(), want)
			}
			// Each image is where BlockOffset says.
			for i, b := range inc.Blocks {
				off := inc.BlockOffset(i)
				if tt.data[off] != byte(b*7+1) || tt.data[off+format.BlockSize-1] != byte(b*7+1) {
					t.Errorf("block %d (index %d) not at offset %d", b, i, off)
				}
			}
		})
	}
}

func padTo(b []byte, n int) []byte {
	return append(b, make([]byte, n-len(b))...)
}

// TestParseIncrementalBigHeader reads only the header: a block count at the
// segment size parses from a reader holding just the header, given the size
// such a file would have.
func TestParseIncrementalBigHeader(t *testing.T) {
	blocks := seq(0, format.RelSegSize)
	hdr := format.AppendIncrementalHeader(nil, format.RelSegSize, blocks)
	size := int64(len(hdr)) + format.RelSegSize*format.BlockSize
	inc, err := format.ParseIncremental(bytes.NewReader(hdr), size, "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(inc.Blocks) != format.RelSegSize || inc.HeaderLength != 532480 || inc.FileSize() != size {
		t.Errorf("blocks %d header %d size %d", len(inc.Blocks), inc.HeaderLength, inc.FileSize())
	}
}

// errReaderAt fails every read after the first n bytes with err.
type errReaderAt struct {
	data []byte
	err  error
}

func (r errReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.data)) {
		return 0, r.err
	}
	n := copy(p, r.data[off:])
	if n < len(p) {
		return n, r.err
	}
	return n, nil
}

func TestParseIncrementalReadError(t *testing.T) {
	boom := errors.New("boom")
	data := incFile(3, []uint32{1})
	_, err := format.ParseIncremental(errReaderAt{data[:14], boom}, int64(len(data)), "f")
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want the reader's error", err)
	}
	// A reader that returns all bytes together with io.EOF is fine.
	_, err = format.ParseIncremental(errReaderAt{data[:16], io.EOF}, int64(len(data)), "f")
	if err != nil {
		t.Errorf("full read with io.EOF: %v", err)
	}
}

func TestParseIncrementalReal(t *testing.T) {
	tests := []struct {
		fixture string
		size    int64 // 0: the fixture's length
		n       int
		first   []uint32
		tbl     uint32
		header  int64
	}{
		{fixture: "pg17/INCREMENTAL.6002", tbl: 1, header: 12},
		{fixture: "pg17/INCREMENTAL.1249.inc1", n: 1, first: []uint32{63}, tbl: 64, header: 8192},
		{fixture: "pg17/INCREMENTAL.1249.inc2", tbl: 64, header: 12},
		{fixture: "pg17/INCREMENTAL.2619.inc1", n: 3, first: []uint32{17, 18, 19}, tbl: 20, header: 8192},
		{fixture: "pg17/INCREMENTAL.2619.inc2", n: 3, first: []uint32{17, 18, 19}, tbl: 20, header: 8192},
		{fixture: "pg17/INCREMENTAL.16396.inc1.head", size: 26411008, n: 3222, first: []uint32{2, 7, 16, 22, 30, 31, 33, 36, 37, 38}, tbl: 8249, header: 16384},
		{fixture: "pg18/INCREMENTAL.16388.inc1", tbl: 1, header: 12},
		{fixture: "pg18/INCREMENTAL.16384.inc1", n: 40, tbl: 589, header: 8192},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			data := fixture(t, tt.fixture)
			size := tt.size
			if size == 0 {
				size = int64(len(data))
			}
			inc, err := format.ParseIncremental(bytes.NewReader(data), size, tt.fixture)
			if err != nil {
				t.Fatal(err)
			}
			if len(inc.Blocks) != tt.n || inc.TruncationBlockLength != tt.tbl || inc.HeaderLength != tt.header {
				t.Errorf("got %d blocks, tbl %d, header %d; want %d, %d, %d", len(inc.Blocks), inc.TruncationBlockLength, inc.HeaderLength, tt.n, tt.tbl, tt.header)
			}
			if tt.first != nil && !slices.Equal(inc.Blocks[:len(tt.first)], tt.first) {
				t.Errorf("first blocks %v, want %v", inc.Blocks[:len(tt.first)], tt.first)
			}
			if inc.FileSize() != size {
				t.Errorf("FileSize %d, file is %d", inc.FileSize(), size)
			}
			if !slices.IsSorted(inc.Blocks) {
				t.Errorf("server wrote unsorted blocks?")
			}
			// The header we would write is the one the server wrote.
			hdr := format.AppendIncrementalHeader(nil, inc.TruncationBlockLength, inc.Blocks)
			if !bytes.Equal(hdr, data[:inc.HeaderLength]) {
				t.Errorf("AppendIncrementalHeader differs from the server's header")
			}
		})
	}
}

func TestIncrementalHeaderLength(t *testing.T) {
	if got := format.IncrementalHeaderLength(0); got != 12 {
		t.Errorf("IncrementalHeaderLength(0) = %d, want 12", got)
	}
	for n := 1; n <= format.RelSegSize; n++ {
		h := format.IncrementalHeaderLength(n)
		need := int64(12 + 4*n)
		if h%format.BlockSize != 0 || h < need || h-format.BlockSize >= need {
			t.Fatalf("IncrementalHeaderLength(%d) = %d: not the smallest multiple of %d holding %d bytes", n, h, format.BlockSize, need)
		}
	}
	for n, want := range map[int]int64{1: 8192, 2045: 8192, 2046: 16384, 4093: 16384, 4094: 24576, format.RelSegSize: 532480} {
		if got := format.IncrementalHeaderLength(n); got != want {
			t.Errorf("IncrementalHeaderLength(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestAppendIncrementalHeaderRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		n := r.IntN(3000)
		if i%10 == 0 {
			n = 0
		}
		blocks := make([]uint32, n)
		for j := range blocks {
			blocks[j] = r.Uint32N(format.RelSegSize)
		}
		if r.IntN(2) == 0 {
			slices.Sort(blocks)
		}
		tbl := r.Uint32N(format.RelSegSize + 1)
		prefix := make([]byte, r.IntN(20))
		out := format.AppendIncrementalHeader(prefix, tbl, blocks)
		hdr := out[len(prefix):]
		if want := format.IncrementalHeaderLength(n); int64(len(hdr)) != want {
			t.Fatalf("n=%d: header is %d bytes, want %d (prefix %d)", n, len(hdr), want, len(prefix))
		}
		if !bytes.Equal(hdr[:4], []byte{0x0d, 0x1f, 0xae, 0xd3}) {
			t.Fatalf("magic bytes % x", hdr[:4])
		}
		for _, c := range hdr[12+4*n:] {
			if c != 0 {
				t.Fatalf("n=%d: padding not zero", n)
			}
		}
		size := int64(len(hdr)) + int64(n)*format.BlockSize
		inc, err := format.ParseIncremental(bytes.NewReader(hdr), size, "x")
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if inc.TruncationBlockLength != tbl || !slices.Equal(inc.Blocks, blocks) && n > 0 || inc.HeaderLength != int64(len(hdr)) {
			t.Fatalf("n=%d: round trip gave tbl %d, %d blocks, header %d", n, inc.TruncationBlockLength, len(inc.Blocks), inc.HeaderLength)
		}
	}
}

func TestBlockLength(t *testing.T) {
	tests := []struct {
		tbl    uint32
		blocks []uint32
		want   uint32
	}{
		{0, nil, 0},
		{10, nil, 10},
		{10, []uint32{3}, 10},
		{10, []uint32{9}, 10},
		{10, []uint32{10}, 11},
		{10, []uint32{12}, 13},
		{0, []uint32{12, 5}, 13},
		{20, []uint32{25, 3, 21}, 26},
		{format.RelSegSize, []uint32{format.RelSegSize - 1}, format.RelSegSize},
	}
	for _, tt := range tests {
		inc := &format.Incremental{TruncationBlockLength: tt.tbl, Blocks: tt.blocks}
		if got := inc.BlockLength(); got != tt.want {
			t.Errorf("BlockLength(tbl %d, blocks %v) = %d, want %d", tt.tbl, tt.blocks, got, tt.want)
		}
	}
}

func TestIsIncrementalName(t *testing.T) {
	tests := []struct {
		in, base string
		ok       bool
	}{
		{"INCREMENTAL.16384", "16384", true},
		{"INCREMENTAL.16384_vm.3", "16384_vm.3", true},
		{"INCREMENTAL.config", "config", true},
		{"16384", "16384", false},
		{"incremental.16384", "incremental.16384", false},
		{"INCREMENTAL", "INCREMENTAL", false},
		{"XINCREMENTAL.1", "XINCREMENTAL.1", false},
	}
	for _, tt := range tests {
		base, ok := format.IsIncrementalName(tt.in)
		if base != tt.base || ok != tt.ok {
			t.Errorf("IsIncrementalName(%q) = %q, %v; want %q, %v", tt.in, base, ok, tt.base, tt.ok)
		}
	}
}
