package integration

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHarnessChain checks the harness against PostgreSQL itself: a rich
// chain built with the real pg_basebackup must verify, and the real
// pg_combinebackup of it must start and hold what the live server held at
// each backup.
func TestHarnessChain(t *testing.T) {
	e := Provision(t)
	t.Logf("PostgreSQL %d in %s (%s), server user %d:%d", e.Major, e.Root, e.BinDir, e.UID, e.GID)
	ch := BuildChain(t, e, ChainSpec{Rich: true, BigRelation: true})

	for i := 1; i < len(ch.Snapshots); i++ {
		if ch.Snapshots[i].Diff(ch.Snapshots[i-1]) == "" {
			t.Fatalf("snapshots before backups %d and %d are equal: the workload or Snapshot is broken", i-1, i)
		}
	}
	timed(t, "pg_verifybackup of every input", func() {
		for _, b := range ch.Backups {
			e.VerifyBackup(t, b)
		}
	})
	checkIncrementals(t, ch)

	for _, k := range []int{len(ch.Backups) - 1, 1} {
		t.Run(fmt.Sprintf("combine-upto-%d", k), func(t *testing.T) {
			out := path.Join(ch.Dir, fmt.Sprintf("combined-%d", k))
			timed(t, "pg_combinebackup", func() { ch.Combine(t, k, out) })
			timed(t, "pg_verifybackup", func() { e.VerifyBackup(t, out) })
			checkBigSegment(t, ch, k, out)
			var srv *Cluster
			timed(t, "start on the output", func() { srv = e.StartServer(t, out, ServerOptions{}) })
			var got Snapshot
			timed(t, "snapshot", func() { got = srv.Snapshot(t) })
			if d := ch.Snapshots[k].Diff(got); d != "" {
				t.Fatalf("server on the combined backup %d differs from the live server at that backup:\n%s", k, d)
			}
			if s, _ := got.Table("postgres", "public.sample_table"); s.Rows != int64(k+1) {
				t.Fatalf("sample_table has %d rows at point %d, want %d", s.Rows, k, k+1)
			}
			srv.Stop(t, "fast")
		})
	}
}

// TestHarnessCluster checks the server life cycle helpers: errors, crash
// recovery after Kill9, restart, and that a committed row survives both.
func TestHarnessCluster(t *testing.T) {
	e := Provision(t)
	c := e.InitCluster(t, ClusterOptions{})
	if got := c.Psql(t, "postgres", "SHOW data_checksums"); got != "on" {
		t.Errorf("data_checksums = %q, want on", got)
	}
	if want := "user=" + e.User + " "; !strings.Contains(c.ConnString("postgres"), want) {
		t.Errorf("ConnString %q lacks %q", c.ConnString("postgres"), want)
	}
	if got := c.Psql(t, "postgres", "SELECT current_user"); got != e.User {
		t.Errorf("connected as %q, want the server user %q", got, e.User)
	}
	if _, err := c.Exec("postgres", "SELECT * FROM no_such_table"); err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Errorf("Exec of a bad query: err = %v, want one naming the table", err)
	}
	// synchronous_commit is off cluster-wide; this commit must be durable.
	c.Psql(t, "postgres", "CREATE TABLE t (id int); SET synchronous_commit = on; INSERT INTO t VALUES (1), (2);")
	want := c.Snapshot(t)
	pid := c.PID()
	shmid := c.shmID()
	if shmid < 0 || !shmAttached(shmid) {
		t.Fatalf("running server: shared memory id %d from postmaster.pid is not attached", shmid)
	}
	c.Kill9(t)
	if c.Running() || GroupAlive(pid) || shmAttached(shmid) {
		t.Fatal("server or backends still alive after Kill9")
	}
	c.Start(t)
	if d := want.Diff(c.Snapshot(t)); d != "" {
		t.Fatalf("after kill -9 and crash recovery:\n%s", d)
	}
	c.Restart(t)
	if d := want.Diff(c.Snapshot(t)); d != "" {
		t.Fatalf("after restart:\n%s", d)
	}
	c.Stop(t, "fast")
	if c.Running() {
		t.Fatal("still running after Stop")
	}
}

// TestHarnessCombinefs checks that the combinefs binary is built, runs inside
// the root, and is reachable under the name pg_combinebackup.
func TestHarnessCombinefs(t *testing.T) {
	e := Provision(t)
	bin := e.CombinefsPath(t)
	if out, err := e.Combinefs(t.Context(), "--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "combinefs ") {
		t.Fatalf("combinefs --version inside the root: %v\n%s", err, out)
	}
	link := e.CombinefsAsPgCombinebackup()
	if path.Base(link) != "pg_combinebackup" {
		t.Fatalf("link %s is not named pg_combinebackup", link)
	}
	if target, err := os.Readlink(e.Host(link)); err != nil || target != bin {
		t.Fatalf("%s -> %q (%v), want -> %s", link, target, err, bin)
	}
}

// timed runs fn and logs its duration.
func timed(t *testing.T, what string, fn func()) {
	t.Helper()
	t0 := time.Now()
	fn()
	t.Logf("%s: %v", what, time.Since(t0).Round(time.Millisecond))
}

// incrementalHeader is the start of an INCREMENTAL.* file.
type incrementalHeader struct {
	Blocks     []uint32
	Truncation uint32 // truncation_block_length
	Size       int64
}

const incrementalMagic = 0xd3ae1f0d

func readIncremental(t *testing.T, name string) incrementalHeader {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 12 || binary.NativeEndian.Uint32(b) != incrementalMagic {
		t.Fatalf("%s: not an incremental file", name)
	}
	n := binary.NativeEndian.Uint32(b[4:])
	h := incrementalHeader{Truncation: binary.NativeEndian.Uint32(b[8:]), Size: int64(len(b))}
	if int64(len(b)) < 12+4*int64(n) {
		t.Fatalf("%s: %d blocks but only %d bytes", name, n, len(b))
	}
	for i := range n {
		h.Blocks = append(h.Blocks, binary.NativeEndian.Uint32(b[12+4*i:]))
	}
	return h
}

// wantIncrementalSize is the size PostgreSQL writes: the header, padded to a
// block when blocks follow, then the blocks.
func wantIncrementalSize(n int) int64 {
	hdr := int64(12 + 4*n)
	if n == 0 {
		return hdr
	}
	return (hdr+8191)/8192*8192 + int64(n)*8192
}

// checkIncrementals asserts that every incremental holds INCREMENTAL files
// with real blocks, laid out as PostgreSQL documents, and that the big
// table's second segment shows up as changed.
func checkIncrementals(t *testing.T, ch *Chain) {
	t.Helper()
	bigBase := path.Base(ch.BigRelationPath)
	bigSeg1Seen := false
	for i := 1; i < len(ch.Backups); i++ {
		dirs := []string{ch.Backups[i]}
		for _, m := range ch.Mappings[i] {
			dirs = append(dirs, m.New)
		}
		files, withBlocks := 0, 0
		for _, dir := range dirs {
			err := filepath.WalkDir(ch.Env.Host(dir), func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				name := d.Name()
				if ch.BigRelationPath != "" && (name == "INCREMENTAL."+bigBase+".1" || name == bigBase+".1") &&
					strings.HasSuffix(filepath.Dir(p), path.Dir(ch.BigRelationPath)) {
					bigSeg1Seen = true
					if strings.HasPrefix(name, "INCREMENTAL.") {
						h := readIncremental(t, p)
						t.Logf("%s: %s: blocks %v, truncation_block_length %d", backupName(i), name, h.Blocks, h.Truncation)
						if i == 1 {
							for _, id := range []uint32{140000, 150000, 159999} {
								if !slices.Contains(h.Blocks, id-1-segmentBlocks) {
									t.Errorf("%s: %s lacks block %d (row %d was updated)", backupName(i), name, id-1-segmentBlocks, id)
								}
							}
						}
					}
				}
				if !strings.HasPrefix(name, "INCREMENTAL.") {
					return nil
				}
				files++
				h := readIncremental(t, p)
				if want := wantIncrementalSize(len(h.Blocks)); h.Size != want {
					t.Errorf("%s: %d blocks, size %d, want %d", p, len(h.Blocks), h.Size, want)
				}
				if len(h.Blocks) > 0 {
					withBlocks++
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%s: %d INCREMENTAL files, %d with blocks", backupName(i), files, withBlocks)
		if withBlocks == 0 {
			t.Errorf("%s: no INCREMENTAL file holds a block", backupName(i))
		}
	}
	if ch.BigRelationPath != "" && !bigSeg1Seen {
		t.Errorf("no incremental holds the big table's second segment (%s.1)", ch.BigRelationPath)
	}
}

// checkBigSegment asserts the combined output has the big table's second
// segment at the size the live table had at that backup.
func checkBigSegment(t *testing.T, ch *Chain, k int, out string) {
	t.Helper()
	if ch.BigRelationPath == "" {
		return
	}
	seg := ch.Env.Host(path.Join(out, ch.BigRelationPath+".1"))
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatalf("combined output lacks the big table's second segment: %v", err)
	}
	if want := (ch.BigRelationBlocks[k] - segmentBlocks) * 8192; fi.Size() != want {
		t.Errorf("%s is %d bytes, want %d", seg, fi.Size(), want)
	}
}
