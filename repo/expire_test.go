package repo

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// pointNames lists the repository's point names and checks that every one
// restores.
func pointNames(t *testing.T, r *Repo) []string {
	t.Helper()
	points, err := r.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range points {
		if p.Problem != "" {
			t.Errorf("%s: %s", p.Name, p.Problem)
		}
		names = append(names, p.Name)
	}
	return names
}

func pointList(ps []*Point) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func TestExpire(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	all := append(slices.Clone(testPoints[0]), testPoints[1]...)
	now := time.Date(2025, 1, 2, 3, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		o    ExpireOptions
		want []string
	}{
		{ExpireOptions{KeepFull: 2, Now: now}, nil},
		{ExpireOptions{KeepFull: 1, Now: now, KeepWithin: 25*time.Hour + 30*time.Minute}, nil}, // 2025-01-01_020000 is within
		{ExpireOptions{KeepFull: 1, Now: now, DryRun: true}, testPoints[0]},
		{ExpireOptions{KeepFull: 1, Now: now, KeepWithin: 24*time.Hour + 30*time.Minute}, testPoints[0]}, // nothing of chain 1 is
	} {
		res, err := r.Expire(ctx, tt.o, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := pointList(res.Removed); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%+v: removed %q, want %q", tt.o, got, tt.want)
		}
		if res.Freed == 0 && len(tt.want) > 0 {
			t.Errorf("%+v: freed nothing", tt.o)
		}
		if len(tt.want) > 0 && !tt.o.DryRun {
			break
		}
		if got := pointNames(t, r); fmt.Sprint(got) != fmt.Sprint(all) {
			t.Errorf("%+v: left %q", tt.o, got)
		}
	}
	if got := pointNames(t, r); fmt.Sprint(got) != fmt.Sprint(testPoints[1]) {
		t.Errorf("left %q, want the second chain", got)
	}
	if l, _ := r.Leftovers(); len(l) != 0 {
		t.Errorf("leftovers %q", l)
	}
	if _, err := r.Expire(ctx, ExpireOptions{KeepFull: 0}, nil); err == nil {
		t.Error("expire keeping no full point")
	}
}

// TestExpireInUse: a point a reader (another process) holds is kept, with
// the older points of its chain; once released, the next expire takes them.
func TestExpireInUse(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	release := holdLock(t, r, testPoints[0][1])
	res, err := r.Expire(ctx, ExpireOptions{KeepFull: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pointList(res.Removed)) != fmt.Sprint(testPoints[0][2:]) || fmt.Sprint(pointList(res.InUse)) != fmt.Sprint(testPoints[0][1:2]) ||
		fmt.Sprint(pointList(res.KeptForInUse)) != fmt.Sprint(testPoints[0][:1]) {
		t.Errorf("removed %q, in use %q, kept %q", pointList(res.Removed), pointList(res.InUse), pointList(res.KeptForInUse))
	}
	want := append(slices.Clone(testPoints[0][:2]), testPoints[1]...)
	if got := pointNames(t, r); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("left %q, want %q", got, want)
	}
	release()
	res, err = r.Expire(ctx, ExpireOptions{KeepFull: 1}, nil)
	if err != nil || fmt.Sprint(pointList(res.Removed)) != fmt.Sprint(testPoints[0][:2]) || len(res.InUse) != 0 {
		t.Errorf("after release: removed %q, in use %q, %v", pointList(res.Removed), pointList(res.InUse), err)
	}
}

// TestExpireKilled: expire killed after it retired a point, or before it
// deleted the trash, leaves only intact points; the next expire finishes.
func TestExpireKilled(t *testing.T) {
	for _, at := range []string{"expire-retired", "expire-before-delete"} {
		t.Run(at, func(t *testing.T) {
			r := newTestRepo(t, testPoints...)
			out, err := runHelper(t, r, "expire", CrashEnv+"="+at)
			if err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("expire with %s: %v, %s", at, err, out)
			}
			left := pointNames(t, r)
			if len(left) == 6 || !slices.Contains(left, testPoints[0][0]) && at == "expire-retired" {
				t.Errorf("after a kill at %s: points %q", at, left)
			}
			if l, _ := r.Leftovers(); len(l) == 0 || !IsTrash(l[0]) {
				t.Errorf("leftovers %q, want trash", l)
			}
			if _, err := r.Expire(ctx, ExpireOptions{KeepFull: 1}, nil); err != nil {
				t.Fatal(err)
			}
			if got := pointNames(t, r); fmt.Sprint(got) != fmt.Sprint(testPoints[1]) {
				t.Errorf("after the next expire: %q", got)
			}
			if l, _ := r.Leftovers(); len(l) != 0 {
				t.Errorf("leftovers after the next expire: %q", l)
			}
		})
	}
}

// TestExpireWAL: the archive keeps the WAL from the oldest kept point's
// start LSN on, of every timeline; partial segments follow the same rule,
// history files stay.
func TestExpireWAL(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	// Both chains start at 0/2000028 (segment 0x20 of 1 MiB segments), so
	// make the kept chain start later: its full begins at 0/2400028.
	seg := int64(1 << 20)
	wal := filepath.Join(r.Dir, WALDir)
	var files []string
	for tli := 1; tli <= 2; tli++ {
		for s := 0x1E; s <= 0x26; s++ {
			files = append(files, fmt.Sprintf("%08X/%08X%08X%08X", tli, tli, 0, s))
		}
	}
	files = append(files, "00000001/000000010000000000000021.partial", "00000002/00000002.history")
	for _, f := range files {
		p := filepath.Join(wal, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(f, ".partial") && !strings.HasSuffix(f, ".history") {
			if err := os.Truncate(p, seg); err != nil {
				t.Fatal(err)
			}
		}
	}
	objs, err := r.Store.List(ctx, WALDir+"/")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range WALToRemove(objs, seg, 0x2400028) {
		got = append(got, o.Name)
	}
	var want []string
	for tli := 1; tli <= 2; tli++ {
		for s := 0x1E; s < 0x24; s++ {
			want = append(want, fmt.Sprintf("wal/%08X/%08X%08X%08X", tli, tli, 0, s))
			if tli == 1 && s == 0x21 {
				want = append(want, "wal/00000001/000000010000000000000021.partial")
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("WALToRemove:\n got %q\nwant %q", got, want)
	}
	// Expire: the kept chain starts at 0/2000028, so segments before 0x20
	// go, on both timelines.
	res, err := r.Expire(ctx, ExpireOptions{KeepFull: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.WALRemoved) != 4 || res.Freed < 4*seg {
		t.Errorf("removed WAL %v, freed %d", res.WALRemoved, res.Freed)
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(wal, f))
		gone := strings.HasSuffix(f, "1E") || strings.HasSuffix(f, "1F")
		if gone != (err != nil) {
			t.Errorf("%s: gone %v, want %v", f, err != nil, gone)
		}
	}
}
