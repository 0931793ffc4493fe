package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// recordingSink records what the stream reader hands it.
type recordingSink struct {
	events []string
}

func (r *recordingSink) add(format string, args ...any) {
	r.events = append(r.events, fmt.Sprintf(format, args...))
}
func (r *recordingSink) beginArchive(name, loc string) error {
	r.add("begin %s %q", name, loc)
	return nil
}
func (r *recordingSink) archiveData(p []byte) error  { r.add("data %q", p); return nil }
func (r *recordingSink) endArchive() error           { r.add("end"); return nil }
func (r *recordingSink) beginManifest() error        { r.add("manifest"); return nil }
func (r *recordingSink) manifestData(p []byte) error { r.add("mdata %q", p); return nil }
func (r *recordingSink) endManifest() error          { r.add("mend"); return nil }
func (r *recordingSink) progress(n int64)            { r.add("progress %d", n) }

// streamOutcome is what one scripted BASE_BACKUP produced.
type streamOutcome struct {
	start   *backupStart
	events  []string
	end     LSN
	notices []string
	err     error
}

// runBackupStream sends BASE_BACKUP to a fake server that answers with
// script, and reads the answer with streamReader.
func runBackupStream(t *testing.T, script func(s *fakeSession)) streamOutcome {
	t.Helper()
	_, cfg := newFakeServer(t, func(s *fakeSession) {
		if q := s.query(); !strings.HasPrefix(q, "BASE_BACKUP") {
			t.Errorf("fake server got %q, want BASE_BACKUP", q)
			return
		}
		script(s)
		s.query() // until the client hangs up
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	stop := context.AfterFunc(ctx, func() { conn.Conn().SetDeadline(time.Unix(1, 0)) })
	defer stop()
	conn.Frontend().Send(&pgproto3.Query{String: "BASE_BACKUP (LABEL 'x')"})
	if err := conn.Frontend().Flush(); err != nil {
		t.Fatal(err)
	}
	var out streamOutcome
	r := &streamReader{ctx: ctx, src: conn, notice: func(s string) { out.notices = append(out.notices, s) }}
	if out.start, out.err = r.readStart(); out.err != nil {
		return out
	}
	sink := &recordingSink{}
	out.err = r.readCopy(sink, len(out.start.Tablespaces))
	out.events = sink.events
	if out.err != nil {
		return out
	}
	out.end, _, out.err = r.readEnd()
	if ctx.Err() != nil {
		t.Fatalf("stream reader hung: %v", out.err)
	}
	return out
}

func TestStreamComplete(t *testing.T) {
	out := runBackupStream(t, func(s *fakeSession) {
		s.backupStart("0/3000028", "16385=/ts/one", "")
		s.send(newArchive("16385.tar", "/ts/one"), archiveData([]byte("ts")), progressMsg(2),
			&pgproto3.NoticeResponse{Severity: "WARNING", Message: "something\nto say"},
			newArchive("base.tar", ""), archiveData([]byte("ab")), archiveData([]byte("c")), progressMsg(5),
			manifestStart(), archiveData([]byte("{}")))
		s.backupEnd("0/3000100")
	})
	if out.err != nil {
		t.Fatal(out.err)
	}
	if out.start.StartLSN != 0x3000028 || out.start.Timeline != 1 || len(out.start.Tablespaces) != 2 {
		t.Errorf("start = %+v", out.start)
	}
	if ts := out.start.Tablespaces[0]; ts.OID != 16385 || ts.Location != "/ts/one" || ts.SizeKB != 10 {
		t.Errorf("tablespace = %+v", ts)
	}
	want := []string{`begin 16385.tar "/ts/one"`, `data "ts"`, "progress 2", "end", `begin base.tar ""`, `data "ab"`, `data "c"`, "progress 5", "end", "manifest", `mdata "{}"`, "mend"}
	if strings.Join(out.events, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q", out.events, want)
	}
	if out.end != 0x3000100 {
		t.Errorf("end = %s", out.end)
	}
	if len(out.notices) != 1 || out.notices[0] != "WARNING: something to say" {
		t.Errorf("notices = %q", out.notices)
	}
}

// TestStreamRejects feeds the stream reader broken, truncated and
// out-of-order answers; each must end with a clear error, not a hang or a
// panic, and none may pass for a complete backup.
func TestStreamRejects(t *testing.T) {
	begin := func(s *fakeSession) { s.backupStart("0/3000028", "") }
	tests := []struct {
		name   string
		script func(s *fakeSession)
		is     error  // errors.Is target, if any
		want   string // substring of the message
	}{
		{"server error mid-stream", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), archiveData([]byte("x")))
			s.fail("XX000", "could not read file \"base/5/16384\": I/O error")
		}, nil, "could not read file"},
		{"fatal error mid-stream", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})
			s.conn.Close()
		}, nil, "terminating connection"},
		{"connection lost mid-stream", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), archiveData([]byte("x")))
			s.conn.Close()
		}, ErrConnLost, ""},
		{"connection lost before the start", func(s *fakeSession) {
			s.conn.Close()
		}, ErrConnLost, ""},
		{"truncated message", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""))
			s.raw([]byte{'d', 0, 0, 0, 100, 'd', 1, 2})
			s.conn.Close()
		}, ErrConnLost, ""},
		{"message length below minimum", func(s *fakeSession) {
			begin(s)
			s.raw([]byte{'d', 0, 0, 0, 2})
		}, ErrProtocol, "malformed message"},
		{"undecodable message", func(s *fakeSession) {
			s.raw([]byte{'T', 0, 0, 0, 6, 0, 1}) // RowDescription claiming a field it lacks
		}, ErrProtocol, "malformed message"},
		{"unknown tag", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), &pgproto3.CopyData{Data: []byte("x123")})
		}, ErrProtocol, `unknown copy stream message type 'x'`},
		{"empty CopyData", func(s *fakeSession) {
			begin(s)
			s.send(&pgproto3.CopyData{})
		}, ErrProtocol, "empty CopyData"},
		{"short progress", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), &pgproto3.CopyData{Data: []byte("p\x00\x00\x00\x01")})
		}, ErrProtocol, "progress message of 4 bytes"},
		{"new archive without terminator", func(s *fakeSession) {
			begin(s)
			s.send(&pgproto3.CopyData{Data: []byte("nbase.tar")})
		}, ErrProtocol, "terminated name"},
		{"new archive without location", func(s *fakeSession) {
			begin(s)
			s.send(&pgproto3.CopyData{Data: []byte("nbase.tar\x00")})
		}, ErrProtocol, "terminated location"},
		{"new archive with trailing bytes", func(s *fakeSession) {
			begin(s)
			s.send(&pgproto3.CopyData{Data: []byte("nbase.tar\x00\x00junk")})
		}, ErrProtocol, "trailing bytes"},
		{"data before any archive", func(s *fakeSession) {
			begin(s)
			s.send(archiveData([]byte("x")))
		}, ErrProtocol, "before any archive"},
		{"archive after manifest", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), manifestStart(), newArchive("16385.tar", "/x"))
		}, ErrProtocol, "after the manifest"},
		{"second manifest", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), manifestStart(), manifestStart())
		}, ErrProtocol, "second manifest"},
		{"manifest message with payload", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), &pgproto3.CopyData{Data: []byte("mx")})
		}, ErrProtocol, "manifest message"},
		{"manifest before any archive", func(s *fakeSession) {
			begin(s)
			s.send(manifestStart())
		}, ErrProtocol, "manifest before any archive"},
		{"no manifest", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), archiveData([]byte("x")), &pgproto3.CopyDone{})
		}, ErrProtocol, "without a backup manifest"},
		{"copy done before any archive", func(s *fakeSession) {
			begin(s)
			s.send(&pgproto3.CopyDone{})
		}, ErrProtocol, "before any archive"},
		{"row inside the copy stream", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), &pgproto3.DataRow{Values: [][]byte{[]byte("1")}})
		}, ErrProtocol, "got DataRow inside the copy stream"},
		{"more archives than tablespaces", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), newArchive("16385.tar", "/x"))
		}, ErrProtocol, "one more than the 1 tablespaces"},
		{"fewer archives than tablespaces", func(s *fakeSession) {
			s.backupStart("0/3000028", "16385=/ts", "")
			s.send(newArchive("base.tar", ""), manifestStart(), archiveData([]byte("{}")))
			s.backupEnd("0/3000100")
		}, ErrProtocol, "sent 1 archives for 2 tablespaces"},
		{"start result with three columns", func(s *fakeSession) {
			s.result([]string{"a", "b", "c"}, []*string{sp("0/1"), sp("1"), sp("x")})
		}, ErrProtocol, "3 columns"},
		{"start result with two rows", func(s *fakeSession) {
			s.result([]string{"recptr", "tli"}, []*string{sp("0/1"), sp("1")}, []*string{sp("0/2"), sp("1")})
		}, ErrProtocol, "2 rows"},
		{"malformed start LSN", func(s *fakeSession) {
			s.result([]string{"recptr", "tli"}, []*string{sp("3000028"), sp("1")})
		}, ErrProtocol, "invalid LSN"},
		{"zero timeline", func(s *fakeSession) {
			s.result([]string{"recptr", "tli"}, []*string{sp("0/1"), sp("0")})
		}, ErrProtocol, "invalid timeline"},
		{"tablespace list without the main directory", func(s *fakeSession) {
			s.backupStart("0/3000028", "16385=/ts")
		}, ErrProtocol, "main data directory 0 times"},
		{"tablespace with OID but no location", func(s *fakeSession) {
			s.result([]string{"recptr", "tli"}, []*string{sp("0/1"), sp("1")})
			s.result([]string{"spcoid", "spclocation", "size"}, []*string{sp("16385"), nil, sp("1")})
		}, ErrProtocol, "invalid row"},
		{"no CopyOutResponse", func(s *fakeSession) {
			s.result([]string{"recptr", "tli"}, []*string{sp("0/1"), sp("1")})
			s.result([]string{"spcoid", "spclocation", "size"}, []*string{nil, nil, sp("1")})
			s.send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT")})
		}, ErrProtocol, "want CopyOutResponse"},
		{"checksum failure after the data", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), manifestStart(), archiveData([]byte("{}")), &pgproto3.CopyDone{})
			s.result([]string{"recptr", "tli"}, []*string{sp("0/3000100"), sp("1")})
			s.fail("XX001", "checksum verification failure during base backup")
		}, nil, "checksum verification failure"},
		{"no ReadyForQuery", func(s *fakeSession) {
			begin(s)
			s.send(newArchive("base.tar", ""), manifestStart(), archiveData([]byte("{}")), &pgproto3.CopyDone{})
			s.result([]string{"recptr", "tli"}, []*string{sp("0/3000100"), sp("1")})
			s.send(&pgproto3.CommandComplete{CommandTag: []byte("BASE_BACKUP")}, &pgproto3.CopyDone{})
		}, ErrProtocol, "want ReadyForQuery"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := runBackupStream(t, tc.script)
			if out.err == nil {
				t.Fatalf("no error; events %q", out.events)
			}
			if tc.is != nil && !errors.Is(out.err, tc.is) {
				t.Errorf("error %q is not %q", out.err, tc.is)
			}
			if tc.is == nil {
				var pgErr *pgconn.PgError
				if !errors.As(out.err, &pgErr) {
					t.Errorf("error %q (%T) is not a server error", out.err, out.err)
				}
			}
			if !strings.Contains(out.err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", out.err, tc.want)
			}
		})
	}
}

func TestParseNewArchive(t *testing.T) {
	name, loc, err := parseNewArchive([]byte("16385.tar\x00/srv/ts\x00"))
	if err != nil || name != "16385.tar" || loc != "/srv/ts" {
		t.Errorf("parseNewArchive = %q, %q, %v", name, loc, err)
	}
	for _, bad := range []string{"", "\x00\x00", "a", "a\x00", "a\x00b", "a\x00b\x00c"} {
		if _, _, err := parseNewArchive([]byte(bad)); !errors.Is(err, ErrProtocol) {
			t.Errorf("parseNewArchive(%q) error = %v, want a protocol error", bad, err)
		}
	}
}
