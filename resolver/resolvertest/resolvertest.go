// Package resolvertest builds synthetic PostgreSQL backup chains on disk,
// without PostgreSQL, for tests of the resolver and of the layers above it.
//
// A chain is a directory holding one full backup and the incrementals taken
// after it. Each backup gets what pg_combinebackup looks at: PG_VERSION,
// global/pg_control (a real pg_control with the system identifier and data
// checksum state set and the CRC recomputed), backup_label with START WAL
// LOCATION / START TIMELINE and, for incrementals, INCREMENTAL FROM LSN / TLI
// matching the previous backup, and a version 2 backup_manifest listing every
// file with its CRC-32C. Tests add relation files whole or as INCREMENTAL
// files, other files, directories and tablespaces.
//
//	c := resolvertest.NewChain(t)
//	full := c.Full()
//	full.File("base/5/16384", data)
//	inc := c.Incremental()
//	inc.Incremental("base/5/16384", 3, resolvertest.Block{Num: 1, Data: img})
//	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
//
// Label, control file, PG_VERSION and manifest are written by Finish (which
// Dirs calls for every backup), from the Backup's exported fields and what is
// on disk at that moment; set the fields, or the Edit hooks, to build broken
// backups for negative tests.
package resolvertest

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/combinefs/combinefs/format"
)

// Real pg_control files (format/testdata/pg17/pg_control, pg18/pg_control).
var (
	//go:embed testdata/pg_control.17
	control17 []byte
	//go:embed testdata/pg_control.18
	control18 []byte
)

// DefaultSystemIdentifier is the system identifier of a new chain.
const DefaultSystemIdentifier = 7300000000000000001

// Chain is a set of backup directories under one temporary directory.
type Chain struct {
	t    testing.TB
	Root string // holds the backups and the targets of symlinked tablespaces
	// SystemIdentifier and Major are the defaults of backups created after
	// they are set.
	SystemIdentifier uint64
	Major            int
	Backups          []*Backup
}

// NewChain starts an empty chain (PostgreSQL 17) in a temporary directory
// removed when the test ends.
func NewChain(t testing.TB) *Chain {
	t.Helper()
	return &Chain{t: t, Root: t.TempDir(), SystemIdentifier: DefaultSystemIdentifier, Major: 17}
}

// Backup is one backup directory of a chain.
type Backup struct {
	c    *Chain
	Name string // full, inc1, inc2, ...
	Dir  string

	// Written by Finish.
	Label            format.BackupLabel // StartLSN, StartTLI and, if Incremental, PrevLSN/PrevTLI
	Major            int                // PG_VERSION, and the pg_control layout (17 or 18)
	SystemIdentifier uint64             // in pg_control
	DataChecksums    bool               // data_checksum_version 1 or 0
	NoManifest       bool               // write no backup_manifest
	ManifestVersion  int                // 2 (default) or 1 (no System-Identifier)
	// ManifestSystemIdentifier, if not 0, goes into the manifest instead of
	// SystemIdentifier.
	ManifestSystemIdentifier uint64
	// Edit hooks, applied to the bytes about to be written.
	EditLabel, EditControl, EditPGVersion, EditManifest func([]byte) []byte
}

// Block is one block image of an INCREMENTAL file.
type Block struct {
	Num  uint32 // segment-relative block number
	Data []byte // up to format.BlockSize bytes, zero-padded
}

func (c *Chain) newBackup(name string) *Backup {
	c.t.Helper()
	b := &Backup{c: c, Name: name, Dir: filepath.Join(c.Root, name), Major: c.Major, SystemIdentifier: c.SystemIdentifier, DataChecksums: true, ManifestVersion: 2}
	for _, d := range []string{"base", "global", "pg_tblspc", "pg_wal"} {
		b.Mkdir(d)
	}
	c.Backups = append(c.Backups, b)
	return b
}

// Full adds a full backup. It must be the first backup, unless the test
// means to build a broken chain.
func (c *Chain) Full() *Backup {
	c.t.Helper()
	b := c.newBackup(fmt.Sprintf("b%d-full", len(c.Backups)))
	b.Label = format.BackupLabel{StartLSN: c.nextLSN(), StartTLI: 1}
	return b
}

// Incremental adds an incremental backup taken from the previous backup: its
// label says INCREMENTAL FROM that backup's start LSN and timeline.
func (c *Chain) Incremental() *Backup {
	c.t.Helper()
	var prev format.BackupLabel
	if n := len(c.Backups); n > 0 {
		prev = c.Backups[n-1].Label
	} else {
		prev = format.BackupLabel{StartLSN: 0x1000028, StartTLI: 1}
	}
	b := c.newBackup(fmt.Sprintf("b%d-inc", len(c.Backups)))
	b.Label = format.BackupLabel{StartLSN: c.nextLSN(), StartTLI: prev.StartTLI, Incremental: true, PrevLSN: prev.StartLSN, PrevTLI: prev.StartTLI}
	return b
}

func (c *Chain) nextLSN() format.LSN {
	if n := len(c.Backups); n > 1 {
		return c.Backups[n-2].Label.StartLSN + 0x2000000
	}
	return 0x2000028
}

// Dirs finishes every backup and returns their directories, oldest first.
func (c *Chain) Dirs() []string {
	c.t.Helper()
	dirs := make([]string, len(c.Backups))
	for i, b := range c.Backups {
		b.Finish()
		dirs[i] = b.Dir
	}
	return dirs
}

func (b *Backup) path(rel string) string {
	b.c.t.Helper()
	if filepath.IsAbs(rel) || strings.Contains("/"+rel+"/", "/../") {
		b.c.t.Fatalf("resolvertest: path %q must be relative and inside the backup", rel)
	}
	return filepath.Join(b.Dir, filepath.FromSlash(rel))
}

// Mkdir creates the directory rel (and its parents).
func (b *Backup) Mkdir(rel string) {
	b.c.t.Helper()
	if err := os.MkdirAll(b.path(rel), 0o700); err != nil {
		b.c.t.Fatal(err)
	}
}

// File writes data to rel (creating directories), as a whole file.
func (b *Backup) File(rel string, data []byte) {
	b.c.t.Helper()
	p := b.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		b.c.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.c.t.Fatal(err)
	}
}

// Incremental writes the INCREMENTAL file standing for rel
// (dir/INCREMENTAL.name) with the given truncation block length and blocks,
// in the order given.
func (b *Backup) Incremental(rel string, truncationBlockLength uint32, blocks ...Block) {
	b.c.t.Helper()
	b.File(IncrementalPath(rel), IncrementalFile(truncationBlockLength, blocks...))
}

// IncrementalPath is the path of the INCREMENTAL file standing for rel.
func IncrementalPath(rel string) string {
	dir, name := filepath.Split(filepath.ToSlash(rel))
	return dir + format.IncrementalPrefix + name
}

// IncrementalFile is the contents of an INCREMENTAL file.
func IncrementalFile(truncationBlockLength uint32, blocks ...Block) []byte {
	nums := make([]uint32, len(blocks))
	for i, bl := range blocks {
		nums[i] = bl.Num
	}
	data := format.AppendIncrementalHeader(nil, truncationBlockLength, nums)
	for _, bl := range blocks {
		img := make([]byte, format.BlockSize)
		copy(img, bl.Data)
		data = append(data, img...)
	}
	return data
}

// Symlink creates rel as a symbolic link to target.
func (b *Backup) Symlink(rel, target string) {
	b.c.t.Helper()
	p := b.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		b.c.t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		b.c.t.Fatal(err)
	}
}

// Remove deletes rel and anything below it.
func (b *Backup) Remove(rel string) {
	b.c.t.Helper()
	if err := os.RemoveAll(b.path(rel)); err != nil {
		b.c.t.Fatal(err)
	}
}

// Tablespace adds the user tablespace oid and returns the path under which
// its files go ("pg_tblspc/<oid>"). An in-place tablespace is a directory in
// pg_tblspc; otherwise pg_tblspc/<oid> is a symlink to a directory of the
// chain's Root (one per backup, as pg_basebackup -T would make).
func (b *Backup) Tablespace(oid uint32, inPlace bool) string {
	b.c.t.Helper()
	rel := "pg_tblspc/" + strconv.FormatUint(uint64(oid), 10)
	if inPlace {
		b.Mkdir(rel)
		return rel
	}
	target := b.TablespaceTarget(oid)
	if err := os.MkdirAll(target, 0o700); err != nil {
		b.c.t.Fatal(err)
	}
	b.Symlink(rel, target)
	return rel
}

// TablespaceTarget is where the symlinked tablespace oid of b lives.
func (b *Backup) TablespaceTarget(oid uint32) string {
	return filepath.Join(b.c.Root, fmt.Sprintf("tblspc-%s-%d", b.Name, oid))
}

// Finish writes PG_VERSION, global/pg_control, backup_label and
// backup_manifest from b's fields and the files on disk. It may be called
// again after more changes.
func (b *Backup) Finish() {
	t := b.c.t
	t.Helper()
	write := func(rel string, data []byte, edit func([]byte) []byte) {
		t.Helper()
		if edit != nil {
			data = edit(data)
		}
		if data == nil {
			b.Remove(rel)
			return
		}
		b.File(rel, data)
	}
	write("PG_VERSION", []byte(strconv.Itoa(b.Major)+"\n"), b.EditPGVersion)
	write("global/pg_control", ControlFile(t, b.Major, b.SystemIdentifier, b.DataChecksums), b.EditControl)
	write("backup_label", LabelText(b.Label), b.EditLabel)
	b.Remove("backup_manifest")
	if b.NoManifest {
		return
	}
	sysid := b.SystemIdentifier
	if b.ManifestSystemIdentifier != 0 {
		sysid = b.ManifestSystemIdentifier
	}
	m := b.manifest(sysid)
	if b.ManifestVersion == 1 {
		m = ManifestV1(m)
	}
	write("backup_manifest", m, b.EditManifest)
}

// ControlFile returns a pg_control image of the given major (17 or 18) with
// the system identifier and data checksum state set and a correct CRC.
func ControlFile(t testing.TB, major int, systemIdentifier uint64, dataChecksums bool) []byte {
	t.Helper()
	var data []byte
	var crcOff int
	switch major {
	case 17:
		data, crcOff = bytes.Clone(control17), 0x120
	case 18:
		data, crcOff = bytes.Clone(control18), 0x124
	default:
		t.Fatalf("resolvertest: no pg_control template for PostgreSQL %d", major)
	}
	binary.LittleEndian.PutUint64(data[0:], systemIdentifier)
	var dcv uint32
	if dataChecksums {
		dcv = 1
	}
	binary.LittleEndian.PutUint32(data[0xfc:], dcv)
	binary.LittleEndian.PutUint32(data[crcOff:], format.CRC32C(data[:crcOff]))
	return data
}

// LabelText is a backup_label as the server writes it for l.
func LabelText(l format.BackupLabel) []byte {
	seg := uint64(l.StartLSN) / (16 << 20)
	s := fmt.Sprintf("START WAL LOCATION: %s (file %08X%08X%08X)\n", l.StartLSN, l.StartTLI, uint32(seg>>8), uint32(seg&0xff)) +
		fmt.Sprintf("CHECKPOINT LOCATION: %s\n", l.StartLSN+0x58) +
		"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-01-02 03:04:05 UTC\nLABEL: resolvertest\n" +
		fmt.Sprintf("START TIMELINE: %d\n", l.StartTLI)
	if l.Incremental {
		s += fmt.Sprintf("INCREMENTAL FROM LSN: %s\nINCREMENTAL FROM TLI: %d\n", l.PrevLSN, l.PrevTLI)
	}
	return []byte(s)
}

// manifest lists backup_label first, then every regular file of the backup
// in path order (files of symlinked tablespaces as pg_tblspc/<oid>/...), with
// CRC-32C checksums, and one WAL range.
func (b *Backup) manifest(sysid uint64) []byte {
	t := b.c.t
	t.Helper()
	type entry struct {
		path  string
		size  int64
		mtime time.Time
		sum   []byte
	}
	var entries []entry
	add := func(rel, full string) {
		t.Helper()
		data, err := os.ReadFile(full)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(full)
		if err != nil {
			t.Fatal(err)
		}
		h := format.ChecksumCRC32C.New()
		h.Write(data)
		entries = append(entries, entry{rel, int64(len(data)), st.ModTime(), h.Sum(nil)})
	}
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		t.Helper()
		ents, err := os.ReadDir(dir) // sorted: manifest order is free
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range ents {
			full := filepath.Join(dir, de.Name())
			rel := prefix + de.Name()
			switch {
			case prefix == "" && (de.Name() == "backup_manifest" || de.Name() == "backup_label"):
			case de.IsDir():
				walk(full, rel+"/")
			case de.Type()&fs.ModeSymlink != 0 && prefix == "pg_tblspc/" && isOID(de.Name()):
				if st, err := os.Stat(full); err == nil && st.IsDir() {
					walk(full, rel+"/")
				}
			case de.Type().IsRegular():
				add(rel, full)
			}
		}
	}
	first := 0
	if _, err := os.Stat(filepath.Join(b.Dir, "backup_label")); err == nil {
		add("backup_label", filepath.Join(b.Dir, "backup_label"))
		first = 1
	}
	walk(b.Dir, "")
	rest := entries[first:]
	sort.SliceStable(rest, func(i, j int) bool { return rest[i].path < rest[j].path })

	var buf bytes.Buffer
	w := format.NewManifestWriter(&buf, sysid)
	for _, e := range entries {
		w.AddFile(e.path, e.size, e.mtime, format.ChecksumCRC32C, e.sum)
	}
	if err := w.Finish([]format.WALRange{{TLI: b.Label.StartTLI, Start: b.Label.StartLSN, End: b.Label.StartLSN + 0x100}}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// isOID reports whether a pg_tblspc entry is named like a tablespace.
func isOID(name string) bool {
	v, err := strconv.ParseUint(name, 10, 32)
	return err == nil && v > 0
}

// ManifestV1 turns a version 2 manifest into a version 1 one (no
// System-Identifier line), with a correct checksum.
func ManifestV1(m []byte) []byte {
	lines := bytes.SplitAfter(m, []byte("\n"))
	var out []byte
	for _, l := range lines {
		switch {
		case bytes.HasPrefix(l, []byte(`{ "PostgreSQL-Backup-Manifest-Version": 2,`)):
			out = append(out, bytes.Replace(l, []byte("2,"), []byte("1,"), 1)...)
		case bytes.HasPrefix(l, []byte(`"System-Identifier": `)):
		default:
			out = append(out, l...)
		}
	}
	return Resum(out)
}

// Resum recomputes the Manifest-Checksum of an edited manifest (its last
// line is replaced).
func Resum(m []byte) []byte {
	body := m
	if i := bytes.LastIndex(bytes.TrimSuffix(m, []byte("\n")), []byte("\n")); i >= 0 {
		body = m[:i+1]
	}
	return fmt.Appendf(bytes.Clone(body), "\"Manifest-Checksum\": \"%x\"}\n", sha256.Sum256(body))
}

// FillBlock returns a block image whose bytes say where it came from, e.g.
// FillBlock("inc1:base/5/16384", 7): easy to recognise in a failure.
func FillBlock(tag string, n uint32) []byte {
	pat := fmt.Sprintf("[%s#%d]", tag, n)
	img := bytes.Repeat([]byte(pat), format.BlockSize/len(pat)+1)
	return img[:format.BlockSize]
}
