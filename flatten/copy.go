package flatten

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/resolver"
)

// outFiles creates the output files the data of which passes through us
// (--copy, and reconstructed files whose checksum we compute): those of
// 1 MiB and more are written direct (package dio). Where copy_file_range,
// a clone or a link moves the data, the kernel writes it.
var outFiles dio.Creator

// bufferedOut creates them through the page cache, for Options.Buffered.
var bufferedOut = func() *dio.Creator { var c dio.Creator; c.Disable(); return &c }()

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

// bufPool holds the 1 MiB buffers of copies and assemblers. Taken
// fresh for every file they made garbage at the copy rate, and the heap,
// collected only as it doubled, kept growing with the size of the backup.
var bufPool = sync.Pool{New: func() any { b := dio.AlignedBuf(copyChunk); return &b }}

// getBuf returns a pooled buffer of copyChunk bytes; putBuf gives it back.
func getBuf() []byte { return *bufPool.Get().(*[]byte) }

func putBuf(b []byte) {
	b = b[:cap(b)]
	bufPool.Put(&b)
}

// zeros is written for runs no backup supplies (pg_combinebackup writes zero
// blocks rather than leaving holes, so the output is fully allocated).
var zeros = make([]byte, copyChunk)

// copyWhole creates dst as a copy of plan's whole source file (size bytes)
// with method m, hashing the data into h when h is not nil. The destination
// must not exist; writeback starts writing it to disk (see finish).
func copyWhole(cr *dio.Creator, plan *resolver.Plan, dst string, size int64, mode os.FileMode, m CopyMethod, h hash.Hash, writeback bool) error {
	src := plan.WholeSrc
	local := resolver.IsLocal(plan.Source)
	if m == Link && local {
		if err := os.Link(src, dst); err != nil {
			return fmt.Errorf("error while linking file from %q to %q: %w", src, dst, osErr(err))
		}
		return hashFile(src, h)
	}
	from, err := openSource(plan.Source, src)
	if err != nil {
		return err
	}
	defer from.(io.Closer).Close()
	if !local || m == Copy && h != nil {
		// The data passes through us for the checksum anyway (or comes
		// from an object store, and passes through us whatever the method).
		out, err := cr.Create(dst, mode, size)
		if err != nil {
			return err
		}
		if err := copyBuffered(out, from, 0, 0, size, h); err != nil {
			out.Close()
			return fmt.Errorf("could not copy %q to %q: %w", src, dst, err)
		}
		return finish(out.File, writeback)
	}
	in := from.(*os.File)
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
	// Copy without a checksum to compute: the kernel can move the data
	// itself.
	err = copyRange(out, in, 0, 0, size)
	if errors.Is(err, errNoCopyRange) {
		err = copyBuffered(out, in, 0, 0, size, nil)
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

// source is what the copies read: an *os.File, or a file of an object
// store (a seqReader).
type source interface {
	io.ReaderAt
	Name() string
}

// copyBuffered copies n bytes through a buffer, hashing them into h.
func copyBuffered(out io.WriterAt, in source, outOff, inOff, n int64, h hash.Hash) error {
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

// WriteReconstructed creates dst (which must not exist) from the extents of
// plan, size bytes written direct where the file system allows, hashing
// them into h: flatten's reconstruction for other writers of a point's
// files (the mount's --cache-dir). It does not sync dst.
func WriteReconstructed(plan *resolver.Plan, dst string, size int64, mode os.FileMode, h hash.Hash) error {
	return writeReconstructed(&outFiles, plan, dst, size, mode, Copy, h, false)
}

// writeReconstructed creates dst from the extents of plan, hashing the output
// into h. The output is assembled in a buffer written chunkSize bytes at a
// time; each run of blocks is read with one pread straight into it, as
// pg_combinebackup reads them. (Reading each source forward through 1 MiB
// windows instead, to make fewer reads, copied 1.9 times the bytes out of
// the page cache, twice over: at 1.5 GB that copy was half of our CPU time
// and made the flatten slower than pg_combinebackup on a 2-CPU machine.)
// Only runs of at least chunkSize that need no hashing go through
// copy_file_range or a clone.
func writeReconstructed(cr *dio.Creator, plan *resolver.Plan, dst string, size int64, mode os.FileMode, m CopyMethod, h hash.Hash, writeback bool) error {
	var (
		out *os.File
		w   *assembler
		err error
	)
	if m == Copy || h != nil {
		// Every byte passes through us (no copy_file_range or clone of
		// runs, which is only for unhashed output): write direct.
		f, err := cr.Create(dst, mode, size)
		if err != nil {
			return err
		}
		out, w = f.File, &assembler{out: f}
	} else {
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		out, w = f, &assembler{out: f}
	}
	w.h, w.buf = h, getBuf()[:0]
	local := resolver.IsLocal(plan.Source)
	srcs := map[string]source{}
	defer func() {
		putBuf(w.buf)
		for _, f := range srcs {
			f.(io.Closer).Close()
		}
	}()
	fail := func(err error) error {
		w.wait()
		out.Close()
		return fmt.Errorf("reconstructing %q: %w", dst, err)
	}
	for _, e := range plan.Extents {
		if e.Layer == resolver.Zeros {
			if err := w.zeros(e.Len); err != nil {
				return fail(err)
			}
			continue
		}
		src, ok := srcs[e.Src]
		if !ok {
			if src, err = openSource(plan.Source, e.Src); err != nil {
				return fail(err)
			}
			srcs[e.Src] = src
		}
		if f, ok := src.(*os.File); ok && local && h == nil && m != Copy && e.Len >= chunkSize {
			if err := w.flush(); err != nil {
				return fail(err)
			}
			if m == Clone {
				err = cloneRange(out, f, w.off, e.SrcOff, e.Len)
			} else {
				err = copyRange(out, f, w.off, e.SrcOff, e.Len)
			}
			if err == nil {
				w.off += e.Len
				continue
			}
			if !errors.Is(err, errNoCopyRange) {
				return fail(err)
			}
		}
		if err := w.readFrom(src, e.SrcOff, e.Len); err != nil {
			return fail(err)
		}
	}
	if err := w.flush(); err != nil {
		return fail(err)
	}
	if err := w.wait(); err != nil {
		return fail(err)
	}
	return finish(out, writeback)
}

const chunkSize = copyChunk

// assembler writes the output sequentially in chunkSize writes, hashing it.
// The writes of a file larger than a chunk are made by a goroutine of their
// own, up to writesAhead behind, so that reading the next chunk overlaps
// writing the last: a direct write returns only once the device has the
// data, and the largest segment, alone at the end of a flatten, was a
// read-then-wait loop.
type assembler struct {
	out io.WriterAt
	h   hash.Hash
	buf []byte
	off int64 // output offset of buf[0]

	queue chan chunk // to the writer, once started
	done  chan error // the writer's first error, when it ends
}

type chunk struct {
	b   []byte
	off int64
}

const writesAhead = 2

func (a *assembler) add(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), cap(a.buf)-len(a.buf))
		a.buf = append(a.buf, b[:n]...)
		b = b[n:]
		if len(a.buf) == cap(a.buf) {
			if err := a.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// readFrom reads n bytes of f at off into the output.
func (a *assembler) readFrom(f source, off, n int64) error {
	for n > 0 {
		k := len(a.buf)
		m := min(n, int64(cap(a.buf)-k))
		r, err := f.ReadAt(a.buf[k:k+int(m)], off)
		if int64(r) < m {
			if err == nil || err == io.EOF {
				err = fmt.Errorf("could not read from file %q, offset %d: read %d of %d", f.Name(), off, r, m)
			}
			return err
		}
		a.buf = a.buf[:k+int(m)]
		off, n = off+m, n-m
		if len(a.buf) == cap(a.buf) {
			if err := a.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *assembler) zeros(n int64) error {
	for n > 0 {
		m := min(n, int64(len(zeros)))
		if err := a.add(zeros[:m]); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

func (a *assembler) flush() error {
	if len(a.buf) == 0 {
		return nil
	}
	if a.h != nil {
		a.h.Write(a.buf)
	}
	if len(a.buf) < cap(a.buf) && a.queue == nil {
		// The whole file, or the rest of it before a copied run.
		if _, err := a.out.WriteAt(a.buf, a.off); err != nil {
			return err
		}
		a.off += int64(len(a.buf))
		a.buf = a.buf[:0]
		return nil
	}
	if a.queue == nil {
		a.queue, a.done = make(chan chunk, writesAhead), make(chan error, 1)
		go func(out io.WriterAt, queue <-chan chunk) {
			var err error
			for c := range queue {
				if err == nil {
					_, err = out.WriteAt(c.b, c.off)
				}
				putBuf(c.b)
			}
			a.done <- err
		}(a.out, a.queue)
	}
	a.queue <- chunk{a.buf, a.off}
	a.off += int64(len(a.buf))
	a.buf = getBuf()[:0]
	return nil
}

// wait returns once every write is made, with the first error.
func (a *assembler) wait() error {
	if a.queue == nil {
		return nil
	}
	close(a.queue)
	err := <-a.done
	a.queue = nil
	return err
}

func cloneRange(out, in *os.File, outOff, inOff, n int64) error {
	err := unix.IoctlFileCloneRange(int(out.Fd()), &unix.FileCloneRange{
		Src_fd: int64(in.Fd()), Src_offset: uint64(inOff), Src_length: uint64(n), Dest_offset: uint64(outOff)})
	if err != nil {
		return copyRange(out, in, outOff, inOff, n)
	}
	return nil
}
