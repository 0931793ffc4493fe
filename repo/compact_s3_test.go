package repo

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/internal/s3test"
)

// newS3TestRepo copies the synthetic points of newTestRepo into a new
// bucket of srv (each published by its marker) and opens that repository.
func newS3TestRepo(t *testing.T, srv *s3test.Server, names ...[]string) *Repo {
	t.Helper()
	local := newTestRepo(t, names...)
	bucket := srv.NewBucket(t)
	st := newTestS3(t, srv, bucket, "db/")
	for _, chain := range names {
		for _, n := range chain {
			if err := CopyPoint(ctx, st, filepath.Join(local.Dir, n), n, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	r, err := OpenWith(ctx, "s3://"+bucket+"/db", false, S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestCompactS3: compact on a bucket replaces the chain with a full point
// that flattens as the point did, leaves no staging directory, no lock
// object and nothing of the old chain; a full point is refused.
func TestCompactS3(t *testing.T) {
	srv := s3test.Start(t)
	want := expectedFlattens(t)
	r := newS3TestRepo(t, srv, testPoints...)
	tmp := t.TempDir()
	o := testCompactOptions
	o.TmpDir = tmp
	res, err := r.Compact(ctx, "2025-01-01_01", o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.New.Name != "2025-01-01_010000-FULL" || fmt.Sprint(res.Replaced) != fmt.Sprint(testPoints[0][:2]) {
		t.Errorf("result %+v", res)
	}
	names := checkFlattens(t, r, want)
	wantNames := append([]string{"2025-01-01_010000-FULL", testPoints[0][2]}, testPoints[1]...)
	if fmt.Sprint(names) != fmt.Sprint(wantNames) {
		t.Errorf("points %q, want %q", names, wantNames)
	}
	for _, n := range testPoints[0][:2] {
		if objs, err := r.Store.List(ctx, n+"/"); err != nil || len(objs) != 0 {
			t.Errorf("replaced point %s: %d objects left (%v)", n, len(objs), err)
		}
	}
	for _, n := range []string{repoLockName, journalName} {
		if objs, err := r.Store.List(ctx, n); err != nil || len(objs) != 0 {
			t.Errorf("left %v (%v)", objs, err)
		}
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("staging left in %s: %v", tmp, ents)
	}
	if _, err := r.Compact(ctx, "2025-01-01_010000-FULL", o, nil); err == nil || !strings.Contains(err.Error(), "is a full backup") {
		t.Errorf("compact of a full point: %v", err)
	}
}

// TestCompactS3Killed: compact on a bucket killed at each phase leaves
// points that all flatten as before and never a half point; the next
// holder of the lock rolls it back (no marker yet) or forward, removing
// the new point's objects or the old chain's, and the next compaction
// removes the staging directory the killed one left.
func TestCompactS3Killed(t *testing.T) {
	srv := s3test.Start(t)
	want := expectedFlattens(t)
	original := slices.Clone(testPoints[0])
	compacted := []string{"2025-01-01_010000-FULL", testPoints[0][2]}
	for _, tt := range []struct {
		phase   string
		forward bool
	}{
		{"compact-flattened", false},
		{"compact-verified", false},
		{"compact-journaled", false},
		{CrashCompactUploading, false},
		{"compact-published", true},
		{"compact-retired", true},
		{"compact-unjournaled", true},
	} {
		t.Run(tt.phase, func(t *testing.T) {
			r := newS3TestRepo(t, srv, testPoints[0])
			tmp := t.TempDir()
			out, err := runHelper(t, r, "compact "+testPoints[0][1], CrashEnv+"="+tt.phase, "TMPDIR="+tmp)
			if err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("compact killed at %s: %v, %s", tt.phase, err, out)
			}
			// The staging goes once the point is up, before it is published.
			if ents, _ := os.ReadDir(tmp); len(ents) != map[bool]int{false: 1, true: 0}[tt.forward] {
				t.Errorf("killed at %s: staging %v", tt.phase, ents)
			}
			checkFlattens(t, r, want)
			recoverLocked(t, r)
			names := checkFlattens(t, r, want)
			wantNames, gone := original, compacted[:1]
			if tt.forward {
				wantNames, gone = compacted, original[:2]
			}
			if fmt.Sprint(names) != fmt.Sprint(wantNames) {
				t.Errorf("after recovery: %q, want %q", names, wantNames)
			}
			if l, _ := r.Leftovers(); len(l) != 0 {
				t.Errorf("leftovers after recovery %q", l)
			}
			for _, n := range gone {
				if objs, err := r.Store.List(ctx, n+"/"); err != nil || len(objs) != 0 {
					t.Errorf("after recovery, %s has %d objects (%v)", n, len(objs), err)
				}
			}
			if objs, _ := r.Store.List(ctx, journalName); len(objs) != 0 {
				t.Errorf("the journal outlived recovery")
			}
			sweepStaging(tmp)
			if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
				t.Errorf("staging of the killed compaction not swept: %v", ents)
			}
		})
	}
}
