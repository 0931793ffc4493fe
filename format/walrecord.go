package format

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"
)

// What point-in-time recovery looks for in WAL records: the transaction
// commits and aborts that recovery_target_time and recovery_target_xid stop
// at, and the restore points (pg_create_restore_point) that
// recovery_target_name stops after (access/xlog_internal.h, access/xact.h,
// access/xlogrecord.h, catalog/pg_control.h).
const (
	rmXactID         = 1
	xactOpMask       = 0x70
	xactCommit       = 0x00
	xactAbort        = 0x20
	xactCommitPrep   = 0x30
	xactAbortPrep    = 0x40
	xlogRestorePoint = 0x70
	xactHasInfo      = 0x80 // XLOG_XACT_HAS_INFO: an xl_xact_xinfo follows xact_time

	// xl_xact_xinfo.xinfo: which parts follow, in this order (the
	// order ParseCommitRecord and ParseAbortRecord read them in).
	xinfoHasDBInfo       = 1 << 0 // xl_xact_dbinfo, 8 bytes
	xinfoHasSubxacts     = 1 << 1 // int32 n, n TransactionIds
	xinfoHasRelLocators  = 1 << 2 // int32 n, n RelFileLocators of 12 bytes
	xinfoHasDroppedStats = 1 << 8 // int32 n, n xl_xact_stats_items (size by major)
	xinfoHasInvals       = 1 << 3 // int32 n, n SharedInvalidationMessages of 16 bytes (commit only)
	xinfoHasTwophase     = 1 << 4 // the prepared transaction's TransactionId
	restorePointNameN    = 64     // MAXFNAMELEN

	blockIDDataShort  = 255
	blockIDDataLong   = 254
	blockIDOrigin     = 253
	blockIDToplevel   = 252
	maxBlockID        = 32
	bkpBlockHasImage  = 0x10
	bkpBlockHasData   = 0x20
	bkpBlockSameRel   = 0x80
	bkpImageHasHole   = 0x01
	bkpImageCompessed = 0x04 | 0x08 | 0x10 // PGLZ, LZ4, ZSTD
)

// PGEpoch is PostgreSQL's epoch: timestamps count microseconds from it.
var PGEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// PGTime converts a TimestampTz.
func PGTime(us int64) time.Time { return PGEpoch.Add(time.Duration(us) * time.Microsecond) }

// WALEvent is what a record means for recovery targets.
type WALEvent struct {
	Kind WALEventKind
	XID  uint32    // the transaction of a commit or abort
	Time time.Time // the commit's, abort's or restore point's time
	Name string    // the restore point's name
}

// WALEventKind tells the records recovery can stop at apart.
type WALEventKind int

// The kinds of WALEvent; WALNone for every other record.
const (
	WALNone WALEventKind = iota
	WALCommit
	WALAbort
	WALRestorePoint
)

// WALRecordEvent reads a whole record (WALRecord.Data) of a WAL of the
// given major as recovery's recoveryStopsBefore/After do: a commit or abort
// or a restore point. Other records are WALNone. The XID of a COMMIT
// PREPARED or ABORT PREPARED is the prepared transaction's, from the
// record's xl_xact_twophase, not the record header's (that of the session
// that ran COMMIT PREPARED): recovery_target_xid stops at it.
func WALRecordEvent(rec []byte, major int) (WALEvent, error) {
	if len(rec) < WALRecordHeaderSize {
		return WALEvent{}, fmt.Errorf("WAL record of %d bytes is shorter than its header", len(rec))
	}
	h := parseWALRecordHeader(rec)
	info := h.Info &^ xlrInfoMask
	switch {
	case h.RmID == rmXactID:
		op := h.Info & xactOpMask
		kind := WALNone
		switch op {
		case xactCommit, xactCommitPrep:
			kind = WALCommit
		case xactAbort, xactAbortPrep:
			kind = WALAbort
		}
		if kind == WALNone {
			return WALEvent{}, nil
		}
		main, err := walMainData(rec, h)
		if err != nil {
			return WALEvent{}, err
		}
		if len(main) < 8 {
			return WALEvent{}, fmt.Errorf("transaction record of %d bytes of main data has no time", len(main))
		}
		ev := WALEvent{Kind: kind, Time: PGTime(int64(binary.NativeEndian.Uint64(main))), XID: h.XID}
		if op == xactCommitPrep || op == xactAbortPrep {
			if ev.XID, err = twophaseXID(main[8:], h.Info, op == xactCommitPrep, major); err != nil {
				return WALEvent{}, err
			}
		}
		return ev, nil
	case h.RmID == rmXLogID && info == xlogRestorePoint:
		main, err := walMainData(rec, h)
		if err != nil {
			return WALEvent{}, err
		}
		if len(main) < 8+restorePointNameN {
			return WALEvent{}, fmt.Errorf("restore point record of %d bytes of main data, want %d", len(main), 8+restorePointNameN)
		}
		name := main[8 : 8+restorePointNameN]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		return WALEvent{Kind: WALRestorePoint, Time: PGTime(int64(binary.NativeEndian.Uint64(main))), Name: string(name)}, nil
	}
	return WALEvent{}, nil
}

// twophaseXID finds the xl_xact_twophase in what follows xact_time in a
// commit (or abort) record, skipping the parts before it as
// ParseCommitRecord (ParseAbortRecord) does.
func twophaseXID(p []byte, info uint8, commit bool, major int) (uint32, error) {
	m, ok := walMajors[major]
	if !ok {
		return 0, fmt.Errorf("reading WAL of PostgreSQL %d is not supported", major)
	}
	short := fmt.Errorf("prepared transaction record ends before its transaction id")
	if info&xactHasInfo == 0 || len(p) < 4 {
		return 0, short
	}
	xinfo := binary.NativeEndian.Uint32(p)
	p = p[4:]
	skip := func(n int) bool {
		if n < 0 || len(p) < n {
			return false
		}
		p = p[n:]
		return true
	}
	// skipArray skips an int32 count and count items of size each.
	skipArray := func(size int) bool {
		if len(p) < 4 {
			return false
		}
		n := int(int32(binary.NativeEndian.Uint32(p)))
		return n >= 0 && n <= len(p)/size && skip(4+n*size)
	}
	if xinfo&xinfoHasDBInfo != 0 && !skip(8) ||
		xinfo&xinfoHasSubxacts != 0 && !skipArray(4) ||
		xinfo&xinfoHasRelLocators != 0 && !skipArray(12) ||
		xinfo&xinfoHasDroppedStats != 0 && !skipArray(m.statsItemSize) ||
		commit && xinfo&xinfoHasInvals != 0 && !skipArray(16) {
		return 0, short
	}
	if xinfo&xinfoHasTwophase == 0 || len(p) < 4 {
		return 0, short
	}
	return binary.NativeEndian.Uint32(p), nil
}

// walMainData walks the record's block headers as DecodeXLogRecord does and
// returns its main data, which follows every block's data.
func walMainData(rec []byte, h WALRecordHeader) ([]byte, error) {
	if uint64(h.TotLen) != uint64(len(rec)) {
		return nil, fmt.Errorf("WAL record of %d bytes says it has %d", len(rec), h.TotLen)
	}
	p := rec[WALRecordHeaderSize:]
	need := func(n int) error {
		if len(p) < n {
			return fmt.Errorf("WAL record header ends inside a field")
		}
		return nil
	}
	var blockData uint64
	for uint64(len(p)) > blockData {
		id := p[0]
		p = p[1:]
		switch {
		case id == blockIDDataShort:
			if err := need(1); err != nil {
				return nil, err
			}
			return tail(p[1:], blockData, uint64(p[0]))
		case id == blockIDDataLong:
			if err := need(4); err != nil {
				return nil, err
			}
			return tail(p[4:], blockData, uint64(binary.NativeEndian.Uint32(p)))
		case id == blockIDOrigin:
			if err := need(2); err != nil {
				return nil, err
			}
			p = p[2:]
		case id == blockIDToplevel:
			if err := need(4); err != nil {
				return nil, err
			}
			p = p[4:]
		case id <= maxBlockID:
			if err := need(3); err != nil {
				return nil, err
			}
			flags := p[0]
			blockData += uint64(binary.NativeEndian.Uint16(p[1:]))
			p = p[3:]
			if flags&bkpBlockHasImage != 0 {
				if err := need(5); err != nil {
					return nil, err
				}
				blockData += uint64(binary.NativeEndian.Uint16(p))
				bimgInfo := p[4]
				p = p[5:]
				if bimgInfo&bkpImageHasHole != 0 && bimgInfo&bkpImageCompessed != 0 {
					if err := need(2); err != nil {
						return nil, err
					}
					p = p[2:]
				}
			}
			n := 4 // block number
			if flags&bkpBlockSameRel == 0 {
				n += 12 // RelFileLocator
			}
			if err := need(n); err != nil {
				return nil, err
			}
			p = p[n:]
		default:
			return nil, fmt.Errorf("invalid block_id %d in WAL record", id)
		}
	}
	return nil, nil // no main data
}

// tail is the main data of mainLen bytes after blockData bytes of block
// data, which must be all that is left of the record.
func tail(p []byte, blockData, mainLen uint64) ([]byte, error) {
	if blockData+mainLen != uint64(len(p)) {
		return nil, fmt.Errorf("WAL record has %d bytes of data, its headers say %d", len(p), blockData+mainLen)
	}
	return p[blockData:], nil
}
