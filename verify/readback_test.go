package verify

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
)

// readBackFixture is a backup with a large file (read direct) and a small
// one, and its parsed manifest.
func readBackFixture(t *testing.T) (string, *format.Manifest) {
	dir, _ := largeFileBackup(t, 2<<20+77)
	data, err := os.ReadFile(filepath.Join(dir, "backup_manifest"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := format.ParseManifest(data, "backup_manifest")
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

// flipByte changes one byte of the file rel of dir, keeping its size.
func flipByte(t *testing.T, dir, rel string, at int) {
	p := filepath.Join(dir, rel)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[at] ^= 0x40
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReadBack: Check reads each file from disk and finds a damaged one;
// Backup with the files read back still checks the manifest against the
// disk (a missing file) and against what was read (an entry whose checksum
// is not what the file read back as).
func TestReadBack(t *testing.T) {
	dir, m := readBackFixture(t)
	entry := func(rel string) format.ManifestFile {
		f, ok := m.Lookup(rel)
		if !ok {
			t.Fatalf("no manifest entry for %s", rel)
		}
		return *f
	}
	rb := NewReadBack()
	for _, f := range m.Files {
		if problem, err := rb.Check(filepath.Join(dir, f.Path), f); problem != "" || err != nil {
			t.Fatalf("Check(%s) of an intact file: %q, %v", f.Path, problem, err)
		}
	}
	res, err := Backup(context.Background(), dir, Options{SkipWAL: true, ReadBack: rb})
	if err != nil || len(res.Problems) != 0 || res.Files != len(m.Files) {
		t.Fatalf("intact backup read back: %+v, %v", res, err)
	}

	// A byte flipped in each file is found by the read-back itself.
	for _, rel := range []string{"base/5/16384", "base/5/16385"} {
		flipByte(t, dir, rel, 3)
		problem, err := NewReadBack().Check(filepath.Join(dir, rel), entry(rel))
		if err != nil || !strings.Contains(problem, `checksum mismatch for file "`+rel+`"`) {
			t.Errorf("Check of damaged %s: %q, %v", rel, problem, err)
		}
		flipByte(t, dir, rel, 3)
	}
	if problem, _ := NewReadBack().Check(filepath.Join(dir, "base/5/nothing"), entry("base/5/16385")); !strings.Contains(problem, "could not open") {
		t.Errorf("Check of a missing file: %q", problem)
	}

	// The manifest disagrees with what a file read back as: the file read
	// back here is damaged, and matched an entry of its damaged contents.
	flipByte(t, dir, "base/5/16385", 0)
	data, err := os.ReadFile(filepath.Join(dir, "base/5/16385"))
	if err != nil {
		t.Fatal(err)
	}
	damaged := entry("base/5/16385")
	h := damaged.Algorithm.New()
	h.Write(data)
	damaged.Checksum = h.Sum(nil)
	if problem, err := rb.Check(filepath.Join(dir, "base/5/16385"), damaged); problem != "" || err != nil {
		t.Fatalf("Check against the damaged contents' entry: %q, %v", problem, err)
	}
	if err := os.Remove(filepath.Join(dir, "base/5/PG_VERSION")); err != nil {
		t.Fatal(err)
	}
	res, err = Backup(context.Background(), dir, Options{SkipWAL: true, ReadBack: rb})
	want := []string{`"base/5/PG_VERSION" is present in the manifest but not on disk`, `checksum mismatch for file "base/5/16385"`}
	if err != nil || strings.Join(res.Problems, "\n") != strings.Join(want, "\n") {
		t.Errorf("damaged backup read back: %q, %v; want %q", res.Problems, err, want)
	}
}
