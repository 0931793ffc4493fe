package fusefs_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

const bs = format.BlockSize

// requireFUSE skips the test when /dev/fuse cannot be used, or fails it when
// COMBINEFS_REQUIRE_FUSE=1 (CI and `make unit` set it, so a machine without
// FUSE cannot pass these tests by skipping them).
func requireFUSE(tb testing.TB) {
	tb.Helper()
	gate := func(format string, args ...any) {
		tb.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("COMBINEFS_REQUIRE_FUSE") == "1" {
			tb.Fatalf("%s (COMBINEFS_REQUIRE_FUSE=1 forbids skipping)", msg)
		}
		tb.Skipf("%s (set COMBINEFS_REQUIRE_FUSE=1 to turn this skip into a failure)", msg)
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		gate("FUSE is not available: %v", err)
		return
	}
	f.Close()
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err := exec.LookPath("fusermount"); err != nil {
				gate("FUSE needs root or fusermount3 in PATH")
			}
		}
	}
}

// mounted is a mount made by a test; it is unmounted when the test ends if
// the test did not do it.
type mounted struct {
	*fusefs.Mount
	dir  string
	once sync.Once
}

func (m *mounted) unmount(tb testing.TB) {
	tb.Helper()
	m.once.Do(func() {
		if err := m.Mount.Unmount(); err != nil {
			tb.Errorf("unmount %s: %v", m.dir, err)
		}
		if isMounted(m.dir) {
			tb.Errorf("%s is still in /proc/mounts after Unmount", m.dir)
		}
	})
}

func track(tb testing.TB, dir string, m *fusefs.Mount) *mounted {
	mt := &mounted{Mount: m, dir: dir}
	tb.Cleanup(func() { mt.unmount(tb) })
	return mt
}

// mountRO mounts p read-only at a new directory.
func mountRO(tb testing.TB, p *resolver.Tree, opts fusefs.Options) *mounted {
	tb.Helper()
	dir := tb.TempDir()
	m, err := fusefs.MountReadOnly(dir, p, opts)
	if err != nil {
		tb.Fatalf("MountReadOnly: %v", err)
	}
	return track(tb, dir, m)
}

// mountCoW mounts p copy-on-write at dir (a new directory when empty).
func mountCoW(tb testing.TB, dir string, p *resolver.Tree, upper string, opts fusefs.Options) *mounted {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	m, err := fusefs.MountCoW(dir, p, upper, opts)
	if err != nil {
		tb.Fatalf("MountCoW: %v", err)
	}
	return track(tb, dir, m)
}

// isMounted reports whether dir is a mount point in /proc/mounts.
func isMounted(dir string) bool {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

func openPoint(tb testing.TB, dirs []string) *resolver.Tree {
	tb.Helper()
	ch, err := resolver.OpenChain(dirs, resolver.ChainOptions{})
	if err != nil {
		tb.Fatalf("OpenChain: %v", err)
	}
	p, err := resolver.NewTree(ch)
	if err != nil {
		tb.Fatalf("NewTree: %v", err)
	}
	return p
}

// ---------------------------------------------------------------------------
// Synthetic chains with an independent model of their point.

type repKind int

const (
	repAbsent repKind = iota
	repWhole
	repInc
)

// rep is one backup's copy of one file.
type rep struct {
	kind   repKind
	data   []byte   // repWhole
	tbl    uint32   // repInc: truncation block length
	blocks []uint32 // repInc, in file order
	imgs   [][]byte // repInc
}

// reconstruct is pg_combinebackup's rule, block by block, from the copies
// of one file in backups 0..n-1 (the last one present): the newest backup
// holding a block wins, a whole copy ends the search, the final
// incremental's truncation length limits what older backups supply, and
// blocks nobody supplies are zeros.
func reconstruct(reps []rep) []byte {
	last := reps[len(reps)-1]
	if last.kind == repWhole {
		return last.data
	}
	length := last.tbl
	for _, b := range last.blocks {
		length = max(length, b+1)
	}
	out := make([][]byte, length)
	for i, b := range last.blocks {
		out[b] = last.imgs[i]
	}
	for k := len(reps) - 2; k >= 0; k-- {
		r := reps[k]
		if r.kind == repAbsent {
			panic("model: chain incomplete")
		}
		if r.kind == repWhole {
			n := uint32(len(r.data) / bs)
			for b := uint32(0); b < last.tbl && b < n; b++ {
				if out[b] == nil {
					out[b] = r.data[b*bs : (b+1)*bs]
				}
			}
			break
		}
		for i, b := range r.blocks {
			if b < last.tbl && out[b] == nil {
				out[b] = r.imgs[i]
			}
		}
	}
	data := make([]byte, 0, int(length)*bs)
	for _, b := range out {
		if b == nil {
			b = make([]byte, bs)
		}
		data = append(data, b...)
	}
	return data
}

// synth is a synthetic chain and what its final point must look like.
type synth struct {
	c     *resolvertest.Chain
	dirs  []string
	reps  map[string][]rep  // data-directory path -> one copy per backup
	want  map[string][]byte // files of the final point (without backup_label)
	label []byte            // backup_label of the point
	group bool              // the final backup directory is 0750
	// roles names files that exercise a particular case.
	roles map[string]string
}

const tsVersionDir = "PG_17_202406281"

// buildSynth makes a random chain of nb backups (full + incrementals) with
// relation files reconstructed from several incrementals, unchanged files
// served whole from the full backup, zero-filled gaps, dropped and new
// files, shrinking and growing files, tablespaces, and non-relation files
// of odd sizes. maxBlocks bounds relation file sizes.
func buildSynth(tb testing.TB, seed uint64, nb, maxBlocks int) *synth {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	c := resolvertest.NewChain(tb)
	s := &synth{c: c, reps: map[string][]rep{}, roles: map[string]string{}}

	randBlock := func(tag string, b uint32) []byte {
		if rng.IntN(4) == 0 {
			img := make([]byte, bs)
			for i := range img {
				img[i] = byte(rng.Uint32())
			}
			return img
		}
		return resolvertest.FillBlock(fmt.Sprintf("%s/%d", tag, rng.IntN(1000)), b)
	}
	randBytes := func(n int) []byte {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		return d
	}

	// Relation files: a few with fixed roles, the rest random.
	var rels []string
	for i := range 10 {
		rels = append(rels, fmt.Sprintf("base/5/%d", 16384+i))
	}
	rels = append(rels, "base/1/1259", "base/1/1259_fsm", "global/1262", "base/5/16400.1")
	tsA := "pg_tblspc/16385/" + tsVersionDir + "/5/"
	tsB := "pg_tblspc/16386/" + tsVersionDir + "/5/"
	rels = append(rels, tsA+"16500", tsA+"16501", tsA+"16502", tsB+"16600", tsB+"16601")
	s.roles["base/5/16384"] = "unchanged"      // whole from the full backup
	s.roles["base/5/16385"] = "every"          // changed in every incremental
	s.roles["base/5/16386"] = "gap"            // a zero-filled gap
	s.roles["base/5/16387"] = "truncated"      // shrinks in the last incremental
	s.roles[tsA+"16500"] = "every"             // reconstructed in a tablespace
	s.roles[tsB+"16600"] = "unchanged"         // whole, in-place tablespace
	s.roles["base/1/1259"] = "partial-in-full" // whole copy with a partial block in the full backup
	s.roles["base/5/16399"] = "big"            // reconstructed, larger than one FUSE request
	rels = append(rels, "base/5/16399")

	live := map[string][][]byte{} // relation file -> blocks
	other := map[string][]byte{}  // non-relation files
	otherNames := []string{"postgresql.conf", "pg_hba.conf", "pg_xact/0000", "pg_wal/000000010000000000000002",
		"global/pg_filenode.map", "base/5/pg_filenode.map", "base/5/PG_VERSION", "pg_logical/replorigin_checkpoint",
		"pg_stat/empty", "pg_multixact/offsets/0000", tsA + "PG_VERSION_marker"}
	for b := 0; b < nb; b++ {
		var bk *resolvertest.Backup
		if b == 0 {
			bk = c.Full()
		} else {
			bk = c.Incremental()
		}
		bk.Tablespace(16385, false)
		bk.Tablespace(16386, true)
		tag := fmt.Sprintf("b%d", b)
		last := b == nb-1

		// Non-relation files: always sent whole, often changed, odd sizes.
		for _, name := range otherNames {
			if _, ok := other[name]; !ok || rng.IntN(2) == 0 {
				switch {
				case name == "pg_stat/empty":
					other[name] = []byte{}
				case strings.HasPrefix(name, "pg_xact/"):
					other[name] = randBytes(bs * (1 + rng.IntN(3)))
				default:
					other[name] = randBytes(1 + rng.IntN(3*bs))
				}
			}
			bk.File(name, other[name])
			s.addRep(name, b, rep{kind: repWhole, data: other[name]})
		}

		for _, name := range rels {
			role := s.roles[name]
			blocks, exists := live[name]
			if b == 0 {
				n := rng.IntN(maxBlocks + 1)
				if role != "" {
					n = max(n, 6)
				}
				if role == "big" {
					n = 200
				}
				blocks = make([][]byte, n)
				for i := range blocks {
					blocks[i] = randBlock(tag+":"+name, uint32(i))
				}
				live[name] = blocks
				data := bytes.Join(blocks, nil)
				if role == "partial-in-full" {
					// A relation file whose size is not a block multiple:
					// its last partial block must not be used.
					data = append(data, randBytes(1000)...)
				}
				bk.File(name, data)
				s.addRep(name, 0, rep{kind: repWhole, data: data})
				continue
			}
			action := rng.IntN(20)
			switch role {
			case "unchanged":
				action = 100
			case "every", "truncated", "big":
				action = 10
			case "gap":
				if b == 1 {
					action = 99
				} else {
					action = 100
				}
			case "partial-in-full":
				action = 10
			}
			if !exists {
				if rng.IntN(2) == 0 {
					s.addRep(name, b, rep{kind: repAbsent})
					continue
				}
				action = 18 // reappears: sent whole
			}
			switch {
			case action == 19 && !last && role == "":
				// Dropped.
				delete(live, name)
				s.addRep(name, b, rep{kind: repAbsent})
			case action >= 17 && action < 100 && action != 99:
				// A new relfilenode, or a rewrite: sent whole.
				n := rng.IntN(maxBlocks + 1)
				blocks = make([][]byte, n)
				for i := range blocks {
					blocks[i] = randBlock(tag+":"+name, uint32(i))
				}
				live[name] = blocks
				data := bytes.Join(blocks, nil)
				bk.File(name, data)
				s.addRep(name, b, rep{kind: repWhole, data: data})
			case action == 99:
				// Inconsistent on purpose: the truncation length goes beyond
				// what older backups have and not every block above their
				// size is sent, so some blocks are zero-filled.
				prev := uint32(len(blocks))
				tbl := prev + 3
				r := rep{kind: repInc, tbl: tbl}
				nbl := append([][]byte(nil), blocks...)
				for len(nbl) < int(tbl)+1 {
					nbl = append(nbl, make([]byte, bs))
				}
				for _, blk := range []uint32{prev + 1, tbl} {
					img := randBlock(tag+":"+name, blk)
					nbl[blk] = img
					r.blocks = append(r.blocks, blk)
					r.imgs = append(r.imgs, img)
				}
				live[name] = nbl
				bk.Incremental(name, r.tbl, s.toBlocks(r)...)
				s.addRep(name, b, r)
			case action == 100:
				// Unchanged: an INCREMENTAL with no blocks.
				r := rep{kind: repInc, tbl: uint32(len(blocks))}
				bk.Incremental(name, r.tbl, s.toBlocks(r)...)
				s.addRep(name, b, r)
			default:
				// Changed: some blocks rewritten, maybe shrunk or grown.
				prev := len(blocks)
				n := prev
				switch rng.IntN(4) {
				case 0:
					n = prev + 1 + rng.IntN(4)
				case 1:
					n = rng.IntN(prev + 1)
				}
				if role == "truncated" && last {
					n = max(prev-3, 1)
				}
				if role != "big" {
					n = min(n, maxBlocks+8)
				}
				low := min(prev, n) // the smallest the file was
				if low > 0 && rng.IntN(4) == 0 {
					low = rng.IntN(low) // truncated and extended again
				}
				nbl := make([][]byte, n)
				copy(nbl, blocks)
				changed := map[uint32]bool{}
				if role == "every" || role == "big" {
					// Incremental b alone supplies block b-1, and block nb
					// still comes from the full backup: three sources or more.
					n = max(n, prev)
					low = prev
					nbl = append(nbl, make([][]byte, n-len(nbl))...)
					changed[uint32(b-1)] = true
					for range rng.IntN(3) {
						if low > nb+1 {
							changed[uint32(nb+1+rng.IntN(low-nb-1))] = true
						}
					}
				} else {
					for range rng.IntN(4) {
						if low > 0 {
							changed[uint32(rng.IntN(low))] = true
						}
					}
				}
				for i := low; i < n; i++ {
					changed[uint32(i)] = true
				}
				r := rep{kind: repInc, tbl: uint32(low)}
				for blk := range changed {
					r.blocks = append(r.blocks, blk)
				}
				slices.Sort(r.blocks)
				if rng.IntN(2) == 0 {
					rng.Shuffle(len(r.blocks), func(i, j int) { r.blocks[i], r.blocks[j] = r.blocks[j], r.blocks[i] })
				}
				for _, blk := range r.blocks {
					img := randBlock(tag+":"+name, blk)
					nbl[blk] = img
					r.imgs = append(r.imgs, img)
				}
				live[name] = nbl
				bk.Incremental(name, r.tbl, s.toBlocks(r)...)
				s.addRep(name, b, r)
			}
		}
	}
	s.dirs = c.Dirs()
	final := c.Backups[nb-1]
	if seed%2 == 1 {
		// Group access: the point must show 0750 directories, 0640 files.
		if err := os.Chmod(final.Dir, 0o750); err != nil {
			tb.Fatal(err)
		}
		s.group = true
	}
	s.want = map[string][]byte{}
	for name, reps := range s.reps {
		if reps[len(reps)-1].kind != repAbsent {
			s.want[name] = reconstruct(reps)
		}
	}
	for _, name := range []string{"PG_VERSION", "global/pg_control"} {
		data, err := os.ReadFile(filepath.Join(final.Dir, name))
		if err != nil {
			tb.Fatal(err)
		}
		s.want[name] = data
	}
	l := final.Label
	l.Incremental, l.PrevLSN, l.PrevTLI = false, 0, 0
	s.label = resolvertest.LabelText(l)
	return s
}

func (s *synth) addRep(name string, b int, r rep) {
	reps := s.reps[name]
	for len(reps) < b {
		reps = append(reps, rep{kind: repAbsent})
	}
	s.reps[name] = append(reps, r)
}

func (s *synth) toBlocks(r rep) []resolvertest.Block {
	var out []resolvertest.Block
	for i, b := range r.blocks {
		out = append(out, resolvertest.Block{Num: b, Data: r.imgs[i]})
	}
	return out
}

// ---------------------------------------------------------------------------
// Views of a directory tree.

// node is what a test sees of one entry of a tree.
type node struct {
	mode   fs.FileMode
	size   int64
	uid    uint32
	gid    uint32
	target string   // symlink
	sum    [32]byte // regular file contents
}

func (n node) String() string {
	return fmt.Sprintf("{%v size %d uid %d gid %d target %q sum %x}", n.mode, n.size, n.uid, n.gid, n.target, n.sum[:6])
}

// snapshot walks root (not following symlinks) and records every entry,
// with the contents of regular files when withData is set.
func snapshot(tb testing.TB, root string, withData bool) map[string]node {
	tb.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			rel = ""
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		n := node{mode: fi.Mode(), size: st.Size, uid: st.Uid, gid: st.Gid}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			n.target, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case fi.Mode().IsRegular() && withData:
			data, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read %s: %w", rel, err)
			}
			if int64(len(data)) != st.Size {
				return fmt.Errorf("%s: stat size %d, read %d bytes", rel, st.Size, len(data))
			}
			n.sum = sha256.Sum256(data)
		}
		if fi.IsDir() {
			n.size = 0
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		tb.Fatalf("walk %s: %v", root, err)
	}
	return out
}

// diffSnapshots reports the differences between two snapshots.
func diffSnapshots(a, b map[string]node) []string {
	var diffs []string
	for k, va := range a {
		vb, ok := b[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%q only in the first: %v", k, va))
		case va != vb:
			diffs = append(diffs, fmt.Sprintf("%q: %v vs %v", k, va, vb))
		}
	}
	for k, vb := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%q only in the second: %v", k, vb))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// hashTree hashes every regular file and symlink below root (following no
// links), with its mode and modification time.
func hashTree(tb testing.TB, root string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v %s", fi.Mode(), fi.ModTime().Format(time.RFC3339Nano))
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t, _ := os.Readlink(p)
			desc += " -> " + t
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d %x", len(data), sha256.Sum256(data))
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		tb.Fatalf("hash %s: %v", root, err)
	}
	return out
}

func checkUnchanged(tb testing.TB, before, after map[string]string) {
	tb.Helper()
	for k, v := range before {
		if after[k] != v {
			tb.Errorf("backup file %s changed: %q -> %q", k, v, after[k])
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			tb.Errorf("backup file %s appeared", k)
		}
	}
}

// pread reads exactly one pread(2) at off (no retry), for tests of how the
// mount answers one request.
func pread(f *os.File, n int, off int64) ([]byte, error) {
	buf := make([]byte, n)
	m, err := unix.Pread(int(f.Fd()), buf, off)
	if m < 0 {
		m = 0
	}
	return buf[:m], err
}

// readFull reads [off, off+n) with as many preads as needed until EOF.
func readFull(f *os.File, n int, off int64) ([]byte, error) {
	buf := make([]byte, n)
	m, err := f.ReadAt(buf, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return buf[:m], err
}

// slice returns data[off:off+n] clipped to data.
func slice(data []byte, off int64, n int) []byte {
	if off >= int64(len(data)) {
		return nil
	}
	return data[off:min(int64(len(data)), off+int64(n))]
}

func isErrno(err error, want syscall.Errno) bool {
	return errors.Is(err, want)
}

// firstDiff describes where a and b first differ.
func firstDiff(a, b []byte) string {
	if len(a) != len(b) {
		n := min(len(a), len(b))
		if i := firstDiffIndex(a[:n], b[:n]); i >= 0 {
			return fmt.Sprintf("lengths %d vs %d, first difference at %d (block %d)", len(a), len(b), i, i/bs)
		}
		return fmt.Sprintf("lengths %d vs %d, equal up to the shorter", len(a), len(b))
	}
	if i := firstDiffIndex(a, b); i >= 0 {
		return fmt.Sprintf("first difference at byte %d (block %d): %q vs %q", i, i/bs, clip(a[i:], 24), clip(b[i:], 24))
	}
	return "equal"
}

func firstDiffIndex(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func clip(b []byte, n int) []byte { return b[:min(len(b), n)] }
