package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/combinefs/combinefs/integration"
)

// server is a postmaster the benchmark starts on a data directory (a
// pg_combinebackup output or a combinefs mount), with the harness's
// conventions: chrooted as the server user, TCP on 127.0.0.1, a
// parent-death signal so it never outlives the benchmark.
type server struct {
	e       *integration.Env
	dataDir string // in-root
	port    int
	logFile string // in-root
	pid     int
	done    chan struct{}
}

// startServer launches postgres on dataDir with settings (-c NAME=VALUE)
// and returns at once; waitReady waits for the first answered query.
func startServer(t *benchTB, e *integration.Env, dataDir string, settings map[string]string) *server {
	s := &server{e: e, dataDir: dataDir, port: integration.FreePort(t), logFile: dataDir + ".log"}
	logf, err := os.OpenFile(e.Host(s.logFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	logf.Chown(e.UID, e.GID)
	args := []string{"-D", dataDir, "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=/tmp"}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	cmd := e.Command(context.Background(), false, e.Tool("postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	cmd.SysProcAttr.Setpgid = true
	cmd.WaitDelay = 0
	if err := integration.StartOnLockedThread(cmd); err != nil {
		t.Fatalf("starting postgres on %s: %v", dataDir, err)
	}
	s.pid = cmd.Process.Pid
	s.done = make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// connString is for pgconn, from this (host) process.
func (s *server) connString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable connect_timeout=5", s.port, s.e.User)
}

// waitReady polls every 5 ms until SELECT 1 is answered.
func (s *server) waitReady(t *benchTB, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		if err := s.selectOne(); err == nil {
			return
		}
		select {
		case <-s.done:
			t.Fatalf("postgres on %s exited during startup; log tail:\n%s", s.dataDir, s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres on %s did not answer within %v; log tail:\n%s", s.dataDir, timeout, s.logTail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *server) selectOne() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, s.connString())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "1" {
		return errors.New("SELECT 1 did not return 1")
	}
	return nil
}

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.e.Host(s.logFile))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// stop: fast shutdown, then immediate, then SIGKILL of the process group;
// it returns once no process of the server is left.
func (s *server) stop(t *benchTB) {
	if s.pid == 0 {
		return
	}
	select {
	case <-s.done:
	default:
		for _, step := range []struct {
			sig syscall.Signal
			d   time.Duration
		}{{syscall.SIGINT, 2 * time.Minute}, {syscall.SIGQUIT, 15 * time.Second}, {syscall.SIGKILL, 15 * time.Second}} {
			if step.sig == syscall.SIGKILL {
				syscall.Kill(-s.pid, syscall.SIGKILL)
			}
			syscall.Kill(s.pid, step.sig)
			select {
			case <-s.done:
			case <-time.After(step.d):
				t.Logf("postgres %d on %s ignored signal %v", s.pid, s.dataDir, step.sig)
				continue
			}
			break
		}
	}
	if !integration.WaitServerGone(s.pid, s.e.Host(path.Join(s.dataDir, "postmaster.pid")), 30*time.Second) {
		syscall.Kill(-s.pid, syscall.SIGKILL)
	}
	s.pid = 0
}

// pgbench runs pgbench against the server and returns its output.
func (s *server) pgbench(t *benchTB, args ...string) string {
	full := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.port)}, args...)
	var out bytes.Buffer
	cmd := s.e.Command(context.Background(), false, s.e.Tool("pgbench"), full...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}
