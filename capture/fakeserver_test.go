package capture

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// fakeServer is a scripted PostgreSQL server on a loopback port, for tests
// of the protocol code without a real server (the idea of pgx's internal
// pgmock). Every connection completes the startup handshake and is then
// handed to the test's handler.
type fakeServer struct {
	t       testing.TB
	ln      net.Listener
	handler func(s *fakeSession)
	wg      sync.WaitGroup
	mu      sync.Mutex
	n       int
	conns   []net.Conn
	// Manifest is the last manifest uploaded with UPLOAD_MANIFEST.
	manifest []byte
	// settings answers SHOW.
	settings map[string]string
	sysID    string
	tli      string // the timeline BASE_BACKUP reports; "1" by default
}

// fakeSession is one connection to the fake server.
type fakeSession struct {
	t    testing.TB
	srv  *fakeServer
	conn net.Conn
	be   *pgproto3.Backend
	// Index counts connections from 0.
	Index int
}

// newFakeServer starts a fake server and returns a replication connection
// config that reaches it.
func newFakeServer(t testing.TB, handler func(s *fakeSession)) (*fakeServer, *pgconn.Config) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeServer{t: t, ln: ln, handler: handler, sysID: "7000000000000000001", tli: "1",
		settings: map[string]string{"wal_segment_size": "16MB", "summarize_wal": "on", "data_directory_mode": "0700"}}
	fs.wg.Go(fs.accept)
	t.Cleanup(func() {
		ln.Close()
		fs.mu.Lock()
		for _, c := range fs.conns {
			c.Close()
		}
		fs.mu.Unlock()
		fs.wg.Wait()
	})
	cfg, err := ConnConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable connect_timeout=5", ln.Addr().(*net.TCPAddr).Port), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	return fs, cfg
}

func (fs *fakeServer) accept() {
	for {
		c, err := fs.ln.Accept()
		if err != nil {
			return
		}
		fs.mu.Lock()
		idx := fs.n
		fs.n++
		fs.conns = append(fs.conns, c)
		fs.mu.Unlock()
		fs.wg.Go(func() {
			defer c.Close()
			s := &fakeSession{t: fs.t, srv: fs, conn: c, be: pgproto3.NewBackend(c, c), Index: idx}
			if err := s.startup(); err != nil {
				return
			}
			fs.handler(s)
		})
	}
}

func (s *fakeSession) startup() error {
	msg, err := s.be.ReceiveStartupMessage()
	if err != nil {
		return err
	}
	if _, ok := msg.(*pgproto3.StartupMessage); !ok {
		return fmt.Errorf("got %T, want StartupMessage", msg)
	}
	s.be.Send(&pgproto3.AuthenticationOk{})
	s.be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "17.2 (fake)"})
	s.be.Send(&pgproto3.BackendKeyData{ProcessID: uint32(1000 + s.Index), SecretKey: []byte{0, 0, 0, 1}})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

// query waits for the next simple query; "" when the client went away.
func (s *fakeSession) query() string {
	for {
		msg, err := s.be.Receive()
		if err != nil {
			return ""
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			return m.String
		case *pgproto3.Terminate:
			return ""
		}
	}
}

// send sends messages and flushes.
func (s *fakeSession) send(msgs ...pgproto3.BackendMessage) {
	for _, m := range msgs {
		s.be.Send(m)
	}
	if err := s.be.Flush(); err != nil && !isConnError(err) {
		s.t.Errorf("fake server: %v", err)
	}
}

// raw writes bytes as they are, for malformed messages.
func (s *fakeSession) raw(b []byte) {
	s.conn.Write(b)
}

// result sends a result set of text columns; a nil *string is NULL.
func (s *fakeSession) result(cols []string, rows ...[]*string) {
	rd := &pgproto3.RowDescription{}
	for _, c := range cols {
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1})
	}
	msgs := []pgproto3.BackendMessage{rd}
	for _, r := range rows {
		dr := &pgproto3.DataRow{}
		for _, v := range r {
			if v == nil {
				dr.Values = append(dr.Values, nil)
			} else {
				dr.Values = append(dr.Values, []byte(*v))
			}
		}
		msgs = append(msgs, dr)
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte("SELECT")})
	s.send(msgs...)
}

func sp(s string) *string { return &s }

func (s *fakeSession) ready() { s.send(&pgproto3.ReadyForQuery{TxStatus: 'I'}) }

// fail sends a server error and ReadyForQuery.
func (s *fakeSession) fail(code, msg string) {
	s.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
}

// serveCommon answers the commands every capture sends before the backup
// itself; it reports whether q was one of them.
func (s *fakeSession) serveCommon(q string) bool {
	switch {
	case q == "IDENTIFY_SYSTEM":
		s.result([]string{"systemid", "timeline", "xlogpos", "dbname"}, []*string{sp(s.srv.sysID), sp("1"), sp("0/3000000"), nil})
		s.ready()
	case strings.HasPrefix(q, "SHOW "):
		v, ok := s.srv.settings[strings.TrimPrefix(q, "SHOW ")]
		if !ok {
			s.fail("42704", "unrecognized configuration parameter")
			return true
		}
		s.result([]string{strings.TrimPrefix(q, "SHOW ")}, []*string{sp(v)})
		s.ready()
	case strings.HasPrefix(q, "TIMELINE_HISTORY "):
		tli, _ := strconv.Atoi(strings.TrimPrefix(q, "TIMELINE_HISTORY "))
		s.result([]string{"filename", "content"}, []*string{sp(fmt.Sprintf("%08X.history", tli)), sp("1\t0/2FFFFFF\tno recovery target specified\n")})
		s.ready()
	case strings.HasPrefix(q, "CREATE_REPLICATION_SLOT"):
		s.result([]string{"slot_name", "consistent_point", "snapshot_name", "output_plugin"}, []*string{sp("x"), sp("0/3000000"), nil, nil})
		s.ready()
	case q == "UPLOAD_MANIFEST":
		s.send(&pgproto3.CopyInResponse{})
		var m []byte
		for {
			msg, err := s.be.Receive()
			if err != nil {
				return true
			}
			if d, ok := msg.(*pgproto3.CopyData); ok {
				m = append(m, d.Data...)
				continue
			}
			break
		}
		s.srv.mu.Lock()
		s.srv.manifest = m
		s.srv.mu.Unlock()
		s.send(&pgproto3.CommandComplete{CommandTag: []byte("UPLOAD_MANIFEST")})
		s.ready()
	default:
		return false
	}
	return true
}

// backupStart sends what BASE_BACKUP answers before the archives: the
// start position, the tablespace list and CopyOutResponse. Each tablespace
// is "" for the main directory or "OID=LOCATION".
func (s *fakeSession) backupStart(start string, tablespaces ...string) {
	s.result([]string{"recptr", "tli"}, []*string{sp(start), sp(s.srv.tli)})
	var rows [][]*string
	for _, ts := range tablespaces {
		if ts == "" {
			rows = append(rows, []*string{nil, nil, sp("100")})
			continue
		}
		oid, loc, _ := strings.Cut(ts, "=")
		rows = append(rows, []*string{sp(oid), sp(loc), sp("10")})
	}
	s.result([]string{"spcoid", "spclocation", "size"}, rows...)
	s.send(&pgproto3.CopyOutResponse{})
}

// backupEnd sends what follows the archives.
func (s *fakeSession) backupEnd(end string) {
	s.send(&pgproto3.CopyDone{})
	s.result([]string{"recptr", "tli"}, []*string{sp(end), sp(s.srv.tli)})
	s.send(&pgproto3.CommandComplete{CommandTag: []byte("BASE_BACKUP")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
}

// Copy stream messages.
func newArchive(name, location string) *pgproto3.CopyData {
	return &pgproto3.CopyData{Data: []byte("n" + name + "\x00" + location + "\x00")}
}

func archiveData(b []byte) *pgproto3.CopyData {
	return &pgproto3.CopyData{Data: append([]byte{'d'}, b...)}
}

func progressMsg(n int64) *pgproto3.CopyData {
	b := make([]byte, 9)
	b[0] = 'p'
	binary.BigEndian.PutUint64(b[1:], uint64(n))
	return &pgproto3.CopyData{Data: b}
}

func manifestStart() *pgproto3.CopyData { return &pgproto3.CopyData{Data: []byte{'m'}} }

// sendChunks sends b as archive data in pieces of n bytes.
func (s *fakeSession) sendChunks(b []byte, n int) {
	for len(b) > 0 {
		k := min(n, len(b))
		s.be.Send(archiveData(b[:k]))
		b = b[k:]
	}
	s.send()
}

// WAL stream messages.
func xlogData(start LSN, data []byte) *pgproto3.CopyData {
	b := make([]byte, 25, 25+len(data))
	b[0] = 'w'
	binary.BigEndian.PutUint64(b[1:], uint64(start))
	binary.BigEndian.PutUint64(b[9:], uint64(start)+uint64(len(data)))
	binary.BigEndian.PutUint64(b[17:], uint64(pgTime(time.Now())))
	return &pgproto3.CopyData{Data: append(b, data...)}
}

func keepalive(walEnd LSN, reply bool) *pgproto3.CopyData {
	b := make([]byte, 18)
	b[0] = 'k'
	binary.BigEndian.PutUint64(b[1:], uint64(walEnd))
	binary.BigEndian.PutUint64(b[9:], uint64(pgTime(time.Now())))
	if reply {
		b[17] = 1
	}
	return &pgproto3.CopyData{Data: b}
}

// walSession serves START_REPLICATION: it sends wal (messages built by the
// test), then waits for the client's CopyDone and ends the stream. Status
// updates the client sends are counted in status.
func (s *fakeSession) walSession(wal []pgproto3.BackendMessage, status *int) {
	s.send(&pgproto3.CopyBothResponse{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := s.be.Receive()
			if err != nil {
				return
			}
			switch m := msg.(type) {
			case *pgproto3.CopyData:
				if len(m.Data) > 0 && m.Data[0] == 'r' && status != nil {
					s.srv.mu.Lock()
					*status++
					s.srv.mu.Unlock()
				}
			case *pgproto3.CopyDone:
				return
			}
		}
	}()
	s.send(wal...)
	<-done
	s.send(&pgproto3.CopyDone{}, &pgproto3.CommandComplete{CommandTag: []byte("START_REPLICATION")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
}
