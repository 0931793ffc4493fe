package main

import (
	"encoding/json"
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

// TestListJSON: list --json gives the table's facts under stable names.
func TestListJSON(t *testing.T) {
	repo := newTestRepo(t, true)
	if err := os.Mkdir(filepath.Join(repo, "."+repoFull+".partial-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runStdout(t, "list", "--repo", repo, "--json")
	if code != 1 || stderr != "combinefs list: 1 of 2 backups cannot be restored\n" {
		t.Errorf("list --json: exit %d, stderr %q", code, stderr)
	}
	var got struct {
		Repository string
		Points     []map[string]any
		Leftovers  []string
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("list --json: %v\n%s", err, stdout)
	}
	if got.Repository != repo || len(got.Points) != 2 || len(got.Leftovers) != 1 || got.Leftovers[0] != "."+repoFull+".partial-1" {
		t.Fatalf("list --json:\n%s", stdout)
	}
	full, inc := got.Points[0], got.Points[1]
	for k, v := range map[string]any{"name": repoFull, "kind": "full", "timeline": 1.0, "start_lsn": "0/2000028",
		"end_lsn": "0/2000128", "chain_ok": true, "time": "2025-01-01T00:00:00Z", "system_identifier": "7300000000000000001"} {
		if full[k] != v {
			t.Errorf("full point: %s = %v, want %v", k, full[k], v)
		}
	}
	if c, _ := full["chain"].([]any); len(c) != 1 || c[0] != repoFull || full["size_bytes"].(float64) == 0 {
		t.Errorf("full point: %v", full)
	}
	for k, v := range map[string]any{"name": repoInc2, "kind": "incremental", "chain_ok": false, "prev_lsn": "0/4000028", "prev_timeline": 1.0,
		"problem": "its parent (the backup that started at 0/4000028 on timeline 1) is not in the repository"} {
		if inc[k] != v {
			t.Errorf("broken point: %s = %v, want %v", k, inc[k], v)
		}
	}
	if _, ok := inc["chain"]; ok {
		t.Errorf("a broken point has a chain: %v", inc)
	}
}
