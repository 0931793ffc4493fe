package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/resolver"
)

type execOptions struct {
	repo, point string
	owner       string
	keep        bool
	cacheSize   string
	pitr        pitrOptions
	s3          *repo.S3Options
}

func setupExec(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var o execOptions
	// Everything after the chain is the command's, flags included.
	f.SetInterspersed(false)
	f.StringVar(&o.repo, "repo", "", "backup repository `DIR` or s3://BUCKET/PREFIX (with --point)")
	o.s3 = s3Flags(f)
	f.StringVar(&o.point, "point", "", "`NAME` of the repository point to run on")
	f.StringVar(&o.owner, "owner", "", "`USER[:GROUP]` the server runs as (default: owner of the final backup; root only)")
	f.BoolVar(&o.keep, "keep", false, "leave the server and the mount running after CMD (CMD optional) and print how to reach and stop them")
	f.StringVar(&o.cacheSize, "cache-size", "256MiB", "block cache `SIZE` of the mount")
	// CMD must see the state AT the target: exec waits until recovery
	// has ended (promote) or replay has paused there (pause) before
	// running it; a server that shuts down at the target serves nothing.
	o.pitr.addFlags(f, "with --repo (no --point)", "promote",
		"`promote|pause` at the target: CMD must see the state AT the target, so exec runs it once recovery has ended there "+
			"(promote: pg_is_in_recovery() is false, the server writable) or replay has paused there (pause: read-only); "+
			"shutdown is refused (CMD would find no server)")
	return func(ctx context.Context, args []string) error {
		return runExec(ctx, &o, args, f.ArgsLenAtDash())
	}
}

// split separates the backups of the chain (none with --repo) from the
// command. dash is where pflag saw "--" (-1: it stopped at the first
// operand and "--", if any, is still in args).
func (o *execOptions) split(args []string, dash int) (chain, cmd []string, err error) {
	if err := o.pitr.parse(); err != nil {
		return nil, nil, err
	}
	if o.pitr.action == "shutdown" {
		return nil, nil, usageError{"--target-action shutdown does not go with exec: the server would stop at the target before the command runs (use promote or pause)"}
	}
	if o.pitr.set() && (o.repo == "" || o.point != "") {
		return nil, nil, usageError{"a recovery target needs --repo, and picks the point itself (no --point)"}
	}
	if o.repo != "" || o.point != "" {
		if o.repo == "" || o.point == "" && !o.pitr.set() {
			return nil, nil, usageError{"--repo and --point go together"}
		}
		if dash > 0 {
			return nil, nil, usageError{"with --repo, give no backups before --"}
		}
		chain, cmd = nil, args
	} else {
		if dash < 0 {
			dash = slices.Index(args, "--")
			if dash >= 0 {
				args = slices.Delete(slices.Clone(args), dash, dash+1)
			}
		}
		if dash <= 0 {
			return nil, nil, usageError{"give the backups of the chain, oldest first, then -- and the command"}
		}
		chain, cmd = args[:dash], args[dash:]
	}
	if len(cmd) == 0 && !o.keep {
		return nil, nil, usageError{"give the command to run (after --)"}
	}
	return chain, cmd, nil
}

// execSession is one exec: what was found before anything is created, then
// what was made, undone in reverse order by cleanup.
type execSession struct {
	chain    *resolver.Chain
	point    *resolver.Tree
	bin      string // PostgreSQL's bin directory
	uid, gid uint32
	user     string // the server's OS user: PGUSER (initdb's superuser is named after it)
	cmd      []string
	cmdPath  string
	cache    int64
	pitr     *pitrOptions // the recovery target, if any
	repoDir  string       // its repository, whose archive the server reads

	base, data, sock string
	port             int
	mount            *fusefs.Mount
	server           *pgServer
	undo             []func() error
}

func runExec(ctx context.Context, o *execOptions, args []string, dash int) (err error) {
	chainArgs, cmdArgs, err := o.split(args, dash)
	if err != nil {
		return err
	}
	keeper := o.keep && os.Getenv(daemonEnv) != ""
	if keeper {
		defer func() {
			if err != nil {
				notifyReady(err.Error())
			}
		}()
	}
	dirs, hold := chainArgs, (*repo.Hold)(nil)
	copts := resolver.ChainOptions{RequireV2Manifests: true}
	if o.pitr.set() {
		o.pitr.s3 = *o.s3
		// A target outside the archive's windows is refused here,
		// before anything is made.
		if o.point, err = o.pitr.choosePoint(ctx, o.repo); err != nil {
			return err
		}
	}
	if o.repo != "" {
		// The chain's points stay locked (shared) while exec runs.
		if dirs, copts, hold, err = repoChainWith(ctx, "exec", o.repo, o.point, *o.s3); err != nil {
			return err
		}
		defer hold.Release()
	}
	s, err := planExec(o, dirs, copts, cmdArgs)
	if err != nil {
		return err
	}
	if o.keep && !keeper {
		return runKept(ctx, s)
	}
	defer func() {
		if cerr := s.cleanup(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := s.start(ctx); err != nil {
		return err
	}
	if keeper {
		return s.serveKept(ctx)
	}
	return s.runCommand(ctx, s.env())
}

// planExec checks everything that can be checked before anything is
// created: the chain (read with copts: a repository's in an object store
// through its source), the PostgreSQL binaries, the server's user, the
// command.
func planExec(o *execOptions, dirs []string, copts resolver.ChainOptions, cmd []string) (*execSession, error) {
	var err error
	s := &execSession{cmd: cmd}
	if o.pitr.set() {
		s.pitr, s.repoDir = &o.pitr, o.repo
	}
	if s.cache, err = parseSize(o.cacheSize); err != nil {
		return nil, usageError{fmt.Sprintf("--cache-size: %v", err)}
	}
	if s.chain, s.point, err = openPointWith(dirs, copts, execLog); err != nil {
		return nil, err
	}
	if s.bin, err = findPgBin(s.chain.Major); err != nil {
		return nil, err
	}
	if !resolver.IsLocal(s.chain.Source) && o.owner == "" && os.Geteuid() == 0 {
		return nil, fmt.Errorf("%s is in an object store, whose files have no owner, and PostgreSQL does not run as root: give --owner USER", s.chain.Final().Dir)
	}
	if s.uid, s.gid, s.user, err = serverOwner(o.owner, s.chain.Final().Dir); err != nil {
		return nil, err
	}
	if len(cmd) > 0 {
		if s.cmdPath, err = lookPathIn(cmd[0], s.pathEnv()); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// execLog reports the chain's warnings and the mount's read errors on
// stderr, beside the command's own messages.
func execLog(msg string) { fmt.Fprintf(stderr, "combinefs exec: %s\n", msg) }

// serverOwner is the user the server runs as: as root the owner of the
// final backup or --owner (PostgreSQL refuses root), else ourselves.
func serverOwner(spec, finalDir string) (uid, gid uint32, name string, err error) {
	if os.Geteuid() != 0 {
		if spec != "" {
			return 0, 0, "", usageError{"--owner needs root (the server runs as you)"}
		}
		uid, gid = uint32(os.Getuid()), uint32(os.Getgid())
	} else if uid, gid, err = resolveOwner(spec, finalDir); err != nil {
		return 0, 0, "", err
	} else if uid == 0 {
		return 0, 0, "", fmt.Errorf("%s belongs to root and PostgreSQL does not run as root: give --owner USER", finalDir)
	}
	name = strconv.Itoa(int(uid))
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	return uid, gid, name, nil
}

// pathEnv is the command's PATH: the point's PostgreSQL first, so psql and
// pg_dump match its server.
func (s *execSession) pathEnv() string {
	return s.bin + string(os.PathListSeparator) + os.Getenv("PATH")
}

// lookPathIn finds a program as a shell would with PATH set to pathEnv.
func lookPathIn(name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", fmt.Errorf("command %s: %s", name, errText(err))
		}
		return name, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in PATH", name)
}

// env is the command's environment: ours, with the server's connection
// and PostgreSQL's bin directory first in PATH. PGHOSTADDR and PGSERVICE
// would send libpq elsewhere.
func (s *execSession) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains([]string{"PATH", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATA", "PGSERVICE"}, k) {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+s.pathEnv(), "PGHOST="+s.sock, "PGPORT="+strconv.Itoa(s.port), "PGUSER="+s.user, "PGDATA="+s.data)
}

// start makes the private directories, mounts the point copy-on-write and
// starts the server, waiting until it accepts connections.
func (s *execSession) start(ctx context.Context) error {
	sweepStale()
	if err := s.makeDirs(); err != nil {
		return err
	}
	m, err := fusefs.MountCoW(s.data, s.point, filepath.Join(s.base, "upper"), fusefs.Options{
		UID: s.uid, GID: s.gid, AllowOther: os.Geteuid() == 0, DefaultPermissions: os.Geteuid() == 0,
		CacheBytes: s.cache, NoPassthrough: true, WritebackCache: true,
		Log:    execLog,
		FsName: "combinefs:" + filepath.Base(s.chain.Final().Dir),
	})
	if err != nil {
		return err
	}
	s.mount = m
	s.undo = append(s.undo, s.unmount)
	if s.pitr != nil {
		if err := s.pitr.writeRecovery(s.data, s.repoDir); err != nil {
			return err
		}
	}
	closeOnExec()
	if s.port, err = freePort(); err != nil {
		return err
	}
	srv, err := startPostgres(s.bin, s.data, filepath.Join(s.base, "server.log"), s.serverSettings(), s.uid, s.gid)
	if err != nil {
		return err
	}
	s.server = srv
	s.undo = append(s.undo, srv.stop)
	if err := srv.waitReady(ctx); err != nil {
		return err
	}
	if s.pitr != nil {
		return s.waitTarget(ctx)
	}
	return nil
}

// makeDirs creates the private directory holding everything of this exec:
// upper/ (the copy-on-write changes, root's), data/ (the mount point),
// sock/ (the server's socket, 0700: trust authentication on it is safe as
// only the server's user and root reach it) and the server's own
// configuration files.
func (s *execSession) makeDirs() error {
	base, err := os.MkdirTemp("", execDirPrefix)
	if err != nil {
		return err
	}
	s.base, s.data, s.sock = base, filepath.Join(base, "data"), filepath.Join(base, "sock")
	s.undo = append(s.undo, func() error { return os.RemoveAll(base) })
	// Who owns it, for sweepStale should we be killed.
	if err := os.WriteFile(filepath.Join(base, execPIDFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return err
	}
	// The server's user may pass through, not list.
	if err := os.Chmod(base, 0o711); err != nil {
		return err
	}
	if err := os.Mkdir(s.data, 0o700); err != nil {
		return err
	}
	files := map[string]string{
		"pg_hba.conf":   "local all all trust\n",
		"pg_ident.conf": "",
		// The backup's own settings (a Debian backup has none: they live
		// in /etc), then ours on the command line over them.
		"postgresql.conf": fmt.Sprintf("include_if_exists '%s'\n", strings.ReplaceAll(filepath.Join(s.data, "postgresql.conf"), "'", "''")),
	}
	if err := os.Mkdir(s.sock, 0o700); err != nil {
		return err
	}
	if err := os.Lchown(s.sock, int(s.uid), int(s.gid)); err != nil {
		return err
	}
	for name, text := range files {
		p := filepath.Join(base, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			return err
		}
		if err := os.Lchown(p, int(s.uid), int(s.gid)); err != nil {
			return err
		}
	}
	return nil
}

// serverSettings keep the server private and harmless to the cluster the
// backups come from: no TCP listener, its socket in sock/, our own
// authentication files, no WAL archiving, no replication connection, no
// pid file or SSL files of the original's; and no fsync.
func (s *execSession) serverSettings() []string {
	return []string{
		"config_file=" + filepath.Join(s.base, "postgresql.conf"),
		"hba_file=" + filepath.Join(s.base, "pg_hba.conf"),
		"ident_file=" + filepath.Join(s.base, "pg_ident.conf"),
		"listen_addresses=",
		"port=" + strconv.Itoa(s.port),
		"unix_socket_directories=" + s.sock,
		"unix_socket_permissions=0700",
		"external_pid_file=",
		"ssl=off",
		"archive_mode=off",
		"primary_conninfo=",
		"logging_collector=off",
		"log_destination=stderr",
		// One syncfs of the mount, not an fsync per file of the point.
		"recovery_init_sync_method=syncfs",
		// Everything the server writes goes to the temporary upper
		// directory and is thrown away: durability would only cost time
		// (the start's sync of the data directory, the checkpoints').
		"fsync=off",
		// Connections during recovery, so that exec sees when replay
		// has paused at a target (the backup's may say off).
		"hot_standby=on",
	}
}

// freePort picks a port number no TCP listener uses; the server listens on
// its Unix socket only, so this just keeps the socket's name unusual.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// unmount unmounts the point, lazily should something still hold it, so
// that no mount outlives exec.
func (s *execSession) unmount() error {
	if err := s.mount.Unmount(); err != nil {
		if lerr := syscall.Unmount(s.data, syscall.MNT_DETACH); lerr != nil {
			return err
		}
		s.mount.Wait()
	}
	return nil
}

// cleanup undoes what start made, newest first: the server, the mount,
// the directories.
func (s *execSession) cleanup() error {
	var errs []error
	for i := len(s.undo) - 1; i >= 0; i-- {
		errs = append(errs, s.undo[i]())
	}
	s.undo = nil
	return errors.Join(errs...)
}

// commandStatus is the exit status exec passes on from its command.
type commandStatus int

func (c commandStatus) Error() string {
	return fmt.Sprintf("the command exited with status %d", int(c))
}

// runCommand runs the command on our terminal, passing SIGINT, SIGTERM and
// SIGHUP on to it, and returns its exit status (128+N if signal N ended
// it, as a shell reports it).
func (s *execSession) runCommand(ctx context.Context, env []string) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	cmd := exec.Command(s.cmdPath, s.cmd[1:]...)
	cmd.Args[0] = s.cmd[0]
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			cmd.Process.Signal(sig)
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return commandStatus(128 + int(ws.Signal()))
				}
				return commandStatus(ee.ExitCode())
			}
			return err
		}
	}
}

// waitTarget waits until the server has reached the recovery target: with
// promote until recovery has ended (pg_is_in_recovery() is false), with
// pause until replay is paused there, so that the command sees the state
// at the target and not one on the way to it. A server that exits first
// (a target recovery never reached) fails with its last complaint.
func (s *execSession) waitTarget(ctx context.Context) error {
	query, want := "SELECT pg_is_in_recovery()", "f"
	if s.pitr.action == "pause" {
		query, want = "SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'", "t"
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "psql"), "-X", "-Atq", "-d", "template1", "-c", query)
		cmd.Env = s.env()
		out, err := cmd.CombinedOutput()
		if err == nil && strings.TrimSpace(string(out)) == want {
			return nil
		}
		select {
		case <-s.server.done:
			return fmt.Errorf("the server exited before reaching %s: %s", s.pitr.describe(), lastComplaint(s.server.logFile))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
