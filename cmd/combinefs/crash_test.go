package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/internal/crashpoint"
)

// helperArgsEnv makes the test binary run combinefs with the arguments it
// holds (separated by the byte 0x1f) instead of the tests: a process a test
// may lose to kill -9.
const helperArgsEnv = "COMBINEFS_TEST_HELPER_ARGS"

func init() {
	if a := os.Getenv(helperArgsEnv); a != "" {
		os.Exit(run(context.Background(), "combinefs", strings.Split(a, "\x1f"), os.Stderr))
	}
}

// runKilled runs combinefs with args in a child process that kills itself
// at flatten's phase, and checks that it died so.
func runKilled(t *testing.T, phase string, args ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperArgsEnv+"="+strings.Join(args, "\x1f"), crashpoint.Env+"="+phase)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("combinefs %q with %s=%s: %v, want killed by SIGKILL\n%s", args, crashpoint.Env, phase, err, out)
	}
}

var killPhases = []string{flatten.CrashCreated, flatten.CrashFiles, flatten.CrashSynced, flatten.CrashControl}

// TestFlattenKilled: kill -9 of flatten at each phase leaves no output
// directory, only the hidden one beside it (without global/pg_control until
// all is durable), which a rerun removes, saying so, before it succeeds.
func TestFlattenKilled(t *testing.T) {
	tc := newTestChain(t)
	for _, phase := range killPhases {
		t.Run(phase, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			partial := filepath.Join(filepath.Dir(out), ".out.combinefs-partial")
			args := []string{"flatten", "-o", out, tc.full, tc.inc1, tc.inc2}
			runKilled(t, phase, args...)
			mustNotExist(t, out)
			if _, err := os.Stat(partial); err != nil {
				t.Fatalf("no hidden output after the kill: %v", err)
			}
			_, err := os.Stat(filepath.Join(partial, "global/pg_control"))
			if phase != flatten.CrashControl && err == nil {
				t.Errorf("the hidden output has global/pg_control before all is durable")
			}
			code, stderr := runCLI(t, args...)
			if code != 0 || !strings.Contains(stderr, fmt.Sprintf("warning: removing %q, left by an interrupted run", partial)) {
				t.Fatalf("rerun: exit %d, stderr:\n%s\nwant success and the stale directory named", code, stderr)
			}
			mustNotExist(t, partial)
			checkOutput(t, tc, out)
		})
	}
}

// checkOutput checks a complete output of tc.
func checkOutput(t *testing.T, tc testChain, out string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, tc.rel))
	if err != nil || string(data) != string(tc.wantRelation()) {
		t.Errorf("output %s: relation wrong (%v)", out, err)
	}
	for _, f := range []string{"global/pg_control", "backup_label", "backup_manifest"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("output %s: %v", out, err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "global", ".pg_control.combinefs-partial")); err == nil {
		t.Errorf("output %s keeps pg_control's hidden name", out)
	}
}

// TestFlattenKilledInPlace: into an existing empty directory (written in
// place, as pg_combinebackup does) a kill -9 leaves partial contents, but
// never global/pg_control before everything else is durable; the rerun is
// refused as into any directory that is not empty (once anything was
// written).
func TestFlattenKilledInPlace(t *testing.T) {
	tc := newTestChain(t)
	for _, phase := range killPhases[:3] {
		t.Run(phase, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			args := []string{"flatten", "-o", out, tc.full, tc.inc1, tc.inc2}
			runKilled(t, phase, args...)
			if _, err := os.Stat(filepath.Join(out, "global/pg_control")); err == nil {
				t.Errorf("global/pg_control is there after a kill at %s", phase)
			}
			code, stderr := runCLI(t, args...)
			if phase == flatten.CrashCreated { // nothing written yet
				if code != 0 {
					t.Errorf("rerun: exit %d, stderr:\n%s\nwant success", code, stderr)
				}
				checkOutput(t, tc, out)
			} else if code != 1 || !strings.Contains(stderr, "exists but is not empty") {
				t.Errorf("rerun: exit %d, stderr:\n%s\nwant a refusal", code, stderr)
			}
		})
	}
}

// TestFlattenFreshLeftover: a run killed right after making its hidden
// directory, before giving it its name, leaves it under its first name; the
// next run removes it, saying so.
func TestFlattenFreshLeftover(t *testing.T) {
	tc := newTestChain(t)
	out := filepath.Join(t.TempDir(), "out")
	fresh := filepath.Join(filepath.Dir(out), ".out.combinefs-partial-123")
	if err := os.Mkdir(fresh, 0o700); err != nil {
		t.Fatal(err)
	}
	code, stderr := runCLI(t, "flatten", "-o", out, tc.full, tc.inc1, tc.inc2)
	if code != 0 || !strings.Contains(stderr, fmt.Sprintf("warning: removing %q, left by an interrupted run", fresh)) {
		t.Errorf("exit %d, stderr:\n%s\nwant success and %s named", code, stderr, fresh)
	}
	mustNotExist(t, fresh)
	checkOutput(t, tc, out)
}

// TestFlattenPartialInUse: the hidden output of a run still going is not
// taken for a stale one: the second run is refused and removes nothing.
func TestFlattenPartialInUse(t *testing.T) {
	tc := newTestChain(t)
	out := filepath.Join(t.TempDir(), "out")
	partial := filepath.Join(filepath.Dir(out), ".out.combinefs-partial")
	if err := os.Mkdir(partial, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(partial, "PG_VERSION"), []byte("17\n"), 0o600)
	f, err := os.Open(partial)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	args := []string{"flatten", "-o", out, tc.full, tc.inc1, tc.inc2}
	code, stderr := runCLI(t, args...)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	wantOneLine(t, args, stderr, "being written by another run", partial)
	if _, err := os.Stat(filepath.Join(partial, "PG_VERSION")); err != nil {
		t.Errorf("the running flatten's output was touched: %v", err)
	}
	mustNotExist(t, out)
}

// TestPgCombinebackupErrorFirst: as pg_combinebackup, a run that fails
// after creating its output prints its error, then (as pg_combinebackup's
// exit handler does) that it removes the output.
func TestPgCombinebackupErrorFirst(t *testing.T) {
	tc := newTestChain(t)
	p := tc.incPath(tc.inc1) // read when written, after the output exists
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, data[:len(data)-100], 0o600)
	out := filepath.Join(t.TempDir(), "out")
	var buf strings.Builder
	code := run(context.Background(), "pg_combinebackup", []string{"-o", out, tc.full, tc.inc1, tc.inc2}, &buf)
	want := fmt.Sprintf("pg_combinebackup: error: file %q is too short: expected 16384, found 16284\npg_combinebackup: removing output directory %q\n", p, out)
	if code != 1 || buf.String() != want {
		t.Errorf("exit %d, output:\n%s\nwant exit 1, output:\n%s", code, buf.String(), want)
	}
	mustNotExist(t, out)
	mustNotExist(t, filepath.Join(filepath.Dir(out), ".out.combinefs-partial"))
}
