package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/dio"
	"github.com/combinefs/combinefs/repo"
)

// Result describes a finished backup.
type Result struct {
	Dir         string
	SystemID    uint64
	ServerMajor int
	Timeline    uint32
	StartLSN    LSN
	EndLSN      LSN
	Incremental bool
	// Bytes is the size of the archives received, WALBytes what the WAL
	// stream wrote.
	Bytes    int64
	WALBytes int64
	Elapsed  time.Duration
}

// The oldest servers capture talks to: the tagged copy stream is
// PostgreSQL 15's, incremental backup 17's.
const (
	MinServerMajor            = 15
	MinServerMajorIncremental = 17
)

// Capture takes one backup. On failure, including cancellation of ctx, it
// removes everything it wrote and returns an error; Options.Dir then does
// not exist, or is the empty directory it was.
func Capture(ctx context.Context, o Options) (*Result, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	c := &capturer{o: &o, begun: time.Now()}
	res, err := c.run(ctx)
	if err != nil {
		c.cleanup()
		if ctx.Err() != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return nil, err
	}
	return res, nil
}

// capturer holds the state of one capture, for run and for cleanup.
type capturer struct {
	o     *Options
	begun time.Time

	final   string // the backup directory to create
	tmp     string // where it is written
	created []string
	emptied []string

	x        *extractor
	sync     *syncer
	local    *localOut // a local directory tree
	store    *storeOut // or a point in a repository's object store
	wal      *walStreamer
	lastProg time.Time
	total    int64
}

func (c *capturer) report(p Progress) {
	if c.o.Progress == nil {
		return
	}
	if p.Phase == PhaseTransfer && p.Done < p.Total {
		now := time.Now()
		if now.Sub(c.lastProg) < 100*time.Millisecond {
			return
		}
		c.lastProg = now
	}
	c.o.Progress(p)
}

func (c *capturer) run(ctx context.Context) (*Result, error) {
	// Refuse a non-empty directory before asking the server for anything
	// (prepareDir checks again, just before writing).
	if c.o.into == nil {
		abs, err := filepath.Abs(c.o.Dir)
		if err != nil {
			return nil, err
		}
		if err := checkEmptyOrMissing(abs); err != nil {
			return nil, err
		}
	}
	c.report(Progress{Phase: PhaseConnect})
	cfg := c.o.Conn.Copy()
	ictx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	conn, err := connect(ictx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	srv, err := c.checkServer(ictx, conn)
	if err != nil {
		return nil, err
	}
	lay, stopWAL, err := c.prepare(ictx, cfg, srv)
	if err != nil {
		return nil, err
	}
	defer stopWAL()
	if srv.incremental {
		if _, err := conn.CopyFrom(ictx, bytes.NewReader(c.o.PriorManifest), "UPLOAD_MANIFEST"); err != nil {
			return nil, classify(err, "upload prior manifest")
		}
	}
	// From here on, the copy stream is read without a context (see
	// streamReader); cancelling ictx breaks the connection instead.
	stopBreak := context.AfterFunc(ictx, func() { conn.Conn().SetDeadline(time.Unix(1, 0)) })
	defer stopBreak()
	res, endTLI, err := c.transfer(ictx, conn, lay, cancel)
	if err != nil {
		return nil, err
	}
	conn.Close(context.Background())
	res.SystemID, res.ServerMajor, res.Incremental = srv.sys.ID, srv.major, srv.incremental
	if c.wal != nil {
		c.report(Progress{Phase: PhaseWAL, Done: c.x.received, Total: c.x.received})
		if endTLI != res.Timeline {
			return nil, fmt.Errorf("backup started on timeline %d and ended on %d; streamed WAL cannot cover a timeline switch, use the fetch WAL method", res.Timeline, endTLI)
		}
		c.wal.stop(res.EndLSN)
		err := c.wal.wait()
		res.WALBytes = c.wal.bytes
		c.wal = nil
		if err != nil {
			return nil, err
		}
	}
	c.report(Progress{Phase: PhaseSync, Done: c.x.received, Total: c.x.received})
	if err := c.finish(); err != nil {
		return nil, err
	}
	res.Dir = c.final
	res.Elapsed = time.Since(c.begun)
	c.report(Progress{Phase: PhaseDone, Done: c.x.received, Total: c.x.received})
	return res, nil
}

// serverFacts is what capture learns of the server before the backup.
type serverFacts struct {
	major       int
	sys         system
	segSize     int64
	incremental bool
	dirMode     fs.FileMode // of the backup's directories, as the server's
}

// checkServer refuses a server capture cannot back up (too old, another
// cluster than the prior backup's, summarize_wal off for an incremental).
func (c *capturer) checkServer(ctx context.Context, conn *pgconn.PgConn) (*serverFacts, error) {
	major, err := serverMajor(conn)
	if err != nil {
		return nil, err
	}
	f := &serverFacts{major: major, incremental: c.o.PriorManifest != nil, dirMode: 0o700}
	if major < MinServerMajor {
		return nil, fmt.Errorf("%w: server is PostgreSQL %d, capture needs %d or later", ErrUnsupportedServer, major, MinServerMajor)
	}
	if f.incremental && major < MinServerMajorIncremental {
		return nil, fmt.Errorf("%w: server is PostgreSQL %d, incremental backups need %d or later", ErrUnsupportedServer, major, MinServerMajorIncremental)
	}
	if f.sys, err = identifySystem(ctx, conn); err != nil {
		return nil, err
	}
	if f.segSize, err = walSegmentSize(ctx, conn); err != nil {
		return nil, err
	}
	if f.incremental {
		if id, ok := manifestSystemID(c.o.PriorManifest); ok && id != f.sys.ID {
			return nil, fmt.Errorf("%w: its manifest names system %d, the server is system %d", ErrOtherCluster, id, f.sys.ID)
		}
		v, err := show(ctx, conn, "summarize_wal")
		if err != nil {
			return nil, err
		}
		if v != "on" {
			return nil, ErrSummarizeWALOff
		}
	}
	if v, err := show(ctx, conn, "data_directory_mode"); err == nil {
		if m, err := strconv.ParseUint(v, 8, 32); err == nil && m&0o077 == 0o050 {
			f.dirMode = 0o750
		}
	}
	return f, nil
}

// prepare sets up the output, the extractor and, for the stream WAL
// method, the WAL streamer; stop releases the streamer's wake-up.
func (c *capturer) prepare(ctx context.Context, cfg *pgconn.Config, srv *serverFacts) (lay *layout, stop func(), err error) {
	out, root, err := c.prepareOutput(ctx, srv.dirMode)
	if err != nil {
		return nil, nil, err
	}
	lay = &layout{root: root, inPlace: c.o.InPlaceTablespaces, mapping: c.o.TablespaceMap, byLocation: map[string]uint32{}}
	c.x = &extractor{layout: lay, out: out}
	if c.store != nil {
		c.x.memManifest = &bytes.Buffer{}
	}
	c.x.onData = func(done int64, archive string) {
		c.report(Progress{Phase: PhaseTransfer, Done: done, Total: max(c.total, done), Archive: archive})
	}
	if c.o.WAL != WALStream {
		return lay, func() {}, nil
	}
	walDir := filepath.Join(root, "pg_wal")
	if err := out.mkdirAll(filepath.Join(walDir, "archive_status")); err != nil {
		return nil, nil, err
	}
	if c.wal, err = openWALStreamer(ctx, cfg, srv.sys.ID, walDir, srv.segSize, c.o, out); err != nil {
		return nil, nil, err
	}
	stopWake := context.AfterFunc(ctx, c.wal.wake)
	return lay, func() { stopWake() }, nil
}

// transfer runs BASE_BACKUP and extracts its archives; with the stream WAL
// method it starts the WAL streamer at the backup's start, whose failure
// cancels the backup. It returns the backup's start, end and end timeline.
func (c *capturer) transfer(ctx context.Context, conn *pgconn.PgConn, lay *layout, cancel context.CancelCauseFunc) (*Result, uint32, error) {
	c.report(Progress{Phase: PhaseCheckpoint})
	conn.Frontend().Send(&pgproto3.Query{String: baseBackupCommand(c.o)})
	if err := conn.Frontend().Flush(); err != nil {
		return nil, 0, classify(err, "base backup")
	}
	r := &streamReader{ctx: ctx, src: conn, notice: c.o.Notice}
	st, err := r.readStart()
	if err != nil {
		return nil, 0, classify(err, "base backup")
	}
	for _, ts := range st.Tablespaces {
		if ts.SizeKB > 0 {
			c.total += ts.SizeKB * 1024
		}
		if ts.OID != 0 {
			lay.byLocation[ts.Location] = ts.OID
		}
	}
	if err := c.prepareTablespaces(lay, st.Tablespaces); err != nil {
		return nil, 0, err
	}
	if c.wal != nil {
		c.wal.onFail = cancel
		if err := c.wal.start(ctx, st.StartLSN, st.Timeline); err != nil {
			return nil, 0, err
		}
	}
	c.report(Progress{Phase: PhaseTransfer, Total: c.total})
	if err := r.readCopy(c.x, len(st.Tablespaces)); err != nil {
		return nil, 0, classify(err, "base backup")
	}
	end, endTLI, err := r.readEnd()
	if err != nil {
		return nil, 0, classify(err, "base backup")
	}
	c.report(Progress{Phase: PhaseTransfer, Done: c.x.received, Total: c.x.received})
	return &Result{Timeline: st.Timeline, StartLSN: st.StartLSN, EndLSN: end, Bytes: c.x.received}, endTLI, nil
}

// prepareOutput sets up where the backup goes and returns its output and
// its root directory: a point in a repository's object store, or a
// temporary directory (prepareDir).
func (c *capturer) prepareOutput(ctx context.Context, mode fs.FileMode) (output, string, error) {
	if in := c.o.into; in != nil && in.r.Remote() {
		algo := format.ChecksumCRC32C
		if c.o.ManifestChecksums != "" {
			algo, _ = format.ParseChecksumType(c.o.ManifestChecksums)
		}
		c.store = newStoreOut(ctx, in.r, in.name, algo)
		return c.store, c.store.root, nil
	}
	if err := c.prepareDir(mode); err != nil {
		return nil, "", err
	}
	c.sync = newSyncer(c.o.NoSync)
	c.local = &localOut{sync: c.sync}
	return c.local, c.tmp, nil
}

// prepareDir checks the output directory and makes the temporary one next
// to it.
func (c *capturer) prepareDir(mode fs.FileMode) error {
	if in := c.o.into; in != nil {
		tmp, err := in.r.Stage(in.name)
		if err != nil {
			return err
		}
		c.tmp = tmp
		return os.Chmod(tmp, mode)
	}
	final, err := filepath.Abs(c.o.Dir)
	if err != nil {
		return err
	}
	if err := checkEmptyOrMissing(final); err != nil {
		return err
	}
	parent := filepath.Dir(final)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return err
	}
	tmp, err := repo.StageIn(parent, filepath.Base(final))
	if err != nil {
		return err
	}
	c.final, c.tmp = final, tmp
	return os.Chmod(tmp, mode)
}

// checkEmptyOrMissing fails unless dir is missing or an empty directory.
func checkEmptyOrMissing(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", dir)
	}
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return fmt.Errorf("directory %s exists but is not empty", dir)
	}
	if err != nil && err != io.EOF {
		return err
	}
	return nil
}

// prepareTablespaces makes, or checks empty, the directories that
// tablespaces outside the backup directory go to.
func (c *capturer) prepareTablespaces(lay *layout, tss []tablespace) error {
	seen := map[string]uint32{}
	for _, ts := range tss {
		if ts.OID == 0 {
			continue
		}
		dir, err := lay.archiveDir(ts.Location)
		if err != nil {
			return err
		}
		if other, ok := seen[dir]; ok {
			return fmt.Errorf("tablespaces %d and %d would both go to %s", other, ts.OID, dir)
		}
		seen[dir] = ts.OID
		if lay.inPlace || !filepath.IsAbs(ts.Location) {
			continue // inside the temporary directory
		}
		if err := checkEmptyOrMissing(dir); err != nil {
			return fmt.Errorf("tablespace %d: %w", ts.OID, err)
		}
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			c.created = append(c.created, dir)
		} else {
			c.emptied = append(c.emptied, dir)
		}
		c.local.addDir(dir)
		c.local.addDir(filepath.Dir(dir))
	}
	return nil
}

// finish makes the backup durable and gives it its name: every file and
// directory fsynced, then backup_manifest.tmp renamed to backup_manifest,
// then the directory renamed into place.
func (c *capturer) finish() error {
	if c.store != nil {
		return c.finishStore()
	}
	err := c.sync.wait()
	c.sync = nil
	if err != nil {
		return err
	}
	if !c.o.NoSync {
		if err := syncDirs(append(c.local.dirs, c.tmp)); err != nil {
			return err
		}
	}
	if err := durableRename(filepath.Join(c.tmp, manifestTmpName), filepath.Join(c.tmp, "backup_manifest"), c.o.NoSync); err != nil {
		return err
	}
	if in := c.o.into; in != nil {
		final, err := in.r.Publish(c.tmp, in.name)
		if err != nil {
			return err
		}
		c.final, c.tmp = final, ""
		return nil
	}
	// rename(2), unlike os.Rename, replaces an empty directory, which is
	// what -D names when it exists.
	if err := syscall.Rename(c.tmp, c.final); err != nil {
		return &os.LinkError{Op: "rename", Old: c.tmp, New: c.final, Err: err}
	}
	c.tmp = ""
	if !c.o.NoSync {
		if err := dio.Sync(filepath.Dir(c.final)); err != nil {
			return err
		}
	}
	return nil
}

// cleanup removes what a failed capture wrote. It waits for the goroutines
// that may still write first.
func (c *capturer) cleanup() {
	if c.x != nil {
		c.x.abort()
	}
	if c.store != nil {
		defer c.store.abort() // once the WAL streamer has stopped writing
	}
	if c.wal != nil {
		c.wal.conn.Conn().SetDeadline(time.Unix(1, 0))
		if c.wal.done != nil {
			<-c.wal.done
		}
		c.wal.abort()
	}
	if c.sync != nil {
		c.sync.wait()
	}
	if c.tmp != "" {
		os.RemoveAll(c.tmp)
	}
	for _, d := range c.created {
		os.RemoveAll(d)
	}
	for _, d := range c.emptied {
		removeContents(d)
	}
}

// removeContents empties a directory.
func removeContents(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// manifestSystemID finds the System-Identifier near the start of a version 2
// manifest. (Parsing the whole manifest is format's job; this is all the
// check needs.)
func manifestSystemID(m []byte) (uint64, bool) {
	head := m[:min(len(m), 4096)]
	sub := manifestSysIDRe.FindSubmatch(head)
	if sub == nil {
		return 0, false
	}
	id, err := strconv.ParseUint(string(sub[1]), 10, 64)
	return id, err == nil
}

var manifestSysIDRe = regexp.MustCompile(`"System-Identifier"\s*:\s*([0-9]+)`)
