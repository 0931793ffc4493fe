// Package verify checks a plain-format backup against its backup_manifest,
// as pg_verifybackup does: every file listed exists with the listed size and
// checksum, nothing unlisted is present, the manifest's own checksum and
// system identifier are right, and the WAL the backup needs is there and
// reads: every page header and record of each WAL range is checked, CRCs
// included, as pg_waldump (which pg_verifybackup runs) checks them.
package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
)

// Options tune a verification.
type Options struct {
	SkipChecksums bool // like pg_verifybackup -s
	SkipWAL       bool // like pg_verifybackup -n
	Jobs          int
	// Progress, if set, is called with bytes checksummed so far and the total.
	Progress func(done, total int64)
	// FS, if set, holds the backup's files instead of the directory dir
	// (a point in an object store, read through repo.StorageFS); dir then
	// only names the backup in messages. Its files must be io.ReaderAt.
	FS fs.FS
	// Headers, if not nil, are the headers of the backup's INCREMENTAL
	// files that its point's marker lists, by path (an object store's
	// header pack, which a mount reads headers from): each INCREMENTAL
	// file must be listed and start with its header.
	Headers map[string][]byte
	// ReadBack, if set, holds files of dir already read back and checked
	// (see ReadBack): their manifest entries are compared with what was
	// read instead of reading them again.
	ReadBack *ReadBack
}

// Result of one backup's verification.
type Result struct {
	Dir      string
	Files    int
	Bytes    int64
	Problems []string // empty when the backup verified
}

// ignored are never compared with the manifest (pg_verifybackup's defaults).
var ignored = map[string]bool{
	"backup_manifest": true, "pg_wal": true, "postgresql.auto.conf": true,
	"recovery.signal": true, "standby.signal": true,
}

func isIgnored(rel string) bool {
	for p := rel; p != "."; p = filepath.Dir(p) {
		if ignored[p] {
			return true
		}
	}
	return false
}

// Backup verifies the backup in dir. An error means the check itself could
// not run (no readable manifest); problems found are in Result.Problems.
func Backup(ctx context.Context, dir string, opts Options) (*Result, error) {
	res := &Result{Dir: dir}
	fsys := opts.FS
	if fsys == nil {
		fsys = os.DirFS(dir)
	}
	mpath := join(dir, "backup_manifest")
	data, err := fs.ReadFile(fsys, "backup_manifest")
	if err != nil {
		err = fullPath(dir, err)
		return nil, fmt.Errorf("could not read manifest: %w", err)
	}
	m, err := format.ParseManifest(data, mpath)
	if err != nil {
		return nil, err
	}
	problem := func(format string, args ...any) { res.Problems = append(res.Problems, fmt.Sprintf(format, args...)) }

	// Walk the directory (through tablespace symlinks in pg_tblspc).
	onDisk := map[string]int64{}
	if err := walk(fsys, ".", onDisk); err != nil {
		return nil, fullPath(dir, err)
	}
	if opts.Headers != nil {
		if err := checkHeaders(ctx, fsys, onDisk, opts.Headers, opts.Jobs, problem); err != nil {
			return nil, err
		}
	}
	var toSum []*format.ManifestFile
	for i := range m.Files {
		f := &m.Files[i]
		if isIgnored(f.Path) {
			continue
		}
		size, ok := onDisk[f.Path]
		if !ok {
			problem("%q is present in the manifest but not on disk", f.Path)
			continue
		}
		delete(onDisk, f.Path)
		res.Files++
		res.Bytes += size
		if size != f.Size {
			problem("%q has size %d on disk but size %d in the manifest", f.Path, size, f.Size)
			continue
		}
		if f.Algorithm != format.ChecksumNone && !opts.SkipChecksums {
			toSum = append(toSum, f)
		}
	}
	var extra []string
	for p := range onDisk {
		if !isIgnored(p) {
			extra = append(extra, p)
		}
	}
	sort.Strings(extra)
	for _, p := range extra {
		problem("%q is present on disk but not in the manifest", p)
	}

	if m.HasSystemIdentifier {
		cpath := join(dir, "global/pg_control")
		if data, err := fs.ReadFile(fsys, "global/pg_control"); err != nil {
			problem("could not read %q: %v", cpath, fullPath(dir, err))
		} else if cf, err := format.ParseControlFile(data, cpath); err != nil {
			problem("%v", err)
		} else if cf.SystemIdentifier != m.SystemIdentifier {
			problem("%s: manifest system identifier is %d, but control file has %d", cpath, m.SystemIdentifier, cf.SystemIdentifier)
		}
	}

	if err := checksumAll(ctx, dir, toSum, opts, problem); err != nil {
		return nil, err
	}
	if !opts.SkipWAL {
		for _, p := range checkWAL(fsys, dir, m) {
			problem("%s", p)
		}
	}
	return res, nil
}

// join names a file of the backup dir in messages (dir may be a URL).
func join(dir, rel string) string {
	if strings.Contains(dir, "://") {
		return dir + "/" + rel
	}
	return filepath.Join(dir, rel)
}

// fullPath makes the relative path of an fs.FS error the file's full name.
func fullPath(dir string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && !filepath.IsAbs(pe.Path) && !strings.Contains(pe.Path, "://") {
		return &fs.PathError{Op: pe.Op, Path: join(dir, pe.Path), Err: pe.Err}
	}
	return err
}

// walk records the size of every regular file under rel.
func walk(fsys fs.FS, rel string, out map[string]int64) error {
	ents, err := fs.ReadDir(fsys, rel)
	if err != nil {
		return err
	}
	for _, e := range ents {
		r := path.Join(rel, e.Name())
		if isIgnored(r) {
			continue
		}
		info, err := fs.Stat(fsys, r) // follows tablespace links
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			if err := walk(fsys, r, out); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			out[r] = info.Size()
		}
	}
	return nil
}

func checksumAll(ctx context.Context, dir string, files []*format.ManifestFile, opts Options, problem func(string, ...any)) error {
	var total int64
	for _, f := range files {
		total += f.Size
	}
	n := opts.Jobs
	if n <= 0 {
		n = 4
	}
	// One aligned buffer per running check: no more are ever in use.
	bufs := make(chan []byte, n)
	for range n {
		bufs <- dio.AlignedBuf(1 << 20)
	}
	var mu sync.Mutex // guards done and problem
	var done int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, f := range files {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			msg, read := opts.ReadBack.verdict(f)
			var err error
			if !read {
				buf := <-bufs
				msg, err = checkOne(dir, opts.FS, f, buf)
				bufs <- buf
			}
			mu.Lock()
			defer mu.Unlock()
			if msg != "" {
				problem("%s", msg)
			}
			done += f.Size
			if opts.Progress != nil {
				opts.Progress(done, total)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// hashFile reads all of in into h through buf (not io.CopyBuffer: an
// *os.File's WriteTo would read through a buffer of its own, which a direct
// read refuses); a file system that refuses a direct read gets a buffered
// one.
func hashFile(h io.Writer, in *os.File, buf []byte) (int64, error) {
	var n int64
	cleared := false
	for {
		m, err := in.Read(buf)
		if errors.Is(err, syscall.EINVAL) && m <= 0 && !cleared {
			if err := dio.ClearDirect(in); err != nil {
				return n, err
			}
			cleared = true
			continue
		}
		h.Write(buf[:max(m, 0)])
		n += int64(max(m, 0))
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// checkOne checks one file's size and checksum. With fsys (a point in an
// object store) the file is read through it.
func checkOne(dir string, fsys fs.FS, f *format.ManifestFile, buf []byte) (string, error) {
	if fsys != nil {
		return checkFSFile(fsys, f, buf)
	}
	return checkDiskFile(filepath.Join(dir, f.Path), f, buf, true)
}

// checkDiskFile checks the file at path against f. A large file is read
// with O_DIRECT where the file system allows it: a backup is checked once,
// and a buffered read would fill the page cache with it (on a VM whose host
// reclaims free memory, every new page-cache page also costs a host fault),
// evicting what the machine is using. buf is aligned for direct reads.
// direct false reads through the page cache (a file just written there).
func checkDiskFile(path string, f *format.ManifestFile, buf []byte, direct bool) (string, error) {
	h := f.Algorithm.New()
	var in *os.File
	var err error
	if direct && f.Size >= dio.MinSize {
		in, _, err = dio.OpenRead(path)
	} else {
		in, err = os.Open(path)
	}
	if err != nil {
		return fmt.Sprintf("could not open file %q: %v", f.Path, err), nil
	}
	defer in.Close()
	n, err := hashFile(h, in, buf)
	return verdict(f, h, n, err)
}

// checkFSFile checks one file of an fs.FS.
func checkFSFile(fsys fs.FS, f *format.ManifestFile, buf []byte) (string, error) {
	h := f.Algorithm.New()
	in, err := fsys.Open(f.Path)
	if err != nil {
		return fmt.Sprintf("could not open file %q: %v", f.Path, err), nil
	}
	defer in.Close()
	n, err := io.CopyBuffer(h, in, buf)
	return verdict(f, h, n, err)
}

// verdict is the problem, if any, of a file that read n bytes into h.
func verdict(f *format.ManifestFile, h hash.Hash, n int64, err error) (string, error) {
	if err != nil {
		return fmt.Sprintf("could not read file %q: %v", f.Path, err), nil
	}
	if n != f.Size {
		return fmt.Sprintf("file %q should contain %d bytes, but read %d bytes", f.Path, f.Size, n), nil
	}
	if !bytes.Equal(h.Sum(nil), f.Checksum) {
		return fmt.Sprintf("checksum mismatch for file %q", f.Path), nil
	}
	return "", nil
}

// checkWAL checks the WAL each range of the manifest needs, as
// pg_verifybackup does by running pg_waldump on pg_wal for each range: the
// segment files are there with the right size, then every record from the
// range's start to its end reads and checks (format.WALReader). Each
// problem is one line naming the segment file; a range stops at its first.
func checkWAL(fsys fs.FS, dir string, m *format.Manifest) []string {
	ranges := m.WALRanges
	walDir := join(dir, "pg_wal")
	ents, err := fs.ReadDir(fsys, "pg_wal")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && len(ranges) > 0 {
			return []string{fmt.Sprintf("WAL directory %q is missing", walDir)}
		}
		return nil
	}
	segSize := walSegmentSize(fsys, ents)
	if segSize <= 0 {
		if len(ranges) > 0 {
			return []string{fmt.Sprintf("no WAL segments found in %q", walDir)}
		}
		return nil
	}
	if len(ranges) == 0 {
		return nil
	}
	major, majorErr := backupMajor(fsys, dir)
	var probs []string
	for _, r := range ranges {
		first, last := uint64(r.Start)/uint64(segSize), uint64(r.Start)/uint64(segSize)
		if r.End > r.Start {
			last = uint64(r.End-1) / uint64(segSize)
		}
		complete := true
		for seg := first; seg <= last; seg++ {
			name := format.WALSegmentName(r.TLI, seg, segSize)
			info, err := fs.Stat(fsys, "pg_wal/"+name)
			if err != nil {
				probs = append(probs, fmt.Sprintf("WAL segment %q needed for timeline %d from %s to %s is missing", name, r.TLI, r.Start, r.End))
				complete = false
			} else if info.Size() != segSize {
				probs = append(probs, fmt.Sprintf("WAL segment %q has size %d, expected %d", name, info.Size(), segSize))
				complete = false
			}
		}
		if !complete {
			continue // the records cannot all be read; the lines above say why
		}
		if majorErr != nil {
			probs = append(probs, fmt.Sprintf("WAL for timeline %d from %s to %s not parsed: %v", r.TLI, r.Start, r.End, majorErr))
			continue
		}
		if err := readWALRange(fsys, r, segSize, major, m.SystemIdentifier); err != nil {
			probs = append(probs, fmt.Sprintf("WAL parsing failed for timeline %d from %s to %s: %v", r.TLI, r.Start, r.End, err))
		}
	}
	return probs
}

// walSegmentSize is the segment size of the WAL in walDir, taken like
// pg_waldump from the long page header of a segment file (initdb
// --wal-segsize changes it), or from the file's size when that header is
// unreadable; 0 when there is no segment file.
func walSegmentSize(fsys fs.FS, ents []fs.DirEntry) int64 {
	for _, e := range ents {
		if !isWALFileName(e.Name()) {
			continue
		}
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		size := info.Size()
		if f, err := fsys.Open("pg_wal/" + e.Name()); err == nil {
			page := make([]byte, format.WALLongPageHeaderSize)
			if _, err := io.ReadFull(f, page); err == nil {
				if h, err := format.ParseWALPageHeader(page, e.Name(), 0); err == nil && h.Long() && format.ValidWALSegmentSize(int64(h.SegmentSize)) {
					size = int64(h.SegmentSize)
				}
			}
			f.Close()
		}
		if format.ValidWALSegmentSize(size) {
			return size
		}
	}
	return 0
}

// isWALFileName is IsXLogFileName: 24 upper-case hexadecimal digits.
func isWALFileName(name string) bool {
	if len(name) != 24 {
		return false
	}
	for _, c := range name {
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// backupMajor is the PostgreSQL major of the backup in dir, from its
// PG_VERSION: it decides the WAL page magic.
func backupMajor(fsys fs.FS, dir string) (int, error) {
	p := join(dir, "PG_VERSION")
	data, err := fs.ReadFile(fsys, "PG_VERSION")
	if err != nil {
		return 0, fmt.Errorf("could not read %q: %w", p, err)
	}
	major, err := format.ParsePGVersion(data, p)
	if err != nil {
		return 0, err
	}
	if _, ok := format.WALPageMagic(major); !ok {
		return 0, fmt.Errorf("%s: reading WAL of PostgreSQL %d is not supported", p, major)
	}
	return major, nil
}

// readWALRange reads the records of one range with format.WALReader, one
// segment file open at a time.
func readWALRange(fsys fs.FS, r format.WALRange, segSize int64, major int, sysid uint64) error {
	var cur fs.File
	defer func() {
		if cur != nil {
			cur.Close()
		}
	}()
	rd, err := format.NewWALReader(format.WALReaderOptions{
		Major:            major,
		TLI:              r.TLI,
		SegmentSize:      segSize,
		SystemIdentifier: sysid,
		Open: func(segNo uint64) (io.ReaderAt, error) {
			if cur != nil {
				cur.Close()
				cur = nil
			}
			f, err := fsys.Open("pg_wal/" + format.WALSegmentName(r.TLI, segNo, segSize))
			if err != nil {
				return nil, err
			}
			cur = f
			ra, ok := f.(io.ReaderAt)
			if !ok {
				return nil, fmt.Errorf("%s: cannot be read at an offset", format.WALSegmentName(r.TLI, segNo, segSize))
			}
			return ra, nil
		},
	})
	if err != nil {
		return err
	}
	_, err = rd.Scan(r.Start, r.End)
	return err
}
