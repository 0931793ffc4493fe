package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/crashpoint"
	"github.com/combinefs/combinefs/repo"
)

// Phases of a capture into an object store at which the kill -9 tests
// stop it (crashpoint): a large file's first parts sent, every file
// uploaded, the manifest uploaded (the marker, written last, not yet).
const (
	CrashS3Multipart = "capture-s3-multipart"
	CrashS3Uploaded  = "capture-s3-uploaded"
	CrashS3Manifest  = "capture-s3-manifest"
)

// storeCommits is how many finished files are committed at once: small
// files are one PUT each, and a backup has thousands, so their round
// trips overlap. Their buffers come out of the store's memory budget.
const storeCommits = 16

// storeOut writes a point's files as objects of a repository's store,
// each streamed up as it arrives from the tar stream (Storage.Create),
// with no local copy. It records each file's size and checksum as the
// bytes pass, for finish to check against the manifest before the point's
// marker is written. Empty directories become directory markers.
type storeOut struct {
	st    repo.Storage
	root  string // the layout's root: "/" + the point's name
	name  string // the point's name, the objects' prefix
	algo  format.ChecksumType
	where string // the point's URL, for messages

	parent context.Context
	ctx    context.Context // the uploads', cancelled by the first failure
	g      *errgroup.Group

	mu    sync.Mutex
	files map[string]uploaded // by path below the point
	dirs  map[string]bool
	open  map[*storeFile]bool
	err   error // the first failed commit
}

// uploaded is what went up of one file.
type uploaded struct {
	size   int64
	sum    []byte
	header []byte // an INCREMENTAL file's header, for the marker's pack
}

func newStoreOut(ctx context.Context, r *repo.Repo, name string, algo format.ChecksumType) *storeOut {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(storeCommits)
	return &storeOut{
		st: r.Store, root: "/" + name, name: name, algo: algo, where: r.Dir + "/" + name,
		parent: ctx, ctx: gctx, g: g,
		files: map[string]uploaded{}, dirs: map[string]bool{}, open: map[*storeFile]bool{},
	}
}

// rel is path relative to the point ("" for its root).
func (o *storeOut) rel(p string) (string, error) {
	r, err := filepath.Rel(o.root, p)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%s is outside the backup", p)
	}
	if r == "." {
		return "", nil
	}
	return filepath.ToSlash(r), nil
}

// failed is the first error of a commit, or of the uploads' context.
func (o *storeOut) failed() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	return o.parent.Err()
}

// commit runs f in the commit group and records its error.
func (o *storeOut) commit(f func() error) {
	o.g.Go(func() error {
		err := f()
		if err != nil {
			o.mu.Lock()
			if o.err == nil {
				o.err = err
			}
			o.mu.Unlock()
		}
		return err
	})
}

// mkdirAll writes the markers of dir and its parents not yet marked.
func (o *storeOut) mkdirAll(dir string) error {
	r, err := o.rel(dir)
	if err != nil || r == "" {
		return err
	}
	if err := o.failed(); err != nil {
		return err
	}
	for ; r != "."; r = path.Dir(r) {
		o.mu.Lock()
		made := o.dirs[r]
		o.dirs[r] = true
		o.mu.Unlock()
		if made {
			return nil
		}
		key := o.name + "/" + r + repo.DirMarkerSuffix
		o.commit(func() error {
			if err := o.st.Put(o.ctx, key, nil); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			return nil
		})
	}
	return nil
}

// mkdir: an object store keeps no modes.
func (o *storeOut) mkdir(dir string, perm fs.FileMode) error { return o.mkdirAll(dir) }

func (o *storeOut) create(p string, perm fs.FileMode, size int64) (outFile, error) {
	return o.newFile(p, 0)
}

func (o *storeOut) createSegment(p string, size int64) (outFile, error) {
	return o.newFile(p, size)
}

func (o *storeOut) newFile(p string, pad int64) (*storeFile, error) {
	r, err := o.rel(p)
	if err != nil {
		return nil, err
	}
	if err := o.failed(); err != nil {
		return nil, err
	}
	w, err := o.st.Create(o.ctx, o.name+"/"+r)
	if err != nil {
		return nil, err
	}
	f := &storeFile{o: o, rel: r, w: w, pad: pad, tap: repo.NewHeaderTap(r)}
	if o.algo != format.ChecksumNone {
		f.h = o.algo.New()
	}
	o.mu.Lock()
	o.open[f] = true
	o.mu.Unlock()
	return f, nil
}

func (o *storeOut) writeFile(p string, data []byte) error {
	f, err := o.newFile(p, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.abort()
		return err
	}
	return f.close()
}

// wait returns once every commit has ended, with the first error.
func (o *storeOut) wait() error {
	o.g.Wait()
	return o.failed()
}

// abort drops the files being written, waits for the commits, and
// deletes what went up, as far as the store lets it (the next capture
// removes the rest: objects of a point without a marker, and multipart
// uploads).
func (o *storeOut) abort() {
	o.mu.Lock()
	open := o.open
	o.open = map[*storeFile]bool{}
	o.mu.Unlock()
	for f := range open {
		f.w.Abort()
	}
	o.g.Wait()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(o.parent), 30*time.Second)
	defer cancel()
	objs, err := o.st.List(ctx, o.name+"/")
	if err != nil {
		return
	}
	for _, obj := range objs {
		if o.st.Delete(ctx, obj.Name) != nil {
			return
		}
	}
}

// check compares the manifest with what went up: every file it lists was
// uploaded with its size and (when the manifest's algorithm is the one
// computed) its checksum, the store holds each at that size, and nothing
// but pg_wal was uploaded beside them.
func (o *storeOut) check(m *format.Manifest) error {
	listed := map[string]bool{}
	where := o.where
	for _, mf := range m.Files {
		listed[mf.Path] = true
		u, ok := o.files[mf.Path]
		switch {
		case !ok:
			return fmt.Errorf("%s: the manifest lists %s, which the server did not send", where, mf.Path)
		case u.size != mf.Size:
			return fmt.Errorf("%s: %s went up with %d bytes, the manifest says %d", where, mf.Path, u.size, mf.Size)
		case mf.Algorithm == o.algo && o.algo != format.ChecksumNone && !bytes.Equal(u.sum, mf.Checksum):
			return fmt.Errorf("%s: %s went up with a %s checksum other than the manifest's", where, mf.Path, o.algo)
		}
	}
	for p := range o.files {
		if !listed[p] && p != "pg_wal" && !strings.HasPrefix(p, "pg_wal/") {
			return fmt.Errorf("%s: the server sent %s, which its manifest does not list", where, p)
		}
	}
	objs, err := o.st.List(o.parent, o.name+"/")
	if err != nil {
		return err
	}
	stored := map[string]int64{}
	for _, obj := range objs {
		stored[strings.TrimPrefix(obj.Name, o.name+"/")] = obj.Size
	}
	for p, u := range o.files {
		if size, ok := stored[p]; !ok || size != u.size {
			return fmt.Errorf("%s: the store holds %s with %d bytes, %d went up", where, p, size, u.size)
		}
	}
	return nil
}

// storeFile is a file of storeOut being streamed up.
type storeFile struct {
	o   *storeOut
	rel string
	w   repo.Writer
	h   hash.Hash
	n   int64
	pad int64           // the size a WAL segment is filled up to with zeros
	tap *repo.HeaderTap // an INCREMENTAL file's header as it passes
}

func (f *storeFile) WriteAt(p []byte, off int64) (int, error) {
	if off != f.n {
		return 0, errOutOfOrder(f.rel, off, f.n)
	}
	n, err := f.w.Write(p)
	if f.h != nil {
		f.h.Write(p[:n])
	}
	f.tap.Write(p[:n])
	f.n += int64(n)
	if f.n > repo.S3PartSize && f.n-int64(n) <= repo.S3PartSize {
		crashpoint.At(CrashS3Multipart)
	}
	return n, err
}

// close fills a segment up with zeros, records the file and commits it
// in the background.
func (f *storeFile) close() error {
	for f.n < f.pad {
		zeros := make([]byte, min(f.pad-f.n, 1<<20))
		if _, err := f.WriteAt(zeros, f.n); err != nil {
			f.abort()
			return err
		}
	}
	u := uploaded{size: f.n}
	if f.h != nil {
		u.sum = f.h.Sum(nil)
	}
	u.header, _ = f.tap.Header()
	o := f.o
	o.mu.Lock()
	o.files[f.rel] = u
	delete(o.open, f)
	o.mu.Unlock()
	o.commit(f.w.Commit)
	return nil
}

func (f *storeFile) abort() {
	f.o.mu.Lock()
	delete(f.o.open, f)
	f.o.mu.Unlock()
	f.w.Abort()
}

// headerPack is the pack of the headers of the INCREMENTAL files that
// went up, each checked against the file's size (a full backup's is
// empty).
func (o *storeOut) headerPack() repo.HeaderPack {
	pack := repo.HeaderPack{}
	for p, u := range o.files {
		if u.header != nil {
			pack.Add(p, u.header, u.size)
		}
	}
	return pack
}

// finishStore publishes a point written to an object store once every
// file is up: the manifest checked against what went up, then written,
// then the point's marker, last, with the header pack that lets a mount
// read every INCREMENTAL header in one GET.
func (c *capturer) finishStore() error {
	o := c.store
	if err := o.wait(); err != nil {
		return err
	}
	crashpoint.At(CrashS3Uploaded)
	data := c.x.memManifest.Bytes()
	m, err := format.ParseManifest(data, o.where+"/backup_manifest")
	if err != nil {
		return err
	}
	if err := o.check(m); err != nil {
		return err
	}
	if err := o.st.Put(o.parent, o.name+"/backup_manifest", data); err != nil {
		return err
	}
	crashpoint.At(CrashS3Manifest)
	if err := o.st.Put(o.parent, repo.MarkerName(o.name), o.headerPack().Marker(o.name)); err != nil {
		return err
	}
	c.final = o.where
	return nil
}
