package verify

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/format"
)

// checkHeaders compares the INCREMENTAL files of the backup (onDisk, by
// path) with the headers its point's marker lists (headers, see
// Options.Headers): each such file is listed, starts with its listed
// header, and nothing else is listed. A mount takes headers from the
// marker, so a wrong one would serve wrong blocks if its size still fit.
func checkHeaders(ctx context.Context, fsys fs.FS, onDisk map[string]int64, headers map[string][]byte, jobs int, problem func(string, ...any)) error {
	var incs []string
	for p := range onDisk {
		if _, ok := format.IsIncrementalName(path.Base(p)); ok {
			incs = append(incs, p)
		}
	}
	sort.Strings(incs)
	var extra []string
	for p := range headers {
		if _, ok := onDisk[p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(extra)
	for _, p := range extra {
		problem("%q is in the header pack of the point's marker but not in the backup", p)
	}
	msgs := make([]string, len(incs))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(jobs, 4))
	for i, p := range incs {
		want, ok := headers[p]
		if !ok {
			msgs[i] = fmt.Sprintf("%q is not in the header pack of the point's marker", p)
			continue
		}
		g.Go(func() error {
			if gctx.Err() != nil {
				return gctx.Err()
			}
			got, err := readHead(fsys, p, len(want))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				msgs[i] = fmt.Sprintf("could not read the header of %q: %v", p, err)
			case !bytes.Equal(got, want):
				msgs[i] = fmt.Sprintf("%q: its header differs from the one in the point's marker", p)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, m := range msgs {
		if m != "" {
			problem("%s", m)
		}
	}
	return nil
}

// readHead reads the first n bytes of the file p of fsys (fewer if it is
// shorter).
func readHead(fsys fs.FS, p string, n int) ([]byte, error) {
	f, err := fsys.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	var k int
	if ra, ok := f.(io.ReaderAt); ok {
		k, err = ra.ReadAt(buf, 0)
	} else {
		k, err = io.ReadFull(f, buf)
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return buf[:k], err
}
