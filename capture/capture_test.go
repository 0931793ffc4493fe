package capture

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// tarEntry is one member of a test archive.
type tarEntry struct {
	name string
	body string
	dir  bool
	link string // symlink target
	typ  byte   // overrides the type
}

func buildTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0), Format: tar.FormatUSTAR}
		switch {
		case e.typ != 0:
			h.Typeflag, h.Size = e.typ, 0
		case e.dir:
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o700, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size, h.Mode = tar.TypeSymlink, e.link, 0, 0o777
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// A small data directory, as base.tar.
func baseTar(t testing.TB) []byte {
	return buildTar(t,
		tarEntry{name: "backup_label", body: "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nCHECKPOINT LOCATION: 0/3000080\nSTART TIMELINE: 1\n"},
		tarEntry{name: "PG_VERSION", body: "17\n"},
		tarEntry{name: "base", dir: true},
		tarEntry{name: "base/1", dir: true},
		tarEntry{name: "base/1/1259", body: strings.Repeat("x", 100000)},
		tarEntry{name: "pg_wal", dir: true},
		tarEntry{name: "pg_wal/archive_status", dir: true},
		tarEntry{name: "global", dir: true},
		tarEntry{name: "global/pg_control", body: "control"},
	)
}

const testManifest = `{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 7000000000000000001,
"Files": [],
"WAL-Ranges": [],
"Manifest-Checksum": "0"}
`

// backupServer is a fake server whose BASE_BACKUP answer is script; it
// answers the usual preliminaries and serves START_REPLICATION with wal.
type backupServer struct {
	srv      *fakeServer
	commands []string
	mu       sync.Mutex
	status   int
}

func newBackupServer(t *testing.T, script func(s *fakeSession), wal []pgproto3.BackendMessage) (*backupServer, Options) {
	bs := &backupServer{}
	srv, cfg := newFakeServer(t, func(s *fakeSession) {
		for {
			q := s.query()
			if q == "" {
				return
			}
			bs.mu.Lock()
			bs.commands = append(bs.commands, q)
			bs.mu.Unlock()
			switch {
			case s.serveCommon(q):
			case strings.HasPrefix(q, "BASE_BACKUP"):
				script(s)
			case strings.HasPrefix(q, "START_REPLICATION"):
				s.walSession(wal, &bs.status)
			default:
				s.fail("42601", "syntax error")
			}
		}
	})
	bs.srv = srv
	return bs, Options{Conn: cfg, Dir: filepath.Join(t.TempDir(), "backup"), WAL: WALFetch}
}

func (bs *backupServer) sent(prefix string) string {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for _, c := range bs.commands {
		if strings.HasPrefix(c, prefix) {
			return c
		}
	}
	return ""
}

// fullBackupScript answers BASE_BACKUP with base.tar in chunks of 1000
// bytes and the test manifest.
func fullBackupScript(t testing.TB) func(s *fakeSession) {
	base := baseTar(t)
	return func(s *fakeSession) {
		s.backupStart("0/3000028", "")
		s.send(newArchive("base.tar", ""))
		s.sendChunks(base, 1000)
		s.send(progressMsg(int64(len(base))), manifestStart(), archiveData([]byte(testManifest)))
		s.backupEnd("0/3000100")
	}
}

func len64(b []byte) int64 { return int64(len(b)) }

// checkNothingLeft fails unless a failed capture left no trace next to dir.
func checkNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a failed capture", dir)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	for _, e := range entries {
		t.Errorf("%s left behind", e.Name())
	}
}

func TestCaptureFetch(t *testing.T) {
	bs, o := newBackupServer(t, fullBackupScript(t), nil)
	var phases []Phase
	o.Progress = func(p Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}
	res, err := Capture(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.StartLSN != 0x3000028 || res.EndLSN != 0x3000100 || res.SystemID != 7000000000000000001 || res.Incremental {
		t.Errorf("result %+v", res)
	}
	cmd := bs.sent("BASE_BACKUP")
	for _, want := range []string{"WAL", "MANIFEST 'yes'", "PROGRESS", "WAIT 0"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("%s lacks %s", cmd, want)
		}
	}
	for name, want := range map[string]string{
		"PG_VERSION": "17\n", "base/1/1259": strings.Repeat("x", 100000), "global/pg_control": "control", "backup_manifest": testManifest,
	} {
		got, err := os.ReadFile(filepath.Join(o.Dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	if _, err := os.Stat(filepath.Join(o.Dir, manifestTmpName)); err == nil {
		t.Errorf("%s left in the backup", manifestTmpName)
	}
	entries, _ := os.ReadDir(filepath.Dir(o.Dir))
	if len(entries) != 1 {
		t.Errorf("%d entries next to the backup, want only it", len(entries))
	}
	if got := strings.Join(func() []string {
		var s []string
		for _, p := range phases {
			s = append(s, string(p))
		}
		return s
	}(), ","); got != "connect,waiting for checkpoint,transfer,syncing,done" {
		t.Errorf("phases %s", got)
	}
}

func TestCaptureIntoEmptyDir(t *testing.T) {
	_, o := newBackupServer(t, fullBackupScript(t), nil)
	if err := os.Mkdir(o.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Capture(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, "backup_manifest")); err != nil {
		t.Error(err)
	}
	// A non-empty directory is refused, and kept.
	_, o2 := newBackupServer(t, fullBackupScript(t), nil)
	o2.Dir = o.Dir
	if _, err := Capture(context.Background(), o2); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("capture into a full directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, "backup_manifest")); err != nil {
		t.Error(err)
	}
}

func TestCaptureStream(t *testing.T) {
	const seg = 1 << 20
	var wal []pgproto3.BackendMessage
	start := LSN(0x3000000)
	chunk := bytes.Repeat([]byte{0xAB}, 64<<10)
	for pos := start; pos < start+seg+seg/2; pos += LSN(len(chunk)) {
		wal = append(wal, xlogData(pos, chunk))
		if pos == start+seg/2 {
			wal = append(wal, keepalive(pos, true))
		}
	}
	bs, o := newBackupServer(t, func(s *fakeSession) {
		s.backupStart("0/3000028", "")
		s.send(newArchive("base.tar", ""))
		s.sendChunks(baseTar(t), 4096)
		s.send(manifestStart(), archiveData([]byte(testManifest)))
		s.backupEnd("0/3100010")
	}, wal)
	bs.srv.settings["wal_segment_size"] = "1MB"
	o.WAL = WALStream
	res, err := Capture(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if cmd := bs.sent("START_REPLICATION"); !strings.Contains(cmd, `SLOT "combinefs_1001" PHYSICAL 0/3000000 TIMELINE 1`) {
		t.Errorf("sent %q", cmd)
	}
	if cmd := bs.sent("BASE_BACKUP"); strings.Contains(cmd, " WAL") {
		t.Errorf("streaming, yet asked for WAL in the archive: %s", cmd)
	}
	walDir := filepath.Join(o.Dir, "pg_wal")
	for _, f := range []string{"000000010000000000000030", "000000010000000000000031"} {
		fi, err := os.Stat(filepath.Join(walDir, f))
		if err != nil || fi.Size() != seg {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	if _, err := os.Stat(filepath.Join(walDir, "archive_status", "000000010000000000000030.done")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(walDir, "archive_status", "000000010000000000000031.done")); err == nil {
		t.Error("the unfinished segment is marked done")
	}
	// The streamer stops once it has the WAL up to the end LSN, 0/3100010;
	// how much more it got depends on when it learnt of the end.
	data, _ := os.ReadFile(filepath.Join(walDir, "000000010000000000000031"))
	if !bytes.Equal(data[:0x10], chunk[:0x10]) || !bytes.Equal(data[res.WALBytes-seg:], make([]byte, seg+seg-res.WALBytes)) {
		t.Error("second segment holds the wrong bytes")
	}
	if res.WALBytes < seg+0x10 || res.WALBytes > seg+seg/2 || res.WALBytes%len64(chunk) != 0 {
		t.Errorf("WALBytes = %d", res.WALBytes)
	}
	bs.mu.Lock()
	status := bs.status
	bs.mu.Unlock()
	if status < 2 { // one asked for by the keepalive, one before CopyDone
		t.Errorf("%d status updates, want at least 2", status)
	}
}

func TestCaptureIncremental(t *testing.T) {
	bs, o := newBackupServer(t, fullBackupScript(t), nil)
	o.PriorManifest = []byte(testManifest)
	res, err := Capture(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Incremental || !strings.HasPrefix(bs.sent("BASE_BACKUP"), "BASE_BACKUP (INCREMENTAL,") {
		t.Errorf("not incremental: %s", bs.sent("BASE_BACKUP"))
	}
	bs.srv.mu.Lock()
	defer bs.srv.mu.Unlock()
	if string(bs.srv.manifest) != testManifest {
		t.Errorf("uploaded %q", bs.srv.manifest)
	}
}

func TestCaptureRefusals(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(bs *backupServer, o *Options)
		script func(s *fakeSession)
		is     error
		want   string
	}{
		{"prior manifest of another cluster", func(bs *backupServer, o *Options) {
			o.PriorManifest = []byte(strings.Replace(testManifest, "7000000000000000001", "42", 1))
		}, nil, ErrOtherCluster, "names system 42"},
		{"summarize_wal off", func(bs *backupServer, o *Options) {
			bs.srv.settings["summarize_wal"] = "off"
			o.PriorManifest = []byte(testManifest)
		}, nil, ErrSummarizeWALOff, "summarize_wal = off"},
		{"server says summarize_wal off", func(bs *backupServer, o *Options) {
			o.PriorManifest = []byte(testManifest)
		}, func(s *fakeSession) {
			s.fail("55000", "incremental backups cannot be taken unless WAL summarization is enabled")
		}, ErrSummarizeWALOff, ""},
		{"missing WAL summaries", func(bs *backupServer, o *Options) {
			o.PriorManifest = []byte(testManifest)
		}, func(s *fakeSession) {
			s.fail("55000", "WAL summaries are required on timeline 1 from 0/3000028 to 0/5000060, but no summaries for that timeline and LSN range exist")
		}, ErrMissingWALSummaries, "no summaries for that timeline"},
		{"server finds another cluster", func(bs *backupServer, o *Options) {
			o.PriorManifest = []byte("{}")
		}, func(s *fakeSession) {
			s.fail("XX000", "manifest system identifier is 42, but database system identifier is 7000000000000000001")
		}, ErrOtherCluster, ""},
		{"server too old", func(bs *backupServer, o *Options) {
			bs.srv.settings["wal_segment_size"] = "16MB"
			o.PriorManifest = []byte(testManifest)
			bs.srv.sysID = "7000000000000000001"
		}, nil, nil, ""},
	}
	for _, tc := range tests[:len(tests)-1] {
		t.Run(tc.name, func(t *testing.T) {
			script := tc.script
			if script == nil {
				script = fullBackupScript(t)
			}
			bs, o := newBackupServer(t, script, nil)
			tc.setup(bs, &o)
			_, err := Capture(context.Background(), o)
			if !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			checkNothingLeft(t, o.Dir)
		})
	}
}

// TestCaptureFailureCleansUp checks that whatever stops a capture half way,
// nothing that looks like a backup is left.
func TestCaptureFailureCleansUp(t *testing.T) {
	base := baseTar(t)
	half := func(s *fakeSession) {
		s.backupStart("0/3000028", "")
		s.send(newArchive("base.tar", ""))
		s.sendChunks(base[:len(base)/2], 1000)
	}
	tests := []struct {
		name   string
		script func(s *fakeSession)
		stream bool
		is     error
		want   string
	}{
		{"server error", func(s *fakeSession) { half(s); s.fail("XX000", "could not read file") }, false, nil, "could not read file"},
		{"connection lost", func(s *fakeSession) { half(s); s.conn.Close() }, false, ErrConnLost, ""},
		{"connection lost while streaming WAL", func(s *fakeSession) { half(s); s.conn.Close() }, true, ErrConnLost, ""},
		{"archive truncated between members", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(buildTar(t, tarEntry{name: "PG_VERSION", body: "17\n"})[:1024], 100)
			s.send(manifestStart(), archiveData([]byte(testManifest)))
			s.backupEnd("0/3000100")
		}, false, ErrProtocol, "without its tar trailer"},
		{"archive truncated inside a file", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(base[:5000], 1000)
			s.send(manifestStart(), archiveData([]byte(testManifest)))
			s.backupEnd("0/3000100")
		}, false, ErrProtocol, "archive ends inside"},
		{"path leaving the backup", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(buildTar(t, tarEntry{name: "../escaped", body: "x"}), 1000)
		}, false, ErrProtocol, "leaves its directory"},
		{"absolute path", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(buildTar(t, tarEntry{name: "/etc/escaped", body: "x"}), 1000)
		}, false, ErrProtocol, "absolute"},
		{"symlink outside pg_tblspc", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(buildTar(t, tarEntry{name: "global", link: "/etc"}), 1000)
		}, false, ErrProtocol, "unexpected symlink"},
		{"file through a tablespace symlink", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(buildTar(t, tarEntry{name: "pg_tblspc", dir: true}, tarEntry{name: "pg_tblspc/16385", link: "/nonexistent/ts"},
				tarEntry{name: "pg_tblspc/16385/x", body: "x"}), 1000)
		}, false, ErrProtocol, "below the symlink"},
		{"hard link", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(buildTar(t, tarEntry{name: "x", typ: tar.TypeLink}), 1000)
		}, false, ErrProtocol, "unsupported type"},
		{"garbage after the trailer", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(append(buildTar(t, tarEntry{name: "PG_VERSION", body: "17\n"}), "junk"...), 1000)
			s.send(manifestStart(), archiveData([]byte(testManifest)))
			s.backupEnd("0/3000100")
		}, false, ErrProtocol, "after the end of the tar archive"},
		{"empty manifest", func(s *fakeSession) {
			s.backupStart("0/3000028", "")
			s.send(newArchive("base.tar", ""))
			s.sendChunks(base, 1000)
			s.send(manifestStart())
			s.backupEnd("0/3000100")
		}, false, ErrProtocol, "empty backup manifest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, o := newBackupServer(t, tc.script, []pgproto3.BackendMessage{xlogData(0x3000000, []byte("wal"))})
			if tc.stream {
				o.WAL = WALStream
			}
			_, err := Capture(context.Background(), o)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %q", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			checkNothingLeft(t, o.Dir)
		})
	}
}

// TestCaptureWALStreamFails: a WAL connection that breaks ends the backup
// at once, though the backup connection is fine.
func TestCaptureWALStreamFails(t *testing.T) {
	base := baseTar(t)
	release := make(chan struct{})
	bs, o := newBackupServer(t, func(s *fakeSession) {
		s.backupStart("0/3000028", "")
		s.send(newArchive("base.tar", ""))
		s.sendChunks(base[:2000], 1000)
		<-release // stall, as a big backup would
	}, nil)
	defer close(release)
	// The WAL session sends data that does not start where it should.
	bs.srv.handler = func(s *fakeSession) {
		for {
			q := s.query()
			switch {
			case q == "":
				return
			case s.serveCommon(q):
			case strings.HasPrefix(q, "BASE_BACKUP"):
				s.backupStart("0/3000028", "")
				s.send(newArchive("base.tar", ""))
				s.sendChunks(base[:2000], 1000)
				<-release
			case strings.HasPrefix(q, "START_REPLICATION"):
				s.send(&pgproto3.CopyBothResponse{}, xlogData(0x3000100, []byte("misplaced")))
				s.query()
			}
		}
	}
	o.WAL = WALStream
	done := make(chan error)
	go func() { _, err := Capture(context.Background(), o); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "WAL streaming") {
			t.Errorf("error %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("capture did not stop when WAL streaming failed")
	}
	checkNothingLeft(t, o.Dir)
}

// TestCaptureCancel: cancelling the context (SIGINT in the command) stops
// a capture that waits on the server, and cleans up.
func TestCaptureCancel(t *testing.T) {
	base := baseTar(t)
	release := make(chan struct{})
	defer close(release)
	stalled := make(chan struct{})
	_, o := newBackupServer(t, func(s *fakeSession) {
		s.backupStart("0/3000028", "")
		s.send(newArchive("base.tar", ""))
		s.sendChunks(base[:3000], 1000)
		close(stalled)
		<-release
	}, []pgproto3.BackendMessage{xlogData(0x3000000, []byte("wal"))})
	o.WAL = WALStream
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := Capture(ctx, o); done <- err }()
	<-stalled
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("capture did not stop when cancelled")
	}
	checkNothingLeft(t, o.Dir)
}

func TestCaptureTablespaces(t *testing.T) {
	tsTar := buildTar(t, tarEntry{name: "PG_17_202406281", dir: true}, tarEntry{name: "PG_17_202406281/5", dir: true},
		tarEntry{name: "PG_17_202406281/5/16400", body: "relation"})
	mainTar := buildTar(t, tarEntry{name: "PG_VERSION", body: "17\n"}, tarEntry{name: "pg_tblspc", dir: true},
		tarEntry{name: "pg_tblspc/16385", link: "/srv/ts1"})
	script := func(s *fakeSession) {
		s.backupStart("0/3000028", "16385=/srv/ts1", "")
		s.send(newArchive("16385.tar", "/srv/ts1"))
		s.sendChunks(tsTar, 700)
		s.send(newArchive("base.tar", ""))
		s.sendChunks(mainTar, 700)
		s.send(manifestStart(), archiveData([]byte(testManifest)))
		s.backupEnd("0/3000100")
	}

	t.Run("mapped", func(t *testing.T) {
		_, o := newBackupServer(t, script, nil)
		ts := filepath.Join(t.TempDir(), "ts1")
		o.TablespaceMap = map[string]string{"/srv/ts1": ts}
		if _, err := Capture(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		if l, err := os.Readlink(filepath.Join(o.Dir, "pg_tblspc/16385")); err != nil || l != ts {
			t.Errorf("pg_tblspc/16385 -> %q, %v; want %s", l, err, ts)
		}
		if b, err := os.ReadFile(filepath.Join(ts, "PG_17_202406281/5/16400")); err != nil || string(b) != "relation" {
			t.Errorf("tablespace file: %q, %v", b, err)
		}
	})
	t.Run("mapped directory not empty", func(t *testing.T) {
		_, o := newBackupServer(t, script, nil)
		ts := t.TempDir()
		os.WriteFile(filepath.Join(ts, "precious"), []byte("x"), 0o600)
		o.TablespaceMap = map[string]string{"/srv/ts1": ts}
		if _, err := Capture(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Errorf("error %v", err)
		}
		if _, err := os.Stat(filepath.Join(ts, "precious")); err != nil {
			t.Error("a failed capture touched a non-empty tablespace directory")
		}
	})
	t.Run("mapped directory removed on failure", func(t *testing.T) {
		_, o := newBackupServer(t, func(s *fakeSession) {
			s.backupStart("0/3000028", "16385=/srv/ts1", "")
			s.send(newArchive("16385.tar", "/srv/ts1"))
			s.sendChunks(tsTar, 700)
			s.fail("XX000", "boom")
		}, nil)
		ts := filepath.Join(t.TempDir(), "ts1")
		o.TablespaceMap = map[string]string{"/srv/ts1": ts}
		if _, err := Capture(context.Background(), o); err == nil {
			t.Fatal("no error")
		}
		if _, err := os.Stat(ts); err == nil {
			t.Error("the tablespace directory made for the capture is still there")
		}
	})
	t.Run("in place", func(t *testing.T) {
		_, o := newBackupServer(t, script, nil)
		o.InPlaceTablespaces = true
		if _, err := Capture(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(o.Dir, "pg_tblspc/16385"))
		if err != nil || !fi.IsDir() {
			t.Fatalf("pg_tblspc/16385: %v, %v; want a directory", fi, err)
		}
		if b, err := os.ReadFile(filepath.Join(o.Dir, "pg_tblspc/16385/PG_17_202406281/5/16400")); err != nil || string(b) != "relation" {
			t.Errorf("tablespace file: %q, %v", b, err)
		}
	})
}

// TestCaptureStreamTimeline2: on a timeline after the first, the WAL
// receiver fetches the timeline's history file into pg_wal and names the
// segments with the timeline.
func TestCaptureStreamTimeline2(t *testing.T) {
	bs, o := newBackupServer(t, fullBackupScript(t), []pgproto3.BackendMessage{xlogData(0x3000000, bytes.Repeat([]byte{1}, 0x200))})
	bs.srv.tli = "2"
	o.WAL = WALStream
	if _, err := Capture(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if cmd := bs.sent("START_REPLICATION"); !strings.HasSuffix(cmd, "PHYSICAL 0/3000000 TIMELINE 2") {
		t.Errorf("sent %q", cmd)
	}
	h, err := os.ReadFile(filepath.Join(o.Dir, "pg_wal", "00000002.history"))
	if err != nil || !strings.HasPrefix(string(h), "1\t0/2FFFFFF") {
		t.Errorf("history file %q, %v", h, err)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, "pg_wal", "000000020000000000000003")); err != nil {
		t.Error(err)
	}
}
