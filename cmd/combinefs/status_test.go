package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStatusDetachRefused: the refusals of status, detach and --hydrate
// that need no mount.
func TestStatusDetachRefused(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status"}, 2, "combinefs status: give one mount point\n" + usageHint("status")},
		{[]string{"status", plain}, 1, "combinefs status: " + plain + " is not mounted\n"},
		{[]string{"detach"}, 2, "combinefs detach: give one upper directory\n" + usageHint("detach")},
		{[]string{"detach", plain}, 1, "combinefs detach: " + plain + " is not a combinefs upper directory (no combinefs-upper.json)\n"},
		{[]string{"mount", "--hydrate", "/b/full", plain}, 2, "combinefs mount: --hydrate needs --cow UPPERDIR\n" + usageHint("mount")},
		{[]string{"mount", "--cow", dir, "--hydrate-rate", "fast", "/b/full", plain}, 2, "combinefs mount: --hydrate-rate: bad size \"fast\"\n" + usageHint("mount")},
	} {
		code, out := runCtx(t, t.Context(), tt.args...)
		check(t, tt.args, code, out, tt.code, tt.want)
	}
	if ents, _ := os.ReadDir(plain); len(ents) != 0 {
		t.Errorf("a refused detach left %d entries in %s", len(ents), plain)
	}
}
