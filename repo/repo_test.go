package repo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/resolver/resolvertest"
)

var ctx = context.Background()

// testPoints are the names newTestRepo gives the backups of each chain.
var testPoints = [][]string{
	{"2025-01-01_000000-FULL", "2025-01-01_010000-INCREMENTAL", "2025-01-01_020000-INCREMENTAL"},
	{"2025-01-02_000000-FULL", "2025-01-02_010000-INCREMENTAL", "2025-01-02_020000-INCREMENTAL"},
}

// newTestRepo makes a repository of synthetic chains, one per entry of
// names (each full backup first), without PostgreSQL.
func newTestRepo(t *testing.T, names ...[]string) *Repo {
	t.Helper()
	dir := t.TempDir()
	for ci, chain := range names {
		c := resolvertest.NewChain(t)
		c.SystemIdentifier += uint64(ci)
		for i := range chain {
			var b *resolvertest.Backup
			if i == 0 {
				b = c.Full()
				b.File("base/5/16384", resolvertest.FillBlock("full", 0))
			} else {
				b = c.Incremental()
				b.Incremental("base/5/16384", uint32(i+1), resolvertest.Block{Num: uint32(i), Data: resolvertest.FillBlock(chain[i], uint32(i))})
			}
			b.File("base/5/PG_VERSION", []byte("17\n"))
		}
		for i, d := range c.Dirs() {
			if err := os.Rename(d, filepath.Join(dir, chain[i])); err != nil {
				t.Fatal(err)
			}
		}
	}
	r, err := Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestNames(t *testing.T) {
	ts := time.Date(2025, 2, 20, 16, 15, 30, 0, time.FixedZone("x", 3600))
	if n := PointName(KindFull, ts); n != "2025-02-20_151530-FULL" {
		t.Errorf("PointName = %q", n)
	}
	for name, want := range map[string]bool{
		"2025-02-20_151530-FULL": true, "2025-02-20_151530-INCREMENTAL": true,
		"2025-02-20_151530-full": false, ".2025-02-20_151530-FULL.partial-1": false, "wal": false,
	} {
		if IsPointName(name) != want {
			t.Errorf("IsPointName(%q) = %v", name, !want)
		}
	}
	r := newTestRepo(t, testPoints[0])
	// A second is another point's, whatever its kind, or comes before the
	// newest point's: list order would then not be capture order.
	for _, at := range []time.Time{
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2025, 1, 1, 2, 0, 0, 0, time.UTC),
		time.Date(2025, 1, 1, 1, 30, 0, 0, time.UTC),
	} {
		if n := r.NewName(KindFull, at); n != "" {
			t.Errorf("NewName(%v) gave %q, which would not sort after every point", at, n)
		}
	}
	if n := r.NewName(KindIncremental, time.Date(2025, 1, 1, 2, 0, 1, 0, time.UTC)); n != "2025-01-01_020001-INCREMENTAL" {
		t.Errorf("NewName after the newest point = %q", n)
	}
	tmp, err := r.Stage("2025-01-05_000000-FULL")
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := r.Leftovers(); len(l) != 1 || l[0] != filepath.Base(tmp) {
		t.Errorf("leftovers %q, want the staged %s", l, tmp)
	}
	if _, err := r.Publish(tmp, "2025-01-01_000000-FULL"); err == nil {
		t.Error("Publish replaced an existing point")
	}
	if _, err := r.Publish(tmp, "2025-01-05_000000-FULL"); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.Leftovers(); len(l) != 0 {
		t.Errorf("leftovers after Publish: %q", l)
	}
	// A journal write cut short is a leftover that recovery removes.
	if err := r.Store.Put(ctx, journalName, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	objs, _ := r.Store.List(ctx, ".compact")
	if len(objs) != 1 {
		t.Fatalf("journal objects %v", objs)
	}
	r.Store.Delete(ctx, journalName)
	if err := os.WriteFile(filepath.Join(r.Dir, "."+journalName+".tmp-123"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.Leftovers(); len(l) != 1 {
		t.Errorf("leftovers %q, want the journal's temporary file", l)
	}
	if err := r.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.Leftovers(); len(l) != 0 {
		t.Errorf("leftovers after Recover: %q", l)
	}
}

func TestPointsAndChains(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	points, err := r.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 6 {
		t.Fatalf("%d points", len(points))
	}
	for i, p := range points {
		chain := testPoints[i/3][:i%3+1]
		if p.Problem != "" || strings.Join(p.Chain, " ") != strings.Join(chain, " ") {
			t.Errorf("%s: chain %q, problem %q; want %q", p.Name, p.Chain, p.Problem, chain)
		}
		if p.Size == 0 || p.StartTLI != 1 || p.SystemID == 0 {
			t.Errorf("%s: %+v", p.Name, p)
		}
	}
	// Without its middle point, the last of the first chain is broken and
	// says why; the second chain is untouched.
	if err := os.RemoveAll(filepath.Join(r.Dir, testPoints[0][1])); err != nil {
		t.Fatal(err)
	}
	points, err = r.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := points[1]; !strings.Contains(p.Problem, "is not in the repository") || p.Chain != nil {
		t.Errorf("%s: problem %q chain %q", p.Name, p.Problem, p.Chain)
	}
	if _, _, err := r.ChainDirs(ctx, testPoints[0][2]); err == nil || !strings.Contains(err.Error(), "cannot be restored") {
		t.Errorf("ChainDirs of a broken point: %v", err)
	}
	// A damaged label breaks its point and those after it.
	if err := os.WriteFile(filepath.Join(r.Dir, testPoints[1][1], "backup_label"), []byte("junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	points, _ = r.Points(ctx)
	if points[2].Problem != "" || points[3].Problem == "" || points[4].Problem == "" {
		t.Errorf("problems %q %q %q", points[2].Problem, points[3].Problem, points[4].Problem)
	}
}

func TestFind(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	for _, tt := range []struct{ ref, want, err string }{
		{"2025-01-01_010000-INCREMENTAL", "2025-01-01_010000-INCREMENTAL", ""},
		{"2025-01-02_01", "2025-01-02_010000-INCREMENTAL", ""},
		{"2025-01-02_000000", "2025-01-02_000000-FULL", ""},
		{"2025-01-01", "", `point "2025-01-01" of repository ` + r.Dir + ` is ambiguous: it begins 2025-01-01_000000-FULL, 2025-01-01_010000-INCREMENTAL, 2025-01-01_020000-INCREMENTAL`},
		{"2025-01-03", "", `repository ` + r.Dir + ` has no point named "2025-01-03" (its points: 2025-01-01_000000-FULL, 2025-01-01_010000-INCREMENTAL, 2025-01-01_020000-INCREMENTAL, 2025-01-02_000000-FULL, 2025-01-02_010000-INCREMENTAL, 2025-01-02_020000-INCREMENTAL)`},
		{"", "", `repository ` + r.Dir + ` has no point named ""`},
	} {
		p, err := r.Find(ctx, tt.ref)
		switch {
		case tt.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.err)):
			t.Errorf("Find(%q) = %v, want error %q", tt.ref, err, tt.err)
		case tt.err == "" && (err != nil || p.Name != tt.want):
			t.Errorf("Find(%q) = %v, %v; want %s", tt.ref, p, err, tt.want)
		}
	}
	dirs, p, err := r.ChainDirs(ctx, "2025-01-02_02")
	if err != nil || len(dirs) != 3 || dirs[0] != filepath.Join(r.Dir, "2025-01-02_000000-FULL") || p.Name != "2025-01-02_020000-INCREMENTAL" {
		t.Errorf("ChainDirs = %q, %v", dirs, err)
	}
	empty, _ := Open(t.TempDir(), false)
	if _, err := empty.Find(ctx, "x"); err == nil || !strings.Contains(err.Error(), "it has no points") {
		t.Errorf("Find in an empty repository: %v", err)
	}
}

func TestLocalStorage(t *testing.T) {
	s := Local{Root: t.TempDir()}
	if err := s.Put(ctx, "a/b/obj", []byte("hello world")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "a/b/obj", []byte("again")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Put over an object: %v", err)
	}
	if err := s.Put(ctx, "a/c", nil); err != nil {
		t.Fatal(err)
	}
	objs, err := s.List(ctx, "a/")
	if err != nil || fmt.Sprint(objs) != "[{a/b/obj 11} {a/c 0}]" {
		t.Errorf("List = %v, %v", objs, err)
	}
	if objs, _ := s.List(ctx, "a/b/o"); len(objs) != 1 {
		t.Errorf("List of a name prefix = %v", objs)
	}
	if objs, err := s.List(ctx, "nope/"); err != nil || len(objs) != 0 {
		t.Errorf("List of a missing prefix = %v, %v", objs, err)
	}
	if b, err := s.ReadRange(ctx, "a/b/obj", 6, 3); err != nil || string(b) != "wor" {
		t.Errorf("ReadRange = %q, %v", b, err)
	}
	if b, err := s.ReadRange(ctx, "a/b/obj", 6, -1); err != nil || string(b) != "world" {
		t.Errorf("ReadRange to the end = %q, %v", b, err)
	}
	if err := s.Delete(ctx, "a/b/obj"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a/b/obj"); err != nil {
		t.Errorf("Delete of a missing object: %v", err)
	}
	if objs, _ := s.List(ctx, ""); len(objs) != 1 {
		t.Errorf("after Delete: %v", objs)
	}
}

// The helper process of the lock tests: it takes the lock named by
// COMBINEFS_LOCK_TEST, says "locked" and holds it until its stdin closes.
func TestMain(m *testing.M) {
	if what := os.Getenv("COMBINEFS_LOCK_TEST"); what != "" {
		// An s3:// repository's endpoint comes from AWS_ENDPOINT_URL.
		r, err := OpenWith(ctx, os.Getenv("COMBINEFS_LOCK_REPO"), false, S3Options{})
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		switch {
		case what == "repo":
			_, err = r.Lock(ctx, "test holder", nil)
		case what == "expire":
			_, err = r.Expire(ctx, ExpireOptions{KeepFull: 1}, nil)
			if err == nil {
				fmt.Println("done")
				os.Exit(0)
			}
		case strings.HasPrefix(what, "compact "):
			_, err = r.Compact(ctx, strings.TrimPrefix(what, "compact "), testCompactOptions, nil)
			if err == nil {
				fmt.Println("done")
				os.Exit(0)
			}
		default:
			_, _, err = r.ShareChain(ctx, what, nil)
		}
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runHelper runs the helper process for what with extra environment and
// returns its output and error.
func runHelper(t *testing.T, r *Repo, what string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "COMBINEFS_LOCK_TEST="+what, "COMBINEFS_LOCK_REPO="+r.Dir), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// holdLock starts a process that holds a lock; release ends it.
func holdLock(t *testing.T, r *Repo, what string) (release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "COMBINEFS_LOCK_TEST="+what, "COMBINEFS_LOCK_REPO="+r.Dir)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("lock holder: %q", line)
	}
	return func() {
		in.Close()
		cmd.Wait()
	}
}

func TestRepoLockTwoProcesses(t *testing.T) {
	r := newTestRepo(t, testPoints[0])
	release := holdLock(t, r, "repo")
	_, err := r.Lock(ctx, "me", nil)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "held by test holder, pid") {
		t.Errorf("Lock while another process holds it: %v", err)
	}
	var waited []string
	done := make(chan error)
	go func() {
		unlock, err := r.Lock(ctx, "me", func(what string) { waited = append(waited, what) })
		if err == nil {
			unlock()
		}
		done <- err
	}()
	time.Sleep(3 * lockPoll) // not a threshold: the lock is taken either way
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(waited) != 1 || !strings.Contains(waited[0], "the lock of repository "+r.Dir) {
		t.Errorf("waiter heard %q", waited)
	}
}

func TestPointLocksTwoProcesses(t *testing.T) {
	r := newTestRepo(t, testPoints...)
	release := holdLock(t, r, "2025-01-01_01") // shares the full and the first incremental
	for _, name := range append(testPoints[0], testPoints[1]...) {
		unlock, held, err := r.TryExclusive(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		want := name == testPoints[0][0] || name == testPoints[0][1]
		if held != want {
			t.Errorf("%s: held %v, want %v", name, held, want)
		}
		if unlock != nil {
			unlock()
		}
	}
	// Another reader shares them.
	_, hold, err := r.ShareChain(ctx, testPoints[0][2], nil)
	if err != nil {
		t.Fatal(err)
	}
	hold.Release()
	release()
	unlock, held, err := r.TryExclusive(context.Background(), testPoints[0][0])
	if err != nil || held {
		t.Fatalf("after the reader ended: held %v, %v", held, err)
	}
	// A reader waits for the exclusive holder and says so.
	var waited []string
	done := make(chan error)
	go func() {
		_, hold, err := r.ShareChain(ctx, testPoints[0][1], func(what string) { waited = append(waited, what) })
		hold.Release()
		done <- err
	}()
	time.Sleep(3 * lockPoll)
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(waited) != 1 || !strings.Contains(waited[0], "point "+testPoints[0][0]+" (being removed or replaced") {
		t.Errorf("waiter heard %q", waited)
	}
}

// TestInterleavedClusters: two clusters' chains whose points have the same
// LSNs, taken turn about into one repository, are told apart by their
// system identifiers, in the light lookup (pg_control) as in list
// (manifests).
func TestInterleavedClusters(t *testing.T) {
	a := []string{"2025-01-01_000000-FULL", "2025-01-01_020000-INCREMENTAL", "2025-01-01_040000-INCREMENTAL"}
	b := []string{"2025-01-01_010000-FULL", "2025-01-01_030000-INCREMENTAL", "2025-01-01_050000-INCREMENTAL"}
	r := newTestRepo(t, a, b)
	points, err := r.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range points {
		chain := a
		if slices.Contains(b, p.Name) {
			chain = b
		}
		want := chain[:slices.Index(chain, p.Name)+1]
		if fmt.Sprint(p.Chain) != fmt.Sprint(want) {
			t.Errorf("list: %s has chain %q, want %q (%s)", p.Name, p.Chain, want, p.Problem)
		}
		f, err := r.Find(ctx, p.Name)
		if err != nil || fmt.Sprint(f.Chain) != fmt.Sprint(want) {
			t.Errorf("Find: %s has chain %q, want %q (%v, %s)", p.Name, f.Chain, want, err, f.Problem)
		}
	}
}

// TestShareReadOnlyRepository: a repository on a read-only file system
// (where no lock file can be made, and no point removed) is read without
// locks.
func TestShareReadOnlyRepository(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a read-only bind mount")
	}
	r := newTestRepo(t, testPoints[0])
	ro := t.TempDir()
	if err := unix.Mount(r.Dir, ro, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(ro, unix.MNT_DETACH) })
	if err := unix.Mount("", ro, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	rr, err := Open(ro, false)
	if err != nil {
		t.Fatal(err)
	}
	dirs, hold, err := rr.ShareChain(ctx, testPoints[0][2], nil)
	if err != nil || len(dirs) != 3 {
		t.Fatalf("ShareChain on a read-only repository: %q, %v", dirs, err)
	}
	hold.Release()
	if _, err := os.Stat(filepath.Join(r.Dir, lockDirName)); err == nil {
		t.Error("a lock directory appeared")
	}
}
