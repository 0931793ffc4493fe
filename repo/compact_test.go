package repo

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/resolver"
)

var testCompactOptions = CompactOptions{SkipWAL: true, Jobs: 2}

// flattened flattens a point of r and returns each output file's digest,
// backup_manifest aside (its modification times are the flatten's own).
func flattened(t *testing.T, r *Repo, ref string) map[string]string {
	t.Helper()
	dirs, _, err := r.ChainDirs(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	copts, err := r.ChainOptions(ctx, dirs)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := resolver.OpenChain(dirs, copts)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := resolver.NewTree(chain)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := flatten.Run(ctx, tree, flatten.Options{Output: out, NoSync: true}); err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "backup_manifest" {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(out, p)
		sums[rel] = fmt.Sprintf("%x", sha256.Sum256(data))
		return nil
	})
	return sums
}

// expectedFlattens is what every point of a fresh test repository
// flattens to; the compacted full point of a point restores the same.
func expectedFlattens(t *testing.T) map[string]map[string]string {
	r := newTestRepo(t, testPoints...)
	want := map[string]map[string]string{}
	for _, c := range testPoints {
		for _, n := range c {
			want[n] = flattened(t, r, n)
			want[strings.Replace(n, "INCREMENTAL", "FULL", 1)] = want[n]
		}
	}
	return want
}

// checkFlattens checks that every point of r restores what it should.
func checkFlattens(t *testing.T, r *Repo, want map[string]map[string]string) []string {
	t.Helper()
	names := pointNames(t, r)
	for _, n := range names {
		if got := flattened(t, r, n); fmt.Sprint(got) != fmt.Sprint(want[n]) {
			t.Errorf("%s flattens to %v, want %v", n, got, want[n])
		}
	}
	return names
}

func TestCompact(t *testing.T) {
	want := expectedFlattens(t)
	r := newTestRepo(t, testPoints...)
	res, err := r.Compact(ctx, "2025-01-01_01", testCompactOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.New.Name != "2025-01-01_010000-FULL" || res.New.Kind != KindFull || fmt.Sprint(res.Replaced) != fmt.Sprint(testPoints[0][:2]) || len(res.InUse) != 0 {
		t.Errorf("result %+v", res)
	}
	names := checkFlattens(t, r, want)
	wantNames := append([]string{"2025-01-01_010000-FULL", testPoints[0][2]}, testPoints[1]...)
	if fmt.Sprint(names) != fmt.Sprint(wantNames) {
		t.Errorf("points %q, want %q", names, wantNames)
	}
	points, _ := r.Points(ctx)
	if points[1].Parent != "2025-01-01_010000-FULL" || points[0].StartLSN != points[1].PrevLSN {
		t.Errorf("the incremental after the compacted point: parent %s", points[1].Parent)
	}
	if l, _ := r.Leftovers(); len(l) != 0 {
		t.Errorf("leftovers %q", l)
	}
	// Bad inputs change nothing.
	for ref, msg := range map[string]string{
		"2025-01-01_010000-FULL": "is a full backup",
		"2025-01-09":             "has no point named",
		"2025-01-0":              "is ambiguous",
	} {
		if _, err := r.Compact(ctx, ref, testCompactOptions, nil); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Compact(%q) = %v, want %q", ref, err, msg)
		}
	}
	if got := pointNames(t, r); fmt.Sprint(got) != fmt.Sprint(wantNames) {
		t.Errorf("after refused compactions: %q", got)
	}
	if l, _ := r.Leftovers(); len(l) != 0 {
		t.Errorf("leftovers %q", l)
	}
}

// TestCompactDamagedWrite: a byte of a written file flipped before it is
// read back (a write the disk got wrong) fails the compaction, naming the
// file, and leaves the repository as it was.
func TestCompactDamagedWrite(t *testing.T) {
	want := expectedFlattens(t)
	r := newTestRepo(t, testPoints...)
	damaged := 0
	testAfterWrite = func(file string) {
		if !strings.HasSuffix(file, "/base/5/16384") {
			return
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Error(err)
			return
		}
		data[len(data)/2] ^= 1
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Error(err)
		}
		damaged++
	}
	defer func() { testAfterWrite = nil }()
	_, err := r.Compact(ctx, testPoints[0][1], testCompactOptions, nil)
	if err == nil || !strings.HasPrefix(err.Error(), `reading back the compacted point: checksum mismatch for file "base/5/16384"`) {
		t.Fatalf("compact of a damaged write: %v", err)
	}
	if damaged != 1 {
		t.Fatalf("damaged %d files", damaged)
	}
	original := append(slices.Clone(testPoints[0]), testPoints[1]...)
	if names := checkFlattens(t, r, want); fmt.Sprint(names) != fmt.Sprint(original) {
		t.Errorf("points %q, want %q", names, original)
	}
	if l, _ := r.Leftovers(); len(l) != 0 {
		t.Errorf("leftovers %q", l)
	}
}

// TestCompactInUse: a reader of the full point keeps it (and compact says
// so); the point compacted goes.
func TestCompactInUse(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	release := holdLock(t, r, testPoints[0][0])
	defer release()
	res, err := r.Compact(ctx, testPoints[0][1], testCompactOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.InUse) != fmt.Sprint(testPoints[0][:1]) {
		t.Errorf("in use %q", res.InUse)
	}
	want := append([]string{testPoints[0][0], "2025-01-01_010000-FULL", testPoints[0][2]}, testPoints[1]...)
	if got := pointNames(t, r); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("points %q, want %q", got, want)
	}
}

// TestCompactKilled: compact killed at each phase leaves points that all
// restore the same bytes; the next holder of the lock rolls it back (before
// the new point is published) or forward (after).
func TestCompactKilled(t *testing.T) {
	want := expectedFlattens(t)
	original := append(slices.Clone(testPoints[0]), testPoints[1]...)
	compacted := append([]string{"2025-01-01_010000-FULL", testPoints[0][2]}, testPoints[1]...)
	for _, tt := range []struct {
		phase   string
		forward bool
	}{
		{"compact-flattened", false},
		{"compact-verified", false},
		{"compact-journaled", false},
		{"compact-published", true},
		{"compact-retired", true},
		{"compact-unjournaled", true},
	} {
		t.Run(tt.phase, func(t *testing.T) {
			r := newTestRepo(t, testPoints...)
			out, err := runHelper(t, r, "compact "+testPoints[0][1], CrashEnv+"="+tt.phase)
			if err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("compact killed at %s: %v, %s", tt.phase, err, out)
			}
			if l, _ := r.Leftovers(); len(l) == 0 {
				t.Error("a killed compaction left nothing to finish")
			}
			checkFlattens(t, r, want)
			recoverLocked(t, r)
			names := checkFlattens(t, r, want)
			wantNames := original
			if tt.forward {
				wantNames = compacted
			}
			if fmt.Sprint(names) != fmt.Sprint(wantNames) {
				t.Errorf("after recovery: %q, want %q", names, wantNames)
			}
			if l, _ := r.Leftovers(); len(l) != 0 {
				t.Errorf("leftovers after recovery %q", l)
			}
		})
	}
}

// TestCompactHeldPointThenExpire: the point compacted is held by a reader,
// so compact keeps it (and the full point before it); the incremental after
// it already chains onto the new full point, and a later expire removes the
// kept ones without touching it.
func TestCompactHeldPointThenExpire(t *testing.T) {
	want := expectedFlattens(t)
	r := newTestRepo(t, testPoints...)
	release := holdLock(t, r, testPoints[0][1])
	res, err := r.Compact(ctx, testPoints[0][1], testCompactOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.InUse) != fmt.Sprint(testPoints[0][1:2]) {
		t.Errorf("in use %q", res.InUse)
	}
	points, _ := r.Points(ctx)
	if p := points[3]; p.Name != testPoints[0][2] || fmt.Sprint(p.Chain) != fmt.Sprint([]string{"2025-01-01_010000-FULL", testPoints[0][2]}) {
		t.Errorf("%s: chain %q, want it on the new full point", p.Name, p.Chain)
	}
	checkFlattens(t, r, want)
	release()
	ex, err := r.Expire(ctx, ExpireOptions{KeepFull: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pointList(ex.Removed)) != fmt.Sprint(testPoints[0][:2]) {
		t.Errorf("expire removed %q", pointList(ex.Removed))
	}
	names := checkFlattens(t, r, want)
	if wantNames := append([]string{"2025-01-01_010000-FULL", testPoints[0][2]}, testPoints[1]...); fmt.Sprint(names) != fmt.Sprint(wantNames) {
		t.Errorf("points %q, want %q", names, wantNames)
	}
}

// recoverLocked runs Recover holding the repository's lock, as the next
// command that takes it does (a killed holder's lock object is void).
func recoverLocked(t *testing.T, r *Repo) {
	t.Helper()
	unlock, err := r.Lock(ctx, "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Recover(ctx)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
}
