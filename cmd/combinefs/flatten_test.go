package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestFlattenGood(t *testing.T) {
	tc := newTestChain(t)
	for _, tt := range []struct {
		name  string
		flags []string
		pre   bool // the output directory exists, empty
	}{
		{"new output", nil, false},
		{"empty output", nil, true},
		{"copy-file-range", []string{"--copy-file-range", "-N"}, false},
		{"no manifest", []string{"--no-manifest", "-j", "1"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			if tt.pre {
				if err := os.Mkdir(out, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			args := append(append([]string{"flatten", "-o", out}, tt.flags...), tc.full, tc.inc1, tc.inc2)
			code, stderr := runCLI(t, args...)
			re := regexp.MustCompile(`^combinefs flatten: wrote [0-9.]+ [KMG]?i?B in \d+ files \(1 reconstructed, \d+ copied whole from an older backup\) to ` +
				regexp.QuoteMeta(out) + ` in [0-9.]+s\n$`)
			if code != 0 || !re.MatchString(stderr) {
				t.Fatalf("combinefs %q: exit %d, stderr:\n%s\nwant exit 0 and the summary line", args, code, stderr)
			}
			got, err := os.ReadFile(filepath.Join(out, tc.rel))
			if err != nil || !bytes.Equal(got, tc.wantRelation()) {
				t.Errorf("%s: %d bytes, %v; want the relation rebuilt from the three backups", tc.rel, len(got), err)
			}
			if _, err := os.Stat(filepath.Join(out, "backup_manifest")); (err == nil) == contains(tt.flags, "--no-manifest") {
				t.Errorf("backup_manifest: %v (flags %q)", err, tt.flags)
			}
			if contains(tt.flags, "--no-manifest") {
				return
			}
			// The output is a full backup that verifies.
			args = []string{"verify", "-n", out}
			code, stderr = runCLI(t, args...)
			if code != 0 || !verifiedLine(out).MatchString(strings.TrimSuffix(stderr, "\n")) {
				t.Errorf("combinefs %q: exit %d, stderr:\n%s", args, code, stderr)
			}
		})
	}

	// A dry run writes nothing and says nothing.
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"flatten", "-n", "-o", out, tc.full, tc.inc1, tc.inc2}
	code, stderr := runCLI(t, args...)
	check(t, args, code, stderr, 0, "")
	mustNotExist(t, out)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestFlattenOutputNotEmpty: an output directory with something in it is
// refused in one line naming it, and left as it was.
func TestFlattenOutputNotEmpty(t *testing.T) {
	tc := newTestChain(t)
	out := t.TempDir()
	if err := os.WriteFile(filepath.Join(out, "keep"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(out, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, out)
	args := []string{"flatten", "-o", out, tc.full, tc.inc1, tc.inc2}
	code, stderr := runCLI(t, args...)
	check(t, args, code, stderr, 1, fmt.Sprintf("combinefs flatten: directory %q exists but is not empty\n", out))
	sameSnapshot(t, out, before)
}

// TestFlattenBadChain: a chain with a backup missing, given twice or out of
// order is refused before anything is written: the output directory is not
// created.
func TestFlattenBadChain(t *testing.T) {
	tc := newTestChain(t)
	missing := filepath.Join(t.TempDir(), "nope")
	notBackup := t.TempDir() // a directory, but no backup
	outOfOrder := fmt.Sprintf("backup %q starts at LSN 0/2000028, but %q is incremental from LSN 0/4000028: backups are out of order or one is missing between them", tc.full, tc.inc2)
	swapped := fmt.Sprintf("backup %q starts at LSN 0/6000028, but %q is incremental from LSN 0/2000028: backups are out of order or one is missing between them", tc.inc2, tc.inc1)
	for _, tt := range []struct {
		name string
		dirs []string
		msg  string
	}{
		{"missing directory", []string{tc.full, missing, tc.inc2}, fmt.Sprintf("backup directory %q: No such file or directory", missing)},
		{"gap", []string{tc.full, tc.inc2}, outOfOrder},
		{"swapped", []string{tc.full, tc.inc2, tc.inc1}, swapped},
		{"reversed", []string{tc.inc2, tc.inc1, tc.full}, fmt.Sprintf("backup %q is a full backup, but only the first backup of a chain may be full (is the order right?)", tc.full)},
		{"no full", []string{tc.inc1, tc.inc2}, fmt.Sprintf("backup %q is incremental (from LSN 0/2000028), but a chain must start with a full backup", tc.inc1)},
		{"full twice", []string{tc.full, tc.full, tc.inc1}, fmt.Sprintf("backup %q is a full backup, but only the first backup of a chain may be full (is the order right?)", tc.full)},
		{"incremental twice", []string{tc.full, tc.inc1, tc.inc1}, ""},
		{"not a backup", []string{tc.full, notBackup}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			args := append([]string{"flatten", "-o", out}, tt.dirs...)
			code, stderr := runCLI(t, args...)
			if tt.msg != "" {
				check(t, args, code, stderr, 1, "combinefs flatten: "+tt.msg+"\n")
			} else if code != 1 {
				t.Errorf("combinefs %q: exit %d, want 1; stderr:\n%s", args, code, stderr)
			} else {
				wantOneLine(t, args, stderr, "combinefs flatten: ")
			}
			mustNotExist(t, out)
		})
	}
}

// TestFlattenCorruptIncremental: a damaged INCREMENTAL file fails the
// flatten with one line naming it, and no output directory is left (an
// output directory that existed, empty, is left empty).
func TestFlattenCorruptIncremental(t *testing.T) {
	for _, tt := range []struct {
		name   string
		damage func([]byte) []byte
		msg    string // after the file's quoted path
	}{
		{"block data truncated", func(b []byte) []byte { return b[:len(b)-100] }, " is too short: expected 16384, found 16284"},
		{"header truncated", func(b []byte) []byte { return b[:6] }, ""},
		{"bad magic", func(b []byte) []byte { b[0] ^= 0xff; return b }, ""},
		{"empty", func(b []byte) []byte { return nil }, ""},
	} {
		for _, pre := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/existing=%v", tt.name, pre), func(t *testing.T) {
				tc := newTestChain(t)
				// Damage the middle backup: the newest one alone would not
				// show that older headers are checked too.
				p := tc.incPath(tc.inc1)
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, tt.damage(data), 0o600); err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), "out")
				if pre {
					if err := os.Mkdir(out, 0o700); err != nil {
						t.Fatal(err)
					}
				}
				args := []string{"flatten", "-o", out, tc.full, tc.inc1, tc.inc2}
				code, stderr := runCLI(t, args...)
				if tt.msg != "" {
					check(t, args, code, stderr, 1, fmt.Sprintf("combinefs flatten: file %q%s\n", p, tt.msg))
				} else {
					if code != 1 {
						t.Errorf("combinefs %q: exit %d, want 1", args, code)
					}
					wantOneLine(t, args, stderr, "combinefs flatten: ", p)
				}
				if !pre {
					mustNotExist(t, out)
				} else if ents, err := os.ReadDir(out); err != nil || len(ents) != 0 {
					t.Errorf("existing output directory after the failure: %v, %v; want it kept, empty", ents, err)
				}
			})
		}
	}
}

// TestFlattenInterrupted: a cancelled flatten exits 130, says so in one
// line, and leaves no output.
func TestFlattenInterrupted(t *testing.T) {
	tc := newTestChain(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"flatten", "-o", out, tc.full, tc.inc1, tc.inc2}
	code, stderr := runCtx(t, ctx, args...)
	check(t, args, code, stderr, 130, "combinefs flatten: interrupted\n")
	mustNotExist(t, out)
}
