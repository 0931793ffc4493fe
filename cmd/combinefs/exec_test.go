package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestExecSplit: the chain and the command, with and without --repo, and
// the command lines that are refused before anything is made.
func TestExecSplit(t *testing.T) {
	for _, tt := range []struct {
		o          execOptions
		args       []string
		dash       int
		chain, cmd []string
		err        string
	}{
		{execOptions{}, []string{"/b/full", "/b/inc", "--", "psql", "-Atc", "x"}, -1, []string{"/b/full", "/b/inc"}, []string{"psql", "-Atc", "x"}, ""},
		{execOptions{}, []string{"/b/full", "psql"}, 1, []string{"/b/full"}, []string{"psql"}, ""},
		{execOptions{}, []string{"/b/full", "--", "sh", "-c", "x", "--", "y"}, -1, []string{"/b/full"}, []string{"sh", "-c", "x", "--", "y"}, ""},
		{execOptions{repo: "/r", point: "p"}, []string{"pg_dump", "--", "x"}, -1, nil, []string{"pg_dump", "--", "x"}, ""},
		{execOptions{repo: "/r", point: "p"}, []string{"psql"}, 0, nil, []string{"psql"}, ""},
		{execOptions{keep: true}, []string{"/b/full", "--"}, -1, []string{"/b/full"}, []string{}, ""},
		{execOptions{}, []string{"/b/full", "psql"}, -1, nil, nil, "give the backups of the chain, oldest first, then -- and the command"},
		{execOptions{}, []string{"psql"}, 0, nil, nil, "give the backups of the chain"},
		{execOptions{}, []string{"/b/full", "--"}, -1, nil, nil, "give the command to run (after --)"},
		{execOptions{repo: "/r"}, []string{"psql"}, -1, nil, nil, "--repo and --point go together"},
		{execOptions{repo: "/r", point: "p"}, []string{"/b/full", "psql"}, 1, nil, nil, "with --repo, give no backups before --"},
		// A recovery target: --repo, and the point is chosen (no --point).
		{execOptions{repo: "/r", pitr: pitrOptions{name: "rp"}}, []string{"psql"}, -1, nil, []string{"psql"}, ""},
		{execOptions{repo: "/r", pitr: pitrOptions{time: "2026-01-02 10:00:00", action: "pause"}}, []string{"psql"}, -1, nil, []string{"psql"}, ""},
		{execOptions{repo: "/r", point: "p", pitr: pitrOptions{name: "rp"}}, []string{"psql"}, -1, nil, nil, "a recovery target needs --repo, and picks the point itself (no --point)"},
		{execOptions{pitr: pitrOptions{lsn: "0/3000028"}}, []string{"/b/full", "--", "psql"}, -1, nil, nil, "a recovery target needs --repo"},
		{execOptions{repo: "/r", pitr: pitrOptions{name: "rp", action: "shutdown"}}, []string{"psql"}, -1, nil, nil, "--target-action shutdown does not go with exec"},
		{execOptions{repo: "/r", point: "p", pitr: pitrOptions{action: "pause"}}, []string{"psql"}, -1, nil, nil, "--target-action and --target-timeline go with a recovery target"},
	} {
		if tt.o.pitr.defAction = "promote"; tt.o.pitr.action == "" {
			tt.o.pitr.action = "promote"
		}
		chain, cmd, err := tt.o.split(tt.args, tt.dash)
		if tt.err != "" {
			if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q (dash %d): %v, want a usage error %q", tt.args, tt.dash, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(chain, tt.chain) || !slices.Equal(cmd, tt.cmd) {
			t.Errorf("%q (dash %d): chain %q, command %q, %v; want %q, %q", tt.args, tt.dash, chain, cmd, err, tt.chain, tt.cmd)
		}
	}
}

// TestExecCommandLine: exec's refusals through run, before anything is
// made: exit 2 and the hint.
func TestExecCommandLine(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"exec"}, "give the backups of the chain, oldest first, then -- and the command"},
		{[]string{"exec", "--repo", "/r", "--point", "p"}, "give the command to run (after --)"},
		{[]string{"exec", "--point", "p", "--", "psql"}, "--repo and --point go together"},
		{[]string{"exec", "--repo", "/r", "--point", "p", "--target-time", "2026-01-02 10:00:00", "--", "psql"}, "a recovery target needs --repo, and picks the point itself (no --point)"},
		{[]string{"exec", "--target-name", "rp", "/b/full", "--", "psql"}, "a recovery target needs --repo, and picks the point itself (no --point)"},
		{[]string{"exec", "--repo", "/r", "--target-name", "rp", "--target-action", "shutdown", "--", "psql"}, "--target-action shutdown does not go with exec: the server would stop at the target before the command runs (use promote or pause)"},
		{[]string{"exec", "--repo", "/r", "--target-time", "10 o'clock", "--", "psql"}, `invalid --target-time "10 o'clock": want e.g. 2026-01-02T15:04:05Z or 2026-01-02 15:04:05.123+00`},
	} {
		code, out := runCLI(t, tt.args...)
		check(t, tt.args, code, out, 2, "combinefs exec: "+tt.msg+"\n"+usageHint("exec"))
	}
	// Flags after the chain belong to the command.
	dir := t.TempDir()
	args := []string{"exec", filepath.Join(dir, "nosuch"), "--", "psql", "--keep"}
	code, out := runCLI(t, args...)
	wantOneLine(t, args, out, "combinefs exec:", filepath.Join(dir, "nosuch"))
	if code != 1 {
		t.Errorf("%q: exit %d, want 1", args, code)
	}
}

// TestFindPgBin: an explicit PG_BINDIR is not second-guessed, and without
// any PostgreSQL the error names every place it looked.
func TestFindPgBin(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PG_BINDIR", dir)
	_, err := findPgBin(17)
	if err == nil || err.Error() != "PG_BINDIR="+dir+": "+filepath.Join(dir, "postgres")+": no such file or directory" {
		t.Errorf("PG_BINDIR without postgres: %v", err)
	}
	if _, err := os.Stat("/usr/lib/postgresql/99/bin/postgres"); err == nil {
		t.Skip("a PostgreSQL 99 is installed")
	}
	t.Setenv("PG_BINDIR", "")
	t.Setenv("PATH", dir) // no pg_config
	_, err = findPgBin(99)
	want := []string{"no PostgreSQL 99 server found", "pg_config", "/usr/lib/postgresql/99/bin/postgres", "/usr/pgsql-99/bin/postgres", "set PG_BINDIR"}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) || strings.Contains(err.Error(), "\n") {
			t.Errorf("no PostgreSQL 99: %v; want one line naming %q", err, w)
		}
	}
}

// TestLookPathIn: a command is found as a shell finds it, or refused by
// name.
func TestLookPathIn(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if err := os.WriteFile(filepath.Join(d, "prog"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(a, "noexec"), nil, 0o644)
	if p, err := lookPathIn("prog", b+":"+a); err != nil || p != filepath.Join(b, "prog") {
		t.Errorf("prog: %q, %v; want the first in PATH", p, err)
	}
	if _, err := lookPathIn("noexec", a); err == nil || err.Error() != `command "noexec" not found in PATH` {
		t.Errorf("a file that is not executable: %v", err)
	}
	if p, err := lookPathIn(filepath.Join(a, "prog"), ""); err != nil || p != filepath.Join(a, "prog") {
		t.Errorf("a path: %q, %v", p, err)
	}
}
