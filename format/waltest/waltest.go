// Package waltest writes synthetic WAL for tests, laid out the way the
// server's XLogInsert lays it out: page headers (the long one on a
// segment's first page), records MAXALIGNed, records that do not fit going
// on over the next pages (and segments) with XLP_FIRST_IS_CONTRECORD and
// xlp_rem_len. format's reader tests and verify's tests both build on it.
package waltest

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/combinefs/combinefs/format"
)

const blk = format.WALBlockSize

// Builder holds the pages written so far; tests may edit them (Pages, At)
// and the fields, which the next page or record written uses.
type Builder struct {
	Major   int
	Magic   uint16
	TLI     uint32
	SysID   uint64
	SegSize int64
	Pages   map[format.LSN][]byte // by page address
	Pos     format.LSN            // where the next record goes
	Prev    format.LSN            // the xl_prev of the next record
	Recs    []format.WALRecord    // every record written (LSN and Next)
}

// New starts writing at page boundary at, for PostgreSQL major.
func New(major int, sysID uint64, segSize int64, at format.LSN) *Builder {
	magic, ok := format.WALPageMagic(major)
	if !ok {
		panic(fmt.Sprintf("waltest: no WAL page magic for PostgreSQL %d", major))
	}
	return &Builder{Major: major, Magic: magic, TLI: 1, SysID: sysID, SegSize: segSize,
		Pages: map[format.LSN][]byte{}, Pos: at, Prev: at - 0x28}
}

// InitPage writes the header of page addr; rem is the length still to come
// of a record continued onto it. It returns the header's size.
func (b *Builder) InitPage(addr format.LSN, rem uint32) int {
	p := make([]byte, blk)
	info := uint16(0)
	hsz := format.WALShortPageHeaderSize
	if int64(addr)%b.SegSize == 0 {
		info |= 0x0002 // XLP_LONG_HEADER
		hsz = format.WALLongPageHeaderSize
		binary.NativeEndian.PutUint64(p[24:], b.SysID)
		binary.NativeEndian.PutUint32(p[32:], uint32(b.SegSize))
		binary.NativeEndian.PutUint32(p[36:], blk)
	}
	if rem > 0 {
		info |= 0x0001 // XLP_FIRST_IS_CONTRECORD
	}
	binary.NativeEndian.PutUint16(p[0:], b.Magic)
	binary.NativeEndian.PutUint16(p[2:], info)
	binary.NativeEndian.PutUint32(p[4:], b.TLI)
	binary.NativeEndian.PutUint64(p[8:], uint64(addr))
	binary.NativeEndian.PutUint32(p[16:], rem)
	b.Pages[addr] = p
	return hsz
}

// Add writes a record of resource manager rmid with dataLen bytes after its
// header and returns where it starts; mutate, if set, may change the whole
// record before its CRC is computed.
func (b *Builder) Add(rmid, info uint8, dataLen int, mutate func(rec []byte)) format.LSN {
	rec := make([]byte, format.WALRecordHeaderSize+dataLen)
	for i := format.WALRecordHeaderSize; i < len(rec); i++ {
		rec[i] = byte(i*131 + dataLen)
	}
	binary.NativeEndian.PutUint32(rec[0:], uint32(len(rec)))
	binary.NativeEndian.PutUint32(rec[4:], 1000+uint32(len(b.Recs)))
	binary.NativeEndian.PutUint64(rec[8:], uint64(b.Prev))
	rec[16], rec[17] = info, rmid
	if mutate != nil {
		mutate(rec)
	}
	binary.NativeEndian.PutUint32(rec[20:], format.WALRecordCRC(rec))
	if b.Pos%blk == 0 {
		b.Pos += format.LSN(b.InitPage(b.Pos, 0))
	}
	start := b.Pos
	for rest := rec; len(rest) > 0; {
		page := b.Pos &^ (blk - 1)
		if b.Pos == page {
			b.Pos += format.LSN(b.InitPage(page, uint32(len(rest))))
		}
		n := copy(b.Pages[page][b.Pos-page:], rest)
		rest = rest[n:]
		b.Pos += format.LSN(n)
	}
	b.Pos = (b.Pos + 7) &^ 7
	next := b.Pos
	if rmid == 0 && info&0xF0 == 0x40 { // XLOG_SWITCH takes the rest of its segment
		seg := format.LSN(b.SegSize)
		next = (b.Pos + seg - 1) / seg * seg
		b.Pos = next
	}
	b.Prev = start
	b.Recs = append(b.Recs, format.WALRecord{LSN: start, Next: next})
	return start
}

// At returns the byte at lsn; a page not written yet is added, as zeros.
func (b *Builder) At(lsn format.LSN) *byte {
	page := lsn &^ (blk - 1)
	if b.Pages[page] == nil {
		b.Pages[page] = make([]byte, blk)
	}
	return &b.Pages[page][lsn%blk]
}

// Segments lists the numbers of the segments with a page written, in order.
func (b *Builder) Segments() []uint64 {
	var segs []uint64
	for addr := range b.Pages {
		if s := uint64(addr) / uint64(b.SegSize); !slices.Contains(segs, s) {
			segs = append(segs, s)
		}
	}
	slices.Sort(segs)
	return segs
}

// Segment is the whole segment file segNo: its pages, zeros elsewhere.
func (b *Builder) Segment(segNo uint64) []byte {
	out := make([]byte, b.SegSize)
	base := format.LSN(segNo * uint64(b.SegSize))
	for addr, p := range b.Pages {
		if addr >= base && int64(addr-base) < b.SegSize {
			copy(out[addr-base:], p)
		}
	}
	return out
}

// pgMicros is tm in microseconds since PostgreSQL's epoch.
func pgMicros(tm time.Time) uint64 { return uint64(tm.Sub(format.PGEpoch).Microseconds()) }

// mainData returns a mutate for Add that lays out a record's data as a
// main-data-only record (XLR_BLOCK_ID_DATA_SHORT, length, data) with xl_xid
// xid.
func mainData(xid uint32, main []byte) (int, func(rec []byte)) {
	return 2 + len(main), func(rec []byte) {
		binary.NativeEndian.PutUint32(rec[4:], xid)
		rec[format.WALRecordHeaderSize] = 255
		rec[format.WALRecordHeaderSize+1] = byte(len(main))
		copy(rec[format.WALRecordHeaderSize+2:], main)
	}
}

// Commit adds the commit record of transaction xid at tm (RM_XACT_ID,
// XLOG_XACT_COMMIT; xl_xact_commit starts with xact_time).
func (b *Builder) Commit(xid uint32, tm time.Time) format.LSN {
	main := binary.NativeEndian.AppendUint64(nil, pgMicros(tm))
	main = binary.NativeEndian.AppendUint32(main, 0) // xinfo
	n, mutate := mainData(xid, main)
	return b.Add(1, 0x00, n, mutate)
}

// Abort adds the abort record of transaction xid at tm.
func (b *Builder) Abort(xid uint32, tm time.Time) format.LSN {
	main := binary.NativeEndian.AppendUint64(nil, pgMicros(tm))
	main = binary.NativeEndian.AppendUint32(main, 0)
	n, mutate := mainData(xid, main)
	return b.Add(1, 0x20, n, mutate)
}

// RestorePoint adds the record pg_create_restore_point(name) writes at tm
// (RM_XLOG_ID, XLOG_RESTORE_POINT, xl_restore_point).
func (b *Builder) RestorePoint(name string, tm time.Time) format.LSN {
	main := binary.NativeEndian.AppendUint64(nil, pgMicros(tm))
	var nm [64]byte
	copy(nm[:], name)
	n, mutate := mainData(0, append(main, nm[:]...))
	return b.Add(0, 0x70, n, mutate)
}

// XactPrepared adds the COMMIT PREPARED (commit) or ABORT PREPARED record
// of prepared transaction xid, written at tm by a session whose own xid is
// sessionXID, with every optional part before xl_xact_twophase present n
// times (database info, subtransactions, relations, dropped statistics
// entries of statsSize bytes, and for a commit invalidation messages), then
// the GID.
func (b *Builder) XactPrepared(commit bool, xid, sessionXID uint32, tm time.Time, statsSize, n int) format.LSN {
	le := binary.NativeEndian
	main := le.AppendUint64(nil, pgMicros(tm))
	xinfo := uint32(1<<0 | 1<<1 | 1<<2 | 1<<8 | 1<<4 | 1<<7) // dbinfo, subxacts, rels, stats, twophase, gid
	if commit {
		xinfo |= 1 << 3 // invals
	}
	main = le.AppendUint32(main, xinfo)
	main = le.AppendUint64(main, 0x0000_4000_0000_1663) // dbId, tsId
	array := func(size int) {
		main = le.AppendUint32(main, uint32(n))
		for i := 0; i < n*size; i++ {
			main = append(main, byte(0xA0+i))
		}
	}
	array(4)
	array(12)
	array(statsSize)
	if commit {
		array(16)
	}
	main = le.AppendUint32(main, xid)
	main = append(main, "gid-1\x00"...)
	info := uint8(0x40 | 0x80) // XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO
	if commit {
		info = 0x30 | 0x80
	}
	sz, mutate := mainData(sessionXID, main)
	return b.Add(1, info, sz, mutate)
}
