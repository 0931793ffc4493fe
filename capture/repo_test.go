package capture

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestRepoLock(t *testing.T) {
	r, err := OpenRepo(filepath.Join(t.TempDir(), "repo"), true)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lock(); !errors.Is(err, ErrRepoLocked) {
		t.Errorf("second lock: %v, want ErrRepoLocked", err)
	}
	unlock()
	unlock2, err := r.Lock()
	if err != nil {
		t.Errorf("lock after unlock: %v", err)
	} else {
		unlock2()
	}
	if _, err := OpenRepo(filepath.Join(t.TempDir(), "missing"), false); err == nil {
		t.Error("opened a missing repository")
	}
}

// TestRepoCapture takes backups into a repository from the fake server.
// Its backups are not real ones (no control file), so the second capture
// must refuse to chain to them, and --full must still work.
func TestRepoCapture(t *testing.T) {
	_, o := newBackupServer(t, fullBackupScript(t), nil)
	r, err := OpenRepo(filepath.Join(t.TempDir(), "repo"), true)
	if err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(r.Dir, ".2025-01-01_000000-FULL.partial-123")
	if err := os.MkdirAll(filepath.Join(leftover, "base"), 0o700); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.Leftovers(); len(l) != 1 {
		t.Errorf("leftovers %q", l)
	}
	name, res, err := RepoCapture(context.Background(), r, o, false)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\d_\d{6}-FULL$`).MatchString(name) || res.Dir != filepath.Join(r.Dir, name) {
		t.Errorf("name %q, dir %q", name, res.Dir)
	}
	if _, err := os.Stat(leftover); err == nil {
		t.Error("the leftover of an interrupted capture was not removed")
	}
	points, err := r.Points()
	if err != nil || len(points) != 1 || points[0].Name != name || points[0].Kind != KindFull {
		t.Fatalf("points %v, %v", points, err)
	}
	if points[0].Problem == "" {
		t.Error("a backup without a control file counts as intact")
	}
	if points[0].StartLSN != 0x3000028 || points[0].Size == 0 {
		t.Errorf("point %+v", points[0])
	}

	if _, _, err := RepoCapture(context.Background(), r, o, false); err == nil || !strings.Contains(err.Error(), "--full") {
		t.Errorf("incremental onto a damaged backup: %v", err)
	}
	name2, res2, err := RepoCapture(context.Background(), r, o, true)
	if err != nil {
		t.Fatal(err)
	}
	if name2 == name || res2.Incremental || !strings.HasSuffix(name2, "-FULL") {
		t.Errorf("second full backup %q", name2)
	}
}
