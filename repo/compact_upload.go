package repo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
)

// UploadOptions tune UploadPoint.
type UploadOptions struct {
	// Jobs is how many files go up at once (0: uploadJobs).
	Jobs int
	// Manifest, if set, is checked against what went up: every file it
	// lists was sent whole, with its checksum when it is a CRC-32C one.
	Manifest *format.Manifest
	// Publish writes the point's marker once everything is up and checked.
	Publish bool
	// Progress, if set, hears the bytes handed to the uploads and their
	// total, from the goroutines of the uploads.
	Progress func(done, total int64)
}

// uploadJobs is UploadPoint's default parallelism: on S3 a small file is
// one PUT, so their round trips overlap; a large one's parts are sent in
// parallel by its own writer, all within the store's memory budget.
const uploadJobs = 16

// UploadPoint copies the backup directory src into dst as the objects of
// point name, each file streamed through Storage.Create (on S3 the same
// streamed, budgeted multipart uploads a capture's files go up by) with a
// directory marker for each empty directory. It then checks the store's
// listing against what was sent (and o.Manifest), and with o.Publish writes
// the point's marker last, with the header pack of its INCREMENTAL files:
// until then what went up is a leftover, never a point. Symbolic links are
// skipped: an object store holds none.
func UploadPoint(ctx context.Context, dst Storage, src, name string, o UploadOptions) error {
	files, dirs, total, err := pointFiles(src)
	if err != nil {
		return err
	}
	var sent atomic.Int64
	var mu sync.Mutex
	sums := map[string][]byte{} // CRC-32C of each file, by path in the point
	pack := HeaderPack{}        // the INCREMENTAL files' headers, for the marker
	g, gctx := errgroup.WithContext(ctx)
	jobs := o.Jobs
	if jobs <= 0 {
		jobs = uploadJobs
	}
	g.SetLimit(jobs)
	for _, d := range dirs {
		g.Go(func() error { return dst.Put(gctx, DirMarker(path.Join(name, d)), nil) })
	}
	for rel := range files {
		g.Go(func() error {
			tap := NewHeaderTap(rel)
			sum, err := uploadFile(gctx, dst, filepath.Join(src, filepath.FromSlash(rel)), name+"/"+rel, tap, func(n int64) {
				if o.Progress != nil {
					o.Progress(sent.Add(n), total)
				}
			})
			mu.Lock()
			sums[rel] = sum
			if h, ok := tap.Header(); ok {
				pack.Add(rel, h, files[rel])
			}
			mu.Unlock()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := checkUploaded(ctx, dst, name, files, sums, o.Manifest); err != nil {
		return err
	}
	if !o.Publish {
		return nil
	}
	return dst.Put(ctx, MarkerName(name), pack.Marker(name))
}

// pointFiles lists a backup directory's regular files (with their sizes)
// and its empty directories, by slash-separated path below it.
func pointFiles(src string) (files map[string]int64, dirs []string, total int64, err error) {
	files = map[string]int64{}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			ents, err := os.ReadDir(p)
			if err == nil && len(ents) == 0 && rel != "." {
				dirs = append(dirs, rel)
			}
			return err
		case !d.Type().IsRegular():
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files[rel] = fi.Size()
		total += fi.Size()
		return nil
	})
	return files, dirs, total, err
}

// uploadFile streams the file p up as the object obj and returns its
// CRC-32C, computed as the bytes pass, which tap (if not nil) also sees.
func uploadFile(ctx context.Context, dst Storage, p, obj string, tap *HeaderTap, sent func(int64)) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w, err := dst.Create(ctx, obj)
	if err != nil {
		return nil, err
	}
	h := format.ChecksumCRC32C.New()
	buf := make([]byte, 1<<20)
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			tap.Write(buf[:n])
			if _, err := w.Write(buf[:n]); err != nil {
				w.Abort()
				return nil, err
			}
			sent(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			w.Abort()
			return nil, rerr
		}
	}
	if err := w.Commit(); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// checkUploaded compares the store's listing of point name with the files
// sent (each there at its size), and the manifest m, if any, with both:
// each file it lists was sent at its size and, for a CRC-32C manifest,
// with its checksum.
func checkUploaded(ctx context.Context, dst Storage, name string, files map[string]int64, sums map[string][]byte, m *format.Manifest) error {
	objs, err := dst.List(ctx, name+"/")
	if err != nil {
		return err
	}
	stored := map[string]int64{}
	for _, obj := range objs {
		stored[strings.TrimPrefix(obj.Name, name+"/")] = obj.Size
	}
	for rel, size := range files {
		if got, ok := stored[rel]; !ok || got != size {
			return fmt.Errorf("point %s: the store holds %s with %d bytes, %d went up", name, rel, got, size)
		}
	}
	if m == nil {
		return nil
	}
	for _, mf := range m.Files {
		size, ok := files[mf.Path]
		switch {
		case !ok:
			return fmt.Errorf("point %s: the manifest lists %s, which is not in the directory uploaded", name, mf.Path)
		case size != mf.Size:
			return fmt.Errorf("point %s: %s went up with %d bytes, the manifest says %d", name, mf.Path, size, mf.Size)
		case mf.Algorithm == format.ChecksumCRC32C && !bytes.Equal(sums[mf.Path], mf.Checksum):
			return fmt.Errorf("point %s: %s went up with a checksum other than the manifest's", name, mf.Path)
		}
	}
	return nil
}
