package capture

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// manifestTmpName is the name the manifest has until the backup is complete
// (pg_basebackup uses the same).
const manifestTmpName = "backup_manifest.tmp"

// layout says where the archives of one backup go.
type layout struct {
	// root is the (temporary) directory of the main data directory.
	root string
	// inPlace keeps tablespaces inside root as pg_tblspc/OID directories.
	inPlace bool
	// mapping relocates tablespaces (-T), old location → new.
	mapping map[string]string
	// byLocation finds a tablespace's OID from its location.
	byLocation map[string]uint32
}

// archiveDir is the directory an archive for the tablespace at location
// ("" for the main data directory) is extracted into.
func (l *layout) archiveDir(location string) (string, error) {
	if location == "" {
		return l.root, nil
	}
	if !filepath.IsAbs(location) {
		// An in-place tablespace on the server: pg_tblspc/OID, relative to
		// the data directory, which is where it goes here too.
		rel, err := cleanRel(location)
		if err != nil {
			return "", protocolErrorf("tablespace location %q: %v", location, err)
		}
		return filepath.Join(l.root, rel), nil
	}
	if l.inPlace {
		oid, ok := l.byLocation[location]
		if !ok {
			return "", protocolErrorf("archive for tablespace %q, which the server did not announce", location)
		}
		return filepath.Join(l.root, "pg_tblspc", strconv.FormatUint(uint64(oid), 10)), nil
	}
	return l.mapped(location), nil
}

// mapped applies -T to a tablespace location.
func (l *layout) mapped(location string) string {
	clean := filepath.Clean(location)
	for old, nu := range l.mapping {
		if filepath.Clean(old) == clean {
			return filepath.Clean(nu)
		}
	}
	return location
}

// cleanRel cleans a relative slash-separated path from an archive and
// refuses one that is absolute or climbs out of its directory.
func cleanRel(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("absolute or empty path %q", name)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("path %q leaves its directory", name)
	}
	return c, nil
}

// extractor is the streamSink that unpacks archives into directories as they
// arrive and writes the manifest. Each archive is parsed by archive/tar in
// its own goroutine, fed through a bounded queue so that receiving from the
// network and writing to disk overlap.
type extractor struct {
	layout *layout
	sync   *syncer
	dio    directIO
	// onData is called with the archive bytes received so far.
	onData func(done int64, archive string)
	// onProgress is called with the server's own count.
	onProgress func(done int64)
	// onFail is called, from the extracting goroutine, when an archive
	// cannot be extracted, so that the capture stops at once rather than at
	// the next message from the server.
	onFail func(error)

	received int64
	archive  string
	q        *chunkQueue
	result   chan error

	manifest     *os.File
	manifestSize int64

	mu   sync.Mutex
	dirs []string // every directory made, to fsync at the end
}

func (x *extractor) beginArchive(name, location string) error {
	dir, err := x.layout.archiveDir(location)
	if err != nil {
		return err
	}
	if err := x.mkdirAll(dir); err != nil {
		return err
	}
	x.archive = name
	x.q = newChunkQueue()
	x.result = make(chan error, 1)
	main := location == ""
	go func(q *chunkQueue) {
		err := x.untar(q, dir, main)
		if err != nil {
			err = fmt.Errorf("archive %s: %w", name, err)
			if x.onFail != nil {
				x.onFail(err)
			}
		}
		q.fail()
		x.result <- err
	}(x.q)
	x.onData(x.received, x.archive)
	return nil
}

func (x *extractor) archiveData(p []byte) error {
	x.received += int64(len(p))
	if !x.q.push(p) {
		// The extracting goroutine stopped early; its error says why.
		if err := x.endArchive(); err != nil {
			return err
		}
		return protocolErrorf("archive %s: data after the end of the archive", x.archive)
	}
	x.onData(x.received, x.archive)
	return nil
}

func (x *extractor) endArchive() error {
	if x.q == nil {
		return nil
	}
	x.q.close()
	err := <-x.result
	x.q = nil
	return err
}

func (x *extractor) beginManifest() error {
	f, err := os.OpenFile(filepath.Join(x.layout.root, manifestTmpName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	x.manifest = f
	return nil
}

func (x *extractor) manifestData(p []byte) error {
	n, err := x.manifest.Write(p)
	x.manifestSize += int64(n)
	return err
}

func (x *extractor) endManifest() error {
	if x.manifest == nil {
		return nil
	}
	f := x.manifest
	x.manifest = nil
	if x.manifestSize == 0 {
		f.Close()
		return protocolErrorf("empty backup manifest")
	}
	x.sync.file(f)
	return nil
}

func (x *extractor) progress(done int64) {
	if x.onProgress != nil {
		x.onProgress(done)
	}
}

// abort stops a running archive goroutine and closes open files after a
// failure; the caller then removes the directories.
func (x *extractor) abort() {
	if x.q != nil {
		x.q.close()
		<-x.result
		x.q = nil
	}
	if x.manifest != nil {
		x.manifest.Close()
		x.manifest = nil
	}
}

// mkdirAll makes dir and its missing parents and remembers them for fsync.
func (x *extractor) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := x.mkdirAll(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	x.addDir(dir)
	return nil
}

func (x *extractor) addDir(dir string) {
	x.mu.Lock()
	x.dirs = append(x.dirs, dir)
	x.mu.Unlock()
}

// untar unpacks one archive into dir. main is true for the main data
// directory, the only archive that may hold tablespace symlinks.
func (x *extractor) untar(r io.Reader, dir string, main bool) error {
	src := &eofReader{r: r}
	tr := tar.NewReader(src)
	buf := alignedBuf(writeSize)
	links := map[string]bool{} // symlinks made, which no entry may pass through
	madeDir := ""              // the last parent directory known to exist
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: bad tar stream: %v", ErrProtocol, err)
		}
		// PostgreSQL writes plain ustar headers (src/port/tar.c); PAX
		// records, GNU sparse maps among them, would let an archive claim
		// data it does not carry.
		if len(hdr.PAXRecords) > 0 {
			return protocolErrorf("tar entry %q has PAX extended headers, which PostgreSQL does not write", hdr.Name)
		}
		name, err := cleanRel(hdr.Name)
		if err != nil {
			return fmt.Errorf("%w: tar entry: %v", ErrProtocol, err)
		}
		for l := range links {
			if strings.HasPrefix(name, l+"/") {
				return protocolErrorf("tar entry %q lies below the symlink %q", hdr.Name, l)
			}
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		mode := fs.FileMode(hdr.Mode) & fs.ModePerm
		switch hdr.Typeflag {
		case tar.TypeDir:
			if name == "." {
				continue
			}
			if err := x.mkdirAll(filepath.Dir(target)); err != nil {
				return err
			}
			if err := os.Mkdir(target, mode|0o700); err != nil {
				if !errors.Is(err, fs.ErrExist) {
					return err
				}
				// Made already: pg_wal by the WAL receiver, pg_tblspc/OID for
				// an in-place tablespace.
				if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
					return protocolErrorf("tar directory %q collides with a file", hdr.Name)
				}
			} else {
				x.addDir(target)
			}
			if err := os.Chmod(target, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg: // archive/tar reports the old TypeRegA as TypeReg
			if parent := filepath.Dir(target); parent != madeDir {
				if err := x.mkdirAll(parent); err != nil {
					return err
				}
				madeDir = parent
			}
			if err := x.writeFile(target, mode, tr, hdr.Size, buf); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := x.symlink(main, name, hdr.Linkname, target); err != nil {
				return err
			}
			links[name] = true
		default:
			return protocolErrorf("tar entry %q has unsupported type %q", hdr.Name, hdr.Typeflag)
		}
	}
	// archive/tar also reports io.EOF when the data simply stops between two
	// entries; only an archive that ends with its two zero blocks, read
	// before the data ran out, is complete.
	if src.eof {
		return errNoTrailer
	}
	n, err := src.Read(buf)
	for ; ; n, err = src.Read(buf) {
		for _, b := range buf[:n] {
			if b != 0 {
				return protocolErrorf("data after the end of the tar archive")
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// symlink handles a symlink entry: only pg_tblspc/OID in the main archive
// may be one, pointing at the tablespace's location, which -T may map. In
// in-place mode the tablespace is a directory instead.
func (x *extractor) symlink(main bool, name, linkname, target string) error {
	dirName, oid := path.Split(name)
	if !main || dirName != "pg_tblspc/" || !isDigits(oid) {
		return protocolErrorf("unexpected symlink %q -> %q in the archive", name, linkname)
	}
	dest, err := x.layout.archiveDir(linkname)
	if err != nil {
		return err
	}
	if x.layout.inPlace || !filepath.IsAbs(linkname) {
		// The tablespace archive came first and is in place already; make
		// the directory in case it was empty (dropped during the backup).
		return x.mkdirAll(target)
	}
	if err := x.mkdirAll(filepath.Dir(target)); err != nil {
		return err
	}
	return os.Symlink(dest, target)
}

// writeFile writes size bytes from r into a new file (direct where the
// file system allows, see direct.go) and hands it to the syncer. buf is
// aligned (alignedBuf).
func (x *extractor) writeFile(target string, mode fs.FileMode, r io.Reader, size int64, buf []byte) error {
	f, err := x.dio.create(target, mode|0o600, size)
	if err != nil {
		return err
	}
	for size > 0 {
		n := int64(len(buf))
		if size < n {
			n = size
		}
		m, err := io.ReadFull(r, buf[:n])
		if m > 0 {
			if werr := f.write(buf[:m]); werr != nil {
				f.Close()
				return werr
			}
		}
		if err != nil {
			f.Close()
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return protocolErrorf("archive ends inside %s", filepath.Base(target))
			}
			return fmt.Errorf("%w: bad tar stream: %v", ErrProtocol, err)
		}
		size -= int64(m)
	}
	x.sync.file(f.File)
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// eofReader remembers whether its source has reported io.EOF.
type eofReader struct {
	r   io.Reader
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.eof = true
	}
	return n, err
}

// errNoTrailer is returned for an archive that ends without its trailer.
var errNoTrailer = fmt.Errorf("%w: archive ends without its tar trailer (truncated)", ErrProtocol)

// chunkQueue carries CopyData payloads from the receiving goroutine to an
// archive's extracting goroutine. It copies the payloads (the connection
// reuses its buffer) into pooled buffers of chunkSize and hands over full
// ones, or what there is once flushDelay has passed: a hand-over per 32 kB
// message cost a thread wake-up each, and on two CPUs that time came out of
// the server sending the backup.
type chunkQueue struct {
	ch     chan []byte
	cur    []byte
	held   []byte
	failed chan struct{}
	once   sync.Once

	mu     sync.Mutex // guards fill, timer, closed and sending on ch
	fill   []byte     // being filled by push
	timer  *time.Timer
	closed bool
}

// Hand-overs are small enough to stay in the CPU's cache between the copy
// that fills them and the copy out of them (with 1 MiB hand-overs and
// buffered 1 MiB writes a 6 GB capture took 12.5 s of CPU, with 128 kB
// 7.5 s). File data goes out in writes of 1 MiB: large files are written
// direct (direct.go), and the device takes larger direct writes faster
// (dd on the test machine: 1 MiB 1-1.9 GB/s, 128 kB 0.55-0.9 GB/s).
const (
	chunkSize  = 128 << 10            // the size of a hand-over
	queueLen   = 32                   // hand-overs that may wait
	flushDelay = 2 * time.Millisecond // how long a partial chunk may wait
	writeSize  = 1 << 20              // the largest write(2) of file data
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

func newChunkQueue() *chunkQueue {
	return &chunkQueue{ch: make(chan []byte, queueLen), failed: make(chan struct{})}
}

// push queues a copy of p; it returns false if the reader has stopped.
func (q *chunkQueue) push(p []byte) bool {
	select {
	case <-q.failed:
		return false
	default:
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(p) > 0 {
		if q.fill == nil {
			q.fill = (*chunkPool.Get().(*[]byte))[:0]
		}
		n := min(len(p), cap(q.fill)-len(q.fill))
		q.fill = append(q.fill, p[:n]...)
		p = p[n:]
		if len(q.fill) == cap(q.fill) && !q.sendLocked() {
			return false
		}
	}
	if len(q.fill) > 0 && q.timer == nil {
		q.timer = time.AfterFunc(flushDelay, q.flush)
	}
	return true
}

// flush hands over a partial chunk that waited flushDelay.
func (q *chunkQueue) flush() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.timer = nil
	if len(q.fill) > 0 && !q.closed {
		q.sendLocked()
	}
}

// sendLocked hands the buffer being filled to the reader.
func (q *chunkQueue) sendLocked() bool {
	b := q.fill
	q.fill = nil
	select {
	case q.ch <- b:
		return true
	case <-q.failed:
		chunkPool.Put(&b)
		return false
	}
}

// close tells the reader there is no more data, after what is buffered.
func (q *chunkQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.closed = true
	if q.timer != nil {
		q.timer.Stop()
		q.timer = nil
	}
	if len(q.fill) > 0 {
		q.sendLocked()
	}
	close(q.ch)
}

// fail is called by the reader when it stops, so that push does not block.
func (q *chunkQueue) fail() {
	q.once.Do(func() { close(q.failed) })
	// Drain what is queued so the buffers go back to the pool.
	go func() {
		for b := range q.ch {
			chunkPool.Put(&b)
		}
	}()
}

func (q *chunkQueue) Read(p []byte) (int, error) {
	for len(q.cur) == 0 {
		if q.held != nil {
			b := q.held[:0]
			chunkPool.Put(&b)
			q.held = nil
		}
		b, ok := <-q.ch
		if !ok {
			return 0, io.EOF
		}
		q.held, q.cur = b, b
	}
	n := copy(p, q.cur)
	q.cur = q.cur[n:]
	return n, nil
}
