package repo

import (
	"fmt"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/internal/s3test"
)

// TestS3DeleteAll: a leftover of 2,345 objects (a capture cut short) goes
// in three DeleteObjects requests, and nothing of it is left; objects
// outside it stay.
func TestS3DeleteAll(t *testing.T) {
	srv := s3test.Start(t)
	st := newTestS3(t, srv, srv.NewBucket(t), "db/")
	const n = 2345
	leftover := "2025-02-20_161530-FULL"
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("%s/base/5/%d", leftover, i))
	}
	names = append(names, "keep/a", "keep/b")
	var g errgroup.Group
	g.SetLimit(16)
	for _, name := range names {
		g.Go(func() error { return st.Put(ctx, name, []byte(name)) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	before := st.Requests()
	r := &Repo{Dir: st.String(), Store: st}
	if err := r.removeRemoteLeftovers(ctx); err != nil {
		t.Fatal(err)
	}
	got := st.Requests().Sub(before)
	if left, err := st.List(ctx, leftover+"/"); err != nil || len(left) != 0 {
		t.Errorf("after removing the leftover: %d of its objects left (%v)", len(left), err)
	}
	if kept, err := st.List(ctx, "keep/"); err != nil || len(kept) != 2 {
		t.Errorf("objects outside the leftover: %d left (%v), want 2", len(kept), err)
	}
	if got.Delete != (n+deleteBatch-1)/deleteBatch {
		t.Errorf("removing %d objects took %d delete requests, want %d", n, got.Delete, (n+deleteBatch-1)/deleteBatch)
	}
}
