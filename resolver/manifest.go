package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
)

// WholeChecksum is the checksum a whole copy of the file at manifest path
// can take from the manifest of the backup it comes from, as
// pg_combinebackup does instead of reading the file again: only when plan is
// Whole and that manifest lists the file with algo. warn is
// pg_combinebackup's warning when the manifest lacks the file.
func (p *Tree) WholeChecksum(path string, plan *Plan, algo format.ChecksumType) (sum []byte, warn string) {
	if !plan.Whole || algo == format.ChecksumNone {
		return nil, ""
	}
	b := p.Chain.Backups[plan.WholeLayer]
	if b.Manifest == nil {
		return nil, ""
	}
	mf, ok := b.Manifest.Lookup(path)
	if !ok {
		mp := filepath.Join(b.Dir, "backup_manifest")
		if plan.WholeLayer == len(p.Chain.Backups)-1 || p.Chain.Major >= 18 {
			return nil, fmt.Sprintf("manifest file %q contains no entry for file %q", mp, path)
		}
		return nil, fmt.Sprintf("%q contains no entry for %q", mp, path)
	}
	if mf.Algorithm != algo {
		return nil, ""
	}
	return mf.Checksum, ""
}

// WALPath reports whether the file at manifestPath is in the main data
// directory's pg_wal tree, whose files pg_combinebackup lists in its
// manifest without a checksum (tablespace paths start with pg_tblspc/).
func WALPath(manifestPath string) bool {
	return manifestPath == "pg_wal" || strings.HasPrefix(manifestPath, "pg_wal/")
}

// ManifestEntry is one file of the point in backup_manifest order.
type ManifestEntry struct {
	Path    string
	Entry   *Entry // nil for backup_label
	ModTime time.Time
	NoSum   bool // under pg_wal: listed without a checksum
}

// ManifestEntries lists the files of the point in the order
// pg_combinebackup's backup_manifest lists them: backup_label (with
// labelTime), then the main tree depth first, then each tablespace.
func (p *Tree) ManifestEntries(labelTime time.Time) []ManifestEntry {
	out := []ManifestEntry{{Path: "backup_label", ModTime: labelTime}}
	var walk func(e *Entry)
	walk = func(e *Entry) {
		for _, c := range e.Children {
			if c.Kind == KindDir {
				walk(c)
				continue
			}
			out = append(out, ManifestEntry{Path: c.File.Path, Entry: c, ModTime: c.ModTime, NoSum: WALPath(c.File.Path)})
		}
	}
	walk(p.Root)
	for _, ts := range p.Tablespaces {
		walk(ts.Root)
	}
	return out
}

// ErrNoFinalManifest: the final backup has no backup_manifest, so the
// point's WAL ranges are unknown.
var ErrNoFinalManifest = errors.New("cannot generate a manifest because no manifest is available for the final input backup")

// WriteManifest writes the backup_manifest of the point as a read-only view
// presents it: what pg_combinebackup writes with CRC32C checksums, Last-Modified
// taken from the entries (pg_combinebackup has the times it wrote the
// files). The checksums of files not copied whole are computed by reading
// them; with sums false every checksum is zeros instead, which gives the
// same length without reading anything. onFile, if not nil, is called
// before each file is read.
func (p *Tree) WriteManifest(w io.Writer, labelTime time.Time, sums bool, onFile func(path string)) error {
	final := p.Chain.Final()
	if final.Manifest == nil {
		return ErrNoFinalManifest
	}
	const algo = format.ChecksumCRC32C
	entries := p.ManifestEntries(labelTime)
	var checksums [][]byte
	if sums {
		var err error
		if checksums, err = p.checksums(entries, algo, onFile); err != nil {
			return err
		}
	}
	mw := format.NewManifestWriter(w, p.Chain.SystemIdentifier)
	zero := make([]byte, algo.Size())
	for i, me := range entries {
		if me.Entry == nil {
			h := algo.New()
			h.Write(p.Label)
			mw.AddFile(me.Path, int64(len(p.Label)), me.ModTime, algo, h.Sum(nil))
			continue
		}
		f := me.Entry.File
		switch {
		case me.NoSum:
			mw.AddFile(me.Path, f.Size(), me.ModTime, format.ChecksumNone, nil)
		case !sums:
			mw.AddFile(me.Path, f.Size(), me.ModTime, algo, zero)
		default:
			mw.AddFile(me.Path, f.Size(), me.ModTime, algo, checksums[i])
		}
	}
	return mw.Finish(final.Manifest.WALRanges)
}

// checksums computes the checksums of entries (nil for backup_label and
// pg_wal files), reading files a few at a time: one reader alone waits on
// the disk most of the time.
func (p *Tree) checksums(entries []ManifestEntry, algo format.ChecksumType, onFile func(string)) ([][]byte, error) {
	out := make([][]byte, len(entries))
	n := 2 * runtime.NumCPU()
	// One buffer per running read: no more are ever in use.
	bufs := make(chan []byte, n)
	for range n {
		bufs <- make([]byte, 1<<20)
	}
	var mu sync.Mutex // serialises onFile calls
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(n)
	for i, me := range entries {
		if ctx.Err() != nil {
			break
		}
		if me.Entry == nil || me.NoSum {
			continue
		}
		g.Go(func() error {
			buf := <-bufs
			defer func() { bufs <- buf }()
			sum, err := p.fileChecksum(me.Entry.File, algo, buf, func(path string) {
				if onFile != nil {
					mu.Lock()
					onFile(path)
					mu.Unlock()
				}
			})
			out[i] = sum
			return err
		})
	}
	return out, g.Wait()
}

// fileChecksum reuses a whole copy's checksum or reads the file for it.
func (p *Tree) fileChecksum(f *File, algo format.ChecksumType, buf []byte, onFile func(string)) ([]byte, error) {
	plan, err := f.Resolve()
	if err != nil {
		return nil, err
	}
	if sum, _ := p.WholeChecksum(f.Path, plan, algo); sum != nil {
		return sum, nil
	}
	if onFile != nil {
		onFile(f.Path)
	}
	r := newReader(plan, f.size)
	defer r.Close()
	h := algo.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(r, 0, f.size), buf); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	return h.Sum(nil), nil
}
