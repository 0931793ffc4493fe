package integration

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/mountctl"
)

// MountStats asks a mount's process for its counters: SIGUSR1 makes it
// write them (atomically) to its stats file.
func MountStats(tb testing.TB, pid int, statsPath string) fusefs.Stats {
	tb.Helper()
	var s fusefs.Stats
	if err := mountctl.RequestStats(pid, statsPath, time.Minute, &s); err != nil {
		tb.Fatal(err)
	}
	return s
}

// GroupAlive reports whether a non-zombie process of group pgid exists.
func GroupAlive(pgid int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, ent := range ents {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

// StartOnLockedThread starts cmd from one OS thread that never exits:
// Linux sends the parent-death signal when the forking *thread* ends, and
// the Go runtime may retire other threads, which would shut a server down
// in the middle of a test.
func StartOnLockedThread(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread()
			for r := range spawnReqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd, make(chan error, 1)}
	spawnReqs <- r
	return <-r.err
}

var (
	portMu    sync.Mutex
	usedPorts = map[int]bool{}
)

// FreePort picks a TCP port the kernel considers free and that this process
// has not handed out before.
func FreePort(tb testing.TB) int {
	tb.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("finding a free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !usedPorts[p] {
			usedPorts[p] = true
			return p
		}
	}
	tb.Fatal("no free port")
	return 0
}
