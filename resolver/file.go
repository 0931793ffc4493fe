package resolver

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
)

// File is one regular file of a point.
type File struct {
	// Path is relative to the output directory and is also the manifest
	// path: pg_tblspc/<oid>/... for tablespace files, no INCREMENTAL. prefix.
	Path  string
	chain *Chain
	src   string              // the file in the final backup
	size  int64               // of the output file
	inc   *format.Incremental // set when the final backup has it as INCREMENTAL

	mu   sync.Mutex // held while the plan is resolved
	plan *Plan
}

// Size of the output file, known without reading any block data.
func (f *File) Size() int64 { return f.size }

// Incremental reports whether the final backup holds the file as an
// INCREMENTAL file (so it needs reconstruction or an older copy).
func (f *File) Incremental() bool { return f.inc != nil }

// Source is the file in the final backup this entry comes from.
func (f *File) Source() string { return f.src }

// Extent is a run of the output file: Len bytes at Off come from Src at
// SrcOff (backup Layer of the chain), or are zeros when Layer is Zeros.
type Extent struct {
	Off, Len int64
	Layer    int
	Src      string
	SrcOff   int64
}

// Zeros is the Layer of an extent no backup supplies.
const Zeros = -1

// Plan says where every byte of a file comes from.
type Plan struct {
	Extents []Extent // cover [0, size) in order; none for an empty file
	// Whole is set when the output is a verbatim copy of one source file
	// (a plain file of the final backup, or an older backup's copy that
	// pg_combinebackup would copy whole); WholeLayer and WholeSrc name it.
	Whole      bool
	WholeLayer int
	WholeSrc   string
	// Source is where Src and WholeSrc are read from (see IsLocal).
	Source Source
}

// Plan resolves the file once (reading headers of older INCREMENTAL files,
// never block data) and returns its extent map. A failure is not kept: the
// next call tries again, so that a file whose headers could not be read
// while an object store was down reads once it is back.
func (f *File) Plan() (*Plan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.plan != nil {
		return f.plan, nil
	}
	p, err := f.resolve()
	if err != nil {
		return nil, err
	}
	f.plan = p
	return p, nil
}

// Resolve is Plan without keeping the result, for a reader that needs each
// file's plan once (flatten): kept, the plans of a whole point grow with the
// size of the database.
func (f *File) Resolve() (*Plan, error) {
	return f.resolve()
}

func (f *File) resolve() (*Plan, error) {
	p, err := f.resolveIn()
	if p != nil {
		p.Source = f.chain.source()
	}
	return p, err
}

func (f *File) resolveIn() (*Plan, error) {
	last := len(f.chain.Backups) - 1
	if f.inc == nil {
		return wholePlan(last, f.src, f.size), nil
	}
	latest := f.inc
	n := latest.BlockLength()
	layer := make([]int32, n)
	off := make([]int64, n)
	for i := range layer {
		layer[i] = Zeros
	}
	fullCopyPossible := true
	for i, b := range latest.Blocks {
		layer[b], off[b] = int32(last), latest.BlockOffset(i)
		fullCopyPossible = false
	}
	trunc := latest.TruncationBlockLength
	dir, name := filepath.Split(f.Path)
	src := f.chain.source()
	srcs := make([]string, last+1) // the file each layer supplies from
	srcs[last] = f.src
	usedIncrementalAt0 := ""
	for k := last - 1; k >= 0; k-- {
		prior := f.chain.Backups[k].Dir
		full := filepath.Join(prior, dir, name)
		st, err := src.Stat(full)
		if err == nil {
			blocks := uint32(st.Size() / format.BlockSize)
			for b := uint32(0); b < trunc; b++ {
				if layer[b] == Zeros && b < blocks {
					layer[b], off[b] = int32(k), int64(b)*format.BlockSize
				}
			}
			if fullCopyPossible && st.Size() == int64(trunc)*format.BlockSize {
				return wholePlan(k, full, st.Size()), nil
			}
			srcs[k] = full
			return buildPlan(layer, off, srcs), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		incPath := filepath.Join(prior, dir, format.IncrementalPrefix+name)
		inc, err := parseIncrementalFile(src, incPath)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, &ChainError{Backup: prior,
					msg:   fmt.Sprintf("backup %q has neither %q nor its INCREMENTAL file, which %q needs: the chain is incomplete", prior, filepath.Join(dir, name), f.src),
					pgMsg: fmt.Sprintf("could not open file %q: No such file or directory", incPath), cause: err}
			}
			return nil, wrapFormat(prior, err)
		}
		srcs[k] = incPath
		for i, b := range inc.Blocks {
			if b < trunc && layer[b] == Zeros {
				layer[b], off[b] = int32(k), inc.BlockOffset(i)
				fullCopyPossible = false
			}
		}
		if k == 0 {
			usedIncrementalAt0 = incPath
		}
	}
	if usedIncrementalAt0 != "" {
		return nil, chainErr(f.chain.Backups[0].Dir,
			fmt.Sprintf("full backup %q contains the incremental file %q: it is not a full backup", f.chain.Backups[0].Dir, usedIncrementalAt0),
			fmt.Sprintf("full backup contains unexpected incremental file %q", usedIncrementalAt0))
	}
	return buildPlan(layer, off, srcs), nil
}

func wholePlan(layer int, src string, size int64) *Plan {
	p := &Plan{Whole: true, WholeLayer: layer, WholeSrc: src}
	if size > 0 {
		p.Extents = []Extent{{Off: 0, Len: size, Layer: layer, Src: src}}
	}
	return p
}

// buildPlan merges per-block sources into runs; srcs[k] is the file layer k
// supplies blocks from.
func buildPlan(layer []int32, off []int64, srcs []string) *Plan {
	p := &Plan{}
	for b, l := range layer {
		if n := len(p.Extents); n > 0 {
			e := &p.Extents[n-1]
			if e.Layer == int(l) && (l == Zeros || e.SrcOff+e.Len == off[b]) {
				e.Len += format.BlockSize
				continue
			}
		}
		e := Extent{Off: int64(b) * format.BlockSize, Len: format.BlockSize, Layer: int(l)}
		if l != Zeros {
			e.Src, e.SrcOff = srcs[l], off[b]
		}
		p.Extents = append(p.Extents, e)
	}
	return p
}

// extentAt finds the extent holding byte off.
func (p *Plan) extentAt(off int64) int {
	return sort.Search(len(p.Extents), func(i int) bool { return p.Extents[i].Off+p.Extents[i].Len > off })
}

// ResolveAll resolves the extent map of every file of the point, reading
// the headers of the older backups' INCREMENTAL files (never block data), so
// that a missing or corrupt file anywhere in the chain is found now rather
// than when the file is first read. Files are resolved jobs at a time.
func (p *Tree) ResolveAll(jobs int) error {
	var files []*File
	p.Walk(func(_ string, e *Entry) error {
		if e.Kind == KindFile && e.File.Incremental() {
			files = append(files, e.File)
		}
		return nil
	})
	var g errgroup.Group
	g.SetLimit(max(jobs, 1))
	for _, f := range files {
		g.Go(func() error {
			_, err := f.Plan()
			return err
		})
	}
	return g.Wait()
}
