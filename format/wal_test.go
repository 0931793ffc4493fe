package format_test

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/format/waltest"
)

// Synthetic WAL comes from package waltest; walBuilder adds what the reader
// tests need on top: segments cut short, and the reader over the pages.

const (
	testSegSize = format.WALMinSegmentSize // 1 MiB: 128 pages
	testSysID   = 7450000000000000001
	testTLI     = 1
	blk         = format.WALBlockSize
)

type walBuilder struct {
	*waltest.Builder                  // sysid testSysID, 1 MiB segments
	trunc            map[uint64]int64 // segment number → truncated size
}

// newWALBuilder starts writing at page boundary at.
func newWALBuilder(major int, at format.LSN) *walBuilder {
	return &walBuilder{Builder: waltest.New(major, testSysID, testSegSize, at), trunc: map[uint64]int64{}}
}

func (b *walBuilder) segName(lsn format.LSN) string {
	return format.WALSegmentName(b.TLI, uint64(lsn)/uint64(b.SegSize), b.SegSize)
}

func (b *walBuilder) open(segNo uint64) (io.ReaderAt, error) {
	size := b.SegSize
	if n, ok := b.trunc[segNo]; ok {
		size = n
	}
	return &sparseSegment{pages: b.Pages, base: format.LSN(segNo * uint64(b.SegSize)), size: size}, nil
}

func (b *walBuilder) reader(t testing.TB) *format.WALReader {
	t.Helper()
	r, err := format.NewWALReader(format.WALReaderOptions{
		Major: b.Major, TLI: b.TLI, SegmentSize: b.SegSize, SystemIdentifier: testSysID, Open: b.open,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// want lists the records Scan(start, end) must return: from the first
// starting at or after start, those that end by end.
func (b *walBuilder) want(start, end format.LSN) []format.LSN {
	var out []format.LSN
	for _, r := range b.Recs {
		if r.LSN >= start && b.recEnd(r) <= end {
			out = append(out, r.LSN)
		}
	}
	return out
}

// recEnd is where record r's last byte ends (before alignment).
func (b *walBuilder) recEnd(r format.WALRecord) format.LSN {
	totLen := 0
	for i, p := 0, r.LSN; i < 4; i++ {
		totLen |= int(*b.At(p)) << (8 * i)
		p++
	}
	pos, left := r.LSN, totLen
	for left > 0 {
		page := pos &^ (blk - 1)
		if pos == page {
			pos += format.LSN(b.hdrSize(page))
		}
		n := min(left, int(page+blk-pos))
		pos += format.LSN(n)
		left -= n
	}
	return pos
}

func (b *walBuilder) hdrSize(page format.LSN) int {
	if int64(page)%b.SegSize == 0 {
		return format.WALLongPageHeaderSize
	}
	return format.WALShortPageHeaderSize
}

// sparseSegment serves the written pages of one segment, zeros elsewhere.
type sparseSegment struct {
	pages map[format.LSN][]byte
	base  format.LSN
	size  int64
}

func (s *sparseSegment) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off+int64(n) < s.size {
		lsn := s.base + format.LSN(off+int64(n))
		page, in := lsn&^(blk-1), int(lsn%blk)
		chunk := min(len(p)-n, blk-in, int(s.size-off-int64(n)))
		if pg, ok := s.pages[page]; ok {
			copy(p[n:n+chunk], pg[in:])
		} else {
			clear(p[n : n+chunk])
		}
		n += chunk
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// buildOneSegment writes records of many sizes from the start of segment 1:
// small ones, ones over several pages, one whose header is cut by a page
// boundary, one ending exactly at a page end.
func buildOneSegment(major int) *walBuilder {
	b := newWALBuilder(major, testSegSize)
	for i, n := range []int{26, 100, 0, 3000, 9000, 20000, 50} {
		b.Add(uint8(i%22), 0x10, n, nil)
	}
	// Fill up to 16 bytes before a page end: the next header is cut.
	page := (b.Pos &^ (blk - 1)) + blk
	if left := int(page - b.Pos); left >= 48 {
		b.Add(10, 0, left-16-format.WALRecordHeaderSize, nil)
	} else {
		b.Add(10, 0, left+blk-16-format.WALRecordHeaderSize-format.WALShortPageHeaderSize, nil)
	}
	if got := int(b.Pos % blk); got != blk-16 {
		panic(got)
	}
	b.Add(11, 0, 500, nil) // header cut by the page boundary
	// One ending exactly at the end of its page.
	page = (b.Pos &^ (blk - 1)) + blk
	b.Add(12, 0, int(page-b.Pos)-format.WALRecordHeaderSize, nil)
	if b.Pos%blk != 0 {
		panic("not at a page boundary")
	}
	for i := range 20 {
		b.Add(uint8(128+i), 0, 40+i*37, nil) // custom resource managers are valid
	}
	b.Add(9, 0, 70, nil)
	return b
}

// buildAcrossSegments writes records from m pages before the end of
// segment 1 over into segment 2, then a switch record and one more record
// at the start of segment 3.
func buildAcrossSegments(major, m int) *walBuilder {
	b := newWALBuilder(major, 2*testSegSize-format.LSN(m*blk))
	b.InitPage(testSegSize, 0) // segment 1's first page: the reader checks its long header
	for i, n := range []int{200, 5000, 3*blk + 100, 300, 17000, 64} {
		b.Add(uint8(i), 0, n, nil)
	}
	b.Add(0, 0x40, 0, nil) // XLOG_SWITCH
	b.Add(1, 0, 120, nil)
	b.Add(2, 0, 9000, nil)
	return b
}

func scanAll(t *testing.T, b *walBuilder, start, end format.LSN) ([]format.LSN, error) {
	t.Helper()
	r := b.reader(t)
	rec, err := r.Start(start, end)
	if err != nil {
		return nil, err
	}
	got := []format.LSN{rec.LSN}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, rec.LSN)
	}
}

func TestWALReaderReadsRecords(t *testing.T) {
	for _, major := range []int{17, 18} {
		for name, b := range map[string]*walBuilder{
			"one segment":     buildOneSegment(major),
			"across segments": buildAcrossSegments(major, 3),
			"one page before": buildAcrossSegments(major, 1),
			"segment start":   buildAcrossSegments(major, 0),
		} {
			first, last := b.Recs[0], b.Recs[len(b.Recs)-1]
			cases := []struct {
				name       string
				start, end format.LSN
			}{
				{"whole", first.LSN, b.recEnd(last)},
				{"from the page start", first.LSN &^ (blk - 1), b.recEnd(last)},
				{"mid record", b.Recs[2].LSN + 3, b.recEnd(last)},
				{"inside a continued record", b.Recs[4].LSN + 2*blk + 100, b.recEnd(last)},
				{"end inside a record", b.Recs[1].LSN, b.recEnd(b.Recs[4]) - 1},
				{"end at a record end", b.Recs[1].LSN, b.recEnd(b.Recs[4])},
			}
			for _, c := range cases {
				got, err := scanAll(t, b, c.start, c.end)
				if err != nil {
					t.Fatalf("PG%d %s, %s: %v", major, name, c.name, err)
				}
				want := b.want(c.start, c.end)
				if !slices.Equal(got, want) {
					t.Fatalf("PG%d %s, %s: records %v, want %v", major, name, c.name, got, want)
				}
			}
		}
	}
}

func TestWALReaderScanCountsAndSwitch(t *testing.T) {
	b := buildAcrossSegments(17, 2)
	last := b.Recs[len(b.Recs)-1]
	n, err := b.reader(t).Scan(b.Recs[0].LSN, b.recEnd(last))
	if err != nil || n != len(b.Recs) {
		t.Fatalf("Scan: %d records, %v; want %d", n, err, len(b.Recs))
	}
	// The record after the switch is on segment 3's first page.
	if sw := b.Recs[len(b.Recs)-3]; uint64(b.Recs[len(b.Recs)-2].LSN)/testSegSize != uint64(sw.LSN)/testSegSize+1 {
		t.Fatalf("switch record at %s did not end its segment", sw.LSN)
	}
}

// walProblem is a corruption and the error it must give.
type walProblem struct {
	name string
	// build makes the WAL and returns the range to read.
	build   func() (b *walBuilder, start, end format.LSN)
	segment format.LSN // an LSN in the segment the error must name
	want    string
}

func walProblems() []walProblem {
	whole := func(b *walBuilder) (format.LSN, format.LSN) {
		return b.Recs[0].LSN, b.recEnd(b.Recs[len(b.Recs)-1])
	}
	seg1, seg2 := format.LSN(testSegSize), format.LSN(2*testSegSize)
	return []walProblem{
		{"bad CRC", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			*b.At(b.Recs[3].LSN + 1000) ^= 0x10
			s, e := whole(b)
			return b, s, e
		}, seg1, "incorrect resource manager data checksum in record at 0/"},
		{"bad CRC in a record over two segments", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildAcrossSegments(17, 1)
			*b.At(seg2 + 200) ^= 1
			s, e := whole(b)
			return b, s, e
		}, seg1, "incorrect resource manager data checksum"},
		{"bad xl_prev", func() (*walBuilder, format.LSN, format.LSN) {
			b := newWALBuilder(17, testSegSize)
			b.Add(1, 0, 10, nil)
			b.Add(1, 0, 10, nil)
			b.Add(1, 0, 10, func(rec []byte) { rec[8] ^= 8 })
			b.Add(1, 0, 10, nil)
			s, e := whole(b)
			return b, s, e
		}, seg1, "record with incorrect prev-link"},
		{"first xl_prev not before the record", func() (*walBuilder, format.LSN, format.LSN) {
			b := newWALBuilder(17, testSegSize)
			b.Add(1, 0, 10, func(rec []byte) { binary.NativeEndian.PutUint64(rec[8:], 5*testSegSize) })
			b.Add(1, 0, 10, nil)
			s, e := whole(b)
			return b, s, e
		}, seg1, "record with incorrect prev-link 0/500000 at 0/100028"},
		{"bad magic", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			*b.At(seg1 + 2*blk) ^= 1
			s, e := whole(b)
			return b, s, e
		}, seg1, "invalid magic number D117 in page header (PostgreSQL 17 writes D116)"},
		{"PostgreSQL 18 WAL read as 17", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(18)
			b.Major = 17
			s, e := whole(b)
			return b, s, e
		}, seg1, "invalid magic number D118"},
		{"bad info bits", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			*b.At(seg1 + blk + 2) |= 0x10
			s, e := whole(b)
			return b, s, e
		}, seg1, "invalid info bits 0011"},
		{"no long header on a segment's first page", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildAcrossSegments(17, 2)
			*b.At(seg2 + 2) &^= 0x02
			s, e := whole(b)
			return b, s, e
		}, seg2, "needs a long header"},
		{"bad pageaddr", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			*b.At(seg1 + 3*blk + 8) ^= 0x01
			s, e := whole(b)
			return b, s, e
		}, seg1, "offset 24576: unexpected pageaddr 0/106001 in page header"},
		{"wrong system identifier", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildAcrossSegments(17, 2)
			*b.At(seg2 + 24) ^= 0x01
			s, e := whole(b)
			return b, s, e
		}, seg2, "WAL file is from different database system"},
		{"wrong segment size in the long header", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildAcrossSegments(17, 2)
			*b.At(seg1 + 34) = 0x20 // 2 MiB, on the segment's first page, checked on entering the segment
			s, e := whole(b)
			return b, s, e
		}, seg1, "incorrect segment size in page header"},
		{"wrong block size in the long header", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			*b.At(seg1 + 37) = 0x40
			s, e := whole(b)
			return b, s, e
		}, seg1, "incorrect XLOG_BLCKSZ"},
		{"timeline going back", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			b.TLI = 2
			for addr, p := range b.Pages {
				binary.NativeEndian.PutUint32(p[4:], 2)
				if addr == seg1+4*blk {
					binary.NativeEndian.PutUint32(p[4:], 1)
				}
			}
			s, e := whole(b)
			return b, s, e
		}, seg1, "out-of-sequence timeline ID 1 (after 2)"},
		{"timeline after the segment's", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			binary.NativeEndian.PutUint32(b.Pages[seg1+5*blk][4:], 3)
			s, e := whole(b)
			return b, s, e
		}, seg1, "timeline ID 3 in page header is after timeline 1"},
		{"truncated segment", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildAcrossSegments(17, 2)
			b.trunc[2] = blk + 100
			s, e := whole(b)
			return b, s, e
		}, seg2, "could not read page: read 100 of 8192"},
		{"invalid resource manager", func() (*walBuilder, format.LSN, format.LSN) {
			b := newWALBuilder(18, testSegSize)
			b.Add(1, 0, 10, nil)
			b.Add(22, 0, 10, nil)
			s, e := whole(b)
			return b, s, e
		}, seg1, "invalid resource manager ID 22 at 0/100050"},
		{"record length too small", func() (*walBuilder, format.LSN, format.LSN) {
			b := newWALBuilder(17, testSegSize)
			b.Add(1, 0, 10, nil)
			b.Add(1, 0, 10, nil)
			b.Add(1, 0, 10, nil)
			rec := b.Recs[1].LSN
			*b.At(rec) = 20
			return b, b.Recs[0].LSN, b.recEnd(b.Recs[2])
		}, seg1, "invalid record length at 0/100050: expected at least 24, got 20"},
		{"no contrecord flag", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			page := (b.Recs[4].LSN &^ (blk - 1)) + blk // the 9000-byte record goes on here
			*b.At(page + 2) &^= 0x01
			s, e := whole(b)
			return b, s, e
		}, seg1, "there is no contrecord flag at"},
		{"bad xlp_rem_len", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			page := (b.Recs[5].LSN &^ (blk - 1)) + 2*blk // the 20000-byte record's third page
			*b.At(page + 16) ^= 0x04
			s, e := whole(b)
			return b, s, e
		}, seg1, "invalid contrecord length"},
		{"contrecord where a record should start", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			for _, r := range b.Recs {
				if r.Next%blk == 0 && r.Next < b.Pos { // the record ending at its page end
					*b.At(r.Next + 2) |= 0x01
					s, e := whole(b)
					return b, s, e
				}
			}
			panic("no record ends at a page end")
		}, seg1, "contrecord is requested by"},
		{"zeros after the last record", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			s, e := whole(b)
			return b, s, e + 2*blk
		}, seg1, "expected at least 24, got 0"},
		{"no whole record in the range", func() (*walBuilder, format.LSN, format.LSN) {
			b := buildOneSegment(17)
			return b, b.Recs[4].LSN, b.Recs[4].LSN + 100
		}, seg1, "could not find a valid record after 0/"},
	}
}

func TestWALReaderProblems(t *testing.T) {
	for _, p := range walProblems() {
		t.Run(p.name, func(t *testing.T) {
			b, start, end := p.build()
			_, err := b.reader(t).Scan(start, end)
			if err == nil {
				t.Fatalf("no error, want %q", p.want)
			}
			var fe *format.Error
			if !errors.As(err, &fe) || !errors.Is(err, format.ErrCorrupt) {
				t.Fatalf("error %q (%T) is not a *format.Error", err, err)
			}
			seg := b.segName(p.segment)
			if fe.Path != seg || !strings.HasPrefix(err.Error(), "WAL segment "+seg+", LSN ") {
				t.Fatalf("error %q names %q, want segment %s first", err, fe.Path, seg)
			}
			if !strings.Contains(err.Error(), p.want) {
				t.Fatalf("error %q does not say %q", err, p.want)
			}
		})
	}
}

// Bytes the range does not cover are not read: a flip past the end, or
// before the page of the start, is no problem (pg_waldump reads no byte at
// or past --end).
func TestWALReaderIgnoresOutsideRange(t *testing.T) {
	b := buildOneSegment(17)
	last := b.Recs[len(b.Recs)-1]
	end := b.Recs[len(b.Recs)-2].Next
	*b.At(last.LSN + 30) ^= 0xff                    // in the last record, which ends past end
	b.Pages[testSegSize+20*blk] = make([]byte, blk) // a page of zeros past the end
	n, err := b.reader(t).Scan(b.Recs[8].LSN, end)
	if err != nil || n != len(b.Recs)-9 {
		t.Fatalf("Scan: %d records, %v; want %d and no error", n, err, len(b.Recs)-9)
	}
}

func TestWALReaderOptions(t *testing.T) {
	open := func(uint64) (io.ReaderAt, error) { return nil, errors.New("no") }
	for _, o := range []format.WALReaderOptions{
		{Major: 16, TLI: 1, SegmentSize: 16 << 20, Open: open},
		{Major: 17, TLI: 1, SegmentSize: 3 << 20, Open: open},
		{Major: 17, TLI: 1, SegmentSize: 512 << 10, Open: open},
		{Major: 17, TLI: 1, SegmentSize: 2 << 30, Open: open},
		{Major: 17, TLI: 1, SegmentSize: 16 << 20},
	} {
		if _, err := format.NewWALReader(o); err == nil {
			t.Errorf("NewWALReader(%+v) accepted", o)
		}
	}
	r, err := format.NewWALReader(format.WALReaderOptions{Major: 18, TLI: 1, SegmentSize: 16 << 20, Open: open})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); err == nil {
		t.Error("Next before Start succeeded")
	}
	if _, err := r.Scan(0x3000028, 0x3001000); err == nil || !strings.Contains(err.Error(), "000000010000000000000003") {
		t.Errorf("Scan with a failing Open: %v", err)
	}
}

func TestWALSegmentName(t *testing.T) {
	for _, c := range []struct {
		tli   uint32
		seg   uint64
		size  int64
		wantN string
	}{
		{1, 3, 16 << 20, "000000010000000000000003"},
		{1, 0x100, 16 << 20, "000000010000000100000000"},
		{2, 0x30, 1 << 20, "000000020000000000000030"},
		{2, 0x1FF, 16 << 20, "0000000200000001000000FF"},
		{1, 5, 1 << 30, "000000010000000100000001"},
		{0x1A, 4096 + 7, 1 << 20, "0000001A0000000100000007"},
	} {
		if got := format.WALSegmentName(c.tli, c.seg, c.size); got != c.wantN {
			t.Errorf("WALSegmentName(%d, %d, %d) = %s, want %s", c.tli, c.seg, c.size, got, c.wantN)
		}
	}
	for major, want := range map[int]uint16{17: 0xD116, 18: 0xD118} {
		if got, ok := format.WALPageMagic(major); !ok || got != want {
			t.Errorf("WALPageMagic(%d) = %04X, %v", major, got, ok)
		}
	}
	if _, ok := format.WALPageMagic(16); ok {
		t.Error("WALPageMagic(16) known")
	}
}

// The fuzz input lays pages out as the synthetic cases do: page 0 is the
// first page of segment 1; with tail 0 the next pages follow it, otherwise
// the next tail pages are the last ones of segment 1 and the rest the first
// of segment 2. start is startOff bytes into the second page laid out (or
// the first, with tail 0), end span bytes after start.

func fuzzLayout(data []byte, tail uint8) (map[format.LSN][]byte, format.LSN) {
	pages := map[format.LSN][]byte{}
	var base format.LSN = testSegSize
	for i := 0; i*blk < len(data); i++ {
		p := make([]byte, blk)
		copy(p, data[i*blk:])
		var addr format.LSN
		switch {
		case tail == 0 || i == 0:
			addr = testSegSize + format.LSN(i*blk)
		case i <= int(tail):
			addr = 2*testSegSize - format.LSN((int(tail)-i+1)*blk)
		default:
			addr = 2*testSegSize + format.LSN((i-int(tail)-1)*blk)
		}
		if i == 1 && tail > 0 {
			base = addr
		}
		pages[addr] = p
	}
	return pages, base
}

// fuzzSeed turns a builder's pages back into a fuzz input.
func fuzzSeed(b *walBuilder, tail uint8) []byte {
	var addrs []format.LSN
	for a := range b.Pages {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	var out []byte
	for _, a := range addrs {
		out = append(out, b.Pages[a]...)
	}
	return out
}

func FuzzWALReader(f *testing.F) {
	one := buildOneSegment(17)
	oneEnd := one.recEnd(one.Recs[len(one.Recs)-1])
	f.Add(fuzzSeed(one, 0), uint8(0), uint16(one.Recs[0].LSN-testSegSize), uint32(oneEnd-one.Recs[0].LSN), false)
	f.Add(fuzzSeed(one, 0), uint8(0), uint16(one.Recs[4].LSN-testSegSize+2*blk+100), uint32(oneEnd-one.Recs[4].LSN), false)
	one18 := buildOneSegment(18)
	f.Add(fuzzSeed(one18, 0), uint8(0), uint16(40), uint32(3*blk), true)
	for _, m := range []int{1, 2, 3} {
		b := buildAcrossSegments(17, m)
		start := b.Recs[0].LSN
		f.Add(fuzzSeed(b, uint8(m)), uint8(m), uint16(start%blk), uint32(b.recEnd(b.Recs[len(b.Recs)-1])-start), false)
	}
	for _, p := range walProblems() {
		b, start, end := p.build()
		if b.SegSize != testSegSize || len(b.trunc) > 0 {
			continue
		}
		tail := uint8(0)
		if b.Pages[2*testSegSize] != nil {
			tail = uint8((2*testSegSize - b.Recs[0].LSN&^(blk-1)) / blk)
			if tail == 0 {
				continue
			}
		}
		_, base := fuzzLayout(fuzzSeed(b, tail), tail)
		if start < base || start-base > 0xFFFF {
			continue
		}
		f.Add(fuzzSeed(b, tail), tail, uint16(start-base), uint32(end-start), b.Major == 18)
	}
	f.Fuzz(func(t *testing.T, data []byte, tail uint8, startOff uint16, span uint32, pg18 bool) {
		if len(data) > 64*blk || int(tail) > 120 {
			return
		}
		pages, base := fuzzLayout(data, tail)
		major := 17
		if pg18 {
			major = 18
		}
		b := &walBuilder{Builder: &waltest.Builder{Major: major, TLI: testTLI, SegSize: testSegSize, Pages: pages}, trunc: map[uint64]int64{}}
		start := base + format.LSN(startOff)
		end := start + format.LSN(span%(4*testSegSize))
		allocBound(t, len(data), func() {
			n, err := b.reader(t).Scan(start, end)
			if err == nil {
				if n == 0 {
					t.Fatal("Scan found no record and no error")
				}
				return
			}
			checkFuzzError(t, err, "WAL segment ")
			var fe *format.Error
			errors.As(err, &fe)
			if !strings.HasPrefix(fe.Path, "00000001") || !strings.Contains(err.Error(), fe.Path) {
				t.Fatalf("error %q does not name its segment (%q)", err, fe.Path)
			}
		})
	})
}
