package capture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/repo"
)

// ArchiveOptions describe a continuous WAL archiver (combinefs archive).
type ArchiveOptions struct {
	Conn *pgconn.Config
	// Repo is the repository archived into: a local directory or an
	// object store (segments.go).
	Repo *repo.Repo
	// Slot is the physical replication slot to stream from ("" for none);
	// CreateSlot makes it when it does not exist.
	Slot       string
	CreateSlot bool
	// Synchronous fsyncs what arrived before every status update, which then
	// reports it flushed: the server may count the archiver as a
	// synchronous standby (pg_receivewal --synchronous).
	Synchronous    bool
	StatusInterval time.Duration
	// Log receives one line per event: connected, timeline switch, lost
	// connection and the wait before the next attempt, stop.
	Log func(string)
	// MaxBackoff caps the wait between reconnection attempts (default 30s).
	MaxBackoff time.Duration
}

// ErrArchiveFatal marks an archiver failure that retrying cannot mend (a
// foreign cluster, a missing slot, WAL the server no longer has).
var ErrArchiveFatal = errors.New("archive cannot continue")

// crashEnv names a phase at which the archiver kills itself with SIGKILL,
// for the crash tests: "partial" (a segment half written), "complete" (a
// whole segment fsynced, not renamed yet) or "renamed" (renamed, the next
// not begun).
const crashEnv = "COMBINEFS_ARCHIVE_CRASH_AT"

// Archive streams WAL into the repository's archive until ctx ends, as
// pg_receivewal does: it resumes where the archive ends (re-streaming the
// .partial segment from its start) or, with an empty archive, where the
// slot or the server is; it reconnects with backoff when the connection
// drops; when ctx ends it fsyncs what it has and returns nil.
func Archive(ctx context.Context, o ArchiveOptions) error {
	if o.Synchronous && o.Repo.Remote() {
		return fmt.Errorf("--synchronous needs a local repository: on %s each status update would upload the whole segment", o.Repo.Dir)
	}
	unlock, err := o.Repo.LockWALArchive(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			o.Log(fmt.Sprintf(format, args...))
		}
	}
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		a := &archiver{o: o, logf: logf, segs: newSegWriter(o.Repo)}
		err := a.run(ctx)
		if ctx.Err() != nil {
			logf("stopped at %s", a.pos)
			return nil
		}
		if errors.Is(err, ErrArchiveFatal) {
			return err
		}
		if a.received > 0 {
			backoff, attempt = time.Second, 1
		}
		logf("%s; reconnecting in %s (attempt %d)", oneLine(err.Error()), backoff, attempt)
		select {
		case <-ctx.Done():
			logf("stopped at %s", a.pos)
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}

// archiver is one connection's worth of streaming.
type archiver struct {
	o    ArchiveOptions
	logf func(string, ...any)
	conn *pgconn.PgConn

	segs     segWriter
	segSize  int64
	tli      uint32
	pos      LSN // end of what has been written
	flushed  LSN // end of what has been fsynced
	fileOpen bool
	fileSeg  uint64
	received int64
}

// fatal marks err as not worth retrying.
func fatal(err error) error { return fmt.Errorf("%w: %w", ErrArchiveFatal, err) }

// storeError is fatal for a failure to write the archive, unless the
// object store was unavailable: then the archiver reconnects after its
// backoff and resumes from the archive's end, as after a restart.
func storeError(err error) error {
	if errors.Is(err, repo.ErrUnavailable) {
		return err
	}
	return fatal(err)
}

func (a *archiver) run(ctx context.Context) error {
	defer a.closeFile()
	conn, err := connect(ctx, a.o.Conn)
	if err != nil {
		return classify(err, "archive")
	}
	a.conn = conn
	defer conn.Close(context.Background())
	stopWake := context.AfterFunc(ctx, func() { conn.Conn().SetReadDeadline(time.Now()) })
	defer stopWake()

	sys, err := identifySystem(ctx, conn)
	if err != nil {
		return err
	}
	info, ok, err := repo.ReadWALInfoOf(ctx, a.o.Repo.Store, a.o.Repo.Dir)
	if err != nil {
		return err
	}
	if err := a.checkSystem(ctx, sys.ID, info, ok); err != nil {
		return err
	}
	if a.segSize, err = walSegmentSize(ctx, conn); err != nil {
		return err
	}
	if ok && info.SegSize != a.segSize {
		return fatal(fmt.Errorf("server %s has WAL segments of %d bytes, the archive in %s of %d", a.o.Conn.Host, a.segSize, a.o.Repo.Dir, info.SegSize))
	}
	if err := a.prepareSlot(ctx); err != nil {
		return err
	}
	if err := a.findStart(ctx, sys); err != nil {
		return err
	}
	for {
		next, nextPos, err := a.stream(ctx)
		if err != nil || next == 0 {
			return err
		}
		// The server ended the timeline: go on with the next from the start
		// of the segment where it begins, as receivelog.c does.
		a.logf("timeline %d ends at %s; following timeline %d", a.tli, nextPos, next)
		a.tli = next
		a.pos = nextPos - LSN(uint64(nextPos)%uint64(a.segSize))
	}
}

// checkSystem refuses a server that is not the repository's cluster: the
// archive's segments (info, when it has any), or else its backups, name the
// cluster.
func (a *archiver) checkSystem(ctx context.Context, id uint64, info repo.WALInfo, ok bool) error {
	want := info.SystemID
	if !ok {
		points, err := a.o.Repo.Points(ctx)
		if err != nil {
			return err
		}
		for _, p := range points {
			if p.SystemID != 0 {
				want = p.SystemID
				break
			}
		}
	}
	if want != 0 && want != id {
		return fatal(fmt.Errorf("server has system identifier %d, the repository %s is of system %d", id, a.o.Repo.Dir, want))
	}
	return nil
}

// prepareSlot makes the slot when asked to and it does not exist yet.
func (a *archiver) prepareSlot(ctx context.Context) error {
	if a.o.Slot == "" || !a.o.CreateSlot {
		return nil
	}
	_, err := simpleQuery(ctx, a.conn, "CREATE_REPLICATION_SLOT "+quoteIdent(a.o.Slot)+" PHYSICAL RESERVE_WAL")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // duplicate_object
		return nil
	}
	if err != nil {
		return a.serverError(err, "create replication slot "+a.o.Slot)
	}
	a.logf("created replication slot %s", a.o.Slot)
	return nil
}

// findStart picks where streaming begins, as pg_receivewal's
// FindStreamingStart does: after the newest whole segment of the archive,
// or at the start of its .partial segment (re-streamed whole); with an
// empty archive, the slot's restart LSN, else the server's position.
func (a *archiver) findStart(ctx context.Context, sys system) error {
	tls, err := repo.WALContentsOf(ctx, a.o.Repo.Store, a.segSize)
	if err != nil {
		return err
	}
	// The newest place the archive reaches: after a whole segment, or at
	// the start of a .partial one; on a tie the later timeline.
	found := false
	consider := func(tli uint32, pos LSN) {
		if !found || pos > a.pos || pos == a.pos && tli > a.tli {
			a.tli, a.pos, found = tli, pos, true
		}
	}
	for _, t := range tls {
		for _, s := range t.Segs {
			consider(t.TLI, LSN((s+1)*uint64(a.segSize)))
		}
		for _, s := range t.Partial {
			consider(t.TLI, LSN(s*uint64(a.segSize)))
		}
	}
	switch {
	case found:
		if a.tli > sys.Timeline {
			return fatal(fmt.Errorf("the archive has reached timeline %d, the server is on timeline %d", a.tli, sys.Timeline))
		}
	case a.o.Slot != "":
		lsn, tli, ok, err := a.readSlot(ctx)
		if err != nil {
			return err
		}
		if ok {
			a.pos, a.tli = lsn-LSN(uint64(lsn)%uint64(a.segSize)), tli
			break
		}
		fallthrough
	default:
		a.pos, a.tli = sys.XLogPos-LSN(uint64(sys.XLogPos)%uint64(a.segSize)), sys.Timeline
	}
	a.flushed = a.pos
	return nil
}

// readSlot reads the slot's restart LSN and timeline (READ_REPLICATION_SLOT,
// PostgreSQL 15 and later); ok is false for a slot that never reserved WAL.
func (a *archiver) readSlot(ctx context.Context) (LSN, uint32, bool, error) {
	rows, err := simpleQuery(ctx, a.conn, "READ_REPLICATION_SLOT "+quoteIdent(a.o.Slot))
	if err != nil {
		return 0, 0, false, a.serverError(err, "READ_REPLICATION_SLOT")
	}
	if len(rows) != 1 || len(rows[0]) != 3 {
		return 0, 0, false, protocolErrorf("READ_REPLICATION_SLOT: unexpected answer")
	}
	if rows[0][0] == nil {
		return 0, 0, false, fatal(fmt.Errorf("replication slot %q does not exist (use --create-slot)", a.o.Slot))
	}
	if rows[0][1] == nil || rows[0][2] == nil {
		return 0, 0, false, nil
	}
	lsn, err := ParseLSN(string(rows[0][1]))
	if err != nil {
		return 0, 0, false, protocolErrorf("READ_REPLICATION_SLOT: %v", err)
	}
	tli, err := strconv.ParseUint(string(rows[0][2]), 10, 32)
	if err != nil {
		return 0, 0, false, protocolErrorf("READ_REPLICATION_SLOT: bad timeline %q", rows[0][2])
	}
	return lsn, uint32(tli), true, nil
}

// serverError classifies err: server errors that say the server is not
// ready (starting, shutting down, out of connections), a slot still held by
// the walsender of a connection that died (object_in_use, until the server
// notices) or a connection that broke are retried; other server errors are
// fatal.
func (a *archiver) serverError(err error, what string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if c := pgErr.Code; !strings.HasPrefix(c, "57") && !strings.HasPrefix(c, "08") && !strings.HasPrefix(c, "53") && c != "55006" {
			return fatal(classify(err, what))
		}
	}
	return classify(err, what)
}

// stream runs START_REPLICATION from a.pos on a.tli until the connection
// ends (an error) or the server ends the timeline: then it returns the next
// timeline and where it starts.
func (a *archiver) stream(ctx context.Context) (next uint32, nextPos LSN, err error) {
	if a.tli > 1 {
		if err := a.fetchHistory(ctx, a.tli); err != nil {
			return 0, 0, err
		}
	}
	cmd := "START_REPLICATION "
	if a.o.Slot != "" {
		cmd += "SLOT " + quoteIdent(a.o.Slot) + " "
	}
	cmd += fmt.Sprintf("PHYSICAL %s TIMELINE %d", a.pos, a.tli)
	a.conn.Frontend().Send(&pgproto3.Query{String: cmd})
	if err := a.conn.Frontend().Flush(); err != nil {
		return 0, 0, classify(err, "START_REPLICATION")
	}
	r := &streamReader{ctx: ctx, src: a.conn, notice: func(s string) { a.logf("%s", s) }}
	msg, err := r.next()
	if err != nil {
		return 0, 0, a.serverError(err, "START_REPLICATION")
	}
	if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
		return 0, 0, classify(protocolErrorf("got %s, want CopyBothResponse", msgName(msg)), "START_REPLICATION")
	}
	a.logf("streaming WAL from %s on timeline %d into %s", a.pos, a.tli, a.segs.where(a.tli))
	if err := a.loop(ctx); err != nil {
		return 0, 0, err
	}
	return a.endOfTimeline(ctx)
}

// loop receives until the server ends the copy (nil) or something fails.
func (a *archiver) loop(ctx context.Context) error {
	nextStatus := time.Now().Add(a.o.StatusInterval)
	for {
		if ctx.Err() != nil {
			return a.stop()
		}
		a.conn.Conn().SetReadDeadline(nextStatus)
		msg, err := a.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return a.stop()
			}
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				if err := a.sendStatus(); err != nil {
					return err
				}
				nextStatus = time.Now().Add(a.o.StatusInterval)
				continue
			}
			return classify(receiveError(ctx, err), "WAL streaming")
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			reply, err := a.handle(m.Data)
			if err != nil {
				return err
			}
			if reply {
				// The server asks where we are: fsync first, as
				// receivelog.c does, so that a server shutting down, which
				// waits until everything sent is flushed, can finish.
				if err := a.flush(); err != nil {
					return err
				}
			}
			if reply || a.o.Synchronous && m.Data[0] == 'w' || !time.Now().Before(nextStatus) {
				if err := a.sendStatus(); err != nil {
					return err
				}
				nextStatus = time.Now().Add(a.o.StatusInterval)
			}
		case *pgproto3.CopyDone:
			return nil
		case *pgproto3.CommandComplete:
			// A walsender that is shutting down ends the command once the
			// archiver has everything, then the connection.
			return fmt.Errorf("%w: the server ended streaming at %s (shutting down?)", ErrConnLost, a.pos)
		case *pgproto3.ErrorResponse:
			return a.serverError(pgconn.ErrorResponseToPgError(m), "WAL streaming")
		case *pgproto3.NoticeResponse:
			passNotice(func(s string) { a.logf("%s", s) }, m)
		case *pgproto3.ParameterStatus:
		default:
			return classify(protocolErrorf("got %s while streaming WAL", msgName(msg)), "WAL streaming")
		}
	}
}

// handle processes one CopyData message; reply reports a keepalive that
// asks for an answer now.
func (a *archiver) handle(data []byte) (reply bool, err error) {
	if len(data) == 0 {
		return false, protocolErrorf("empty CopyData message in the WAL stream")
	}
	switch data[0] {
	case 'w':
		if len(data) < 25 {
			return false, protocolErrorf("WAL data message of %d bytes is too short", len(data))
		}
		start := LSN(binary.BigEndian.Uint64(data[1:]))
		if start != a.pos {
			return false, protocolErrorf("got WAL data at %s, expected %s", start, a.pos)
		}
		return false, a.write(data[25:])
	case 'k':
		if len(data) != 18 {
			return false, protocolErrorf("keepalive message of %d bytes, want 18", len(data))
		}
		return data[17] == 1, nil
	}
	return false, protocolErrorf("unknown WAL stream message type %q", data[0])
}

// write stores WAL data that begins at a.pos, segment by segment.
func (a *archiver) write(data []byte) error {
	for len(data) > 0 {
		segno := uint64(a.pos) / uint64(a.segSize)
		off := int64(uint64(a.pos) % uint64(a.segSize))
		if !a.fileOpen || a.fileSeg != segno {
			if off != 0 {
				return protocolErrorf("WAL data for the middle of segment %d, which was never begun", segno)
			}
			if err := a.segs.open(a.tli, segno, a.segSize); err != nil {
				return err
			}
			a.fileOpen, a.fileSeg = true, segno
		}
		n := min(int64(len(data)), a.segSize-off)
		if err := a.segs.writeAt(data[:n], off); err != nil {
			return storeError(err)
		}
		a.pos += LSN(n)
		a.received += n
		data = data[n:]
		crashAt("partial")
		if off+n == a.segSize {
			if err := a.complete(); err != nil {
				return err
			}
		}
	}
	return nil
}

// complete makes a whole segment durable under its name.
func (a *archiver) complete() error {
	a.fileOpen = false
	if err := a.segs.complete(); err != nil {
		return storeError(err)
	}
	a.flushed = a.pos
	crashAt("renamed")
	return nil
}

// flush makes what arrived of the segment being written durable.
func (a *archiver) flush() error {
	if a.fileOpen && a.flushed < a.pos {
		if err := a.segs.flush(); err != nil {
			return storeError(err)
		}
	}
	a.flushed = a.pos
	return nil
}

// sendStatus reports what was written and what is on disk; with
// Synchronous it first makes everything written durable.
func (a *archiver) sendStatus() error {
	if a.o.Synchronous || a.o.Repo.Remote() {
		if err := a.flush(); err != nil {
			return err
		}
	}
	return sendStandbyStatus(a.conn, a.pos, a.flushed, false)
}

// stop ends streaming for a stop of the archiver: what arrived is fsynced
// and reported.
func (a *archiver) stop() error {
	if err := a.flush(); err != nil {
		return err
	}
	a.conn.Conn().SetDeadline(time.Now().Add(2 * time.Second))
	a.sendStatus()
	return nil
}

// endOfTimeline answers the server's CopyDone and reads the next timeline
// and where it starts.
func (a *archiver) endOfTimeline(ctx context.Context) (uint32, LSN, error) {
	if ctx.Err() != nil {
		return 0, 0, nil
	}
	if err := a.flush(); err != nil {
		return 0, 0, err
	}
	a.conn.Frontend().Send(&pgproto3.CopyDone{})
	if err := a.conn.Frontend().Flush(); err != nil {
		return 0, 0, classify(err, "end of timeline")
	}
	r := &streamReader{ctx: ctx, src: a.conn}
	var next uint32
	var nextPos LSN
	for {
		msg, err := r.next()
		if err != nil {
			return 0, 0, a.serverError(err, "end of timeline")
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) != 2 {
				return 0, 0, protocolErrorf("end of timeline: %d fields, want 2", len(m.Values))
			}
			t, err1 := strconv.ParseUint(string(m.Values[0]), 10, 32)
			p, err2 := ParseLSN(string(m.Values[1]))
			if err1 != nil || err2 != nil || t <= uint64(a.tli) {
				return 0, 0, protocolErrorf("end of timeline: bad next timeline %q at %q", m.Values[0], m.Values[1])
			}
			next, nextPos = uint32(t), p
		case *pgproto3.ReadyForQuery:
			if next == 0 {
				return 0, 0, fmt.Errorf("%w: the server ended streaming on timeline %d at %s without naming the next timeline", ErrConnLost, a.tli, a.pos)
			}
			// The old timeline's last segment stays .partial: the new
			// timeline's file of that segment holds its WAL.
			a.closeFile()
			return next, nextPos, nil
		}
	}
}

// fetchHistory archives timeline tli's history file, which recovery needs
// to follow the timeline.
func (a *archiver) fetchHistory(ctx context.Context, tli uint32) error {
	name := repo.WALObject(tli, repo.WALHistoryName(tli))
	if objs, err := a.o.Repo.Store.List(ctx, name); err == nil && len(objs) > 0 {
		return nil
	}
	rows, err := simpleQuery(ctx, a.conn, fmt.Sprintf("TIMELINE_HISTORY %d", tli))
	if err != nil {
		return a.serverError(err, "TIMELINE_HISTORY")
	}
	if len(rows) != 1 || len(rows[0]) != 2 || string(rows[0][0]) != repo.WALHistoryName(tli) {
		return protocolErrorf("TIMELINE_HISTORY: unexpected answer")
	}
	if err := a.o.Repo.Store.Put(ctx, name, rows[0][1]); err != nil && !errors.Is(err, fs.ErrExist) {
		return storeError(err)
	}
	return nil
}

// closeFile makes what arrived of the segment being written durable and
// lets go of it.
func (a *archiver) closeFile() {
	if a.fileOpen {
		a.segs.close()
		a.fileOpen = false
	}
}

// crashAt kills the process at phase when the crash tests ask for it.
func crashAt(phase string) {
	if v := os.Getenv(crashEnv); v != "" && v == phase {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// mkdirDurable makes dir and its parent entries durable.
func mkdirDurable(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := dio.Sync(filepath.Dir(dir)); err != nil {
		return err
	}
	return dio.Sync(filepath.Dir(filepath.Dir(dir)))
}
