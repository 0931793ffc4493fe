package capture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/combinefs/combinefs/format"
)

// walStreamer receives WAL over its own replication connection into a
// pg_wal directory while the backup runs, like pg_basebackup -X stream
// (src/bin/pg_basebackup/receivelog.c): START_REPLICATION from the start of
// the backup's first segment, each segment written under its final name and
// sized to a whole segment, completed segments marked .done in
// archive_status, the last one left as far as it got. It stops once it has
// everything up to the end LSN that BASE_BACKUP reports.
type walStreamer struct {
	conn           *pgconn.PgConn
	dir            string // the backup's pg_wal
	segSize        int64
	slot           string // temporary slot, "" when none could be made
	timeline       uint32
	statusInterval time.Duration
	out            output
	notice         func(string)
	// onFail is called, from the streaming goroutine, when streaming fails,
	// so that the backup stops at once.
	onFail func(error)

	mu      sync.Mutex // guards stopAt, hasStop and the read deadline
	stopAt  LSN
	hasStop bool

	file     outFile // the segment being written, or nil
	fileSeg  uint64
	fileName string
	pos      LSN // the end of what has been written
	started  bool
	bytes    int64

	done chan error
}

// timeline history files, as TIMELINE_HISTORY names them.
var historyName = regexp.MustCompile(`^[0-9A-F]{8}\.history$`)

// openWALStreamer opens the WAL connection, checks that it reaches the same
// cluster, and makes a temporary physical slot that keeps the server from
// recycling WAL the backup needs. It is called before BASE_BACKUP so that
// the slot holds WAL from before the backup's start.
func openWALStreamer(ctx context.Context, cfg *pgconn.Config, sysID uint64, dir string, segSize int64, o *Options, out output) (*walStreamer, error) {
	conn, err := connect(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("WAL streaming connection: %w", err)
	}
	w := &walStreamer{conn: conn, dir: dir, segSize: segSize, statusInterval: o.StatusInterval, out: out, notice: o.Notice}
	if w.statusInterval <= 0 {
		w.statusInterval = 10 * time.Second
	}
	sys, err := identifySystem(ctx, conn)
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("WAL streaming connection: %w", err)
	}
	if sys.ID != sysID {
		conn.Close(context.Background())
		return nil, fmt.Errorf("WAL streaming connection reached system %d, the backup connection system %d", sys.ID, sysID)
	}
	slot := fmt.Sprintf("combinefs_%d", conn.PID())
	_, err = simpleQuery(ctx, conn, "CREATE_REPLICATION_SLOT "+quoteIdent(slot)+" TEMPORARY PHYSICAL (RESERVE_WAL)")
	if err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			conn.Close(context.Background())
			return nil, classify(err, "create temporary replication slot")
		}
		// Without a slot the server may recycle WAL before it is streamed,
		// which START_REPLICATION would then report; pg_basebackup --no-slot
		// takes the same chance.
		if w.notice != nil {
			w.notice("WARNING: could not create a temporary replication slot (" + pgErr.Message + "); streaming WAL without one")
		}
	} else {
		w.slot = slot
	}
	return w, nil
}

// start begins streaming from the segment holding startLSN on timeline
// tli, on its own goroutine; wait returns its outcome.
func (w *walStreamer) start(ctx context.Context, startLSN LSN, tli uint32) error {
	if tli > 1 {
		if err := w.fetchHistory(ctx, tli); err != nil {
			return err
		}
	}
	w.timeline = tli
	w.pos = startLSN - LSN(uint64(startLSN)%uint64(w.segSize))
	cmd := "START_REPLICATION "
	if w.slot != "" {
		cmd += "SLOT " + quoteIdent(w.slot) + " "
	}
	cmd += fmt.Sprintf("PHYSICAL %s TIMELINE %d", w.pos, tli)
	w.conn.Frontend().Send(&pgproto3.Query{String: cmd})
	if err := w.conn.Frontend().Flush(); err != nil {
		return classify(err, "START_REPLICATION")
	}
	r := &streamReader{ctx: ctx, src: w.conn, notice: w.notice}
	msg, err := r.next()
	if err != nil {
		return classify(err, "START_REPLICATION")
	}
	if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
		return classify(protocolErrorf("got %s, want CopyBothResponse", msgName(msg)), "START_REPLICATION")
	}
	w.done = make(chan error, 1)
	go func() {
		err := w.loop(ctx, r)
		if err != nil {
			err = classify(err, "WAL streaming")
			if w.onFail != nil {
				w.onFail(err)
			}
		}
		w.done <- err
	}()
	return nil
}

// fetchHistory writes the history file of timeline tli into pg_wal, which
// recovery needs to follow the timeline (receivelog.c does the same).
func (w *walStreamer) fetchHistory(ctx context.Context, tli uint32) error {
	rows, err := simpleQuery(ctx, w.conn, fmt.Sprintf("TIMELINE_HISTORY %d", tli))
	if err != nil {
		return classify(err, "TIMELINE_HISTORY")
	}
	if len(rows) != 1 || len(rows[0]) != 2 || !historyName.Match(rows[0][0]) {
		return protocolErrorf("TIMELINE_HISTORY: unexpected answer")
	}
	return w.out.writeFile(filepath.Join(w.dir, string(rows[0][0])), rows[0][1])
}

// stop tells the streamer where the backup ended; it stops once it has the
// WAL up to there.
func (w *walStreamer) stop(end LSN) {
	w.mu.Lock()
	w.stopAt, w.hasStop = end, true
	// Wake a receive that is waiting for more WAL.
	w.conn.Conn().SetReadDeadline(time.Now())
	w.mu.Unlock()
}

// wake interrupts a waiting receive so that the loop sees ctx's end.
func (w *walStreamer) wake() {
	w.mu.Lock()
	w.conn.Conn().SetReadDeadline(time.Now())
	w.mu.Unlock()
}

// wait returns the streamer's outcome once it has finished, and closes its
// connection and the last segment: a segment that fails to close (on an
// object store, its upload) fails the capture, so no point lacks it.
func (w *walStreamer) wait() error {
	var err error
	if w.done != nil {
		err = <-w.done
	}
	var cerr error
	if w.file != nil {
		cerr = w.file.close()
		w.file = nil
	}
	w.closeConn()
	if err == nil {
		err = cerr
	}
	return err
}

// abort closes the connection and drops any open segment (for a failed
// capture, whose output is removed).
func (w *walStreamer) abort() {
	if w.file != nil {
		w.file.abort()
		w.file = nil
	}
	w.closeConn()
}

func (w *walStreamer) closeConn() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	w.conn.Close(ctx)
	cancel()
}

func (w *walStreamer) loop(ctx context.Context, r *streamReader) error {
	nextStatus := time.Now().Add(w.statusInterval)
	for {
		w.mu.Lock()
		if ctx.Err() != nil {
			w.mu.Unlock()
			return context.Cause(ctx)
		}
		if w.hasStop && w.pos >= w.stopAt {
			w.mu.Unlock()
			return w.finish()
		}
		w.conn.Conn().SetReadDeadline(nextStatus)
		w.mu.Unlock()

		msg, err := w.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				if !time.Now().Before(nextStatus) {
					if err := w.sendStatus(false); err != nil {
						return err
					}
					nextStatus = time.Now().Add(w.statusInterval)
				}
				continue
			}
			return receiveError(ctx, err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := w.handle(m.Data); err != nil {
				return err
			}
			if len(m.Data) > 0 && m.Data[0] == 'k' && m.Data[len(m.Data)-1] == 1 {
				if err := w.sendStatus(false); err != nil {
					return err
				}
				nextStatus = time.Now().Add(w.statusInterval)
			}
		case *pgproto3.CopyDone:
			return fmt.Errorf("server ended WAL streaming at %s before the backup's end", w.pos)
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		case *pgproto3.NoticeResponse:
			passNotice(w.notice, m)
		case *pgproto3.ParameterStatus:
		default:
			return protocolErrorf("got %s while streaming WAL", msgName(msg))
		}
	}
}

// handle processes one CopyData message of the replication stream.
func (w *walStreamer) handle(data []byte) error {
	if len(data) == 0 {
		return protocolErrorf("empty CopyData message in the WAL stream")
	}
	switch data[0] {
	case 'w': // XLogData: start, end of WAL on server, send time, data
		if len(data) < 25 {
			return protocolErrorf("WAL data message of %d bytes is too short", len(data))
		}
		start := LSN(binary.BigEndian.Uint64(data[1:]))
		if start != w.pos {
			return protocolErrorf("got WAL data at %s, expected %s", start, w.pos)
		}
		return w.write(data[25:])
	case 'k': // keepalive: end of WAL on server, send time, reply requested
		if len(data) != 18 {
			return protocolErrorf("keepalive message of %d bytes, want 18", len(data))
		}
		return nil
	}
	return protocolErrorf("unknown WAL stream message type %q", data[0])
}

// write stores WAL data that begins at w.pos.
func (w *walStreamer) write(data []byte) error {
	for len(data) > 0 {
		segno := uint64(w.pos) / uint64(w.segSize)
		off := int64(uint64(w.pos) % uint64(w.segSize))
		if w.file == nil || w.fileSeg != segno {
			if off != 0 && w.started {
				return protocolErrorf("WAL data for the middle of segment %d, which was never begun", segno)
			}
			if err := w.open(segno); err != nil {
				return err
			}
		}
		n := min(int64(len(data)), w.segSize-off)
		if _, err := w.file.WriteAt(data[:n], off); err != nil {
			return err
		}
		w.pos += LSN(n)
		w.bytes += n
		data = data[n:]
		if off+n == w.segSize {
			if err := w.complete(); err != nil {
				return err
			}
		}
	}
	return nil
}

// open creates the file of segment segno at full size (the rest reads as
// zeros, like the preallocated file pg_basebackup writes).
func (w *walStreamer) open(segno uint64) error {
	w.started = true
	name := format.WALSegmentName(w.timeline, segno, w.segSize)
	f, err := w.out.createSegment(filepath.Join(w.dir, name), w.segSize)
	if err != nil {
		return err
	}
	w.file, w.fileSeg, w.fileName = f, segno, name
	return nil
}

// complete finishes a whole segment and marks it archived (.done), so that
// a server started on the backup does not archive it again.
func (w *walStreamer) complete() error {
	err := w.file.close()
	w.file = nil
	if err != nil {
		return err
	}
	return w.out.writeFile(filepath.Join(w.dir, "archive_status", w.fileName+".done"), nil)
}

// finish ends the COPY: CopyDone, then whatever the server still sends, up
// to ReadyForQuery, for a short while. The WAL is complete by now, so a
// failure here does not matter.
func (w *walStreamer) finish() error {
	if err := w.sendStatus(false); err != nil {
		return nil
	}
	w.conn.Frontend().Send(&pgproto3.CopyDone{})
	if err := w.conn.Frontend().Flush(); err != nil {
		return nil
	}
	w.conn.Conn().SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		msg, err := w.conn.ReceiveMessage(context.Background())
		if err != nil {
			return nil
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			w.conn.Conn().SetReadDeadline(time.Time{})
			return nil
		}
	}
}

// sendStatus sends a standby status update: written and flushed up to pos.
func (w *walStreamer) sendStatus(replyRequested bool) error {
	return sendStandbyStatus(w.conn, w.pos, w.pos, replyRequested)
}

// sendStandbyStatus sends a standby status update (the 'r' message):
// written and flushed up to the given positions, nothing applied.
func sendStandbyStatus(conn *pgconn.PgConn, written, flushed LSN, replyRequested bool) error {
	buf := make([]byte, 34)
	buf[0] = 'r'
	binary.BigEndian.PutUint64(buf[1:], uint64(written))
	binary.BigEndian.PutUint64(buf[9:], uint64(flushed))
	binary.BigEndian.PutUint64(buf[17:], 0)
	binary.BigEndian.PutUint64(buf[25:], uint64(pgTime(time.Now())))
	if replyRequested {
		buf[33] = 1
	}
	conn.Frontend().Send(&pgproto3.CopyData{Data: buf})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("%w: send status update: %v", ErrConnLost, err)
	}
	return nil
}

// pgTime is t in microseconds since PostgreSQL's epoch.
func pgTime(t time.Time) int64 { return t.Sub(format.PGEpoch).Microseconds() }
