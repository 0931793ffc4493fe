package repo

import (
	"fmt"
	"os"
	"testing"

	"github.com/combinefs/combinefs/internal/s3test"
)

// TestS3PointLeases: on an object store a reader's shared point locks are
// lease objects. Points a reader holds are reported in use and kept by
// compact; a lease of a process gone from this machine is void and
// removed, one from another machine is respected; a point retired while a
// reader leased it keeps its files until the lease is gone; Release
// leaves no lease behind.
func TestS3PointLeases(t *testing.T) {
	srv := s3test.Start(t)
	r := newS3TestRepo(t, srv, testPoints...)
	held := func(name string) bool {
		t.Helper()
		unlock, held, err := r.TryExclusive(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		unlock()
		return held
	}
	_, hold, err := r.ShareChain(ctx, testPoints[0][1], nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range testPoints[0] {
		if got, want := held(n), i < 2; got != want {
			t.Errorf("%s: held %v, want %v", n, got, want)
		}
	}
	o := testCompactOptions
	o.TmpDir = t.TempDir()
	res, err := r.Compact(ctx, testPoints[0][2], o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.InUse) != fmt.Sprint([]string{testPoints[0][1]}) {
		t.Errorf("compact kept %q in use, want %q", res.InUse, testPoints[0][1])
	}
	for _, n := range testPoints[0][:2] {
		if ok, err := r.hasPoint(ctx, n); err != nil || !ok {
			t.Errorf("%s, held by a reader, is no longer a point (%v)", n, err)
		}
	}
	hold.Release()
	if objs, err := r.Store.List(ctx, readerDir+"/"); err != nil || len(objs) != 0 {
		t.Errorf("after Release: leases %v (%v)", objs, err)
	}
	if held(testPoints[0][0]) {
		t.Error("held after the reader released it")
	}

	host, _ := os.Hostname()
	dead := leasePrefix(testPoints[1][0]) + "dead"
	if err := r.Store.Put(ctx, dead, []byte(fmt.Sprintf("reader, pid %d on %s, since then\n", 1<<30, host))); err != nil {
		t.Fatal(err)
	}
	if held(testPoints[1][0]) {
		t.Error("a lease of a process gone from this machine holds its point")
	}
	if objs, _ := r.Store.List(ctx, dead); len(objs) != 0 {
		t.Error("a void lease was not removed")
	}
	other := leasePrefix(testPoints[1][1]) + "other"
	if err := r.Store.Put(ctx, other, []byte("reader, pid 1 on another-host, since then\n")); err != nil {
		t.Fatal(err)
	}
	if !held(testPoints[1][1]) {
		t.Error("a lease from another machine does not hold its point")
	}

	// Retired with a lease taken before its retirement: its files stay
	// until the lease goes.
	if err := r.retire(testPoints[1][1]); err != nil {
		t.Fatal(err)
	}
	if err := r.emptyTrashOrRemote(ctx); err != nil {
		t.Fatal(err)
	}
	if objs, err := r.Store.List(ctx, testPoints[1][1]+"/"); err != nil || len(objs) == 0 {
		t.Fatalf("a retired point's files went while a reader held it (%v)", err)
	}
	if err := r.Store.Delete(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := r.emptyTrashOrRemote(ctx); err != nil {
		t.Fatal(err)
	}
	if objs, err := r.Store.List(ctx, testPoints[1][1]+"/"); err != nil || len(objs) != 0 {
		t.Errorf("a retired point's files stayed after its reader left: %d (%v)", len(objs), err)
	}
}
