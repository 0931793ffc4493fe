package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

const (
	repoFull = "2025-01-01_000000-FULL"
	repoInc1 = "2025-01-01_010000-INCREMENTAL"
	repoInc2 = "2025-01-01_020000-INCREMENTAL"
)

// newTestRepo moves the synthetic chain into a repository under the names a
// capture gives; with broken, the middle backup is left out, so the newest
// point has no parent.
func newTestRepo(t *testing.T, broken bool) string {
	t.Helper()
	tc := newTestChain(t)
	repo := t.TempDir()
	for dir, name := range map[string]string{tc.full: repoFull, tc.inc1: repoInc1, tc.inc2: repoInc2} {
		if broken && name == repoInc1 {
			continue
		}
		if err := os.Rename(dir, filepath.Join(repo, name)); err != nil {
			t.Fatal(err)
		}
	}
	return repo
}

const listHeader = "NAME  KIND  PARENT  TLI  START LSN  END LSN  SIZE  STATUS\n"

func TestListEmptyAndMissing(t *testing.T) {
	empty := t.TempDir()
	missing := filepath.Join(t.TempDir(), "nope")
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		// An empty repository lists no backups and is not an error.
		{[]string{"list", "--repo", empty}, 0, listHeader + "(no backups)\n", ""},
		{[]string{"list", empty}, 0, listHeader + "(no backups)\n", ""},
		// list does not create a repository.
		{[]string{"list", "--repo", missing}, 1, "", fmt.Sprintf("combinefs list: repository: stat %s: no such file or directory\n", missing)},
		{[]string{"list", missing}, 1, "", fmt.Sprintf("combinefs list: repository: stat %s: no such file or directory\n", missing)},
		{[]string{"list", "--repo", file}, 1, "", fmt.Sprintf("combinefs list: repository %s is not a directory\n", file)},
	} {
		code, stdout, stderr := runStdout(t, tt.args...)
		if code != tt.code || stdout != tt.stdout || stderr != tt.stderr {
			t.Errorf("combinefs %q: exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, stdout:\n%s\nstderr:\n%s",
				tt.args, code, stdout, stderr, tt.code, tt.stdout, tt.stderr)
		}
	}
	mustNotExist(t, missing)
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("list wrote into the repository: %v", ents)
	}
}

// TestListRepo: intact points are listed as such; a broken chain is shown
// in the table and makes list fail, with one line, so that scripts notice.
func TestListRepo(t *testing.T) {
	repo := newTestRepo(t, false)
	code, stdout, stderr := runStdout(t, "list", "--repo", repo)
	want := regexp.MustCompile(`^NAME +KIND +PARENT +TLI +START LSN +END LSN +SIZE +STATUS\n` +
		repoFull + ` +full +- +1 +0/2000028 +0/2000128 +[0-9.]+ [KMG]?i?B +intact\n` +
		repoInc1 + ` +incremental +` + repoFull + ` +1 +0/4000028 +0/4000128 +[0-9.]+ [KMG]?i?B +intact\n` +
		repoInc2 + ` +incremental +` + repoInc1 + ` +1 +0/6000028 +0/6000128 +[0-9.]+ [KMG]?i?B +intact\n$`)
	if code != 0 || stderr != "" || !want.MatchString(stdout) {
		t.Errorf("list --repo: exit %d, stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	repo = newTestRepo(t, true)
	code, stdout, stderr = runStdout(t, "list", "--repo", repo)
	want = regexp.MustCompile(`^NAME +KIND +PARENT +TLI +START LSN +END LSN +SIZE +STATUS\n` +
		repoFull + ` +full +- .* intact\n` +
		repoInc2 + ` +incremental +- .* BROKEN: its parent \(the backup that started at 0/4000028 on timeline 1\) is not in the repository\n$`)
	if code != 1 || stderr != "combinefs list: 1 of 2 backups cannot be restored\n" || !want.MatchString(stdout) {
		t.Errorf("list --repo (broken): exit %d, stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}
