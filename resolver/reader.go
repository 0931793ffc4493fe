package resolver

import (
	"fmt"
	"io"
	"sync"
)

// Reader reads a file of a point through its extent map. It implements
// io.ReaderAt to the letter: safe for parallel use, no seek offset, a short
// read only at the end of the file (with io.EOF).
type Reader struct {
	plan *Plan
	size int64

	mu  sync.Mutex
	fds map[string]SourceFile
}

// Open resolves f and returns a reader; Close releases the source files.
func (f *File) Open() (*Reader, error) {
	p, err := f.Plan()
	if err != nil {
		return nil, err
	}
	return newReader(p, f.size), nil
}

func newReader(p *Plan, size int64) *Reader {
	return &Reader{plan: p, size: size, fds: map[string]SourceFile{}}
}

// Size is the length of the file.
func (r *Reader) Size() int64 { return r.size }

// Plan is the extent map the reader follows.
func (r *Reader) Plan() *Plan { return r.plan }

func (r *Reader) source(path string) (SourceFile, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.fds[path]; ok {
		return f, nil
	}
	f, err := r.plan.Source.Open(path)
	if err != nil {
		return nil, err
	}
	r.fds[path] = f
	return f, nil
}

// ReadAt fills p from offset off.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("resolver: negative offset %d", off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := r.size - off; int64(want) > rem {
		want = int(rem)
	}
	n := 0
	for i := r.plan.extentAt(off); n < want; i++ {
		e := r.plan.Extents[i]
		skip := off + int64(n) - e.Off
		chunk := p[n:want]
		if int64(len(chunk)) > e.Len-skip {
			chunk = chunk[:e.Len-skip]
		}
		if e.Layer == Zeros {
			clear(chunk)
		} else {
			src, err := r.source(e.Src)
			if err != nil {
				return n, err
			}
			m, err := src.ReadAt(chunk, e.SrcOff+skip)
			if m < len(chunk) {
				if err == nil || err == io.EOF {
					err = fmt.Errorf("%s: file shrank: read %d of %d bytes at offset %d", e.Src, m, len(chunk), e.SrcOff+skip)
				}
				return n + m, err
			}
		}
		n += len(chunk)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Close closes the source files.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var first error
	for _, f := range r.fds {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	r.fds = map[string]SourceFile{}
	return first
}
