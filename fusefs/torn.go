package fusefs

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
)

// repairTorn completes the blocks of an overlay that a kill cut in the
// middle of their pwrite: the kernel stops a write between pages on a
// fatal signal, so an 8 KiB block can be left with one page allocated and
// the other a hole, which scanBlocks counts as held. Below the limit the
// hole then read as zeros instead of the chain's bytes; it is filled with
// the chain's bytes instead. For a block hydration or a copy-up was writing
// that is exactly its content; for a block the server was writing (and was
// never told was written) it is a torn page of old and new halves, which
// PostgreSQL's full-page writes repair at recovery as on any disk.
func (c *cowFS) repairTorn(st *fileState) error {
	fd := int(st.fd.Fd())
	for _, b := range st.torn {
		bs := b * format.BlockSize
		be := min(bs+format.BlockSize, st.size, st.limit)
		if be <= bs {
			continue
		}
		lower := make([]byte, be-bs)
		if _, err := c.readLower(st.lower, lower, bs); err != nil {
			return err
		}
		for pos := bs; pos < be; {
			hs, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
			if err != nil {
				return err
			}
			if hs >= be {
				break
			}
			ds, err := unix.Seek(fd, hs, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				ds = be
			} else if err != nil {
				return err
			}
			he := min(ds, be)
			if _, err := unix.Pwrite(fd, lower[hs-bs:he-bs], hs); err != nil {
				return err
			}
			c.m.logf("completed block %d of %s (torn by a crash) from the chain", b, st.lower.rel)
			pos = he
		}
	}
	st.torn = nil
	return nil
}
