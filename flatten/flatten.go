// Package flatten writes the full backup of a chain point to a directory, as
// pg_combinebackup does: the same files with the same bytes, the same
// backup_label and a backup_manifest equal to pg_combinebackup's but for the
// Last-Modified times. Files are written in parallel; whole files and runs of
// blocks use copy_file_range, clones or links where the copy method allows.
package flatten

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/crashpoint"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/resolver"
)

// Mapping relocates a tablespace: the one whose symlink points at Old is
// written to New (-T OLD=NEW).
type Mapping struct{ Old, New string }

// Options mirror pg_combinebackup's.
type Options struct {
	Output            string
	DryRun            bool
	NoSync            bool
	Mappings          []Mapping
	ManifestChecksums format.ChecksumType
	NoManifest        bool
	SyncMethod        string // "fsync" (default) or "syncfs"
	CopyMethod        CopyMethod
	// Jobs is how many files are written at once (0: a default).
	Jobs int
	// Progress, if set, is called with bytes written so far and the total,
	// after each file, from the workers writing them: concurrently, so it
	// must be safe for that, and with Jobs > 1 the counts may arrive out of
	// order (the largest seen is the progress).
	Progress func(done, total int64)
	// Log receives pg_combinebackup's debug, info and warning messages.
	Log func(level Level, msg string)
	// OnFailure, if set, is called with the error of a failed run before
	// what it wrote is removed: pg_combinebackup reports its error, then
	// its exit handler says "removing output directory ...".
	OnFailure func(err error)
	// OnFileWritten, if set, is called by the worker that wrote a file of
	// the chain once it is written (the sync pass comes after all files),
	// with where it is (global/pg_control under its hidden name until the
	// end) and its entry as the manifest will list it, LastModified aside.
	// It runs in the worker's slot, overlapping the other writes (compact
	// reads each file back there); an error fails the run. backup_label,
	// written before the workers start, is not passed.
	OnFileWritten func(file string, entry format.ManifestFile) error
	// Buffered writes the files through the page cache instead of direct:
	// for a caller that reads each file back at once (OnFileWritten), which
	// then reads what the page cache holds instead of the disk.
	Buffered bool
}

func (o Options) creator() *dio.Creator {
	if o.Buffered {
		return bufferedOut
	}
	return &outFiles
}

// Level of a log message.
type Level int

// Log levels, as pg_combinebackup's.
const (
	Debug Level = iota
	Info
	Warning
)

// ParseMapping parses OLDDIR=NEWDIR as pg_combinebackup does (split by
// format.SplitTablespaceMapping, both sides absolute, canonicalized).
func ParseMapping(arg string) (Mapping, error) {
	old, nw, err := format.SplitTablespaceMapping(arg)
	if err != nil {
		return Mapping{}, err
	}
	m := Mapping{Old: old, New: nw}
	// pg_combinebackup says "old directory" for both sides; so do we.
	if !filepath.IsAbs(m.Old) {
		return Mapping{}, fmt.Errorf("old directory is not an absolute path in tablespace mapping: %s", m.Old)
	}
	if !filepath.IsAbs(m.New) {
		return Mapping{}, fmt.Errorf("old directory is not an absolute path in tablespace mapping: %s", m.New)
	}
	m.Old, m.New = filepath.Clean(m.Old), filepath.Clean(m.New)
	return m, nil
}

// Result summarizes a flatten.
type Result struct {
	Files, Reconstructed, WholeFromOlder int
	Bytes                                int64
}

// job is one output file.
type job struct {
	path     string // manifest path
	out      string // output file
	file     *resolver.File
	noSum    bool // under pg_wal: no checksum
	sum      []byte
	size     int64
	mtime    time.Time
	reusable bool
	whole    bool // copied whole from one backup (for Result)
}

type target struct {
	ts      *resolver.Tablespace
	dir     string // where its contents go
	write   string // where they are written (dir, or its hidden name until the end)
	outLink string // pg_tblspc/<oid> in the output, for symlinked ones
}

// Run writes the full backup of p to opts.Output. On failure (or when ctx is
// cancelled) everything it created is removed again.
func Run(ctx context.Context, p *resolver.Tree, opts Options) (res Result, err error) {
	if opts.NoManifest {
		opts.ManifestChecksums = format.ChecksumNone
	}
	r := &run{p: p, opts: opts}
	// Work out where each tablespace goes before creating anything.
	targets, err := planTargets(p, opts)
	if err != nil {
		return res, err
	}
	writeManifest := !opts.DryRun && !opts.NoManifest
	if writeManifest && p.Chain.Final().Manifest == nil {
		return res, errors.New("cannot generate a manifest because no manifest is available for the final input backup")
	}

	var outs outputs
	defer func() {
		if err != nil {
			if opts.OnFailure != nil {
				opts.OnFailure(err)
			}
			outs.abort(r.logf)
		}
	}()
	out, err := outs.prepare(opts.Output, opts.DryRun, p.DirMode, r.logf)
	if err != nil {
		return res, err
	}
	for i := range targets {
		t := &targets[i]
		if t.ts.InPlace {
			t.write = filepath.Join(out, "pg_tblspc", t.ts.Root.Name)
			continue
		}
		t.outLink = filepath.Join(out, "pg_tblspc", t.ts.Root.Name)
		if t.write, err = outs.prepare(t.dir, opts.DryRun, p.DirMode, r.logf); err != nil {
			return res, err
		}
	}
	crashpoint.At(CrashCreated)

	// backup_label first: it is the first manifest entry. Then the
	// directories in walk order, and the files, written in parallel.
	r.dirs = append(r.dirs, out)
	if err := r.label(out); err != nil {
		return res, err
	}
	r.logf(Debug, "processing backup directory %q", p.Chain.Final().Dir)
	if err := r.collect(p.Root, out); err != nil {
		return res, err
	}
	if err := r.tablespaces(targets); err != nil {
		return res, err
	}
	if res, err = r.writeFiles(ctx); err != nil {
		return res, err
	}
	crashpoint.At(CrashFiles)
	if writeManifest {
		if err := r.manifest(out); err != nil {
			return res, err
		}
	}

	if !opts.NoSync {
		if opts.DryRun {
			r.logf(Debug, "would recursively fsync %q", opts.Output)
		} else {
			r.logf(Debug, "recursively fsyncing %q", opts.Output)
			if err := syncOutput(ctx, opts, r.jobs, r.dirs); err != nil {
				return res, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	crashpoint.At(CrashSynced)
	if r.control != nil {
		if err := placeControl(r.control, opts.NoSync); err != nil {
			return res, err
		}
	}
	crashpoint.At(CrashControl)
	if err := outs.commit(opts.NoSync); err != nil {
		return res, err
	}
	if opts.CopyMethod == Link && !opts.DryRun {
		r.logf(Warning, "--link mode was used; any modifications to the output directory may destructively modify input directories")
	}
	return res, nil
}

// run is one flatten's state between its phases.
type run struct {
	p       *resolver.Tree
	opts    Options
	jobs    []*job
	control *job     // global/pg_control, named last
	dirs    []string // every directory written, for the final sync
}

func (r *run) logf(l Level, format string, args ...any) {
	if r.opts.Log != nil {
		r.opts.Log(l, fmt.Sprintf(format, args...))
	}
}

// planTargets works out where each tablespace's contents go: in place
// under pg_tblspc, or the -T mapping of its directory (pg_combinebackup
// refuses a tablespace without one, and two in one directory).
func planTargets(p *resolver.Tree, opts Options) ([]target, error) {
	var targets []target
	for _, ts := range p.Tablespaces {
		t := target{ts: ts}
		if ts.InPlace {
			t.dir = filepath.Join(opts.Output, "pg_tblspc", ts.Root.Name)
		} else {
			found := false
			for _, m := range opts.Mappings {
				if m.Old == ts.Target {
					t.dir, found = m.New, true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("tablespace at %q has no tablespace mapping", ts.Target)
			}
			t.outLink = filepath.Join(opts.Output, "pg_tblspc", ts.Root.Name)
		}
		for _, o := range targets {
			if o.dir == t.dir {
				return nil, fmt.Errorf("tablespaces with OIDs %d and %d both point at directory %q", o.ts.OID, ts.OID, t.dir)
			}
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// label writes backup_label (the final backup's, without its INCREMENTAL
// lines) and makes it the first job, already done.
func (r *run) label(out string) error {
	labelPath := filepath.Join(out, "backup_label")
	if r.opts.DryRun {
		r.logf(Debug, "would generate %q", labelPath)
		return nil
	}
	r.logf(Debug, "generating %q", labelPath)
	if err := writeFile(labelPath, r.p.Label, r.p.FileMode); err != nil {
		return err
	}
	lj := &job{path: "backup_label", out: labelPath}
	if h := r.opts.ManifestChecksums.New(); h != nil {
		h.Write(r.p.Label)
		lj.sum = h.Sum(nil)
	}
	if err := lj.stat(); err != nil {
		return err
	}
	r.jobs = append(r.jobs, lj)
	return nil
}

// collect creates the directories under root in walk order, in outDir, and
// makes a job of every file.
func (r *run) collect(root *resolver.Entry, outDir string) error {
	for _, ch := range root.Children {
		o := filepath.Join(outDir, ch.Name)
		if ch.Kind == resolver.KindDir {
			if !r.opts.DryRun {
				if err := os.Mkdir(o, r.p.DirMode); err != nil {
					return fmt.Errorf("could not create directory %q: %w", o, osErr(err))
				}
			}
			r.dirs = append(r.dirs, o)
			if err := r.collect(ch, o); err != nil {
				return err
			}
			continue
		}
		j := &job{path: ch.File.Path, out: o, file: ch.File, noSum: resolver.WALPath(ch.File.Path)}
		if j.path == "global/pg_control" && !r.opts.DryRun {
			j.out, r.control = filepath.Join(outDir, controlPartial), j
		}
		r.jobs = append(r.jobs, j)
	}
	return nil
}

// tablespaces makes each tablespace's directory (or its symlink) and
// collects its contents.
func (r *run) tablespaces(targets []target) error {
	for _, t := range targets {
		if !r.opts.DryRun {
			if t.ts.InPlace {
				if err := os.MkdirAll(t.write, r.p.DirMode); err != nil {
					return fmt.Errorf("could not create directory %q: %w", t.write, osErr(err))
				}
			} else if err := os.Symlink(t.dir, t.outLink); err != nil {
				return fmt.Errorf("could not create symbolic link from %q to %q: %w", t.outLink, t.dir, osErr(err))
			}
		}
		r.dirs = append(r.dirs, t.write)
		if err := r.collect(t.ts.Root, t.write); err != nil {
			return err
		}
	}
	return nil
}

// writeFiles writes every file job in parallel, reporting progress, and
// counts what was written.
func (r *run) writeFiles(ctx context.Context) (res Result, err error) {
	var total int64
	for _, j := range r.jobs {
		if j.file != nil {
			total += j.file.Size()
		}
	}
	var done atomic.Int64
	if err := runJobs(ctx, r.jobs, r.opts.Jobs, func(j *job) error {
		if j.file == nil {
			return nil
		}
		if err := j.write(r.p, r.opts, r.logf); err != nil {
			return err
		}
		if r.opts.OnFileWritten != nil && !r.opts.DryRun {
			e := format.ManifestFile{Path: j.path, Size: j.size, Algorithm: j.algo(r.opts), Checksum: j.sum}
			if err := r.opts.OnFileWritten(j.out, e); err != nil {
				return err
			}
		}
		d := done.Add(j.file.Size())
		if r.opts.Progress != nil {
			r.opts.Progress(d, total)
		}
		return nil
	}); err != nil {
		return res, err
	}
	for _, j := range r.jobs {
		if j.file == nil {
			continue
		}
		res.Files++
		res.Bytes += j.file.Size()
		if j.file.Incremental() {
			if j.whole {
				res.WholeFromOlder++
			} else {
				res.Reconstructed++
			}
		}
	}
	return res, nil
}

// manifest writes backup_manifest from the jobs, in their order.
func (r *run) manifest(out string) error {
	mpath := filepath.Join(out, "backup_manifest")
	f, err := os.OpenFile(mpath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, r.p.FileMode)
	if err != nil {
		return err
	}
	mw := format.NewManifestWriter(f, r.p.Chain.SystemIdentifier)
	for _, j := range r.jobs {
		mw.AddFile(j.path, j.size, j.mtime, j.algo(r.opts), j.sum)
	}
	err = mw.Finish(r.p.Chain.Final().Manifest.WALRanges)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("could not write %q: %w", mpath, err)
	}
	return nil
}

// algo is the checksum algorithm of j's manifest entry.
func (j *job) algo(opts Options) format.ChecksumType {
	if j.noSum {
		return format.ChecksumNone
	}
	return opts.ManifestChecksums
}

// write produces one output file and records what its manifest entry needs.
func (j *job) write(p *resolver.Tree, opts Options, logf func(Level, string, ...any)) error {
	plan, err := j.file.Resolve()
	if err != nil {
		return err
	}
	j.whole = plan.Whole
	algo := j.algo(opts)
	// Reuse the checksum of a whole copy from the manifest of the backup it
	// comes from, as pg_combinebackup does.
	if sum, warn := p.WholeChecksum(j.path, plan, algo); sum != nil {
		j.sum = sum
		algo = format.ChecksumNone
	} else if warn != "" {
		logf(Warning, "%s", warn)
	}
	if opts.DryRun {
		return nil
	}
	var h hash.Hash
	if algo != format.ChecksumNone {
		h = algo.New()
	}
	if plan.Whole {
		err = copyWhole(opts.creator(), plan, j.out, j.file.Size(), p.FileMode, opts.CopyMethod, h, !opts.NoSync)
	} else {
		m := opts.CopyMethod
		if m == Link {
			m = Copy
		}
		err = writeReconstructed(opts.creator(), plan, j.out, j.file.Size(), p.FileMode, m, h, !opts.NoSync)
	}
	if err != nil {
		return err
	}
	if h != nil {
		j.sum = h.Sum(nil)
	}
	return j.stat()
}

func (j *job) stat() error {
	st, err := os.Stat(j.out)
	if err != nil {
		return err
	}
	j.size, j.mtime = st.Size(), st.ModTime()
	return nil
}

// runJobs runs fn over jobs with n workers, stopping at the first error.
func runJobs(ctx context.Context, jobs []*job, n int, fn func(*job) error) error {
	if n <= 0 {
		n = 8
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, j := range jobs {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(j) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("could not open file %q: %w", path, osErr(err))
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("could not write file %q: %w", path, err)
	}
	return f.Close()
}

// syncOutput makes the output durable: every file and directory fsynced in
// parallel, or one syncfs per filesystem.
func syncOutput(ctx context.Context, opts Options, jobs []*job, dirs []string) error {
	if opts.SyncMethod == "syncfs" {
		seen := map[string]bool{}
		for _, d := range dirs {
			if seen[d] {
				continue
			}
			seen[d] = true
			f, err := os.Open(d)
			if err != nil {
				return err
			}
			err = unix.Syncfs(int(f.Fd()))
			f.Close()
			if err != nil {
				return fmt.Errorf("could not synchronize file system for file %q: %w", d, err)
			}
		}
		return nil
	}
	var all []*job
	all = append(all, jobs...)
	for _, d := range dirs {
		all = append(all, &job{out: d})
	}
	return runJobs(ctx, all, 16, func(j *job) error {
		f, err := os.Open(j.out)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("could not fsync file %q: %w", j.out, err)
		}
		return nil
	})
}

// osErr drops the op and path Go adds to a system error (our messages name
// the path themselves) and spells the errno as strerror does, as in
// pg_combinebackup's messages ("Operation not supported").
func osErr(err error) error {
	var pe *fs.PathError
	var le *os.LinkError
	var se *os.SyscallError
	switch {
	case errors.As(err, &pe):
		err = pe.Err
	case errors.As(err, &le):
		err = le.Err
	case errors.As(err, &se):
		err = se.Err
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	return strerror{errno}
}

type strerror struct{ errno syscall.Errno }

func (e strerror) Error() string {
	s := e.errno.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

func (e strerror) Unwrap() error { return e.errno }
