package main

// These tests call run in-process with a buffer for stderr. run sets the
// package variable stderr, so no test here may use t.Parallel. None needs
// PostgreSQL, a server or FUSE.

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// runCLI runs combinefs with args and returns the exit status and stderr.
func runCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return runCtx(t, context.Background(), args...)
}

func runCtx(t *testing.T, ctx context.Context, args ...string) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	code := run(ctx, "combinefs", args, &buf)
	return code, buf.String()
}

// runStdout is runCLI that also captures what the command writes to
// os.Stdout (list writes its table there, help and version go there).
func runStdout(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	stdout = captureStdout(t, func() { code, stderr = runCLI(t, args...) })
	return code, stdout, stderr
}

// captureStdout runs fn with os.Stdout sent to a file and returns what it
// wrote there.
func captureStdout(t *testing.T, fn func()) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stdout
	os.Stdout = f
	fn()
	os.Stdout = saved
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// check compares an outcome with the expected one, exactly.
func check(t *testing.T, args []string, code int, got string, wantCode int, want string) {
	t.Helper()
	if code != wantCode || got != want {
		t.Errorf("combinefs %q: exit %d, stderr:\n%s\nwant exit %d, stderr:\n%s", args, code, got, wantCode, want)
	}
}

// wantOneLine fails unless out is exactly one line containing every one of subs.
func wantOneLine(t *testing.T, args []string, out string, subs ...string) {
	t.Helper()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Errorf("combinefs %q: want one line on stderr, got %d:\n%s", args, strings.Count(out, "\n"), out)
	}
	for _, s := range subs {
		if !strings.Contains(out, s) {
			t.Errorf("combinefs %q: stderr does not name %q:\n%s", args, s, out)
		}
	}
}

// usageHint is what run prints after a usage error of a subcommand.
func usageHint(name string) string { return "Try \"combinefs " + name + " --help\".\n" }

// mustNotExist fails if path exists (a half-written output left behind).
func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("%s exists after the failure; nothing should be left behind", path)
	} else if !os.IsNotExist(err) {
		t.Error(err)
	}
}

// snapshot maps every path under dir to its contents ("<dir>" for
// directories), to show that a refused command left dir untouched.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			m[p] = "<dir>"
			return nil
		}
		data, err := os.ReadFile(p)
		m[p] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameSnapshot(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	after := snapshot(t, dir)
	if len(after) != len(before) {
		t.Errorf("%s changed: %d entries before, %d after", dir, len(before), len(after))
	}
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed", p)
		}
	}
}

// testChain is a synthetic chain full <- inc1 <- inc2 in which base/5/16384
// is rebuilt from all three: block 0 from the full backup, 1 from inc1, 2
// from inc2. The backups have manifests but no WAL (verify needs -n).
type testChain struct {
	full, inc1, inc2 string
	rel              string // the relation file, relative to a backup
}

func newTestChain(t *testing.T) testChain {
	t.Helper()
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.File("base/5/16384", resolvertest.FillBlock("full", 0))
	full.File("base/5/PG_VERSION", []byte("17\n"))
	inc1 := c.Incremental()
	inc1.Incremental("base/5/16384", 2, resolvertest.Block{Num: 1, Data: resolvertest.FillBlock("inc1", 1)})
	inc1.File("base/5/PG_VERSION", []byte("17\n"))
	inc2 := c.Incremental()
	inc2.Incremental("base/5/16384", 3, resolvertest.Block{Num: 2, Data: resolvertest.FillBlock("inc2", 2)})
	inc2.File("base/5/PG_VERSION", []byte("17\n"))
	d := c.Dirs()
	return testChain{full: d[0], inc1: d[1], inc2: d[2], rel: "base/5/16384"}
}

// wantRelation is the relation file the chain reconstructs.
func (tc testChain) wantRelation() []byte {
	var b []byte
	b = append(b, resolvertest.FillBlock("full", 0)...)
	b = append(b, resolvertest.FillBlock("inc1", 1)...)
	b = append(b, resolvertest.FillBlock("inc2", 2)...)
	return b
}

// incPath is the INCREMENTAL file of the relation in backup dir.
func (tc testChain) incPath(dir string) string {
	return filepath.Join(dir, filepath.FromSlash(resolvertest.IncrementalPath(tc.rel)))
}

func TestTopLevel(t *testing.T) {
	var usage bytes.Buffer
	printUsage(&usage)
	for _, c := range commands {
		// The help lists every subcommand with its description.
		if !strings.Contains(usage.String(), "combinefs "+c.name) || !strings.Contains(usage.String(), c.short) {
			t.Errorf("top-level usage does not list %s:\n%s", c.name, usage.String())
		}
	}
	tests := []struct {
		args         []string
		code         int
		stdout, want string // want: stderr
	}{
		// No command is a usage error (stderr); asking for help is not
		// (stdout, as PostgreSQL's programs do).
		{nil, 2, "", usage.String()},
		{[]string{"-h"}, 0, usage.String(), ""},
		{[]string{"--help"}, 0, usage.String(), ""},
		{[]string{"help"}, 0, usage.String(), ""},
		{[]string{"--version"}, 0, "combinefs " + version + "\n", ""},
		{[]string{"version"}, 0, "combinefs " + version + "\n", ""},
		{[]string{"bogus"}, 2, "", "combinefs: unknown command \"bogus\"\nTry \"combinefs --help\".\n"},
		// A flag before the command is not a command.
		{[]string{"--bogus"}, 2, "", "combinefs: unknown command \"--bogus\"\nTry \"combinefs --help\".\n"},
		{[]string{"-v"}, 2, "", "combinefs: unknown command \"-v\"\nTry \"combinefs --help\".\n"},
	}
	for _, tt := range tests {
		code, stdout, out := runStdout(t, tt.args...)
		check(t, tt.args, code, out, tt.code, tt.want)
		if stdout != tt.stdout {
			t.Errorf("combinefs %q: stdout:\n%s\nwant:\n%s", tt.args, stdout, tt.stdout)
		}
	}
}

// TestSubcommandHelp: --help (and -h, where it is not a flag of its own)
// prints the command's description, its usage line and its flags, exit 0.
func TestSubcommandHelp(t *testing.T) {
	for _, c := range commands {
		helps := []string{"--help", "-h"}
		if c.name == "capture" || c.name == "archive" {
			helps = helps[:1] // -h is --host, as in pg_basebackup and pg_receivewal (see below)
		}
		for _, h := range helps {
			args := []string{c.name, h}
			code, out, errOut := runStdout(t, args...)
			prefix := c.short + "\n\nUsage:\n  combinefs " + c.usage + "\n\nFlags:\n"
			if code != 0 || !strings.HasPrefix(out, prefix) || errOut != "" {
				t.Errorf("combinefs %q: exit %d, stdout:\n%s\nstderr:\n%s\nwant exit 0, nothing on stderr and a help on stdout starting:\n%s", args, code, out, errOut, prefix)
			}
			if !strings.Contains(out, "combinefs "+c.name) {
				t.Errorf("combinefs %q: help does not name the subcommand", args)
			}
		}
	}
	// capture -h (and archive -h) is the host flag without its argument: a usage error.
	args := []string{"capture", "-h"}
	code, out := runCLI(t, args...)
	check(t, args, code, out, 2, "combinefs capture: flag needs an argument: 'h' in -h\n"+usageHint("capture"))
}

// TestUnknownFlags: a flag a command does not have is a usage error naming
// the flag, with the hint and no full usage.
func TestUnknownFlags(t *testing.T) {
	for _, c := range commands {
		for _, tt := range []struct{ flag, msg string }{
			{"--bogus", "unknown flag: --bogus"},
			{"-Z", "unknown shorthand flag: 'Z' in -Z"},
			{"--version", "unknown flag: --version"},
		} {
			args := []string{c.name, tt.flag}
			code, out := runCLI(t, args...)
			check(t, args, code, out, 2, "combinefs "+c.name+": "+tt.msg+"\n"+usageHint(c.name))
		}
	}
}

// TestWrongArgumentCount: too few or too many operands, per subcommand.
func TestWrongArgumentCount(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"verify"}, "no backup directory specified"},
		{[]string{"verify", "--chain"}, "no backup directory specified"},
		{[]string{"flatten"}, "no input directories specified"},
		{[]string{"flatten", "-o", filepath.Join(dir, "out")}, "no input directories specified"},
		{[]string{"list"}, "no repository specified (--repo DIR)"},
		{[]string{"list", "a", "b"}, `too many command-line arguments (first is "a")`},
		{[]string{"list", "--repo", dir, "extra"}, `too many command-line arguments (first is "extra")`},
		{[]string{"mount"}, "give the backups of the chain, oldest first, and the mount point"},
		{[]string{"mount", dir}, "give the backups of the chain, oldest first, and the mount point"},
		{[]string{"mount", "--repo", dir, dir}, "--repo and --point go together"},
		{[]string{"mount", "--point", "p", dir}, "--repo and --point go together"},
		{[]string{"mount", "--repo", dir, "--point", "p"}, "with --repo, give only the mount point"},
		{[]string{"mount", "--repo", dir, "--point", "p", dir, dir}, "with --repo, give only the mount point"},
		{[]string{"umount"}, "give one mount point"},
		{[]string{"umount", dir, dir}, "give one mount point"},
		{[]string{"capture", "-D", filepath.Join(dir, "out"), "extra"}, `too many command-line arguments (first is "extra")`},
		{[]string{"archive"}, "no repository specified (--repo DIR)"},
		{[]string{"archive", "--repo", dir, "extra"}, `too many command-line arguments (first is "extra")`},
		{[]string{"archive", "--repo", dir, "--create-slot"}, "--create-slot needs --slot NAME"},
		{[]string{"archive", "--repo", dir, "-s", "0"}, "invalid --status-interval 0: must be positive"},
		{[]string{"wal-get", "a", "b"}, "no repository specified (--repo DIR)"},
		{[]string{"wal-get", "--repo", dir, "a"}, "give the file's name and where to put it (restore_command = 'combinefs wal-get --repo DIR %f %p')"},
		{[]string{"mount", "--repo", dir, "--target-lsn", "0/1", dir}, "a recovery target needs --repo and --cow, and picks the point itself (no --point)"},
		{[]string{"mount", "--repo", dir, "--cow", dir, "--point", "p", "--target-name", "x", dir}, "a recovery target needs --repo and --cow, and picks the point itself (no --point)"},
		{[]string{"mount", "--repo", dir, "--cow", dir, "--target-lsn", "zz", dir}, `invalid --target-lsn "zz": want an LSN such as 0/3000028`},
		{[]string{"mount", "--repo", dir, "--cow", dir, "--target-time", "yesterday", dir}, `invalid --target-time "yesterday": want e.g. 2026-01-02T15:04:05Z or 2026-01-02 15:04:05.123+00`},
		{[]string{"mount", "--repo", dir, "--cow", dir, "--target-xid", "-1", dir}, `invalid --target-xid "-1": want a transaction ID (3 to 4294967295)`},
		{[]string{"mount", "--repo", dir, "--cow", dir, "--target-xid", "5", "--target-name", "n", dir}, "give only one of --target-time, --target-lsn, --target-xid and --target-name"},
		{[]string{"mount", "--repo", dir, "--cow", dir, "--target-name", "n", "--target-action", "stop", dir}, `invalid --target-action "stop": must be pause, promote or shutdown`},
		{[]string{"mount", "--repo", dir, "--point", "p", "--target-timeline", "2", dir}, "--target-action and --target-timeline go with a recovery target (--target-time, --target-lsn, --target-xid or --target-name)"},
	}
	for _, tt := range tests {
		code, out := runCLI(t, tt.args...)
		check(t, tt.args, code, out, 2, "combinefs "+tt.args[0]+": "+tt.msg+"\n"+usageHint(tt.args[0]))
	}
	// Nothing was created by any of them.
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%s: a refused command line created %v", dir, ents)
	}
}

// TestFlattenBadOptionValues: a missing -o or a bad option value is a bad
// command line (exit 2 and the "Try --help" hint, as capture does for the
// same mistakes), though pg_combinebackup's mode keeps pg_combinebackup's
// plain error for them (TestPgCombinebackupMode).
func TestFlattenBadOptionValues(t *testing.T) {
	tc := newTestChain(t)
	out := filepath.Join(t.TempDir(), "out")
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"flatten", tc.full}, "no output directory specified"},
		{[]string{"flatten", "-o", out, "--manifest-checksums", "zz", tc.full}, `unrecognized checksum algorithm: "zz"`},
		{[]string{"flatten", "-o", out, "--sync-method", "zz", tc.full}, "unrecognized sync method: zz"},
		{[]string{"flatten", "-o", out, "-T", "zz", tc.full}, `invalid tablespace mapping format "zz", must be "OLDDIR=NEWDIR"`},
	}
	for _, tt := range tests {
		code, got := runCLI(t, tt.args...)
		check(t, tt.args, code, got, 2, "combinefs flatten: "+tt.msg+"\n"+usageHint("flatten"))
		mustNotExist(t, out)
	}
}

// TestPgCombinebackupMode: invoked as pg_combinebackup, combinefs answers as
// pg_combinebackup does (exit 1 for any error).
func TestPgCombinebackupMode(t *testing.T) {
	tc := newTestChain(t)
	out := filepath.Join(t.TempDir(), "out")
	hint := "pg_combinebackup: hint: Try \"pg_combinebackup --help\" for more information.\n"
	ver := "pg_combinebackup (PostgreSQL) " + pgCompatRelease + " (combinefs " + version + ")\n"
	if !regexp.MustCompile(`^pg_combinebackup \(PostgreSQL\) 18\.\d+ `).MatchString(ver) {
		t.Errorf("--version %q: not the form PostgreSQL's programs print", ver)
	}
	tests := []struct {
		args         []string
		code         int
		stdout, want string // want: stderr
	}{
		// Help and version on stdout, as pg_combinebackup prints them.
		{[]string{"--version"}, 0, ver, ""},
		{[]string{"-V"}, 0, ver, ""},
		{[]string{"--help"}, 0, pgCombinebackupHelp, ""},
		{[]string{"-?"}, 0, pgCombinebackupHelp, ""},
		{[]string{"--bogus"}, 1, "", "pg_combinebackup: unknown flag: --bogus\n" + hint},
		{[]string{"-o", out}, 1, "", "pg_combinebackup: error: no input directories specified\n" + hint},
		{[]string{tc.full}, 1, "", "pg_combinebackup: error: no output directory specified\n"},
		{[]string{"-o", out, tc.full, tc.inc1, tc.inc2}, 0, "", ""},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		var code int
		stdout := captureStdout(t, func() { code = run(context.Background(), "pg_combinebackup", tt.args, &buf) })
		if code != tt.code || buf.String() != tt.want || stdout != tt.stdout {
			t.Errorf("pg_combinebackup %q: exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, stdout:\n%s\nstderr:\n%s", tt.args, code, stdout, buf.String(), tt.code, tt.stdout, tt.want)
		}
	}
	got, err := os.ReadFile(filepath.Join(out, tc.rel))
	if err != nil || !bytes.Equal(got, tc.wantRelation()) {
		t.Errorf("pg_combinebackup output %s: %d bytes, %v; want the reconstructed relation", tc.rel, len(got), err)
	}
}
