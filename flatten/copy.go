package flatten

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/resolver"
)

// CopyMethod is how whole files (and, where the method allows, runs of
// blocks) are copied. The bytes written are the same for every method.
type CopyMethod int

// The methods pg_combinebackup offers (--copy, --copy-file-range, --clone,
// and PostgreSQL 18's --link).
const (
	Copy CopyMethod = iota
	CopyFileRange
	Clone
	Link
)

func (m CopyMethod) String() string {
	return [...]string{"copy", "copy-file-range", "clone", "link"}[m]
}

const copyChunk = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyChunk); return &b }}

// zeros is written for runs no backup supplies (pg_combinebackup writes zero
// blocks rather than leaving holes, so the output is fully allocated).
var zeros = make([]byte, copyChunk)

// copyWhole creates dst as a copy of src (size bytes) with method m, hashing
// the data into h when h is not nil. The destination must not exist;
// writeback starts writing it to disk (see finish).
func copyWhole(src, dst string, size int64, mode os.FileMode, m CopyMethod, h hash.Hash, writeback bool) error {
	if m == Link {
		if err := os.Link(src, dst); err != nil {
			return fmt.Errorf("error while linking file from %q to %q: %w", src, dst, osErr(err))
		}
		return hashFile(src, h)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	switch m {
	case Clone:
		if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
			out.Close()
			os.Remove(dst)
			return fmt.Errorf("error while cloning file %q to %q: %w", src, dst, osErr(err))
		}
		if err := finish(out, writeback); err != nil {
			return err
		}
		return hashFile(src, h)
	case CopyFileRange:
		if err := copyRange(out, in, 0, 0, size); err != nil {
			out.Close()
			return fmt.Errorf("error while copying file range from %q to %q: %w", src, dst, osErr(err))
		}
		if err := finish(out, writeback); err != nil {
			return err
		}
		return hashFile(src, h)
	}
	// Copy: without a checksum to compute the kernel can move the data
	// itself; with one, the data passes through us once anyway.
	if h == nil {
		err = copyRange(out, in, 0, 0, size)
		if errors.Is(err, errNoCopyRange) {
			err = copyBuffered(out, in, 0, 0, size, nil)
		}
	} else {
		err = copyBuffered(out, in, 0, 0, size, h)
	}
	if err != nil {
		out.Close()
		return fmt.Errorf("could not copy %q to %q: %w", src, dst, err)
	}
	return finish(out, writeback)
}

// finish closes a written output file, first asking the kernel to start
// writing it back when the output will be synced: the final fsync pass then
// finds most of the data on disk already, and writeback overlaps the
// copying of the other files.
func finish(out *os.File, writeback bool) error {
	if writeback {
		unix.SyncFileRange(int(out.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	return out.Close()
}

var errNoCopyRange = errors.New("copy_file_range not supported")

// copyRange copies n bytes with copy_file_range.
func copyRange(out, in *os.File, outOff, inOff, n int64) error {
	for n > 0 {
		chunk := n
		if chunk > 1<<30 {
			chunk = 1 << 30
		}
		w, err := unix.CopyFileRange(int(in.Fd()), &inOff, int(out.Fd()), &outOff, int(chunk), 0)
		if err != nil {
			if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return errNoCopyRange
			}
			return err
		}
		if w == 0 {
			return fmt.Errorf("source ended %d bytes early", n)
		}
		n -= int64(w)
	}
	return nil
}

// copyBuffered copies n bytes through a buffer, hashing them into h.
func copyBuffered(out, in *os.File, outOff, inOff, n int64, h hash.Hash) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for n > 0 {
		chunk := buf
		if int64(len(chunk)) > n {
			chunk = chunk[:n]
		}
		r, err := in.ReadAt(chunk, inOff)
		if r < len(chunk) {
			if err == nil || err == io.EOF {
				err = fmt.Errorf("could not read from file %q, offset %d: read %d of %d", in.Name(), inOff, r, len(chunk))
			}
			return err
		}
		if h != nil {
			h.Write(chunk)
		}
		if _, err := out.WriteAt(chunk, outOff); err != nil {
			return err
		}
		n -= int64(r)
		inOff += int64(r)
		outOff += int64(r)
	}
	return nil
}

// hashFile feeds the contents of path into h (a no-op for a nil h).
func hashFile(path string, h hash.Hash) error {
	if h == nil {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	_, err = io.CopyBuffer(h, f, *bp)
	return err
}

// writeReconstructed creates dst from the extents of plan, hashing the output
// into h. Runs of data are copied with the fastest primitive the method
// allows: copy_file_range or a clone of the range when the data need not be
// hashed, a buffered copy otherwise; zero runs are written as zeros.
func writeReconstructed(plan *resolver.Plan, dst string, mode os.FileMode, m CopyMethod, h hash.Hash, writeback bool) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	srcs := map[string]*os.File{}
	defer func() {
		for _, f := range srcs {
			f.Close()
		}
	}()
	for _, e := range plan.Extents {
		if e.Layer == resolver.Zeros {
			if err := writeZeros(out, e.Off, e.Len, h); err != nil {
				out.Close()
				return err
			}
			continue
		}
		in, ok := srcs[e.Src]
		if !ok {
			if in, err = os.Open(e.Src); err != nil {
				out.Close()
				return err
			}
			srcs[e.Src] = in
		}
		err = errNoCopyRange
		if h == nil && m != Copy {
			if m == Clone {
				err = cloneRange(out, in, e.Off, e.SrcOff, e.Len)
			} else {
				err = copyRange(out, in, e.Off, e.SrcOff, e.Len)
			}
		}
		if errors.Is(err, errNoCopyRange) {
			err = copyBuffered(out, in, e.Off, e.SrcOff, e.Len, h)
		}
		if err != nil {
			out.Close()
			return fmt.Errorf("reconstructing %q from %q: %w", dst, e.Src, err)
		}
	}
	return finish(out, writeback)
}

func cloneRange(out, in *os.File, outOff, inOff, n int64) error {
	err := unix.IoctlFileCloneRange(int(out.Fd()), &unix.FileCloneRange{
		Src_fd: int64(in.Fd()), Src_offset: uint64(inOff), Src_length: uint64(n), Dest_offset: uint64(outOff)})
	if err != nil {
		return copyRange(out, in, outOff, inOff, n)
	}
	return nil
}

func writeZeros(out *os.File, off, n int64, h hash.Hash) error {
	for n > 0 {
		chunk := zeros
		if int64(len(chunk)) > n {
			chunk = chunk[:n]
		}
		if h != nil {
			h.Write(chunk)
		}
		if _, err := out.WriteAt(chunk, off); err != nil {
			return err
		}
		off += int64(len(chunk))
		n -= int64(len(chunk))
	}
	return nil
}
