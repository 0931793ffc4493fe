package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWALGet: wal-get copies an archived file to %p and answers a file the
// archive lacks with exit 1 and one line, leaving nothing at %p.
func TestWALGet(t *testing.T) {
	repo := t.TempDir()
	tl := filepath.Join(repo, "wal", "00000001")
	if err := os.MkdirAll(tl, 0o700); err != nil {
		t.Fatal(err)
	}
	seg := "000000010000000000000003"
	os.WriteFile(filepath.Join(tl, seg), []byte("segment"), 0o600)
	os.WriteFile(filepath.Join(tl, "000000010000000000000004.partial"), []byte("partial"), 0o600)
	out := t.TempDir()
	dest := filepath.Join(out, "RECOVERYXLOG")

	code, got := runCLI(t, "wal-get", "--repo", repo, seg, dest)
	check(t, []string{seg}, code, got, 0, "")
	if b, _ := os.ReadFile(dest); string(b) != "segment" {
		t.Errorf("wal-get wrote %q", b)
	}
	os.Remove(dest)
	for _, name := range []string{"000000010000000000000004", "000000010000000000000005", "00000002.history"} {
		code, got := runCLI(t, "wal-get", "--repo", repo, name, dest)
		check(t, []string{name}, code, got, 1, "combinefs wal-get: "+name+": not in the archive of "+repo+"\n")
		if _, err := os.Stat(dest); err == nil {
			t.Errorf("wal-get %s left %s", name, dest)
		}
	}
	code, got = runCLI(t, "wal-get", "--repo", repo, "000000010000000000000004.partial", dest)
	check(t, nil, code, got, 0, "")
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("wal-get left %d files in %s, want 1", len(ents), out)
	}
}

// TestMountTargetNeedsNewUpper: recovery settings go into a fresh upper
// directory only; one holding changes is refused before anything else.
func TestMountTargetNeedsNewUpper(t *testing.T) {
	dir := t.TempDir()
	upper := filepath.Join(dir, "upper")
	os.MkdirAll(filepath.Join(upper, "tree"), 0o700)
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o700)
	code, got := runCLI(t, "mount", "--repo", dir, "--cow", upper, "--target-lsn", "0/3000028", mp)
	check(t, nil, code, got, 1, "combinefs mount: upper directory "+upper+" is not empty: recovering to a target needs a new one (it holds a server's changes already)\n")
}
