package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/cachedir"
	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/mountctl"
	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/resolver"
)

type mountOptions struct {
	repo, point   string
	cacheSize     string
	owner         string
	allowOther    bool
	defaultPerms  bool
	daemon        bool
	logFile       string
	debugFUSE     bool
	noPassthrough bool
	writeback     string // auto, true or false
	cow           string
	cacheDir      string
	cacheDirSize  string
	pitr          pitrOptions
	hydrate       bool
	hydrateRate   string
	hydrateWait   time.Duration
	walDir        string
	s3            *repo.S3Options
	chainOpts     resolver.ChainOptions // set by chainDirs
	// remote is the chain opened from an object store (set by chainDirs),
	// for the log and the stats; daemonParent: this process only starts
	// the daemon (set by runMount).
	remote       *repoChainOpen
	daemonParent bool
}

// openInDaemon reports whether this process leaves opening the repository
// to the daemon it starts: one in an object store, whose every open costs
// round trips that the daemon pays again (it reports what fails).
func (o *mountOptions) openInDaemon() bool {
	_, _, s3, _ := repo.ParseS3URL(o.repo)
	return o.daemonParent && s3
}

func (o *mountOptions) addFlags(f *pflag.FlagSet) {
	root := os.Geteuid() == 0
	f.StringVar(&o.cow, "cow", "", "mount writable, keeping every change in `UPPERDIR` (kept across mounts)")
	f.StringVar(&o.repo, "repo", "", "backup repository `DIR` or s3://BUCKET/PREFIX (with --point)")
	o.s3 = s3Flags(f)
	f.StringVar(&o.point, "point", "", "`NAME` of the repository point to mount")
	f.StringVar(&o.cacheSize, "cache-size", "256MiB", "block cache `SIZE` (e.g. 64MiB, 1GiB)")
	f.StringVar(&o.cacheDir, "cache-dir", "", "read-only mounts: keep reconstructed files in `DIR` and serve them from there (kept across mounts)")
	f.StringVar(&o.cacheDirSize, "cache-dir-size", "", "bound of --cache-dir in `BYTES` (e.g. 20GiB; default: the point's size)")
	f.StringVar(&o.owner, "owner", "", "`USER[:GROUP]` (or UID:GID) owning the presented files (default: owner of the final backup)")
	f.BoolVar(&o.allowOther, "allow-other", root, "let other users (the server's) reach the mount (default on as root)")
	f.BoolVar(&o.defaultPerms, "default-permissions", root, "let the kernel enforce the presented owners and modes (default on as root)")
	f.BoolVar(&o.daemon, "daemon", false, "return once the mount is ready and keep serving in the background")
	f.StringVar(&o.logFile, "log", "", "append the mount's log to `FILE` (default: stderr; none with --daemon)")
	f.BoolVar(&o.debugFUSE, "debug-fuse", false, "log every FUSE request")
	f.BoolVar(&o.noPassthrough, "no-passthrough", false, "serve whole files through combinefs instead of FUSE passthrough")
	f.BoolVar(&o.hydrate, "hydrate", false, "with --cow: copy every block UPPERDIR lacks from the backups into it in the background, so it becomes a complete data directory (see combinefs status, combinefs detach)")
	f.StringVar(&o.hydrateRate, "hydrate-rate", "0", "with --hydrate: read at most `BYTES` per second from the backups (e.g. 100MiB; 0: no limit)")
	f.DurationVar(&o.hydrateWait, "hydrate-open-wait", 2*time.Second, "with --hydrate: an open of a file not yet copied waits up to `DURATION` for hydration to finish it, so that it is served natively (0: never wait)")
	f.StringVar(&o.walDir, "waldir", "", "with --cow: keep the server's WAL in local `DIR` (new or empty), pg_wal being a symlink to it, so that WAL never passes through the mount")
	f.StringVar(&o.writeback, "writeback-cache", "auto", "with --cow: `auto|true|false`: let the kernel cache writes and send them in batches (no passthrough then); auto: false with --hydrate or once UPPERDIR's hydration is complete, else true")
	f.Lookup("writeback-cache").NoOptDefVal = "true"
	o.pitr.addFlags(f, "with --cow --repo", "pause", "what the server does at the target: `pause|promote|shutdown`")
}

// writebackMode reads --writeback-cache: on or off, or auto (the mount
// decides by UPPERDIR).
func (o *mountOptions) writebackMode() (on, auto bool, err error) {
	if o.writeback == "auto" {
		return false, true, nil
	}
	on, err = strconv.ParseBool(o.writeback)
	if err != nil {
		return false, false, usageError{fmt.Sprintf("--writeback-cache: %q is not auto, true or false", o.writeback)}
	}
	return on, false, nil
}

func setupMount(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var o mountOptions
	o.addFlags(f)
	return func(ctx context.Context, args []string) error {
		return runMount(ctx, &o, args)
	}
}

// chainDirs splits the command line into the backup chain and the mount
// point. A repository point's chain stays locked (shared) until release.
// With a recovery target, the point is the one to recover from.
func (o *mountOptions) chainDirs(ctx context.Context, args []string) ([]string, string, *repo.Hold, error) {
	if err := o.pitr.parse(); err != nil {
		return nil, "", nil, err
	}
	if o.pitr.set() {
		if o.repo == "" || o.cow == "" || o.point != "" {
			return nil, "", nil, usageError{"a recovery target needs --repo and --cow, and picks the point itself (no --point)"}
		}
		if ents, err := os.ReadDir(o.cow); err == nil && len(ents) > 0 {
			return nil, "", nil, fmt.Errorf("upper directory %s is not empty: recovering to a target needs a new one (it holds a server's changes already)", o.cow)
		}
		if o.openInDaemon() && len(args) == 1 {
			return nil, args[0], nil, nil
		}
		o.pitr.s3 = *o.s3
		name, err := o.pitr.choosePoint(ctx, o.repo)
		if err != nil {
			return nil, "", nil, err
		}
		o.point = name
	}
	if o.repo != "" || o.point != "" {
		if o.repo == "" || o.point == "" {
			return nil, "", nil, usageError{"--repo and --point go together"}
		}
		if len(args) != 1 {
			return nil, "", nil, usageError{"with --repo, give only the mount point"}
		}
		if o.openInDaemon() {
			return nil, args[0], nil, nil
		}
		c, err := openRepoChain(ctx, "mount", o.repo, o.point, *o.s3)
		if err != nil {
			return nil, "", nil, err
		}
		if c.repo.Remote() {
			o.remote = c
		}
		o.chainOpts = c.opts
		return c.dirs, args[0], c.hold, nil
	}
	o.chainOpts = resolver.ChainOptions{RequireV2Manifests: true}
	if len(args) < 2 {
		return nil, "", nil, usageError{"give the backups of the chain, oldest first, and the mount point"}
	}
	return args[:len(args)-1], args[len(args)-1], nil, nil
}

// openPointWith validates a whole chain opened with opts (every INCREMENTAL
// header of every backup too, so a damaged backup is refused now, not at
// the first read) and returns it with the tree of its final point. On an
// object store it reads the final backup's INCREMENTAL headers only (they
// give the files' sizes) and leaves the older backups' to resolveLater:
// each is a round trip, and waiting for them doubled a mount's time.
func openPointWith(dirs []string, opts resolver.ChainOptions, warn func(string)) (*resolver.Chain, *resolver.Tree, error) {
	chain, err := resolver.OpenChain(dirs, opts)
	if err != nil {
		return nil, nil, err
	}
	for _, w := range chain.Warnings {
		warn("warning: " + w)
	}
	tree, err := resolver.NewTree(chain)
	if err != nil {
		return nil, nil, err
	}
	if !resolver.IsLocal(opts.Source) {
		return chain, tree, nil
	}
	if err := tree.ResolveAll(resolver.ReadJobs(opts.Source)); err != nil {
		return nil, nil, err
	}
	return chain, tree, nil
}

// resolveLater reads, once a mount from an object store serves, the
// INCREMENTAL headers of its older backups (ResolveAll, in the tree's
// order, so that a reader taking the files in order finds most resolved):
// a file opened first resolves itself on open. A damaged header fails the
// opens of its file with EIO and is logged here, where a local mount would
// have refused to mount; a header the store failed to send is read again
// at the file's next open.
func (o *mountOptions) resolveLater(point *resolver.Tree, lg *logWriter) {
	if err := point.ResolveAll(resolver.ReadJobs(point.Chain.Source)); err != nil {
		lg.Printf("reading the older backups' INCREMENTAL headers: %v (the files not resolved yet are resolved when opened)", err)
		return
	}
	if o.remote == nil {
		return
	}
	if line := o.remote.phase("read the older backups' INCREMENTAL headers while serving (reads' GETs included)"); line != "" {
		lg.Printf("opening the chain from %s: %s", o.repo, line)
	}
}

func runMount(ctx context.Context, o *mountOptions, args []string) (err error) {
	child := os.Getenv(daemonEnv) != ""
	if child {
		// The parent reports our errors; ours would only repeat them.
		defer func() {
			if err != nil {
				notifyReady(err.Error())
			}
		}()
	}
	o.daemonParent = o.daemon && !child
	dirs, mp, hold, err := o.chainDirs(ctx, args)
	if err != nil {
		return err
	}
	defer hold.Release()
	cacheBytes, err := parseSize(o.cacheSize)
	if err != nil {
		return usageError{fmt.Sprintf("--cache-size: %v", err)}
	}
	cacheDirBytes, err := o.cacheDirBound()
	if err != nil {
		return err
	}
	hydrateRate, err := parseSize(o.hydrateRate)
	if err != nil {
		return usageError{fmt.Sprintf("--hydrate-rate: %v", err)}
	}
	writeback, writebackAuto, err := o.writebackMode()
	if err != nil {
		return err
	}
	if o.hydrate && o.cow == "" {
		return usageError{"--hydrate needs --cow UPPERDIR"}
	}
	if err := o.checkWALDir(); err != nil {
		return err
	}
	mp, err = checkMountpoint(mp)
	if err != nil {
		return err
	}
	// A backstop for the Go heap: the block cache's arena is mapped outside
	// it, so the heap is the mount's working set, collected at the usual
	// pace well below this.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(cacheBytes + memOverhead)
	}
	if o.daemon && !child {
		_, err := startDaemon(ctx)
		return err
	}
	lg, closeLog, err := openLog(o.logFile, child)
	if err != nil {
		return err
	}
	defer closeLog()
	if o.remote != nil {
		o.remote.repo.Log = lg.Print
	}

	// Validate the whole chain before mounting anything.
	start := time.Now()
	chain, point, err := openPointWith(dirs, o.chainOpts, lg.Print)
	if err != nil {
		return err
	}
	o.logRemoteOpen(lg)
	uid, gid, err := mountOwner(o.owner, chain)
	if err != nil {
		return err
	}
	openWait := o.hydrateWait
	if openWait <= 0 {
		openWait = -1 // fusefs: never (0 is its default)
	}
	fopts := fusefs.Options{
		UID: uid, GID: gid, AllowOther: o.allowOther, DefaultPermissions: o.defaultPerms,
		CacheBytes: cacheBytes, NoPassthrough: o.noPassthrough, WritebackCache: writeback, WritebackAuto: writebackAuto, Debug: o.debugFUSE,
		Hydrate: o.hydrate, HydrateRate: hydrateRate, HydrateOpenWait: openWait, WALDir: o.walDir,
		Log:    func(msg string) { lg.Print(msg) },
		FsName: "combinefs:" + filepath.Base(chain.Final().Dir),
	}
	m, mode, closeCache, err := o.mount(mp, point, fopts, cacheDirBytes)
	if err != nil {
		return err
	}
	defer closeCache()
	var upperDir string
	if o.cow != "" {
		upperDir, _ = filepath.Abs(o.cow) // o.mount checked it
	}
	// SIGUSR1 asks for stats as soon as the state file names this process
	// (before it, Go would drop the signal).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	st := &mountctl.State{PID: os.Getpid(), Mountpoint: mp, Backups: dirs, Stats: mountctl.StatsPath(mp), Upper: upperDir}
	if err := st.Write(); err != nil {
		m.Unmount()
		return err
	}
	defer st.Remove()
	lg.Printf("mounted %s (%d backups, PostgreSQL %d) at %s, %s, in %.0f ms", chain.Final().Dir, len(dirs), chain.Major, mp, mode, float64(time.Since(start).Microseconds())/1000)
	notifyReady("")
	if !resolver.IsLocal(chain.Source) {
		go o.resolveLater(point, lg)
	}
	if !child {
		fmt.Fprintf(stderr, "combinefs mount: %s mounted at %s (%s); Ctrl-C or combinefs umount %s to stop\n", chain.Final().Dir, mp, mode, mp)
	}
	return serveUntilDone(ctx, o, m, st, usr1, lg)
}

// logRemoteOpen logs, for a chain in an object store, the time and the
// requests of each step of opening it: the repository's, then the
// resolver's (headers) since.
func (o *mountOptions) logRemoteOpen(lg *logWriter) {
	if o.remote == nil {
		return
	}
	o.remote.phase("check the chain, read the final backup's INCREMENTAL headers")
	for _, p := range o.remote.phases {
		lg.Printf("opening the chain from %s: %s", o.repo, p)
	}
}

// mountStats are the mount's counters and, from an object store, the
// requests sent to it.
type mountStats struct {
	fusefs.Stats
	S3 *repo.RequestCounts `json:",omitempty"`
}

func (o *mountOptions) stats(s fusefs.Stats) mountStats {
	ms := mountStats{Stats: s}
	if o.remote != nil {
		if st, ok := o.remote.repo.Store.(*repo.S3); ok {
			c := st.Requests()
			ms.S3 = &c
		}
	}
	return ms
}

// serveUntilDone serves until the mount goes away (combinefs umount,
// umount(8)) or a signal asks for a clean unmount. SIGUSR1 writes stats.
func serveUntilDone(ctx context.Context, o *mountOptions, m *fusefs.Mount, st *mountctl.State, usr1 <-chan os.Signal, lg *logWriter) error {
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	writeStats := func() {
		s := m.Stats()
		if err := mountctl.WriteJSON(st.Stats, o.stats(s)); err != nil {
			lg.Printf("writing stats: %v", err)
		}
		lg.Printf("stats: cache %d hits, %d misses (%.1f%% hits), %d evictions, %s cached; %d reconstructed and %d whole-file opens; %s served, %d read errors",
			s.Cache.Hits, s.Cache.Misses, 100*s.Cache.HitRate(), s.Cache.Evictions, humanBytes(s.Cache.Bytes), s.ReconOpens, s.WholeOpens, humanBytes(int64(s.BytesServed)), s.IOErrors)
		if d := s.CacheDir; d.Limit > 0 {
			lg.Printf("stats: cache directory %d files, %s of %s; %d filled, %d evicted, %d failed their check; %d opens served from it",
				d.Files, humanBytes(d.Bytes), humanBytes(d.Limit), d.Filled, d.Evicted, d.Rejected, s.CacheDirOpens)
		}
	}
	for {
		select {
		case <-usr1:
			writeStats()
		case <-done:
			writeStats()
			lg.Printf("unmounted %s", m.Dir())
			return nil
		case <-ctx.Done():
			lg.Printf("unmounting %s", m.Dir())
			if err := m.Unmount(); err != nil {
				return fmt.Errorf("%w (is something still using it?)", err)
			}
			<-done
			writeStats()
			return nil
		}
	}
}

func setupUmount(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var lazy bool
	var timeout time.Duration
	f.BoolVarP(&lazy, "lazy", "l", false, "detach now even if the mount is busy (umount -l)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the mount's process to finish")
	return func(ctx context.Context, args []string) error {
		mp, err := oneMountPoint(args)
		if err != nil {
			return err
		}
		st, _ := mountctl.Read(mp)
		if !mountctl.IsMounted(mp) {
			if st != nil {
				os.Remove(mountctl.StatePath(mp))
			}
			return fmt.Errorf("%s is not mounted", mp)
		}
		// Ask the mount for its counters while it still runs: it removes
		// its files when it exits.
		var stats *fusefs.Stats
		if st != nil && st.Mountpoint == mp {
			var s fusefs.Stats
			if mountctl.RequestStats(st.PID, st.Stats, time.Second, &s) == nil {
				stats = &s
			}
		}
		if err := mountctl.Unmount(mp, lazy); err != nil {
			return err
		}
		if st == nil {
			fmt.Fprintf(stderr, "combinefs umount: unmounted %s\n", mp)
			return nil
		}
		// Wait for the serving process so nothing is left behind.
		deadline := time.Now().Add(timeout)
		for mountctl.ProcessAlive(st.PID) {
			if time.Now().After(deadline) {
				return fmt.Errorf("unmounted %s, but its process %d is still running after %s", mp, st.PID, timeout)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// A mount process that was killed could not remove its files.
		st.Remove()
		fmt.Fprintf(stderr, "combinefs umount: unmounted %s\n", mp)
		if s := stats; s != nil {
			fmt.Fprintf(stderr, "combinefs umount: block cache %.1f%% hits (%d of %d), %s read from backups\n",
				100*s.Cache.HitRate(), s.Cache.Hits, s.Cache.Hits+s.Cache.Misses, humanBytes(int64(s.SourceBytes)))
		}
		return nil
	}
}

// checkMountpoint requires an existing directory that is not mounted yet.
func checkMountpoint(mp string) (string, error) {
	abs, err := filepath.Abs(mp)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("mount point %s: %w", abs, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("mount point %s is not a directory", abs)
	}
	if mountctl.IsMounted(abs) {
		return "", fmt.Errorf("%s is already a mount point", abs)
	}
	return abs, nil
}

// mountOwner is the owner of the presented files: --owner, else that of the
// final backup's directory, or for a chain in an object store (objects
// have no owner) the mounting user.
func mountOwner(spec string, chain *resolver.Chain) (uint32, uint32, error) {
	if spec == "" && !resolver.IsLocal(chain.Source) {
		return uint32(os.Geteuid()), uint32(os.Getegid()), nil
	}
	return resolveOwner(spec, chain.Final().Dir)
}

// resolveOwner picks the presented owner: --owner, else the owner of the
// final backup directory.
func resolveOwner(spec, finalDir string) (uint32, uint32, error) {
	if spec == "" {
		fi, err := os.Stat(finalDir)
		if err != nil {
			return 0, 0, err
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	var uid, gid uint64
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		uid, gid = n, n
	} else {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, 0, usageError{fmt.Sprintf("--owner: %v", err)}
		}
		uid, _ = strconv.ParseUint(u.Uid, 10, 32)
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	}
	if hasGroup {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			gid = n
		} else {
			g, err := user.LookupGroup(group)
			if err != nil {
				return 0, 0, usageError{fmt.Sprintf("--owner: %v", err)}
			}
			gid, _ = strconv.ParseUint(g.Gid, 10, 32)
		}
	}
	return uint32(uid), uint32(gid), nil
}

// parseSize reads 268435456, 256MiB, 256M, 1GiB, 1G (binary units).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// mount mounts point at mp, copy-on-write or read-only (with its cache
// directory, which closeCache closes once the mount is gone), and says
// how.
func (o *mountOptions) mount(mp string, point *resolver.Tree, fopts fusefs.Options, cacheDirBytes int64) (m *fusefs.Mount, mode string, closeCache func(), err error) {
	closeCache = func() {}
	if o.cow != "" {
		upperDir, err := filepath.Abs(o.cow)
		if err != nil {
			return nil, "", nil, err
		}
		if m, err = fusefs.MountCoW(mp, point, upperDir, fopts); err != nil {
			return nil, "", nil, err
		}
		mode = "copy-on-write into " + upperDir
		if o.walDir != "" {
			mode += ", WAL in " + o.walDir
		}
		if o.hydrate {
			mode += ", hydrating"
		}
		if m.Stats().WritebackCache {
			mode += ", writeback cache"
		} else {
			mode += ", no writeback cache"
		}
		if o.pitr.set() {
			if err := o.pitr.writeRecovery(mp, o.repo); err != nil {
				m.Unmount()
				return nil, "", nil, fmt.Errorf("writing the recovery settings: %w", err)
			}
			mode += ", recovering to " + o.pitr.describe()
		}
		return m, mode, closeCache, nil
	}
	mode = "read-only"
	if o.cacheDir != "" {
		if fopts.CacheDir, err = openCacheDir(o.cacheDir, cacheDirBytes, point); err != nil {
			return nil, "", nil, err
		}
		closeCache = func() { fopts.CacheDir.Close() }
		mode += ", cache directory " + fopts.CacheDir.Path()
	}
	if m, err = fusefs.MountReadOnly(mp, point, fopts); err != nil {
		closeCache()
		return nil, "", nil, err
	}
	return m, mode, closeCache, nil
}

// cacheDirBound checks --cache-dir and --cache-dir-size; 0 means the
// point's size.
func (o *mountOptions) cacheDirBound() (int64, error) {
	if o.cacheDir == "" {
		if o.cacheDirSize != "" {
			return 0, usageError{"--cache-dir-size needs --cache-dir"}
		}
		return 0, nil
	}
	if o.cow != "" {
		return 0, usageError{"--cache-dir is for read-only mounts, not with --cow"}
	}
	if o.cacheDirSize == "" {
		return 0, nil
	}
	n, err := parseSize(o.cacheDirSize)
	if err == nil && n == 0 {
		err = fmt.Errorf("bad size %q: must be more than 0", o.cacheDirSize)
	}
	if err != nil {
		return 0, usageError{fmt.Sprintf("--cache-dir-size: %v", err)}
	}
	return n, nil
}

// openCacheDir opens and locks the cache directory, bounded to limit bytes
// or, when limit is 0, to the size of the point.
func openCacheDir(dir string, limit int64, p *resolver.Tree) (*cachedir.Dir, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if limit == 0 {
		p.Walk(func(_ string, e *resolver.Entry) error {
			if e.Kind == resolver.KindFile {
				limit += e.File.Size()
			}
			return nil
		})
		limit = max(limit, 1)
	}
	return cachedir.Open(dir, limit)
}

// memOverhead is the Go heap a mount may use beyond its block cache's size:
// request buffers, per-file maps and plans (read blocks go straight into
// the cache's arena, which bounds itself).
const memOverhead = 48 << 20

// Daemon mode: the parent re-executes itself with daemonEnv set and a pipe
// as fd 3; the child reports "ok" (and what the parent should know, on the
// same line) or the error on it once the mount is ready (or failed), and
// the parent exits accordingly.
const daemonEnv = "COMBINEFS_DAEMON_CHILD"

// startDaemon returns what the child said after "ok".
func startDaemon(ctx context.Context) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), daemonEnv+"=1")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The child writes nothing to our terminal: it reports through the
	// pipe, and logs to --log.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	if err := cmd.Start(); err != nil {
		w.Close()
		return "", err
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if rest, ok := strings.CutPrefix(line, "ok"); ok && (rest == "" || rest[0] == ' ') {
		cmd.Process.Release()
		return strings.TrimSpace(rest), nil
	}
	cmd.Wait()
	if line == "" {
		return "", errors.New("the mount process exited before the mount was ready")
	}
	return "", errors.New(strings.TrimPrefix(line, "error: "))
}

// notifyReady tells a waiting parent (daemon mode) how the mount went.
func notifyReady(errMsg string) {
	if errMsg == "" {
		sendReady("ok")
	} else {
		sendReady("error: " + strings.ReplaceAll(errMsg, "\n", " "))
	}
}

// sendReady writes the daemon child's one line to its parent, once.
func sendReady(line string) {
	if os.Getenv(daemonEnv) == "" {
		return
	}
	f := os.NewFile(3, "ready")
	if f == nil {
		return
	}
	fmt.Fprintln(f, line)
	f.Close()
	os.Unsetenv(daemonEnv)
}

// logWriter timestamps the mount's log lines.
type logWriter struct{ w io.Writer }

func (l *logWriter) Print(msg string) {
	fmt.Fprintf(l.w, "%s combinefs mount: %s\n", time.Now().Format("2006-01-02 15:04:05.000"), msg)
}

func (l *logWriter) Printf(format string, args ...any) { l.Print(fmt.Sprintf(format, args...)) }

func openLog(path string, daemon bool) (*logWriter, func(), error) {
	if path == "" {
		if daemon {
			return &logWriter{w: io.Discard}, func() {}, nil
		}
		return &logWriter{w: stderr}, func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("log file: %w", err)
	}
	return &logWriter{w: f}, func() { f.Close() }, nil
}
