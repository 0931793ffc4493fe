package integration

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/combinefs/combinefs/internal/mountctl"
	"github.com/combinefs/combinefs/internal/s3test"
)

// checkS3Exec runs exec on the bucket's repository url with the recovery
// target name, whose state holds the marks 1 to want: the command sees
// exactly those with pause (replay paused there) and with promote; with
// --keep the kept server, promoted at the target, takes a write; nothing is
// left once each ends.
func checkS3Exec(t *testing.T, e *Env, srv *s3test.Server, url, name string, want int) {
	t.Helper()
	env := s3Credentials(srv)
	// exec runs as root here; an object store's files name no owner.
	owner := fmt.Sprintf("%d:%d", e.UID, e.GID)
	query := []string{"--", "psql", "-XAtc", "SELECT coalesce(max(id), 0), count(*) FROM marks", "postgres"}
	for _, action := range []string{"pause", "promote"} {
		before := execTempDirs(t, e)
		args := append([]string{"--repo", url, "--s3-endpoint", srv.Endpoint, "--owner", owner, "--target-name", name, "--target-action", action}, query...)
		if got, w := strings.TrimSpace(execMust(t, e, env, args...)), fmt.Sprintf("%d|%d", want, want); got != w {
			t.Errorf("exec --repo %s --target-name %s --target-action %s: marks max|count %s, want %s", url, name, action, got, w)
		}
		execNothingLeft(t, e, before)
	}
	before := execTempDirs(t, e)
	stdout, stderr, code := execRun(t, e, env, "--keep", "--repo", url, "--s3-endpoint", srv.Endpoint, "--owner", owner, "--target-name", name, "--",
		"psql", "-XAtqc", fmt.Sprintf("INSERT INTO marks (id) VALUES (%d); SELECT count(*) FROM marks", want+100), "postgres")
	if code != 0 || strings.TrimSpace(stdout) != strconv.Itoa(want+1) {
		t.Errorf("exec --keep --repo %s --target-name %s: exit %d, count %q, want %d\n%s", url, name, code, stdout, want+1, stderr)
	}
	m := regexp.MustCompile(`stop:\s+kill (\d+)`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("exec --keep does not say how to stop it:\n%s", stderr)
	}
	pid, _ := strconv.Atoi(m[1])
	syscall.Kill(pid, syscall.SIGTERM)
	for deadline := time.Now().Add(2 * time.Minute); mountctl.ProcessAlive(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the process keeping the server (%d) still runs 2 minutes after SIGTERM", pid)
		}
	}
	execNothingLeft(t, e, before)
}
