package format_test

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/combinefs/combinefs/format"
)

// TestWALRecordEvent reads commits, aborts and restore points, each laid
// out across a page boundary too, through the reader with KeepData.
func TestWALRecordEvent(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 21, 0, 0, 123456000, time.UTC)
	b := newWALBuilder(17, 0x1000000)
	b.Add(2, 0, 8000, nil) // fills most of the first page: the next record crosses it
	commit := b.Commit(4711, t0)
	abort := b.Abort(4712, t0.Add(time.Second))
	rp := b.RestorePoint("before the migration", t0.Add(2*time.Second))
	for b.Pos%blk < blk-20 { // end a page with a record header cut in two
		b.Add(2, 0, 16, nil)
	}
	commit2 := b.Commit(4713, t0.Add(3*time.Second))
	b.Add(2, 0, 100, nil)

	want := map[format.LSN]format.WALEvent{
		commit:  {Kind: format.WALCommit, XID: 4711, Time: t0},
		abort:   {Kind: format.WALAbort, XID: 4712, Time: t0.Add(time.Second)},
		rp:      {Kind: format.WALRestorePoint, Time: t0.Add(2 * time.Second), Name: "before the migration"},
		commit2: {Kind: format.WALCommit, XID: 4713, Time: t0.Add(3 * time.Second)},
	}
	r, err := format.NewWALReader(format.WALReaderOptions{Major: 17, TLI: 1, SegmentSize: testSegSize, SystemIdentifier: testSysID, Open: b.open, KeepData: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[format.LSN]format.WALEvent{}
	n := 0
	rec, err := r.Start(0x1000000, 0)
	for ; err == nil; rec, err = r.Next() {
		n++
		if len(rec.Data) != int(rec.TotLen) {
			t.Fatalf("record at %s: %d bytes of data, xl_tot_len %d", rec.LSN, len(rec.Data), rec.TotLen)
		}
		ev, err := format.WALRecordEvent(rec.Data, 17)
		if err != nil {
			t.Fatalf("record at %s: %v", rec.LSN, err)
		}
		if ev.Kind != format.WALNone {
			got[rec.LSN] = ev
		}
	}
	if err != io.EOF && n < len(b.Recs) {
		t.Fatalf("read %d of %d records: %v", n, len(b.Recs), err)
	}
	for lsn, w := range want {
		g := got[lsn]
		if g.Kind != w.Kind || g.XID != w.XID || !g.Time.Equal(w.Time) || g.Name != w.Name {
			t.Errorf("record at %s: %+v, want %+v", lsn, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d events, want %d: %+v", len(got), len(want), got)
	}
}

// TestWALRecordEventBlocks finds the main data behind block references
// (with and without an image, a repeated relation) as DecodeXLogRecord
// lays them out, and refuses headers that do not add up.
func TestWALRecordEventBlocks(t *testing.T) {
	tm := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	main := binary.NativeEndian.AppendUint64(nil, uint64(tm.Sub(format.PGEpoch).Microseconds()))
	hdr := []byte{
		0, 0x20 | 0x10, 10, 0, // block 0: has data (10) and an image
		50, 0, 0, 0, 0x01 | 0x04, 3, 0, // image of 50 bytes, hole offset, compressed with a hole: hole length
	}
	hdr = append(hdr, make([]byte, 12+4)...)      // RelFileLocator, block number
	hdr = append(hdr, 1, 0x20|0x80, 5, 0)         // block 1: same relation, 5 bytes
	hdr = append(hdr, 0, 0, 0, 0)                 // block number
	hdr = append(hdr, 253, 1, 0)                  // origin
	hdr = append(hdr, 255, byte(len(main)))       // main data
	body := append(hdr, make([]byte, 10+50+5)...) // block data
	body = append(body, main...)
	rec := make([]byte, format.WALRecordHeaderSize, format.WALRecordHeaderSize+len(body))
	rec = append(rec, body...)
	binary.NativeEndian.PutUint32(rec[0:], uint32(len(rec)))
	binary.NativeEndian.PutUint32(rec[4:], 99)
	rec[17] = 1 // RM_XACT_ID, XLOG_XACT_COMMIT
	ev, err := format.WALRecordEvent(rec, 17)
	if err != nil || ev.Kind != format.WALCommit || ev.XID != 99 || !ev.Time.Equal(tm) {
		t.Fatalf("got %+v, %v; want a commit of 99 at %s", ev, err, tm)
	}
	short := append([]byte(nil), rec[:len(rec)-1]...)
	binary.NativeEndian.PutUint32(short[0:], uint32(len(short)))
	if _, err := format.WALRecordEvent(short, 17); err == nil {
		t.Error("a record a byte short of its headers' lengths was read")
	}
	bad := append([]byte(nil), rec...)
	bad[format.WALRecordHeaderSize] = 40 // no such block id
	if _, err := format.WALRecordEvent(bad, 17); err == nil {
		t.Error("block id 40 was accepted")
	}
}

// preparedRecords are the data of a COMMIT PREPARED and an ABORT PREPARED
// of transaction 900 run by a session with xid 777, in WAL of major with
// dropped statistics entries of statsSize bytes, read back through the
// reader.
func preparedRecords(t testing.TB, major, statsSize int) [][]byte {
	t0 := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	b := newWALBuilder(major, 0x1000000)
	b.XactPrepared(true, 900, 777, t0, statsSize, 2)
	b.XactPrepared(false, 900, 777, t0, statsSize, 3)
	r, err := format.NewWALReader(format.WALReaderOptions{Major: major, TLI: 1, SegmentSize: testSegSize, SystemIdentifier: testSysID, Open: b.open, KeepData: true})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	rec, err := r.Start(0x1000000, 0)
	for ; err == nil; rec, err = r.Next() {
		out = append(out, append([]byte(nil), rec.Data...)) // Data is reused by Next
	}
	if len(out) != 2 {
		t.Fatalf("read %d records, want 2: %v", len(out), err)
	}
	return out
}

// TestWALRecordEventPrepared finds the prepared transaction's xid in COMMIT
// PREPARED and ABORT PREPARED records, past every optional part before it
// (whose dropped statistics entries differ in size between 17 and 18), not
// the xid of the session that ran the command: recovery_target_xid names
// the former.
func TestWALRecordEventPrepared(t *testing.T) {
	for _, c := range []struct{ major, statsSize int }{{17, 12}, {18, 16}} {
		for i, data := range preparedRecords(t, c.major, c.statsSize) {
			ev, err := format.WALRecordEvent(data, c.major)
			want := []format.WALEventKind{format.WALCommit, format.WALAbort}[i]
			if err != nil || ev.Kind != want || ev.XID != 900 {
				t.Errorf("PG%d record %d: %+v, %v; want kind %d, xid 900", c.major, i, ev, err, want)
			}
			// Read as the other major, the dropped statistics entries are
			// skipped by the wrong size: the xid found is not 900.
			other := 35 - c.major
			if ev, err := format.WALRecordEvent(data, other); err == nil && ev.XID == 900 {
				t.Errorf("PG%d record %d read as PG%d still gave xid 900: the statistics entry size is not used", c.major, i, other)
			}
			if _, err := format.WALRecordEvent(data[:len(data)-12], c.major); err == nil {
				t.Errorf("PG%d record %d cut short was accepted", c.major, i)
			}
		}
	}
	if _, err := format.WALRecordEvent(preparedRecords(t, 17, 12)[0], 16); err == nil {
		t.Error("a major without a WAL layout was accepted")
	}
}

func FuzzWALRecordEvent(f *testing.F) {
	f.Add([]byte{})
	rec := make([]byte, format.WALRecordHeaderSize+2+12)
	binary.NativeEndian.PutUint32(rec, uint32(len(rec)))
	rec[17] = 1
	rec[24], rec[25] = 255, 12
	f.Add(rec)
	rp := make([]byte, format.WALRecordHeaderSize+2+72)
	binary.NativeEndian.PutUint32(rp, uint32(len(rp)))
	rp[16] = 0x70
	rp[24], rp[25] = 255, 72
	f.Add(rp)
	for _, rec := range preparedRecords(f, 18, 16) {
		f.Add(rec)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		allocBound(t, len(data), func() {
			major := 17 + len(data)%2
			ev, err := format.WALRecordEvent(data, major)
			if err == nil && ev.Kind == format.WALRestorePoint && len(ev.Name) >= 64 {
				t.Fatalf("restore point name of %d bytes", len(ev.Name))
			}
		})
	})
}

// TestWALReaderBkpRemovable reads WAL whose pages carry XLP_BKP_REMOVABLE
// (0x0004), which the server sets on every page written while no backup
// runs: the WAL a continuous archive holds. It once was taken for
// XLP_FIRST_IS_OVERWRITE_CONTRECORD (0x0008).
func TestWALReaderBkpRemovable(t *testing.T) {
	b := newWALBuilder(18, 0x2000000)
	for i := 0; i < 40; i++ {
		b.Add(10, 0, 300+i*97, nil) // records across pages
	}
	for _, p := range b.Pages {
		p[2] |= 0x04
	}
	n, err := b.reader(t).Scan(0x2000000, b.Pos)
	if err != nil || n != len(b.Recs) {
		t.Fatalf("read %d of %d records: %v", n, len(b.Recs), err)
	}
}
