package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/combinefs/combinefs/repo"
)

// TestRepoCommandsRefused: bad input to expire and compact gives one line,
// the right exit status, and changes nothing.
func TestRepoCommandsRefused(t *testing.T) {
	repo := newTestRepo(t, false)
	notRepo := t.TempDir()
	if err := os.WriteFile(filepath.Join(notRepo, "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, beforeNot := snapshot(t, repo), snapshot(t, notRepo)
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"compact", "--repo", repo, "--point", repoFull}, 1, "combinefs compact: point " + repoFull + " is a full backup: there is nothing to compact\n"},
		{[]string{"compact", "--repo", repo, "--point", "2024"}, 1, "combinefs compact: repository " + repo + " has no point named \"2024\" (its points: " + repoFull + ", " + repoInc1 + ", " + repoInc2 + ")\n"},
		{[]string{"compact", "--repo", repo, "--point", "2025-01-01_0"}, 1, "combinefs compact: point \"2025-01-01_0\" of repository " + repo + " is ambiguous: it begins " + repoFull + ", " + repoInc1 + ", " + repoInc2 + "\n"},
		{[]string{"compact", "--repo", notRepo, "--point", repoInc1}, 1, "combinefs compact: " + notRepo + " is not a combinefs repository (no backups in it)\n"},
		{[]string{"compact", "--repo", repo}, 2, "combinefs compact: give the repository and the point (--repo DIR --point NAME)\n"},
		{[]string{"expire", "--repo", notRepo, "--keep-full", "1"}, 1, "combinefs expire: " + notRepo + " is not a combinefs repository (no backups in it)\n"},
		{[]string{"expire", "--repo", repo}, 2, "combinefs expire: --keep-full N is required, at least 1\n"},
		{[]string{"expire", "--repo", repo, "--keep-full", "1", "--keep-within", "soon"}, 2, "combinefs expire: --keep-within: invalid duration \"soon\"\n"},
		{[]string{"expire", "--keep-full", "1"}, 2, "combinefs expire: no repository specified (--repo DIR)\n"},
		{[]string{"flatten", "-o", filepath.Join(notRepo, "out"), "--repo", repo, "--point", "bogus"}, 1, "combinefs flatten: repository " + repo + " has no point named \"bogus\""},
		{[]string{"flatten", "-o", filepath.Join(notRepo, "out"), "--repo", repo}, 2, "combinefs flatten: --repo and --point go together\n"},
	} {
		code, out := runCLI(t, tt.args...)
		if code != tt.code || !strings.HasPrefix(out, tt.want) {
			t.Errorf("combinefs %q: exit %d, stderr:\n%s\nwant exit %d, stderr:\n%s", tt.args, code, out, tt.code, tt.want)
		}
	}
	if !maps.Equal(snapshot(t, repo), before) || !maps.Equal(snapshot(t, notRepo), beforeNot) {
		t.Error("a refused command changed something")
	}
}

// TestExpireCommand: expire (and its dry run) of a repository of two
// chains says what it removes and the space freed.
func TestExpireCommand(t *testing.T) {
	repo := newTestRepo(t, false)
	second := newTestChain(t)
	for dir, name := range map[string]string{second.full: "2025-01-02_000000-FULL", second.inc1: "2025-01-02_010000-INCREMENTAL"} {
		if err := os.Rename(dir, filepath.Join(repo, name)); err != nil {
			t.Fatal(err)
		}
	}
	code, out := runCLI(t, "expire", "--repo", repo, "--keep-full", "1", "--dry-run")
	if code != 0 || !strings.Contains(out, "would remove "+repoInc2+" (") || !strings.HasSuffix(out, "(dry run: nothing removed)\n") {
		t.Errorf("expire --dry-run: exit %d\n%s", code, out)
	}
	code, out = runCLI(t, "expire", "--repo", repo, "--keep-full", "1")
	if code != 0 || strings.Count(out, "combinefs expire: removed ") != 3 || !strings.Contains(out, "combinefs expire: freed ") {
		t.Errorf("expire: exit %d\n%s", code, out)
	}
	code, out = runCLI(t, "expire", "--repo", repo, "--keep-full", "1")
	if code != 0 || out != "combinefs expire: nothing to remove\n" {
		t.Errorf("expire again: exit %d\n%s", code, out)
	}
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestExpireWaitsAndSaysSo: expire waits for the repository's lock held by
// someone else (a capture, here this test) and says whom it waits for.
func TestExpireWaitsAndSaysSo(t *testing.T) {
	dir := newTestRepo(t, false)
	r, err := repo.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := r.Lock(context.Background(), "capture", nil)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	done := make(chan int)
	go func() {
		done <- run(context.Background(), "combinefs", []string{"expire", "--repo", dir, "--keep-full", "1"}, &out)
	}()
	for !strings.Contains(out.String(), "waiting for") {
		select {
		case code := <-done:
			t.Fatalf("expire did not wait: exit %d\n%s", code, out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	unlock()
	if code := <-done; code != 0 {
		t.Errorf("expire after the lock was released: exit %d\n%s", code, out.String())
	}
	want := fmt.Sprintf("combinefs expire: waiting for the lock of repository %s (held by capture, pid %d)\ncombinefs expire: nothing to remove\n", dir, os.Getpid())
	if out.String() != want {
		t.Errorf("expire said:\n%s\nwant:\n%s", out.String(), want)
	}
}
