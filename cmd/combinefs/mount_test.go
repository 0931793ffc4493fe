package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/internal/mountctl"
)

// runMountRefused runs a mount that must be refused before mounting. The
// context is already cancelled: should a mount happen after all, it is
// unmounted at once (and the exit status 0 fails the test) instead of
// serving until the test times out.
func runMountRefused(t *testing.T, mp string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	code, out := runCtx(t, ctx, args...)
	if mp != "" && mountctl.IsMounted(mp) {
		t.Errorf("combinefs %q mounted %s", args, mp)
	}
	return code, out
}

// noFuseMounts fails if a FUSE mount under dir is left.
func noFuseMounts(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.Contains(f[2], "fuse") && strings.HasPrefix(mountctl.Unescape(f[1]), dir) {
			t.Errorf("left mounted: %s", line)
		}
	}
}

func TestMountRefused(t *testing.T) {
	tc := newTestChain(t)
	tmp := t.TempDir()
	defer noFuseMounts(t, tmp)
	mp := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(tmp, "nope")
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(tmp, "open")
	if err := os.Mkdir(open, 0o700); err != nil || os.Chmod(open, 0o777) != nil {
		t.Fatal(err)
	}
	chain := []string{tc.full, tc.inc1, tc.inc2}
	args := func(a ...string) []string { return append([]string{"mount"}, a...) }
	withChain := func(last string, flags ...string) []string {
		return append(append(args(flags...), chain...), last)
	}
	// /proc is mounted; if it were not, the test would try to mount there.
	if !mountctl.IsMounted("/proc") {
		t.Fatal("/proc is not a mount point here; the already-mounted case cannot run safely")
	}

	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing mount point", withChain(missing), 1, fmt.Sprintf("mount point %s: no such file or directory", missing)},
		{"mount point is a file", withChain(file), 1, fmt.Sprintf("mount point %s is not a directory", file)},
		{"already mounted", withChain("/proc"), 1, "/proc is already a mount point"},
		{"missing backup", args(tc.full, missing, tc.inc2, mp), 1, fmt.Sprintf("backup directory %q: No such file or directory", missing)},
		{"gap", args(tc.full, tc.inc2, mp), 1,
			fmt.Sprintf("backup %q starts at LSN 0/2000028, but %q is incremental from LSN 0/4000028: backups are out of order or one is missing between them", tc.full, tc.inc2)},
		{"no full", args(tc.inc1, tc.inc2, mp), 1,
			fmt.Sprintf("backup %q is incremental (from LSN 0/2000028), but a chain must start with a full backup", tc.inc1)},
		{"full twice", args(tc.full, tc.full, mp), 1,
			fmt.Sprintf("backup %q is a full backup, but only the first backup of a chain may be full (is the order right?)", tc.full)},
		{"bad cache size", withChain(mp, "--cache-size", "lots"), 2, `--cache-size: bad size "lots"`},
		{"cache dir with cow", withChain(mp, "--cache-dir", filepath.Join(tmp, "c"), "--cow", filepath.Join(tmp, "u")), 2, "--cache-dir is for read-only mounts, not with --cow"},
		{"cache dir size alone", withChain(mp, "--cache-dir-size", "1GiB"), 2, "--cache-dir-size needs --cache-dir"},
		{"bad cache dir size", withChain(mp, "--cache-dir", filepath.Join(tmp, "c"), "--cache-dir-size", "0"), 2, `--cache-dir-size: bad size "0": must be more than 0`},
		{"cache dir writable by others", withChain(mp, "--cache-dir", open), 1,
			fmt.Sprintf("cache directory %s is writable by group or others (mode 0777); make it 0700", open)},
		{"bad owner", withChain(mp, "--owner", "no-such-user-zz"), 2, "--owner: user: unknown user no-such-user-zz"},
		{"bad log", withChain(mp, "--log", filepath.Join(missing, "log")), 1,
			fmt.Sprintf("log file: open %s: no such file or directory", filepath.Join(missing, "log"))},
	} {
		code, out := runMountRefused(t, mp, tt.args...)
		want := "combinefs mount: " + tt.want + "\n"
		if tt.code == 2 {
			want += usageHint("mount")
		}
		if code != tt.code || out != want {
			t.Errorf("%s: combinefs %q: exit %d, stderr:\n%s\nwant exit %d, stderr:\n%s", tt.name, tt.args, code, out, tt.code, want)
		}
	}
	mustNotExist(t, missing)
	mustNotExist(t, filepath.Join(tmp, "c"))
}

// TestMountCorruptIncremental: a damaged INCREMENTAL file anywhere in the
// chain is refused before mounting, in one line naming it.
func TestMountCorruptIncremental(t *testing.T) {
	for _, tt := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"block data truncated", func(b []byte) []byte { return b[:len(b)-100] }},
		{"header truncated", func(b []byte) []byte { return b[:6] }},
		{"bad magic", func(b []byte) []byte { b[0] ^= 0xff; return b }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := newTestChain(t)
			mp := t.TempDir()
			defer noFuseMounts(t, mp)
			p := tc.incPath(tc.inc1) // not the newest: older headers are checked too
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, tt.damage(data), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"mount", tc.full, tc.inc1, tc.inc2, mp}
			code, out := runMountRefused(t, mp, args...)
			if code != 1 {
				t.Errorf("combinefs %q: exit %d, want 1", args, code)
			}
			wantOneLine(t, args, out, "combinefs mount: ", p)
		})
	}
}

// TestMountRepoRefused: --repo --point errors, before mounting.
func TestMountRepoRefused(t *testing.T) {
	repo := newTestRepo(t, true)
	mp := t.TempDir()
	defer noFuseMounts(t, mp)
	missing := filepath.Join(t.TempDir(), "nope")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", "--repo", repo, "--point", "bogus", mp},
			fmt.Sprintf("repository %s has no point named \"bogus\" (its points: %s, %s)", repo, repoFull, repoInc2)},
		{[]string{"mount", "--repo", repo, "--point", repoInc2, mp},
			fmt.Sprintf("point %s of %s cannot be restored: its parent (the backup that started at 0/4000028 on timeline 1) is not in the repository", repoInc2, repo)},
		{[]string{"mount", "--repo", missing, "--point", repoFull, mp},
			fmt.Sprintf("repository: stat %s: no such file or directory", missing)},
		// A good point, but a mount point that is not a directory.
		{[]string{"mount", "--repo", repo, "--point", repoFull, filepath.Join(repo, repoFull, "PG_VERSION")},
			fmt.Sprintf("mount point %s is not a directory", filepath.Join(repo, repoFull, "PG_VERSION"))},
	} {
		code, out := runMountRefused(t, mp, tt.args...)
		check(t, tt.args, code, out, 1, "combinefs mount: "+tt.want+"\n")
	}
	mustNotExist(t, missing)
}

func TestUmountNotMounted(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope")
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ arg, abs string }{
		{dir, dir},
		{missing, missing},
		{".", wd}, // named by its absolute path
	} {
		args := []string{"umount", tt.arg}
		code, out := runCLI(t, args...)
		check(t, args, code, out, 1, "combinefs umount: "+tt.abs+" is not mounted\n")
	}
}
