package flatten_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// This file holds a tiny model of a backup chain, written independently of
// flatten and resolver: what each backup holds, and from it the bytes
// pg_combinebackup's rules give every file of a point.

const blk = format.BlockSize

// spec is one file of one backup: whole, or an INCREMENTAL file.
type spec struct {
	whole  []byte
	inc    bool
	trunc  uint32
	blocks []resolvertest.Block
}

// model is a chain being built: the resolvertest chain and, per backup, the
// files the test put in, by output path (no INCREMENTAL. prefix).
type model struct {
	t       *testing.T
	c       *resolvertest.Chain
	backups []map[string]spec
}

func newModel(t *testing.T) *model {
	return &model{t: t, c: resolvertest.NewChain(t)}
}

// full and incremental start the next backup; its files are added with
// whole and inc.
func (m *model) full() *resolvertest.Backup {
	m.backups = append(m.backups, map[string]spec{})
	return m.c.Full()
}

func (m *model) incremental() *resolvertest.Backup {
	m.backups = append(m.backups, map[string]spec{})
	return m.c.Incremental()
}

func (m *model) last() (*resolvertest.Backup, map[string]spec) {
	n := len(m.backups) - 1
	return m.c.Backups[n], m.backups[n]
}

func (m *model) whole(rel string, data []byte) {
	b, files := m.last()
	b.File(rel, data)
	files[rel] = spec{whole: data}
}

func (m *model) inc(rel string, trunc uint32, blocks ...resolvertest.Block) {
	b, files := m.last()
	b.Incremental(rel, trunc, blocks...)
	files[rel] = spec{inc: true, trunc: trunc, blocks: blocks}
}

// Where a file of a point comes from.
type origin int

const (
	plain         origin = iota // a whole file of the final backup
	wholeOlder                  // copied whole from an older backup
	reconstructed               // assembled from blocks
)

type expected struct {
	data []byte
	from origin
	src  string // the source file of a whole copy
}

// expect computes the file rel of point k by pg_combinebackup's rules
// (reconstruct.c): the newest backup holding a block wins, only the final
// INCREMENTAL file's truncation_block_length limits what older backups
// supply, a whole file ends the search, missing blocks are zeros, and a file
// no incremental changed whose older copy has exactly the truncation length
// is copied whole.
func (m *model) expect(k int, rel string) expected {
	m.t.Helper()
	final, ok := m.backups[k][rel]
	if !ok {
		m.t.Fatalf("model: %s not in backup %d", rel, k)
	}
	if !final.inc {
		return expected{data: final.whole, from: plain, src: filepath.Join(m.c.Backups[k].Dir, rel)}
	}
	n := final.trunc
	for _, b := range final.blocks {
		n = max(n, b.Num+1)
	}
	out := make([]byte, int(n)*blk)
	have := make([]bool, n)
	put := func(b uint32, img []byte) {
		copy(out[int(b)*blk:int(b+1)*blk], img)
		have[b] = true
	}
	for _, b := range final.blocks {
		put(b.Num, b.Data)
	}
	fullCopy := len(final.blocks) == 0
	for j := k - 1; j >= 0; j-- {
		s, ok := m.backups[j][rel]
		if !ok {
			m.t.Fatalf("model: %s missing from backup %d", rel, j)
		}
		if !s.inc {
			nb := uint32(len(s.whole) / blk)
			for b := uint32(0); b < final.trunc; b++ {
				if !have[b] && b < nb {
					put(b, s.whole[int(b)*blk:int(b+1)*blk])
				}
			}
			if fullCopy && len(s.whole) == int(final.trunc)*blk {
				return expected{data: s.whole, from: wholeOlder, src: filepath.Join(m.c.Backups[j].Dir, rel)}
			}
			return expected{data: out, from: reconstructed}
		}
		for _, b := range s.blocks {
			if b.Num < final.trunc && !have[b.Num] {
				put(b.Num, b.Data)
				fullCopy = false
			}
		}
	}
	m.t.Fatalf("model: no whole copy of %s in point %d", rel, k)
	return expected{}
}

// point opens the chain up to backup k and builds its tree, as
// cmd/combinefs does.
func (m *model) point(k int) *resolver.Tree {
	m.t.Helper()
	dirs := m.c.Dirs()[:k+1]
	chain, err := resolver.OpenChain(dirs, resolver.ChainOptions{RequireV2Manifests: true})
	if err != nil {
		m.t.Fatal(err)
	}
	p, err := resolver.NewTree(chain)
	if err != nil {
		m.t.Fatal(err)
	}
	return p
}

// want lists the output of point k: every file by output path with its
// expected bytes, including those resolvertest adds (PG_VERSION,
// global/pg_control), which the final backup holds whole.
func (m *model) want(k int) map[string]expected {
	m.t.Helper()
	m.c.Dirs() // finish: writes PG_VERSION and pg_control
	out := map[string]expected{}
	for rel := range m.backups[k] {
		out[rel] = m.expect(k, rel)
	}
	for _, rel := range []string{"PG_VERSION", "global/pg_control"} {
		p := filepath.Join(m.c.Backups[k].Dir, rel)
		out[rel] = expected{data: mustRead(m.t, p), from: plain, src: p}
	}
	return out
}

// wantLabel is the final backup_label without its INCREMENTAL lines.
func wantLabel(t *testing.T, b *resolvertest.Backup) []byte {
	var out []string
	for _, l := range strings.SplitAfter(string(mustRead(t, filepath.Join(b.Dir, "backup_label"))), "\n") {
		if !strings.HasPrefix(l, "INCREMENTAL FROM ") {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, ""))
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checksum computes a manifest checksum with the standard library alone.
// PostgreSQL prints a CRC-32C as the bytes of the host-order uint32.
func checksum(algo format.ChecksumType, data []byte) []byte {
	switch algo {
	case format.ChecksumCRC32C:
		return binary.NativeEndian.AppendUint32(nil, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
	case format.ChecksumSHA224:
		s := sha256.Sum224(data)
		return s[:]
	case format.ChecksumSHA256:
		s := sha256.Sum256(data)
		return s[:]
	case format.ChecksumSHA384:
		s := sha512.Sum384(data)
		return s[:]
	case format.ChecksumSHA512:
		s := sha512.Sum512(data)
		return s[:]
	}
	return nil
}

var umask = func() fs.FileMode {
	u := syscall.Umask(0)
	syscall.Umask(u)
	return fs.FileMode(u)
}()

// check is what a test expects of an output directory.
type check struct {
	out      string
	files    map[string]expected // by output path, without backup_label
	label    []byte
	tsLinks  map[string]string // pg_tblspc/<oid> -> where the symlink must point
	opts     flatten.Options
	dirMode  fs.FileMode
	fileMode fs.FileMode
	walRange format.WALRange // of the final backup's manifest
}

// verify compares the output with c: the same set of files with the same
// bytes and modes, symlinked tablespaces, the label and the manifest.
func (c check) verify(t *testing.T) {
	t.Helper()
	got := map[string]string{} // output path -> real path
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range ents {
			full, rel := filepath.Join(dir, de.Name()), prefix+de.Name()
			info, err := os.Lstat(full)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(full)
				if want, ok := c.tsLinks[rel]; !ok || err != nil || target != want {
					t.Errorf("%s: symlink to %q (%v), want %q", rel, target, err, want)
					continue
				}
				if st, err := os.Stat(target); err != nil || st.Mode().Perm() != c.dirMode&^umask {
					t.Errorf("%s: tablespace directory %v, %v; want mode %v", rel, st.Mode(), err, c.dirMode&^umask)
				}
				walk(target, rel+"/")
			case info.IsDir():
				if info.Mode().Perm() != c.dirMode&^umask {
					t.Errorf("%s/: mode %v, want %v", rel, info.Mode().Perm(), c.dirMode&^umask)
				}
				walk(full, rel+"/")
			default:
				got[rel] = full
			}
		}
	}
	walk(c.out, "")
	for rel := range c.tsLinks {
		if _, err := os.Lstat(filepath.Join(c.out, rel)); err != nil {
			t.Errorf("tablespace link %s: %v", rel, err)
		}
	}

	for rel, w := range c.files {
		p, ok := got[rel]
		if !ok {
			t.Errorf("%s: missing from the output", rel)
			continue
		}
		data := mustRead(t, p)
		if !bytes.Equal(data, w.data) {
			t.Errorf("%s: %d bytes differ from the %d expected (first difference at %d)", rel, len(data), len(w.data), firstDiff(data, w.data))
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		linked := c.opts.CopyMethod == flatten.Link && w.from != reconstructed
		switch {
		case linked:
			// --link: a hard link to the very file it copies.
			if src, err := os.Stat(w.src); err != nil || !os.SameFile(st, src) {
				t.Errorf("%s: not a hard link to %s", rel, w.src)
			}
		case st.Sys().(*syscall.Stat_t).Nlink != 1:
			t.Errorf("%s: has %d links, want a file of its own", rel, st.Sys().(*syscall.Stat_t).Nlink)
		case st.Mode().Perm() != c.fileMode&^umask:
			t.Errorf("%s: mode %v, want %v", rel, st.Mode().Perm(), c.fileMode&^umask)
		}
	}
	for rel := range got {
		if _, ok := c.files[rel]; !ok && rel != "backup_label" && rel != "backup_manifest" {
			t.Errorf("%s: in the output but not expected", rel)
		}
		if strings.Contains(rel, format.IncrementalPrefix) && !strings.HasPrefix(rel, "pg_logical/") {
			t.Errorf("%s: output name keeps the INCREMENTAL. prefix", rel)
		}
	}

	label, ok := got["backup_label"]
	if !ok {
		t.Fatalf("no backup_label")
	}
	if l := mustRead(t, label); !bytes.Equal(l, c.label) {
		t.Errorf("backup_label:\n%s\nwant:\n%s", l, c.label)
	}
	for _, p := range []string{label, got["backup_manifest"]} {
		if st, err := os.Stat(p); err == nil && st.Mode().Perm() != c.fileMode&^umask {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), c.fileMode&^umask)
		}
	}

	mpath, ok := got["backup_manifest"]
	if c.opts.NoManifest || c.opts.DryRun {
		if ok {
			t.Errorf("backup_manifest written with NoManifest")
		}
		return
	}
	if !ok {
		t.Fatalf("no backup_manifest")
	}
	c.verifyManifest(t, mustRead(t, mpath))
}

func (c check) verifyManifest(t *testing.T, raw []byte) {
	t.Helper()
	m, err := format.ParseManifest(raw, "backup_manifest")
	if err != nil {
		t.Fatalf("the manifest written does not parse: %v", err)
	}
	if m.Version != 2 || m.SystemIdentifier != resolvertest.DefaultSystemIdentifier {
		t.Errorf("manifest version %d, system identifier %d", m.Version, m.SystemIdentifier)
	}
	if len(m.WALRanges) != 1 || m.WALRanges[0] != c.walRange {
		t.Errorf("manifest WAL ranges %+v, want [%+v]", m.WALRanges, c.walRange)
	}
	if len(m.Files) == 0 || m.Files[0].Path != "backup_label" {
		t.Fatalf("manifest does not start with backup_label: %+v", m.Files)
	}
	all := map[string][]byte{"backup_label": c.label}
	for rel, w := range c.files {
		all[rel] = w.data
	}
	if len(m.Files) != len(all) {
		var paths []string
		for _, f := range m.Files {
			paths = append(paths, f.Path)
		}
		sort.Strings(paths)
		t.Errorf("manifest lists %d files, want %d: %q", len(m.Files), len(all), paths)
	}
	for rel, data := range all {
		f, ok := m.Lookup(rel)
		if !ok {
			t.Errorf("%s: not in the manifest", rel)
			continue
		}
		algo := c.opts.ManifestChecksums
		if strings.HasPrefix(rel, "pg_wal/") {
			algo = format.ChecksumNone // pg_combinebackup does not checksum WAL
		}
		if f.Size != int64(len(data)) || f.Algorithm != algo || !bytes.Equal(f.Checksum, checksum(algo, data)) {
			t.Errorf("%s: manifest says size %d %v %x, want %d %v %x", rel, f.Size, f.Algorithm, f.Checksum, len(data), algo, checksum(algo, data))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// run flattens p with opts (Output set by the caller).
func run(t *testing.T, p *resolver.Tree, opts flatten.Options) flatten.Result {
	t.Helper()
	res, err := flatten.Run(context.Background(), p, opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// mustNotExist fails unless path is gone.
func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		var names []string
		filepath.WalkDir(path, func(p string, _ fs.DirEntry, _ error) error {
			names = append(names, p)
			return nil
		})
		t.Errorf("%s should not exist after a failed run: %v %q", path, err, names)
	}
}
