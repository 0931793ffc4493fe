package flatten

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/combinefs/combinefs/resolver"
)

// A chain in an object store is flattened by reading each object once, in
// order: a whole file front to back, and each source of a reconstructed one
// through its blocks in increasing order (an INCREMENTAL file lists its
// blocks sorted, and an older full copy supplies blocks in block order).
// seqReader turns those reads into ranged GETs of remoteWindow bytes, the
// next remoteAhead of them fetched in parallel ahead of the reader, so that
// one file's copy keeps several requests in flight instead of waiting on a
// round trip per MiB.
const (
	remoteWindow = 4 << 20
	remoteAhead  = 3
)

// openSource opens a file of a plan's source: an *os.File locally, a
// seqReader on an object store.
func openSource(from resolver.Source, path string) (source, error) {
	if resolver.IsLocal(from) {
		return os.Open(path)
	}
	f, err := from.Open(path)
	if err != nil {
		return nil, err
	}
	return newSeqReader(f), nil
}

// seqReader reads a file of an object store by windows of remoteWindow
// bytes, fetching the windows after the one being read ahead of time. A
// read before the windows it holds fetches again: correct, only slower.
type seqReader struct {
	f resolver.SourceFile

	mu      sync.Mutex
	wins    map[int64]*window // by index (offset / remoteWindow)
	running sync.WaitGroup
}

type window struct {
	done chan struct{}
	data []byte
	err  error
}

func newSeqReader(f resolver.SourceFile) *seqReader {
	return &seqReader{f: f, wins: map[int64]*window{}}
}

func (r *seqReader) Name() string { return r.f.Name() }

// Close waits for the fetches in flight and closes the file.
func (r *seqReader) Close() error {
	r.running.Wait()
	return r.f.Close()
}

// get returns window i, starting its fetch and those of the remoteAhead
// after it if they are not under way, and forgets the windows before it.
func (r *seqReader) get(i int64) *window {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := (r.f.Size() - 1) / remoteWindow
	for j := i; j <= min(i+remoteAhead, last); j++ {
		if _, ok := r.wins[j]; ok {
			continue
		}
		w := &window{done: make(chan struct{})}
		r.wins[j] = w
		r.running.Add(1)
		go func(off int64) {
			defer r.running.Done()
			defer close(w.done)
			w.data = make([]byte, min(remoteWindow, r.f.Size()-off))
			n, err := r.f.ReadAt(w.data, off)
			if n < len(w.data) {
				if err == nil || errors.Is(err, io.EOF) {
					err = fmt.Errorf("%s: the object ended at %d, before its listed size %d", r.f.Name(), off+int64(n), r.f.Size())
				}
				w.err = err
			}
		}(j * remoteWindow)
	}
	for j := range r.wins {
		if j < i {
			delete(r.wins, j) // a fetch still running just ends unread
		}
	}
	return r.wins[i]
}

// ReadAt fills p from off through the windows.
func (r *seqReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= r.f.Size() {
			return n, io.EOF
		}
		w := r.get(pos / remoteWindow)
		<-w.done
		if w.err != nil {
			return n, w.err
		}
		n += copy(p[n:], w.data[pos%remoteWindow:])
	}
	return n, nil
}
