package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// verifiedLine matches the success line of one backup.
func verifiedLine(dir string) *regexp.Regexp {
	return regexp.MustCompile(`^combinefs verify: ` + regexp.QuoteMeta(dir) + `: backup successfully verified \(\d+ files, [0-9.]+ [KMG]?i?B\)$`)
}

// lines splits stderr into lines, failing unless it ends with a newline.
func lines(t *testing.T, out string) []string {
	t.Helper()
	if !strings.HasSuffix(out, "\n") {
		t.Errorf("stderr does not end with a newline: %q", out)
	}
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

func TestVerifyGood(t *testing.T) {
	tc := newTestChain(t)
	// The synthetic backups have a WAL range in the manifest but nothing in
	// pg_wal: -n skips the WAL, as pg_verifybackup -n does.
	for _, dir := range []string{tc.full, tc.inc1, tc.inc2} {
		for _, extra := range [][]string{{"-n"}, {"-n", "-s"}, {"--no-parse-wal", "-j", "1"}} {
			args := append(append([]string{"verify"}, extra...), dir)
			code, out := runCLI(t, args...)
			if code != 0 || !verifiedLine(dir).MatchString(strings.TrimSuffix(out, "\n")) || strings.Count(out, "\n") != 1 {
				t.Errorf("combinefs %q: exit %d, stderr:\n%s\nwant exit 0 and one success line", args, code, out)
			}
		}
	}
	// Without -n the missing WAL is a problem, reported like the others.
	args := []string{"verify", tc.full}
	code, out := runCLI(t, args...)
	check(t, args, code, out, 1, fmt.Sprintf("combinefs verify: %s: no WAL segments found in %q\ncombinefs verify: 1 of 1 backups failed verification\n",
		tc.full, filepath.Join(tc.full, "pg_wal")))
}

// TestVerifyAltered: a file changed after the manifest was written is found
// and named, and the command fails.
func TestVerifyAltered(t *testing.T) {
	tests := []struct {
		name  string
		alter func(path string) error
		want  string // the problem, after "combinefs verify: DIR: "
	}{
		{"same size", func(p string) error {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			data[100] ^= 0xff
			return os.WriteFile(p, data, 0o600)
		}, `checksum mismatch for file "base/5/16384"`},
		{"grown", func(p string) error {
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write([]byte("x"))
			return err
		}, `"base/5/16384" has size 8193 on disk but size 8192 in the manifest`},
		{"removed", os.Remove, `"base/5/16384" is present in the manifest but not on disk`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := newTestChain(t)
			if err := tt.alter(filepath.Join(tc.full, tc.rel)); err != nil {
				t.Fatal(err)
			}
			args := []string{"verify", "-n", tc.full}
			code, out := runCLI(t, args...)
			ls := lines(t, out)
			if code != 1 || len(ls) != 2 || !strings.Contains(ls[0], tc.rel) ||
				ls[1] != "combinefs verify: 1 of 1 backups failed verification" {
				t.Errorf("combinefs %q: exit %d, stderr:\n%s\nwant exit 1, a line naming %s, and the summary", args, code, out, tc.rel)
			}
			if want := "combinefs verify: " + tc.full + ": " + tt.want; ls[0] != want && !strings.HasPrefix(ls[0], want) {
				t.Errorf("first line %q, want %q", ls[0], want)
			}
		})
	}
	// An extra file is named too.
	tc := newTestChain(t)
	if err := os.WriteFile(filepath.Join(tc.inc1, "base/5/99999"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "-n", tc.full, tc.inc1}
	code, out := runCLI(t, args...)
	ls := lines(t, out)
	if code != 1 || len(ls) != 3 || !verifiedLine(tc.full).MatchString(ls[0]) ||
		ls[1] != "combinefs verify: "+tc.inc1+`: "base/5/99999" is present on disk but not in the manifest` ||
		ls[2] != "combinefs verify: 1 of 2 backups failed verification" {
		t.Errorf("combinefs %q: exit %d, stderr:\n%s", args, code, out)
	}
}

// TestVerifyMissing: a directory that does not exist (or has no manifest) is
// one line naming it.
func TestVerifyMissing(t *testing.T) {
	tc := newTestChain(t)
	missing := filepath.Join(t.TempDir(), "nope")
	empty := t.TempDir()
	for _, tt := range []struct {
		args []string
		dir  string
	}{
		{[]string{"verify", missing}, missing},
		{[]string{"verify", "-n", "--chain", missing, tc.inc1}, missing},
		{[]string{"verify", empty}, empty},
	} {
		code, out := runCLI(t, tt.args...)
		check(t, tt.args, code, out, 1, fmt.Sprintf("combinefs verify: %s: could not read manifest: open %s: no such file or directory\n",
			tt.dir, filepath.Join(tt.dir, "backup_manifest")))
	}
}

func TestVerifyChain(t *testing.T) {
	tc := newTestChain(t)
	args := []string{"verify", "-n", "--chain", tc.full, tc.inc1, tc.inc2}
	code, out := runCLI(t, args...)
	ls := lines(t, out)
	if code != 0 || len(ls) != 4 || !verifiedLine(tc.full).MatchString(ls[0]) || !verifiedLine(tc.inc1).MatchString(ls[1]) ||
		!verifiedLine(tc.inc2).MatchString(ls[2]) || ls[3] != "combinefs verify: the 3 backups form a valid chain" {
		t.Errorf("combinefs %q: exit %d, stderr:\n%s", args, code, out)
	}

	// Each backup verifies on its own; the chain check fails, in one line
	// naming the backups at fault.
	for _, tt := range []struct {
		name string
		dirs []string
		msg  string
	}{
		{"reversed", []string{tc.inc1, tc.full},
			fmt.Sprintf("backup %q is a full backup, but only the first backup of a chain may be full (is the order right?)", tc.full)},
		{"gap", []string{tc.full, tc.inc2},
			fmt.Sprintf("backup %q starts at LSN 0/2000028, but %q is incremental from LSN 0/4000028: backups are out of order or one is missing between them", tc.full, tc.inc2)},
		{"swapped incrementals", []string{tc.full, tc.inc2, tc.inc1},
			fmt.Sprintf("backup %q starts at LSN 0/6000028, but %q is incremental from LSN 0/2000028: backups are out of order or one is missing between them", tc.inc2, tc.inc1)},
		{"no full", []string{tc.inc1, tc.inc2},
			fmt.Sprintf("backup %q is incremental (from LSN 0/2000028), but a chain must start with a full backup", tc.inc1)},
		{"twice", []string{tc.full, tc.full},
			fmt.Sprintf("backup %q is a full backup, but only the first backup of a chain may be full (is the order right?)", tc.full)},
	} {
		args := append([]string{"verify", "-n", "--chain"}, tt.dirs...)
		code, out := runCLI(t, args...)
		ls := lines(t, out)
		if code != 1 || len(ls) != len(tt.dirs)+1 || ls[len(ls)-1] != "combinefs verify: "+tt.msg {
			t.Errorf("%s: combinefs %q: exit %d, stderr:\n%s\nwant exit 1 and last line:\ncombinefs verify: %s", tt.name, args, code, out, tt.msg)
			continue
		}
		for i, d := range tt.dirs {
			if !verifiedLine(d).MatchString(ls[i]) {
				t.Errorf("%s: line %d: %q, want %s verified", tt.name, i, ls[i], d)
			}
		}
	}
}

// TestVerifyRepo: one verdict line per point; a damaged file fails its
// point and every later point of its chain; a broken chain fails too.
func TestVerifyRepo(t *testing.T) {
	repo := newTestRepo(t, false)
	code, out := runCLI(t, "verify", "-n", "--repo", repo)
	want := regexp.MustCompile(`^combinefs verify: ` + repoFull + `: ok: \d+ files, [0-9.]+ [KMG]?i?B match the manifest; chain of 1 intact\n` +
		`combinefs verify: ` + repoInc1 + `: ok: .*; chain of 2 intact\n` +
		`combinefs verify: ` + repoInc2 + `: ok: .*; chain of 3 intact\n` +
		`combinefs verify: all 3 points of ` + regexp.QuoteMeta(repo) + ` verified\n$`)
	if code != 0 || !want.MatchString(out) {
		t.Errorf("verify --repo: exit %d:\n%s", code, out)
	}
	if err := os.WriteFile(filepath.Join(repo, repoInc1, "base/5/PG_VERSION"), []byte("18\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = runCLI(t, "verify", "-n", "--repo", repo)
	want = regexp.MustCompile(`^combinefs verify: ` + repoFull + `: ok: .*\n` +
		`combinefs verify: ` + repoInc1 + `: FAILED: .*base/5/PG_VERSION.*\n` +
		`combinefs verify: ` + repoInc2 + `: FAILED: matches its manifest .*, but its chain's point ` + repoInc1 + ` failed\n` +
		`combinefs verify: 2 of 3 points of ` + regexp.QuoteMeta(repo) + ` failed verification\n$`)
	if code != 1 || !want.MatchString(out) {
		t.Errorf("verify --repo (damaged): exit %d:\n%s", code, out)
	}

	repo = newTestRepo(t, true)
	code, out = runCLI(t, "verify", "-n", "--repo", repo)
	want = regexp.MustCompile(`\ncombinefs verify: ` + repoInc2 + `: FAILED: matches its manifest .*, but cannot be restored: its parent \(the backup that started at 0/4000028 on timeline 1\) is not in the repository\n`)
	if code != 1 || !want.MatchString(out) {
		t.Errorf("verify --repo (broken chain): exit %d:\n%s", code, out)
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"verify", "--repo", t.TempDir()}, 1, "has no points"},
		{[]string{"verify", "--repo", filepath.Join(repo, "nope")}, 1, "no such file or directory"},
		{[]string{"verify", "--repo", repo, repo}, 2, "with --repo, give no backup directories"},
	} {
		code, out := runCLI(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.want) || strings.Count(out, "\n") > 2 {
			t.Errorf("combinefs %q: exit %d, stderr %q; want exit %d and %q", tt.args, code, out, tt.code, tt.want)
		}
	}
}
