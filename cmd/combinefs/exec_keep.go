package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
)

// keptServer is what the process keeping a server (exec --keep) tells the
// command that started it, on its "ok" line.
type keptServer struct {
	PID  int    `json:"pid"`
	Host string `json:"host"`
	Port int    `json:"port"`
	User string `json:"user"`
	Data string `json:"data"`
}

// runKept is exec --keep: a child process of our own (daemon mode) mounts
// and serves the point and keeps the server; we run the command against it
// and say how to reach and stop it.
func runKept(ctx context.Context, s *execSession) error {
	line, err := startDaemon(ctx)
	if err != nil {
		return err
	}
	var k keptServer
	if err := json.Unmarshal([]byte(line), &k); err != nil {
		return fmt.Errorf("the process keeping the server said %q: %v", line, err)
	}
	s.sock, s.port, s.user, s.data = k.Host, k.Port, k.User, k.Data
	if len(s.cmd) > 0 {
		err = s.runCommand(ctx, s.env())
	}
	fmt.Fprintf(stderr, "combinefs exec: the server (PostgreSQL %d) on a copy-on-write mount of %s keeps running in process %d\n"+
		"  connect: PGHOST=%s PGPORT=%d PGUSER=%s psql\n"+
		"  stop:    kill %d   (stops the server, unmounts %s and removes its temporary files)\n",
		s.chain.Major, s.chain.Final().Dir, k.PID, k.Host, k.Port, k.User, k.PID, k.Data)
	return err
}

// serveKept is the child of exec --keep once the server is ready: it
// reports to the parent and serves until SIGTERM or SIGINT, or until the
// server stops (pg_ctl stop); the caller then cleans up.
func (s *execSession) serveKept(ctx context.Context) error {
	info, err := json.Marshal(keptServer{PID: os.Getpid(), Host: s.sock, Port: s.port, User: s.user, Data: s.data})
	if err != nil {
		return err
	}
	sendReady("ok " + string(info))
	select {
	case <-ctx.Done():
	case <-s.server.done:
	}
	return nil
}
