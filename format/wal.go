package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The WAL layout of PostgreSQL 17 and 18 (src/include/access/xlog_internal.h,
// xlogrecord.h). Every integer is in host byte order.
//
// A segment file is a run of WALBlockSize pages. Each page starts with a
// header:
//
//	0  xlp_magic       uint16 (XLOG_PAGE_MAGIC of the major)
//	2  xlp_info        uint16 (XLP_* flags)
//	4  xlp_tli         uint32 (timeline of the first record on the page)
//	8  xlp_pageaddr    uint64 (LSN of the page itself)
//	16 xlp_rem_len     uint32 (bytes of a record continued from the previous page)
//	20 padding to 24
//
// and the first page of a segment has the long header, which adds
//
//	24 xlp_sysid       uint64 (system identifier)
//	32 xlp_seg_size    uint32
//	36 xlp_xlog_blcksz uint32 (8192)
//
// Records are MAXALIGNed (8 bytes) and start with a 24-byte header:
//
//	0  xl_tot_len uint32 (header and data)
//	4  xl_xid     uint32
//	8  xl_prev    uint64 (LSN of the previous record)
//	16 xl_info    uint8
//	17 xl_rmid    uint8
//	18 padding
//	20 xl_crc     uint32: CRC-32C of the data after the header, then of the
//	              header's first 20 bytes (xlogreader.c ValidXLogRecord)
//
// A record longer than what is left of its page goes on over the next pages
// (and segments), each of which has XLP_FIRST_IS_CONTRECORD set and the
// bytes still to come in xlp_rem_len; the next record starts at the next
// MAXALIGNed offset after it.
const (
	WALBlockSize           = 8192 // XLOG_BLCKSZ
	WALShortPageHeaderSize = 24   // SizeOfXLogShortPHD
	WALLongPageHeaderSize  = 40   // SizeOfXLogLongPHD
	WALRecordHeaderSize    = 24   // SizeOfXLogRecord
	WALMinSegmentSize      = 1 << 20
	WALMaxSegmentSize      = 1 << 30
)

// xlp_info flags.
const (
	xlpFirstIsContRecord = 0x0001
	xlpLongHeader        = 0x0002
	// 0x0004 is XLP_BKP_REMOVABLE, set on pages written while no backup
	// runs; nothing to check.
	xlpFirstIsOverwriteContRecord = 0x0008
	xlpAllFlags                   = 0x000F
)

// Resource managers: built-in IDs run from 0 (RM_XLOG_ID) to the last entry
// of rmgrlist.h; custom ones from RM_MIN_CUSTOM_ID to 255 (access/rmgr.h).
const (
	rmXLogID       = 0
	rmMinCustomID  = 128
	xlogSwitchInfo = 0x40 // XLOG_SWITCH (catalog/pg_control.h), in xl_info's rmgr bits
	xlrInfoMask    = 0x0F
)

// walMajors holds what differs between majors: XLOG_PAGE_MAGIC,
// RM_MAX_BUILTIN_ID (RM_LOGICALMSG_ID, 21, is the last built-in in both)
// and sizeof(xl_xact_stats_item), the dropped statistics entry of a commit
// or abort record: kind, dboid and objoid in 17; 18 widened the object id
// to 64 bits, stored as objid_lo and objid_hi.
var walMajors = map[int]struct {
	magic         uint16
	maxBuiltin    uint8
	statsItemSize int
}{
	17: {0xD116, 21, 12},
	18: {0xD118, 21, 16},
}

// WALPageMagic is XLOG_PAGE_MAGIC for a major, false for a major this
// package does not know.
func WALPageMagic(major int) (uint16, bool) {
	m, ok := walMajors[major]
	return m.magic, ok
}

// ValidWALSegmentSize is IsValidWalSegSize: a power of two from 1 MiB to 1 GiB.
func ValidWALSegmentSize(n int64) bool {
	return n >= WALMinSegmentSize && n <= WALMaxSegmentSize && n&(n-1) == 0
}

// WALSegmentName is the file name of segment segNo of timeline tli
// (XLogFileName).
func WALSegmentName(tli uint32, segNo uint64, segSize int64) string {
	perID := uint64(0x100000000) / uint64(segSize)
	return fmt.Sprintf("%08X%08X%08X", tli, uint32(segNo/perID), uint32(segNo%perID))
}

// WALPageHeader is a decoded page header.
type WALPageHeader struct {
	Magic    uint16
	Info     uint16
	TLI      uint32
	PageAddr LSN
	RemLen   uint32
	// Only with a long header (the first page of a segment).
	SystemIdentifier uint64
	SegmentSize      uint32
	BlockSize        uint32
}

// Long reports whether the header is the long one.
func (h *WALPageHeader) Long() bool { return h.Info&xlpLongHeader != 0 }

// Size is the header's length: where the page's own data starts.
func (h *WALPageHeader) Size() int {
	if h.Long() {
		return WALLongPageHeaderSize
	}
	return WALShortPageHeaderSize
}

// ParseWALPageHeader decodes the header at the start of page, a page read
// from offset off of the WAL segment file path. It checks only that the
// header's bytes are there (when a long header is cut short, the short
// fields come back with the error); the reader checks the values.
func ParseWALPageHeader(page []byte, path string, off int64) (WALPageHeader, error) {
	if len(page) < WALShortPageHeaderSize {
		return WALPageHeader{}, errorf(path, off, "WAL segment %s, offset %d: page header needs %d bytes, got %d", path, off, WALShortPageHeaderSize, len(page))
	}
	h := WALPageHeader{
		Magic:    binary.NativeEndian.Uint16(page[0:]),
		Info:     binary.NativeEndian.Uint16(page[2:]),
		TLI:      binary.NativeEndian.Uint32(page[4:]),
		PageAddr: LSN(binary.NativeEndian.Uint64(page[8:])),
		RemLen:   binary.NativeEndian.Uint32(page[16:]),
	}
	if h.Long() {
		if len(page) < WALLongPageHeaderSize {
			return h, errorf(path, off, "WAL segment %s, offset %d: long page header needs %d bytes, got %d", path, off, WALLongPageHeaderSize, len(page))
		}
		h.SystemIdentifier = binary.NativeEndian.Uint64(page[24:])
		h.SegmentSize = binary.NativeEndian.Uint32(page[32:])
		h.BlockSize = binary.NativeEndian.Uint32(page[36:])
	}
	return h, nil
}

// WALRecordHeader is a decoded XLogRecord header.
type WALRecordHeader struct {
	TotLen uint32
	XID    uint32
	Prev   LSN
	Info   uint8
	RmID   uint8
	CRC    uint32
}

func parseWALRecordHeader(b []byte) WALRecordHeader {
	return WALRecordHeader{
		TotLen: binary.NativeEndian.Uint32(b[0:]),
		XID:    binary.NativeEndian.Uint32(b[4:]),
		Prev:   LSN(binary.NativeEndian.Uint64(b[8:])),
		Info:   b[16],
		RmID:   b[17],
		CRC:    binary.NativeEndian.Uint32(b[20:]),
	}
}

// WALRecordCRC is the CRC a whole record (header and data, xl_tot_len
// bytes) must carry in xl_crc.
func WALRecordCRC(rec []byte) uint32 {
	crc := crc32.Update(0, castagnoli, rec[WALRecordHeaderSize:])
	return crc32.Update(crc, castagnoli, rec[:20])
}

// WALRecord is one record read: where it starts, its header, and where the
// next one starts.
type WALRecord struct {
	LSN LSN
	WALRecordHeader
	Next LSN
	// Data is the whole record, header first, when WALReaderOptions.KeepData
	// is set; it is valid until the next call of the reader.
	Data []byte
}

// WALReaderOptions say which WAL a WALReader reads and how to check it.
type WALReaderOptions struct {
	Major       int    // 17 or 18: picks XLOG_PAGE_MAGIC
	TLI         uint32 // the timeline whose segment files are read
	SegmentSize int64  // from the segment files; every long page header must agree
	// SystemIdentifier, when not 0, must be in every long page header.
	SystemIdentifier uint64
	// Open returns the contents of segment segNo of timeline TLI. The reader
	// goes forward only: it asks for each segment once and reads its pages
	// in increasing order.
	Open func(segNo uint64) (io.ReaderAt, error)
	// KeepData makes each WALRecord carry the record's bytes, for readers
	// that look into records (commit times, restore point names).
	KeepData bool
}

// WALReader walks the records of one timeline's WAL from a start LSN to an
// end LSN with the checks of PostgreSQL's xlogreader.c, which is what
// pg_waldump --start --end (run by pg_verifybackup for each WAL range of a
// manifest) does: every page header read (magic, flags, long header on a
// segment's first page, page address, timeline not going backwards), every
// record header (length, resource manager, link to the previous record),
// continuation pages, and every record's CRC. Like pg_waldump it reads no
// byte at or past the end: a record that does not end before it is not read
// and is no error.
//
// Problems with the WAL are *Error values whose Path is the segment file's
// name and whose message names the segment, the LSN and the offset.
type WALReader struct {
	opts       WALReaderOptions
	magic      uint16
	maxBuiltin uint8

	end     LSN // 0: no limit
	started bool
	next    LSN // where the next record starts (or the page it is on)
	prev    LSN // start of the last record returned
	err     error

	seg       io.ReaderAt
	segNo     uint64
	haveSeg   bool
	lastSegNo uint64 // segment of the last page read and checked
	haveLast  bool

	page     [WALBlockSize]byte
	pageAddr LSN
	pageLen  int // valid bytes in page; 0 when none
	hdr      WALPageHeader

	latestPage LSN // last page checked, and its timeline: xlp_tli may not go back
	latestTLI  uint32

	recHdr  [WALRecordHeaderSize]byte
	recHdrN int
	crc     uint32
	data    []byte // the record read, with KeepData
}

// errWALEnd is the reader reaching the end LSN: not a problem, the range is
// read.
var errWALEnd = errors.New("end of WAL range")

// NewWALReader checks opts and returns a reader; Start positions it.
func NewWALReader(opts WALReaderOptions) (*WALReader, error) {
	m, ok := walMajors[opts.Major]
	if !ok {
		return nil, fmt.Errorf("reading WAL of PostgreSQL %d is not supported", opts.Major)
	}
	if !ValidWALSegmentSize(opts.SegmentSize) {
		return nil, fmt.Errorf("invalid WAL segment size %d: it must be a power of two between 1 MB and 1 GB", opts.SegmentSize)
	}
	if opts.Open == nil {
		return nil, errors.New("WALReaderOptions.Open is nil")
	}
	return &WALReader{opts: opts, magic: m.magic, maxBuiltin: m.maxBuiltin}, nil
}

// Start finds the first record at or after start as XLogFindNextRecord
// does (from the start of start's page, past any continued record, then
// record by record, each checked), and returns it. No byte at or past end is
// read; end 0 means no limit. A range with no whole record is an error, as
// for pg_waldump ("could not find a valid record after").
func (r *WALReader) Start(start, end LSN) (WALRecord, error) {
	r.started, r.end, r.err = true, end, nil
	rec, err := r.findFirst(start)
	if err != nil {
		if err == errWALEnd {
			err = r.errAt(start, "could not find a valid record after %s", start)
		}
		r.err = err
		return WALRecord{}, err
	}
	r.prev, r.next = rec.LSN, rec.Next
	return rec, nil
}

func (r *WALReader) findFirst(start LSN) (WALRecord, error) {
	at := start
	for {
		pageAddr := at &^ (WALBlockSize - 1)
		if err := r.readPage(pageAddr, int(at-pageAddr)); err != nil {
			return WALRecord{}, err
		}
		hsz := r.hdr.Size()
		if err := r.readPage(pageAddr, hsz); err != nil {
			return WALRecord{}, err
		}
		if r.hdr.Info&xlpFirstIsContRecord == 0 {
			at = pageAddr + LSN(hsz)
			break
		}
		if rem := maxAlign(uint64(r.hdr.RemLen)); rem < uint64(WALBlockSize-hsz) {
			at = pageAddr + LSN(uint64(hsz)+rem)
			break
		}
		at = pageAddr + WALBlockSize // the continued record goes on past this page
	}
	randAccess, prev := true, LSN(0)
	for {
		rec, err := r.readRecord(at, prev, randAccess)
		if err != nil {
			return WALRecord{}, err
		}
		if rec.LSN >= start {
			return rec, nil
		}
		at, prev, randAccess = rec.Next, rec.LSN, false
	}
}

// Next returns the record after the last one returned, io.EOF when the
// next record does not end before the end LSN. After an error it returns
// that error again.
func (r *WALReader) Next() (WALRecord, error) {
	if !r.started {
		return WALRecord{}, errors.New("WALReader.Next called before Start")
	}
	if r.err != nil {
		return WALRecord{}, r.err
	}
	rec, err := r.readRecord(r.next, r.prev, false)
	if err == errWALEnd {
		err = io.EOF
	}
	if err != nil {
		r.err = err
		return WALRecord{}, err
	}
	r.prev, r.next = rec.LSN, rec.Next
	return rec, nil
}

// Scan reads every record from the first at or after start to end and
// returns how many there were, or the first problem.
func (r *WALReader) Scan(start, end LSN) (int, error) {
	if _, err := r.Start(start, end); err != nil {
		return 0, err
	}
	n := 1
	for {
		if _, err := r.Next(); err == io.EOF {
			return n, nil
		} else if err != nil {
			return n, err
		}
		n++
	}
}

// readRecord reads and checks the record at at (or, when at is a page
// boundary, the first one after that page's header), as
// XLogDecodeNextRecord does. prev is the previous record's start, checked
// against xl_prev unless randAccess, when xl_prev need only be before at.
func (r *WALReader) readRecord(at, prev LSN, randAccess bool) (WALRecord, error) {
restart:
	r.data = r.data[:0]
	pageAddr := at &^ (WALBlockSize - 1)
	off := int(at - pageAddr)
	if err := r.readPage(pageAddr, min(off+WALRecordHeaderSize, WALBlockSize)); err != nil {
		return WALRecord{}, err
	}
	hsz := r.hdr.Size()
	if off == 0 {
		at += LSN(hsz)
		off = hsz
		if err := r.readPage(pageAddr, min(off+WALRecordHeaderSize, WALBlockSize)); err != nil {
			return WALRecord{}, err
		}
	} else if off < hsz {
		return WALRecord{}, r.errAt(at, "invalid record offset at %s: expected at least %d, got %d", at, hsz, off)
	}
	if r.hdr.Info&xlpFirstIsContRecord != 0 && off == hsz {
		return WALRecord{}, r.errAt(at, "contrecord is requested by %s", at)
	}

	totLen := binary.NativeEndian.Uint32(r.page[off:])
	r.recHdrN, r.crc = 0, 0
	var h WALRecordHeader
	gotHeader := false
	if off <= WALBlockSize-WALRecordHeaderSize {
		h = parseWALRecordHeader(r.page[off:])
		if err := r.checkRecordHeader(&h, at, prev, randAccess); err != nil {
			return WALRecord{}, err
		}
		gotHeader = true
	} else if totLen < WALRecordHeaderSize {
		return WALRecord{}, r.errAt(at, "invalid record length at %s: expected at least %d, got %d", at, WALRecordHeaderSize, totLen)
	}

	var next LSN
	if avail := WALBlockSize - off; uint64(totLen) > uint64(avail) {
		// The record goes on over the next pages.
		if err := r.readPage(pageAddr, WALBlockSize); err != nil {
			return WALRecord{}, err
		}
		r.feed(r.page[off:])
		got := uint64(avail)
		for got < uint64(totLen) {
			pageAddr += WALBlockSize
			if err := r.readPage(pageAddr, WALShortPageHeaderSize); err != nil {
				return WALRecord{}, err
			}
			if r.hdr.Info&xlpFirstIsOverwriteContRecord != 0 {
				// The rest of this record was never written; a new record
				// starts on this page instead.
				at = pageAddr
				goto restart
			}
			if r.hdr.Info&xlpFirstIsContRecord == 0 {
				return WALRecord{}, r.errAt(pageAddr, "there is no contrecord flag at %s (the record at %s goes on to this page)", pageAddr, at)
			}
			rem := uint64(r.hdr.RemLen)
			if rem == 0 || uint64(totLen) != rem+got {
				return WALRecord{}, r.errAt(pageAddr, "invalid contrecord length %d (expected %d) at %s for the record at %s", rem, int64(totLen)-int64(got), pageAddr, at)
			}
			hsz = r.hdr.Size()
			n := min(uint64(WALBlockSize-hsz), rem)
			if err := r.readPage(pageAddr, hsz+int(n)); err != nil {
				return WALRecord{}, err
			}
			r.feed(r.page[hsz : hsz+int(n)])
			got += n
			if !gotHeader {
				h = parseWALRecordHeader(r.recHdr[:])
				if err := r.checkRecordHeader(&h, at, prev, randAccess); err != nil {
					return WALRecord{}, err
				}
				gotHeader = true
			}
			next = pageAddr + LSN(uint64(hsz)+maxAlign(rem))
		}
	} else {
		if err := r.readPage(pageAddr, off+int(totLen)); err != nil {
			return WALRecord{}, err
		}
		r.feed(r.page[off : off+int(totLen)])
		next = at + LSN(maxAlign(uint64(totLen)))
	}
	if crc := crc32.Update(r.crc, castagnoli, r.recHdr[:20]); crc != h.CRC {
		return WALRecord{}, r.errAt(at, "incorrect resource manager data checksum in record at %s", at)
	}
	if h.RmID == rmXLogID && h.Info&^xlrInfoMask == xlogSwitchInfo {
		// A switch record takes the rest of its segment.
		seg := LSN(r.opts.SegmentSize)
		next += seg - 1
		next -= next % seg
	}
	rec := WALRecord{LSN: at, WALRecordHeader: h, Next: next}
	if r.opts.KeepData {
		rec.Data = r.data
	}
	return rec, nil
}

// feed adds record bytes: the first WALRecordHeaderSize are kept, the rest
// go into the CRC.
func (r *WALReader) feed(p []byte) {
	if r.opts.KeepData {
		r.data = append(r.data, p...)
	}
	if r.recHdrN < WALRecordHeaderSize {
		n := copy(r.recHdr[r.recHdrN:], p)
		r.recHdrN += n
		p = p[n:]
	}
	r.crc = crc32.Update(r.crc, castagnoli, p)
}

// checkRecordHeader is ValidXLogRecordHeader.
func (r *WALReader) checkRecordHeader(h *WALRecordHeader, at, prev LSN, randAccess bool) error {
	if h.TotLen < WALRecordHeaderSize {
		return r.errAt(at, "invalid record length at %s: expected at least %d, got %d", at, WALRecordHeaderSize, h.TotLen)
	}
	if h.RmID > r.maxBuiltin && h.RmID < rmMinCustomID {
		return r.errAt(at, "invalid resource manager ID %d at %s", h.RmID, at)
	}
	if randAccess && h.Prev >= at || !randAccess && h.Prev != prev {
		return r.errAt(at, "record with incorrect prev-link %s at %s", h.Prev, at)
	}
	return nil
}

// readPage makes page pageAddr current with at least reqLen bytes of it
// read and its header checked, reading as pg_waldump does: no byte at or
// past the end, so a request that would need one is errWALEnd. Entering a
// segment past its first page checks the first page too, for its long
// header (ReadPageInternal).
func (r *WALReader) readPage(pageAddr LSN, reqLen int) error {
	reqLen = max(reqLen, WALShortPageHeaderSize)
	count := WALBlockSize
	if r.end != 0 && pageAddr+WALBlockSize > r.end {
		if pageAddr+LSN(reqLen) > r.end {
			return errWALEnd
		}
		count = int(r.end - pageAddr)
	}
	if r.pageLen > 0 && r.pageAddr == pageAddr {
		return nil // count is the most that may be read, and was
	}
	if count <= WALShortPageHeaderSize {
		return errWALEnd // too little to check a header: pg_waldump stops quietly
	}
	segSize := uint64(r.opts.SegmentSize)
	segNo, segOff := uint64(pageAddr)/segSize, int64(uint64(pageAddr)%segSize)
	if !r.haveLast || segNo != r.lastSegNo {
		if segOff != 0 {
			r.pageLen = 0
			first := pageAddr - LSN(segOff)
			if err := r.load(first, WALBlockSize); err != nil {
				return err
			}
		}
	}
	r.pageLen = 0
	if err := r.load(pageAddr, count); err != nil {
		return err
	}
	r.pageAddr, r.pageLen = pageAddr, count
	return nil
}

// load reads count bytes of page pageAddr into r.page and checks its
// header (XLogReaderValidatePageHeader).
func (r *WALReader) load(pageAddr LSN, count int) error {
	segSize := uint64(r.opts.SegmentSize)
	segNo, segOff := uint64(pageAddr)/segSize, int64(uint64(pageAddr)%segSize)
	name := WALSegmentName(r.opts.TLI, segNo, r.opts.SegmentSize)
	if !r.haveSeg || r.segNo != segNo {
		seg, err := r.opts.Open(segNo)
		if err != nil {
			return fmt.Errorf("could not open WAL segment %s: %w", name, err)
		}
		r.seg, r.segNo, r.haveSeg = seg, segNo, true
	}
	buf := r.page[:count]
	n, err := r.seg.ReadAt(buf, segOff)
	if n < count {
		if err == nil || errors.Is(err, io.EOF) {
			return errorf(name, segOff+int64(n), "WAL segment %s, LSN %s, offset %d: could not read page: read %d of %d", name, pageAddr, segOff, n, count)
		}
		return fmt.Errorf("could not read from WAL segment %s, offset %d: %w", name, segOff, err)
	}
	h, herr := ParseWALPageHeader(buf, name, segOff)
	r.hdr = h
	if herr != nil {
		return errWALEnd // a long header cut by the end: pg_waldump stops quietly
	}
	if h.Magic != r.magic {
		return r.errAt(pageAddr, "invalid magic number %04X in page header (PostgreSQL %d writes %04X)", h.Magic, r.opts.Major, r.magic)
	}
	if h.Info&^xlpAllFlags != 0 {
		return r.errAt(pageAddr, "invalid info bits %04X in page header", h.Info)
	}
	if h.Long() {
		switch {
		case r.opts.SystemIdentifier != 0 && h.SystemIdentifier != r.opts.SystemIdentifier:
			return r.errAt(pageAddr, "WAL file is from different database system: WAL file database system identifier is %d, manifest system identifier is %d", h.SystemIdentifier, r.opts.SystemIdentifier)
		case int64(h.SegmentSize) != r.opts.SegmentSize:
			return r.errAt(pageAddr, "WAL file is from different database system: incorrect segment size in page header (%d, expected %d)", h.SegmentSize, r.opts.SegmentSize)
		case h.BlockSize != WALBlockSize:
			return r.errAt(pageAddr, "WAL file is from different database system: incorrect XLOG_BLCKSZ in page header (%d, expected %d)", h.BlockSize, WALBlockSize)
		}
	} else if segOff == 0 {
		return r.errAt(pageAddr, "invalid info bits %04X in page header: the first page of a segment needs a long header", h.Info)
	}
	if h.PageAddr != pageAddr {
		return r.errAt(pageAddr, "unexpected pageaddr %s in page header", h.PageAddr)
	}
	// Timelines only grow along the WAL, and a segment of timeline T holds
	// nothing written on a later one.
	if pageAddr > r.latestPage {
		if h.TLI < r.latestTLI {
			return r.errAt(pageAddr, "out-of-sequence timeline ID %d (after %d) in page header", h.TLI, r.latestTLI)
		}
	}
	if h.TLI > r.opts.TLI {
		return r.errAt(pageAddr, "timeline ID %d in page header is after timeline %d, whose segment this is", h.TLI, r.opts.TLI)
	}
	r.latestPage, r.latestTLI = pageAddr, h.TLI
	r.lastSegNo, r.haveLast = segNo, true
	return nil
}

// errAt is a problem at lsn: the message starts with the segment holding
// lsn, the LSN and the offset in that segment.
func (r *WALReader) errAt(lsn LSN, format string, args ...any) *Error {
	segSize := uint64(r.opts.SegmentSize)
	name := WALSegmentName(r.opts.TLI, uint64(lsn)/segSize, r.opts.SegmentSize)
	off := int64(uint64(lsn) % segSize)
	return errorf(name, off, "WAL segment %s, LSN %s, offset %d: %s", name, lsn, off, fmt.Sprintf(format, args...))
}

// maxAlign rounds n up to a multiple of 8 (MAXALIGN on 64-bit platforms).
func maxAlign(n uint64) uint64 { return (n + 7) &^ 7 }
