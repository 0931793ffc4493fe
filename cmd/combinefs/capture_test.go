package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// closedPort is a TCP port on 127.0.0.1 that nothing listens on (it was
// free a moment ago).
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(port)
}

// TestCaptureUsageErrors: command lines refused before connecting (the
// port given is closed, so a connection attempt would fail differently).
func TestCaptureUsageErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	conn := []string{"-h", "127.0.0.1", "-p", closedPort(t)}
	for _, tt := range []struct {
		flags []string
		msg   string
	}{
		{nil, "no target directory specified (-D or --repo)"},
		{[]string{"-D", out, "--repo", dir}, "-D and --repo cannot be used together"},
		{[]string{"--repo", dir, "-i", filepath.Join(dir, "m")}, "--incremental cannot be used with --repo, which chains to the newest backup itself"},
		{[]string{"--repo", dir, "-T", "/a=/b"}, "--tablespace-mapping cannot be used with --repo, which keeps tablespaces inside each backup"},
		{[]string{"-D", out, "--full"}, "--full only makes sense with --repo (without -i, -D takes a full backup)"},
		{[]string{"-D", out, "-c", "slow"}, `invalid checkpoint argument "slow", must be "fast" or "spread"`},
		{[]string{"-D", out, "-X", "carrier-pigeon"}, `invalid WAL method "carrier-pigeon", must be "fetch" or "stream"`},
		{[]string{"-D", out, "-r", "abc"}, `transfer rate "abc" is not a valid value`},
		{[]string{"-D", out, "-r", "0"}, "transfer rate must be greater than zero"},
		{[]string{"-D", out, "-r", "-5k"}, "transfer rate must be greater than zero"},
		{[]string{"-D", out, "-r", "99999999999"}, `transfer rate "99999999999" is out of range`},
		{[]string{"-D", out, "-r", "1"}, `transfer rate "1" is out of range`},
		{[]string{"-D", out, "-T", "foo"}, `invalid tablespace mapping format "foo", must be "OLDDIR=NEWDIR"`},
		{[]string{"-D", out, "-T", "=/b"}, `invalid tablespace mapping format "=/b", must be "OLDDIR=NEWDIR"`},
		{[]string{"-D", out, "-T", "/a="}, `invalid tablespace mapping format "/a=", must be "OLDDIR=NEWDIR"`},
		{[]string{"-D", out, "-T", "/a=/b=/c"}, `multiple "=" signs in tablespace mapping`},
		{[]string{"-D", out, "-T", "a=/b"}, "old directory is not an absolute path in tablespace mapping: a"},
		{[]string{"-D", out, "-T", "/a=b"}, "new directory is not an absolute path in tablespace mapping: b"},
		{[]string{"-D", out, "--manifest-checksums", "md5"}, `unrecognized checksum algorithm: "md5"`},
		{[]string{"-D", out, "-s", "0"}, "--status-interval must be at least 1 second"},
		{[]string{"-D", out, "extra"}, `too many command-line arguments (first is "extra")`},
	} {
		args := append(append([]string{"capture"}, tt.flags...), conn...)
		code, stderr := runCLI(t, args...)
		check(t, args, code, stderr, 2, "combinefs capture: "+tt.msg+"\n"+usageHint("capture"))
		mustNotExist(t, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused captures wrote into %s: %v", dir, ents)
	}
}

// TestCaptureRefusedBeforeConnecting: failures that need no server: a
// non-empty -D (left untouched) and an -i manifest that does not exist.
func TestCaptureRefusedBeforeConnecting(t *testing.T) {
	conn := []string{"-h", "127.0.0.1", "-p", closedPort(t)}
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "PG_VERSION"), []byte("17\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, full)
	args := append([]string{"capture", "-D", full}, conn...)
	code, stderr := runCLI(t, args...)
	check(t, args, code, stderr, 1, fmt.Sprintf("combinefs capture: directory %s exists but is not empty\n", full))
	sameSnapshot(t, full, before)

	out := filepath.Join(t.TempDir(), "out")
	manifest := filepath.Join(t.TempDir(), "backup_manifest")
	args = append([]string{"capture", "-D", out, "-i", manifest}, conn...)
	code, stderr = runCLI(t, args...)
	check(t, args, code, stderr, 1, fmt.Sprintf("combinefs capture: prior manifest: open %s: no such file or directory\n", manifest))
	mustNotExist(t, out)
}

// TestCaptureConnectionRefused: nothing listens on the port: the capture
// fails, names the address, and leaves no backup directory. (That the error
// is one line is TestCaptureConnectErrorOneLine.)
func TestCaptureConnectionRefused(t *testing.T) {
	port := closedPort(t)
	dir := t.TempDir()
	for _, tt := range []struct {
		name  string
		flags []string
	}{
		{"-D", []string{"-D", filepath.Join(dir, "new")}},
		{"-D empty", []string{"-D", dir}},
		{"-d", []string{"-D", filepath.Join(dir, "new"), "-d", "host=127.0.0.1 port=" + port + " user=nobody"}},
	} {
		args := append([]string{"capture"}, tt.flags...)
		if tt.name != "-d" {
			args = append(args, "-h", "127.0.0.1", "-p", port, "-U", "nobody")
		}
		code, stderr := runCLI(t, args...)
		if code != 1 || !strings.HasPrefix(stderr, "combinefs capture: ") || !strings.Contains(stderr, "127.0.0.1:"+port) {
			t.Errorf("%s: combinefs %q: exit %d, stderr:\n%s\nwant exit 1 and an error naming 127.0.0.1:%s", tt.name, args, code, stderr, port)
		}
		mustNotExist(t, filepath.Join(dir, "new"))
		// An empty -D that existed is kept, still empty.
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
			t.Errorf("%s: %s after the failure: %v, %v", tt.name, dir, ents, err)
		}
	}
}

// TestCaptureConnectErrorOneLine: the driver's error for a refused
// connection has a line per address tried (the same one twice, with and
// without TLS); the user gets one line.
func TestCaptureConnectErrorOneLine(t *testing.T) {
	port := closedPort(t)
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"capture", "-D", out, "-h", "127.0.0.1", "-p", port, "-U", "nobody"}
	code, stderr := runCLI(t, args...)
	if code != 1 {
		t.Errorf("combinefs %q: exit %d, want 1", args, code)
	}
	wantOneLine(t, args, stderr, "combinefs capture: ", "127.0.0.1:"+port, "connection refused")
}

// TestCaptureRepoNotLeftBehind: capture --repo NEWDIR makes the repository
// (and its lock file) before connecting; when the capture fails, nothing of
// it is left.
func TestCaptureRepoNotLeftBehind(t *testing.T) {
	port := closedPort(t)
	repo := filepath.Join(t.TempDir(), "repo")
	args := []string{"capture", "--repo", repo, "-h", "127.0.0.1", "-p", port, "-U", "nobody"}
	code, stderr := runCLI(t, args...)
	if code != 1 || !strings.Contains(stderr, "127.0.0.1:"+port) {
		t.Errorf("combinefs %q: exit %d, stderr:\n%s", args, code, stderr)
	}
	if ents, err := os.ReadDir(repo); err == nil {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("the failed capture left the new repository %s behind, holding %q", repo, names)
	}
}

// TestTablespaceMappingRepeatedEquals: pg_basebackup refuses a second "="
// only once the new directory has begun, so "/a==/b" maps /a to /b, and
// "/a=/b=" is refused.
func TestTablespaceMappingRepeatedEquals(t *testing.T) {
	for _, arg := range []string{"/a==/b", "/a===/b"} {
		old, nu, err := parseTablespaceMapping(arg)
		if err != nil || old != "/a" || nu != "/b" {
			t.Errorf("parseTablespaceMapping(%q) = %q, %q, %v; want /a, /b", arg, old, nu, err)
		}
	}
	if _, _, err := parseTablespaceMapping("/a=/b=/c"); err == nil || !strings.Contains(err.Error(), "multiple") {
		t.Errorf(`parseTablespaceMapping("/a=/b=/c"): %v, want the multiple "=" error`, err)
	}
}

// TestTablespaceMappingLongName: pg_basebackup refuses a directory name of
// MAXPGPATH (1024) bytes or more.
func TestTablespaceMappingLongName(t *testing.T) {
	long := "/" + strings.Repeat("d", 1023)
	if _, _, err := parseTablespaceMapping(long + "=/b"); err == nil || err.Error() != "directory name too long" {
		t.Errorf("parseTablespaceMapping of a 1024-byte old directory: %v, want directory name too long", err)
	}
	if _, _, err := parseTablespaceMapping("/a=" + long[:1023]); err != nil {
		t.Errorf("parseTablespaceMapping of a 1023-byte new directory: %v", err)
	}
}
