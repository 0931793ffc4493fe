package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/combinefs/combinefs/internal/mountctl"
)

// Env is one provisioned PostgreSQL toolset: a root directory the tools run
// in (chrooted, unless Root is "/") and the server user they run as.
type Env struct {
	Root   string // host path of the root; "/" with PG_BINDIR
	BinDir string // PostgreSQL's bin directory, inside the root
	Major  int    // PostgreSQL major version (17, 18, ...)
	UID    int    // server user
	GID    int    // server user's group
	User   string // server user's name: also the database superuser initdb makes

	home   string // server user's home, inside the root
	asSelf bool   // not root: every program runs as the current user
}

var (
	provisionOnce sync.Once
	provisioned   *Env
	provisionErr  error
)

// Provision returns the process's PostgreSQL environment, provisioning it on
// first use (provision.sh; PG_MAJOR, PG_ROOT and PG_BINDIR are passed
// through). When that is impossible the test is skipped, or fails when
// COMBINEFS_REQUIRE_PG=1 so that CI never skips silently.
func Provision(tb testing.TB) *Env {
	tb.Helper()
	provisionOnce.Do(func() { provisioned, provisionErr = provision() })
	if provisionErr != nil {
		gate(tb, "COMBINEFS_REQUIRE_PG", "PostgreSQL is not available: %v", provisionErr)
	}
	return provisioned
}

// RequireFUSE skips the test when /dev/fuse cannot be used, or fails it when
// COMBINEFS_REQUIRE_FUSE=1.
func RequireFUSE(tb testing.TB) {
	tb.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		gate(tb, "COMBINEFS_REQUIRE_FUSE", "FUSE is not available: %v", err)
		return
	}
	f.Close()
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err := exec.LookPath("fusermount"); err != nil {
				gate(tb, "COMBINEFS_REQUIRE_FUSE", "FUSE needs root or fusermount3 in PATH")
			}
		}
	}
}

// gate skips, or fails when the variable requireVar is "1".
func gate(tb testing.TB, requireVar, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireVar) == "1" {
		tb.Fatalf("%s (%s=1 forbids skipping)", msg, requireVar)
	}
	tb.Skipf("%s (set %s=1 to turn this skip into a failure)", msg, requireVar)
}

func provision() (*Env, error) {
	if os.Geteuid() != 0 && os.Getenv("PG_BINDIR") == "" {
		return nil, errors.New("running PostgreSQL in a chroot needs root; set PG_BINDIR to use an installed PostgreSQL 17+")
	}
	mod, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(mod, "integration", "provision.sh"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("provision.sh: %v\n%s", err, strings.TrimSpace(stderr.String()))
	}
	root, bin, ok := strings.Cut(strings.TrimSpace(stdout.String()), "\t")
	if !ok || !filepath.IsAbs(root) || !filepath.IsAbs(bin) {
		return nil, fmt.Errorf("provision.sh printed %q, want ROOT<TAB>BINDIR", stdout.String())
	}
	e := &Env{Root: root, BinDir: bin}
	if err := e.lookupServerUser(); err != nil {
		return nil, err
	}
	out, err := e.Command(ctx, false, e.Tool("postgres"), "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("postgres --version: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`\(PostgreSQL\) (\d+)`).FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("cannot read the major version from %q", out)
	}
	e.Major, _ = strconv.Atoi(string(m[1]))
	if e.Major < 17 {
		return nil, fmt.Errorf("PostgreSQL %d has no incremental backup (need 17+)", e.Major)
	}
	return e, nil
}

// lookupServerUser finds the user the server runs as: "postgres" of the root
// (its ids differ from the host's postgres user), the host's "postgres" when
// we are root with PG_BINDIR, or ourselves when we are not root.
func (e *Env) lookupServerUser() error {
	if os.Geteuid() != 0 {
		e.UID, e.GID, e.asSelf = os.Getuid(), os.Getgid(), true
		if u, err := user.Current(); err == nil {
			e.User = u.Username
		}
		e.home = os.Getenv("HOME")
		if e.home == "" {
			e.home = os.TempDir()
		}
		return nil
	}
	if e.Root == "/" {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root with PG_BINDIR needs a postgres user to run the server: %v", err)
		}
		e.UID, _ = strconv.Atoi(u.Uid)
		e.GID, _ = strconv.Atoi(u.Gid)
		e.home, e.User = u.HomeDir, u.Username
		return nil
	}
	f, err := os.Open(e.Host("/etc/passwd"))
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 6 && fields[0] == "postgres" {
			e.UID, _ = strconv.Atoi(fields[2])
			e.GID, _ = strconv.Atoi(fields[3])
			e.home, e.User = fields[5], fields[0]
			return nil
		}
	}
	return fmt.Errorf("no postgres user in %s", e.Host("/etc/passwd"))
}

// moduleRoot finds the directory holding combinefs's go.mod: up from the
// working directory (a test runs in its package directory), else `go env GOMOD`.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			regexp.MustCompile(`(?m)^module\s+github\.com/combinefs/combinefs\s*$`).Match(b) {
			return d, nil
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if gomod := strings.TrimSpace(string(out)); err == nil && gomod != "" && gomod != os.DevNull {
		return filepath.Dir(gomod), nil
	}
	return "", fmt.Errorf("cannot find the combinefs module from %s", dir)
}

// goTool is the go command: from PATH, else $GOROOT/bin/go, else the
// usual install location.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "/usr/local/go/bin/go"
}

// Host turns a path inside the root into the path this process sees.
func (e *Env) Host(p string) string {
	if e.Root == "/" {
		return p
	}
	return filepath.Join(e.Root, p)
}

// Tool is the in-root path of a PostgreSQL program.
func (e *Env) Tool(name string) string { return path.Join(e.BinDir, name) }

// pathDirs is the PATH of every program run in the root.
func (e *Env) pathDirs() []string {
	return []string{e.BinDir, "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"}
}

// Command prepares name (an in-root path, or a program found in BinDir and
// the usual bin directories of the root) to run inside the root with a clean
// environment, as the server user or, with asRoot, as root. Children get
// SIGTERM if the test process dies, so a timed-out test leaves no mount
// process behind.
func (e *Env) Command(ctx context.Context, asRoot bool, name string, args ...string) *exec.Cmd {
	prog, err := e.lookPath(name)
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Args[0] = name
	if err != nil {
		cmd.Err = err
	} else if err := combinefsBuildErr(name, e); err != nil {
		cmd.Err = err
	}
	home := e.home
	if asRoot && !e.asSelf {
		home = "/root"
	}
	cmd.Env = []string{
		"PATH=" + strings.Join(e.pathDirs(), ":"),
		"HOME=" + home,
		"LANG=C.UTF-8",
	}
	cmd.Dir = "/"
	cmd.WaitDelay = 10 * time.Second
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if e.Root != "/" {
		attr.Chroot = e.Root
	}
	if !asRoot && !e.asSelf {
		attr.Credential = &syscall.Credential{Uid: uint32(e.UID), Gid: uint32(e.GID), Groups: []uint32{}}
	}
	cmd.SysProcAttr = attr
	return cmd
}

// lookPath resolves a bare program name against the root's PATH.
func (e *Env) lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range e.pathDirs() {
		p := path.Join(d, name)
		if fi, err := os.Lstat(e.Host(p)); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return name, fmt.Errorf("%s: not found in %v under %s", name, e.pathDirs(), e.Root)
}

// Run runs a program (see Command) and returns its combined output, failing
// the test with that output when it does not succeed.
func (e *Env) Run(tb testing.TB, asRoot bool, name string, args ...string) string {
	tb.Helper()
	out, err := e.Command(context.Background(), asRoot, name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TempDir makes a fresh directory for one test inside the root, owned by the
// server user, and returns its in-root path. At cleanup anything mounted below
// it is unmounted (lazily if need be) and, unless COMBINEFS_KEEP=1, it is
// removed.
func (e *Env) TempDir(tb testing.TB) string {
	tb.Helper()
	base := e.Host("/srv/combinefs")
	if e.Root == "/" {
		base = os.TempDir()
	}
	host, err := os.MkdirTemp(base, sanitize(tb.Name())+"-")
	if err != nil {
		tb.Fatalf("temp dir: %v", err)
	}
	if err := os.Chmod(host, 0o755); err != nil {
		tb.Fatal(err)
	}
	e.chown(tb, host)
	tb.Cleanup(func() { e.removeTempDir(tb, host) })
	if e.Root == "/" {
		return host
	}
	return "/" + strings.TrimPrefix(host, e.Root+"/")
}

// PrivateDir makes a fresh directory inside the root for what combinefs
// writes as the user it runs as (a copy-on-write mount's upper directory):
// owned by that user, mode 0711 (others may pass through to a server's
// data directory detached there, not list or write), under the sticky
// /var/tmp, so that it passes combinefs's check that no other user can
// change it (TempDir's directories belong to the server user and may not
// hold one). It is removed at cleanup, unless COMBINEFS_KEEP=1, and its
// in-root path returned.
func (e *Env) PrivateDir(tb testing.TB) string {
	tb.Helper()
	base := e.Host("/var/tmp")
	if e.Root == "/" {
		base = os.TempDir()
	}
	host, err := os.MkdirTemp(base, "combinefs-"+sanitize(tb.Name())+"-")
	if err != nil {
		tb.Fatalf("private dir: %v", err)
	}
	if err := os.Chmod(host, 0o711); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.removeTempDir(tb, host) })
	if e.Root == "/" {
		return host
	}
	return "/" + strings.TrimPrefix(host, e.Root+"/")
}

func (e *Env) removeTempDir(tb testing.TB, host string) {
	for _, mp := range mountsBelow(host) {
		if err := unmount(mp); err != nil {
			tb.Errorf("cleanup: cannot unmount %s: %v", mp, err)
		} else {
			tb.Logf("cleanup: unmounted %s, left mounted by the test", mp)
		}
	}
	if os.Getenv("COMBINEFS_KEEP") == "1" {
		tb.Logf("COMBINEFS_KEEP=1: keeping %s", host)
		return
	}
	if err := os.RemoveAll(host); err != nil {
		tb.Errorf("cleanup: %v", err)
	}
}

// sanitize makes a test name usable as a directory name prefix.
func sanitize(name string) string {
	s := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(name, "_")
	if len(s) > 48 {
		s = s[:48]
	}
	return s
}

// mountsBelow lists the mount points at or below dir, deepest first.
func mountsBelow(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := mountctl.Unescape(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps
}

// unmount unmounts mp, falling back to a lazy unmount (umount -l) when it is
// busy, and to fusermount when we are not root.
func unmount(mp string) error {
	err := syscall.Unmount(mp, 0)
	if err == nil {
		return nil
	}
	if err = syscall.Unmount(mp, syscall.MNT_DETACH); err == nil {
		return nil
	}
	for _, fm := range []string{"fusermount3", "fusermount"} {
		if out, ferr := exec.Command(fm, "-u", "-z", mp).CombinedOutput(); ferr == nil {
			return nil
		} else if len(out) > 0 {
			err = fmt.Errorf("%v; %s: %s", err, fm, bytes.TrimSpace(out))
		}
	}
	return err
}

// MkdirAll creates an in-root directory (and its parents) owned by the server
// user, mode 0700: what a tablespace location or a data directory needs.
func (e *Env) MkdirAll(tb testing.TB, p string) {
	tb.Helper()
	parent := path.Dir(p)
	if _, err := os.Stat(e.Host(parent)); errors.Is(err, fs.ErrNotExist) && parent != p {
		e.MkdirAll(tb, parent)
	}
	host := e.Host(p)
	if err := os.Mkdir(host, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		tb.Fatal(err)
	}
	e.chown(tb, host)
}

// ChownTree gives the server user an in-root tree (for example a flatten
// output written by root), following the tablespace links in pg_tblspc so the
// tablespace directories are fixed too.
func (e *Env) ChownTree(tb testing.TB, p string) {
	tb.Helper()
	if e.asSelf {
		return
	}
	err := filepath.WalkDir(e.Host(p), func(hp string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(hp, e.UID, e.GID); err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 && filepath.Base(filepath.Dir(hp)) == "pg_tblspc" {
			target, err := os.Readlink(hp)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				e.ChownTree(tb, target)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("chown %s: %v", p, err)
	}
}

// chown gives one host path to the server user.
func (e *Env) chown(tb testing.TB, host string) {
	tb.Helper()
	if e.asSelf {
		return
	}
	if err := os.Chown(host, e.UID, e.GID); err != nil {
		tb.Fatal(err)
	}
}

// CombineBackup runs the real pg_combinebackup as the server user: -o out,
// then extraArgs (e.g. -T OLD=NEW, --copy-file-range), then the inputs
// oldest first.
func (e *Env) CombineBackup(tb testing.TB, out string, inputs []string, extraArgs ...string) {
	tb.Helper()
	if output, err := e.CombineBackupErr(tb, out, inputs, extraArgs...); err != nil {
		tb.Fatalf("pg_combinebackup: %v\n%s", err, output)
	}
}

// CombineBackupErr is CombineBackup for tests that expect a refusal: it
// returns pg_combinebackup's combined output and exit error.
func (e *Env) CombineBackupErr(tb testing.TB, out string, inputs []string, extraArgs ...string) (string, error) {
	tb.Helper()
	args := append([]string{"-o", out}, extraArgs...)
	args = append(args, inputs...)
	output, err := e.Command(context.Background(), false, e.Tool("pg_combinebackup"), args...).CombinedOutput()
	return string(output), err
}

// VerifyBackup runs pg_verifybackup on an in-root backup directory and
// returns its output.
func (e *Env) VerifyBackup(tb testing.TB, dir string, extraArgs ...string) string {
	tb.Helper()
	return e.Run(tb, false, e.Tool("pg_verifybackup"), append(extraArgs, dir)...)
}
