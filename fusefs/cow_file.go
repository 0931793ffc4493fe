package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
)

type fileKind int

const (
	kindLower   fileKind = iota // unchanged: all of it comes from the chain
	kindOverlay                 // upper blocks over a lower file (see upper.go)
	kindWhole                   // all of it is the upper file
)

// fileState is where a regular file's bytes live now.
type fileState struct {
	kind  fileKind
	lower *lowerEntry // kindLower: the file; kindOverlay: its origin
	fd    *os.File    // kindOverlay, kindWhole: the upper file, read-write

	limit   int64    // kindOverlay: bytes below it show the origin where the upper has no block
	size    int64    // kindOverlay: the file's length
	present []uint64 // kindOverlay: a bit per block the upper file holds
	gen     uint64   // kindOverlay: counts truncations (dropFrom), for hydration's fillBlocks
	added   uint64   // kindOverlay: counts blocks marked present, for hydration's makeWhole
	torn    []int64  // kindOverlay, at load: blocks only partly allocated

	// dirSync is the merged path of an upper directory to fsync on the
	// file's next fsync (when dirSyncDue): the one whose entry made the
	// upper file appear.
	dirSync    string
	dirSyncDue bool
	// cachedOpens counts open handles served through the page cache; a
	// file with some is not offered for passthrough (the kernel refuses to
	// mix the two on one inode).
	cachedOpens int
	// directAt: the last direct open of the file while it was not whole;
	// opens stay direct for directGrace after it (see newHandle).
	directAt time.Time
	// whole (kindOverlay): hydration filled every block and removed the
	// overlay's xattrs while cached opens were open; pending (kindLower):
	// the whole upper copy hydration installed meanwhile, and
	// pendingDirSync its dirSync. promote applies them.
	whole          bool
	pending        *os.File
	pendingDirSync string
}

// promote makes a file hydration completed while it was open through the
// page cache a whole upper file, served natively (by passthrough where the
// mount has it) from its next open on: the kernel refuses a passthrough
// open of an inode with cached opens, so it waits until none is left.
// Caller holds the node's mu (or the state is the caller's alone).
func (s *fileState) promote() bool {
	switch {
	case s.kind == kindOverlay && s.whole:
		s.kind, s.lower, s.present, s.torn, s.whole = kindWhole, nil, nil, nil, false
	case s.kind == kindLower && s.pending != nil:
		s.kind, s.fd, s.lower, s.dirSync, s.dirSyncDue = kindWhole, s.pending, nil, s.pendingDirSync, true
		s.pending = nil
	default:
		return false
	}
	return true
}

func (s *fileState) has(b int64) bool {
	return b>>6 < int64(len(s.present)) && s.present[b>>6]&(1<<(b&63)) != 0
}

func (s *fileState) mark(b int64) {
	for b>>6 >= int64(len(s.present)) {
		s.present = append(s.present, 0)
	}
	if s.present[b>>6]&(1<<(b&63)) == 0 {
		s.added++
	}
	s.present[b>>6] |= 1 << (b & 63)
}

// markRange marks the blocks [from, to).
func (s *fileState) markRange(from, to int64) {
	for b := from; b < to; b++ {
		s.mark(b)
	}
}

// missingBytes is about how many bytes below the limit an overlay does not
// hold.
func (s *fileState) missingBytes() int64 {
	blocks := (min(s.limit, s.size) + format.BlockSize - 1) / format.BlockSize
	held := int64(0)
	for i, w := range s.present {
		if int64(i)*64 >= blocks {
			break
		}
		held += int64(bits.OnesCount64(w))
	}
	return max(blocks-held, 0) * format.BlockSize
}

// dropFrom forgets the blocks from block b on.
func (s *fileState) dropFrom(b int64) {
	s.gen++
	for i := b; i < int64(len(s.present))*64; i++ {
		if i&63 == 0 && i>>6 < int64(len(s.present)) {
			s.present = s.present[:i>>6]
			return
		}
		s.present[i>>6] &^= 1 << (i & 63)
	}
}

// state loads the file's storage on first use.
func (n *cowNode) state() (*fileState, syscall.Errno) {
	n.mu.RLock()
	st := n.st
	n.mu.RUnlock()
	if st != nil {
		return st, 0
	}
	n.c.ns.RLock()
	defer n.c.ns.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st != nil {
		return n.st, 0
	}
	st, err := n.load()
	if errors.Is(err, os.ErrNotExist) {
		// Unlinked before anything opened it; the kernel still sets the
		// times of such files when it evicts them (writeback cache).
		return nil, syscall.ENOENT
	}
	if err != nil {
		return nil, n.c.m.errno(err, "load %s", n.Path(nil))
	}
	n.st = st
	return st, 0
}

// load reads the state of the file at its current path from the upper
// directory, or finds it in the chain. Caller holds ns and n.mu.
func (n *cowNode) load() (*fileState, error) {
	rel, ok := n.rel()
	if !ok {
		return nil, os.ErrNotExist
	}
	return n.c.loadAt(rel, true)
}

// loadAt reads the state of the file at merged path rel. Caller holds ns;
// with repair (see repairTorn), nothing else may write the file meanwhile.
func (c *cowFS) loadAt(rel string, repair bool) (*fileState, error) {
	p, done, err := c.up.at(rel)
	defer done()
	var f *os.File
	if err == nil {
		f, err = os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	}
	if err == nil {
		origin, limit, overlay, err := overlayAttrs(int(f.Fd()))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("upper file %s: %w", rel, err)
		}
		if !overlay {
			return &fileState{kind: kindWhole, fd: f}, nil
		}
		le := c.lower[origin]
		if le == nil || le.dir || le.link != "" {
			f.Close()
			return nil, fmt.Errorf("upper file %s overlays %q, which is not in the chain point", rel, origin)
		}
		st := &fileState{kind: kindOverlay, lower: le, fd: f, limit: limit}
		var s unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &s); err != nil {
			f.Close()
			return nil, err
		}
		st.size = s.Size
		if err := scanBlocks(f, st); err != nil {
			f.Close()
			return nil, err
		}
		if !repair {
			return st, nil
		}
		if err := c.repairTorn(st); err != nil {
			f.Close()
			return nil, fmt.Errorf("upper file %s: %w", f.Name(), err)
		}
		return st, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	le := c.lower[rel]
	if le == nil || le.dir || le.link != "" {
		return nil, os.ErrNotExist
	}
	return &fileState{kind: kindLower, lower: le}, nil
}

// scanBlocks finds the blocks an overlay file holds with SEEK_DATA/HOLE.
func scanBlocks(f *os.File, st *fileState) error {
	fd := int(f.Fd())
	for off := int64(0); off < st.size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return err
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if d%format.BlockSize != 0 {
			st.torn = append(st.torn, d/format.BlockSize)
		}
		if h%format.BlockSize != 0 && h < st.size {
			st.torn = append(st.torn, h/format.BlockSize)
		}
		for b := d / format.BlockSize; b*format.BlockSize < h; b++ {
			st.mark(b)
		}
		off = h
	}
	return nil
}

// ensureUpper gives the file an upper representation (copy-up).
func (n *cowNode) ensureUpper() syscall.Errno {
	st, errno := n.state()
	if errno != 0 {
		return errno
	}
	n.mu.RLock()
	kind := st.kind
	n.mu.RUnlock()
	if kind != kindLower {
		return 0
	}
	n.c.ns.Lock()
	defer n.c.ns.Unlock()
	return n.ensureUpperLocked()
}

// ensureUpperLocked copies a lower file up: block by block (an empty
// overlay) when it is large, whole when small. Caller holds ns.
func (n *cowNode) ensureUpperLocked() syscall.Errno { return n.ensureUpperWith(nil) }

// preparedUpper is an upper file made in tmp/ for lower file le ahead of
// its copy-up, without ns held (newUpperTmp fsyncs).
type preparedUpper struct {
	le  *lowerEntry
	tmp string
	f   *os.File
}

func (p *preparedUpper) discard() {
	if p != nil {
		p.f.Close()
		os.Remove(p.tmp)
	}
}

// ensureUpperWith is ensureUpperLocked with the upper file made already
// (p, or nil). It takes p: if not used, p is removed.
func (n *cowNode) ensureUpperWith(p *preparedUpper) syscall.Errno {
	if _, errno := n.stateNS(); errno != 0 {
		p.discard()
		return errno
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.st
	if st.kind != kindLower {
		p.discard()
		return 0
	}
	if st.pending != nil {
		// Hydration copied it whole already.
		p.discard()
		st.promote()
		return 0
	}
	c := n.c
	rel, attached := n.rel()
	le := st.lower
	if p != nil && p.le != le {
		p.discard()
		p = nil
	}
	var tmp string
	var f *os.File
	var err error
	if p != nil {
		tmp, f = p.tmp, p.f
	} else if tmp, f, err = c.newUpperTmp(le, func(f *os.File) error { return c.copyLower(le, f) }); err != nil {
		c.m.logf("copy-up of %s: %v", rel, err)
		return n.errno(err)
	}
	if attached {
		dirSync, err := c.installUpper(rel, tmp)
		if err != nil {
			f.Close()
			os.Remove(tmp)
			c.m.logf("copy-up of %s: %v", rel, err)
			return n.errno(err)
		}
		st.dirSync, st.dirSyncDue = dirSync, true
	} else {
		// Unlinked while open: its changes need no name.
		os.Remove(tmp)
	}
	st.fd = f
	if size := le.size(); !le.wholeCopy() {
		st.kind, st.limit, st.size = kindOverlay, size, size
	} else {
		st.kind = kindWhole
	}
	return 0
}

// newUpperTmp makes the upper file of lower file le in tmp/, fsynced: an
// empty overlay (origin, limit, size) when le is copied up block by block,
// else le's whole content, written by fill.
func (c *cowFS) newUpperTmp(le *lowerEntry, fill func(f *os.File) error) (string, *os.File, error) {
	tmp := c.up.tmpName()
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, c.m.point.FileMode)
	if err != nil {
		return "", nil, err
	}
	fail := func(err error) (string, *os.File, error) {
		f.Close()
		os.Remove(tmp)
		return "", nil, err
	}
	size := le.size()
	if !le.wholeCopy() {
		if err := unix.Fsetxattr(int(f.Fd()), xattrOrigin, []byte(le.rel), 0); err != nil {
			return fail(err)
		}
		if err := setLimit(int(f.Fd()), size); err != nil {
			return fail(err)
		}
		if err := f.Truncate(size); err != nil {
			return fail(err)
		}
	} else if err := fill(f); err != nil {
		return fail(err)
	}
	// Durable before its name is: a crash must not leave a name in tree/
	// for a file whose contents (or overlay attributes) did not reach the
	// disk, hiding the lower file.
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	os.Chtimes(fdPath(int(f.Fd())), le.mtime, le.mtime)
	return tmp, f, nil
}

// installUpper renames a file of tmp/ to merged path rel in tree/, making
// its parents, and returns the merged path of the directory to fsync with
// the file. Caller holds ns.
func (c *cowFS) installUpper(rel, tmp string) (dirSync string, err error) {
	if err := c.ensureUpperDir(parentRel(rel)); err != nil {
		return "", err
	}
	p, done, err := c.up.at(rel)
	defer done()
	if err != nil {
		return "", err
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", err
	}
	return parentRel(rel), nil
}

// stateNS is state for a caller that already holds ns.
func (n *cowNode) stateNS() (*fileState, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st == nil {
		st, err := n.load()
		if err != nil {
			return nil, n.errno(err)
		}
		n.st = st
	}
	return n.st, 0
}

// copyLower writes all of a lower file to f.
func (c *cowFS) copyLower(le *lowerEntry, f *os.File) error {
	if le.file == nil {
		data, err := le.inMemory()
		if err != nil {
			return err
		}
		_, err = f.Write(data)
		return err
	}
	r, err := le.file.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(f, io.NewSectionReader(r, 0, r.Size()))
	return err
}

// readLower fills dest from a lower file at off, returning the byte count.
func (c *cowFS) readLower(le *lowerEntry, dest []byte, off int64) (int, error) {
	if le.file == nil {
		data, err := le.inMemory()
		if err != nil {
			return 0, err
		}
		if off >= int64(len(data)) {
			return 0, nil
		}
		return copy(dest, data[off:]), nil
	}
	size := le.file.Size()
	if off >= size {
		return 0, nil
	}
	n := min(int64(len(dest)), size-off)
	plan, err := le.file.Plan()
	if err != nil {
		return 0, err
	}
	if plan.Whole {
		_, f, err := c.m.src.open(plan.WholeSrc)
		if err != nil {
			return 0, err
		}
		m, err := f.readFull(dest[:n], off)
		if int64(m) < n {
			if err == nil {
				err = fmt.Errorf("%s: short read", plan.WholeSrc)
			}
			return m, err
		}
		return m, nil
	}
	r, err := c.m.src.readRange(plan, off, n)
	if err != nil {
		return 0, err
	}
	return r.copyTo(dest), nil
}

// materialize copies block b of the origin into the overlay file. Caller
// holds n.mu for writing.
func (n *cowNode) materialize(st *fileState, b int64) error {
	start := b * format.BlockSize
	// Only the part of the block inside the file: the last block of a file
	// whose size is not a multiple of the block size is short.
	buf := make([]byte, max(min(format.BlockSize, st.size-start), 0))
	if start < st.limit {
		m, err := n.c.readLower(st.lower, buf[:min(int64(len(buf)), st.limit-start)], start)
		if err != nil {
			return err
		}
		clear(buf[m:])
	}
	if _, err := st.fd.WriteAt(buf, start); err != nil {
		return err
	}
	st.mark(b)
	return nil
}

// write stores data at off, copying up first.
func (n *cowNode) write(data []byte, off int64) (uint32, syscall.Errno) {
	n.c.m.stats.writeCalls.Add(1)
	if errno := n.ensureUpper(); errno != 0 {
		return 0, errno
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.st
	if st.kind == kindOverlay && len(data) > 0 {
		end := off + int64(len(data))
		for b := off / format.BlockSize; b*format.BlockSize < end; b++ {
			if st.has(b) {
				continue
			}
			bs, be := b*format.BlockSize, (b+1)*format.BlockSize
			if (off > bs || end < be) && bs < st.limit {
				// A partial write into a block still in the chain:
				// bring the whole block up first.
				if err := n.materialize(st, b); err != nil {
					return 0, n.c.m.errno(err, "copy-up of block %d of %s", b, n.Path(nil))
				}
			}
		}
		if _, err := st.fd.WriteAt(data, off); err != nil {
			return 0, n.errno(err)
		}
		for b := off / format.BlockSize; b*format.BlockSize < end; b++ {
			st.mark(b)
		}
		st.size = max(st.size, end)
		n.c.m.stats.blocksWritten.Add(uint64((end-1)/format.BlockSize - off/format.BlockSize + 1))
		return uint32(len(data)), 0
	}
	w, err := st.fd.WriteAt(data, off)
	if err != nil {
		return uint32(w), n.errno(err)
	}
	return uint32(w), 0
}

// read fills dest from off. While the mount hydrates, the blocks an
// overlay reads from the chain for the server are kept there (keep), so
// that hydration does not read and reconstruct them a second time. A file
// still wholly in the chain gets its overlay from hydration, which the
// read puts first in line (hydrator.note): made here, its fsync would be
// in the server's read, under ns (a tenth of a second and more while
// hydration writes).
func (n *cowNode) read(dest []byte, off int64, direct bool) (fuse.ReadResult, syscall.Errno) {
	hydrating := n.c.hyd.active()
	res, kept, errno := n.readAt(dest, off, hydrating, direct)
	if errno == 0 {
		n.c.m.stats.bytesServed.Add(uint64(res.Size()))
		n.keep(kept)
	}
	return res, errno
}

// keptRun is bytes of an overlay's origin read at off for the server.
type keptRun struct {
	st   *fileState
	off  int64
	data []byte
}

// keep writes the whole blocks of runs read from the chain into the
// overlay they were read for, where it still lacks them: a block the
// server wrote meanwhile is newer and stays. The bytes are the chain's, as
// hydration would write them, so a kill during a pwrite leaves a torn
// block that the next load completes from the chain (repairTorn). Keeping
// is an optimisation: a failure is logged, and the read stands; and it is
// skipped when the file's lock is busy (hydration writing it), rather than
// making the read wait.
func (n *cowNode) keep(runs []keptRun) {
	if len(runs) == 0 {
		return
	}
	if !n.mu.TryLock() {
		return // busy: hydration will copy these blocks itself
	}
	defer n.mu.Unlock()
	for _, r := range runs {
		st := r.st
		if n.st != st || st.kind != kindOverlay {
			return
		}
		end := min(r.off+int64(len(r.data)), st.limit, st.size)
		for b := (r.off + format.BlockSize - 1) / format.BlockSize; (b+1)*format.BlockSize <= end; {
			if st.has(b) {
				b++
				continue
			}
			e := b + 1
			for (e+1)*format.BlockSize <= end && !st.has(e) {
				e++
			}
			start, stop := b*format.BlockSize, e*format.BlockSize
			if _, err := st.fd.WriteAt(r.data[start-r.off:stop-r.off], start); err != nil {
				n.c.m.logf("keeping blocks %d-%d of %s read from the chain: %v", b, e-1, n.Path(nil), err)
				return
			}
			for ; b < e; b++ {
				st.mark(b)
			}
			n.c.m.stats.blocksKept.Add(uint64(stop-start) / format.BlockSize)
		}
	}
}

// readAt serves a read; with keeping, it also returns the runs it read
// from the chain for an overlay (see keep). direct: for a handle without
// the mount's page cache (FOPEN_DIRECT_IO), so the upper file is read
// through its own.
func (n *cowNode) readAt(dest []byte, off int64, keeping, direct bool) (fuse.ReadResult, []keptRun, syscall.Errno) {
	st, errno := n.state()
	if errno != 0 {
		return nil, nil, errno
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.readLocked(st, dest, off, keeping, direct)
}

// readLocked is readAt under the node's read lock.
func (n *cowNode) readLocked(st *fileState, dest []byte, off int64, keeping, direct bool) (fuse.ReadResult, []keptRun, syscall.Errno) {
	var kept []keptRun
	if st.kind != kindWhole {
		n.c.hyd.note(n)
	}
	switch st.kind {
	case kindLower:
		le := st.lower
		if le.file != nil {
			if plan, err := le.file.Plan(); err == nil && !plan.Whole {
				// Reconstructed: straight from the block cache.
				size := le.file.Size()
				if off >= size {
					return bytesResult(nil), nil, 0
				}
				r, err := n.c.m.src.readRange(plan, off, min(int64(len(dest)), size-off))
				if err != nil {
					return nil, nil, n.readErr(err, off)
				}
				return r, nil, 0
			}
		}
		m, err := n.c.readLower(le, dest, off)
		if err != nil {
			return nil, nil, n.readErr(err, off)
		}
		return bytesResult(dest[:m]), nil, 0
	case kindWhole:
		m, err := readUpper(st.fd, dest, off, direct)
		if err != nil {
			return nil, nil, n.readErr(err, off)
		}
		return bytesResult(dest[:m]), nil, 0
	}
	// Overlay: runs of upper blocks, lower blocks and zeros.
	if off >= st.size {
		return bytesResult(nil), nil, 0
	}
	end := min(off+int64(len(dest)), st.size)
	for pos := off; pos < end; {
		b := pos / format.BlockSize
		up := st.has(b)
		runEnd := (b + 1) * format.BlockSize
		for runEnd < end && st.has(runEnd/format.BlockSize) == up {
			runEnd += format.BlockSize
		}
		runEnd = min(runEnd, end)
		chunk := dest[pos-off : runEnd-off]
		switch {
		case up:
			m, err := readUpper(st.fd, chunk, pos, direct)
			if err != nil {
				return nil, nil, n.readErr(err, pos)
			}
			clear(chunk[m:])
		default:
			lowEnd := min(runEnd, max(st.limit, pos))
			if lowEnd > pos {
				m, err := n.c.readLower(st.lower, chunk[:lowEnd-pos], pos)
				if err != nil {
					return nil, nil, n.readErr(err, pos)
				}
				clear(chunk[m : lowEnd-pos])
				if keeping {
					kept = append(kept, keptRun{st: st, off: pos, data: chunk[:lowEnd-pos]})
				}
			}
			clear(chunk[lowEnd-pos:])
		}
		pos = runEnd
	}
	return bytesResult(dest[:end-off]), kept, 0
}

// errno answers the kernel for an operation on this node (Mount.errno).
func (n *cowNode) errno(err error) syscall.Errno {
	if err == nil {
		return 0 // without walking the tree for a name nobody reads
	}
	return n.c.m.errno(err, "%s", n.Path(nil))
}

func (n *cowNode) readErr(err error, off int64) syscall.Errno {
	return n.c.m.readErrno(err, "read %s at %d", n.Path(nil), off)
}

// truncate sets the file's length.
func (n *cowNode) truncate(size int64) syscall.Errno {
	st, errno := n.state()
	if errno != 0 {
		return errno
	}
	n.mu.RLock()
	unchanged := st.kind == kindLower && size == st.lower.size()
	n.mu.RUnlock()
	if unchanged {
		return 0
	}
	if errno := n.ensureUpper(); errno != 0 {
		return errno
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if st.kind == kindWhole {
		return n.errno(st.fd.Truncate(size))
	}
	if size < st.size {
		if size%format.BlockSize != 0 {
			if b := size / format.BlockSize; !st.has(b) && b*format.BlockSize < st.limit {
				if err := n.materialize(st, b); err != nil {
					return n.errno(err)
				}
			}
		}
		// Lower the limit first: a crash before the truncation then hides
		// the cut-off part rather than bringing it back later.
		if size < st.limit {
			if err := setLimit(int(st.fd.Fd()), size); err != nil {
				return n.errno(err)
			}
			st.limit = size
		}
		st.dropFrom((size + format.BlockSize - 1) / format.BlockSize)
	}
	if err := st.fd.Truncate(size); err != nil {
		return n.errno(err)
	}
	st.size = size
	return 0
}

// fsync makes the file's upper data durable, and the entry that made it
// appear the first time.
func (n *cowNode) fsync(dataOnly bool) syscall.Errno {
	st, errno := n.state()
	if errno != 0 {
		return errno
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if st.fd == nil {
		return 0
	}
	var err error
	if dataOnly && !st.dirSyncDue {
		err = unix.Fdatasync(int(st.fd.Fd()))
	} else {
		err = st.fd.Sync()
	}
	if err != nil {
		return n.errno(err)
	}
	if st.dirSyncDue {
		if err := n.c.up.syncDir(st.dirSync); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n.errno(err)
		}
		st.dirSyncDue = false
	}
	return 0
}

// Allocate handles fallocate. PostgreSQL extends relations with
// posix_fallocate (mode 0); for an overlay only the part beyond the origin's
// limit is allocated, since below it the bytes are unchanged.
func (n *cowNode) Allocate(ctx context.Context, fh gofs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if errno := n.ensureUpper(); errno != 0 {
		return errno
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.st
	if st.kind == kindWhole {
		return n.errno(unix.Fallocate(int(st.fd.Fd()), mode, int64(off), int64(size)))
	}
	if mode != 0 {
		return syscall.EOPNOTSUPP
	}
	start, end := max(int64(off), st.limit), int64(off+size)
	if end > start {
		if err := unix.Fallocate(int(st.fd.Fd()), 0, start, end-start); err != nil {
			return n.errno(err)
		}
	}
	st.size = max(st.size, end)
	return 0
}

// Open picks how the file is served: passthrough to its upper file when it
// is wholly there (and no cached handle is open), else through us. While
// hydration runs on a passthrough mount, a file not yet whole is opened
// without the page cache (FOPEN_DIRECT_IO): the kernel refuses a
// passthrough open of an inode while a cached open of it lasts, so a
// server's long-lived handles (its checkpointer holds the hot relations)
// would otherwise keep every later open of those files off passthrough
// after hydration made them whole. Otherwise the page cache is kept (all
// changes pass through the kernel).
func (n *cowNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 && flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		if errno := n.truncate(0); errno != 0 {
			return nil, 0, errno
		}
	}
	if _, errno := n.state(); errno != 0 {
		return nil, 0, errno
	}
	n.awaitWhole(ctx)
	h, fl := n.newHandle()
	return h, fl, 0
}

// awaitWhole waits, on a passthrough mount while hydrating, for hydration
// to make the file whole, if its missing bytes at hydration's rate take
// no longer than Options.HydrateOpenWait: the file goes first in hydration's line, and
// the open then goes by passthrough rather than direct. A server's
// backends keep their files open, and every read of a direct open is a
// round trip to the daemon: at 1.5 GiB a cold server's backends that
// opened the big relations direct ran pgbench -S at about 5000 TPS once
// hydration was done, against 15000 for the next backends, which opened
// them by passthrough. Waiting lifted the first 15 s of pgbench -S on a
// cold server from 0.60x of one on the combined copy to 1.84x, every open
// of a file not yet whole awaited (BENCHMARKS.md, "Opens that wait for
// hydration"). The rate is hydration's since the mount started, so early
// on it is rough; the wait is bounded either way.
func (n *cowNode) awaitWhole(ctx context.Context) {
	h := n.c.hyd
	if !h.active() || n.c.m.opts.NoPassthrough {
		return
	}
	wait := h.openWait()
	if wait <= 0 {
		return
	}
	n.mu.RLock()
	st := n.st
	missing := int64(-1)
	if st.cachedOpens == 0 && time.Since(st.directAt) >= time.Duration(directGrace.Load()) {
		switch st.kind {
		case kindLower:
			missing = st.lower.size()
		case kindOverlay:
			missing = st.missingBytes()
		}
	}
	n.mu.RUnlock()
	rate := h.stats().BytesPerSec
	if missing < 0 || rate <= 0 || float64(missing) > rate*wait.Seconds() {
		return
	}
	h.note(n)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(wait)
	for {
		n.mu.RLock()
		whole := n.st.kind == kindWhole
		n.mu.RUnlock()
		if whole {
			n.c.m.stats.awaitedOpens.Add(1)
			return
		}
		if !h.active() {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-t.C:
		}
	}
}

// directGrace is how long after a direct open of a file not yet whole its
// opens stay direct. The kernel checks an open's mode after our reply, in
// the opener's own time, and fails it (EIO) if the file has a passthrough
// open by then; so a passthrough open must not overtake a direct one
// decided just before hydration made the file whole.
var directGrace atomic.Int64 // time.Duration; a variable for the tests

func init() { directGrace.Store(int64(5 * time.Second)) }

func (n *cowNode) newHandle() (gofs.FileHandle, uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.st
	passthrough := !n.c.m.opts.NoPassthrough
	if st.cachedOpens == 0 && passthrough {
		switch now := time.Now(); {
		case st.kind != kindWhole && n.c.hyd.active():
			st.directAt = now
			fallthrough
		case st.kind == kindWhole && now.Sub(st.directAt) < time.Duration(directGrace.Load()):
			n.c.m.stats.directOpens.Add(1)
			return &cowHandle{n: n, direct: true}, fuse.FOPEN_DIRECT_IO
		case st.kind == kindWhole:
			n.c.m.stats.wholeOpens.Add(1)
			return &cowHandle{n: n, passthrough: true}, 0
		}
	}
	st.cachedOpens++
	if st.kind == kindWhole && passthrough {
		// Its data may have changed behind the page cache (passthrough).
		return &cowHandle{n: n}, 0
	}
	n.c.m.stats.reconOpens.Add(1)
	return &cowHandle{n: n}, fuse.FOPEN_KEEP_CACHE
}

// cowHandle is an open file of a copy-on-write mount.
type cowHandle struct {
	n           *cowNode
	passthrough bool
	direct      bool // FOPEN_DIRECT_IO: neither passthrough nor the page cache
}

var (
	_ gofs.FilePassthroughFder = (*cowHandle)(nil)
	_ gofs.FileReader          = (*cowHandle)(nil)
	_ gofs.FileWriter          = (*cowHandle)(nil)
	_ gofs.FileFsyncer         = (*cowHandle)(nil)
	_ gofs.FileReleaser        = (*cowHandle)(nil)
	_ gofs.FileFlusher         = (*cowHandle)(nil)
)

func (h *cowHandle) PassthroughFd() (int, bool) {
	if !h.passthrough {
		return 0, false
	}
	h.n.c.m.stats.passthroughOpens.Add(1)
	return int(h.n.st.fd.Fd()), true
}

func (h *cowHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return h.n.read(dest, off, h.direct)
}

func (h *cowHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return h.n.write(data, off)
}

func (h *cowHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.n.fsync(flags&1 != 0)
}

func (h *cowHandle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *cowHandle) Release(ctx context.Context) syscall.Errno {
	if !h.passthrough && !h.direct {
		h.n.mu.Lock()
		st := h.n.st
		st.cachedOpens--
		if st.cachedOpens == 0 && st.promote() {
			h.n.c.m.stats.promoted.Add(1)
		}
		h.n.mu.Unlock()
	}
	return 0
}

// readUpper reads an upper file up to its end. Uncached where the kernel
// keeps what it asked for in the mount's page cache (FOPEN_KEEP_CACHE): a
// second copy in the upper file's would halve the memory the server's
// reads have. Through the upper file's page cache for a direct handle,
// which has no other.
func readUpper(f *os.File, b []byte, off int64, direct bool) (int, error) {
	if !direct {
		return readFull(f, b, off)
	}
	n, err := f.ReadAt(b, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}
