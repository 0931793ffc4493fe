package integration

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestPgCombinebackupHelpVersion: invoked as pg_combinebackup, combinefs
// prints --help and --version on stdout, nothing on stderr, exit 0, as the
// real pg_combinebackup of this major does (checked beside it), and its
// version line gives a major, by the pattern tools use, no older than the
// server's.
func TestPgCombinebackupHelpVersion(t *testing.T) {
	e := Provision(t)
	run := func(prog, arg string) (string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		cmd := e.Command(context.Background(), false, prog, arg)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 || stdout.Len() == 0 {
			t.Errorf("%s %s: %v; want exit 0, output on stdout only\nstdout: %s\nstderr: %s", prog, arg, err, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	ours := e.CombinefsAsPgCombinebackup()
	major := regexp.MustCompile(`\(PostgreSQL\) (\d+)`)
	for _, prog := range []string{e.Tool("pg_combinebackup"), ours} {
		for _, arg := range []string{"--help", "-?", "--version", "-V"} {
			out, _ := run(prog, arg)
			if strings.HasPrefix(arg, "--v") || arg == "-V" {
				m := major.FindStringSubmatch(out)
				if m == nil || !strings.HasPrefix(out, "pg_combinebackup (PostgreSQL) ") {
					t.Errorf("%s %s: %q is not PostgreSQL's form", prog, arg, out)
				} else if n, _ := strconv.Atoi(m[1]); n < e.Major {
					t.Errorf("%s %s: %q claims PostgreSQL %d, older than the server's %d", prog, arg, out, n, e.Major)
				}
				t.Logf("%s %s: %s", prog, arg, strings.TrimSpace(out))
			} else if !strings.HasPrefix(out, "pg_combinebackup reconstructs full backups from incrementals.\n") {
				t.Errorf("%s %s: help starts %q", prog, arg, out[:min(len(out), 80)])
			}
		}
	}
}
