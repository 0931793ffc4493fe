package verify

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
)

// ReadBack holds files of a backup read back as they were written,
// before the manifest listing them existed: a writer (compact,
// through flatten's OnFileWritten) checks each finished file while it
// writes the others, so that the reads overlap the writes instead of
// following them. Backup, given it in Options, then compares those files'
// manifest entries with what was read instead of reading the files again;
// everything else it checks as usual. Safe for concurrent use.
type ReadBack struct {
	mu   sync.Mutex
	read map[string]format.ManifestFile // by manifest path
}

// NewReadBack returns an empty ReadBack.
func NewReadBack() *ReadBack { return &ReadBack{read: map[string]format.ManifestFile{}} }

// readBufs are the buffers of Check (one per running check).
var readBufs = sync.Pool{New: func() any { b := dio.AlignedBuf(1 << 20); return &b }}

// Check reads the file at path, which the manifest will list as f, through
// the page cache (the writer wrote it there, so the read costs no disk
// I/O; fsync then makes those bytes durable) and checks its size and
// checksum against f's. A file that matches is recorded; problem says why
// one does not. A file without a checksum (WAL) is not read: Backup checks
// WAL by parsing it.
func (rb *ReadBack) Check(path string, f format.ManifestFile) (problem string, err error) {
	if f.Algorithm == format.ChecksumNone {
		return "", nil
	}
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	problem, err = checkDiskFile(path, &f, *bp, false)
	if problem != "" || err != nil {
		return problem, err
	}
	f.Checksum = bytes.Clone(f.Checksum)
	rb.mu.Lock()
	rb.read[f.Path] = f
	rb.mu.Unlock()
	return "", nil
}

// verdict compares the manifest entry f with the file read back under its
// path: read is false when none was (or with another algorithm), and the
// file must be read now.
func (rb *ReadBack) verdict(f *format.ManifestFile) (problem string, read bool) {
	if rb == nil {
		return "", false
	}
	rb.mu.Lock()
	r, found := rb.read[f.Path]
	rb.mu.Unlock()
	switch {
	case !found || r.Algorithm != f.Algorithm:
		return "", false
	case r.Size != f.Size:
		return fmt.Sprintf("file %q should contain %d bytes, but read %d bytes", f.Path, f.Size, r.Size), true
	case !bytes.Equal(r.Checksum, f.Checksum):
		return fmt.Sprintf("checksum mismatch for file %q", f.Path), true
	}
	return "", true
}
