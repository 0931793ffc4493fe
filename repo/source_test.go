package repo

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// s3ChainNames are the points of the chain TestS3Chain pushes.
var s3ChainNames = []string{"2025-03-01_000000-FULL", "2025-03-01_010000-INCREMENTAL", "2025-03-01_020000-INCREMENTAL"}

// newS3TestChain builds a repository of one chain on disk whose final
// point needs every kind of read: a segment reconstructed from three
// backups (an INCREMENTAL header longer than the first ranged read of it,
// and a truncation), whole files from the final and from an older backup,
// an empty directory and a nested one.
func newS3TestChain(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	c := resolvertest.NewChain(t)
	full := c.Full()
	var fullData []byte
	for b := uint32(0); b < 1200; b++ {
		fullData = append(fullData, resolvertest.FillBlock("full", b)...)
	}
	full.File("base/5/16384", fullData)
	full.File("base/5/16385", bytes.Repeat([]byte("unchanged"), 5000))
	full.File("base/5/PG_VERSION", []byte("17\n"))
	full.Mkdir("pg_notify")
	full.Mkdir("pg_wal/archive_status")

	inc1 := c.Incremental()
	var blocks []resolvertest.Block
	for b := uint32(0); b < 2100; b++ { // a header of 8412 bytes
		blocks = append(blocks, resolvertest.Block{Num: b, Data: resolvertest.FillBlock("inc1", b)})
	}
	inc1.Incremental("base/5/16384", 2100, blocks...)
	inc1.Incremental("base/5/16385", 5)
	inc1.File("base/5/PG_VERSION", []byte("17\n"))
	inc1.Mkdir("pg_notify")

	inc2 := c.Incremental()
	var blocks2 []resolvertest.Block
	for b := uint32(0); b < 1500; b++ {
		if b%3 != 2 {
			blocks2 = append(blocks2, resolvertest.Block{Num: b, Data: resolvertest.FillBlock("inc2", b)})
		}
	}
	inc2.Incremental("base/5/16384", 1500, append(blocks2, resolvertest.Block{Num: 1600, Data: resolvertest.FillBlock("inc2", 1600)})...)
	inc2.Incremental("base/5/16385", 5)
	inc2.File("base/5/PG_VERSION", []byte("17\n"))
	inc2.File("global/new", []byte("a file of the final backup"))
	inc2.Mkdir("pg_notify")
	inc2.Mkdir("pg_wal/archive_status")
	for i, d := range c.Dirs() {
		if err := os.Rename(d, filepath.Join(dir, s3ChainNames[i])); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// pushS3TestChain copies newS3TestChain's chain into s3://BUCKET/db with
// CopyPoint and returns its local directory, the bucket and the store.
func pushS3TestChain(t *testing.T, srv *s3test.Server) (string, string, *S3) {
	t.Helper()
	dir := newS3TestChain(t)
	bucket := srv.NewBucket(t)
	st := newTestS3(t, srv, bucket, "db/")
	for _, n := range s3ChainNames {
		if err := CopyPoint(context.Background(), st, filepath.Join(dir, n), n, true); err != nil {
			t.Fatal(err)
		}
	}
	return dir, bucket, st
}

// countingStore records the ranged reads made through it.
type countingStore struct {
	Storage
	mu    sync.Mutex
	reads []readRec
}

type readRec struct {
	name   string
	off, n int64
}

func (c *countingStore) ReadRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	c.mu.Lock()
	c.reads = append(c.reads, readRec{name, off, n})
	c.mu.Unlock()
	return c.Storage.ReadRange(ctx, name, off, n)
}

// TestS3Chain: a chain pushed into a real S3 server reads, through the
// object-store source, exactly as the same chain on disk: the same tree
// (the empty directories too), the same bytes in every file, the same
// flatten output. Opening it reads no INCREMENTAL file past its header
// (the markers' packs hold them); and a read while the server is down fails in a
// line naming the object, then works once it is back.
func TestS3Chain(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	dir, bucket, _ := pushS3TestChain(t, srv)
	r, err := OpenWith(ctx, "s3://"+bucket+"/db", false, S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	counter := &countingStore{Storage: r.Store}
	r.Store = counter
	dirs, opts := shareTestChain(t, r)
	remote := openTestTree(t, dirs, opts)
	var localDirs []string
	for _, n := range s3ChainNames {
		localDirs = append(localDirs, filepath.Join(dir, n))
	}
	local := openTestTree(t, localDirs, resolver.ChainOptions{RequireV2Manifests: true})

	for _, rd := range counter.reads {
		if !strings.Contains(rd.name, format.IncrementalPrefix) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, rd.name))
		if err != nil {
			t.Fatal(err)
		}
		inc, err := format.ParseIncremental(bytes.NewReader(data), int64(len(data)), rd.name)
		if err != nil {
			t.Fatal(err)
		}
		if rd.n < 0 || rd.off+rd.n > inc.HeaderLength {
			t.Errorf("opening the chain read %d bytes at %d of %s, whose header is %d bytes: block data", rd.n, rd.off, rd.name, inc.HeaderLength)
		}
	}

	// The same entries, in the same order but for the sort, and bytes.
	want := treeFiles(t, local)
	got := treeFiles(t, remote)
	for _, p := range []string{"pg_notify", "pg_wal/archive_status", "base/5/16384", "global/new"} {
		if _, ok := got[p]; !ok {
			t.Errorf("the tree from S3 lacks %s", p)
		}
	}
	if len(got) != len(want) {
		t.Errorf("the tree from S3 has %d entries, the local one %d", len(got), len(want))
	}
	for p, w := range want {
		if g, ok := got[p]; !ok || !bytes.Equal(g, w) {
			t.Errorf("%s from S3 differs from the local chain's (%d bytes, want %d)", p, len(g), len(w))
		}
	}

	// flatten: the same files.
	outL, outR := filepath.Join(t.TempDir(), "l"), filepath.Join(t.TempDir(), "r")
	if _, err := flatten.Run(ctx, local, flatten.Options{Output: outL, NoSync: true, ManifestChecksums: format.ChecksumCRC32C}); err != nil {
		t.Fatal(err)
	}
	if _, err := flatten.Run(ctx, remote, flatten.Options{Output: outR, NoSync: true, ManifestChecksums: format.ChecksumCRC32C}); err != nil {
		t.Fatalf("flatten from S3: %v", err)
	}
	compareDirs(t, outR, outL)

	// The server down: a read fails after the retries, naming the object.
	f := remote.Root.Child("base").Child("5").Child("16384").File
	rd, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	srv.Kill()
	buf := make([]byte, 3*format.BlockSize)
	if _, err := rd.ReadAt(buf, 0); err == nil || !strings.Contains(err.Error(), "base/5/") || strings.Contains(err.Error(), "\n") {
		t.Errorf("a read with the server down: %v, want one line naming the object", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := rd.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, want["base/5/16384"][:len(buf)]) {
		t.Errorf("a read once the server is back: %v", err)
	}
}

func openTestTree(t *testing.T, dirs []string, opts resolver.ChainOptions) *resolver.Tree {
	t.Helper()
	c, err := resolver.OpenChain(dirs, opts)
	if err != nil {
		t.Fatal(err)
	}
	p, err := resolver.NewTree(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ResolveAll(4); err != nil {
		t.Fatal(err)
	}
	return p
}

// treeFiles reads every file of a point (nil for a directory).
func treeFiles(t *testing.T, p *resolver.Tree) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := p.Walk(func(path string, e *resolver.Entry) error {
		if e.Kind == resolver.KindDir {
			if path != "" {
				out[path] = nil
			}
			return nil
		}
		r, err := e.File.Open()
		if err != nil {
			return err
		}
		defer r.Close()
		data, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
		out[path] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// compareDirs checks that got holds the same directories and files as
// want, with the same contents (backup_manifest aside: its timestamps
// differ).
func compareDirs(t *testing.T, got, want string) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		g := filepath.Join(got, rel)
		if d.IsDir() {
			if st, err := os.Stat(g); err != nil || !st.IsDir() {
				t.Errorf("%s: not a directory in %s", rel, got)
			}
			return nil
		}
		seen++
		if rel == "backup_manifest" {
			return nil
		}
		a, err1 := os.ReadFile(g)
		b, err2 := os.ReadFile(p)
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs (%v, %v)", rel, err1, err2)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 5 {
		t.Fatalf("only %d files in %s", seen, want)
	}
	extra := -seen
	filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			extra++
		}
		return nil
	})
	if extra != 0 {
		t.Errorf("%s has %d files more than %s", got, extra, want)
	}
}
