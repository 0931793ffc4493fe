package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseFstab: the command lines mount.fuse3 makes of an fstab line
// (type, source, mount point, -o and the options, with dev and suid added),
// and what mount(8) adds for its helpers.
func TestParseFstab(t *testing.T) {
	tests := []struct {
		args        []string
		repo, point string
		operands    []string
		cow         string
		allowOther  bool
	}{
		{[]string{"repo=/b,point=2026-01-01_000000-FULL", "/mnt/pitr", "-o", "rw,cow=/var/tmp/up,allow_other,dev,suid"},
			"/b", "2026-01-01_000000-FULL", []string{"/mnt/pitr"}, "/var/tmp/up", true},
		{[]string{"/b/full:/b/inc1", "/mnt/pitr", "-o", "ro,nodev,nosuid,noatime,x-systemd.automount,comment=x", "-t", "fuse.combinefs"},
			"", "", []string{"/b/full", "/b/inc1", "/mnt/pitr"}, "", false},
		{[]string{"-s", "/b/full", "/m", "-n", "-o", "defaults", "-o", "cache_size=1GiB,owner=postgres"},
			"", "", []string{"/b/full", "/m"}, "", false},
	}
	for _, tt := range tests {
		o, operands, err := parseFstab(tt.args)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if o.repo != tt.repo || o.point != tt.point || !slices.Equal(operands, tt.operands) || o.cow != tt.cow || !o.daemon {
			t.Errorf("%q: repo %q point %q operands %q cow %q daemon %v; want %q %q %q %q true", tt.args, o.repo, o.point, operands, o.cow, o.daemon, tt.repo, tt.point, tt.operands, tt.cow)
		}
		if tt.allowOther && !o.allowOther {
			t.Errorf("%q: allow_other not set", tt.args)
		}
	}
	o, _, _ := parseFstab([]string{"/b/full", "/m", "-o", "cache_size=1GiB,owner=postgres,log=/var/log/c.log,no_writeback_cache,cow=/u,hydrate,hydrate_rate=50MiB,hydrate_open_wait=500ms,waldir=/var/lib/pit-wal"})
	if o.cacheSize != "1GiB" || o.owner != "postgres" || o.logFile != "/var/log/c.log" || o.writeback != "false" || !o.hydrate || o.hydrateRate != "50MiB" || o.hydrateWait != 500*time.Millisecond || o.walDir != "/var/lib/pit-wal" {
		t.Errorf("options not applied: %+v", o)
	}
	o, operands, err := parseFstab([]string{"repo=s3://bk/db1,point=2026-01-01_000000-FULL", "/m", "-o", "ro,cache_dir=/var/cache/c,cache_dir_size=20GiB,s3_endpoint=http://127.0.0.1:8333"})
	if err != nil || o.repo != "s3://bk/db1" || !slices.Equal(operands, []string{"/m"}) || o.cacheDir != "/var/cache/c" || o.cacheDirSize != "20GiB" || o.s3.Endpoint != "http://127.0.0.1:8333" {
		t.Errorf("S3 source and cache_dir options not applied (%v): %+v, %+v", err, o, o.s3)
	}

	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"/b/full", "/m", "-o", "cow=/u,ro"}, "options ro and cow= together"},
		{[]string{"/b/full", "/m", "-o", "bogus"}, `unknown mount option "bogus"`},
		{[]string{"/b/full", "/m", "-o", "cow="}, `unknown mount option "cow="`},
		{[]string{"repo=/b,pt=x", "/m"}, `"pt=x" is neither repo= nor point=`},
		{[]string{"repo=/b", "/m"}, "give repo=DIR,point=NAME"},
		{[]string{"/b/full", "/m", "/x"}, "give SOURCE MOUNTPOINT"},
		{[]string{"/b/full", "/m", "-o"}, "-o needs an argument"},
	} {
		_, _, err := parseFstab(tt.args)
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%q: %v, want an error saying %q", tt.args, err, tt.msg)
		}
	}
}

// TestFstabDispatch: a first argument that is a path or repo=... is a mount
// source; anything else is still an unknown command.
func TestFstabDispatch(t *testing.T) {
	dir := t.TempDir()
	// (A missing mount point: refused before the mount would go to the
	// background, which would re-execute the test binary.)
	args := []string{dir + "/full", dir + "/nosuch", "-o", "rw,dev,suid"}
	code, out := runCLI(t, args...)
	wantOneLine(t, args, out, "combinefs mount:", dir+"/nosuch")
	if code != 1 {
		t.Errorf("%q: exit %d, want 1", args, code)
	}
	args = []string{"repo=" + dir, dir, "-o", "bogus"}
	code, out = runCLI(t, args...)
	check(t, args, code, out, 2, "combinefs mount: unknown mount option \"bogus\" (combinefs takes "+fstabOptions+")\n"+usageHint("mount"))
}

// TestWritebackCacheOption: --writeback-cache and its fstab spellings; a
// value other than auto, true or false is refused before anything else.
func TestWritebackCacheOption(t *testing.T) {
	for opts, want := range map[string]string{"cow=/u": "auto", "cow=/u,writeback_cache": "true", "cow=/u,writeback_cache=false": "false",
		"cow=/u,writeback_cache=auto": "auto", "cow=/u,no_writeback_cache": "false"} {
		o, _, err := parseFstab([]string{"/b/full", "/m", "-o", opts})
		if err != nil || o.writeback != want {
			t.Errorf("-o %s: writeback %q, %v; want %q", opts, o.writeback, err, want)
		}
	}
	dir := t.TempDir()
	args := []string{"mount", "--cow", filepath.Join(dir, "u"), "--writeback-cache=maybe", "/b/full", dir}
	code, out := runCtx(t, t.Context(), args...)
	check(t, args, code, out, 2, "combinefs mount: --writeback-cache: \"maybe\" is not auto, true or false\n"+usageHint("mount"))
}
