// Package cachedir keeps a read-only mount's reconstructed files on local
// disk (mount --cache-dir), so that a file rebuilt once from the backups is
// served by FUSE passthrough afterwards, at the speed of a native file.
//
// Layout of the directory (created 0700, refused when it is not the
// caller's or others may write it, since a root mount serves its files):
//
//	lock             flocked exclusively for the life of the mount using it
//	files/KEY-CRC-SIZE
//	                 complete files: KEY is the hex SHA-256 of the point's
//	                 identity, the file's path and its extent plan (see
//	                 KeyFor); CRC its CRC-32C; SIZE its length
//	tmp/KEY          a file being filled
//
// A file is written under tmp/, fsynced, and renamed into files/ only when
// complete, then files/ is fsynced: a crash leaves either no file or a
// complete one, and tmp/ is emptied when the directory is next opened. The
// chain's manifests cannot vouch for a reconstructed file (they checksum
// the INCREMENTAL files), so the name carries the CRC-32C of the bytes read
// from the backups; a mount checks a reused file against it before its
// first use, and discards it (to be filled again) when it differs.
//
// One mount uses a directory at a time: a second is refused while the lock
// is held, whatever point it mounts (the size bound and the eviction are
// then one process's bookkeeping). Files of other points stay until evicted,
// least recently used first (the order of their mtimes, which a use moves),
// when a new file needs the space. With no mount using it, the directory
// may be deleted at any time.
package cachedir

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/internal/safedir"
	"github.com/combinefs/combinefs/resolver"
)

// Key names one file of one point: equal keys mean equal content.
type Key [sha256.Size]byte

func (k Key) String() string { return hex.EncodeToString(k[:]) }

// KeyFor is the key of file path of point p whose extent map is plan: the
// chain's system identifier, the final backup's start LSN and timeline (a
// point's identity), the path, the size and every extent (layer, source
// file, offsets), so a file is found again only for the same point and the
// same backups in the same places.
func KeyFor(p *resolver.Tree, path string, size int64, plan *resolver.Plan) Key {
	h := sha256.New()
	var b [8]byte
	num := func(v uint64) {
		binary.LittleEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	str := func(s string) {
		num(uint64(len(s)))
		io.WriteString(h, s)
	}
	str("combinefs cache-dir v1")
	final := p.Chain.Final()
	num(p.Chain.SystemIdentifier)
	num(uint64(final.Label.StartLSN))
	num(uint64(final.Label.StartTLI))
	str(path)
	num(uint64(size))
	num(uint64(len(plan.Extents)))
	for _, e := range plan.Extents {
		num(uint64(e.Off))
		num(uint64(e.Len))
		num(uint64(int64(e.Layer)))
		str(e.Src)
		num(uint64(e.SrcOff))
	}
	var k Key
	h.Sum(k[:0])
	return k
}

// Entry is a complete file of the directory.
type Entry struct {
	Path string
	Size int64
	CRC  uint32 // CRC-32C (Castagnoli) of its content
	used time.Time
}

// Dir is an open cache directory, locked for this process.
type Dir struct {
	path  string
	limit int64
	lock  *os.File

	mu       sync.Mutex
	entries  map[Key]*Entry
	used     int64 // bytes of entries plus fills in progress
	evicted  uint64
	filled   uint64
	rejected uint64
}

// ErrTooLarge is returned by Fill for a file larger than the directory's
// size bound (or than what it can free).
var ErrTooLarge = errors.New("larger than the cache directory's size bound")

// Open opens (creating it 0700 if need be) the cache directory at path,
// bounded to limit bytes, and locks it. It refuses a directory another
// mount uses, one not owned by this user, or one that group or others may
// write. Leftovers of interrupted fills are removed, files over the bound
// evicted.
func Open(path string, limit int64) (*Dir, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("cache directory %s: size bound %d is not positive", path, limit)
	}
	if err := ensureDir(path); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(path, "lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache directory %s: %w", path, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("cache directory %s is in use by another combinefs mount (one mount per cache directory)", path)
		}
		return nil, fmt.Errorf("cache directory %s: lock: %w", path, err)
	}
	d := &Dir{path: path, limit: limit, lock: lock, entries: map[Key]*Entry{}}
	if err := d.load(); err != nil {
		d.Close()
		return nil, err
	}
	d.mu.Lock()
	d.evictFor(0)
	d.mu.Unlock()
	return d, nil
}

// ensureDir makes path and its files/ and tmp/ 0700, or checks existing
// ones as safedir does: directories (not symlinks) of this user that group
// and others cannot write, under parents no other user controls. A cache
// another user could write into would feed the mount its blocks.
func ensureDir(path string) error {
	for _, p := range []string{path, filepath.Join(path, "files"), filepath.Join(path, "tmp")} {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cache directory: %w", err)
		}
		if err := safedir.Check(p, os.Geteuid()); err != nil {
			return fmt.Errorf("cache directory %w", err)
		}
	}
	return nil
}

// load empties tmp/ and reads files/, removing what is not a well-named
// regular file of the size its name says.
func (d *Dir) load() error {
	tmp := filepath.Join(d.path, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("cache directory: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			return fmt.Errorf("cache directory: %w", err)
		}
	}
	files := filepath.Join(d.path, "files")
	ents, err = os.ReadDir(files)
	if err != nil {
		return fmt.Errorf("cache directory: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(files, e.Name())
		k, crc, size, ok := parseName(e.Name())
		info, err := e.Info()
		if !ok || err != nil || !info.Mode().IsRegular() || info.Size() != size || d.entries[k] != nil {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("cache directory: %w", err)
			}
			continue
		}
		d.entries[k] = &Entry{Path: p, Size: size, CRC: crc, used: info.ModTime()}
		d.used += size
	}
	return nil
}

func fileName(k Key, crc uint32, size int64) string {
	return fmt.Sprintf("%s-%08x-%d", k, crc, size)
}

func parseName(name string) (k Key, crc uint32, size int64, ok bool) {
	parts := strings.Split(name, "-")
	if len(parts) != 3 || hex.DecodedLen(len(parts[0])) != len(k) {
		return k, 0, 0, false
	}
	if _, err := hex.Decode(k[:], []byte(parts[0])); err != nil {
		return k, 0, 0, false
	}
	c, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil || len(parts[1]) != 8 {
		return k, 0, 0, false
	}
	size, err = strconv.ParseInt(parts[2], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != parts[2] {
		return k, 0, 0, false
	}
	return k, uint32(c), size, true
}

// Close releases the lock. Fills must be over.
func (d *Dir) Close() error {
	return d.lock.Close()
}

// Path is the directory.
func (d *Dir) Path() string { return d.path }

// Lookup returns the complete file of k, and marks it the most recently
// used.
func (d *Dir) Lookup(k Key) (Entry, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.entries[k]
	if !ok {
		return Entry{}, false
	}
	now := time.Now()
	e.used = now
	os.Chtimes(e.Path, now, now) // the order survives the mount; a failure only loses that
	return *e, true
}

// Discard removes the file of k (one that failed its check).
func (d *Dir) Discard(k Key) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.remove(k)
	d.rejected++
}

func (d *Dir) remove(k Key) {
	if e, ok := d.entries[k]; ok {
		os.Remove(e.Path)
		d.used -= e.Size
		delete(d.entries, k)
	}
}

// evictFor removes least recently used files until need more bytes fit
// under the bound, and reports whether they do.
func (d *Dir) evictFor(need int64) bool {
	if d.used+need <= d.limit {
		return true
	}
	keys := make([]Key, 0, len(d.entries))
	for k := range d.entries {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return d.entries[keys[i]].used.Before(d.entries[keys[j]].used) })
	for _, k := range keys {
		if d.used+need <= d.limit {
			break
		}
		d.remove(k)
		d.evicted++
	}
	return d.used+need <= d.limit
}

// crashAt is the test hook of the kill -9 tests: the process kills itself
// at the named phase of a fill (COMBINEFS_CACHEDIR_CRASH=written, synced or
// renamed).
var crashAt = os.Getenv("COMBINEFS_CACHEDIR_CRASH")

func crashPoint(phase string) {
	if crashAt == phase {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// Fill makes the file of k, size bytes: write creates the new file at the
// path it is given and returns the CRC-32C of what it wrote. Space is made
// first (evicting); the file appears only once written, synced, and
// renamed into place. On any failure nothing is left.
func (d *Dir) Fill(k Key, size int64, write func(tmp string) (uint32, error)) (Entry, error) {
	d.mu.Lock()
	if size > d.limit || !d.evictFor(size) {
		d.mu.Unlock()
		return Entry{}, ErrTooLarge
	}
	d.used += size
	d.mu.Unlock()
	e, err := d.fill(k, size, write)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.used -= size
	if err != nil {
		return Entry{}, err
	}
	d.remove(k) // a file filled twice: the newer wins
	d.entries[k] = &e
	d.used += size
	d.filled++
	return e, nil
}

func (d *Dir) fill(k Key, size int64, write func(tmp string) (uint32, error)) (Entry, error) {
	tmp := filepath.Join(d.path, "tmp", k.String())
	os.Remove(tmp)
	crc, err := write(tmp)
	if err == nil {
		crashPoint("written")
		err = syncFile(tmp, size)
	}
	if err != nil {
		os.Remove(tmp)
		return Entry{}, err
	}
	crashPoint("synced")
	// Its use time on the clock Lookup marks uses with (a new file's own
	// mtime comes from a coarser one).
	now := time.Now()
	os.Chtimes(tmp, now, now)
	dst := filepath.Join(d.path, "files", fileName(k, crc, size))
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return Entry{}, err
	}
	crashPoint("renamed")
	if err := syncFile(filepath.Dir(dst), -1); err != nil {
		os.Remove(dst)
		return Entry{}, err
	}
	return Entry{Path: dst, Size: size, CRC: crc, used: now}, nil
}

// syncFile fsyncs path, and checks that it holds size bytes (unless -1).
func syncFile(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if size >= 0 {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size() != size {
			return fmt.Errorf("%s: wrote %d bytes, want %d", path, st.Size(), size)
		}
	}
	return f.Sync()
}

// Verify reads e's file through the page cache (where its first reads will
// find it) and checks its size and CRC-32C.
func Verify(e Entry) error {
	f, err := os.Open(e.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, err := f.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if n != e.Size {
		return fmt.Errorf("%s: %d bytes, want %d", e.Path, n, e.Size)
	}
	if got := h.Sum32(); got != e.CRC {
		return fmt.Errorf("%s: CRC-32C %08x, want %08x", e.Path, got, e.CRC)
	}
	return nil
}

// Stats are the directory's counters.
type Stats struct {
	Files                     int
	Bytes, Limit              int64
	Filled, Evicted, Rejected uint64
}

// Stats returns the directory's counters.
func (d *Dir) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Stats{Files: len(d.entries), Bytes: d.used, Limit: d.limit, Filled: d.filled, Evicted: d.evicted, Rejected: d.rejected}
}
