package resolver

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
)

// EntryKind is the type of a tree entry.
type EntryKind int

// The kinds of entries in a point's tree.
const (
	KindDir EntryKind = iota
	KindFile
)

// Entry is one node of a point's tree.
type Entry struct {
	Name    string
	Kind    EntryKind
	ModTime time.Time // of the entry in the final backup
	// Children of a directory, in the final backup's readdir order (the
	// order pg_combinebackup processes and lists them in).
	Children []*Entry
	File     *File // for KindFile
}

// Child finds a direct child by name.
func (e *Entry) Child(name string) *Entry {
	for _, c := range e.Children {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Tablespace is a user tablespace of the point (an entry of the final
// backup's pg_tblspc that is a symlink or a directory named by an OID).
type Tablespace struct {
	OID uint32
	// InPlace tablespaces are directories inside pg_tblspc; the others are
	// symlinks to Target (absolute and canonical).
	InPlace bool
	Target  string
	Root    *Entry // its contents
}

// Tree is the virtual data directory of a chain's last backup.
type Tree struct {
	Chain *Chain
	// Label is the backup_label of the output: the final one without its
	// INCREMENTAL lines.
	Label []byte
	// Root is the main tree, without the top-level backup_label and
	// backup_manifest (handled separately) and without the tablespace
	// entries of pg_tblspc.
	Root *Entry
	// Tablespaces in the order pg_combinebackup processes them (reverse
	// readdir order of pg_tblspc).
	Tablespaces []*Tablespace
	// DirMode and FileMode are the permissions pg_combinebackup gives new
	// directories and files: group access follows the final backup.
	DirMode, FileMode fs.FileMode
	// Warnings are pg_combinebackup's non-fatal findings about the tree
	// (skipped symlinks and special files).
	Warnings []string
}

// NewTree builds the tree of the chain's final backup. It reads directory
// entries and the headers of the final backup's INCREMENTAL files, never
// block data, so its cost does not grow with the size of the database.
func NewTree(c *Chain) (*Tree, error) {
	final := c.Final()
	st, err := c.source().Stat(final.Dir)
	if err != nil {
		return nil, err
	}
	p := &Tree{Chain: c, Label: format.StripIncrementalLines(final.LabelBytes), DirMode: 0o700, FileMode: 0o600}
	if st.Mode().Perm()&0o750 == 0o750 {
		p.DirMode, p.FileMode = 0o750, 0o640
	}
	b := &treeBuilder{p: p, src: c.source(), final: len(c.Backups) - 1, present: map[string]bool{"backup_label": true}}
	p.Root = &Entry{Kind: KindDir, ModTime: st.ModTime()}
	if err := b.walk(p.Root, final.Dir, "", "", false); err != nil {
		return nil, err
	}
	if err := b.scanTablespaces(final.Dir); err != nil {
		return nil, err
	}
	if err := b.readHeaders(); err != nil {
		return nil, err
	}
	if err := b.checkManifest(final); err != nil {
		return nil, err
	}
	return p, nil
}

type treeBuilder struct {
	p   *Tree
	src Source
	// headers are the INCREMENTAL files whose headers an object store's
	// walk left to readHeaders.
	headers []pendingHeader
	final   int
	// present holds the manifest path of every regular file of the final
	// backup, as named there (INCREMENTAL.x for an incremental file).
	present map[string]bool
}

// checkManifest refuses a final backup that lacks a file its manifest
// lists. Without the file the point would silently have no such file, and
// a new manifest written from the tree would leave it out too, so even a
// verify of the output would not notice (pg_combinebackup does not check).
func (b *treeBuilder) checkManifest(final *Backup) error {
	if final.Manifest == nil {
		return nil
	}
	for _, f := range final.Manifest.Files {
		if b.present[f.Path] {
			continue
		}
		p := filepath.Join(final.Dir, filepath.FromSlash(f.Path))
		return chainErr(final.Dir, fmt.Sprintf("%s is missing: the backup_manifest of %q lists it, so the backup is not complete", p, final.Dir),
			fmt.Sprintf("\"%s\" is present in the manifest but not on disk", p))
	}
	return nil
}

// walk fills dir from the directory src. rel is the path relative to the
// walk's top, manifestPrefix what turns a name in it into a manifest path;
// inTablespace marks a walk inside a user tablespace, where every directory
// may hold INCREMENTAL files.
func (b *treeBuilder) walk(dir *Entry, src, rel, manifestPrefix string, inTablespace bool) error {
	isPgTblspc := !inTablespace && rel == "pg_tblspc"
	incrementalDir := inTablespace || strings.HasPrefix(rel, "base/") || rel == "global" || strings.HasPrefix(rel, "pg_tblspc/")
	ents, err := b.src.ReadDir(src)
	if err != nil {
		return err
	}
	seen := map[string]string{} // output name -> the entry that gave it
	for _, info := range ents {
		name := info.Name()
		path := filepath.Join(src, name)
		if isPgTblspc {
			if _, ok := parseOID(name); ok && (info.Mode()&fs.ModeSymlink != 0 || info.IsDir()) {
				continue // a tablespace, see scanTablespaces
			}
		}
		childRel := name
		if rel != "" {
			childRel = rel + "/" + name
		}
		switch {
		case info.IsDir():
			child := &Entry{Name: name, Kind: KindDir, ModTime: info.ModTime()}
			dir.Children = append(dir.Children, child)
			if err := b.walk(child, path, childRel, manifestPrefix, inTablespace); err != nil {
				return err
			}
			continue
		case info.Mode()&fs.ModeSymlink != 0:
			b.p.Warnings = append(b.p.Warnings, fmt.Sprintf("skipping symbolic link %q", path))
			continue
		case !info.Mode().IsRegular():
			b.p.Warnings = append(b.p.Warnings, fmt.Sprintf("skipping special file %q", path))
			continue
		case rel == "" && !inTablespace && (name == "backup_label" || name == "backup_manifest"):
			continue
		}
		b.present[manifestPrefix+dirPrefix(rel)+name] = true
		file := &File{chain: b.p.Chain, src: path, size: info.Size()}
		outName := name
		if base, ok := format.IsIncrementalName(name); ok && incrementalDir {
			outName = base
			if IsLocal(b.src) {
				if err := b.readHeader(file, path); err != nil {
					return err
				}
			} else {
				b.headers = append(b.headers, pendingHeader{file, path})
			}
		}
		if other, dup := seen[outName]; dup {
			// Both 16384 and INCREMENTAL.16384: no server writes that.
			return chainErr(b.p.Chain.Final().Dir, fmt.Sprintf("backup %q has both %q and %q: it is damaged", b.p.Chain.Final().Dir, other, path),
				fmt.Sprintf("could not open file %q: File exists", filepath.Join(filepath.Dir(path), outName)))
		}
		seen[outName] = path
		file.Path = manifestPrefix + dirPrefix(rel) + outName
		dir.Children = append(dir.Children, &Entry{Name: outName, Kind: KindFile, ModTime: info.ModTime(), File: file})
	}
	return nil
}

// pendingHeader is an INCREMENTAL file of the final backup whose header is
// yet to be read.
type pendingHeader struct {
	file *File
	path string
}

// readHeader reads the header of file's INCREMENTAL file, which sets the
// output's size.
func (b *treeBuilder) readHeader(file *File, path string) error {
	inc, err := parseIncrementalFile(b.src, path)
	if err != nil {
		return wrapFormat(b.p.Chain.Final().Dir, err)
	}
	file.inc = inc
	file.size = int64(inc.BlockLength()) * format.BlockSize
	return nil
}

// ReadJobs is how many INCREMENTAL headers of src are read at once (the
// final backup's as the tree is built, the older backups' by ResolveAll):
// a few on local disks, many on an object store, where each is a round
// trip and a point has one per changed relation segment (about a thousand
// at pgbench scale 100; read one by one they were most of the time of a
// mount from S3).
func ReadJobs(src Source) int {
	if IsLocal(src) {
		return 8
	}
	return 32
}

// readHeaders reads the pending headers in parallel; an error is the first
// one in walk order, as a sequential walk would have met it.
func (b *treeBuilder) readHeaders() error {
	errs := make([]error, len(b.headers))
	var g errgroup.Group
	g.SetLimit(ReadJobs(b.src))
	for i, h := range b.headers {
		g.Go(func() error {
			errs[i] = b.readHeader(h.file, h.path)
			return nil
		})
	}
	g.Wait()
	return firstError(errs)
}

// firstError is the first non-nil error of errs, or nil.
func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func dirPrefix(rel string) string {
	if rel == "" {
		return ""
	}
	return rel + "/"
}

// scanTablespaces finds the tablespaces of the final backup as
// pg_combinebackup's scan_for_existing_tablespaces does, and walks each.
func (b *treeBuilder) scanTablespaces(finalDir string) error {
	tblspc := filepath.Join(finalDir, "pg_tblspc")
	ents, err := b.src.ReadDir(tblspc)
	if err != nil {
		return err
	}
	for _, info := range ents {
		oid, ok := parseOID(info.Name())
		if !ok {
			continue
		}
		path := filepath.Join(tblspc, info.Name())
		ts := &Tablespace{OID: oid, Root: &Entry{Name: info.Name(), Kind: KindDir, ModTime: info.ModTime()}}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := b.src.Readlink(path)
			if err != nil {
				return err
			}
			if !filepath.IsAbs(target) {
				return chainErr(finalDir, fmt.Sprintf("target of symbolic link %q is relative", path), fmt.Sprintf("target of symbolic link %q is relative", path))
			}
			ts.Target = filepath.Clean(target)
			if st, err := b.src.Stat(path); err == nil {
				ts.Root.ModTime = st.ModTime()
			}
		case info.IsDir():
			ts.InPlace = true
		default:
			continue
		}
		prefix := "pg_tblspc/" + info.Name() + "/"
		if err := b.walk(ts.Root, path, "", prefix, true); err != nil {
			return err
		}
		// pg_combinebackup prepends to its list: reverse readdir order.
		b.p.Tablespaces = append([]*Tablespace{ts}, b.p.Tablespaces...)
	}
	return nil
}

// parseOID accepts what pg_combinebackup's parse_oid does: a decimal in
// 1..2^32-1 (strtoul also allows leading blanks and a sign).
func parseOID(s string) (uint32, bool) {
	t := strings.TrimLeft(s, " \t\n\v\f\r")
	t = strings.TrimPrefix(t, "+")
	if t == "" || t[0] < '0' || t[0] > '9' {
		return 0, false
	}
	v, err := strconv.ParseUint(t, 10, 32)
	if err != nil || v == 0 {
		return 0, false
	}
	return uint32(v), true
}

// Walk calls fn for every entry of the main tree and then of each tablespace,
// depth first in pg_combinebackup's order, with the entry's manifest-relative
// path ("" for the root).
func (p *Tree) Walk(fn func(path string, e *Entry) error) error {
	var walk func(prefix string, e *Entry) error
	walk = func(path string, e *Entry) error {
		if err := fn(path, e); err != nil {
			return err
		}
		for _, c := range e.Children {
			if err := walk(dirPrefix(path)+c.Name, c); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk("", p.Root); err != nil {
		return err
	}
	for _, ts := range p.Tablespaces {
		if err := walk("pg_tblspc/"+ts.Root.Name, ts.Root); err != nil {
			return err
		}
	}
	return nil
}
