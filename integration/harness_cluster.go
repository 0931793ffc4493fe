package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is one running (or stopped) PostgreSQL server started by the
// harness. The postmaster is a child of the test process: it is stopped at
// cleanup, and gets SIGQUIT (immediate shutdown) if the test process dies.
type Cluster struct {
	*Env
	DataDir string // in-root data directory
	Port    int    // TCP port on 127.0.0.1
	LogFile string // in-root server log, beside the data directory

	settings     []string // extra -c NAME=VALUE for every start
	env          []string // extra NAME=VALUE in the server's environment
	startTimeout time.Duration

	mu      sync.Mutex
	pid     int
	done    chan struct{} // closed when the postmaster has exited
	waitErr error         // its exit status, valid once done is closed
}

// ClusterOptions configures InitCluster.
type ClusterOptions struct {
	Dir             string            // in-root data directory; default TempDir/data
	NoDataChecksums bool              // checksums are on unless this is set
	Settings        map[string]string // extra postgresql.conf settings
	InitdbArgs      []string          // extra initdb arguments
}

// ServerOptions configures StartServer.
type ServerOptions struct {
	// FixOwnership gives the directory (and its tablespaces) to the server
	// user with mode 0700 first: a flatten output is written by root.
	FixOwnership bool
	Settings     map[string]string // extra -c NAME=VALUE on the command line
	StartTimeout time.Duration     // until the server accepts connections; default 5m
	// Env is added to the server's environment (and so to its
	// restore_command's): credentials of an S3 repository, say.
	Env []string
}

// clusterSettings are appended to postgresql.conf by InitCluster: what
// incremental backups need, plus speed without giving up fsync (the tests
// check durability).
var clusterSettings = [][2]string{
	{"listen_addresses", "127.0.0.1"},
	{"unix_socket_directories", "/tmp"},
	{"summarize_wal", "on"},
	{"wal_level", "replica"},
	{"max_wal_senders", "10"},
	{"synchronous_commit", "off"},
	{"shared_buffers", "128MB"},
	{"max_wal_size", "4GB"},
	{"checkpoint_timeout", "30min"},
}

// InitCluster creates a cluster with initdb (trust authentication, data
// checksums unless opts.NoDataChecksums), configures it for incremental
// backups and starts it.
func (e *Env) InitCluster(tb testing.TB, opts ClusterOptions) *Cluster {
	tb.Helper()
	dir := opts.Dir
	if dir == "" {
		dir = path.Join(e.TempDir(tb), "data")
	}
	args := []string{"-D", dir, "-A", "trust", "--no-sync", "--no-instructions"}
	if !opts.NoDataChecksums {
		args = append(args, "-k")
	} else if e.Major >= 18 {
		args = append(args, "--no-data-checksums") // on by default since 18
	}
	e.Run(tb, false, e.Tool("initdb"), append(args, opts.InitdbArgs...)...)

	c := e.newCluster(tb, dir, nil, 0)
	var conf strings.Builder
	conf.WriteString("\n# combinefs integration harness\n")
	fmt.Fprintf(&conf, "port = %d\n", c.Port)
	for _, kv := range clusterSettings {
		fmt.Fprintf(&conf, "%s = %s\n", kv[0], confQuote(kv[1]))
	}
	for _, k := range sortedKeys(opts.Settings) {
		fmt.Fprintf(&conf, "%s = %s\n", k, confQuote(opts.Settings[k]))
	}
	appendFile(tb, e.Host(path.Join(dir, "postgresql.conf")), conf.String())
	hba := e.Host(path.Join(dir, "pg_hba.conf"))
	b, err := os.ReadFile(hba)
	if err != nil {
		tb.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^host\s+replication\s+all\s+127\.0\.0\.1/32\s+trust\s*$`).Match(b) {
		appendFile(tb, hba, "host replication all 127.0.0.1/32 trust\n")
	}
	c.Start(tb)
	return c
}

// StartServer starts a server on an existing in-root data directory (a
// pg_combinebackup or flatten output, a FUSE mount) on a fresh port. Nothing
// in the directory is edited: the settings the harness needs are given on
// the command line.
func (e *Env) StartServer(tb testing.TB, dataDir string, opts ServerOptions) *Cluster {
	tb.Helper()
	if fi, err := os.Stat(e.Host(dataDir)); err != nil || !fi.IsDir() {
		tb.Fatalf("StartServer: %s is not a data directory (%v)", dataDir, err)
	}
	if opts.FixOwnership {
		e.ChownTree(tb, dataDir)
		if err := os.Chmod(e.Host(dataDir), 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	var settings []string
	for _, k := range sortedKeys(opts.Settings) {
		settings = append(settings, "-c", k+"="+opts.Settings[k])
	}
	c := e.newCluster(tb, dataDir, settings, opts.StartTimeout)
	c.env = opts.Env
	c.Start(tb)
	return c
}

// newCluster sets up a stopped Cluster on a fresh port and registers the
// cleanup that stops it.
func (e *Env) newCluster(tb testing.TB, dataDir string, settings []string, timeout time.Duration) *Cluster {
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	c := &Cluster{
		Env:          e,
		DataDir:      dataDir,
		Port:         FreePort(tb),
		LogFile:      path.Join(path.Dir(dataDir), path.Base(dataDir)+".log"),
		settings:     settings,
		startTimeout: timeout,
	}
	tb.Cleanup(func() { c.shutdown(tb) })
	return c
}

var errPortInUse = errors.New("port in use")

// Start starts the postmaster and waits until it accepts connections
// (through crash recovery, if the directory needs it). Should another
// program grab the port first, it retries on a new one.
func (c *Cluster) Start(tb testing.TB) {
	tb.Helper()
	for attempt := 0; ; attempt++ {
		log, err := c.start()
		if errors.Is(err, errPortInUse) && attempt < 3 {
			c.Port = FreePort(tb)
			continue
		}
		if err != nil {
			tb.Fatalf("starting the server on %s: %v\n--- server log of this start (%s) ---\n%s", c.DataDir, err, c.LogFile, lastLines(log, 60))
		}
		return
	}
}

// start launches the postmaster with its output appended to LogFile and
// waits for postmaster.pid to say "ready"; on failure it returns what the
// server logged during this attempt.
func (c *Cluster) start() (string, error) {
	if c.Running() {
		return "", errors.New("already running")
	}
	hostLog := c.Host(c.LogFile)
	logf, err := os.OpenFile(hostLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	if !c.asSelf {
		if err := logf.Chown(c.UID, c.GID); err != nil {
			return "", err
		}
	}
	offset, _ := logf.Seek(0, io.SeekEnd)
	logSince := func() string { return readFrom(hostLog, offset) }

	args := []string{"-D", c.DataDir, "-p", strconv.Itoa(c.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=/tmp",
		"-c", "recovery_init_sync_method=syncfs"}
	cmd := c.Command(context.Background(), false, c.Tool("postgres"), append(args, c.settings...)...)
	cmd.Env = append(cmd.Env, c.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	cmd.SysProcAttr.Setpgid = true // the terminal's ^C goes to the test only
	cmd.WaitDelay = 0
	if err := StartOnLockedThread(cmd); err != nil {
		return logSince(), err
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.pid, c.done = cmd.Process.Pid, done
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		c.waitErr = err
		c.mu.Unlock()
		close(done)
	}()

	deadline := time.Now().Add(c.startTimeout)
	for {
		if st := c.pidFileStatus(); st == "ready" || st == "standby" {
			return "", nil
		}
		select {
		case <-done:
			log := logSince()
			if strings.Contains(log, "Address already in use") {
				return log, errPortInUse
			}
			return log, fmt.Errorf("postmaster exited: %v", c.exitErr())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return logSince(), fmt.Errorf("not ready after %v", c.startTimeout)
		}
	}
}

// pidFileStatus reads the status line of postmaster.pid if the file belongs
// to our postmaster (a killed server leaves a stale one saying "ready").
func (c *Cluster) pidFileStatus() string {
	lines := pidFileLines(c.pidFile())
	if len(lines) < 8 || strings.TrimSpace(lines[0]) != strconv.Itoa(c.PID()) {
		return ""
	}
	return strings.TrimSpace(lines[7])
}

// PID is the postmaster's process id (of the last start).
func (c *Cluster) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pid
}

// Running reports whether the postmaster is alive.
func (c *Cluster) Running() bool {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

func (c *Cluster) exitErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waitErr
}

// shutdownSignals are pg_ctl stop's modes.
var shutdownSignals = map[string]syscall.Signal{
	"smart":     syscall.SIGTERM,
	"fast":      syscall.SIGINT,
	"immediate": syscall.SIGQUIT,
}

// Stop shuts the server down like pg_ctl stop -m mode (smart, fast or
// immediate) and waits for it; it fails the test if a smart or fast
// shutdown does not end with exit status 0 (a failed shutdown checkpoint).
func (c *Cluster) Stop(tb testing.TB, mode string) {
	tb.Helper()
	sig, ok := shutdownSignals[mode]
	if !ok {
		tb.Fatalf("Stop: unknown mode %q (smart, fast, immediate)", mode)
	}
	if !c.Running() {
		return
	}
	if !c.signalAndWait(sig, 2*time.Minute) {
		c.fatalf(tb, "server did not stop (-m %s) within 2 minutes", mode)
	}
	c.waitGroupGone(30 * time.Second)
	if err := c.exitErr(); err != nil && mode != "immediate" {
		c.fatalf(tb, "server stopped (-m %s) with %v", mode, err)
	}
}

// Kill9 kills the postmaster with SIGKILL, as a crash would, and waits
// until it and the backends it leaves behind have exited, so that Start can
// run crash recovery right away.
func (c *Cluster) Kill9(tb testing.TB) {
	tb.Helper()
	if !c.Running() {
		c.fatalf(tb, "Kill9: server is not running")
	}
	if !c.signalAndWait(syscall.SIGKILL, time.Minute) {
		c.fatalf(tb, "postmaster survived SIGKILL")
	}
	if !c.waitGroupGone(30 * time.Second) {
		syscall.Kill(-c.PID(), syscall.SIGKILL)
		c.waitGroupGone(10 * time.Second)
	}
}

// Restart is a fast shutdown followed by Start on the same port.
func (c *Cluster) Restart(tb testing.TB) {
	tb.Helper()
	c.Stop(tb, "fast")
	c.Start(tb)
}

// signalAndWait sends sig to the postmaster and reports whether it exited
// within d.
func (c *Cluster) signalAndWait(sig syscall.Signal, d time.Duration) bool {
	c.mu.Lock()
	pid, done := c.pid, c.done
	c.mu.Unlock()
	syscall.Kill(pid, sig)
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// waitGroupGone waits until no process of the server is left, reporting
// whether that happened within d (see WaitServerGone).
func (c *Cluster) waitGroupGone(d time.Duration) bool {
	return WaitServerGone(c.PID(), c.pidFile(), d)
}

func (c *Cluster) pidFile() string { return c.Host(path.Join(c.DataDir, "postmaster.pid")) }

// shmID is the System V shared memory id recorded in the server's
// postmaster.pid (see shmIDOf).
func (c *Cluster) shmID() int { return shmIDOf(c.pidFile()) }

// WaitServerGone waits until no process of the server whose postmaster was
// pid is left, reporting whether that happened within d: none in the
// postmaster's process group, and none attached to the shared memory named
// in pidFile (its postmaster.pid, host path). Each backend makes itself a
// group leader (setsid in InitPostmasterChild), so after a kill -9 only the
// shared memory segment shows the backends still exiting; a restart while
// one is attached fails with "pre-existing shared memory block is still in
// use", and an unmount finds the mount busy.
func WaitServerGone(pid int, pidFile string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	shmid := shmIDOf(pidFile)
	for GroupAlive(pid) || (shmid >= 0 && shmAttached(shmid)) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// shmIDOf is the System V shared memory id recorded in a postmaster.pid, -1
// if there is none (the file is removed by a clean shutdown).
func shmIDOf(pidFile string) int {
	lines := pidFileLines(pidFile)
	if len(lines) < 7 {
		return -1
	}
	// Line 7: "KEY ID" of the segment.
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return -1
	}
	id, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return id
}

// pidFileLines is the lines of a postmaster.pid, none if it cannot be read.
func pidFileLines(pidFile string) []string {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil
	}
	return strings.Split(string(b), "\n")
}

// shmAttached reports whether a process still has segment shmid attached.
func shmAttached(shmid int) bool {
	b, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		// key shmid perms size cpid lpid nattch ...
		f := strings.Fields(l)
		if len(f) >= 7 && f[1] == strconv.Itoa(shmid) {
			return f[6] != "0"
		}
	}
	return false
}

// shutdown is the cleanup: fast, then immediate, then SIGKILL of the whole
// process group, so no test leaves a server behind.
func (c *Cluster) shutdown(tb testing.TB) {
	if tb.Failed() && c.PID() != 0 {
		tb.Logf("--- server log tail (%s) ---\n%s", c.LogFile, c.LogTail())
	}
	if !c.Running() {
		return
	}
	if c.signalAndWait(syscall.SIGINT, time.Minute) {
		c.waitGroupGone(30 * time.Second)
		return
	}
	tb.Logf("cleanup: server on %s ignored a fast shutdown; immediate", c.DataDir)
	if c.signalAndWait(syscall.SIGQUIT, 15*time.Second) && c.waitGroupGone(15*time.Second) {
		return
	}
	tb.Logf("cleanup: killing server on %s", c.DataDir)
	syscall.Kill(-c.PID(), syscall.SIGKILL)
	c.signalAndWait(syscall.SIGKILL, 15*time.Second)
	c.waitGroupGone(15 * time.Second)
}

// LogTail returns the last lines of the server log, for failure messages.
func (c *Cluster) LogTail() string {
	return lastLines(readFrom(c.Host(c.LogFile), -256<<10), 60)
}

// fatalf fails the test with the server log tail appended.
func (c *Cluster) fatalf(tb testing.TB, format string, args ...any) {
	tb.Helper()
	tb.Fatalf("%s\n--- server log tail (%s) ---\n%s", fmt.Sprintf(format, args...), c.LogFile, c.LogTail())
}

// Exec runs SQL (several statements allowed, each in its own transaction)
// with psql -XAtq -v ON_ERROR_STOP=1 over TCP and returns the trimmed
// output; fields are separated by "|".
func (c *Cluster) Exec(db, sql string) (string, error) {
	cmd := c.Command(context.Background(), false, c.Tool("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1",
		"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-d", db, "-f", "-")
	cmd.Stdin = strings.NewReader(sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("psql -d %s: %v: %s", db, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// ConnString is a libpq/pgx connection string for database db, usable from
// the host as well as from inside the root.
func (c *Cluster) ConnString(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", c.Port, c.User, db)
}

// Psql is Exec that fails the test (with the server log) on error.
func (c *Cluster) Psql(tb testing.TB, db, sql string) string {
	tb.Helper()
	out, err := c.Exec(db, sql)
	if err != nil {
		c.fatalf(tb, "%v\nSQL: %s", err, abbreviate(sql, 2000))
	}
	return out
}

// Pgbench runs pgbench against the server (args as on its command line,
// database last; the default database is "postgres").
func (c *Cluster) Pgbench(tb testing.TB, args ...string) string {
	tb.Helper()
	full := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port)}, args...)
	out, err := c.Command(context.Background(), false, c.Tool("pgbench"), full...).CombinedOutput()
	if err != nil {
		c.fatalf(tb, "pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// CreateDatabase creates a database.
func (c *Cluster) CreateDatabase(tb testing.TB, name string) {
	tb.Helper()
	c.Psql(tb, "postgres", "CREATE DATABASE "+quoteIdent(name))
}

// BaseBackup takes a plain-format backup with the real pg_basebackup
// (-X stream -c fast) into the in-root dest; with incrementalFromManifest it
// is an incremental one (-i), taken after WaitForWALSummary. extraArgs go
// last (e.g. "-T", OLD+"="+NEW for a tablespace, "--no-sync").
func (c *Cluster) BaseBackup(tb testing.TB, dest, incrementalFromManifest string, extraArgs ...string) {
	tb.Helper()
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-D", dest, "-Fp", "-X", "stream", "-c", "fast"}
	if incrementalFromManifest != "" {
		c.WaitForWALSummary(tb)
		args = append(args, "-i", incrementalFromManifest)
	}
	args = append(args, extraArgs...)
	out, err := c.Command(context.Background(), false, c.Tool("pg_basebackup"), args...).CombinedOutput()
	if err != nil {
		c.fatalf(tb, "pg_basebackup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// WaitForWALSummary makes WAL summaries cover everything written so far: it
// forces a checkpoint (which also wakes the summarizer, asleep for up to 30
// seconds on an idle server) and waits until the summaries reach that
// checkpoint's redo point. pg_basebackup -i then only waits for the small
// stretch up to its own checkpoint instead of stalling or failing with "WAL
// summarization is not progressing".
func (c *Cluster) WaitForWALSummary(tb testing.TB) {
	tb.Helper()
	if on := c.Psql(tb, "postgres", "SHOW summarize_wal"); on != "on" {
		c.fatalf(tb, "summarize_wal is %q: incremental backups need it on", on)
	}
	c.Psql(tb, "postgres", "CHECKPOINT")
	redo := c.Psql(tb, "postgres", "SELECT redo_lsn FROM pg_control_checkpoint()")
	q := fmt.Sprintf("SELECT summarized_lsn >= '%s'::pg_lsn, summarized_lsn, pending_lsn, summarizer_pid FROM pg_get_wal_summarizer_state()", redo)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := c.Psql(tb, "postgres", q)
		if strings.HasPrefix(st, "t|") {
			return
		}
		if time.Now().After(deadline) {
			c.fatalf(tb, "WAL summarization did not reach %s within 2 minutes (ok|summarized|pending|pid: %s)", redo, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readFrom returns a file's content from offset (negative: that far before
// the end), or "" if it cannot be read.
func readFrom(name string, offset int64) string {
	f, err := os.Open(name)
	if err != nil {
		return ""
	}
	defer f.Close()
	if offset < 0 {
		if fi, err := f.Stat(); err == nil && fi.Size() > -offset {
			offset += fi.Size()
		} else {
			offset = 0
		}
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func abbreviate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func appendFile(tb testing.TB, name, text string) {
	tb.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// confQuote quotes a postgresql.conf value; quoted values are accepted for
// every setting type.
func confQuote(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
