package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/combinefs/combinefs/internal/s3test"
)

// testStorageContract is what every Storage must do, run against each
// implementation (Local on a temporary directory, S3 on a real SeaweedFS).
func testStorageContract(t *testing.T, st Storage) {
	ctx := context.Background()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	objs := map[string][]byte{
		"a/one":         []byte("hello, world"),
		"a/two":         {},
		"a/sub/three":   []byte("three"),
		"big":           big,
		"b/one":         []byte("b"),
		"abc":           []byte("top"),
		"wal/0001/0002": []byte("segment"),
	}
	for name, data := range objs {
		if err := st.Put(ctx, name, data); err != nil {
			t.Fatalf("Put %s: %v", name, err)
		}
	}
	t.Run("List", func(t *testing.T) {
		for _, c := range []struct {
			prefix string
			want   []string
		}{
			{"a/", []string{"a/one", "a/sub/three", "a/two"}},
			{"a", []string{"a/one", "a/sub/three", "a/two", "abc"}},
			{"a/sub/", []string{"a/sub/three"}},
			{"", []string{"a/one", "a/sub/three", "a/two", "abc", "b/one", "big", "wal/0001/0002"}},
			{"none/", nil},
		} {
			got, err := st.List(ctx, c.prefix)
			if err != nil {
				t.Fatalf("List %q: %v", c.prefix, err)
			}
			var names []string
			for _, o := range got {
				names = append(names, o.Name)
				if o.Size != int64(len(objs[o.Name])) {
					t.Errorf("List %q: %s has size %d, want %d", c.prefix, o.Name, o.Size, len(objs[o.Name]))
				}
			}
			if strings.Join(names, ",") != strings.Join(c.want, ",") {
				t.Errorf("List %q = %v, want %v", c.prefix, names, c.want)
			}
		}
	})
	t.Run("ReadRange", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			off, n int64
			want   []byte
		}{
			{"a/one", 0, -1, []byte("hello, world")},
			{"a/one", 7, 5, []byte("world")},
			{"a/one", 7, 100, []byte("world")},
			{"a/one", 12, 4, []byte{}},
			{"a/one", 3, 0, []byte{}},
			{"a/two", 0, -1, []byte{}},
			{"big", 0, -1, big},
			{"big", 1<<20 + 3, 8192, big[1<<20+3 : 1<<20+3+8192]},
		} {
			got, err := st.ReadRange(ctx, c.name, c.off, c.n)
			if err != nil {
				t.Fatalf("ReadRange %s %d+%d: %v", c.name, c.off, c.n, err)
			}
			if !bytes.Equal(got, c.want) {
				t.Errorf("ReadRange %s %d+%d: got %d bytes, want %d (or other bytes)", c.name, c.off, c.n, len(got), len(c.want))
			}
		}
		if _, err := st.ReadRange(ctx, "a/missing", 0, -1); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ReadRange of a missing object: %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("StorageFS", func(t *testing.T) {
		fsys, err := NewStorageFS(ctx, st, "a")
		if err != nil {
			t.Fatal(err)
		}
		if err := fstest.TestFS(fsys, "one", "two", "sub/three"); err != nil {
			t.Fatal(err)
		}
		// A file of several chunks, read in sequence.
		objs, err := st.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		whole := &StorageFS{ctx: ctx, store: st, files: map[string]int64{}}
		for _, o := range objs {
			whole.files[o.Name] = o.Size
		}
		f := &storageFile{fs: whole, name: "big", size: int64(len(big))}
		got, err := io.ReadAll(f)
		if err != nil || !bytes.Equal(got, big) {
			t.Errorf("reading big through the fs.FS: %d bytes, %v", len(got), err)
		}
	})
	t.Run("PutExisting", func(t *testing.T) {
		err := st.Put(ctx, "a/one", []byte("replaced"))
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("Put over an existing object: %v, want fs.ErrExist", err)
		}
		if got, _ := st.ReadRange(ctx, "a/one", 0, -1); string(got) != "hello, world" {
			t.Errorf("Put over an existing object changed it to %q", got)
		}
	})
	t.Run("Create", func(t *testing.T) {
		// Larger than two parts, written in odd-sized pieces.
		huge := bytes.Repeat([]byte("combinefs streams "), (2*S3PartSize+S3PartSize/3)/18)
		for _, c := range []struct {
			name string
			data []byte
		}{{"c/huge", huge}, {"c/small", []byte("small")}, {"c/part", huge[:S3PartSize]}, {"c/empty", nil}} {
			w, err := st.Create(ctx, c.name)
			if err != nil {
				t.Fatal(err)
			}
			for rest := c.data; len(rest) > 0; {
				n := min(len(rest), 1<<20+17)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatalf("Write %s: %v", c.name, err)
				}
				rest = rest[n:]
			}
			if got, _ := st.List(ctx, c.name); len(got) != 0 {
				t.Errorf("%s is listed before its Commit", c.name)
			}
			if err := w.Commit(); err != nil {
				t.Fatalf("Commit %s: %v", c.name, err)
			}
			got, err := st.ReadRange(ctx, c.name, 0, -1)
			if err != nil || !bytes.Equal(got, c.data) {
				t.Errorf("%s after Commit: %d bytes (%v), want %d", c.name, len(got), err, len(c.data))
			}
		}
		w, err := st.Create(ctx, "c/small")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("other"))
		if err := w.Commit(); !errors.Is(err, fs.ErrExist) {
			t.Errorf("Commit over an existing object: %v, want fs.ErrExist", err)
		}
		// Aborted, after a part went up: no object.
		w, err = st.Create(ctx, "c/aborted")
		if err != nil {
			t.Fatal(err)
		}
		w.Write(huge)
		w.Abort()
		if got, _ := st.List(ctx, "c/aborted"); len(got) != 0 {
			t.Errorf("an aborted Create left %v", got)
		}
		if s, ok := st.(*S3); ok {
			if n := s.budget().TryAcquire(S3MemoryBudget); !n {
				t.Error("the writers did not give their memory back to the budget")
			} else {
				s.budget().Release(S3MemoryBudget)
			}
		}
	})
	t.Run("DirMarker", func(t *testing.T) {
		if err := st.Put(ctx, "d/empty"+DirMarkerSuffix, nil); err != nil {
			t.Fatal(err)
		}
		if err := st.Put(ctx, "d/file", []byte("f")); err != nil {
			t.Fatal(err)
		}
		if l, ok := st.(Local); ok {
			// A local repository's points are read as directories.
			if fi, err := os.Stat(l.path("d/empty")); err != nil || !fi.IsDir() {
				t.Errorf("Local's directory marker: %v, %v; want a directory", fi, err)
			}
			return
		}
		fsys, err := NewStorageFS(ctx, st, "d")
		if err != nil {
			t.Fatal(err)
		}
		if err := fstest.TestFS(fsys, "file", "empty"); err != nil {
			t.Fatal(err)
		}
		if fi, err := fs.Stat(fsys, "empty"); err != nil || !fi.IsDir() {
			t.Errorf("the marker of an empty directory: %v, %v; want a directory", fi, err)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		if err := st.Delete(ctx, "b/one"); err != nil {
			t.Fatal(err)
		}
		if err := st.Delete(ctx, "b/one"); err != nil {
			t.Errorf("Delete of a missing object: %v", err)
		}
		if _, err := st.ReadRange(ctx, "b/one", 0, -1); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ReadRange after Delete: %v, want fs.ErrNotExist", err)
		}
		if got, err := st.List(ctx, "b/"); err != nil || len(got) != 0 {
			t.Errorf("List after Delete = %v, %v; want nothing", got, err)
		}
		if err := st.Put(ctx, "b/one", []byte("again")); err != nil {
			t.Errorf("Put after Delete: %v", err)
		}
	})
}

func TestLocalStorageContract(t *testing.T) {
	testStorageContract(t, Local{Root: t.TempDir()})
}

func TestS3StorageContract(t *testing.T) {
	srv := s3test.Start(t)
	st := newTestS3(t, srv, srv.NewBucket(t), "repos/one/")
	testStorageContract(t, st)
	// Another prefix of the same bucket sees none of it.
	other := newTestS3(t, srv, st.Bucket, "repos/")
	got, err := other.List(context.Background(), "one-")
	if err != nil || len(got) != 0 {
		t.Errorf("a sibling prefix lists %v, %v; want nothing", got, err)
	}
}

// newTestS3 is the Storage of s3://bucket/prefix on srv, with srv's
// credentials in the environment as a user would give them.
func newTestS3(t *testing.T, srv *s3test.Server, bucket, prefix string) *S3 {
	t.Helper()
	srv.Setenv(t)
	st, err := NewS3(context.Background(), bucket, prefix, S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestS3Errors(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	ctx := context.Background()

	missing := newTestS3(t, srv, bucket+"-missing", "")
	if _, err := missing.Probe(ctx); err == nil || err.Error() != "s3://"+bucket+"-missing: the bucket does not exist" || errors.Is(err, ErrUnavailable) {
		t.Errorf("missing bucket: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	bad, err := NewS3(ctx, bucket, "", S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Probe(ctx); err == nil || !strings.Contains(err.Error(), "access denied") || strings.Contains(err.Error(), "\n") || errors.Is(err, ErrUnavailable) {
		t.Errorf("wrong credentials: %v", err)
	}
	if _, err := NewS3(ctx, bucket, "", S3Options{Endpoint: "localhost:9"}); err == nil {
		t.Error("an endpoint that is not a URL was taken")
	}
}

func TestParseS3URL(t *testing.T) {
	for _, c := range []struct {
		in             string
		bucket, prefix string
		ok, bad        bool
	}{
		{"/var/backups", "", "", false, false},
		{"s3://b", "b", "", true, false},
		{"s3://b/", "b", "", true, false},
		{"s3://b/x/y/", "b", "x/y/", true, false},
		{"s3://b/x/y", "b", "x/y/", true, false},
		{"s3:///x", "", "", true, true},
		{"s3://b/x/../y", "", "", true, true},
	} {
		b, p, ok, err := ParseS3URL(c.in)
		if ok != c.ok || (err != nil) != c.bad || (!c.bad && (b != c.bucket || p != c.prefix)) {
			t.Errorf("ParseS3URL(%q) = %q, %q, %v, %v", c.in, b, p, ok, err)
		}
	}
}

func TestDeadHolder(t *testing.T) {
	host, _ := os.Hostname()
	for _, c := range []struct {
		lock string
		want bool
	}{
		{fmt.Sprintf("expire, pid %d on %s, since 2026-01-01T00:00:00Z\n", os.Getpid(), host), false},
		{fmt.Sprintf("expire, pid %d on %s, since 2026-01-01T00:00:00Z\n", 1<<30, host), true},
		{fmt.Sprintf("expire, pid %d on other-%s, since 2026-01-01T00:00:00Z\n", 1<<30, host), false},
		{"garbage", false},
	} {
		if got := deadHolder(c.lock, host); got != c.want {
			t.Errorf("deadHolder(%q) = %v", c.lock, got)
		}
	}
}

// TestS3ServerDown: with the store down, a request fails after its retries
// with one line naming the object; once the store is back, the same
// Storage works again.
func TestS3ServerDown(t *testing.T) {
	srv := s3test.Start(t)
	st := newTestS3(t, srv, srv.NewBucket(t), "r/")
	ctx := context.Background()
	if err := st.Put(ctx, "x", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	_, err := st.ReadRange(ctx, "x", 0, -1)
	if err == nil || !strings.Contains(err.Error(), "read "+st.String()+"x: ") || !strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "\n") || !errors.Is(err, ErrUnavailable) {
		t.Errorf("read with the store down: %v", err)
	}
	if err := st.Put(ctx, "y", []byte("new")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("put with the store down: %v, want ErrUnavailable", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := st.ReadRange(ctx, "x", 0, -1); err != nil || string(got) != "kept" {
		t.Errorf("read after the store came back: %q, %v", got, err)
	}
}
