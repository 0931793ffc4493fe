package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// walWriter lays records out in segment files the way the server does:
// page headers (long on each segment's first page), MAXALIGNed records,
// records going on over pages and segments with XLP_FIRST_IS_CONTRECORD.
type walWriter struct {
	magic   uint16
	sysid   uint64
	tli     uint32
	segSize int64
	segs    map[uint64][]byte
	pos     format.LSN
	prev    format.LSN
	recs    []format.LSN
}

func newWALWriter(major int, sysid uint64, segSize int64, at format.LSN) *walWriter {
	magic, _ := format.WALPageMagic(major)
	return &walWriter{magic: magic, sysid: sysid, tli: 1, segSize: segSize, segs: map[uint64][]byte{}, pos: at, prev: at - 0x30}
}

func (w *walWriter) bytes(lsn format.LSN) []byte {
	seg := uint64(lsn) / uint64(w.segSize)
	if w.segs[seg] == nil {
		w.segs[seg] = make([]byte, w.segSize)
	}
	return w.segs[seg][int64(lsn)%w.segSize:]
}

func (w *walWriter) initPage(addr format.LSN, rem uint32) format.LSN {
	p := w.bytes(addr)
	info, hsz := uint16(0), format.LSN(format.WALShortPageHeaderSize)
	if int64(addr)%w.segSize == 0 {
		info, hsz = 2, format.WALLongPageHeaderSize
		binary.NativeEndian.PutUint64(p[24:], w.sysid)
		binary.NativeEndian.PutUint32(p[32:], uint32(w.segSize))
		binary.NativeEndian.PutUint32(p[36:], format.WALBlockSize)
	}
	if rem > 0 {
		info |= 1
	}
	binary.NativeEndian.PutUint16(p[0:], w.magic)
	binary.NativeEndian.PutUint16(p[2:], info)
	binary.NativeEndian.PutUint32(p[4:], w.tli)
	binary.NativeEndian.PutUint64(p[8:], uint64(addr))
	binary.NativeEndian.PutUint32(p[16:], rem)
	return hsz
}

func (w *walWriter) add(dataLen int) format.LSN {
	rec := make([]byte, format.WALRecordHeaderSize+dataLen)
	for i := format.WALRecordHeaderSize; i < len(rec); i++ {
		rec[i] = byte(i * 7)
	}
	binary.NativeEndian.PutUint32(rec[0:], uint32(len(rec)))
	binary.NativeEndian.PutUint64(rec[8:], uint64(w.prev))
	rec[17] = 10 // Heap
	binary.NativeEndian.PutUint32(rec[20:], format.WALRecordCRC(rec))
	if w.pos%format.WALBlockSize == 0 {
		w.pos += w.initPage(w.pos, 0)
	}
	start := w.pos
	for rest := rec; len(rest) > 0; {
		if w.pos%format.WALBlockSize == 0 {
			w.pos += w.initPage(w.pos, uint32(len(rest)))
		}
		page := w.bytes(w.pos)[:format.WALBlockSize-int(w.pos%format.WALBlockSize)]
		n := copy(page, rest)
		rest = rest[n:]
		w.pos += format.LSN(n)
	}
	w.pos = (w.pos + 7) &^ 7
	w.prev = start
	w.recs = append(w.recs, start)
	return start
}

// write puts the segment files into dir/pg_wal.
func (w *walWriter) write(t *testing.T, dir string) {
	t.Helper()
	for seg, data := range w.segs {
		name := format.WALSegmentName(w.tli, seg, w.segSize)
		if err := os.WriteFile(filepath.Join(dir, "pg_wal", name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// setWALRanges replaces a manifest's WAL-Ranges and recomputes its
// Manifest-Checksum.
func setWALRanges(m []byte, ranges ...format.WALRange) []byte {
	i := bytes.Index(m, []byte("\"WAL-Ranges\": [\n"))
	out := append([]byte(nil), m[:i]...)
	out = append(out, "\"WAL-Ranges\": [\n"...)
	for k, r := range ranges {
		if k > 0 {
			out = append(out, ",\n"...)
		}
		out = fmt.Appendf(out, `{ "Timeline": %d, "Start-LSN": "%s", "End-LSN": "%s" }`, r.TLI, r.Start, r.End)
	}
	out = append(out, "\n],\n"...)
	return fmt.Appendf(out, "\"Manifest-Checksum\": \"%x\"}\n", sha256.Sum256(out))
}

// walBackup is a synthetic backup whose pg_wal holds w and whose manifest
// has one WAL range from the first record to the end of the last one.
type walBackup struct {
	dir        string
	w          *walWriter
	start, end format.LSN
}

func newWALBackup(t *testing.T, major int, segSize int64, recordSizes ...int) *walBackup {
	t.Helper()
	c := resolvertest.NewChain(t)
	c.Major = major
	b := c.Full()
	// The first record goes right after the long header of a segment.
	at := format.LSN(2 * segSize)
	w := newWALWriter(major, c.SystemIdentifier, segSize, at)
	for _, n := range recordSizes {
		w.add(n)
	}
	wb := &walBackup{dir: b.Dir, w: w, start: w.recs[0], end: w.pos}
	b.EditManifest = func(m []byte) []byte {
		return setWALRanges(m, format.WALRange{TLI: 1, Start: wb.start, End: wb.end})
	}
	b.Finish()
	return wb
}

func (wb *walBackup) verify(t *testing.T, opts Options) []string {
	t.Helper()
	wb.w.write(t, wb.dir)
	res, err := Backup(context.Background(), wb.dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res.Problems
}

var walSizes = []int{26, 100, 3000, 9000, 20000, 50, 120}

func TestVerifyWALGood(t *testing.T) {
	for _, major := range []int{17, 18} {
		wb := newWALBackup(t, major, 16<<20, walSizes...)
		if p := wb.verify(t, Options{}); len(p) > 0 {
			t.Fatalf("PG%d: problems with good WAL: %q", major, p)
		}
	}
}

func TestVerifyWALAcrossSegments(t *testing.T) {
	// 1 MiB segments (initdb --wal-segsize=1), records over three segments.
	sizes := []int{40}
	for range 70 {
		sizes = append(sizes, 30000, 4000)
	}
	wb := newWALBackup(t, 17, 1<<20, sizes...)
	if n := len(wb.w.segs); n < 3 {
		t.Fatalf("the WAL spans %d segments, want 3 or more", n)
	}
	if p := wb.verify(t, Options{}); len(p) > 0 {
		t.Fatalf("problems with good WAL: %q", p)
	}
	// A flipped byte in the middle segment is found and named.
	mid := uint64(wb.start)/(1<<20) + 1
	name := format.WALSegmentName(1, mid, 1<<20)
	wb.w.segs[mid][300000] ^= 0x40
	p := wb.verify(t, Options{})
	if len(p) != 1 || !strings.Contains(p[0], "WAL parsing failed for timeline 1") || !strings.Contains(p[0], "checksum") {
		t.Fatalf("problems %q, want one CRC problem", p)
	}
	// The record holding the byte may start in the previous segment; the
	// message names the segment where it starts and its LSN.
	if !strings.Contains(p[0], "WAL segment 00000001") || !strings.Contains(p[0], ", LSN 0/") {
		t.Fatalf("problem %q names no segment and LSN (flipped in %s)", p[0], name)
	}
}

func TestVerifyWALProblems(t *testing.T) {
	seg := format.WALSegmentName(1, 2, 16<<20)
	for _, c := range []struct {
		name   string
		major  int
		edit   func(wb *walBackup)
		want   string
		skipOK bool // Options.SkipWAL hides it
	}{
		{"bad CRC", 17, func(wb *walBackup) { wb.w.bytes(wb.w.recs[3] + 500)[0] ^= 1 }, "incorrect resource manager data checksum", true},
		{"bad pageaddr", 17, func(wb *walBackup) { wb.w.bytes(wb.start&^8191 + 8192 + 9)[0] ^= 1 }, "unexpected pageaddr", true},
		{"bad magic", 18, func(wb *walBackup) { wb.w.bytes(wb.start&^8191 + 2*8192)[0] ^= 1 }, "invalid magic number D119", true},
		{"other system's WAL", 17, func(wb *walBackup) { wb.w.sysid++; wb.w.initPage(wb.start&^8191, 0) }, "WAL file is from different database system", true},
		{"PostgreSQL 17 WAL in a PostgreSQL 18 backup", 18, func(wb *walBackup) {
			for _, s := range wb.w.segs {
				for off := 0; off < len(s); off += 8192 {
					if binary.NativeEndian.Uint16(s[off:]) == 0xD118 {
						binary.NativeEndian.PutUint16(s[off:], 0xD116)
					}
				}
			}
		}, "invalid magic number D116 in page header (PostgreSQL 18 writes D118)", true},
		{"bad xl_prev", 17, func(wb *walBackup) {
			rec := wb.w.bytes(wb.w.recs[5])
			rec[8] ^= 8
			binary.NativeEndian.PutUint32(rec[20:], format.WALRecordCRC(rec[:binary.NativeEndian.Uint32(rec)]))
		}, "record with incorrect prev-link", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			wb := newWALBackup(t, c.major, 16<<20, walSizes...)
			c.edit(wb)
			p := wb.verify(t, Options{})
			if len(p) != 1 {
				t.Fatalf("problems %q, want one", p)
			}
			for _, want := range []string{"WAL parsing failed for timeline 1", "WAL segment " + seg + ", LSN 0/", c.want} {
				if !strings.Contains(p[0], want) {
					t.Fatalf("problem %q does not say %q", p[0], want)
				}
			}
			if p := wb.verify(t, Options{SkipWAL: true}); len(p) > 0 && c.skipOK {
				t.Fatalf("problems with SkipWAL: %q", p)
			}
		})
	}
}

func TestVerifyWALMissingAndShort(t *testing.T) {
	wb := newWALBackup(t, 17, 16<<20, walSizes...)
	name := format.WALSegmentName(1, 2, 16<<20)
	// A second range on a segment that is not there.
	other := format.LSN(5 << 24)
	b := wb.dir
	m, err := os.ReadFile(filepath.Join(b, "backup_manifest"))
	if err != nil {
		t.Fatal(err)
	}
	m = setWALRanges(m, format.WALRange{TLI: 1, Start: wb.start, End: wb.end}, format.WALRange{TLI: 1, Start: other + 40, End: other + 400})
	if err := os.WriteFile(filepath.Join(b, "backup_manifest"), m, 0o600); err != nil {
		t.Fatal(err)
	}
	p := wb.verify(t, Options{})
	if len(p) != 1 || !strings.Contains(p[0], `WAL segment "000000010000000000000005" needed for timeline 1 from 0/5000028 to 0/5000190 is missing`) {
		t.Fatalf("problems %q, want the missing segment", p)
	}
	// A short segment: said once, its records not read.
	wb.w.segs[2] = wb.w.segs[2][:1<<20]
	p = wb.verify(t, Options{})
	if len(p) != 2 || p[0] != fmt.Sprintf("WAL segment %q has size %d, expected %d", name, 1<<20, 16<<20) {
		t.Fatalf("problems %q, want the short segment first", p)
	}
}

func TestVerifyWALPastEndIgnored(t *testing.T) {
	wb := newWALBackup(t, 17, 16<<20, walSizes...)
	// Past End-LSN in the last segment: a garbage record header and a
	// broken page header, as pg_waldump --end never reads them.
	wb.w.bytes(wb.end)[0] = 0xff
	wb.w.bytes(wb.end&^8191 + 3*8192)[0] ^= 0xff
	if p := wb.verify(t, Options{}); len(p) > 0 {
		t.Fatalf("problems past End-LSN: %q", p)
	}
}

func TestVerifyWALNoPGVersion(t *testing.T) {
	wb := newWALBackup(t, 17, 16<<20, walSizes...)
	if err := os.Remove(filepath.Join(wb.dir, "PG_VERSION")); err != nil {
		t.Fatal(err)
	}
	p := wb.verify(t, Options{})
	if len(p) != 2 || !strings.Contains(p[1], "not parsed") || !strings.Contains(p[1], "PG_VERSION") {
		t.Fatalf("problems %q, want PG_VERSION missing and the WAL not parsed", p)
	}
}
