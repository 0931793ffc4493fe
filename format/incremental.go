package format

import (
	"encoding/binary"
	"io"
	"strings"
)

const (
	// BlockSize is PostgreSQL's BLCKSZ; combinefs supports only the default.
	BlockSize = 8192
	// RelSegSize is the number of blocks in one relation segment file
	// (RELSEG_SIZE, 1 GiB of 8 KiB blocks).
	RelSegSize = 131072
	// IncrementalMagic starts every INCREMENTAL file.
	IncrementalMagic = 0xd3ae1f0d
	// IncrementalPrefix is prepended to the name of a relation file sent
	// incrementally.
	IncrementalPrefix = "INCREMENTAL."

	incrementalFixedHeader = 12
)

// Incremental is the parsed header of an INCREMENTAL file.
type Incremental struct {
	// TruncationBlockLength is the segment's length in blocks as the backup
	// saw it; older backups may supply blocks only below it.
	TruncationBlockLength uint32
	// Blocks lists the segment-relative block numbers whose images the file
	// holds, in file order. The server sorts them, but readers must not rely
	// on it (pg_combinebackup does not check).
	Blocks []uint32
	// HeaderLength is where the first block image starts.
	HeaderLength int64
}

// IncrementalHeaderLength is the size of the header of an INCREMENTAL file
// holding n blocks: padded to BlockSize only when n > 0.
func IncrementalHeaderLength(n int) int64 {
	h := int64(incrementalFixedHeader) + 4*int64(n)
	if n > 0 && h%BlockSize != 0 {
		h += BlockSize - h%BlockSize
	}
	return h
}

// BlockOffset is the file offset of the i-th block image.
func (inc *Incremental) BlockOffset(i int) int64 {
	return inc.HeaderLength + int64(i)*BlockSize
}

// FileSize is the size the file must have: header plus all block images.
func (inc *Incremental) FileSize() int64 {
	return inc.BlockOffset(len(inc.Blocks))
}

// BlockLength is the number of blocks of the file this incremental
// reconstructs when it is the newest in its chain: the truncation length, or
// one past the highest block it holds if that is more.
func (inc *Incremental) BlockLength() uint32 {
	n := inc.TruncationBlockLength
	for _, b := range inc.Blocks {
		if b+1 > n {
			n = b + 1
		}
	}
	return n
}

// ParseIncremental reads the header of the INCREMENTAL file path, whose
// contents are r and whose size is size. Besides the checks pg_combinebackup
// makes (magic, block count and truncation length within a segment) it
// requires every listed block number to lie within a segment and the file to
// be long enough to hold every block it lists, so a truncated or corrupt file
// is caught before anything is written.
func ParseIncremental(r io.ReaderAt, size int64, path string) (*Incremental, error) {
	var fixed [incrementalFixedHeader]byte
	if err := readFull(r, fixed[:], 0, path); err != nil {
		return nil, err
	}
	magic := binary.NativeEndian.Uint32(fixed[0:])
	n := binary.NativeEndian.Uint32(fixed[4:])
	trunc := binary.NativeEndian.Uint32(fixed[8:])
	if magic != IncrementalMagic {
		return nil, errorf(path, 0, "file %q has bad incremental magic number (0x%x, expected 0x%x)", path, magic, uint32(IncrementalMagic))
	}
	if n > RelSegSize {
		return nil, errorf(path, 4, "file %q has block count %d in excess of segment size %d", path, n, RelSegSize)
	}
	if trunc > RelSegSize {
		return nil, errorf(path, 8, "file %q has truncation block length %d in excess of segment size %d", path, trunc, RelSegSize)
	}
	inc := &Incremental{TruncationBlockLength: trunc, HeaderLength: IncrementalHeaderLength(int(n))}
	if want := inc.HeaderLength + int64(n)*BlockSize; size < want {
		return nil, errorf(path, size, "file %q is too short: expected %d, found %d", path, want, size)
	}
	if n > 0 {
		raw := make([]byte, 4*int(n))
		if err := readFull(r, raw, incrementalFixedHeader, path); err != nil {
			return nil, err
		}
		inc.Blocks = make([]uint32, n)
		for i := range inc.Blocks {
			b := binary.NativeEndian.Uint32(raw[4*i:])
			// pg_combinebackup does not check this, but a block number past
			// the segment can only come from a corrupt header, and would
			// make the reconstructed segment longer than 1 GiB.
			if b >= RelSegSize {
				return nil, errorf(path, incrementalFixedHeader+4*int64(i), "file %q has block number %d in excess of segment size %d", path, b, RelSegSize)
			}
			inc.Blocks[i] = b
		}
	}
	return inc, nil
}

// AppendIncrementalHeader appends the header (with padding) of an
// INCREMENTAL file holding blocks to dst. The block images follow it in the
// order of blocks.
func AppendIncrementalHeader(dst []byte, truncationBlockLength uint32, blocks []uint32) []byte {
	start := len(dst)
	dst = binary.NativeEndian.AppendUint32(dst, IncrementalMagic)
	dst = binary.NativeEndian.AppendUint32(dst, uint32(len(blocks)))
	dst = binary.NativeEndian.AppendUint32(dst, truncationBlockLength)
	for _, b := range blocks {
		dst = binary.NativeEndian.AppendUint32(dst, b)
	}
	for int64(len(dst)-start) < IncrementalHeaderLength(len(blocks)) {
		dst = append(dst, 0)
	}
	return dst
}

// IsIncrementalName reports whether a directory entry is an INCREMENTAL file
// and returns the name of the file it stands for.
func IsIncrementalName(name string) (string, bool) {
	if !strings.HasPrefix(name, IncrementalPrefix) {
		return name, false
	}
	return name[len(IncrementalPrefix):], true
}

// readFull reads exactly len(p) bytes at off, turning a short read into an
// *Error in pg_combinebackup's wording.
func readFull(r io.ReaderAt, p []byte, off int64, path string) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err != nil && err != io.EOF {
		return err
	}
	return errorf(path, off+int64(n), "could not read file %q: read %d of %d", path, n, len(p))
}
