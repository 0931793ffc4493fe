package capture

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/repo"
)

// TestRepoCapture takes backups into a repository from the fake server.
// Its backups are not real ones (no control file), so the second capture
// must refuse to chain to them, and --full must still work.
func TestRepoCapture(t *testing.T) {
	_, o := newBackupServer(t, fullBackupScript(t), nil)
	r, err := repo.Open(filepath.Join(t.TempDir(), "repo"), true)
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
	name, res, err := RepoCapture(context.Background(), r, o, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\d_\d{6}-FULL$`).MatchString(name) || res.Dir != filepath.Join(r.Dir, name) {
		t.Errorf("name %q, dir %q", name, res.Dir)
	}
	if _, err := os.Stat(leftover); err == nil {
		t.Error("the leftover of an interrupted capture was not removed")
	}
	points, err := r.Points(context.Background())
	if err != nil || len(points) != 1 || points[0].Name != name || points[0].Kind != repo.KindFull {
		t.Fatalf("points %v, %v", points, err)
	}
	if points[0].Problem == "" {
		t.Error("a backup without a control file counts as intact")
	}
	if points[0].StartLSN != 0x3000028 || points[0].Size == 0 {
		t.Errorf("point %+v", points[0])
	}

	if _, _, err := RepoCapture(context.Background(), r, o, false, nil); err == nil || !strings.Contains(err.Error(), "--full") {
		t.Errorf("incremental onto a damaged backup: %v", err)
	}
	name2, res2, err := RepoCapture(context.Background(), r, o, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if name2 == name || res2.Incremental || !strings.HasSuffix(name2, "-FULL") {
		t.Errorf("second full backup %q", name2)
	}
}
