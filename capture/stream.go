package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// messageSource is where backend messages come from: a *pgconn.PgConn.
type messageSource interface {
	ReceiveMessage(ctx context.Context) (pgproto3.BackendMessage, error)
}

// streamReader reads the server's answer to BASE_BACKUP and checks that it
// follows the protocol. It never calls ReceiveMessage with a cancellable
// context (pgconn would start a watcher goroutine per message); instead the
// caller arranges for ctx's cancellation to break the connection, and
// streamReader reports ctx's cause rather than the resulting I/O error.
type streamReader struct {
	ctx    context.Context
	src    messageSource
	notice func(string)
}

// tablespace is one row of BASE_BACKUP's tablespace list.
type tablespace struct {
	OID      uint32 // 0 for the main data directory
	Location string // "" for the main data directory
	SizeKB   int64  // -1 when the server did not estimate it
}

// backupStart is what the server says before the archives.
type backupStart struct {
	StartLSN    LSN
	Timeline    uint32
	Tablespaces []tablespace
}

// streamSink receives the archives and the manifest. The slices passed to
// archiveData and manifestData are only valid during the call.
type streamSink interface {
	beginArchive(name, location string) error
	archiveData(p []byte) error
	endArchive() error
	beginManifest() error
	manifestData(p []byte) error
	endManifest() error
	progress(bytesDone int64)
}

// next returns the next message that matters: notices are passed on,
// parameter changes dropped, a server error returned as *pgconn.PgError.
func (r *streamReader) next() (pgproto3.BackendMessage, error) {
	for {
		msg, err := r.src.ReceiveMessage(context.Background())
		if err != nil {
			return nil, receiveError(r.ctx, err)
		}
		switch m := msg.(type) {
		case *pgproto3.NoticeResponse:
			passNotice(r.notice, m)
			continue
		case *pgproto3.ParameterStatus:
			continue
		case *pgproto3.ErrorResponse:
			return nil, pgconn.ErrorResponseToPgError(m)
		}
		return msg, nil
	}
}

// passNotice hands a server notice to f as one line. The warning a server
// gives when it aborts a backup whose connection went away is left out: it
// only echoes the error that made the capture stop.
func passNotice(f func(string), m *pgproto3.NoticeResponse) {
	if f == nil || strings.Contains(m.Message, "aborting backup due to backend exiting") {
		return
	}
	f(oneLine(m.Severity + ": " + m.Message))
}

// receiveError explains a failed receive: ctx's cause when the capture was
// stopped, ErrConnLost when the connection broke, ErrProtocol when the bytes
// were not a valid message.
func receiveError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	// A FATAL error: pgconn closes the connection and returns it.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr
	}
	if isNetError(err) {
		return fmt.Errorf("%w: %v", ErrConnLost, err)
	}
	return fmt.Errorf("%w: malformed message: %v", ErrProtocol, err)
}

// resultSet reads one result set of ncols columns: RowDescription, DataRow*,
// CommandComplete. The rows are copied.
func (r *streamReader) resultSet(what string, ncols int) ([][][]byte, error) {
	msg, err := r.next()
	if err != nil {
		return nil, err
	}
	rd, ok := msg.(*pgproto3.RowDescription)
	if !ok {
		return nil, protocolErrorf("%s: got %s, want RowDescription", what, msgName(msg))
	}
	if len(rd.Fields) != ncols {
		return nil, protocolErrorf("%s: result has %d columns, want %d", what, len(rd.Fields), ncols)
	}
	var rows [][][]byte
	for {
		msg, err := r.next()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) != ncols {
				return nil, protocolErrorf("%s: row has %d values, want %d", what, len(m.Values), ncols)
			}
			row := make([][]byte, ncols)
			for i, v := range m.Values {
				if v != nil {
					row[i] = bytes.Clone(v)
					if row[i] == nil {
						row[i] = []byte{}
					}
				}
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			return rows, nil
		default:
			return nil, protocolErrorf("%s: got %s, want DataRow or CommandComplete", what, msgName(msg))
		}
	}
}

// lsnResult reads the one-row (recptr, tli) result that BASE_BACKUP sends
// before and after the archives.
func (r *streamReader) lsnResult(what string) (LSN, uint32, error) {
	rows, err := r.resultSet(what, 2)
	if err != nil {
		return 0, 0, err
	}
	if len(rows) != 1 {
		return 0, 0, protocolErrorf("%s: %d rows, want 1", what, len(rows))
	}
	lsn, err := ParseLSN(string(rows[0][0]))
	if err != nil {
		return 0, 0, protocolErrorf("%s: %v", what, err)
	}
	tli, err := strconv.ParseUint(string(rows[0][1]), 10, 32)
	if err != nil || tli == 0 {
		return 0, 0, protocolErrorf("%s: invalid timeline %q", what, rows[0][1])
	}
	return lsn, uint32(tli), nil
}

// readStart reads everything up to and including CopyOutResponse.
func (r *streamReader) readStart() (*backupStart, error) {
	lsn, tli, err := r.lsnResult("backup start position")
	if err != nil {
		return nil, err
	}
	rows, err := r.resultSet("tablespace list", 3)
	if err != nil {
		return nil, err
	}
	st := &backupStart{StartLSN: lsn, Timeline: tli}
	mains := 0
	for _, row := range rows {
		ts := tablespace{SizeKB: -1}
		if row[0] == nil {
			if row[1] != nil {
				return nil, protocolErrorf("tablespace list: location without OID")
			}
			mains++
		} else {
			oid, err := strconv.ParseUint(string(row[0]), 10, 32)
			if err != nil || oid == 0 || row[1] == nil || len(row[1]) == 0 {
				return nil, protocolErrorf("tablespace list: invalid row (%q, %q)", row[0], row[1])
			}
			ts.OID, ts.Location = uint32(oid), string(row[1])
		}
		if row[2] != nil {
			if ts.SizeKB, err = strconv.ParseInt(string(row[2]), 10, 64); err != nil || ts.SizeKB < 0 {
				return nil, protocolErrorf("tablespace list: invalid size %q", row[2])
			}
		}
		st.Tablespaces = append(st.Tablespaces, ts)
	}
	if mains != 1 {
		return nil, protocolErrorf("tablespace list names the main data directory %d times, want once", mains)
	}
	msg, err := r.next()
	if err != nil {
		return nil, err
	}
	if _, ok := msg.(*pgproto3.CopyOutResponse); !ok {
		return nil, protocolErrorf("got %s, want CopyOutResponse (is the server older than PostgreSQL 15?)", msgName(msg))
	}
	return st, nil
}

// Where the copy stream is.
type copyState int

const (
	inNothing  copyState = iota // before the first 'n'
	inArchive                   // after 'n'
	inManifest                  // after 'm'
)

// readCopy reads the tagged CopyData stream up to CopyDone, handing the
// archives and the manifest to sink. wantArchives is the number of
// tablespaces the server announced; each must arrive exactly once.
func (r *streamReader) readCopy(sink streamSink, wantArchives int) error {
	state := inNothing
	archives := 0
	for {
		msg, err := r.next()
		if err != nil {
			return err
		}
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.CopyDone:
			switch state {
			case inNothing:
				return protocolErrorf("copy stream ended before any archive")
			case inArchive:
				return protocolErrorf("copy stream ended without a backup manifest")
			}
			if err := sink.endManifest(); err != nil {
				return err
			}
			if archives != wantArchives {
				return protocolErrorf("server sent %d archives for %d tablespaces", archives, wantArchives)
			}
			return nil
		default:
			return protocolErrorf("got %s inside the copy stream", msgName(msg))
		}
		if len(data) == 0 {
			return protocolErrorf("empty CopyData message")
		}
		switch tag, body := data[0], data[1:]; tag {
		case 'n':
			name, location, err := parseNewArchive(body)
			if err != nil {
				return err
			}
			switch state {
			case inManifest:
				return protocolErrorf("new archive %q after the manifest", name)
			case inArchive:
				if err := sink.endArchive(); err != nil {
					return err
				}
			}
			archives++
			if archives > wantArchives {
				return protocolErrorf("archive %q is one more than the %d tablespaces announced", name, wantArchives)
			}
			if err := sink.beginArchive(name, location); err != nil {
				return err
			}
			state = inArchive
		case 'd':
			switch state {
			case inNothing:
				return protocolErrorf("archive data before any archive began")
			case inArchive:
				err = sink.archiveData(body)
			case inManifest:
				err = sink.manifestData(body)
			}
			if err != nil {
				return err
			}
		case 'p':
			if len(body) != 8 {
				return protocolErrorf("progress message of %d bytes, want 8", len(body))
			}
			done := int64(binary.BigEndian.Uint64(body))
			if done < 0 {
				return protocolErrorf("negative progress %d", done)
			}
			sink.progress(done)
		case 'm':
			if len(body) != 0 {
				return protocolErrorf("manifest message with %d unexpected bytes", len(body))
			}
			switch state {
			case inNothing:
				return protocolErrorf("manifest before any archive")
			case inManifest:
				return protocolErrorf("second manifest")
			}
			if err := sink.endArchive(); err != nil {
				return err
			}
			if err := sink.beginManifest(); err != nil {
				return err
			}
			state = inManifest
		default:
			return protocolErrorf("unknown copy stream message type %q", tag)
		}
	}
}

// parseNewArchive reads the body of an 'n' message: two NUL-terminated
// strings, the archive name and the tablespace location ("" for the main
// data directory).
func parseNewArchive(b []byte) (name, location string, err error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", "", protocolErrorf("new-archive message without a terminated name")
	}
	j := bytes.IndexByte(b[i+1:], 0)
	if j < 0 {
		return "", "", protocolErrorf("new-archive message without a terminated location")
	}
	if i+1+j+1 != len(b) {
		return "", "", protocolErrorf("new-archive message with %d trailing bytes", len(b)-(i+1+j+1))
	}
	name, location = string(b[:i]), string(b[i+1:i+1+j])
	if name == "" {
		return "", "", protocolErrorf("new-archive message with an empty name")
	}
	return name, location, nil
}

// readEnd reads what follows CopyDone: the end position, the command's
// completion and ReadyForQuery.
func (r *streamReader) readEnd() (LSN, uint32, error) {
	lsn, tli, err := r.lsnResult("backup end position")
	if err != nil {
		return 0, 0, err
	}
	msg, err := r.next()
	if err != nil {
		return 0, 0, err
	}
	if _, ok := msg.(*pgproto3.CommandComplete); !ok {
		return 0, 0, protocolErrorf("got %s, want CommandComplete after the backup", msgName(msg))
	}
	msg, err = r.next()
	if err != nil {
		return 0, 0, err
	}
	if _, ok := msg.(*pgproto3.ReadyForQuery); !ok {
		return 0, 0, protocolErrorf("got %s, want ReadyForQuery after the backup", msgName(msg))
	}
	return lsn, tli, nil
}

// msgName names a message type for errors: "*pgproto3.DataRow" → "DataRow".
func msgName(m pgproto3.BackendMessage) string {
	s := fmt.Sprintf("%T", m)
	if i := bytes.LastIndexByte([]byte(s), '.'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
