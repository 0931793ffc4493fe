package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// findPgBin finds the bin directory of PostgreSQL major: PG_BINDIR when set
// (then it must be right: an explicit choice is not overridden), else the
// first of `pg_config --bindir`, /usr/lib/postgresql/MAJOR/bin (Debian,
// Ubuntu) and /usr/pgsql-MAJOR/bin (PGDG RPMs) whose postgres is that major.
// The error names every place tried and what was wrong with it.
func findPgBin(major int) (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		if err := checkPgBin(d, major); err != nil {
			return "", fmt.Errorf("PG_BINDIR=%s: %v", d, err)
		}
		return d, nil
	}
	var cands, tried []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		cands = append(cands, strings.TrimSpace(string(out)))
	} else {
		tried = append(tried, "pg_config: "+errText(err))
	}
	cands = append(cands, fmt.Sprintf("/usr/lib/postgresql/%d/bin", major), fmt.Sprintf("/usr/pgsql-%d/bin", major))
	for _, d := range cands {
		err := checkPgBin(d, major)
		if err == nil {
			return d, nil
		}
		tried = append(tried, err.Error())
	}
	return "", fmt.Errorf("no PostgreSQL %d server found (%s); set PG_BINDIR to its bin directory", major, strings.Join(tried, "; "))
}

// checkPgBin requires dir/postgres to run and to be PostgreSQL major.
func checkPgBin(dir string, major int) error {
	pg := filepath.Join(dir, "postgres")
	if _, err := os.Stat(pg); err != nil {
		return fmt.Errorf("%s: %s", pg, errText(err))
	}
	out, err := exec.Command(pg, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %s", pg, errText(err))
	}
	m := regexp.MustCompile(`\(PostgreSQL\) (\d+)`).FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("%s --version printed %q", pg, strings.TrimSpace(string(out)))
	}
	if n, _ := strconv.Atoi(string(m[1])); n != major {
		return fmt.Errorf("%s is PostgreSQL %d, not %d", pg, n, major)
	}
	return nil
}

// errText is an error without the path an *fs.PathError repeats.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// pgServer is a postmaster started by combinefs.
type pgServer struct {
	dataDir, logFile string
	pid              int
	done             chan struct{} // closed once the postmaster has exited
}

// startPostgres starts bin/postgres on dataDir with settings (NAME=VALUE,
// given with -c so they win over every configuration file) as uid/gid when
// we are root, its output appended to logFile. The postmaster gets its own
// process group (the terminal's Ctrl-C is ours to handle) and SIGQUIT
// should combinefs die.
func startPostgres(bin, dataDir, logFile string, settings []string, uid, gid uint32) (*pgServer, error) {
	logf, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{"-D", dataDir}
	for _, s := range settings {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if os.Geteuid() == 0 {
		if err := logf.Chown(int(uid), int(gid)); err != nil {
			return nil, err
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}
	}
	if err := startLocked(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	s := &pgServer{dataDir: dataDir, logFile: logFile, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() { cmd.Wait(); close(s.done) }()
	return s, nil
}

// startLocked starts cmd from an OS thread that never exits: Linux sends
// the parent-death signal when the forking thread ends, not the process.
func startLocked(cmd *exec.Cmd) error {
	res := make(chan error)
	go func() {
		runtime.LockOSThread()
		res <- cmd.Start()
		select {} // keep the thread (and the server) alive
	}()
	return <-res
}

// waitReady waits until the server accepts connections (postmaster.pid
// says "ready", or "standby" for a backup taken with standby.signal), which
// is after crash recovery; it fails with the server's last complaint if
// the postmaster exits first.
func (s *pgServer) waitReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if st := s.status(); st == "ready" || st == "standby" {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("the server on %s exited at start: %s", s.dataDir, lastComplaint(s.logFile))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// status is the status line of postmaster.pid if it is our postmaster's.
func (s *pgServer) status() string {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 8 || strings.TrimSpace(lines[0]) != strconv.Itoa(s.pid) {
		return ""
	}
	return strings.TrimSpace(lines[7])
}

// lastComplaint is the server log's last FATAL or PANIC line, else its last
// line.
func lastComplaint(logFile string) string {
	b, _ := os.ReadFile(logFile)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "FATAL:") || strings.Contains(lines[i], "PANIC:") {
			return strings.TrimSpace(lines[i])
		}
	}
	if s := strings.TrimSpace(lines[len(lines)-1]); s != "" {
		return s
	}
	return "nothing in its log"
}

// stop shuts the server down as pg_ctl stop -m fast would, then immediate,
// then kills its process group, and waits for the postmaster (which waits
// for its backends) so that the mount is no longer in use.
func (s *pgServer) stop() error {
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, time.Minute}, {syscall.SIGQUIT, 15 * time.Second}, {syscall.SIGKILL, 15 * time.Second}} {
		if step.sig == syscall.SIGKILL {
			syscall.Kill(-s.pid, syscall.SIGKILL)
		}
		syscall.Kill(s.pid, step.sig)
		select {
		case <-s.done:
			return nil
		case <-time.After(step.wait):
		}
	}
	return fmt.Errorf("the server (pid %d) on %s does not stop", s.pid, s.dataDir)
}

// closeOnExec marks every descriptor of ours close-on-exec before exec
// starts programs: the mount's /dev/fuse descriptor is not, and a server or
// command holding it keeps the mount's connection alive after a combinefs
// killed with SIGKILL, so that their next access to the mount waits forever
// instead of failing.
func closeOnExec() {
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
