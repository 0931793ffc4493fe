package repo

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// pushSizedChain puts into s3://bucket/prefix a chain of a full backup and
// two incrementals of nrels (at least 2) relation files 40*k blocks long,
// and returns the number of INCREMENTAL files in its incrementals.
func pushSizedChain(t *testing.T, srv *s3test.Server, bucket, prefix string, k, nrels int) int {
	t.Helper()
	c := resolvertest.NewChain(t)
	full := c.Full()
	var rels []string
	for i := range nrels {
		rels = append(rels, fmt.Sprintf("base/5/%d", 16384+i))
	}
	for _, rel := range rels {
		var data []byte
		for b := uint32(0); b < uint32(40*k); b++ {
			data = append(data, resolvertest.FillBlock(rel, b)...)
		}
		full.File(rel, data)
	}
	full.File("base/5/PG_VERSION", []byte("17\n"))
	full.Mkdir("pg_notify")
	incs := 0
	for i := range 2 {
		inc := c.Incremental()
		for _, rel := range rels[:nrels-1] {
			var blocks []resolvertest.Block
			for b := uint32(i); b < uint32(40*k); b += 3 {
				blocks = append(blocks, resolvertest.Block{Num: b, Data: resolvertest.FillBlock(rel+"inc", b)})
			}
			inc.Incremental(rel, uint32(40*k), blocks...)
			incs++
		}
		inc.Incremental(rels[nrels-1], uint32(40*k))
		incs++
		inc.File("base/5/PG_VERSION", []byte("17\n"))
		inc.Mkdir("pg_notify")
	}
	st := newTestS3(t, srv, bucket, prefix)
	for i, d := range c.Dirs() {
		if err := CopyPoint(context.Background(), st, d, s3ChainNames[i], true); err != nil {
			t.Fatal(err)
		}
	}
	return incs
}

// openS3Chain does what mount does before it serves: open the repository,
// look the point up and hold its chain, make its source, open the chain
// and read every INCREMENTAL header. It returns the requests sent, the
// tree and the store.
func openS3Chain(t *testing.T, srv *s3test.Server, loc string) (RequestCounts, *resolver.Tree, *S3) {
	t.Helper()
	ctx := context.Background()
	r, err := OpenWith(ctx, loc, false, S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	st := r.Store.(*S3)
	dirs, opts := shareTestChain(t, r)
	tree := openTestTree(t, dirs, opts)
	return st.Requests(), tree, st
}

// shareTestChain holds the chain of the last of s3ChainNames for the
// test and returns its directories and options.
func shareTestChain(t *testing.T, r *Repo) ([]string, resolver.ChainOptions) {
	t.Helper()
	ctx := context.Background()
	dirs, hold, err := r.ShareChain(ctx, s3ChainNames[2], nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hold.Release)
	opts, err := r.ChainOptions(ctx, dirs)
	if err != nil {
		t.Fatal(err)
	}
	return dirs, opts
}

// TestS3OpenRequests: the requests opening a chain from S3 sends (a
// mount's, before it serves) grow neither with the size of the relation
// files nor with the number of INCREMENTAL files, and are each small object
// once: per point one listing, one GET of each of its four small files and
// one of its marker (whose header pack holds every INCREMENTAL header),
// three listings for the repository (its probe, its markers, and their
// check once the chain is held) and a lease PUT per point. Nothing else:
// no whole-prefix listing, no header or block data. The memo of small
// objects is empty afterwards.
func TestS3OpenRequests(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	var counts []RequestCounts
	var allIncs []int
	for _, c := range []struct{ k, rels int }{{1, 3}, {8, 3}, {1, 12}} {
		k := c.k
		prefix := fmt.Sprintf("k%d-r%d", k, c.rels)
		incs := pushSizedChain(t, srv, bucket, prefix+"/", k, c.rels)
		allIncs = append(allIncs, incs)
		got, tree, st := openS3Chain(t, srv, "s3://"+bucket+"/"+prefix)
		points := len(s3ChainNames)
		want := RequestCounts{List: 3 + uint64(points), Get: uint64((len(chainFiles) + 1) * points), Put: uint64(points)}
		if got.List != want.List || got.Get != want.Get || got.Put != want.Put || got.Delete+got.Other != 0 {
			t.Errorf("%d relation files of %d blocks (%d INCREMENTAL files): opening the chain sent %s; want %d LIST, %d GET and %d PUT (the leases), nothing else", c.rels, 40*k, incs, got, want.List, want.Get, want.Put)
		}
		if got.GetBytes > uint64(points*64<<10+incs*format.BlockSize) {
			t.Errorf("relation files of %d blocks: opening the chain read %d bytes: more than small files and headers", 40*k, got.GetBytes)
		}
		if len(st.memo.data)+len(st.memo.lists) != 0 {
			t.Errorf("after the source is made the store still holds %d small objects and %d listings", len(st.memo.data), len(st.memo.lists))
		}
		// The tree is whole: a file reconstructed from three backups
		// reads back as the last backup's blocks where it has them.
		f := tree.Root.Child("base").Child("5").Child("16384").File
		rd, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, format.BlockSize)
		if _, err := rd.ReadAt(buf, 1*format.BlockSize); err != nil || !bytes.Equal(buf, resolvertest.FillBlock("base/5/16384inc", 1)) {
			t.Errorf("block 1 of base/5/16384 from S3: %v, or not the last incremental's", err)
		}
		rd.Close()
		got.GetBytes, got.MaxInFlight = 0, 0
		counts = append(counts, got)
	}
	if counts[0] != counts[1] || counts[0] != counts[2] {
		t.Errorf("opening a chain sent %s with relation files of 40 blocks, %s with 320, %s with %d INCREMENTAL files instead of %d", counts[0], counts[1], counts[2], allIncs[2], allIncs[0])
	}
}

// TestS3ReadRangeInto: a ranged read straight into buffers fills them in
// order, stops at the object's end, and refuses to read past a listed
// size's end through a StorageFS file.
func TestS3ReadRangeInto(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	st := newTestS3(t, srv, bucket, "p/")
	ctx := context.Background()
	data := make([]byte, 3*format.BlockSize+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := st.Put(ctx, "pt/obj", data); err != nil {
		t.Fatal(err)
	}
	a, b := make([]byte, 5000), make([]byte, format.BlockSize)
	n, err := st.ReadRangeInto(ctx, "pt/obj", 1000, [][]byte{a, b})
	if err != nil || n != len(a)+len(b) || !bytes.Equal(a, data[1000:6000]) || !bytes.Equal(b, data[6000:6000+format.BlockSize]) {
		t.Errorf("ReadRangeInto at 1000: %d, %v, or other bytes", n, err)
	}
	b = make([]byte, 2*format.BlockSize)
	n, err = st.ReadRangeInto(ctx, "pt/obj", 2*format.BlockSize, [][]byte{b})
	if err != nil || n != format.BlockSize+100 || !bytes.Equal(b[:n], data[2*format.BlockSize:]) {
		t.Errorf("ReadRangeInto across the end: %d, %v, want %d bytes", n, err, format.BlockSize+100)
	}
	if n, err := st.ReadRangeInto(ctx, "pt/obj", int64(len(data)), [][]byte{b}); n != 0 || err != nil {
		t.Errorf("ReadRangeInto at the end: %d, %v", n, err)
	}

	// A read of many blocks, longer than a body reader's buffer: each
	// buffer gets its own bytes, across the buffer's refills.
	big := make([]byte, 3*bodyBufSize+5*format.BlockSize+321)
	for i := range big {
		big[i] = byte(i*13 + i/format.BlockSize)
	}
	if err := st.Put(ctx, "pt/big", big); err != nil {
		t.Fatal(err)
	}
	var bufs [][]byte
	for off := 321; off+format.BlockSize <= len(big); off += format.BlockSize {
		bufs = append(bufs, make([]byte, format.BlockSize))
	}
	n, err = st.ReadRangeInto(ctx, "pt/big", 321, bufs)
	if err != nil || n != len(bufs)*format.BlockSize {
		t.Errorf("ReadRangeInto of %d blocks: %d, %v", len(bufs), n, err)
	}
	for i, v := range bufs {
		if off := 321 + i*format.BlockSize; !bytes.Equal(v, big[off:off+format.BlockSize]) {
			t.Errorf("ReadRangeInto of %d blocks: block %d holds other bytes", len(bufs), i)
			break
		}
	}

	// Through a StorageFS whose listing says more than the object holds:
	// an error naming it, not zeros or an early EOF.
	fsys := newStorageFS(ctx, st, "pt", []Object{{Name: "pt/obj", Size: int64(len(data)) + 5000}})
	f, err := fsys.Open("obj")
	if err != nil {
		t.Fatal(err)
	}
	sf := f.(*storageFile)
	buf := make([]byte, 8000)
	if _, err := sf.ReadAtInto([][]byte{buf}, int64(len(data))-100); err == nil || !strings.Contains(err.Error(), "s3://"+bucket+"/p/pt/obj") {
		t.Errorf("a read past the object's end as listed: %v, want an error naming the object", err)
	}
	if n, err := sf.ReadAt(buf[:100], int64(len(data))-100); n != 100 || err != nil || !bytes.Equal(buf[:100], data[len(data)-100:]) {
		t.Errorf("ReadAt of the object's last 100 bytes: %d, %v", n, err)
	}
}

// TestS3TopNames: the repository check lists the top of the prefix only,
// objects and "directories".
func TestS3TopNames(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	st := newTestS3(t, srv, bucket, "r/")
	ctx := context.Background()
	for _, n := range []string{"a/b/c", "a/d", ".points/x", "top", "z/"} {
		if err := st.Put(ctx, n, []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.TopNames(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []string{".points", "a", "top", "z"}; !slices.Equal(got, want) {
		t.Errorf("TopNames: %q, want %q", got, want)
	}
	r := &Repo{Dir: "s3://" + bucket + "/r", Store: st}
	if err := r.checkRemoteRepository(ctx); err != nil {
		t.Errorf("a prefix with markers: %v", err)
	}
	r.Store = newTestS3(t, srv, bucket, "r/a/")
	if err := r.checkRemoteRepository(ctx); err == nil {
		t.Error("a prefix without points or markers passed as a repository")
	}
}
