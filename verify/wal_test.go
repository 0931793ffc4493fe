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
	"github.com/combinefs/combinefs/format/waltest"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// writeWAL puts the segment files of w into dir/pg_wal; short holds the
// length of segments cut short.
func writeWAL(t *testing.T, w *waltest.Builder, dir string, short map[uint64]int) {
	t.Helper()
	for _, seg := range w.Segments() {
		data := w.Segment(seg)
		if n, ok := short[seg]; ok {
			data = data[:n]
		}
		name := format.WALSegmentName(w.TLI, seg, w.SegSize)
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
	w          *waltest.Builder
	short      map[uint64]int // segments written cut short
	start, end format.LSN
}

func newWALBackup(t *testing.T, major int, segSize int64, recordSizes ...int) *walBackup {
	t.Helper()
	c := resolvertest.NewChain(t)
	c.Major = major
	b := c.Full()
	// The first record goes right after the long header of a segment.
	at := format.LSN(2 * segSize)
	w := waltest.New(major, c.SystemIdentifier, segSize, at)
	for _, n := range recordSizes {
		w.Add(10, 0, n, nil) // RM_HEAP_ID
	}
	wb := &walBackup{dir: b.Dir, w: w, short: map[uint64]int{}, start: w.Recs[0].LSN, end: w.Pos}
	b.EditManifest = func(m []byte) []byte {
		return setWALRanges(m, format.WALRange{TLI: 1, Start: wb.start, End: wb.end})
	}
	b.Finish()
	return wb
}

func (wb *walBackup) verify(t *testing.T, opts Options) []string {
	t.Helper()
	writeWAL(t, wb.w, wb.dir, wb.short)
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
	if n := len(wb.w.Segments()); n < 3 {
		t.Fatalf("the WAL spans %d segments, want 3 or more", n)
	}
	if p := wb.verify(t, Options{}); len(p) > 0 {
		t.Fatalf("problems with good WAL: %q", p)
	}
	// A flipped byte in the middle segment is found and named.
	mid := uint64(wb.start)/(1<<20) + 1
	name := format.WALSegmentName(1, mid, 1<<20)
	*wb.w.At(format.LSN(mid<<20) + 300000) ^= 0x40
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
		{"bad CRC", 17, func(wb *walBackup) { *wb.w.At(wb.w.Recs[3].LSN + 500) ^= 1 }, "incorrect resource manager data checksum", true},
		{"bad pageaddr", 17, func(wb *walBackup) { *wb.w.At(wb.start&^8191 + 8192 + 9) ^= 1 }, "unexpected pageaddr", true},
		{"bad magic", 18, func(wb *walBackup) { *wb.w.At(wb.start&^8191 + 2*8192) ^= 1 }, "invalid magic number D119", true},
		{"other system's WAL", 17, func(wb *walBackup) {
			binary.NativeEndian.PutUint64(wb.w.Pages[wb.start&^8191][24:], wb.w.SysID+1) // xlp_sysid
		}, "WAL file is from different database system", true},
		{"PostgreSQL 17 WAL in a PostgreSQL 18 backup", 18, func(wb *walBackup) {
			for _, p := range wb.w.Pages {
				if binary.NativeEndian.Uint16(p) == 0xD118 {
					binary.NativeEndian.PutUint16(p, 0xD116)
				}
			}
		}, "invalid magic number D116 in page header (PostgreSQL 18 writes D118)", true},
		{"bad xl_prev", 17, func(wb *walBackup) {
			at := wb.w.Recs[5].LSN
			rec := wb.w.Pages[at&^8191][at%8192:]
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
	wb.short[2] = 1 << 20
	p = wb.verify(t, Options{})
	if len(p) != 2 || p[0] != fmt.Sprintf("WAL segment %q has size %d, expected %d", name, 1<<20, 16<<20) {
		t.Fatalf("problems %q, want the short segment first", p)
	}
}

func TestVerifyWALPastEndIgnored(t *testing.T) {
	wb := newWALBackup(t, 17, 16<<20, walSizes...)
	// Past End-LSN in the last segment: a garbage record header and a
	// broken page header, as pg_waldump --end never reads them.
	*wb.w.At(wb.end) = 0xff
	*wb.w.At(wb.end&^8191 + 3*8192) ^= 0xff
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
