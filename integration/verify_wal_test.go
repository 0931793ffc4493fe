package integration

import (
	"context"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/combinefs/combinefs/format"
)

// TestVerifyWAL checks that combinefs verify reads the WAL of a backup as
// pg_verifybackup does (through pg_waldump): real backups pass both, a
// flipped byte inside a record of the backup's WAL range or in a page
// header's xlp_pageaddr fails both, and a flipped byte past End-LSN fails
// neither.
func TestVerifyWAL(t *testing.T) {
	e := Provision(t)
	ch := BuildChain(t, e, ChainSpec{Incrementals: 1, PgbenchScale: 1, PgbenchSeconds: 1})

	// A backup taken while the server writes WAL, so that its WAL range
	// spans many pages (the chain's are a few records long).
	busy := path.Join(ch.Dir, "busy")
	timed(t, "backup under load", func() { backupUnderLoad(t, ch.Cluster, busy) })
	for _, dir := range append(ch.Backups, busy) {
		timed(t, "pg_verifybackup "+path.Base(dir), func() { e.VerifyBackup(t, dir) })
		timed(t, "combinefs verify "+path.Base(dir), func() { mustCombinefs(t, e, "verify", dir) })
	}

	// The corruptions go into a copy of that backup.
	dir := path.Join(ch.Dir, "corrupt")
	e.Run(t, true, "cp", "-a", busy, dir)
	mpath := e.Host(path.Join(dir, "backup_manifest"))
	data, err := os.ReadFile(mpath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := format.ParseManifest(data, mpath)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.WALRanges) != 1 {
		t.Fatalf("manifest has %d WAL ranges, want 1", len(m.WALRanges))
	}
	r := m.WALRanges[0]
	if r.End-r.Start < 4*format.WALBlockSize {
		t.Fatalf("WAL range %s-%s of the backup under load is under 4 pages", r.Start, r.End)
	}
	walDir := path.Join(dir, "pg_wal")
	segSize := walSegmentSize(t, e.Host(walDir))
	segFile := func(lsn format.LSN) (string, string, int64) {
		name := format.WALSegmentName(r.TLI, uint64(lsn)/uint64(segSize), segSize)
		return name, e.Host(path.Join(walDir, name)), int64(uint64(lsn) % uint64(segSize))
	}

	// The records of the range, as pg_waldump lists them; the one in the
	// middle that does not cross a page boundary is the victim.
	dump := e.Run(t, false, e.Tool("pg_waldump"), "--path="+walDir, fmt.Sprintf("--timeline=%d", r.TLI),
		"--start="+r.Start.String(), "--end="+r.End.String())
	recs := waldumpRecords(t, dump)
	var victim waldumpRecord
	for i := len(recs) / 2; i < len(recs); i++ {
		if int(recs[i].lsn%format.WALBlockSize)+recs[i].totLen <= format.WALBlockSize {
			victim = recs[i]
			break
		}
	}
	if victim.totLen == 0 {
		t.Fatalf("no record within one page in the second half of the range:\n%s", dump)
	}
	t.Logf("WAL range %s-%s on timeline %d, %d records, segment size %d; victim record at %s (%d bytes)",
		r.Start, r.End, r.TLI, len(recs), segSize, victim.lsn, victim.totLen)

	bothFail := func(t *testing.T, seg, want string) {
		t.Helper()
		out, err := e.Command(context.Background(), false, e.Tool("pg_verifybackup"), dir).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "WAL parsing failed") {
			t.Fatalf("pg_verifybackup: %v, want a WAL parsing failure:\n%s", err, out)
		}
		cout, code := runCombinefs(t, e, "verify", dir)
		if code == 0 || !strings.Contains(cout, "WAL segment "+seg) || !strings.Contains(cout, want) {
			t.Fatalf("combinefs verify: exit %d, want a failure naming segment %s and saying %q:\n%s", code, seg, want, cout)
		}
		t.Logf("pg_verifybackup: %s", strings.TrimSpace(string(out)))
		t.Logf("combinefs verify: %s", strings.TrimSpace(cout))
	}
	bothPass := func(t *testing.T) {
		t.Helper()
		e.VerifyBackup(t, dir)
		mustCombinefs(t, e, "verify", dir)
	}

	t.Run("record", func(t *testing.T) {
		// The record's last byte: its data (or, for a bare header, its CRC).
		name, host, off := segFile(victim.lsn + format.LSN(victim.totLen) - 1)
		defer flipByte(t, host, off)()
		bothFail(t, name, "incorrect resource manager data checksum in record at "+victim.lsn.String())
	})
	t.Run("pageaddr", func(t *testing.T) {
		page := victim.lsn &^ (format.WALBlockSize - 1)
		name, host, off := segFile(page + 8) // xlp_pageaddr's low byte
		defer flipByte(t, host, off)()
		bothFail(t, name, "unexpected pageaddr")
	})
	t.Run("past-end", func(t *testing.T) {
		if uint64(r.End)%uint64(segSize) == 0 {
			t.Fatalf("End-LSN %s is at a segment boundary: no byte after it in its segment", r.End)
		}
		_, host, off := segFile(r.End + 4)
		defer flipByte(t, host, off)()
		defer flipByte(t, host, segSize-1)()
		bothPass(t)
	})
	bothPass(t) // every byte restored
}

// backupUnderLoad takes a full backup into dest while another session
// inserts rows without pause, from before the backup starts to after it
// ends.
func backupUnderLoad(t *testing.T, c *Cluster, dest string) {
	t.Helper()
	c.Psql(t, "postgres", "CREATE TABLE IF NOT EXISTS wal_filler (id int, v text)")
	stop, done, first := make(chan struct{}), make(chan error, 1), make(chan struct{})
	go func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := c.Exec("postgres", "INSERT INTO wal_filler SELECT g, md5(g::text) FROM generate_series(1, 2000) g"); err != nil {
				done <- err
				return
			}
			if n == 0 {
				close(first)
			}
		}
	}()
	var stopOnce sync.Once
	finish := func() error {
		var err error
		stopOnce.Do(func() { close(stop); err = <-done })
		return err
	}
	defer finish() // also when BaseBackup fails the test
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("load: %v", err)
	}
	c.BaseBackup(t, dest, "")
	if err := finish(); err != nil {
		t.Fatalf("load: %v", err)
	}
}

// walSegmentSize reads xlp_seg_size from the long header of the first
// segment file in walDir.
func walSegmentSize(t *testing.T, walDir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(walDir)
	if err != nil {
		t.Fatal(err)
	}
	file := ""
	for _, de := range ents {
		if len(de.Name()) == 24 && strings.Trim(de.Name(), "0123456789ABCDEF") == "" {
			file = path.Join(walDir, de.Name())
			break
		}
	}
	if file == "" {
		t.Fatalf("no WAL segment in %s", walDir)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, format.WALLongPageHeaderSize)
	if _, err := f.ReadAt(page, 0); err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseWALPageHeader(page, file, 0)
	if err != nil || !h.Long() || !format.ValidWALSegmentSize(int64(h.SegmentSize)) {
		t.Fatalf("%s: no long page header with a segment size (%+v, %v)", file, h, err)
	}
	return int64(h.SegmentSize)
}

// flipByte inverts the byte at off in file and returns what puts it back.
func flipByte(t *testing.T, file string, off int64) func() {
	t.Helper()
	flip := func() {
		f, err := os.OpenFile(file, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	flip()
	return flip
}

type waldumpRecord struct {
	lsn    format.LSN
	totLen int
}

var waldumpLine = regexp.MustCompile(`len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-F]+/[0-9A-F]+),`)

// waldumpRecords parses pg_waldump's record lines.
func waldumpRecords(t *testing.T, out string) []waldumpRecord {
	t.Helper()
	var recs []waldumpRecord
	for _, m := range waldumpLine.FindAllStringSubmatch(out, -1) {
		n, err := strconv.Atoi(m[1])
		lsn, ok := format.ParseLSN(m[2])
		if err != nil || !ok {
			t.Fatalf("pg_waldump line %q", m[0])
		}
		recs = append(recs, waldumpRecord{lsn, n})
	}
	if len(recs) == 0 {
		t.Fatalf("no records in pg_waldump's output:\n%s", out)
	}
	return recs
}
